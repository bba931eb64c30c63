"""`SealMemoryMiddleware` for ``langchain.agents.create_agent``.

* Before each model call it recalls the top-k memories of the run's namespace for the
  latest user message and adds them to the system prompt as one block. They are seen
  by the model but not stored in the conversation state, so the history does not grow
  with them. The model is called several times per turn when tools run; the block is
  recalled once and reused for those calls as long as the memory has not changed and
  none of its memories expired (see `SealMemoryMiddleware._memory_block`), so it is
  never stale. With ``facts`` (default: ``memory.facts``) the
  block starts with the namespace's distilled facts (see `seal_agent.memory.facts`):
  current knowledge first, superseded facts never, then the episodes.
* After the agent finishes a turn it logs the turn (last user message to the final
  answer, tool calls and results included) with the run's thread id. A turn that
  cannot be logged is reported with a ``logging`` warning; the run goes on.

Namespace and thread come from the run's context or config; see
`seal_agent.integrations.langgraph` for the rules. Typical use::

    agent = create_agent(model, tools, middleware=[mem.middleware()])
    agent.invoke({"messages": [...]},
                 config={"configurable": {"thread_id": "t1", "user_id": "alice"}})
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import SystemMessage
from langgraph.config import get_config

from seal_agent.integrations.langgraph import (
    DEFAULT_HEADER,
    _log_turn,
    format_memories,
    last_user_text,
    resolve_scope,
)
from seal_agent.memory.records import Memory, Namespace, validate_min_score, validate_namespace

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

    from seal_agent.seal_memory import SealMemory

__all__ = ["FACTS_HEADER", "SealMemoryMiddleware"]

FACTS_HEADER = "What you know about this user (current facts, most relevant first):"


def _current_config() -> dict[str, Any]:
    try:
        return dict(get_config())
    except RuntimeError:  # called outside a runnable context (e.g. a unit test)
        return {}


class SealMemoryMiddleware(AgentMiddleware):
    """Recall into the prompt before the model; log the exchange after the turn.

    Args:
        memory: The `SealMemory` to read and write.
        namespace: Namespace when the run names none.
        k: Memories per prompt; default ``memory.recall_k``.
        min_score: Leave out memories less similar than this: a finite number in
            [-1, 1] (cosine similarity), checked here.
        header: First line of the memory block.
        log: Log turns after the agent finishes (set False for read-only use).
        recall: Recall before model calls (set False for write-only use).
        metadata: Extra metadata stored with every logged turn.
        facts: Also recall distilled facts and show them before the episodes
            (``memory.facts`` writes them at consolidation); default: ``memory.facts``.
    """

    def __init__(
        self,
        memory: SealMemory,
        *,
        namespace: Namespace = ("default",),
        k: int | None = None,
        min_score: float | None = None,
        header: str = DEFAULT_HEADER,
        log: bool = True,
        recall: bool = True,
        metadata: Mapping[str, Any] | None = None,
        facts: bool | None = None,
    ) -> None:
        super().__init__()
        if facts is not None and not isinstance(facts, bool):
            from seal_agent.errors import ValidationError

            raise ValidationError("facts", facts, "must be true, false or None (None: memory.facts)")
        self.facts = memory.config.memory.facts if facts is None else facts
        self.memory = memory
        self.namespace = validate_namespace(namespace)
        self.k = k
        self.min_score = validate_min_score(min_score)
        self.header = header
        self.log_turns = log
        self.recall_memories = recall
        self.metadata = dict(metadata or {})
        # (namespace, query) -> (block, ids behind it that have a TTL), valid only at
        # journal revision `_cache_revision`. Why a revision and not a per-turn cache: the
        # journal's revision changes on every commit by anyone (log, feedback, forget, a
        # tool's save_memory, another process), so a hit is what recall would return now.
        # A per-turn cache would still show a memory forgotten mid-turn, and keying by
        # question alone (the old cache) kept serving "Rex" after "my dog is called Max
        # now" and after `forget`. Expiry commits nothing (reads hide an expired row at
        # once; the sweep forgets it later), so a hit whose block holds a memory with a
        # TTL also checks that those ids are still live (see `_expiring`).
        self._cache: dict[tuple[Namespace, str], tuple[str | None, tuple[str, ...]]] = {}
        self._cache_revision: int | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ recall

    def _memory_block(self, request: ModelRequest) -> str | None:
        """The memory block for this model call: recalled, or reused from the cache when
        nothing was committed to the journal since it was recalled."""
        runtime = request.runtime
        ns, _ = resolve_scope(_current_config(), getattr(runtime, "context", None), default=self.namespace)
        query = last_user_text(request.messages)
        if query is None:
            return None
        key = (ns, query)
        self.memory._check_open()
        # Read before recalling: a write during the recall leaves the block filed under
        # the older revision, so the next call recalls again rather than miss the write.
        revision = self.memory._journal.revision()
        with self._lock:
            if revision != self._cache_revision:
                self._cache.clear()
                self._cache_revision = revision
            cached = self._cache.get(key)
        if cached is not None:
            block, expiring = cached
            # the journal's clock decides, as for every read (a host's clock may differ)
            if not expiring or len(self.memory._journal.get_many(list(expiring))) == len(expiring):
                return block
        found = self._recall(query, ns)
        block = self._format(found)
        expiring = self._expiring(found)
        with self._lock:
            if revision == self._cache_revision and expiring is not None:
                if len(self._cache) >= 256:  # many users between two writes: bound the memory
                    self._cache.clear()
                self._cache[key] = (block, expiring)
        return block

    def _recall(self, query: str, ns: Namespace) -> list[Memory]:
        kinds = ("episodes", "facts") if self.facts else ("episodes",)
        return self.memory.recall(query, namespace=ns, k=self.k, min_score=self.min_score, kinds=kinds)

    def _expiring(self, found: list[Memory]) -> tuple[str, ...] | None:
        """The interaction ids behind `found` (episodes, facts' sources) that have a TTL,
        which a cache hit must find still live; None when one already expired since the
        recall (the block must not be cached at all)."""
        ids = sorted({s for m in found for s in (m.metadata.get("sources", ()) if m.kind == "fact" else (m.id,))})
        if not ids:
            return ()
        rows = self.memory._journal.get_many(ids)
        if len(rows) != len(ids):
            return None
        return tuple(i for i, it in rows.items() if it.expires_at is not None)

    def _format(self, found: list[Memory]) -> str | None:
        """Facts block, then episodes block (either left out when empty)."""
        facts = [m for m in found if m.kind == "fact"]
        episodes = [m for m in found if m.kind != "fact"]
        parts = []
        if facts:
            parts.append("\n".join([FACTS_HEADER, *(f"- {m.text}" for m in facts)]))
        if episodes:
            parts.append(format_memories(episodes, self.header))
        return "\n\n".join(parts) or None

    def _with_memories(self, request: ModelRequest, block: str | None) -> ModelRequest:
        if block is None:
            return request
        base = request.system_prompt
        content = f"{base}\n\n{block}" if base else block
        return request.override(system_message=SystemMessage(content=content))

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        if not self.recall_memories:
            return handler(request)
        return handler(self._with_memories(request, self._memory_block(request)))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        if not self.recall_memories:
            return await handler(request)
        block = await asyncio.to_thread(self._memory_block, request)
        return await handler(self._with_memories(request, block))

    # --------------------------------------------------------------------- log

    def after_agent(self, state: Any, runtime: Runtime) -> dict[str, Any] | None:
        if self.log_turns:  # never raises: see _log_turn
            _log_turn(self.memory, state["messages"], _current_config(), getattr(runtime, "context", None),
                      self.namespace, self.metadata)
        return None

    async def aafter_agent(self, state: Any, runtime: Runtime) -> dict[str, Any] | None:
        if self.log_turns:
            await asyncio.to_thread(_log_turn, self.memory, state["messages"], _current_config(),
                                    getattr(runtime, "context", None), self.namespace, self.metadata)
        return None
