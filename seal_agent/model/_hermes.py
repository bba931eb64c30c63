"""Hermes-style tool calls and LangChain messages -> chat-template dicts.

The Hermes convention (used by Qwen, Hermes and many open models): the model writes
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; tool results go back
wrapped in ``<tool_response>``. `parse_tool_calls` reads the calls out of model text;
`to_chat_dicts` renders LangChain messages for ``apply_chat_template``;
`with_tool_preamble` describes tools for templates that cannot render ``tools=``.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, NamedTuple

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call

from seal_agent.errors import ValidationError

__all__ = ["TOOL_CALL_OPEN", "ParsedOutput", "parse_tool_calls", "to_chat_dicts", "with_tool_preamble"]

TOOL_CALL_OPEN = "<tool_call>"
# Non-greedy up to the closing tag, or to the end: a model cut off by max_new_tokens
# or by its end-of-turn token often leaves the last tag unclosed.
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_TOOL_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n"
    "Function signatures are given within <tools></tools> tags:\n<tools>{tools}\n</tools>\n\n"
    "For each function call, return a json object with the function name and arguments "
    "within <tool_call></tool_call> tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)

class ParsedOutput(NamedTuple):
    """Model output split into text and Hermes tool calls."""

    content: str
    """The text with every ``<tool_call>`` block removed, whitespace-stripped."""
    tool_calls: list[ToolCall]
    """Well-formed calls: a JSON object with a string ``name`` and an object ``arguments``."""
    invalid_tool_calls: list[InvalidToolCall]
    """Malformed calls; ``args`` holds the raw block as the model wrote it, ``error`` why."""


def parse_tool_calls(text: str) -> ParsedOutput:
    """Parse Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks.

    Never raises: a block that is not valid JSON, lacks a name, or has non-object
    arguments becomes an `InvalidToolCall`. ``arguments`` given as a JSON string of
    an object (some models double-encode) and ``parameters`` instead of
    ``arguments`` are accepted.

    Args:
        text: Decoded model output.

    Returns:
        The text without the blocks, the valid calls, and the invalid ones.
    """
    pieces: list[str] = []
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    pos = 0
    for match in _TOOL_CALL_RE.finditer(text):
        pieces.append(text[pos : match.start()])
        pos = match.end()
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        body = match.group(1).strip()
        try:
            name, args = _parse_call_body(body)
        except ValueError as exc:
            invalid.append(invalid_tool_call(name=_guess_name(body), args=match.group(0), id=call_id,
                                             error=str(exc)))
        else:
            calls.append(tool_call(name=name, args=args, id=call_id))
    pieces.append(text[pos:])
    return ParsedOutput("".join(pieces).strip(), calls, invalid)


def _parse_call_body(body: str) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"tool call is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("tool call must be a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("tool call needs a non-empty string 'name'")
    args = data.get("arguments", data.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool call 'arguments' is a string that is not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise ValueError("tool call 'arguments' must be a JSON object")
    return name, args


def _guess_name(body: str) -> str | None:
    match = re.search(r'"name"\s*:\s*"([^"]+)"', body)
    return match.group(1) if match else None


def _text(content: str | list[Any]) -> str:
    if isinstance(content, str):
        return content
    parts = [p if isinstance(p, str) else p.get("text", "") for p in content
             if isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text")]
    return "".join(parts)


def _hermes_call(name: str, args: dict[str, Any]) -> str:
    return f"\n{TOOL_CALL_OPEN}\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def to_chat_dicts(messages: list[BaseMessage], *, native_tools: bool) -> list[dict[str, Any]]:
    """LangChain messages -> the role/content dicts chat templates render."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        text = _text(message.content)
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": text})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": text})
        elif isinstance(message, AIMessage):
            calls = message.tool_calls
            if calls and native_tools:
                out.append({"role": "assistant", "content": text, "tool_calls": [
                    {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in calls]})
            else:  # the template cannot render calls: write them as the model would
                out.append({"role": "assistant",
                            "content": text + "".join(_hermes_call(c["name"], c["args"]) for c in calls)})
        elif isinstance(message, ToolMessage):
            out.append({"role": "tool", "content": text, "tool_call_id": message.tool_call_id})
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": text})
        else:
            raise ValidationError(f"messages[{i}]", type(message).__name__,
                                  "must be a system, human, AI, tool or chat message")
    return out


def with_tool_preamble(chat: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Describe `tools` in the system message, for templates that cannot render them."""
    listing = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    preamble = _TOOL_PREAMBLE.format(tools=listing)
    if chat and chat[0]["role"] == "system":
        return [{**chat[0], "content": chat[0]["content"] + "\n\n" + preamble}, *chat[1:]]
    return [{"role": "system", "content": preamble}, *chat]
