"""Records of the episodic log and the validation that admits them.

An `Interaction` is one exchange an agent had: its messages (tool calls and tool
results included), what was asked (`task`), what was answered (`outcome`) and the
feedback it got. A `Memory` is an interaction as `recall` returns it, with a relevance
score. Both are frozen: the log is the only place they change.

Messages are stored in one plain shape, whatever came in (LangChain messages or
role/content dicts)::

    {"role": "user" | "assistant" | "system" | "tool", "content": str,
     "tool_calls": [{"name", "args", "id"}]?, "tool_call_id": str?, "name": str?,
     "attachments": [{"index", "type", ...}]?}

Content given as a list of LangChain content blocks keeps its text blocks as text; a
non-text block (image, audio, video, file...) becomes a placeholder such as
``[image]`` in the text, and what it was (type, mime type, URL or file name, never
inline bytes) is kept in ``attachments``. Tool-call and reasoning blocks are left out
of the text: tool calls are kept in ``tool_calls``, and reasoning is not the exchange.

Everything stored must be valid JSON and encodable as UTF-8: strings holding a lone
surrogate (``"\\ud800"``) or NUL (``"\\x00"``: PostgreSQL cannot store it in text or
jsonb, so SQLite refuses it too and a home can move between backends) and NaN or
infinite numbers are refused with a `ValidationError` naming the field, before anything
is written. Metadata integers must fit in 64 bits (what Chroma stores and both journals'
filters compare exactly).

Metadata keys may be any such text (dots, backslashes, newlines, quotes included): a
filter addresses a nested field with a dotted path in which ``\\.``, ``\\\\`` and a
leading ``\\$`` stand for a literal dot, backslash and dollar (`metadata_key_path`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from seal_agent.errors import ValidationError

__all__ = [
    "HistoryEvent",
    "Interaction",
    "InteractionStatus",
    "Memory",
    "MAX_TTL_S",
    "METADATA_OPERATORS",
    "Namespace",
    "content_hash",
    "flat_metadata",
    "interaction_text",
    "iso",
    "join_namespace",
    "metadata_key_path",
    "new_interaction_id",
    "normalize_messages",
    "parse_namespace",
    "parse_time",
    "task_and_outcome",
    "utc_now",
    "validate_namespace",
    "validate_metadata",
    "validate_filter",
    "validate_min_score",
    "validate_score",
    "validate_text",
    "validate_thread_id",
    "validate_ttl",
]

Namespace = tuple[str, ...]
"""A hierarchical scope such as ``("users", "alice")``. Recall never crosses namespaces."""

NAMESPACE_SEP = "/"

# Roles as LangChain names them (message.type) and as chat templates name them.
_ROLE_ALIASES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "ai": "assistant",
    "system": "system", "developer": "system",
    "tool": "tool",
}


class InteractionStatus(StrEnum):
    """Where an interaction stands with respect to parametric memory."""

    NEW = "new"
    """Logged, not yet learned by any adapter."""
    CONSOLIDATED = "consolidated"
    """Learned by a committed adapter (see `Interaction.consolidated_version`)."""
    EXCLUDED = "excluded"
    """Kept for recall but never trained on (e.g. an excluded namespace)."""


@dataclass(frozen=True, slots=True)
class Interaction:
    """One logged exchange.

    Attributes:
        id: Time-sortable id (lexicographic order is logging order).
        namespace: Scope of the interaction, e.g. ``("users", "alice")``.
        thread_id: Conversation thread it belongs to, if any.
        created_at: When it was logged (UTC).
        messages: The exchange in the plain shape described in this module's docstring.
        task: What was asked: the user messages' text.
        outcome: What was answered: the last assistant message's text.
        metadata: Caller-supplied JSON-serialisable data.
        feedback: Score in [-1, 1], or None when no feedback was given.
        feedback_comment: Free text given with the feedback.
        content_hash: sha256 of the canonical messages; duplicates share it.
        status: See `InteractionStatus`.
        consolidated_version: Adapter version that learned it, when consolidated.
        expires_at: When it expires (UTC), from a ``ttl_s`` at log time or its
            namespace's default; None: never. An expired interaction is never returned
            and is forgotten by the next sweep (see `SealMemory.expire`).
    """

    id: str
    namespace: Namespace
    thread_id: str | None
    created_at: datetime
    messages: tuple[dict[str, Any], ...]
    task: str
    outcome: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    feedback: float | None = None
    feedback_comment: str | None = None
    content_hash: str = ""
    status: InteractionStatus = InteractionStatus.NEW
    consolidated_version: str | None = None
    expires_at: datetime | None = None

    @property
    def text(self) -> str:
        """The text that is embedded and shown when recalled."""
        return interaction_text(self.task, self.outcome)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the CLI's ``--json`` output and exports use it)."""
        return {
            "id": self.id,
            "namespace": list(self.namespace),
            "thread_id": self.thread_id,
            "created_at": iso(self.created_at),
            "messages": [dict(m) for m in self.messages],
            "task": self.task,
            "outcome": self.outcome,
            "metadata": dict(self.metadata),
            "feedback": self.feedback,
            "feedback_comment": self.feedback_comment,
            "content_hash": self.content_hash,
            "status": self.status.value,
            "consolidated_version": self.consolidated_version,
            "expires_at": iso(self.expires_at) if self.expires_at is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Memory:
    """A recalled interaction.

    Attributes:
        id: The interaction's id (pass it to `SealMemory.get` or `feedback`).
        text: The interaction as text (``User: ...`` / ``Assistant: ...``).
        score: Cosine similarity to the query, in [-1, 1]; higher is more relevant.
        namespace: The interaction's namespace (always the one recalled from).
        created_at: When the interaction was logged (UTC).
        metadata: The interaction's metadata plus ``thread_id``, ``feedback`` and ``status``
            (a fact's: ``sources``, its source interaction ids, and ``key``).
        kind: ``"episode"`` (a logged interaction) or ``"fact"`` (a distilled fact, see
            `seal_agent.memory.facts`; recalled with ``kinds=("facts",)``).
    """

    id: str
    text: str
    score: float
    namespace: Namespace
    created_at: datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "episode"


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One version of an interaction or a fact, as `SealMemory.history` returns it.

    Attributes:
        id: The interaction's (or fact's) id.
        event: ``created``, ``updated``, ``forgotten`` (``expired`` first when the TTL sweep forgot it)
            for interactions; ``created``, ``updated`` (a new source), ``superseded``, ``forgotten`` for facts.
        at: When it happened (UTC).
        namespace: Its namespace.
        data: The version after the event: for an interaction ``messages``,
            ``metadata``, ``feedback``, ``feedback_comment``, ``expires_at``; for a fact
            ``text``, ``key``, ``sources`` (and ``superseded_by``). Empty once the
            interaction was forgotten: forget reaches its history too.
    """

    id: str
    event: str
    at: datetime
    namespace: Namespace
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "event": self.event, "at": iso(self.at), "namespace": list(self.namespace),
                "data": dict(self.data)}


# --------------------------------------------------------------------------- ids


_id_lock = threading.Lock()
_last_id_us = 0
_id_counter = itertools.count()


def new_interaction_id() -> str:
    """A time-sortable id: 14 hex digits of microseconds since the epoch + 10 random hex.

    Ids are strictly increasing within a process even when the clock stalls, so
    sorting by id is sorting by logging order.
    """
    global _last_id_us
    with _id_lock:
        now = time.time_ns() // 1000
        _last_id_us = max(now, _last_id_us + 1)
        stamp = _last_id_us
    return f"{stamp:014x}{os.urandom(5).hex()}"


# --------------------------------------------------------------------- namespaces


def validate_namespace(namespace: Any, field_name: str = "namespace") -> Namespace:
    """Check and normalise a namespace; a plain string is a one-element namespace.

    Raises:
        ValidationError: Empty namespace, a non-string or empty element, or one
            containing ``/`` (the separator of the stored path).
    """
    if isinstance(namespace, str):
        namespace = (namespace,)
    if not isinstance(namespace, (tuple, list)) or not namespace:
        raise ValidationError(field_name, namespace, "must be a non-empty tuple of strings")
    for i, label in enumerate(namespace):
        if not isinstance(label, str) or not label.strip():
            raise ValidationError(f"{field_name}[{i}]", label, "must be a non-empty string")
        if NAMESPACE_SEP in label:
            raise ValidationError(f"{field_name}[{i}]", label, "must not contain '/'")
        validate_text(label, f"{field_name}[{i}]")
    return tuple(namespace)


def join_namespace(namespace: Namespace) -> str:
    """``("users", "alice")`` -> ``"users/alice"`` (the form stored in Chroma metadata)."""
    return NAMESPACE_SEP.join(namespace)


def parse_namespace(path: str, field_name: str = "namespace") -> Namespace:
    """``"users/alice"`` -> ``("users", "alice")``, validated (the CLI's form)."""
    if not isinstance(path, str) or not path.strip("/"):
        raise ValidationError(field_name, path, "must be a path like 'users/alice'")
    return validate_namespace(tuple(path.strip("/").split(NAMESPACE_SEP)), field_name)


# ----------------------------------------------------------------------- messages


# -------------------------------------------------------------- text and JSON values


def validate_text(value: str, field_name: str, *, allow_nul: bool = False) -> str:
    """Refuse a string that cannot be encoded as UTF-8 (a lone surrogate such as ``"\\ud800"``)
    or that holds NUL (``"\\x00"``), unless `allow_nul` (text that is never stored).

    Lone surrogates come from bad decoding (``surrogateescape``) or broken JSON escapes;
    SQLite, Chroma and JSON files all need UTF-8, so they would fail later with a raw
    `UnicodeEncodeError`, possibly half-way through a write. PostgreSQL cannot store NUL
    in text or jsonb (a raw ``DataError`` on write, or on every later jsonb cast of the
    row: one tenant's row broke every tenant's filtered list); SQLite refuses it too, so
    that both backends accept exactly the same input.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            field_name, value, f"is not valid Unicode text (lone surrogate {value[exc.start]!r} at index {exc.start})"
        ) from None
    if not allow_nul and "\x00" in value:
        raise ValidationError(field_name, value, f"must not contain NUL ('\\x00', at index {value.index(chr(0))}): "
                              "PostgreSQL cannot store it")
    return value


def _finite(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (bool excluded), else None.

    ``math.isfinite(10**400)`` raises OverflowError instead of answering: caught here.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        out = float(value)
    except (OverflowError, ValueError):
        return None
    return out if math.isfinite(out) else None


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Metadata integers: Chroma stores int64, and both journals' filters compare them exactly."""


_MAX_JSON_DEPTH = 64


def _key_path(base: str, key: str) -> str:
    return f"{base}.{key}" if key.isidentifier() and key.isascii() else f"{base}[{ascii(key)}]"


def _plain_json(value: Any, where: str, depth: int = 0, *, int64: bool = False) -> Any:
    """A plain copy of `value` that ``json.dumps(..., allow_nan=False)`` accepts, or a
    `ValidationError` naming the first offending path (``metadata.scores[2]``).
    `int64`: integers must fit in 64 bits (metadata)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if int64 and not INT64_MIN <= value <= INT64_MAX:
            raise ValidationError(where, value, "must be an integer in [-2**63, 2**63 - 1] (what Chroma stores and "
                                  "filters compare exactly); store a bigger number as a string")
        try:  # past Python's int-to-str digit limit an int cannot be written as JSON, nor read back
            str(int(value))
        except ValueError:
            raise ValidationError(where, value, "is an integer too long to write as JSON") from None
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(where, value, "must be a finite number (NaN and infinity are not valid JSON)")
        return float(value)
    if isinstance(value, str):
        return validate_text(str.__str__(value), where)
    if depth >= _MAX_JSON_DEPTH:
        raise ValidationError(where, value, f"is nested deeper than {_MAX_JSON_DEPTH} levels (or is circular)")
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(where, key, "keys must be strings")
            validate_text(key, f"{where} key {ascii(key)}")
            out[str.__str__(key)] = _plain_json(item, _key_path(where, key), depth + 1, int64=int64)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(item, f"{where}[{i}]", depth + 1, int64=int64) for i, item in enumerate(value)]
    raise ValidationError(where, value, f"must be JSON-serialisable (a {type(value).__name__} is not)")


def _json_value(value: Any, where: str, *, int64: bool = False) -> Any:
    plain = _plain_json(value, where, int64=int64)
    try:  # what the walk cannot see, e.g. an integer too long to print
        json.dumps(plain, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(where, value, f"must be JSON-serialisable ({exc})") from exc
    return plain


# ----------------------------------------------------------------------- messages

# Non-text LangChain content blocks (standard v1 blocks, OpenAI and Anthropic shapes)
# and the placeholder that stands for them in the text.
_PLACEHOLDERS = {
    "image": "image", "image_url": "image", "input_image": "image",
    "audio": "audio", "input_audio": "audio",
    "video": "video",
    "file": "file", "input_file": "file", "document": "file", "text-plain": "file",
}
# Blocks left out of the text: tool calls are kept in ``tool_calls`` already, and a
# model's reasoning is its scratch work, not part of the exchange.
_OMITTED = frozenset({
    "tool_call", "tool_call_chunk", "invalid_tool_call", "tool_use", "function_call",
    "server_tool_call", "server_tool_call_chunk", "server_tool_result",
    "reasoning", "thinking", "redacted_thinking",
})
_DESCRIBED_FIELDS = ("mime_type", "media_type", "format", "filename", "name", "title", "file_id", "id")
_MAX_DESCRIBED_CHARS = 2048


def _describe_block(block: Mapping[str, Any], index: int, block_type: str) -> dict[str, Any]:
    """What a non-text block was, without its bytes (an inline image would bloat the log).

    Fields are looked for on the block and on the dicts the provider shapes nest them
    in (``image_url``, ``source``, ``file``, ``input_audio``).
    """
    desc: dict[str, Any] = {"index": index, "type": block_type}
    image_url = block.get("image_url")
    if isinstance(image_url, str):  # {"type": "image_url", "image_url": "https://..."}
        image_url = {"url": image_url}
    holders = [block] + [h for h in (image_url, block.get("source"), block.get("file"), block.get("input_audio"))
                         if isinstance(h, Mapping)]
    for holder in holders:
        for key in _DESCRIBED_FIELDS:
            value = holder.get(key)
            if key not in desc and isinstance(value, str) and value and len(value) <= _MAX_DESCRIBED_CHARS:
                desc[key] = value
        url = holder.get("url")
        if "url" not in desc and isinstance(url, str) and url:
            if url.startswith("data:"):  # keep the header ("data:image/png;base64"), not the bytes
                desc["url"] = url.split(",", 1)[0][:_MAX_DESCRIBED_CHARS] + ",..."
                desc["inline_chars"] = len(url)
            elif len(url) <= _MAX_DESCRIBED_CHARS:
                desc["url"] = url
        for key in ("base64", "data", "file_data"):
            if "inline_chars" not in desc and isinstance(holder.get(key), str):
                desc["inline_chars"] = len(holder[key])
    return desc


def _text_of(content: Any, field_name: str) -> tuple[str, list[dict[str, Any]]]:
    """Message content as text, plus descriptions of its non-text blocks.

    A string is the text. A list of LangChain content blocks: text blocks are joined,
    each non-text block adds a placeholder (``[image]``) and a description.
    """
    if isinstance(content, str):
        return validate_text(content, field_name), []
    if not isinstance(content, list):
        raise ValidationError(field_name, content, "must be a string or a list of content blocks")
    pieces: list[str] = []
    attachments: list[dict[str, Any]] = []
    spaced = False  # the last piece was a placeholder: the next text starts after a space
    for j, block in enumerate(content):
        if isinstance(block, str):
            text = block
        elif isinstance(block, Mapping) and isinstance(block.get("type"), str):
            block_type = block["type"]
            if block_type == "text":
                text = block.get("text", "")
                if not isinstance(text, str):
                    raise ValidationError(f"{field_name}[{j}].text", text, "must be a string")
            elif block_type in _OMITTED:
                continue
            else:
                if not block_type or len(block_type) > 64 or not block_type.isprintable():
                    raise ValidationError(f"{field_name}[{j}].type", block_type, "is not a content block type")
                validate_text(block_type, f"{field_name}[{j}].type")
                desc = _describe_block(block, j, block_type)
                attachments.append(_json_value(desc, f"{field_name}[{j}]"))
                label = _PLACEHOLDERS.get(block_type, block_type)
                name = desc.get("filename") or desc.get("title")
                placeholder = f"[{label}: {name}]" if label == "file" and name else f"[{label}]"
                if pieces and not pieces[-1][-1:].isspace():
                    pieces.append(" ")
                pieces.append(placeholder)
                spaced = True
                continue
        else:
            raise ValidationError(f"{field_name}[{j}]", block, "must be a string or a content block with a 'type'")
        if spaced and text and not text[:1].isspace():
            pieces.append(" ")
        pieces.append(text)
        spaced = False
    return validate_text("".join(pieces), field_name), attachments


def _normalize_tool_calls(calls: Any, field_name: str) -> list[dict[str, Any]]:
    if not isinstance(calls, (list, tuple)):
        raise ValidationError(field_name, calls, "must be a list of tool calls")
    out = []
    for i, call in enumerate(calls):
        where = f"{field_name}[{i}]"
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise ValidationError(where, call, "must be a dict with a string 'name'")
        validate_text(call["name"], f"{where}.name")
        args = call.get("args", call.get("arguments", {}))
        if isinstance(args, str):  # OpenAI-style JSON-encoded arguments
            validate_text(args, f"{where}.args")
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                raise ValidationError(f"{where}.args", args, "must be a JSON object") from exc
        if not isinstance(args, Mapping):
            raise ValidationError(f"{where}.args", args, "must be a dict")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise ValidationError(f"{where}.id", call_id, "must be a string or None")
        if call_id is not None:
            validate_text(call_id, f"{where}.id")
        out.append({"name": str.__str__(call["name"]), "args": _json_value(args, f"{where}.args"), "id": call_id})
    return out


def _normalize_one(message: Any, i: int, max_chars: int) -> dict[str, Any]:
    where = f"messages[{i}]"
    if hasattr(message, "type") and hasattr(message, "content"):  # a LangChain BaseMessage
        role_in: Any = message.type
        content: Any = message.content
        tool_calls: Any = getattr(message, "tool_calls", None) or None
        tool_call_id = getattr(message, "tool_call_id", None)
        name = getattr(message, "name", None)
    elif isinstance(message, Mapping):
        role_in = message.get("role", message.get("type"))
        if "content" not in message:
            raise ValidationError(f"{where}.content", None, "is missing")
        content = message["content"]
        tool_calls = message.get("tool_calls") or None
        tool_call_id = message.get("tool_call_id")
        name = message.get("name")
    else:
        raise ValidationError(where, message, "must be a LangChain message or a dict with role and content")
    role = _ROLE_ALIASES.get(role_in) if isinstance(role_in, str) else None
    if role is None:
        raise ValidationError(f"{where}.role", role_in, f"must be one of {sorted(set(_ROLE_ALIASES))}")
    text, attachments = _text_of(content, f"{where}.content")
    if len(text) > max_chars:
        raise ValidationError(f"{where}.content", f"<{len(text)} characters>",
                              f"is longer than memory.max_message_chars={max_chars}")
    out: dict[str, Any] = {"role": role, "content": text}
    if attachments:
        out["attachments"] = attachments
    if tool_calls:
        if role != "assistant":
            raise ValidationError(f"{where}.tool_calls", tool_calls, "only assistant messages carry tool calls")
        out["tool_calls"] = _normalize_tool_calls(tool_calls, f"{where}.tool_calls")
    if role == "tool":
        if not isinstance(tool_call_id, str) or not tool_call_id:
            raise ValidationError(f"{where}.tool_call_id", tool_call_id, "a tool message needs its tool call's id")
        out["tool_call_id"] = validate_text(tool_call_id, f"{where}.tool_call_id")
    if name is not None:
        if not isinstance(name, str):
            raise ValidationError(f"{where}.name", name, "must be a string")
        out["name"] = validate_text(name, f"{where}.name")
    return out


def normalize_messages(messages: Any, *, max_messages: int, max_message_chars: int) -> list[dict[str, Any]]:
    """Validate messages and bring them to the stored plain shape.

    Raises:
        ValidationError: Naming the first offending message and field.
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValidationError("messages", messages, "must be a list of messages")
    if not messages:
        raise ValidationError("messages", messages, "must not be empty")
    if len(messages) > max_messages:
        raise ValidationError("messages", f"<{len(messages)} messages>",
                              f"has more than memory.max_messages={max_messages}")
    return [_normalize_one(m, i, max_message_chars) for i, m in enumerate(messages)]


def task_and_outcome(messages: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """What was asked (the user turns) and what was answered (the last assistant text)."""
    msgs = list(messages)
    task = "\n".join(m["content"] for m in msgs if m["role"] == "user" and m["content"])
    outcome = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant" and m["content"]), "")
    return task, outcome


def interaction_text(task: str, outcome: str) -> str:
    """The text form of an exchange: what is embedded and what a prompt shows."""
    parts = []
    if task:
        parts.append(f"User: {task}")
    if outcome:
        parts.append(f"Assistant: {outcome}")
    return "\n".join(parts)


def content_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the canonical JSON of the messages (ids of tool calls excluded: they
    are random per run and would defeat duplicate detection)."""
    canon = [{k: v for k, v in m.items()} for m in messages]
    for m in canon:
        if "tool_calls" in m:
            m["tool_calls"] = [{"name": c["name"], "args": c["args"]} for c in m["tool_calls"]]
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def validate_score(score: Any, field_name: str = "score") -> float:
    """A feedback score: a finite number in [-1, 1]."""
    value = _finite(score) if isinstance(score, (int, float)) else None  # 10**400: no OverflowError
    if value is None or not -1.0 <= value <= 1.0:
        raise ValidationError(field_name, score, "must be a number in [-1, 1]")
    return value


def validate_min_score(value: Any, field_name: str = "min_score") -> float | None:
    """A recall threshold: None, or a finite number in [-1, 1] (the range of cosine similarity).

    NaN would silently disable the filter (every comparison with it is false) and a
    value above 1 would silently drop everything, so both are refused.
    """
    if value is None:
        return None
    number = _finite(value)
    if number is None or not -1.0 <= number <= 1.0:
        raise ValidationError(field_name, value, "must be a finite number in [-1, 1] (cosine similarity) or None")
    return number


def validate_thread_id(thread_id: Any, field_name: str = "thread_id") -> str | None:
    """A thread id: None or a non-empty string of valid Unicode."""
    if thread_id is None:
        return None
    if not isinstance(thread_id, str) or not thread_id:
        raise ValidationError(field_name, thread_id, "must be a non-empty string or None")
    return validate_text(thread_id, field_name)


def validate_metadata(metadata: Any) -> dict[str, Any]:
    """Caller metadata: a dict with string keys whose values are valid JSON.

    Returns a plain copy (dicts, lists, str, int, float, bool, None). Raises a
    `ValidationError` naming the offending key's path (``metadata.score``) for NaN or
    infinite numbers, integers beyond 64 bits, lone surrogates, NUL, nesting deeper than
    64 levels and values JSON cannot hold. Keys may be any such text: a filter reaches
    every one (see `metadata_key_path`).
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValidationError("metadata", metadata, "must be a dict")
    for key in metadata:
        if not isinstance(key, str):
            raise ValidationError("metadata", key, "keys must be strings")
    return _json_value(metadata, "metadata", int64=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    """Fixed-width ISO-8601 in UTC, so that stored times sort as strings."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def parse_time(value: Any, field_name: str) -> datetime:
    """A datetime or ISO-8601 string, as an aware UTC datetime (naive means UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValidationError(field_name, value, "must be an ISO-8601 time") from exc
    if not isinstance(value, datetime):
        raise ValidationError(field_name, value, "must be a datetime or an ISO-8601 string")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


MAX_TTL_S = 1e10
"""The longest time-to-live in seconds (about 317 years; ``memory.ttl_s`` has the same
bound): an expiry must stay a date (``now + 1e12 s`` is past year 9999 and overflowed)."""


def validate_ttl(value: Any, field_name: str = "ttl_s") -> float | None:
    """A time-to-live in seconds: a finite number in (0, `MAX_TTL_S`], or None (never expires)."""
    if value is None:
        return None
    number = _finite(value)
    if number is None or not 0 < number <= MAX_TTL_S:
        raise ValidationError(field_name, value, "must be a number of seconds > 0 and <= 1e10 (about 317 years), "
                              "or None (never expires)")
    return number


METADATA_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"})
"""The comparison operators a metadata filter accepts: Chroma's, with its meaning."""


def _filter_scalar(value: Any, where: str) -> Any:
    if isinstance(value, bool) or isinstance(value, str):
        return validate_text(value, where) if isinstance(value, str) else value
    if isinstance(value, numbers.Integral):
        if INT64_MIN <= value <= INT64_MAX:  # what metadata can hold (validate_metadata)
            return int(value)
        raise ValidationError(where, value, "must be an integer in [-2**63, 2**63 - 1] (what metadata holds)")
    if _finite(value) is not None:
        return value
    raise ValidationError(where, value, "must be a string, a finite number or a bool (what metadata filters compare)")


def _escape_key(key: str) -> str:
    """One metadata key as a part of a dotted path: ``\\`` and ``.`` escaped with ``\\``, and
    a leading ``$`` too (a filter key starting with ``$`` would read as an operator)."""
    out = key.replace("\\", "\\\\").replace(".", "\\.")
    return "\\" + out if out.startswith("$") else out


def metadata_key_path(key: str, field_name: str = "filter") -> list[str]:
    """A filter key as the metadata keys it goes through: ``"user.tier"`` -> ``["user",
    "tier"]``; ``\\.``, ``\\\\`` and ``\\$`` stand for a literal ``.``, ``\\`` and ``$``
    (``"http\\.status"`` -> ``["http.status"]``).

    The one reading of a key that every backend uses: the journals' SQL walks these keys
    one by one (never a JSON path string, whose quoting differs between SQLite versions),
    and Chroma's metadata names join them escaped again (`flat_metadata`), so a key with
    dots, backslashes, newlines or quotes is reached the same way everywhere.

    Raises:
        ValidationError: A backslash followed by anything else, or at the end.
    """
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\":
            nxt = key[i + 1:i + 2]
            if nxt not in (".", "\\", "$"):
                raise ValidationError(field_name, key, f"unknown escape at index {i}: in a filter key '\\' must be "
                                      "followed by '.', '\\' or '$' (a literal dot, backslash or dollar)")
            current.append(nxt)
            i += 2
            continue
        if ch == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def validate_filter(flt: Any, field_name: str = "filter") -> dict[str, Any] | None:
    """A metadata filter, checked and returned as a plain dict (None: no filter).

    Shape (Chroma's ``where`` language, on the interaction's metadata)::

        {"key": value}                      equality
        {"key": {"$op": value}}             $eq $ne $gt $gte $lt $lte, $in/$nin with a list
        {"$and": [filter, ...]}, {"$or": [filter, ...]}
        several keys in one dict            all of them ($and)

    A dotted key (``"user.tier"``) names a field of a nested dict; ``\\.``, ``\\\\`` and a
    leading ``\\$`` name a key holding a literal dot, backslash or dollar
    (`metadata_key_path`); keys come back in that one spelling. Values are strings,
    finite numbers (integers within 64 bits) or bools. Raises `ValidationError` naming
    the offending part.
    """
    if flt is None:
        return None
    if not isinstance(flt, Mapping) or not flt:
        raise ValidationError(field_name, flt, "must be a non-empty dict such as {'topic': 'billing'}")
    out: dict[str, Any] = {}
    for key, cond in flt.items():
        where = f"{field_name}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(cond, Sequence) or isinstance(cond, str) or not cond:
                raise ValidationError(where, cond, "must be a non-empty list of filters")
            out[key] = [validate_filter(c, f"{where}[{i}]") for i, c in enumerate(cond)]
            continue
        if not isinstance(key, str) or key.startswith("$"):
            raise ValidationError(field_name, key, "keys must be metadata field names (a leading '$' written "
                                  "'\\$'), or $and/$or")
        validate_text(key, field_name)  # NUL: a raw driver error in either journal otherwise
        key = ".".join(_escape_key(part) for part in metadata_key_path(key, field_name))  # one spelling
        where = f"{field_name}.{key}"
        if isinstance(cond, Mapping):
            if len(cond) != 1:
                raise ValidationError(where, cond, "must hold exactly one operator, e.g. {'$gte': 3}")
            (op, value), = cond.items()
            if op not in METADATA_OPERATORS:
                raise ValidationError(where, op, f"unknown operator; one of {sorted(METADATA_OPERATORS)}")
            if op in ("$in", "$nin"):
                if not isinstance(value, Sequence) or isinstance(value, str) or not value:
                    raise ValidationError(f"{where}.{op}", value, "must be a non-empty list")
                value = [_filter_scalar(v, f"{where}.{op}") for v in value]
            else:
                value = _filter_scalar(value, f"{where}.{op}")
            out[key] = {op: value}
        else:
            out[key] = {"$eq": _filter_scalar(cond, where)}
    return out


def has_escaped_keys(metadata: Mapping[str, Any]) -> bool:
    """Whether `flat_metadata` escapes one of the keys of `metadata` (a ``.``, a ``\\`` or
    a leading ``$`` in a key of it or of a nested mapping): such a record's Chroma names
    changed when keys began to be escaped (see `seal_agent.memory.journal.requeue_escaped_keys`)."""
    for key, value in metadata.items():
        if _escape_key(key) != key:
            return True
        if isinstance(value, Mapping) and has_escaped_keys(value):
            return True
    return False


def flat_metadata(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of `metadata` by dotted path (``{"user": {"tier": 1}}`` -> ``{"user.tier": 1}``);
    lists and None are left out (a Chroma metadata value must be a scalar). Keys are
    escaped as `validate_filter` spells them (``{"a.b": 1}`` -> ``{"a\\.b": 1}``), so that
    ``{"a.b": 1}`` and ``{"a": {"b": 1}}`` stay apart and a filter reaches each."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        path = f"{prefix}{_escape_key(key)}"
        if isinstance(value, Mapping):
            out.update(flat_metadata(value, path + "."))
        elif isinstance(value, (str, bool, int, float)):
            out[path] = value
    return out
