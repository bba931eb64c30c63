"""Self-edits: the training data a model writes for itself from one logged interaction.

A *strategy* turns one `Interaction` into training examples in the trainer's format
(``{"text": ...}`` documents or ``{"messages": [...]}`` chat examples):

1. `SelfEditStrategy.build_prompt` asks the model for a self-edit (None: no model needed);
2. `SelfEditStrategy.parse` reads items out of each of the ``SelfEditConfig.samples``
   replies (implications, Q/A pairs, ...); their items are pooled;
3. each item is filtered (`_filters.rejection`), checked against what the exchange said
   (`_filters.unsupported_words`, for `grounded` strategies), turned into an example
   (`SelfEditStrategy.to_example`), deduplicated by hash and capped at
   ``SelfEditConfig.max_items_per_interaction``; every dropped item or reply is kept
   with its reason in `SelfEditBatch.rejected`;
4. `SelfEditStrategy.split_probes` may hold some items out as `Probe`s for the gate;
5. `SelfEditStrategy.extra_examples` adds examples that need no model (SEAL keeps the
   passage itself as one more document: here what was stated, `stated_text`). They are
   not capped: they are logged text.

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
from seal_agent.errors import NotFoundError, TrainingCancelled, ValidationError
from seal_agent.memory.provenance import is_acknowledgement, reply_is_knowledge
from seal_agent.memory.records import Interaction, Namespace, join_namespace
from seal_agent.selfedit._filters import example_hash, rejection, unsupported_words

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
    "stated_text",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
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
        model_written: Whether a model wrote it (False for logged text such as the
            user's own statements); the self-edit yield counts only these.
    """

    kind: Literal["document", "chat"]
    example: dict[str, Any]
    strategy: str
    interaction_id: str
    hash: str
    model_written: bool = False

    @classmethod
    def of(cls, example: dict[str, Any], *, strategy: str, interaction_id: str,
           model_written: bool = False) -> SelfEdit:
        """Wrap `example`, deriving `kind` and `hash` from it."""
        kind: Literal["document", "chat"] = "chat" if "messages" in example else "document"
        return cls(kind, example, strategy, interaction_id, example_hash(example), model_written)


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
            ``over_cap``, ``unparseable``, ``truncated`` (cut off by the token budget),
            ``unsupported`` (states something the exchange does not), ``teacher_error``,
            ``excluded``.
        rejected: Every dropped reply or item the model wrote, with its reason, so that
            anyone can see why: ``{"reason", "strategy", "interaction_id", "text", "detail"}``.
        errors: One line per model failure (``teacher_error``), for reports.
        cancelled: Whether a cancel event stopped the run before every interaction
            was processed.
    """

    edits: list[SelfEdit] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, str]] = field(default_factory=list)
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

    def reject(self, reason: str, strategy: str, interaction_id: str, text: str, detail: str = "") -> None:
        """Count one dropped reply or item and keep its text with the reason."""
        self.drop(reason)
        self.rejected.append({"reason": reason, "strategy": strategy, "interaction_id": interaction_id,
                              "text": text, "detail": detail})

    @property
    def yield_rate(self) -> float | None:
        """Usable items / distinct items the model wrote (None when it wrote none).

        Duplicates are left out of both counts: sampling several replies repeats good
        items by design. Whole replies that were unparseable or empty count as one item.
        """
        model_rejects = sum(1 for r in self.rejected if r["reason"] not in ("duplicate", "over_cap"))
        written = sum(1 for e in self.edits if e.model_written) + len(self.probes)
        total = written + model_rejects
        return written / total if total else None

    def extend(self, other: SelfEditBatch) -> None:
        """Append `other`'s contents (no dedup: `generate_self_edits` does that once, at the end)."""
        self.edits.extend(other.edits)
        self.probes.extend(other.probes)
        for reason, n in other.dropped.items():
            self.drop(reason, n)
        self.rejected.extend(other.rejected)
        self.errors.extend(other.errors)
        self.cancelled = self.cancelled or other.cancelled

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the format and library versions."""
        from seal_agent import __version__

        return {
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "edits": [{"kind": e.kind, "example": e.example, "strategy": e.strategy,
                       "interaction_id": e.interaction_id, "hash": e.hash,
                       "model_written": e.model_written} for e in self.edits],
            "probes": [{"question": p.question, "answer": p.answer, "interaction_id": p.interaction_id,
                        "namespace": list(p.namespace), "hash": p.hash} for p in self.probes],
            "dropped": dict(sorted(self.dropped.items())),
            "yield": self.yield_rate,
            "rejected": list(self.rejected),
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




def stated_text(interaction: Interaction) -> str:
    """What the exchange stated, without role labels or acknowledgements.

    The messages' text in order (user turns, tool results, assistant answers), one per
    line; system prompts, assistant turns that only acknowledge and assistant turns that
    are not knowledge (a guess nobody confirmed, a reply marked wrong: see
    `seal_agent.memory.provenance`) are left out. This is what knowledge is learned from:
    a user telling the agent facts is the common way an agent is taught, and training on
    the labelled transcript would also teach the acknowledgement.
    """
    parts = []
    for m in interaction.messages:
        content = (m.get("content") or "").strip()
        if m["role"] == "system" or not content:
            continue
        if m["role"] == "assistant" and (is_acknowledgement(content) or not reply_is_knowledge(
                content, interaction.messages, interaction.feedback)):
            continue
        parts.append(content)
    return "\n".join(parts)


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


def _bind(model: Any, config: SelfEditConfig, sample: int = 0) -> Any:
    """Pass sampling options only to a model that declares them as fields.

    An unknown invocation kwarg reaches a hosted model's API and fails there, so
    ``temperature``/``max_new_tokens``/``seed`` are bound only where the model class
    has a field of that name (AdaptiveChatModel has all three; ``max_tokens`` stands in
    for ``max_new_tokens`` on hosted models). Sample k of several gets seed ``seed + k``:
    one seed for all would make a seeded model repeat the same reply.
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
        options["seed"] = config.seed + sample
    return model.bind(**options) if options else model


# --------------------------------------------------------------------------- strategy


class SelfEditStrategy(ABC):
    """How one interaction becomes training examples. Subclasses need a no-argument constructor.

    Attributes:
        name: Registry name; recorded on every `SelfEdit` it produces.
        check_length: Whether ``min_item_chars``/``max_item_chars`` apply to items
            (False for logged text, which was size-checked when logged).
        grounded: Whether every item must be supported by `source_text` (each content
            word present there; see `_filters.unsupported_words`). True for restated
            knowledge, where an added word is an invention; False where the model is
            meant to say something new (``critique``) or the item is logged text.
        prefill: Text a local model's reply is made to start with (e.g. ``"Q:"``), so a
            small model keeps the format; the parser sees it. Hosted models, which
            follow instructions, are not prefilled.
    """

    name: str = ""
    check_length: bool = True
    grounded: bool = True
    prefill: str | None = None

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

    def grounding_text(self, item: Any) -> str:
        """The part of an item that must be supported by the source (default: all of it)."""
        return self.item_text(item)

    def split_probes(self, candidates: list[Candidate], interaction: Interaction,
                     config: SelfEditConfig) -> tuple[list[Candidate], list[Probe]]:
        """Hold some candidates out of training as probes (default: none)."""
        return candidates, []

    def extra_examples(self, interaction: Interaction) -> list[dict[str, Any]]:
        """Examples added without the model, e.g. the passage itself (default: none)."""
        return []

    # -- the concrete pipeline ------------------------------------------------

    def source_text(self, interaction: Interaction) -> str:
        """What a grounded item must be supported by: what the exchange stated (see `grounded`).

        Role labels and acknowledgements are left out, so "The assistant will remember
        that." is not supported by an exchange that only said facts.
        """
        return stated_text(interaction)

    def generate(self, interaction: Interaction, model: BaseChatModel | None,
                 config: SelfEditConfig) -> SelfEditBatch:
        """Ask `model` for ``config.samples`` self-edits about `interaction`; parse, filter, cap.

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
        job = self._job(interaction, model)
        if job is None:
            return SelfEditBatch()
        if job.prompt is None:
            return self._collect(None, interaction, config)
        return self._finish(job, _ask(model, [job], config)[0], config)

    async def agenerate(self, interaction: Interaction, model: BaseChatModel | None,
                        config: SelfEditConfig) -> SelfEditBatch:
        """Async twin of `generate`."""
        job = self._job(interaction, model)
        if job is None:
            return SelfEditBatch()
        if job.prompt is None:
            return self._collect(None, interaction, config)
        return self._finish(job, (await _aask(model, [job], config))[0], config)

    def _job(self, interaction: Interaction, model: BaseChatModel | None) -> _Job | None:
        if not self.applies_to(interaction):
            return None
        prompt = self.build_prompt(interaction)
        if prompt is not None and model is None:
            raise ValidationError("model", None, f"self-edit strategy {self.name!r} needs a chat model")
        return _Job(self, interaction, prompt)

    def _finish(self, job: _Job, replies: list[_Reply] | Exception, config: SelfEditConfig) -> SelfEditBatch:
        if isinstance(replies, Exception):
            return self._teacher_failed(replies, job.interaction, config)
        return self._collect(replies, job.interaction, config)

    def _teacher_failed(self, exc: Exception, interaction: Interaction, config: SelfEditConfig) -> SelfEditBatch:
        message = f"{self.name}: interaction {interaction.id}: {type(exc).__name__}: {exc}"
        logger.warning("self-edit model failed: %s", message)
        batch = self._collect(None, interaction, config, model_items=False)
        batch.drop("teacher_error")
        batch.errors.append(message)
        return batch

    def _collect(self, replies: list[_Reply] | None, interaction: Interaction, config: SelfEditConfig,
                 *, model_items: bool = True) -> SelfEditBatch:
        """Parse the replies (None: the strategy has no prompt), filter, dedup, cap, split."""
        batch = SelfEditBatch()
        items: list[Any] = []
        if model_items:
            for reply in replies if replies is not None else [_Reply("", False)]:
                items.extend(self._parse_reply(reply, interaction, batch, replies is not None))

        max_chars = config.max_item_chars if self.check_length else None
        source = self.source_text(interaction) if self.grounded else ""
        kept: list[Candidate] = []
        seen: set[str] = set()
        for item in items:
            text = self.item_text(item)
            reason = rejection(text, min_chars=config.min_item_chars, max_chars=max_chars)
            detail = ""
            if reason is None and self.grounded:
                missing = unsupported_words(self.grounding_text(item), source)
                if missing:
                    reason, detail = "unsupported", f"not in the exchange: {', '.join(missing)}"
            example = self.to_example(item, interaction) if reason is None else None
            digest = example_hash(example) if example is not None else ""
            if reason is None and digest in seen:
                reason = "duplicate"
            if reason is not None:
                batch.reject(reason, self.name, interaction.id, text, detail)
                continue
            seen.add(digest)
            kept.append(Candidate(item, example, digest))
        cap = config.max_items_per_interaction
        for c in kept[cap:]:
            batch.reject("over_cap", self.name, interaction.id, self.item_text(c.item))
        train, batch.probes = self.split_probes(kept[:cap], interaction, config)

        written = replies is not None
        batch.edits = [SelfEdit.of(c.example, strategy=self.name, interaction_id=interaction.id,
                                   model_written=written) for c in train]
        for example in self.extra_examples(interaction):
            if example_hash(example) in seen:
                batch.drop("duplicate")
            else:
                seen.add(example_hash(example))
                batch.edits.append(SelfEdit.of(example, strategy=self.name, interaction_id=interaction.id))
        return batch

    def _parse_reply(self, reply: _Reply, interaction: Interaction, batch: SelfEditBatch,
                     from_model: bool) -> list[Any]:
        if from_model and not reply.text.strip():
            batch.reject("empty", self.name, interaction.id, reply.text, "the model wrote nothing")
            return []
        try:
            items = self.parse(reply.text, interaction)
        except Exception:  # a parser bug on odd text must not end a consolidation
            logger.exception("%s could not parse a reply for %s", self.name, interaction.id)
            items = []
        if from_model and not items:
            batch.reject("unparseable", self.name, interaction.id, reply.text, "no item in the expected format")
        elif reply.truncated and items:
            # The budget ran out mid-item: the last one is cut off ("A: The Kelpwood").
            batch.reject("truncated", self.name, interaction.id, self.item_text(items[-1]),
                         "the reply hit max_new_tokens")
            items = items[:-1]
        return items


class _Reply(NamedTuple):
    """One sampled reply, and whether generation stopped at the token budget."""

    text: str
    truncated: bool


class _Job(NamedTuple):
    """One (strategy, interaction) pair to ask the model about."""

    strategy: SelfEditStrategy
    interaction: Interaction
    prompt: list[BaseMessage] | None


def _sampling(config: SelfEditConfig) -> dict[str, Any]:
    return {"n": config.samples, "temperature": config.temperature,
            "max_new_tokens": config.max_new_tokens, "seed": config.seed}


def _budget_hit(model: Any, text: str, prefill: str, config: SelfEditConfig) -> bool:
    """Whether `text` used (nearly) the whole token budget, i.e. was probably cut off."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return False
    n = len(tokenizer(text[len(prefill):] if text.startswith(prefill) else text,
                      add_special_tokens=False)["input_ids"])
    return n >= config.max_new_tokens - 1


def _batched_replies(model: Any, jobs: Sequence[_Job], outs: Sequence[Sequence[str]],
                     config: SelfEditConfig) -> list[list[_Reply]]:
    return [[_Reply(t, _budget_hit(model, t, job.strategy.prefill or "", config)) for t in texts]
            for job, texts in zip(jobs, outs, strict=True)]


def _ask(model: Any, jobs: Sequence[_Job], config: SelfEditConfig, *,
         cancel_event: threading.Event | None = None, progress: bool = False) -> list[list[_Reply] | Exception]:
    """``config.samples`` replies per job. A local `AdaptiveChatModel` answers every job in
    padded batches (`generate_batch`, with each strategy's `prefill`); any other chat model
    is invoked once per sample. A failure is returned in place of that job's replies."""
    if not jobs:
        return []
    if hasattr(model, "generate_batch"):
        try:
            outs = model.generate_batch([j.prompt for j in jobs], prefill=[j.strategy.prefill or "" for j in jobs],
                                        cancel_event=cancel_event, progress=progress, **_sampling(config))
        except TrainingCancelled:  # no job answered: the caller marks the batch cancelled
            return []
        except Exception as exc:  # the teacher failing is counted per job, never raised
            if len(jobs) == 1:
                return [exc]
            # One bad prompt (e.g. an exchange longer than the context) must fail only its
            # own job: halve the batch until the failure is isolated.
            half = len(jobs) // 2
            first = _ask(model, jobs[:half], config, cancel_event=cancel_event, progress=progress)
            if cancel_event is not None and cancel_event.is_set():
                return []
            return first + _ask(model, jobs[half:], config, cancel_event=cancel_event, progress=progress)
        return list(_batched_replies(model, jobs, outs, config))
    bound = [_bind(model, config, k) for k in range(config.samples)]
    results: list[list[_Reply] | Exception] = []
    with tqdm(total=len(jobs), disable=not progress, desc="self-edits", unit="prompt") as bar:
        for job in jobs:
            if cancel_event is not None and cancel_event.is_set():
                break
            try:
                results.append([_Reply(_reply_text(b.invoke(job.prompt)), False) for b in bound])
            except Exception as exc:
                results.append(exc)
            bar.update(1)
    return results


async def _aask(model: Any, jobs: Sequence[_Job], config: SelfEditConfig, *,
                cancel_event: threading.Event | None = None, progress: bool = False) -> list[list[_Reply] | Exception]:
    """Async twin of `_ask`."""
    if not jobs:
        return []
    if hasattr(model, "agenerate_batch"):
        try:
            outs = await model.agenerate_batch([j.prompt for j in jobs], prefill=[j.strategy.prefill or "" for j in jobs],
                                               cancel_event=cancel_event, progress=progress, **_sampling(config))
        except TrainingCancelled:
            return []
        except Exception as exc:
            if len(jobs) == 1:
                return [exc]
            half = len(jobs) // 2  # isolate the failing prompt, as in `_ask`
            first = await _aask(model, jobs[:half], config, cancel_event=cancel_event, progress=progress)
            if cancel_event is not None and cancel_event.is_set():
                return []
            return first + await _aask(model, jobs[half:], config, cancel_event=cancel_event, progress=progress)
        return list(_batched_replies(model, jobs, outs, config))
    bound = [_bind(model, config, k) for k in range(config.samples)]
    results: list[list[_Reply] | Exception] = []
    for job in jobs:
        if cancel_event is not None and cancel_event.is_set():
            break
        try:
            results.append([_Reply(_reply_text(await b.ainvoke(job.prompt)), False) for b in bound])
        except Exception as exc:
            results.append(exc)
    return results


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
            # Logged text that two strategies add for the same interaction (the stated
            # text: `implications` and `statements`) is one document by design, not a
            # dropped self-edit; the same example from another interaction is.
            first = edits.get(e.hash)
            if e.model_written or first is None or first.interaction_id != e.interaction_id:
                batch.drop("duplicate")
        else:
            edits[e.hash] = e
    batch.edits, batch.probes = list(edits.values()), list(probes.values())
    return batch


def _jobs(interactions: Iterable[Interaction], model: BaseChatModel | None, config: SelfEditConfig,
          result: SelfEditBatch) -> list[_Job]:
    jobs = []
    for interaction, strategies in _plan(interactions, config, result):
        for strategy in strategies:
            job = strategy._job(interaction, model)
            if job is not None:
                jobs.append(job)
    return jobs


def _merge_jobs(jobs: list[_Job], asked: list[_Job], replies: list[list[_Reply] | Exception],
                config: SelfEditConfig, result: SelfEditBatch,
                cancel_event: threading.Event | None) -> SelfEditBatch:
    """Collect every job's items in plan order; jobs the model never answered mean a cancel."""
    answered = {id(j): r for j, r in zip(asked, replies, strict=False)}
    for job in jobs:
        if job.prompt is None:
            result.extend(job.strategy._collect(None, job.interaction, config))
        elif id(job) in answered:
            result.extend(job.strategy._finish(job, answered[id(job)], config))
        else:
            result.cancelled = True
    if cancel_event is not None and cancel_event.is_set():
        result.cancelled = True
    return _dedup(result)


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

    Every (interaction, strategy) prompt is built first, then the model is asked once:
    a local `AdaptiveChatModel` writes all ``config.samples`` replies of every prompt in
    padded batches (`AdaptiveChatModel.generate_batch`, with each strategy's prefill);
    any other chat model is invoked once per reply.

    Args:
        interactions: The interactions to learn from.
        model: The chat model writing self-edits (None works for model-free
            strategies such as ``raw``).
        config: Strategies, filters and sampling; defaults to `SelfEditConfig()`.
        progress: Show a tqdm progress bar.
        cancel_event: When set, generation stops (between model calls, or within a
            token on the batched path); what was finished is returned with
            ``cancelled=True``.

    Returns:
        The merged batch, unique by hash, with drop counts, every dropped reply or item
        with its reason (`SelfEditBatch.rejected`), and model errors.

    Raises:
        NotFoundError: A configured strategy name is not registered.
        ValidationError: A strategy needs a model and `model` is None.
    """
    config = config or SelfEditConfig()
    result = SelfEditBatch()
    jobs = _jobs(interactions, model, config, result)
    asked = [j for j in jobs if j.prompt is not None]
    replies = _ask(model, asked, config, cancel_event=cancel_event, progress=progress)
    return _merge_jobs(jobs, asked, replies, config, result, cancel_event)


async def agenerate_self_edits(
    interactions: Iterable[Interaction],
    model: BaseChatModel | None,
    config: SelfEditConfig | None = None,
    *,
    progress: bool = True,
    cancel_event: threading.Event | None = None,
) -> SelfEditBatch:
    """Async twin of `generate_self_edits` (same plan and order, so the result equals the
    sync one for a deterministic model)."""
    config = config or SelfEditConfig()
    result = SelfEditBatch()
    jobs = _jobs(interactions, model, config, result)
    asked = [j for j in jobs if j.prompt is not None]
    replies = await _aask(model, asked, config, cancel_event=cancel_event, progress=progress)
    return _merge_jobs(jobs, asked, replies, config, result, cancel_event)
