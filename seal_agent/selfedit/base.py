"""Self-edits: the training data a model writes for itself from one logged interaction.

A *strategy* turns one `Interaction` into training examples in the trainer's format
(``{"text": ...}`` documents or ``{"messages": [...]}`` chat examples):

1. `SelfEditStrategy.build_prompt` asks the model for a self-edit (None: no model needed);
2. `SelfEditStrategy.parse` reads items out of the reply (implications, Q/A pairs, ...);
3. each item is filtered (`_filters.rejection`), turned into an example
   (`SelfEditStrategy.to_example`), deduplicated by hash and capped at
   ``SelfEditConfig.max_items_per_interaction``;
4. `SelfEditStrategy.split_probes` may hold some items out as `Probe`s for the gate;
5. `SelfEditStrategy.extra_examples` adds examples that need no model (SEAL keeps the
   passage itself as one more document). They are not capped: they are logged text.

Nothing a model does makes `generate` raise: an exception or an unreadable reply is
counted in `SelfEditBatch.dropped` (``teacher_error``, ``unparseable``) and the run goes on.

`generate_self_edits` routes many interactions (negative feedback -> the critique
strategy; the rest -> every configured strategy) and merges the results, dedup included.
Strategies are found by name in a registry (`register_self_edit_strategy`).
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar, overload

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from tqdm.auto import tqdm

from seal_agent.config import SelfEditConfig
from seal_agent.errors import NotFoundError, ValidationError
from seal_agent.memory.records import Interaction, Namespace, join_namespace
from seal_agent.selfedit._filters import example_hash, rejection

__all__ = [
    "FORMAT_VERSION",
    "Candidate",
    "Probe",
    "SelfEdit",
    "SelfEditBatch",
    "SelfEditStrategy",
    "agenerate_self_edits",
    "chat_messages",
    "final_answer_index",
    "generate_self_edits",
    "get_self_edit_strategy",
    "passage_text",
    "register_self_edit_strategy",
    "self_edit_strategies",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of `SelfEditBatch.to_dict`'s layout (persisted self-edit sets carry it)."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SelfEdit:
    """One training example a strategy produced, with its lineage.

    Attributes:
        kind: ``"document"`` (``{"text": ...}``, loss on every token) or ``"chat"``
            (``{"messages": [...]}``, loss on the assistant turns).
        example: The training example in the trainer's format.
        strategy: Name of the strategy that wrote it.
        interaction_id: The interaction it was derived from.
        hash: sha256 of the canonical example: lineage in adapter manifests, and dedup.
    """

    kind: Literal["document", "chat"]
    example: dict[str, Any]
    strategy: str
    interaction_id: str
    hash: str

    @classmethod
    def of(cls, example: dict[str, Any], *, strategy: str, interaction_id: str) -> SelfEdit:
        """Wrap `example`, deriving `kind` and `hash` from it."""
        kind: Literal["document", "chat"] = "chat" if "messages" in example else "document"
        return cls(kind, example, strategy, interaction_id, example_hash(example))


@dataclass(frozen=True)
class Probe:
    """A held-out question about an interaction: the gate asks it to check new knowledge.

    Attributes:
        question: What to ask the candidate model.
        answer: The reference answer (written by the model from the logged passage).
        interaction_id: The interaction the pair was derived from.
        namespace: That interaction's namespace (probes never cross namespaces).
        hash: Hash of the chat example the pair would have been; no training example
            in the same batch has it.
    """

    question: str
    answer: str
    interaction_id: str
    namespace: Namespace
    hash: str


@dataclass
class SelfEditBatch:
    """What self-editing produced, and what it dropped and why.

    Attributes:
        edits: Training examples, unique by hash.
        probes: Held-out Q/A pairs for the validation gate (never among `edits`).
        dropped: Reason -> count of items (or whole model replies) dropped. Reasons:
            ``empty``, ``degenerate``, ``duplicate``, ``too_long``, ``too_short``,
            ``over_cap``, ``unparseable``, ``teacher_error``, ``excluded``.
        errors: One line per model failure (``teacher_error``), for reports.
        cancelled: Whether a cancel event stopped the run before every interaction
            was processed.
    """

    edits: list[SelfEdit] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False

    @property
    def examples(self) -> list[dict[str, Any]]:
        """The training examples, as the trainer takes them."""
        return [e.example for e in self.edits]

    def drop(self, reason: str, n: int = 1) -> None:
        """Count `n` items dropped for `reason`."""
        if n > 0:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def extend(self, other: SelfEditBatch) -> None:
        """Append `other`'s contents (no dedup: `generate_self_edits` does that once, at the end)."""
        self.edits.extend(other.edits)
        self.probes.extend(other.probes)
        for reason, n in other.dropped.items():
            self.drop(reason, n)
        self.errors.extend(other.errors)
        self.cancelled = self.cancelled or other.cancelled

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the format and library versions."""
        from seal_agent import __version__

        return {
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "edits": [{"kind": e.kind, "example": e.example, "strategy": e.strategy,
                       "interaction_id": e.interaction_id, "hash": e.hash} for e in self.edits],
            "probes": [{"question": p.question, "answer": p.answer, "interaction_id": p.interaction_id,
                        "namespace": list(p.namespace), "hash": p.hash} for p in self.probes],
            "dropped": dict(sorted(self.dropped.items())),
            "errors": list(self.errors),
            "cancelled": self.cancelled,
        }


class Candidate(NamedTuple):
    """An item that passed the filters, with the example it becomes."""

    item: Any
    example: dict[str, Any]
    hash: str


# --------------------------------------------------------------------------- text helpers


def passage_text(interaction: Interaction) -> str:
    """The exchange as plain text, the "passage" self-edits are written about.

    User turns, tool results and assistant text in order, one labelled paragraph each.
    System prompts are left out: they are instructions, not knowledge the exchange taught.
    """
    parts = []
    for m in interaction.messages:
        content = (m.get("content") or "").strip()
        if m["role"] == "system" or not content:
            continue
        if m["role"] == "tool":
            label = f"Tool result ({m['name']})" if m.get("name") else "Tool result"
        else:
            label = "User" if m["role"] == "user" else "Assistant"
        parts.append(f"{label}: {content}")
    return "\n".join(parts) or interaction.text


def _tool_call_text(call: Mapping[str, Any]) -> str:
    # The exact text AdaptiveChatModel writes for a call (seal_agent.model._hermes) and
    # the ChatML template renders, so training and serving see the same tokens.
    body = json.dumps({"name": call["name"], "arguments": call.get("args", {})}, ensure_ascii=False)
    return f"\n<tool_call>\n{body}\n</tool_call>"


def chat_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Logged messages as plain ``{"role", "content"}`` turns any chat template renders.

    Tool calls become text in the assistant turn, Hermes-style
    (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``); tool results stay
    ``tool`` turns (the ChatML template renders them as a user turn in
    ``<tool_response>``, the plain template as ``<|tool|>``). Assistant turns left empty
    (no text, no calls) are dropped: the trainer rejects empty assistant targets.
    """
    out = []
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "assistant":
            content += "".join(_tool_call_text(c) for c in m.get("tool_calls") or ())
            if not content.strip():
                continue
        out.append({"role": m["role"], "content": content})
    return out


def final_answer_index(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the final answer: the last assistant message with text and no tool calls."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "assistant" and (m.get("content") or "").strip() and not m.get("tool_calls"):
            return i
    return None


def _reply_text(reply: Any) -> str:
    if isinstance(reply, BaseMessage):
        return reply.text
    if isinstance(reply, str):
        return reply
    raise TypeError(f"the model returned a {type(reply).__name__}, not a message")


def _bind(model: Any, config: SelfEditConfig) -> Any:
    """Pass sampling options only to a model that declares them as fields.

    An unknown invocation kwarg reaches a hosted model's API and fails there, so
    ``temperature``/``max_new_tokens``/``seed`` are bound only where the model class
    has a field of that name (AdaptiveChatModel has all three; ``max_tokens`` stands in
    for ``max_new_tokens`` on hosted models).
    """
    fields = getattr(type(model), "model_fields", {})
    options: dict[str, Any] = {}
    if "temperature" in fields:
        options["temperature"] = config.temperature
    if "max_new_tokens" in fields:
        options["max_new_tokens"] = config.max_new_tokens
    elif "max_tokens" in fields:
        options["max_tokens"] = config.max_new_tokens
    if "seed" in fields:
        options["seed"] = config.seed
    return model.bind(**options) if options else model


# --------------------------------------------------------------------------- strategy


class SelfEditStrategy(ABC):
    """How one interaction becomes training examples. Subclasses need a no-argument constructor.

    Attributes:
        name: Registry name; recorded on every `SelfEdit` it produces.
        check_length: Whether ``min_item_chars``/``max_item_chars`` apply to items
            (False for logged text, which was size-checked when logged).
    """

    name: str = ""
    check_length: bool = True

    def applies_to(self, interaction: Interaction) -> bool:
        """Whether this strategy may learn from `interaction` at all (default: yes)."""
        return True

    @abstractmethod
    def build_prompt(self, interaction: Interaction) -> list[BaseMessage] | None:
        """The messages asking the model for a self-edit, or None when no model is needed."""

    @abstractmethod
    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        """Items read from the model's reply `text` (``""`` for strategies with no prompt).

        Must not raise on malformed text: return what could be read, or ``[]``.
        """

    @abstractmethod
    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        """The training example for one kept item."""

    def item_text(self, item: Any) -> str:
        """The text the filters judge (what the model wrote); items are strings by default."""
        return item if isinstance(item, str) else str(item)

    def split_probes(self, candidates: list[Candidate], interaction: Interaction,
                     config: SelfEditConfig) -> tuple[list[Candidate], list[Probe]]:
        """Hold some candidates out of training as probes (default: none)."""
        return candidates, []

    def extra_examples(self, interaction: Interaction) -> list[dict[str, Any]]:
        """Examples added without the model, e.g. the passage itself (default: none)."""
        return []

    # -- the concrete pipeline ------------------------------------------------

    def generate(self, interaction: Interaction, model: BaseChatModel | None,
                 config: SelfEditConfig) -> SelfEditBatch:
        """Ask `model` for a self-edit about `interaction`; parse, filter, cap.

        Args:
            interaction: The logged exchange to learn from.
            model: The chat model writing the self-edit (unused when `build_prompt`
                returns None).
            config: Sampling options, filters and the cap.

        Returns:
            The batch; model failures are counted in it, never raised.

        Raises:
            ValidationError: The strategy needs a model and `model` is None.
        """
        if not self.applies_to(interaction):
            return SelfEditBatch()
        prompt = self.build_prompt(interaction)
        if prompt is None:
            return self._collect(None, interaction, config)
        if model is None:
            raise ValidationError("model", None, f"self-edit strategy {self.name!r} needs a chat model")
        try:
            text = _reply_text(_bind(model, config).invoke(prompt))
        except Exception as exc:  # any failure of the teacher is counted, never raised
            return self._teacher_failed(exc, interaction, config)
        return self._collect(text, interaction, config)

    async def agenerate(self, interaction: Interaction, model: BaseChatModel | None,
                        config: SelfEditConfig) -> SelfEditBatch:
        """Async twin of `generate`."""
        if not self.applies_to(interaction):
            return SelfEditBatch()
        prompt = self.build_prompt(interaction)
        if prompt is None:
            return self._collect(None, interaction, config)
        if model is None:
            raise ValidationError("model", None, f"self-edit strategy {self.name!r} needs a chat model")
        try:
            text = _reply_text(await _bind(model, config).ainvoke(prompt))
        except Exception as exc:
            return self._teacher_failed(exc, interaction, config)
        return self._collect(text, interaction, config)

    def _teacher_failed(self, exc: Exception, interaction: Interaction, config: SelfEditConfig) -> SelfEditBatch:
        message = f"{self.name}: interaction {interaction.id}: {type(exc).__name__}: {exc}"
        logger.warning("self-edit model failed: %s", message)
        batch = self._collect(None, interaction, config, model_items=False)
        batch.drop("teacher_error")
        batch.errors.append(message)
        return batch

    def _collect(self, text: str | None, interaction: Interaction, config: SelfEditConfig,
                 *, model_items: bool = True) -> SelfEditBatch:
        """Parse `text` (None: the strategy has no prompt), filter, dedup, cap, split."""
        batch = SelfEditBatch()
        items: list[Any] = []
        if model_items:
            if text is not None and not text.strip():
                batch.drop("empty")
            else:
                try:
                    items = self.parse(text or "", interaction)
                except Exception:  # a parser bug on odd text must not end a consolidation
                    logger.exception("%s could not parse a reply for %s", self.name, interaction.id)
                if not items and text is not None:
                    batch.drop("unparseable")

        max_chars = config.max_item_chars if self.check_length else None
        kept: list[Candidate] = []
        seen: set[str] = set()
        for item in items:
            reason = rejection(self.item_text(item), min_chars=config.min_item_chars, max_chars=max_chars)
            if reason is not None:
                batch.drop(reason)
                continue
            example = self.to_example(item, interaction)
            digest = example_hash(example)
            if digest in seen:
                batch.drop("duplicate")
                continue
            seen.add(digest)
            kept.append(Candidate(item, example, digest))
        cap = config.max_items_per_interaction
        batch.drop("over_cap", len(kept) - cap)
        train, batch.probes = self.split_probes(kept[:cap], interaction, config)

        examples = [c.example for c in train]
        for example in self.extra_examples(interaction):
            if example_hash(example) in seen:
                batch.drop("duplicate")
            else:
                examples.append(example)
        batch.edits = [SelfEdit.of(ex, strategy=self.name, interaction_id=interaction.id) for ex in examples]
        return batch


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[SelfEditStrategy]] = {}
_S = TypeVar("_S", bound=type[SelfEditStrategy])


def _register(name: str, cls: Any) -> Any:
    if not isinstance(name, str) or not name:
        raise ValidationError("name", name, "must be a non-empty strategy name")
    if not (isinstance(cls, type) and issubclass(cls, SelfEditStrategy)):
        raise ValidationError("strategy", cls, "must be a subclass of SelfEditStrategy")
    previous = _REGISTRY.get(name)
    if previous is not None and previous is not cls:
        logger.warning("self-edit strategy %r: %s replaces %s", name, cls.__qualname__, previous.__qualname__)
    _REGISTRY[name] = cls
    return cls


@overload
def register_self_edit_strategy(name_or_cls: str) -> Callable[[_S], _S]: ...


@overload
def register_self_edit_strategy(name_or_cls: _S) -> _S: ...


def register_self_edit_strategy(name_or_cls: str | _S) -> Callable[[_S], _S] | _S:
    """Register a strategy class by name; usable as a decorator.

    ``@register_self_edit_strategy`` registers under the class's ``name`` attribute;
    ``@register_self_edit_strategy("mine")`` under ``"mine"``. A later registration
    under the same name replaces the earlier one (with a warning).

    Raises:
        ValidationError: Not a `SelfEditStrategy` subclass, or an empty name.
    """
    if isinstance(name_or_cls, str):
        name = name_or_cls
        return lambda cls: _register(name, cls)
    return _register(getattr(name_or_cls, "name", ""), name_or_cls)


def self_edit_strategies() -> list[str]:
    """Names of the registered strategies, sorted."""
    return sorted(_REGISTRY)


def get_self_edit_strategy(name: str | SelfEditStrategy) -> SelfEditStrategy:
    """A new instance of the strategy registered as `name` (an instance passes through).

    Raises:
        NotFoundError: No strategy has that name; the message lists the known names.
    """
    if isinstance(name, SelfEditStrategy):
        return name
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        error = NotFoundError("self-edit strategy", name)
        error.args = (f"{error.args[0]}; known: {', '.join(self_edit_strategies())}",)
        raise error
    strategy = cls()
    strategy.name = name  # the name it was registered under is the one lineage records
    return strategy


# --------------------------------------------------------------------------- many interactions


def _excluded(namespace: Namespace, excluded: Sequence[str]) -> bool:
    path = join_namespace(namespace)
    return any(path == ex.strip("/") or path.startswith(ex.strip("/") + "/") for ex in excluded)


def _plan(interactions: Iterable[Interaction], config: SelfEditConfig,
          result: SelfEditBatch) -> list[tuple[Interaction, list[SelfEditStrategy]]]:
    """Which strategies each interaction goes through (unknown names fail here, before any work)."""
    positive = [get_self_edit_strategy(n) for n in dict.fromkeys(config.strategies)]
    negative = [get_self_edit_strategy(config.negative_strategy)]
    plan = []
    for interaction in interactions:
        if _excluded(interaction.namespace, config.exclude_namespaces):
            result.drop("excluded")
        elif interaction.feedback is not None and interaction.feedback < 0:
            plan.append((interaction, negative))  # never `raw`: it would teach the bad answer
        else:
            plan.append((interaction, positive))
    return plan


def _dedup(batch: SelfEditBatch) -> SelfEditBatch:
    """First occurrence wins across interactions; nothing a probe asks stays in training."""
    probes: dict[str, Probe] = {}
    for p in batch.probes:
        if p.hash in probes:
            batch.drop("duplicate")
        else:
            probes[p.hash] = p
    edits: dict[str, SelfEdit] = {}
    for e in batch.edits:
        if e.hash in edits or e.hash in probes:
            batch.drop("duplicate")
        else:
            edits[e.hash] = e
    batch.edits, batch.probes = list(edits.values()), list(probes.values())
    return batch


def generate_self_edits(
    interactions: Iterable[Interaction],
    model: BaseChatModel | None,
    config: SelfEditConfig | None = None,
    *,
    progress: bool = True,
    cancel_event: threading.Event | None = None,
) -> SelfEditBatch:
    """Self-edits for many interactions, merged and deduplicated.

    Routing: an interaction with negative feedback goes through
    ``config.negative_strategy`` only; any other through every strategy in
    ``config.strategies``. Interactions in ``config.exclude_namespaces`` are skipped
    (counted as ``excluded``).

    Args:
        interactions: The interactions to learn from.
        model: The chat model writing self-edits (None works for model-free
            strategies such as ``raw``).
        config: Strategies, filters and sampling; defaults to `SelfEditConfig()`.
        progress: Show a tqdm progress bar.
        cancel_event: When set, stops before the next model call; the result so far is
            returned with ``cancelled=True``.

    Returns:
        The merged batch, unique by hash, with drop counts and model errors.

    Raises:
        NotFoundError: A configured strategy name is not registered.
        ValidationError: A strategy needs a model and `model` is None.
    """
    config = config or SelfEditConfig()
    result = SelfEditBatch()
    plan = _plan(interactions, config, result)
    with tqdm(total=len(plan), disable=not progress, desc="self-edits", unit="interaction") as bar:
        for interaction, strategies in plan:
            for strategy in strategies:
                if cancel_event is not None and cancel_event.is_set():
                    result.cancelled = True
                    return _dedup(result)
                result.extend(strategy.generate(interaction, model, config))
            bar.update(1)
    return _dedup(result)


async def agenerate_self_edits(
    interactions: Iterable[Interaction],
    model: BaseChatModel | None,
    config: SelfEditConfig | None = None,
    *,
    progress: bool = True,
    cancel_event: threading.Event | None = None,
) -> SelfEditBatch:
    """Async twin of `generate_self_edits` (interactions are processed one at a time,
    in order, so the result equals the sync one for a deterministic model)."""
    config = config or SelfEditConfig()
    result = SelfEditBatch()
    plan = _plan(interactions, config, result)
    with tqdm(total=len(plan), disable=not progress, desc="self-edits", unit="interaction") as bar:
        for interaction, strategies in plan:
            for strategy in strategies:
                if cancel_event is not None and cancel_event.is_set():
                    result.cancelled = True
                    return _dedup(result)
                result.extend(await strategy.agenerate(interaction, model, config))
            bar.update(1)
    return _dedup(result)
