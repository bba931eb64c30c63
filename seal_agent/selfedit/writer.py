"""ReST-EM: the model learns to write better self-edits (SEAL's outer loop).

SEAL is two loops. The inner loop -- the model writes a self-edit, a LoRA update is
trained on it -- is consolidation. The outer loop, here, trains the *writer* to write the
self-edits whose updates work, by rejection sampling and fine-tuning (ReST-EM):

1. **sample**: for each interaction that has questions to check against (a user-supplied
   set; else questions asked later that the user rated well, attached to the earlier
   interactions they recall; else the ``self_qa`` pairs the served model writes about
   it), the current writer
   writes `WriterConfig.candidates` self-edits (one batched `generate_batch` call for
   every interaction, one reply per candidate);
2. **evaluate**: each candidate's examples train a throwaway LoRA from the current
   knowledge adapter for `WriterConfig.inner_steps` steps (one loaded base copy, reused
   for every candidate), and the interaction's questions are scored closed-book under
   it: answer log-likelihood and/or greedy correctness. Reward = gain over no update
   (the knowledge adapter as it is). Each trained update is kept on disk until the
   round closes;
3. **select**: the best candidate per interaction, if its reward is above
   `WriterConfig.min_reward` (rejection sampling) and its update keeps the canaries
   (the gate's own checks, `seal_agent.gate.canary`). The canaries are checked lazily,
   in reward order: the best candidate first, the next best only if that one made them
   flip. The kept set is the one checking every candidate would give, at one canary
   pass per interaction instead of K (the canaries were most of a candidate's cost);
4. **train + commit**: the writer -- a LoRA adapter of its own -- is fine-tuned on
   (self-edit prompt -> kept self-edit) from its previous version, and committed to its
   own lineage, ``home/writer/adapters/`` (an `AdapterRegistry`), so the served
   knowledge adapter and the writer roll back independently. Each manifest carries the
   reward history: per round the mean reward, kept/total, canary rejections, seconds per
   candidate evaluation and per round. A round that keeps nothing commits nothing.

Consolidation uses the committed writer: when the served model writes the self-edits,
the writer adapter is pinned for that generation (`writer_pin`) while the
knowledge adapter keeps serving everything else.

Like consolidation, a run is a checkpointed LangGraph `StateGraph` (own SQLite file,
``home/writer/checkpoints.sqlite3``): a killed run resumes at its last finished node, and
inside the expensive ``evaluate`` node every finished candidate is appended to
``runs/<run>/round-<r>/evaluations.jsonl`` (and every canary check in ``select`` to
``canaries.jsonl``), so a kill loses at most the candidate being trained or checked. Every start or resumption counts as an attempt; after
`WriterConfig.max_attempts` the run is abandoned and the next call starts afresh.
Commits are idempotent (a resumed run finds its own version by run id and round).

A reward that is NaN or infinite (a broken update, a scripted reward gone wrong) is never
compared with ``min_reward`` or ranked: the candidate is recorded as unusable with the
reason (its reward ``null`` in the records, which are strict JSON), and a throwaway update
whose training diverged is unusable the same way, instead of failing the round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from filelock import FileLock, Timeout
from langgraph.graph import END, START, StateGraph
from tqdm.auto import tqdm

from seal_agent._finite import is_finite_number, json_safe
from seal_agent._fs import remove_dir, write_atomic
from seal_agent.errors import (
    ConfigError,
    NotFoundError,
    SealAgentError,
    TrainingCancelled,
    TrainingError,
    ValidationError,
)
from seal_agent.memory.records import Interaction, new_interaction_id

if TYPE_CHECKING:
    from seal_agent.registry import AdapterRegistry
    from seal_agent.seal_memory import SealMemory

__all__ = [
    "Evaluation",
    "Question",
    "RewardFn",
    "WriterCandidate",
    "WriterConfig",
    "WriterError",
    "WriterReport",
    "improve_writer",
    "list_writer",
    "rollback_writer",
    "writer_pin",
    "writer_registry",
    "writer_status",
]

logger = logging.getLogger(__name__)

WRITER_FORMAT_VERSION = 1
RewardMode = Literal["loglik", "accuracy", "both"]


class WriterError(SealAgentError):
    """A writer-improvement run failed (the message says whether it will be resumed)."""


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class WriterConfig:
    """How one ReST-EM run samples, rewards and keeps self-edits, and trains the writer.

    Attributes:
        strategies: Self-edit strategies whose replies the writer learns to write (each
            candidate is one reply to one strategy's prompt). ``implications`` is SEAL's.
        candidates: Self-edits sampled per interaction and strategy (K).
        temperature: Sampling temperature of the candidates (> 0: K different replies).
        max_new_tokens: Token budget of one candidate.
        max_interactions: Interactions used per run (the newest with questions).
        inner_steps: Optimizer steps of each throwaway LoRA update (SEAL: a few).
        inner_learning_rate: Its learning rate (high: a few steps must move the answers).
        reward: ``"loglik"``: gain in the mean answer log-likelihood per token;
            ``"accuracy"``: gain in the share of questions answered right (greedy);
            ``"both"``: their sum (accuracy decides, log-likelihood breaks ties).
        min_reward: A candidate is kept only with a reward above this (rejection sampling).
        check_canaries: Judge a candidate's update on the gate's canaries (the model's
            shipped ones, or ``gate.canary_file``) before keeping it; one that flips more
            than the gate allows, or any contrastive canary, is never kept (the next best
            candidate of its interaction is checked instead).
        feedback_questions: Take questions from later exchanges the user rated well: an
            exchange with feedback > 0 whose question recalls an earlier interaction of
            its namespace (among its `feedback_recall_k` nearest, cosine similarity >=
            `feedback_min_score`) checks that interaction's self-edits with its question
            and the answer the user approved. Such exchanges are questions, not
            interactions to write self-edits for.
        feedback_recall_k: How many earlier interactions one rated question may check.
        feedback_min_score: Similarity below which a rated question checks nothing.
        writer_epochs: Epochs of the writer's fine-tune on the kept self-edits.
        writer_learning_rate: Its learning rate.
        max_attempts: Starts or resumptions of a run before it is abandoned.
        seed: Seeds sampling (round r uses ``seed + 1000 * r``) and training.
    """

    strategies: list[str] = field(default_factory=lambda: ["implications"])
    candidates: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 160
    max_interactions: int = 8
    inner_steps: int = 4
    inner_learning_rate: float = 1e-3
    reward: RewardMode = "both"
    min_reward: float = 0.0
    check_canaries: bool = True
    feedback_questions: bool = True
    feedback_recall_k: int = 2
    feedback_min_score: float = 0.3
    writer_epochs: int = 2
    writer_learning_rate: float = 5e-4
    max_attempts: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, reason: str) -> ConfigError:
            return ConfigError(f"writer.{name}", getattr(self, name), reason)

        if not (isinstance(self.strategies, list) and self.strategies
                and all(isinstance(s, str) and s for s in self.strategies)):
            raise bad("strategies", "must be a non-empty list of self-edit strategy names")
        for name in ("candidates", "max_new_tokens", "max_interactions", "inner_steps",
                     "feedback_recall_k", "writer_epochs", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be a positive integer")
        if self.candidates > 1 and not (is_finite_number(self.temperature) and self.temperature > 0):
            raise bad("temperature", "must be a finite number > 0 to sample more than one candidate")
        for name in ("inner_learning_rate", "writer_learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise bad(name, "must be a number in (0, 1]")
        if self.reward not in ("loglik", "accuracy", "both"):
            raise bad("reward", "must be 'loglik', 'accuracy' or 'both'")
        if not is_finite_number(self.min_reward):  # `reward > nan` keeps nothing, `> -inf` everything
            raise bad("min_reward", "must be a finite number")
        for name in ("check_canaries", "feedback_questions"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be true or false")
        value = self.feedback_min_score
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
            raise bad("feedback_min_score", "must be a number in [-1, 1] (a cosine similarity)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> WriterConfig:
        """From a mapping (e.g. overrides); unknown keys are a `ConfigError` naming them."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"writer.{key}", data[key], f"unknown field; known: {sorted(known)}")
        return cls(**data)


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Question:
    """A question about an interaction, asked closed-book to reward its self-edits.

    Attributes:
        question: What is asked (one user turn, no context).
        answer: The reference answer; its log-likelihood is the dense reward.
        accepted: Short answers any of which, inside the greedy answer, counts as right
            (default: `answer`).
    """

    question: str
    answer: str
    accepted: tuple[str, ...] = ()

    @classmethod
    def of(cls, value: Any, where: str) -> Question:
        """A `Question` from a `Question`, a ``(question, answer)`` pair or a dict."""
        if isinstance(value, Question):
            q = value
        elif isinstance(value, Mapping):
            q = cls(str(value.get("question", "")), str(value.get("answer", "")),
                    tuple(value.get("accepted", ()) or ()))
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            q = cls(str(value[0]), str(value[1]))
        else:
            raise ValidationError(where, value, "must be a Question, a (question, answer) pair or a dict")
        if not q.question.strip() or not q.answer.strip():
            raise ValidationError(where, value, "question and answer must be non-empty")
        return q

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "accepted": list(self.accepted)}


@dataclass(frozen=True)
class WriterCandidate:
    """One sampled self-edit, what a reward function judges.

    Attributes:
        id: ``r<round>-<interaction>-<strategy>-<k>``.
        interaction_id: The interaction it was written about.
        strategy: The strategy whose prompt it answers.
        text: The writer's reply (with the strategy's prefill).
        examples: The training examples it becomes (what the throwaway update trains on).
        questions: The interaction's questions.
    """

    id: str
    interaction_id: str
    strategy: str
    text: str
    examples: tuple[dict[str, Any], ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True)
class Evaluation:
    """What a candidate's update did.

    Attributes:
        reward: Gain over no update (see `WriterConfig.reward`).
        canaries_ok: False when the update hurt the canaries (never kept).
        detail: Scores, canary verdicts, seconds: kept in the run's records.
    """

    reward: float
    canaries_ok: bool = True
    detail: dict[str, Any] = field(default_factory=dict)


RewardFn = Callable[[WriterCandidate, Path], "float | Evaluation"]
"""A scripted reward: ``fn(candidate, trained_adapter_dir) -> reward or Evaluation``;
replaces the closed-book scoring and the canary check (the throwaway update still trains)."""


@dataclass
class WriterReport:
    """What one writer-improvement run did.

    Attributes:
        run_id: The run (its checkpoint thread).
        verdict: ``committed`` (at least one round committed a writer version),
            ``skipped`` (nothing committed: nothing to learn from, nothing kept, another
            run holds the home), ``cancelled`` (stopped; the next call resumes it).
        reason: Why, for anything but ``committed``.
        versions: Writer versions committed by this run, in round order.
        rounds: One record per finished round: ``round``, ``version`` (None: nothing
            committed), ``mean_reward``, ``best_mean_reward`` (mean of the kept ones),
            ``kept``, ``total``, ``unusable``, ``hurt_canaries`` (of ``canary_checks``:
            candidates are checked best first, until one per interaction holds;
            ``unchecked_missing``: passed over, their trained update gone),
            ``seconds_per_canary_check``, ``knowledge`` (the knowledge adapter version
            the round started from),
            ``seconds_per_candidate`` (training and scoring one update), ``seconds``
            (the round), stage seconds (``sample``, ``evaluate``, ``select`` -- the
            canary checks --, ``train``).
        abandoned: A run this call gave up on before starting afresh.
    """

    run_id: str
    verdict: Literal["committed", "skipped", "cancelled"]
    reason: str | None = None
    versions: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    abandoned: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": WRITER_FORMAT_VERSION, **dataclasses.asdict(self)}


class _State(TypedDict, total=False):
    run_id: str
    rounds: int
    round: int
    interaction_ids: list[str]
    questions: dict[str, list[dict[str, Any]]]
    candidates: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    kept: list[dict[str, Any]]
    writer_dir: str | None
    train: dict[str, Any]
    round_record: dict[str, Any]
    history: list[dict[str, Any]]
    versions: list[str]
    reason: str | None


# ----------------------------------------------------------------------------- paths


def _root(home: Path) -> Path:
    return Path(home) / "writer"


def writer_registry(home: str | Path) -> AdapterRegistry:
    """The writer's own adapter lineage: ``home/writer/adapters/``."""
    from seal_agent.registry import AdapterRegistry

    return AdapterRegistry(_root(Path(home)) / "adapters")


def _current_writer(home: Path) -> tuple[str | None, Path | None]:
    """The writer version to use (the registry's intact CURRENT, or a fallback) and its folder."""
    root = _root(home) / "adapters"
    if not root.is_dir():
        return None, None
    registry = writer_registry(home)
    version = registry.serving().version
    return (version, registry.get(version).path) if version else (None, None)


def writer_pin(memory: SealMemory, chat: Any, default: Any = None) -> Any:
    """A context manager pinning the committed writer on `chat` for the generation inside it.

    Consolidation wraps the served model's self-edit generation in it: the writer writes
    the self-edits, the knowledge adapter keeps serving every other request. Returns
    `default` (or a no-op) when no writer is committed, or when `chat` cannot pin an
    adapter (then it writes as it is, with a warning).
    """
    fallback = default if default is not None else contextlib.nullcontext()
    try:
        version, path = _current_writer(memory.home)
    except SealAgentError:  # a damaged writer lineage must not stop consolidation
        logger.warning("the writer lineage of %s cannot be read; the served model writes", memory.home, exc_info=True)
        return fallback
    if version is None or path is None:
        return fallback
    if not hasattr(chat, "pinned"):
        logger.warning("writer %s is committed but %s cannot pin an adapter; the served model writes",
                       version, type(chat).__name__)
        return fallback
    logger.info("self-edits are written by writer %s", version)
    return chat.pinned(str(path))


# ------------------------------------------------------------------------------- run


def _messages(prompt: Sequence[Any]) -> list[dict[str, str]]:
    """LangChain messages as ``{"role", "content"}`` dicts (the trainer's chat format)."""
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    return [{"role": roles.get(m.type, m.type), "content": m.text} for m in prompt]


def _nonfinite_reward(result: dict[str, Any]) -> None:
    """A NaN/inf reward makes its candidate unusable: reward None, the value named in its detail."""
    reward = result.get("reward")
    if reward is None or is_finite_number(reward):
        return
    logger.warning("writer: candidate %s has a non-finite reward (%s): unusable, never kept", result.get("id"), reward)
    result["detail"] = {**(result.get("detail") or {}), "nonfinite_reward": str(reward),
                        "why": f"non-finite reward ({reward}): never compared with min_reward nor kept"}
    result["reward"], result["usable"] = None, False


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # the line a kill cut short: that candidate is evaluated again
            continue
    return out


class _Run:
    """Live resources of one writer run; nodes are its methods. Rebuilt when a run resumes."""

    def __init__(self, memory: SealMemory, config: WriterConfig, *, questions: Mapping[str, list[Question]],
                 interactions: list[str] | None, reward_fn: RewardFn | None, teacher: Any,
                 cancel_event: threading.Event | None, progress: bool) -> None:
        self.memory = memory
        self.config = config
        self.user_questions = questions
        self.user_interactions = interactions
        self.reward_fn = reward_fn
        self.teacher = teacher
        self.cancel_event = cancel_event
        self.progress = progress
        self._base: tuple[Any, Any] | None = None
        self._canaries: list[Any] | None = None
        self._reference: tuple[Any, Any] | None = None  # ((run, round), canary outcomes with no update)

    # -- resources -------------------------------------------------------------

    def base_model(self) -> tuple[Any, Any]:
        """The base for the throwaway updates and the writer's training: its own module tree
        (never the served one) over the process's one copy of the base weights
        (`seal_agent.model.shared`: no second load when the model is already served)."""
        if self._base is None:
            from seal_agent.model.shared import load_shared

            mc = self.memory.config.model
            self._base = load_shared(mc.name_or_path, device=mc.device, dtype=mc.dtype, seed=mc.seed)
        return self._base

    def writer_chat(self) -> Any:
        return self.teacher if self.teacher is not None else self.memory.chat_model()

    def _cancel_check(self, where: str) -> None:
        if self.cancel_event is not None and self.cancel_event.is_set():
            raise TrainingCancelled(f"writer run cancelled {where}")

    def _round_dir(self, state: _State) -> Path:
        return _root(self.memory.home) / "runs" / state["run_id"] / f"round-{state['round']}"

    def _knowledge_dir(self, state: _State) -> Path | None:
        """The knowledge adapter the round started from (pinned in `sample`): every throwaway
        update, the baseline scores and the canary reference use the same one, even if a
        consolidation commits or rolls back meanwhile."""
        record = state.get("round_record", {})
        version = record["knowledge"] if "knowledge" in record else self.memory.adapters.serving().version
        return self.memory.adapters.get(version).path if version else None

    def _knowledge_gone(self, state: _State) -> str | None:
        """The pinned knowledge version, if it was deleted since the round began (a forget
        purges the versions that learned the forgotten data): the round then keeps nothing,
        as its rewards were measured against an adapter that no longer exists."""
        version = state.get("round_record", {}).get("knowledge")
        if version is None:
            return None
        try:
            self.memory.adapters.get(version)
        except NotFoundError:
            return str(version)
        return None

    # -- nodes -------------------------------------------------------------------

    def prepare(self, state: _State) -> dict[str, Any]:
        """Which interactions, and their questions: user-supplied, else later questions the
        user rated well (`WriterConfig.feedback_questions`), else ``self_qa`` pairs."""
        everything = self.memory.list()
        rated, sources = self._feedback_questions(everything) if self.config.feedback_questions else ({}, set())
        n = self.config.max_interactions
        if self.user_interactions is not None:
            chosen = [self.memory.get(i) for i in dict.fromkeys(self.user_interactions)]  # each once
        else:
            pool = [it for it in everything if (it.feedback is None or it.feedback >= 0) and it.id not in sources]
            if self.user_questions:
                pool = [it for it in pool if it.id in self.user_questions]
            # The newest with questions already known first; the rest ask the model for theirs.
            known = [it for it in pool if it.id in rated or it.id in self.user_questions][-n:]
            rest = [it for it in pool if it.id not in rated and it.id not in self.user_questions]
            chosen = rest[max(0, len(rest) - (n - len(known))):] + known if len(known) < n else known
        chosen = chosen[:n]
        questions: dict[str, list[dict[str, Any]]] = {
            it.id: [q.to_dict() for q in self.user_questions[it.id]] for it in chosen if it.id in self.user_questions}
        questions.update({it.id: rated[it.id] for it in chosen if it.id in rated and it.id not in questions})
        missing = [it for it in chosen if it.id not in questions]
        if missing:
            questions.update(self._self_qa(missing))
        ids = [it.id for it in chosen if questions.get(it.id)]
        out: dict[str, Any] = {"interaction_ids": ids, "questions": {i: questions[i] for i in ids}}
        if not ids:
            out["reason"] = "no interaction with questions to check self-edits against"
        return out

    def _feedback_questions(self, interactions: list[Interaction]) -> tuple[dict[str, list[dict[str, Any]]], set[str]]:
        """Questions from exchanges rated > 0, each attached to the earlier interactions of
        its namespace it recalls; and the ids of those rated exchanges."""
        by_id = {it.id: it for it in interactions}
        out: dict[str, list[dict[str, Any]]] = {}
        sources: set[str] = set()
        for rated in interactions:
            if rated.feedback is None or rated.feedback <= 0 or not rated.task.strip() or not rated.outcome.strip():
                continue
            try:
                hits = self.memory.recall(rated.task, namespace=rated.namespace,
                                          k=self.config.feedback_recall_k + 1, min_score=self.config.feedback_min_score)
            except SealAgentError as exc:  # one unreadable namespace costs its questions, not the run
                logger.warning("writer: rated exchange %s not used as a question: %s", rated.id, exc)
                continue
            # Only earlier ones (ids sort in logging order): a question checks what was said before it.
            earlier = [h for h in hits if h.id < rated.id and h.id in by_id][: self.config.feedback_recall_k]
            for hit in earlier:
                out.setdefault(hit.id, []).append(Question(rated.task, rated.outcome).to_dict())
            if earlier:
                sources.add(rated.id)
        return out, sources

    def _self_qa(self, interactions: list[Interaction]) -> dict[str, list[dict[str, Any]]]:
        """Questions the served model writes about each interaction (every pair, probes included)."""
        from seal_agent.selfedit import generate_self_edits

        cfg = dataclasses.replace(self.memory.config.selfedit, strategies=["self_qa"], seed=self.config.seed)
        batch = generate_self_edits(interactions, self.writer_chat(), cfg, progress=self.progress,
                                    cancel_event=self.cancel_event)
        self._cancel_check("while writing questions")
        out: dict[str, list[dict[str, Any]]] = {}
        for p in batch.probes:
            out.setdefault(p.interaction_id, []).append(Question(p.question, p.answer).to_dict())
        for e in batch.edits:
            msgs = e.example.get("messages")
            if msgs and len(msgs) == 2:
                out.setdefault(e.interaction_id, []).append(
                    Question(msgs[0]["content"], msgs[1]["content"]).to_dict())
        return out

    def sample(self, state: _State) -> dict[str, Any]:
        """K candidates per (interaction, strategy) from the current writer, in one batched call."""
        from seal_agent.selfedit import get_self_edit_strategy
        from seal_agent.selfedit.base import _ask

        t0 = time.perf_counter()
        r = state["round"]
        writer_version, writer_path = _current_writer(self.memory.home)
        cfg = dataclasses.replace(self.memory.config.selfedit, samples=self.config.candidates,
                                  temperature=self.config.temperature, max_new_tokens=self.config.max_new_tokens,
                                  seed=self.config.seed + 1000 * r)
        chat = self.writer_chat()
        jobs = []
        for iid in state["interaction_ids"]:
            interaction = self.memory.get(iid)
            for name in self.config.strategies:
                job = get_self_edit_strategy(name)._job(interaction, chat)
                if job is not None and job.prompt is not None:
                    jobs.append(job)
        pin = chat.pinned(str(writer_path)) if writer_path is not None and hasattr(chat, "pinned") else \
            contextlib.nullcontext()
        with pin:
            replies = _ask(chat, jobs, cfg, cancel_event=self.cancel_event, progress=self.progress)
        self._cancel_check("while sampling candidates")
        candidates = []
        for job, got in zip(jobs, replies, strict=False):
            if isinstance(got, Exception):
                logger.warning("writer: sampling failed for %s: %s", job.interaction.id, got)
                continue
            for k, reply in enumerate(got):
                batch = job.strategy._collect([reply], job.interaction, cfg)
                # A reply with no usable item of its own is unusable: training on the logged
                # text alone (`extra_examples`) would reward the passage, not the writer.
                usable = any(e.model_written for e in batch.edits)
                candidates.append({
                    "id": f"r{r}-{job.interaction.id}-{job.strategy.name}-{k}",
                    "interaction_id": job.interaction.id, "strategy": job.strategy.name, "text": reply.text,
                    "prompt": _messages(job.prompt),
                    "examples": batch.examples if usable else [],
                })
        record = {"round": r, "writer_parent": writer_version, "knowledge": self.memory.adapters.serving().version,
                  "sample_seconds": time.perf_counter() - t0}
        return {"candidates": candidates, "round_record": record}

    def _candidate_dir(self, state: _State, index: int) -> Path:
        """Where candidate `index`'s throwaway update waits for its canary check (until the round closes)."""
        return self._round_dir(state) / "candidates" / f"c{index:04d}"

    def evaluate(self, state: _State) -> dict[str, Any]:
        """Train a throwaway update per candidate and score it; resumable candidate by candidate."""
        t0 = time.perf_counter()
        rdir = self._round_dir(state)
        rdir.mkdir(parents=True, exist_ok=True)
        log = rdir / "evaluations.jsonl"
        done = {e["id"]: e for e in _jsonl(log)}
        questions = {i: tuple(Question.of(q, "questions") for q in qs) for i, qs in state["questions"].items()}
        baseline: dict[str, Any] | None = None
        with tqdm(total=len(state["candidates"]), initial=len(done), disable=not self.progress,
                  desc=f"writer round {state['round']}", unit="candidate") as bar:
            for index, c in enumerate(state["candidates"]):
                if c["id"] in done:
                    continue
                self._cancel_check("between candidates")
                if (gone := self._knowledge_gone(state)) is not None:
                    logger.warning("writer round %d: knowledge adapter %s was deleted meanwhile; the round "
                                   "keeps nothing", state["round"], gone)
                    break
                tc = time.perf_counter()
                cand = WriterCandidate(c["id"], c["interaction_id"], c["strategy"], c["text"],
                                       tuple(c["examples"]), questions[c["interaction_id"]])
                if not cand.examples:
                    result = {"id": c["id"], "reward": None, "canaries_ok": True, "usable": False,
                              "detail": {"why": "no usable self-edit in the reply"}}
                elif self.reward_fn is not None:
                    adapter = self._train_throwaway(state, cand, rdir / "throwaway")
                    if adapter is None:
                        result = self._diverged(c["id"])
                    else:
                        try:
                            got = self.reward_fn(cand, adapter)
                        finally:
                            shutil.rmtree(adapter, ignore_errors=True)
                        ev = got if isinstance(got, Evaluation) else Evaluation(float(got))
                        result = {"id": c["id"], "reward": float(ev.reward), "canaries_ok": bool(ev.canaries_ok),
                                  "usable": True, "detail": ev.detail}
                else:
                    if baseline is None:
                        baseline = self._baseline(state, questions)
                    # Kept for `select`, which checks the canaries of the best candidates only.
                    adapter = self._train_throwaway(state, cand, self._candidate_dir(state, index))
                    if adapter is None:
                        result = self._diverged(c["id"])
                    else:
                        result = {"id": c["id"], "reward": None, "canaries_ok": None, "usable": True,
                                  "detail": self._reward(cand, adapter, baseline)}
                        result["reward"] = result["detail"].pop("reward")
                _nonfinite_reward(result)
                if result["reward"] is None or not result["reward"] > self.config.min_reward:
                    # never kept: its update (if any) is not needed
                    shutil.rmtree(self._candidate_dir(state, index), ignore_errors=True)
                result["seconds"] = time.perf_counter() - tc
                with log.open("a", encoding="utf-8") as f:  # one line per finished candidate
                    f.write(json.dumps(json_safe(result), default=str, allow_nan=False) + "\n")
                done[c["id"]] = result
                bar.update(1)
        evaluations = [done[c["id"]] for c in state["candidates"] if c["id"] in done]
        record = {**state.get("round_record", {}), "evaluate_seconds": time.perf_counter() - t0}
        return {"evaluations": evaluations, "round_record": record}

    def _baseline(self, state: _State, questions: Mapping[str, tuple[Question, ...]]) -> dict[str, Any]:
        """Scores with no update (the knowledge adapter as it is), cached for a resumed round."""
        cached = self._round_dir(state) / "baseline.json"
        if cached.is_file():
            return json.loads(cached.read_text(encoding="utf-8"))
        with self._peft(self._knowledge_dir(state)) as model:
            _, tokenizer = self.base_model()
            scores = {iid: self._score(model, tokenizer, qs) for iid, qs in questions.items()}
        write_atomic(cached, json.dumps(json_safe(scores), allow_nan=False))  # NaN: null, and no reward
        return scores

    def _canary_reference(self, state: _State) -> Any:
        """The canaries' outcomes with no update (the knowledge adapter as it is), once per round."""
        key = (state["run_id"], state["round"])
        if self._reference is None or self._reference[0] != key:
            _, tokenizer = self.base_model()
            with self._peft(self._knowledge_dir(state)) as model:
                self._reference = (key, self._canary_outcomes(model, tokenizer))
        return self._reference[1]

    @contextlib.contextmanager
    def _peft(self, adapter: Path | None) -> Iterator[Any]:
        """The base copy with `adapter` loaded (None: the bare base); LoRA layers removed after."""
        from peft import PeftModel

        from seal_agent._compat import quiet_peft

        model, _ = self.base_model()
        if adapter is None:
            model.eval()
            yield model
            return
        with quiet_peft():
            peft = PeftModel.from_pretrained(model, str(adapter))
        peft.eval()
        try:
            yield peft
        finally:
            peft.unload()  # the base copy is bare again for the next training

    @staticmethod
    def _diverged(candidate_id: str) -> dict[str, Any]:
        """The record of a candidate whose throwaway update diverged (see `_train_throwaway`)."""
        return {"id": candidate_id, "reward": None, "canaries_ok": None, "usable": False,
                "detail": {"why": "its throwaway update diverged (NaN/inf loss or weights): no reward"}}

    def _train_throwaway(self, state: _State, cand: WriterCandidate, out: Path) -> Path | None:
        """Train a candidate's throwaway update into `out`; None when training diverged (NaN/inf):
        that candidate is unusable, the round goes on (the run does not fail on one reply)."""
        from seal_agent.training import train_adapter

        model, tokenizer = self.base_model()
        tc = dataclasses.replace(self.memory.config.train, max_steps=self.config.inner_steps,
                                 # as many passes as steps: a candidate's few examples make one step a pass
                                 epochs=self.config.inner_steps, learning_rate=self.config.inner_learning_rate,
                                 replay_ratio=0.0, rehearsal_size=0, max_seconds=None, seed=self.config.seed)
        shutil.rmtree(out, ignore_errors=True)
        try:
            result = train_adapter(model, tokenizer, list(cand.examples), tc, init_adapter=self._knowledge_dir(state),
                                   output_dir=out, cancel_event=self.cancel_event, progress=False)
        except TrainingError as exc:
            logger.warning("writer: candidate %s: %s; unusable", cand.id, exc)
            shutil.rmtree(out, ignore_errors=True)
            return None
        return result.adapter_path

    def _reward(self, cand: WriterCandidate, adapter: Path, baseline: dict[str, Any]) -> dict[str, Any]:
        """The candidate's closed-book scores under its update, and the reward (gain over `baseline`)."""
        _, tokenizer = self.base_model()
        with self._peft(adapter) as model:
            scores = self._score(model, tokenizer, cand.questions)
        before = baseline[cand.interaction_id]
        gain_ll = scores["loglik"] - before["loglik"]
        gain_acc = scores["accuracy"] - before["accuracy"] if scores["accuracy"] is not None else 0.0
        reward = {"loglik": gain_ll, "accuracy": gain_acc, "both": gain_acc + gain_ll}[self.config.reward]
        return {"reward": reward, "before": before, "after": scores, "loglik_gain": gain_ll,
                "accuracy_gain": gain_acc}

    def _check_canaries(self, state: _State, index: int) -> tuple[bool, str, float] | None:
        """The gate's canary judgement of candidate `index`'s update (kept on disk by
        `evaluate`) and the seconds its canary pass took; None when that update is gone."""
        adapter = self._candidate_dir(state, index)
        if not (adapter / "adapter_config.json").is_file() or not any(adapter.glob("adapter_model.*")):
            return None
        reference = self._canary_reference(state)  # once per round, not counted as this check's time
        t0 = time.perf_counter()
        _, tokenizer = self.base_model()
        with self._peft(adapter) as model:
            outcomes = self._canary_outcomes(model, tokenizer)
        ok, why = self._canaries_ok(reference, outcomes)
        return ok, why, time.perf_counter() - t0

    def _score(self, model: Any, tokenizer: Any, questions: Sequence[Question]) -> dict[str, Any]:
        from seal_agent.gate.canary import answer_contains, settled_contains
        from seal_agent.gate.scorers import generate_answers
        from seal_agent.gate.suite import SuiteItem
        from seal_agent.training.scoring import answer_logprobs

        lls = answer_logprobs(model, tokenizer, [([{"role": "user", "content": q.question}], q.answer)
                                                 for q in questions])
        out: dict[str, Any] = {"loglik": statistics.fmean(lls), "accuracy": None}
        if self.config.reward != "loglik":
            items = [SuiteItem(kind="probe", id=f"q{i}", prompt=({"role": "user", "content": q.question},),
                               expected=q.answer) for i, q in enumerate(questions)]
            # Stops each answer once it is right for good (the verdict of the full answer).
            answers = generate_answers(
                model, tokenizer, items, max_new_tokens=self.memory.config.gate.max_new_tokens,
                done=lambda j, text: settled_contains(text, questions[j].answer, questions[j].accepted))
            right = [answer_contains(a, q.answer, q.accepted) for a, q in zip(answers, questions, strict=True)]
            out["accuracy"] = sum(right) / len(right)
        return out

    def canaries(self) -> list[Any]:
        if self._canaries is None:
            self._canaries = []
            if self.config.check_canaries:
                from seal_agent.gate import Gate

                self._canaries = Gate(self.memory, self.memory.config.gate).canaries()
        return self._canaries

    def _canary_outcomes(self, model: Any, tokenizer: Any) -> dict[str, Any] | None:
        from seal_agent.gate.canary import canary_outcomes, contrast_outcomes, is_behaviour_canary

        items = self.canaries()
        if not items:
            return None
        behaviour = [c for c in items if is_behaviour_canary(c)]
        contrastive = [c for c in items if c.foils]
        gc = self.memory.config.gate
        return {"behaviour": (behaviour, canary_outcomes(model, tokenizer, behaviour, max_new_tokens=gc.max_new_tokens)
                              if behaviour else []),
                "contrastive": (contrastive, contrast_outcomes(model, tokenizer, contrastive) if contrastive else [])}

    def _canaries_ok(self, reference: dict[str, Any] | None, candidate: dict[str, Any] | None) -> tuple[bool, str]:
        """The gate's canary judgement of the candidate against the knowledge adapter as it is."""
        from seal_agent.gate.canary import decide_canaries, decide_contrastive

        if reference is None or candidate is None:
            return True, "no canaries"
        reasons: list[str] = []
        items, ref = reference["behaviour"]
        if items:
            reasons += decide_canaries(items, ref, candidate["behaviour"][1], self.memory.config.gate).reasons
        items, ref = reference["contrastive"]
        if items:
            reasons += decide_contrastive(items, ref, candidate["contrastive"][1]).reasons
        return (not reasons), "; ".join(reasons) or "held"

    def select(self, state: _State) -> dict[str, Any]:
        """Rejection sampling: the best candidate per interaction, if it gained and keeps the canaries.

        Candidates are checked on the canaries best first, per interaction, until one
        keeps them: the same choice as checking all, at a fraction of the cost. Every
        check is appended (fsynced) to ``canaries.jsonl``, so a resumed round does not
        redo it; the round's trained updates are deleted once the choice is made.
        """
        t0 = time.perf_counter()
        index = {c["id"]: i for i, c in enumerate(state["candidates"])}
        by_id = {c["id"]: c for c in state["candidates"]}
        rdir = self._round_dir(state)
        log = rdir / "canaries.jsonl"
        checks = {e["id"]: e for e in _jsonl(log)}
        evaluations = [dict(ev) for ev in state["evaluations"]]
        for ev in evaluations:
            if ev["id"] in checks:
                ev["canaries_ok"] = checks[ev["id"]]["ok"]
                ev["detail"] = {**ev.get("detail", {}), "canaries": checks[ev["id"]]["why"]}
        ranked: dict[str, list[dict[str, Any]]] = {}
        for ev in evaluations:
            _nonfinite_reward(ev)  # a record written before NaN was refused reads back as NaN
            # Kept only if finite and above min_reward: `nan > x` is False but `inf > x` is True.
            if ev["usable"] and is_finite_number(ev["reward"]) and ev["canaries_ok"] is not False \
                    and ev["reward"] > self.config.min_reward:
                ranked.setdefault(by_id[ev["id"]]["interaction_id"], []).append(ev)
        # Unchecked (None) verdicts exist only on the real reward path; with no canaries to
        # check they stay None and do not stand in the way.
        gone = self._knowledge_gone(state)
        if gone is not None:  # rewards measured against a deleted adapter: nothing is kept
            ranked = {}
        checking = any(ev["canaries_ok"] is None for evs in ranked.values() for ev in evs) and bool(self.canaries())
        kept, missing = [], 0
        for candidates in ranked.values():
            for ev in sorted(candidates, key=lambda e: -e["reward"]):  # stable: a tie keeps sampling order
                if ev["canaries_ok"] is None and checking:
                    self._cancel_check("between canary checks")
                    got = self._check_canaries(state, index[ev["id"]])
                    if got is None:  # not recorded: a later run may find the update again
                        logger.warning("writer: the trained update of candidate %s is gone; passed over unchecked",
                                       ev["id"])
                        missing += 1
                        continue
                    ok, why, seconds = got
                    check = {"id": ev["id"], "ok": ok, "why": why, "seconds": seconds}
                    with log.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(check) + "\n")
                        f.flush()
                        os.fsync(f.fileno())  # before the updates it judged are deleted below
                    checks[ev["id"]] = check
                    ev["canaries_ok"], ev["detail"] = ok, {**ev.get("detail", {}), "canaries": why}
                if ev["canaries_ok"] is not False:
                    kept.append({**by_id[ev["id"]], "reward": ev["reward"]})
                    break
        remove_dir(rdir / "candidates", missing_ok=True)
        usable = [e for e in evaluations if e["usable"]]
        rewards = [e["reward"] for e in usable]  # the writer's average, canary-hurting candidates included
        secs = [e["seconds"] for e in usable]
        record = {**state.get("round_record", {}),
                  "total": len(evaluations), "unusable": len(evaluations) - len(usable),
                  "hurt_canaries": sum(1 for e in usable if e["canaries_ok"] is False),
                  "canary_checks": sum(1 for e in usable if e["canaries_ok"] is not None),
                  "unchecked_missing": missing, "kept": len(kept), "knowledge_gone": gone,
                  "nonfinite_rewards": sum(1 for e in evaluations if "nonfinite_reward" in (e.get("detail") or {})),
                  "mean_reward": statistics.fmean(rewards) if rewards else None,
                  "best_mean_reward": statistics.fmean([k["reward"] for k in kept]) if kept else None,
                  "seconds_per_candidate": statistics.fmean(secs) if secs else None,
                  "seconds_per_canary_check": statistics.fmean([c["seconds"] for c in checks.values()])
                  if checks else None,
                  "select_seconds": time.perf_counter() - t0}
        return {"kept": kept, "evaluations": evaluations, "round_record": record}

    def train_writer(self, state: _State) -> dict[str, Any]:
        """Fine-tune the writer on (self-edit prompt -> kept self-edit), from its previous version."""
        from seal_agent.training import train_adapter

        t0 = time.perf_counter()
        model, tokenizer = self.base_model()
        _, parent_path = _current_writer(self.memory.home)
        # The prompt as the writer saw it (the strategy's worked example is a previous chat
        # turn, so its fixed answer is trained on too: the same text every time, it only
        # reinforces the format), then the kept reply as the target.
        examples = [{"messages": [*k["prompt"], {"role": "assistant", "content": k["text"]}]} for k in state["kept"]]
        tc = dataclasses.replace(self.memory.config.train, epochs=self.config.writer_epochs,
                                 learning_rate=self.config.writer_learning_rate, replay_ratio=0.0, rehearsal_size=0,
                                 max_steps=None, seed=self.config.seed)
        from seal_agent.training.data import fit_examples

        # A prompt plus reply longer than train.max_seq_len cannot be learned whole (a
        # chat example is dropped, never cut): the others still train.
        fit = fit_examples(tokenizer, examples, max_seq_len=tc.max_seq_len)
        if fit.dropped:
            logger.warning("writer: %d kept self-edits do not fit train.max_seq_len=%d with their prompt: left out",
                           len(fit.dropped), tc.max_seq_len)
        record = {**state["round_record"], "too_long": len(fit.dropped)}
        if not fit.examples:
            return {"writer_dir": None, "round_record": record, "kept": []}
        examples = fit.examples
        out = self._round_dir(state) / "writer"
        shutil.rmtree(out, ignore_errors=True)  # a resumed run retrains from scratch
        result = train_adapter(model, tokenizer, examples, tc, init_adapter=parent_path, output_dir=out,
                               cancel_event=self.cancel_event, progress=self.progress)
        record["train_seconds"] = time.perf_counter() - t0
        return {"writer_dir": str(result.adapter_path), "round_record": record,
                "train": {"steps": result.steps, "epoch_losses": list(result.epoch_losses),
                          "examples": result.examples, "seconds": result.seconds}}

    def commit(self, state: _State) -> dict[str, Any]:
        """Commit the trained writer (idempotent: a resumed run finds its own version), unless
        an interaction it learned from was forgotten during the round (then nothing is stored)."""
        from seal_agent.forget import forgotten_guard

        registry = writer_registry(self.memory.home)
        mine = f"{state['run_id']}/round-{state['round']}"
        version = next((v.version for v in registry.list()
                        if v.manifest.get("lineage", {}).get("run_id") == mine and v.verdict == "committed"), None)
        record = dict(state["round_record"])
        with forgotten_guard(self.memory, sorted({k["interaction_id"] for k in state["kept"]})) as gone:
            if gone and version is None:  # the writer learned from text forgotten meanwhile: store nothing
                shutil.rmtree(state["writer_dir"], ignore_errors=True)
                logger.warning("writer round %d: %d of the interactions it learned from were forgotten during the "
                               "round; nothing committed", state["round"], len(gone))
                return {"round_record": {**record, "version": None, "dropped_forgotten": len(gone)}}
            return self._commit(state, registry, mine, version, record)

    def _commit(self, state: _State, registry: Any, mine: str, version: str | None,
                record: dict[str, Any]) -> dict[str, Any]:
        from seal_agent.model import base_model_hash
        from seal_agent.selfedit._filters import example_hash

        if version is None:
            parent = registry.current
            history = list(registry.get(parent).manifest.get("metrics", {}).get("reward_history", [])) if parent else []
            record["seconds"] = sum(record.get(k, 0.0) or 0.0 for k in ("sample_seconds", "evaluate_seconds",
                                                                         "select_seconds", "train_seconds"))
            model, _ = self.base_model()
            manifest = {
                "parent": parent,
                "base_model": self.memory.config.model.name_or_path,
                "base_model_hash": base_model_hash(model),
                "lineage": {"run_id": mine, "interaction_ids": sorted({k["interaction_id"] for k in state["kept"]}),
                            "self_edit_hashes": [example_hash({"text": k["text"]}) for k in state["kept"]]},
                "hyperparameters": {"writer": dataclasses.asdict(self.config)},
                "metrics": {"reward_history": [*history, record], "train": state.get("train", {}),
                            "kept": [{"id": k["id"], "reward": k["reward"]} for k in state["kept"]]},
            }
            version = registry.commit(state["writer_dir"], manifest)
            logger.info("writer round %d: committed %s (kept %d of %d, mean reward %s)", state["round"], version,
                        record["kept"], record["total"], record["mean_reward"])
        shutil.rmtree(state["writer_dir"], ignore_errors=True)
        return {"round_record": {**record, "version": version}, "versions": [*state.get("versions", []), version]}

    def advance(self, state: _State) -> dict[str, Any]:
        """Close the round: its record goes into the history; the next round starts (or the run ends)."""
        record = dict(state["round_record"])
        record.setdefault("version", None)
        record.setdefault("train_seconds", 0.0)
        record["seconds"] = sum(record.get(k, 0.0) or 0.0 for k in ("sample_seconds", "evaluate_seconds",
                                                                     "select_seconds", "train_seconds"))
        # The round's throwaway updates waited here for their canary checks: done now.
        remove_dir(self._round_dir(state) / "candidates", missing_ok=True)
        if record["version"] is None:
            logger.info("writer round %d: nothing kept (%d candidates, %d hurt the canaries); nothing committed",
                        state["round"], record.get("total", 0), record.get("hurt_canaries", 0))
        return {"history": [*state.get("history", []), record], "round": state["round"] + 1,
                "candidates": [], "evaluations": [], "kept": [], "round_record": {}, "writer_dir": None}

    # -- graph ------------------------------------------------------------------

    def build(self, checkpointer: Any) -> Any:
        g = StateGraph(_State)
        for name in ("prepare", "sample", "evaluate", "select", "train_writer", "commit", "advance"):
            g.add_node(name, getattr(self, name))
        g.add_edge(START, "prepare")
        g.add_conditional_edges("prepare", lambda s: "sample" if s.get("interaction_ids") else END, ["sample", END])
        g.add_edge("sample", "evaluate")
        g.add_edge("evaluate", "select")
        g.add_conditional_edges("select", lambda s: "train_writer" if s.get("kept") else "advance",
                                ["train_writer", "advance"])
        g.add_conditional_edges("train_writer", lambda s: "commit" if s.get("writer_dir") else "advance",
                                ["commit", "advance"])
        g.add_edge("commit", "advance")
        g.add_conditional_edges("advance", lambda s: "sample" if s["round"] < s["rounds"] else END, ["sample", END])
        return g.compile(checkpointer=checkpointer)


# ---------------------------------------------------------------------- entry point


def _checkpointer(home: Path) -> Any:
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    _root(home).mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(_root(home) / "checkpoints.sqlite3", check_same_thread=False)
    return SqliteSaver(conn)


def _status_path(home: Path) -> Path:
    return _root(home) / "status.json"


def _load_status(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(_status_path(home).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        logger.warning("unreadable %s; starting a new record", _status_path(home))
        return {}
    return data if isinstance(data, dict) else {}


def _save_status(home: Path, status: dict[str, Any]) -> None:
    status["format_version"] = WRITER_FORMAT_VERSION
    try:
        write_atomic(_status_path(home), json.dumps(json_safe(status), indent=1, default=str, allow_nan=False))
    except OSError:  # a record for humans: failing to write it must not fail the run
        logger.warning("could not write %s", _status_path(home), exc_info=True)


def writer_status(home: str | Path) -> dict[str, Any]:
    """The writer lineage and its runs: CURRENT, the pending run (with attempts), the last outcome."""
    home = Path(home)
    status = _load_status(home)
    version, _ = _current_writer(home)
    return {"current": version, "pending": status.get("active"), "attempts": status.get("attempts", 0),
            "last": status.get("last")}


def _normalise_questions(questions: Mapping[str, Sequence[Any]] | None) -> dict[str, list[Question]]:
    if questions is None:
        return {}
    if not isinstance(questions, Mapping):
        raise ValidationError("questions", questions, "must map interaction ids to lists of questions")
    out = {}
    for iid, qs in questions.items():
        if isinstance(qs, (str, bytes)) or not isinstance(qs, Sequence) or not qs:
            raise ValidationError(f"questions[{iid!r}]", qs, "must be a non-empty list of questions")
        out[str(iid)] = [Question.of(q, f"questions[{iid!r}][{i}]") for i, q in enumerate(qs)]
    return out


def improve_writer(
    memory: SealMemory,
    *,
    rounds: int = 1,
    candidates: int | None = None,
    config: WriterConfig | None = None,
    questions: Mapping[str, Sequence[Any]] | None = None,
    interactions: Sequence[str] | None = None,
    reward_fn: RewardFn | None = None,
    teacher: Any = None,
    cancel_event: threading.Event | None = None,
    progress: bool = True,
) -> WriterReport:
    """Run (or resume) ReST-EM rounds on `memory`'s writer; see `SealMemory.improve_writer`.

    An unfinished run (killed, cancelled, or one that raised) is resumed first -- with
    the rounds, interactions and questions it started with -- up to
    ``config.max_attempts`` attempts; then it is abandoned and a fresh run starts. One
    run per home at a time (``home/writer/writer.lock``): a second caller gets
    ``skipped`` at once.

    Args:
        memory: The memory (its served model samples; its knowledge adapter is what
            throwaway updates start from and are rewarded against).
        rounds: ReST-EM rounds (each: sample, reward, keep, fine-tune, commit).
        candidates: Self-edits sampled per interaction (overrides ``config.candidates``).
        config: A `WriterConfig` (default: its defaults).
        questions: Interaction id -> questions (`Question`, ``(question, answer)`` or
            dicts); interactions without any get the served model's ``self_qa`` pairs.
        interactions: Interaction ids to learn from (default: the newest
            ``config.max_interactions`` with positive or no feedback, among those with
            `questions` when given).
        reward_fn: A scripted reward (tests, experiments): replaces the closed-book
            scoring and the canary check.
        teacher: The chat model that samples (default: ``memory.chat_model()``, with the
            writer adapter pinned).
        cancel_event: Set it to stop at the next candidate; the next call resumes.
        progress: tqdm bars.

    Raises:
        WriterError: The run raised; it names the attempt and whether it will resume.
        ValidationError: Bad `rounds`, `candidates` or `questions`.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValidationError("rounds", rounds, "must be a positive integer")
    config = config or WriterConfig()
    if candidates is not None:
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValidationError("candidates", candidates, "must be a positive integer")
        config = dataclasses.replace(config, candidates=candidates)
    qs = _normalise_questions(questions)
    home = memory.home
    _root(home).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_root(home) / "writer.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return WriterReport(run_id="-", verdict="skipped", reason="another writer run holds this home")
    try:
        run = _Run(memory, config, questions=qs, interactions=list(interactions) if interactions is not None else None,
                   reward_fn=reward_fn, teacher=teacher, cancel_event=cancel_event, progress=progress)
        checkpointer = _checkpointer(home)
        try:
            return _invoke(run, run.build(checkpointer), home, rounds, config)
        finally:
            checkpointer.conn.close()
    finally:
        lock.release()


def _invoke(run: _Run, graph: Any, home: Path, rounds: int, config: WriterConfig) -> WriterReport:
    status = _load_status(home)
    rid = status.get("active")
    abandoned = None
    inp: Any
    snap = graph.get_state({"configurable": {"thread_id": rid}}) if rid else None
    if rid and snap is not None and snap.next and int(status.get("attempts", 0)) >= config.max_attempts:
        abandoned = {"run_id": rid, "attempts": status.get("attempts"), "last_error": status.get("last_error"),
                     "at": datetime.now(UTC).isoformat(timespec="seconds")}
        logger.warning("writer run %s abandoned after %s attempts; starting a fresh run", rid, status.get("attempts"))
        status["abandoned"] = [*status.get("abandoned", []), abandoned][-10:]
        for name in ("candidates", "throwaway", "writer"):  # its trained updates, never to be used
            for leftover in (_root(home) / "runs" / rid).glob(f"round-*/{name}"):
                remove_dir(leftover, missing_ok=True)
        rid, snap = None, None
    if rid and snap is not None and snap.next:
        logger.info("resuming writer run %s at %s", rid, list(snap.next))
        inp = None
    else:
        rid = f"writer-{new_interaction_id()}"
        status["active"], status["attempts"], status["last_error"] = rid, 0, None
        inp = {"run_id": rid, "rounds": rounds, "round": 0, "history": [], "versions": []}
    status["attempts"] = int(status.get("attempts", 0)) + 1
    _save_status(home, status)  # before running: a process that dies mid-run used an attempt
    cfg = {"configurable": {"thread_id": rid}}
    try:
        graph.invoke(inp, cfg, durability="sync")
    except TrainingCancelled as exc:
        status["attempts"] -= 1  # a cancel is not a failure
        _save_status(home, status)
        state = graph.get_state(cfg).values
        return WriterReport(run_id=rid, verdict="cancelled", reason=str(exc), versions=list(state.get("versions", [])),
                            rounds=list(state.get("history", [])), abandoned=abandoned)
    except Exception as exc:
        status["last_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        then = ("the next call starts a fresh run" if status["attempts"] >= config.max_attempts
                else "the next call resumes it")
        _save_status(home, status)
        raise WriterError(f"writer run {rid} failed (attempt {status['attempts']} of {config.max_attempts}): "
                          f"{status['last_error']}; {then}") from exc
    state = graph.get_state(cfg).values
    versions = list(state.get("versions", []))
    history = list(state.get("history", []))
    reason = state.get("reason")
    if versions:
        verdict: Literal["committed", "skipped", "cancelled"] = "committed"
        reason = None
    else:
        verdict = "skipped"
        if reason is None:
            reason = "no candidate gained without hurting the canaries: nothing committed"
    status.update(active=None, attempts=0, last={"run_id": rid, "verdict": verdict, "reason": reason,
                                                 "versions": versions,
                                                 "at": datetime.now(UTC).isoformat(timespec="seconds")})
    _save_status(home, status)
    return WriterReport(run_id=rid, verdict=verdict, reason=reason, versions=versions, rounds=history,
                        abandoned=abandoned)


def rollback_writer(home: str | Path, version: str) -> str:
    """Make an earlier committed writer version CURRENT again (the knowledge adapter is untouched).

    Raises:
        NotFoundError: No such version.
    """
    return writer_registry(home).rollback(version)


def list_writer(home: str | Path) -> list[dict[str, Any]]:
    """Every writer version with its round's reward figures, oldest first."""
    out = []
    for v in writer_registry(home).list(verify=True):
        history = v.manifest.get("metrics", {}).get("reward_history", [])
        last = history[-1] if history else {}
        out.append({"version": v.version, "verdict": v.verdict, "current": v.is_current, "parent": v.parent,
                    "created_at": v.created_at, "problem": v.problem, "rounds": len(history),
                    "mean_reward": last.get("mean_reward"), "kept": last.get("kept"), "total": last.get("total"),
                    "seconds_per_candidate": last.get("seconds_per_candidate"), "seconds": last.get("seconds")})
    return out

