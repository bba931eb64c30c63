"""LangGraph pieces over a `SealMemory`: nodes, legacy hooks, tools, and the shared helpers.

Where the namespace and thread come from (the same rules for every piece here and for
`SealMemoryMiddleware`), first match wins:

1. the run's context (``context=`` of ``invoke``): an attribute or key ``namespace``
   (a tuple, or a path ``"users/alice"``), else ``user_id`` -> ``("users", user_id)``;
2. the run's config: ``config["configurable"]["namespace"]``, else ``["user_id"]``;
3. the ``namespace=`` given when the piece was made (default ``("default",)``).

The thread is ``config["configurable"]["thread_id"]`` when there is one.

Logging a turn never breaks the agent: the model has already answered when the turn is
logged, so a turn that cannot be logged (content the log refuses, a closed memory, a
full disk) is reported with a ``logging`` warning giving the reason and the run goes on.
Non-text content blocks (images, files...) are logged as placeholders such as
``[image]``; see `seal_agent.memory.records`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig

from seal_agent.errors import SealAgentError
from seal_agent.memory.records import (
    Memory,
    Namespace,
    parse_namespace,
    validate_min_score,
    validate_namespace,
)

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool

    from seal_agent.seal_memory import SealMemory

__all__ = [
    "MEMORY_MESSAGE_ID",
    "format_memories",
    "last_turn",
    "make_log_node",
    "make_memory_tools",
    "make_post_model_hook",
    "make_pre_model_hook",
    "make_recall_node",
    "resolve_scope",
]

MEMORY_MESSAGE_ID = "seal-memory-context"
"""Id of the system message that carries recalled memories. A fixed id means LangGraph's
``add_messages`` replaces last turn's memories instead of piling new ones on."""

DEFAULT_HEADER = "Relevant memories from earlier conversations (most relevant first):"

logger = logging.getLogger(__name__)


def _lookup(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _as_namespace(value: Any, field: str) -> Namespace:
    return parse_namespace(value, field) if isinstance(value, str) else validate_namespace(value, field)


def resolve_scope(
    config: RunnableConfig | None, context: Any = None, *, default: Namespace = ("default",)
) -> tuple[Namespace, str | None]:
    """The (namespace, thread_id) of a run; see this module's docstring for the rules."""
    configurable = (config or {}).get("configurable", {}) or {}
    namespace: Namespace | None = None
    for source, where in ((context, "context"), (configurable, "config.configurable")):
        ns = _lookup(source, "namespace")
        if ns is not None:
            namespace = _as_namespace(ns, f"{where}.namespace")
            break
        user = _lookup(source, "user_id")
        if user is not None:
            namespace = validate_namespace(("users", str(user)), f"{where}.user_id")
            break
    thread = configurable.get("thread_id")
    return namespace or default, (str(thread) if thread is not None else None)


def last_turn(messages: Sequence[AnyMessage]) -> list[BaseMessage]:
    """The messages of the latest turn: from the last human message to the end.

    The memory system message (our own injection) is left out: it is not part of
    the exchange.
    """
    start = None
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], HumanMessage):
            start = i
            break
    turn = list(messages[start:]) if start is not None else list(messages)
    return [m for m in turn if getattr(m, "id", None) != MEMORY_MESSAGE_ID]


def last_user_text(messages: Sequence[AnyMessage]) -> str | None:
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            text = m.text if isinstance(m.text, str) else str(m.content)
            return text.strip() or None
    return None


def turn_is_complete(messages: Sequence[AnyMessage]) -> bool:
    """True when the last message is an AI answer with no pending tool calls."""
    return bool(messages) and isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls


def format_memories(memories: Sequence[Memory], header: str = DEFAULT_HEADER) -> str:
    """Memories as one prompt block."""
    lines = [header]
    for m in memories:
        body = m.text.replace("\n", " | ")
        lines.append(f"- [{m.created_at:%Y-%m-%d}] {body}")
    return "\n".join(lines)


def _recall_text(mem: SealMemory, messages: Sequence[AnyMessage], ns: Namespace, k: int | None,
                 min_score: float | None, header: str) -> str | None:
    query = last_user_text(messages)
    if query is None:
        return None
    memories = mem.recall(query, namespace=ns, k=k, min_score=min_score)
    return format_memories(memories, header) if memories else None


def _log_turn(mem: SealMemory, messages: Sequence[AnyMessage], config: RunnableConfig | None, context: Any,
              default: Namespace, metadata: Mapping[str, Any] | None) -> str | None:
    """Log the latest turn in the run's scope; on failure warn and return None, never raise.

    Why swallow: this runs after the model answered, so raising would throw that answer
    away and crash the user's agent run over a memory problem. Nothing is half-written:
    `SealMemory.log` validates everything before it writes.
    """
    turn = last_turn(messages)
    if not any(isinstance(m, HumanMessage) for m in turn):
        return None  # nothing a user asked: not an exchange
    where = "?"
    try:
        ns, thread = resolve_scope(config, context, default=default)
        where = f"namespace={'/'.join(ns)}, thread_id={thread!r}"
        return mem.log(turn, namespace=ns, thread_id=thread, metadata=dict(metadata or {}))
    except SealAgentError as exc:
        logger.warning("seal_agent: turn not logged (%s): %s", where, exc)
    except Exception as exc:  # an unexpected failure must not end the run either; keep the traceback
        logger.warning("seal_agent: turn not logged (%s): %s: %s", where, type(exc).__name__, exc, exc_info=True)
    return None


# ------------------------------------------------------------------ StateGraph nodes


def make_recall_node(
    mem: SealMemory,
    *,
    namespace: Namespace = ("default",),
    k: int | None = None,
    min_score: float | None = None,
    key: str = "messages",
    header: str = DEFAULT_HEADER,
) -> Callable[..., dict[str, Any]]:
    """A node recalling memories for the last user message.

    With ``key="messages"`` (default) it writes one `SystemMessage` with id
    `MEMORY_MESSAGE_ID` (replaced, not appended, on later turns); with another key it
    writes the list of `Memory` records to that state key.

    Raises:
        ValidationError: `min_score` is not a finite number in [-1, 1] (checked here,
            not at the first turn).
    """
    min_score = validate_min_score(min_score)

    def recall_node(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ns, _ = resolve_scope(config, None, default=namespace)
        messages = state.get("messages", [])
        if key != "messages":
            query = last_user_text(messages)
            return {key: mem.recall(query, namespace=ns, k=k, min_score=min_score) if query else []}
        text = _recall_text(mem, messages, ns, k, min_score, header)
        return {"messages": [SystemMessage(content=text or header + "\n(none)", id=MEMORY_MESSAGE_ID)]}

    return recall_node


def make_log_node(
    mem: SealMemory, *, namespace: Namespace = ("default",), metadata: Mapping[str, Any] | None = None
) -> Callable[..., dict[str, Any]]:
    """A node logging the latest turn (last human message to the end); changes no state.

    A turn that cannot be logged is reported with a warning, not raised (see `_log_turn`).
    """

    def log_node(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        _log_turn(mem, state.get("messages", []), config, None, namespace, metadata)
        return {}

    return log_node


# ------------------------------------------------- legacy create_react_agent hooks


def make_pre_model_hook(
    mem: SealMemory, *, namespace: Namespace = ("default",), k: int | None = None,
    min_score: float | None = None, header: str = DEFAULT_HEADER,
) -> Callable[..., dict[str, Any]]:
    """``pre_model_hook``: memories go into ``llm_input_messages`` (seen by the model,
    not stored in the graph state). `min_score` is validated here, like `make_recall_node`."""
    min_score = validate_min_score(min_score)

    def pre_model_hook(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        ns, _ = resolve_scope(config, None, default=namespace)
        messages = list(state.get("messages", []))
        text = _recall_text(mem, messages, ns, k, min_score, header)
        if text is None:
            return {"llm_input_messages": messages}
        return {"llm_input_messages": [SystemMessage(content=text, id=MEMORY_MESSAGE_ID), *messages]}

    return pre_model_hook


def make_post_model_hook(
    mem: SealMemory, *, namespace: Namespace = ("default",), metadata: Mapping[str, Any] | None = None
) -> Callable[..., dict[str, Any]]:
    """``post_model_hook``: logs the turn once the model answered without tool calls."""

    def post_model_hook(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        messages = state.get("messages", [])
        if turn_is_complete(messages):
            _log_turn(mem, messages, config, None, namespace, metadata)
        return {}

    return post_model_hook


# -------------------------------------------------------------------------- tools


def make_memory_tools(mem: SealMemory, *, namespace: Namespace = ("default",), k: int | None = None) -> list[BaseTool]:
    """``save_memory`` and ``recall_memory``: the agent decides what to keep and look up."""
    from langchain_core.tools import tool

    @tool
    def save_memory(content: str, config: RunnableConfig) -> str:
        """Save a fact or note worth remembering in later conversations."""
        ns, thread = resolve_scope(config, None, default=namespace)
        try:
            id_ = mem.log([{"role": "assistant", "content": content}], namespace=ns, thread_id=thread,
                          metadata={"kind": "note"})
        except SealAgentError as exc:  # tell the model, do not crash the run (see _log_turn)
            logger.warning("seal_agent: note not saved (namespace=%s): %s", "/".join(ns), exc)
            return f"could not save the memory: {exc}"
        return f"saved memory {id_}"

    @tool
    def recall_memory(query: str, config: RunnableConfig) -> str:
        """Look up memories from earlier conversations relevant to the query."""
        ns, _ = resolve_scope(config, None, default=namespace)
        memories = mem.recall(query, namespace=ns, k=k)
        return format_memories(memories) if memories else "No relevant memories."

    return [save_memory, recall_memory]
