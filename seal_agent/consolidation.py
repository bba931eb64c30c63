"""Consolidation: new interactions become self-edits and a gated LoRA update.

A LangGraph `StateGraph`, checkpointed in SQLite under the memory home::

    collect -> self_edit -> train -> gate -> [approve] -> commit -> mark
        |          |                     \\-> reject
        v          v
       END        END      (nothing new / no usable self-edits / dry run)

Why a checkpointed graph: a run takes minutes to hours, and the process running it
can die at any point. Every node's output is checkpointed, so the next
`consolidate()` on the same home resumes the unfinished run from its last completed
node. The order of the last steps is what keeps the promise that no interaction is
ever marked consolidated without a committed adapter: `mark` runs only after
`commit` has atomically moved CURRENT, and `commit` is idempotent (a resumed run
finds its own version by ``lineage.run_id`` instead of committing twice).

State holds only JSON-friendly data (ids, examples, paths, metrics). Live objects
(the model, the memory, the teacher) live in `_Run`, rebuilt when a run resumes.

Never wedged. Resuming is what makes a run survive a crash, and also what would make a
run that fails for good (bad data, a bug) fail again on every call, the scheduler's
included. So every start or resumption of a run counts as an attempt, in
``home/consolidation/status.json``; after ``consolidation.max_attempts`` attempts the
run is abandoned: its interactions stay ``new``, the reason is kept (``status.json`` and
``runs/<run>/ABANDONED.json``), and the next call starts a fresh run. Data that can
never be trained on cannot make runs fail in the first place: self-edits longer than
``train.max_seq_len`` tokens are cut (documents) or dropped (chat examples), counted and
named in the report (`ConsolidationReport.too_long`), and an interaction left with no
self-edit that fits is marked ``excluded`` (kept for recall, never trained on), so it
cannot come back. `consolidation_status` reads that record for ``seal-agent status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from filelock import Timeout
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from seal_agent._fs import write_atomic
from seal_agent.config import SealConfig
from seal_agent.coordination import run_lock
from seal_agent.errors import ConsolidationError, NotFoundError, TrainingCancelled
from seal_agent.forget import finish_pending, guard_node
from seal_agent.lineage import Lineage, lineage_for
from seal_agent.memory.records import InteractionStatus, Namespace, new_interaction_id, parse_namespace

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from seal_agent.registry import AdapterRegistry
    from seal_agent.seal_memory import SealMemory

__all__ = ["CONSOLIDATION_FORMAT_VERSION", "ConsolidationReport", "approve", "consolidate", "consolidation_status",
           "pending_runs"]

logger = logging.getLogger(__name__)

CONSOLIDATION_FORMAT_VERSION = 1

Verdict = Literal["committed", "rejected", "skipped", "pending_approval", "failed"]


@dataclass
class ConsolidationReport:
    """What one consolidation run did.

    Attributes:
        run_id: Id of the run (its checkpoint thread; pass it to `approve`).
        verdict: ``committed`` (a new CURRENT), ``rejected`` (the gate said no; the
            candidate is kept as a staged version), ``skipped`` (nothing to do, dry
            run, cancelled, or another run holds the home), ``pending_approval``;
            ``failed`` only in ``runs``: that lineage's run raised, the others went on.
        reason: Why, for anything but ``committed``.
        version: The committed or staged adapter version.
        gate: The gate report (dict), when the gate ran.
        counts: interactions, excluded, self_edits, probes, replay, dropped_<reason>.
        timings: Seconds per stage.
        train: Training metrics (steps, final loss, tokens/s, ...).
        dry_run: Whether this was a dry run (self-edits only).
        self_edits: The training examples written (dry runs only, for inspection).
        too_long: Self-edits longer than ``train.max_seq_len`` tokens, one dict each:
            ``interaction_id``, ``strategy``, ``tokens``, ``action`` (``truncated``: a
            document cut to fit; ``dropped``: a chat example left out). An interaction
            with nothing left that fits is marked ``excluded`` (``counts["excluded_too_long"]``).
        abandoned: Runs this call gave up on before starting a fresh one (they had used
            ``consolidation.max_attempts``): ``run_id``, ``attempts``, ``reason``.
        lineage: The adapter lineage the run trained (``"global"`` or a namespace
            lineage's name, see `seal_agent.lineage`).
        runs: With ``adapter_scope = "namespace"`` and several lineages consolidated in
            one call: the report of each (this one sums them up).
    """

    run_id: str
    verdict: Verdict
    reason: str | None = None
    version: str | None = None
    gate: dict[str, Any] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    dry_run: bool = False
    self_edits: list[dict[str, Any]] = field(default_factory=list)
    too_long: list[dict[str, Any]] = field(default_factory=list)
    abandoned: list[dict[str, Any]] = field(default_factory=list)
    lineage: str | None = None
    runs: list[ConsolidationReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": CONSOLIDATION_FORMAT_VERSION, **dataclasses.asdict(self)}


class _State(TypedDict, total=False):
    run_id: str
    dry_run: bool
    lineage: list[str] | None  # the namespace of the lineage this run trains; None: global
    interaction_ids: list[str]
    edits: list[dict[str, Any]]  # {"example", "hash", "strategy", "interaction_id"}
    probes: list[dict[str, Any]]
    candidate_dir: str
    parent: str | None
    train: dict[str, Any]
    gate: dict[str, Any]
    gate_adapter_dir: str | None
    scale: float
    verdict: str
    reason: str | None
    version: str | None
    counts: dict[str, int]
    timings: dict[str, float]
    too_long: list[dict[str, Any]]


# ------------------------------------------------------------------------- paths


def _root(memory: SealMemory) -> Path:
    return memory.home / "consolidation"


def _run_dir(memory: SealMemory, run_id: str) -> Path:
    return _root(memory) / "runs" / run_id


def _merge(state: _State, key: str, values: dict[str, Any]) -> dict[str, Any]:
    return {**state.get(key, {}), **values}  # type: ignore[misc]


# -------------------------------------------------------------------- replay buffer


def load_replay(memory: SealMemory, lineage: Lineage | None = None) -> list[dict[str, Any]]:
    """Training examples of a lineage's committed runs, kept for replay (oldest first)."""
    path = (lineage or Lineage(memory.home)).replay_path
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [item["example"] for item in data.get("items", [])]


def _extend_replay(lineage: Lineage, edits: list[dict[str, Any]], run_id: str, cap: int) -> None:
    path = lineage.replay_path
    path.parent.mkdir(parents=True, exist_ok=True)
    items = json.loads(path.read_text(encoding="utf-8"))["items"] if path.exists() else []
    seen = {i["hash"] for i in items}
    # interaction_id: what forget needs to find an item again
    items += [{"example": e["example"], "hash": e["hash"], "run_id": run_id, "interaction_id": e["interaction_id"]}
              for e in edits if e["hash"] not in seen]
    items = items[-cap:] if cap else []
    write_atomic(path, json.dumps({"format_version": CONSOLIDATION_FORMAT_VERSION, "items": items}))


_SENTENCE_SPLIT = re.compile(r"((?<=[.!?;])\s+|\n+)")


def _stale_values(memory: SealMemory) -> list[tuple[frozenset[str], str]]:
    """What every superseded fact said that is no longer true: ``(the interactions it was
    distilled from minus those of the fact that replaced it, its old value normalized)``.

    The value is the claim's value for a sentence fact ("tumbleweed" of "My brother's
    sailboat is called the Tumbleweed") or the answer of a question fact."""
    from seal_agent.memory.claims import parse_claim
    from seal_agent.memory.facts import _answer, _is_slot, normalize_text

    store = getattr(memory, "_facts", None)
    if store is None:
        return []
    facts = store.list(include_superseded=True)
    by_id = {f.id: f for f in facts}
    out = []
    for f in facts:
        if f.status != "superseded":
            continue
        if _is_slot(f.key):
            claim = parse_claim(f.text)
            value = normalize_text(claim.value) if claim is not None else ""
        else:
            value = normalize_text(_answer(f.text, f.key))
        newer = by_id.get(f.superseded_by or "")
        sources = frozenset(f.sources) - frozenset(newer.sources if newer is not None else ())
        if value and sources:
            out.append((sources, value))
    return out


def _without_stale(example: dict[str, Any], values: list[str]) -> dict[str, Any] | None:
    """The replay example with what states a stale value taken out: a document loses the
    sentences that say it (the rest of what the exchange taught stays), a chat example
    saying it anywhere is dropped whole (None); the example itself when it says none."""
    from seal_agent.memory.facts import normalize_text

    def says(text: str) -> bool:
        padded = f" {normalize_text(text)} "
        return any(f" {v} " in padded for v in values)

    if "messages" in example:
        return None if any(says(str(m.get("content", ""))) for m in example["messages"]) else example
    text = str(example.get("text", ""))
    if not says(text):
        return example
    parts = _SENTENCE_SPLIT.split(text)  # sentence, separator, sentence, ...
    kept = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
            for i in range(0, len(parts), 2) if not says(parts[i])]
    rest = "".join(kept).strip()
    return {**example, "text": rest} if rest else None


def prune_superseded(memory: SealMemory, lineage: Lineage | None = None) -> int:
    """Take out of a lineage's replay buffer what superseded facts taught: the replay
    examples of the interactions a superseded fact came from lose what states its old
    value (`_without_stale`). Run before every training step, so the run that learns a
    correction never rehearses the value it corrects ("the Tumbleweed" after "his
    sailboat is called the Saltpetal"). Returns how many items changed or left."""
    from seal_agent.selfedit._filters import example_hash

    path = (lineage or Lineage(memory.home)).replay_path
    if not path.exists():
        return 0
    stale = _stale_values(memory)
    if not stale:
        return 0
    data = json.loads(path.read_text(encoding="utf-8"))
    items, changed = [], 0
    for item in data.get("items", []):
        values = [v for sources, v in stale if item.get("interaction_id") in sources]
        example = _without_stale(item["example"], values) if values else item["example"]
        if example is item["example"]:
            items.append(item)
            continue
        changed += 1
        if example is not None:
            items.append({**item, "example": example, "hash": example_hash(example)})
    if changed:
        logger.info("replay buffer %s: %d items changed or dropped (facts superseded since)", path, changed)
        write_atomic(path, json.dumps({**data, "format_version": CONSOLIDATION_FORMAT_VERSION, "items": items}))
    return changed


# ----------------------------------------------------------------- teacher = "none"


def _model_free(config: Any, interactions: list[Any]) -> tuple[Any, list[Any], dict[str, Any]]:
    """What ``consolidation.teacher = "none"`` runs: the configured strategies that need no model.

    A strategy needs a model when it builds a prompt for one of the interactions it
    applies to. Those are skipped (and counted) rather than failing the run; when none
    of the configured strategies is left, ``raw`` (the exchange itself) is used, which
    is what "raw only" promises. Interactions with negative feedback go only to
    ``negative_strategy`` (never ``raw``: it would teach the rejected answer); when that
    one needs a model they are left out of this run and stay ``new``.

    Returns:
        ``(selfedit config, interactions to self-edit, {"count": skipped (interaction,
        strategy) pairs, "left_new": ids of interactions left out})``.
    """
    from seal_agent.selfedit import get_self_edit_strategy

    def needs_model(name: str, items: list[Any]) -> bool:
        strategy = get_self_edit_strategy(name)
        return any(strategy.applies_to(it) and strategy.build_prompt(it) is not None for it in items)

    positive = [it for it in interactions if it.feedback is None or it.feedback >= 0]
    negative = [it for it in interactions if it.feedback is not None and it.feedback < 0]
    names = list(dict.fromkeys(config.strategies))
    free = [n for n in names if not positive or not needs_model(n, positive)]
    count = (len(names) - len(free)) * len(positive)
    if len(free) < len(names):
        logger.info("consolidation.teacher='none': skipping self-edit strategies that need a model: %s%s",
                    ", ".join(n for n in names if n not in free), "" if free else "; using 'raw'")
    left_new: list[str] = []
    if negative and needs_model(config.negative_strategy, negative):
        left_new = [it.id for it in negative]
        count += len(negative)
        logger.info("consolidation.teacher='none': %d interactions with negative feedback left new "
                    "(strategy %r needs a model)", len(negative), config.negative_strategy)
        interactions = positive
    config = dataclasses.replace(config, strategies=free or ["raw"])
    return config, interactions, {"count": count, "left_new": left_new}


# ------------------------------------------------------------------------- the run

# memory -> a model over the memory's base weights, kept while the memory lives: the
# registry of `seal_agent.model.shared` frees a base when no model uses it any more, and
# without this the base a run loaded would be freed at its end, then loaded again by the
# served model or the next run. (A weak key: a closed, dropped memory releases it.)
_KEPT_BASES: weakref.WeakKeyDictionary[SealMemory, tuple[Any, Any]] = weakref.WeakKeyDictionary()


class _Run:
    """Live resources of one run; nodes are its methods. Rebuilt when a run resumes."""

    def __init__(self, memory: SealMemory, config: SealConfig, *, teacher: BaseChatModel | None,
                 cancel_event: threading.Event | None, progress: bool) -> None:
        self.memory = memory
        self.config = config
        self.teacher = teacher
        self.cancel_event = cancel_event
        self.progress = progress
        self._base: tuple[Any, Any] | None = None

    def base_model(self) -> tuple[Any, Any]:
        """The base model for training and the gate: a twin of the served one.

        Its own module tree (training and the gate inject and remove LoRA layers in it,
        never in the served model, so serving goes on meanwhile without a lock) over the
        served model's frozen base tensors: no second load, no second copy of the weights
        (`seal_agent.model.shared`). When nothing is served yet, the base is loaded here,
        once, and kept while the memory lives (when it is the memory's own model), so a
        later `SealMemory.chat_model` and later runs share it instead of loading it again.
        """
        if self._base is None:
            from seal_agent.model.shared import load_shared, shared_key

            mc, served = self.config.model, self.memory.config.model
            options = {"device": mc.device, "dtype": mc.dtype, "seed": mc.seed}
            key = shared_key(mc.name_or_path, **options)
            if key == shared_key(served.name_or_path, device=served.device, dtype=served.dtype, seed=served.seed):
                # The memory's own model: keep one model over the base for the memory's
                # life, so a later chat_model() or run finds the base loaded.
                if self.memory not in _KEPT_BASES:
                    _KEPT_BASES[self.memory] = load_shared(mc.name_or_path, **options)
            self._base = load_shared(mc.name_or_path, **options)  # this run's own module tree
        return self._base

    def _rehearsal(self) -> list[dict[str, Any]]:
        """The base model's own answers to general prompts (cached in the home), or [] when off."""
        if self.config.train.rehearsal_size <= 0:
            return []
        from seal_agent.model import base_model_hash
        from seal_agent.training.rehearsal import rehearsal_examples

        model, tokenizer = self.base_model()
        return rehearsal_examples(model, tokenizer, cache_home=self.memory.home, base_hash=base_model_hash(model),
                                  cancel_event=self.cancel_event)

    def _cancelled(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()

    def lineage(self, state: _State) -> Lineage:
        """The lineage this run trains (from its state: a resumed run keeps its own)."""
        ns = state.get("lineage")
        return Lineage(self.memory.home, tuple(ns) if ns is not None else None)

    def _gate(self, state: _State) -> Any:
        from seal_agent.gate import Gate

        lineage, cc = self.lineage(state), self.config.consolidation
        member = None if cc.adapter_scope == "global" else (lambda ns: lineage_for(self.memory.home, ns, cc) == lineage)
        return Gate(self.memory, self.config.gate, lineage=lineage.name, member=member)

    def registry(self, state: _State) -> AdapterRegistry:
        lineage = self.lineage(state)
        return self.memory.adapters if lineage.namespace is None else lineage.registry()

    # -- nodes ---------------------------------------------------------------

    def collect(self, state: _State) -> dict[str, Any]:
        t0 = time.perf_counter()
        cc = self.config.consolidation
        lineage = self.lineage(state)
        new = self.memory.list(status=InteractionStatus.NEW)
        if cc.adapter_scope != "global":  # only what trains this lineage; the others wait for their own run
            new = [it for it in new if lineage_for(self.memory.home, it.namespace, cc) == lineage]
        new = new[: cc.max_interactions]
        excluded_ns = [parse_namespace(p, "selfedit.exclude_namespaces") for p in self.config.selfedit.exclude_namespaces]

        def excluded(ns: tuple[str, ...]) -> bool:
            return any(ns[: len(x)] == x for x in excluded_ns)

        skip = [it.id for it in new if excluded(it.namespace)]
        if skip:  # kept for recall, never trained on
            self.memory.mark(skip, InteractionStatus.EXCLUDED)
        ids = [it.id for it in new if not excluded(it.namespace)]
        out: dict[str, Any] = {
            "interaction_ids": ids,
            "counts": _merge(state, "counts", {"interactions": len(ids), "excluded": len(skip)}),
            "timings": _merge(state, "timings", {"collect": time.perf_counter() - t0}),
        }
        if len(ids) < cc.min_interactions:
            out.update(verdict="skipped",
                       reason=f"nothing new to learn ({len(ids)} new interactions, need {cc.min_interactions})")
        return out

    def self_edit(self, state: _State) -> dict[str, Any]:
        from seal_agent.selfedit import generate_self_edits

        t0 = time.perf_counter()
        interactions = [self.memory.get(i) for i in state["interaction_ids"]]
        teacher = self.teacher
        selfedit_config = self.config.selfedit
        skipped: dict[str, Any] = {}
        pin: Any = contextlib.nullcontext()
        if teacher is None and self.config.consolidation.teacher == "served":
            teacher = self.memory.chat_model()
            lineage = self.lineage(state)
            route = getattr(teacher, "route", None)
            if lineage.namespace is not None and route is not None:
                # The run has no user in its config: without a pin the served model would
                # route to the default namespace. The lineage's own adapter writes its self-edits.
                pin = teacher.pinned(route.adapter_for(lineage.namespace))
            from seal_agent.selfedit.writer import writer_pin

            pin = writer_pin(self.memory, teacher, pin)  # ReST-EM: a committed writer writes the self-edits
        elif teacher is None:  # teacher = "none": only what needs no model
            selfedit_config, interactions, skipped = _model_free(selfedit_config, interactions)
        with pin:
            batch = generate_self_edits(interactions, teacher, selfedit_config,
                                        progress=self.progress, cancel_event=self.cancel_event)
        if self.config.memory.facts and not state.get("dry_run") and not batch.cancelled:
            from seal_agent.memory.facts import record_facts  # one pass feeds both memories

            record_facts(self.memory, batch.edits, interactions)
        run_dir = _run_dir(self.memory, state["run_id"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "selfedits.json").write_text(json.dumps(batch.to_dict(), indent=1), encoding="utf-8")
        edits = [{"example": e.example, "hash": e.hash, "strategy": e.strategy, "interaction_id": e.interaction_id}
                 for e in batch.edits]
        probes = [dataclasses.asdict(p) for p in batch.probes]
        counts = {"self_edits": len(edits), "probes": len(probes),
                  **{f"dropped_{k}": v for k, v in batch.dropped.items()}}
        if skipped.get("count"):
            counts["skipped_needs_teacher"] = skipped["count"]
        out: dict[str, Any] = {
            "edits": edits, "probes": probes,
            "counts": _merge(state, "counts", counts),
            "timings": _merge(state, "timings", {"self_edit": time.perf_counter() - t0}),
        }
        if skipped.get("left_new"):  # never learned from here: kept `new` for a run with a teacher
            out["interaction_ids"] = [i for i in state["interaction_ids"] if i not in set(skipped["left_new"])]
        if batch.cancelled or self._cancelled():
            out.update(verdict="skipped", reason="cancelled")
        elif not edits:
            out.update(verdict="skipped", reason=f"no usable self-edits (dropped: {batch.dropped or 'none'})")
        elif state.get("dry_run"):
            out.update(verdict="skipped", reason="dry run: self-edits generated, training not started")
        return out

    def train(self, state: _State) -> dict[str, Any]:
        from seal_agent.training import train_adapter

        t0 = time.perf_counter()
        model, tokenizer = self.base_model()
        fitted = self._fit(tokenizer, state)
        if not fitted["edits"]:
            return fitted
        edits = fitted["edits"]
        registry = self.registry(state)
        parent = registry.current
        lineage = self.lineage(state)
        pruned = prune_superseded(self.memory, lineage)  # a correction's run never rehearses the old value
        if pruned:
            fitted["counts"] = {**fitted["counts"], "replay_superseded": pruned}
        pool = self._fit_pool(tokenizer, load_replay(self.memory, lineage), "replay", fitted)
        examples = [e["example"] for e in edits]
        retrain = self.config.consolidation.accumulate == "retrain"
        if retrain:
            # From the base, on every kept self-edit of the lineage and the new ones.
            init, replay, examples = None, [], examples + pool
        else:
            init, replay = (registry.get(parent).path if parent else None), pool
        out_dir = _run_dir(self.memory, state["run_id"]) / "candidate"
        shutil.rmtree(out_dir, ignore_errors=True)  # a resumed run retrains from scratch
        try:
            rehearsal = self._fit_pool(tokenizer, self._rehearsal(), "rehearsal", fitted)
            result = train_adapter(model, tokenizer, examples, self.config.train,
                                   init_adapter=init, replay=replay, rehearsal=rehearsal, output_dir=out_dir,
                                   cancel_event=self.cancel_event, progress=self.progress)
        except TrainingCancelled:
            return {**fitted, "verdict": "skipped", "reason": "cancelled"}
        # What `forget` reads to find the versions that learned a forgotten run's examples
        # again: a retrain from the base learned the whole buffer.
        replayed = len(pool) if retrain else result.replay_examples
        metrics = {
            "steps": result.steps,
            # Mean loss over the first and the last epoch: comparable, unlike two single batches.
            "first_loss": result.epoch_losses[0] if result.epoch_losses else None,
            "final_loss": result.epoch_losses[-1] if result.epoch_losses else None,
            "epoch_losses": list(result.epoch_losses), "rehearsal_examples": result.rehearsal_examples,
            "tokens_seen": result.tokens_seen, "tokens_per_second": result.tokens_per_second,
            "seconds": result.seconds, "stopped_reason": result.stopped_reason,
            "examples": result.examples - (len(pool) if retrain else 0),
            "replay_examples": replayed, "replay_distinct": len(pool) if retrain else result.replay_distinct,
            "accumulate": self.config.consolidation.accumulate,
            "peak_memory_bytes": result.peak_memory_bytes,
        }
        return {
            **fitted,
            "candidate_dir": str(result.adapter_path), "parent": parent, "train": metrics,
            "counts": {**fitted["counts"], "replay": replayed},
            "timings": _merge(state, "timings", {"train": time.perf_counter() - t0}),
        }

    def _fit(self, tokenizer: Any, state: _State) -> dict[str, Any]:
        """Make the run's self-edits fit ``train.max_seq_len`` (see `fit_examples`); a state update.

        Without this, one long exchange (a 25,000-character message is within
        ``memory.max_message_chars``) made `train_adapter` reject the whole set, and since
        a failed run is resumed, every later consolidation failed the same way. Cut and
        dropped items are counted and named (report ``too_long`` and a warning); an
        interaction with no self-edit left that fits is marked ``excluded`` and taken
        out of the run, so it is neither marked consolidated nor collected again.
        """
        from seal_agent.selfedit._filters import example_hash
        from seal_agent.training.data import fit_examples

        limit = self.config.train.max_seq_len
        edits = state["edits"]
        fit = fit_examples(tokenizer, [e["example"] for e in edits], max_seq_len=limit)
        kept = []
        for i, example in zip(fit.kept, fit.examples, strict=True):
            e = edits[i]
            kept.append(e if example == e["example"] else {**e, "example": example, "hash": example_hash(example)})
        too_long = [{"interaction_id": edits[i]["interaction_id"], "strategy": edits[i]["strategy"], "tokens": n,
                     "action": "truncated"} for i, n in fit.truncated]
        too_long += [{"interaction_id": edits[i]["interaction_id"], "strategy": edits[i]["strategy"], "tokens": n,
                      "action": "dropped"} for i, n, why in fit.dropped if why == "too_long"]
        counts: dict[str, int] = {}
        for item in too_long:
            logger.warning("interaction %s: self-edit (%s) of %d tokens is longer than train.max_seq_len=%d: %s",
                           item["interaction_id"], item["strategy"], item["tokens"], limit, item["action"])
            key = f"too_long_{item['action']}"
            counts[key] = counts.get(key, 0) + 1
        for i, _tokens, why in fit.dropped:
            if why != "too_long":
                logger.warning("interaction %s: self-edit (%s) cannot be trained on (%s): dropped",
                               edits[i]["interaction_id"], edits[i]["strategy"], why)
                key = "dropped_invalid" if why.startswith("invalid") else f"dropped_{why}"
                counts[key] = counts.get(key, 0) + 1
        left = {e["interaction_id"] for e in kept}
        unfit = list(dict.fromkeys(t["interaction_id"] for t in too_long if t["interaction_id"] not in left))
        ids = state["interaction_ids"]
        if unfit:
            logger.warning("no self-edit of interaction(s) %s fits train.max_seq_len=%d: marked excluded "
                           "(kept for recall, never trained on)", ", ".join(unfit), limit)
            self.memory.mark(unfit, InteractionStatus.EXCLUDED)
            counts["excluded_too_long"] = len(unfit)
            ids = [i for i in ids if i not in set(unfit)]
        out: dict[str, Any] = {"edits": kept, "interaction_ids": ids, "too_long": too_long,
                               "counts": _merge(state, "counts", counts)}
        if not kept:
            names = ", ".join(unfit) or "none"
            out.update(verdict="skipped",
                       reason=f"no self-edit fits train.max_seq_len={limit} (interactions excluded: {names})")
        return out

    def _fit_pool(self, tokenizer: Any, pool: list[dict[str, Any]], name: str,
                  update: dict[str, Any]) -> list[dict[str, Any]]:
        """Replay or rehearsal examples that fit ``train.max_seq_len`` (older data may not,
        e.g. after the limit was lowered); what was left out is counted in `update`.

        The whole pool is checked: `train_adapter` draws a different replay sample every
        epoch, and ``accumulate = "retrain"`` trains on all of it.
        """
        from seal_agent.training.data import fit_examples

        if not pool:
            return pool
        tc = self.config.train
        fit = fit_examples(tokenizer, pool, max_seq_len=tc.max_seq_len)
        if fit.dropped or fit.truncated:
            logger.warning("%d %s examples longer than train.max_seq_len=%d or unusable: %d cut, %d left out",
                           len(fit.dropped) + len(fit.truncated), name, tc.max_seq_len, len(fit.truncated),
                           len(fit.dropped))
            update["counts"] = {**update["counts"], f"{name}_unfit": len(fit.dropped) + len(fit.truncated)}
        return fit.examples

    def gate(self, state: _State) -> dict[str, Any]:
        from seal_agent.selfedit import Probe

        t0 = time.perf_counter()
        model, tokenizer = self.base_model()
        parent = state.get("parent")
        current_dir = self.registry(state).get(parent).path if parent else None
        probes = [Probe(**{**p, "namespace": tuple(p["namespace"])}) for p in state.get("probes", [])]
        report = self._gate(state).evaluate(
            model, tokenizer, Path(state["candidate_dir"]), current_dir, probes,
            _run_dir(self.memory, state["run_id"]) / "gate", cancel_event=self.cancel_event, progress=self.progress,
            taught=self._taught(state),
        )
        report.save(_run_dir(self.memory, state["run_id"]) / "gate")
        return {
            "gate": report.to_dict(),
            "gate_adapter_dir": str(report.adapter_dir) if report.adapter_dir else None,
            "scale": report.scale,
            "timings": _merge(state, "timings", {"gate": time.perf_counter() - t0}),
        }

    def approve(self, state: _State) -> Command[Literal["commit", "reject"]]:
        decision = interrupt({"run_id": state["run_id"], "gate": state.get("gate")})
        if decision == "approve":
            return Command(goto="commit")
        return Command(goto="reject", update={"reason": f"not approved ({decision})"})

    def _manifest(self, state: _State, adapter_scale: float) -> dict[str, Any]:
        from seal_agent.model import base_model_hash

        model, _ = self.base_model()
        return {
            "parent": state.get("parent"),
            "base_model": self.config.model.name_or_path,
            "base_model_hash": base_model_hash(model),
            "lineage": {"run_id": state["run_id"], "interaction_ids": state["interaction_ids"],
                        "self_edit_hashes": [e["hash"] for e in state["edits"]]},
            "hyperparameters": dataclasses.asdict(self.config.train),
            "metrics": {"train": state.get("train", {}), "counts": state.get("counts", {})},
            "gate": state.get("gate"),
            "scale": adapter_scale,
        }

    def _own_version(self, state: _State, verdict: str) -> str | None:
        """The version this run already stored (a resumed run must not store twice)."""
        run_id = state["run_id"]
        for v in self.registry(state).list():
            if v.manifest.get("lineage", {}).get("run_id") == run_id and v.verdict == verdict:
                return v.version
        return None

    def commit(self, state: _State) -> dict[str, Any]:
        t0 = time.perf_counter()
        version = self._own_version(state, "committed")
        if version is None:
            adapter_dir = state.get("gate_adapter_dir") or state["candidate_dir"]
            scaled = adapter_dir != state["candidate_dir"]  # keep the full candidate staged, for inspection
            self.lineage(state).write_marker()
            version = self.registry(state).commit(adapter_dir, self._manifest(state, state.get("scale", 1.0)),
                                                  full_candidate=state["candidate_dir"] if scaled else None)
        _extend_replay(self.lineage(state), state["edits"], state["run_id"],
                       self.config.consolidation.replay_buffer_size)
        self._save_gate_report(state, version, committed=True)
        self._update_suite(state)
        return {"verdict": "committed", "version": version, "reason": None,
                "timings": _merge(state, "timings", {"commit": time.perf_counter() - t0})}

    def reject(self, state: _State) -> dict[str, Any]:
        t0 = time.perf_counter()
        version = self._own_version(state, "rejected")
        if version is None:
            manifest = self._manifest(state, 1.0)
            self.lineage(state).write_marker()
            version = self.registry(state).stage(state["candidate_dir"], {**manifest, "verdict": "rejected"})
        self._save_gate_report(state, version)
        reasons = (state.get("gate") or {}).get("reasons") or []
        return {"verdict": "rejected", "version": version,
                "reason": state.get("reason") or "; ".join(reasons) or "rejected by the gate",
                "timings": _merge(state, "timings", {"reject": time.perf_counter() - t0})}

    def mark(self, state: _State) -> dict[str, Any]:
        # Only ever after commit: CURRENT already names the adapter that learned these.
        self.memory.mark(state["interaction_ids"], InteractionStatus.CONSOLIDATED, version=state["version"])
        shutil.rmtree(_run_dir(self.memory, state["run_id"]) / "candidate", ignore_errors=True)
        return {}

    def _save_gate_report(self, state: _State, version: str, *, committed: bool = False) -> None:
        src = _run_dir(self.memory, state["run_id"]) / "gate"
        dest = self.lineage(state).reports_dir / version
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            for f in src.glob("gate_report.*"):
                shutil.copy2(f, dest / f.name)
            if committed and (dest / "gate_report.json").is_file():
                from seal_agent.gate.report import GateReport

                # The gate wrote its summary before the commit: name the registry version, not the run's folder.
                (dest / "gate_report.md").write_text(GateReport.load(dest).to_markdown(version=version),
                                                     encoding="utf-8")

    def _update_suite(self, state: _State) -> None:

        # A cut self-edit means the exchange itself is longer than training allows: the
        # gate would have to score it in full later, so it is not kept as a past task.
        cut = {t["interaction_id"] for t in state.get("too_long", [])}
        interactions = [self.memory.get(i) for i in state["interaction_ids"] if i not in cut]
        self._gate(state).update_suite(interactions, report=state.get("gate"), taught=self._taught(state))

    def _taught(self, state: _State) -> list[Any]:
        """The run's learned items (probes, self_qa pairs, fact claims): what later gates re-ask."""
        from seal_agent.gate.suite import taught_items
        from seal_agent.memory.records import join_namespace

        namespaces: dict[str, str] = {}
        for iid in sorted({e["interaction_id"] for e in state.get("edits", []) if e.get("interaction_id")}):
            try:
                namespaces[iid] = join_namespace(self.memory.get(iid).namespace)
            except NotFoundError:  # forgotten meanwhile: what it taught is not kept
                continue
        return taught_items(state.get("probes", []), state.get("edits", []), namespaces)

    # -- graph ---------------------------------------------------------------

    def build(self, checkpointer: Any) -> Any:
        g = StateGraph(_State)
        g.add_node("collect", self.collect)
        g.add_node("self_edit", self.self_edit)
        g.add_node("train", self.train)
        g.add_node("gate", self.gate)
        g.add_node("approve", self.approve)
        # a run never stores or marks what learned from an interaction forgotten meanwhile
        g.add_node("commit", guard_node(self.memory, self.commit))
        g.add_node("reject", guard_node(self.memory, self.reject))
        g.add_node("mark", guard_node(self.memory, self.mark))

        def stop_or(next_node: str) -> Any:
            return lambda s: END if s.get("verdict") == "skipped" else next_node

        g.add_edge(START, "collect")
        g.add_conditional_edges("collect", stop_or("self_edit"), ["self_edit", END])
        g.add_conditional_edges("self_edit", stop_or("train"), ["train", END])
        g.add_conditional_edges("train", stop_or("gate"), ["gate", END])
        approval = self.config.consolidation.require_approval

        def after_gate(s: _State) -> str:
            if not s["gate"].get("passed"):
                return "reject"
            return "approve" if approval else "commit"

        g.add_conditional_edges("gate", after_gate, ["approve", "commit", "reject"])
        g.add_edge("commit", "mark")
        g.add_edge("mark", END)
        g.add_edge("reject", END)
        return g.compile(checkpointer=checkpointer)


# ---------------------------------------------------------------------- entry points


def _checkpointer(memory: SealMemory) -> Any:
    """SqliteSaver on home/consolidation/checkpoints.sqlite3, or PostgresSaver on a
    Postgres journal's database (a run is resumed from any host)."""
    from seal_agent.coordination import checkpointer

    _root(memory).mkdir(parents=True, exist_ok=True)  # the run's other files live there on both
    return checkpointer(memory, _root(memory) / "checkpoints.sqlite3")


def _report(memory: SealMemory, graph: Any, run_id: str) -> ConsolidationReport:
    snap = graph.get_state({"configurable": {"thread_id": run_id}})
    s: _State = snap.values
    if snap.next and snap.interrupts:
        verdict, reason = "pending_approval", f"awaiting approval: seal-agent consolidate --approve {run_id}"
    else:
        verdict, reason = s.get("verdict", "skipped"), s.get("reason")
    return ConsolidationReport(
        run_id=run_id, verdict=verdict, reason=reason, version=s.get("version"), gate=s.get("gate"),
        counts=dict(s.get("counts", {})), timings=dict(s.get("timings", {})), train=s.get("train"),
        dry_run=bool(s.get("dry_run")),
        self_edits=[e["example"] for e in s.get("edits", [])] if s.get("dry_run") else [],
        too_long=list(s.get("too_long", [])),
        lineage=Lineage(memory.home, tuple(s["lineage"]) if s.get("lineage") is not None else None).name,
    )


def _active_file(memory: SealMemory) -> Path:
    return _root(memory) / "ACTIVE"


def pending_runs(memory: SealMemory) -> list[str]:
    """Runs started but not finished (killed midway, or awaiting approval)."""
    path = _active_file(memory)
    return [path.read_text().strip()] if path.exists() and path.read_text().strip() else []


# ------------------------------------------------------------------ run bookkeeping
#
# home/consolidation/status.json, written only under the consolidation lock:
#   runs: {run_id: {attempts, errors}} of the unfinished run (attempts are counted when a
#         run starts, so a process that dies mid-run counts too);
#   last, history: how the latest runs ended; consecutive_failures; last_success_at,
#         last_failure_at, last_commit_at, last_committed_version; abandoned: given-up runs.

STATUS_FORMAT_VERSION = 1
_KEEP = 20  # entries kept in history / abandoned
_KEEP_ERRORS = 5  # errors kept per unfinished run


def _status_path(memory: SealMemory) -> Path:
    return _root(memory) / "status.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _load_book(memory: SealMemory) -> dict[str, Any]:
    path = _status_path(memory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # a damaged record must not stop consolidation
        logger.warning("unreadable consolidation status %s (%s); starting a new record", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _save_book(memory: SealMemory, book: dict[str, Any]) -> None:
    book["format_version"] = STATUS_FORMAT_VERSION
    try:
        write_atomic(_status_path(memory), json.dumps(book, indent=1, default=str))
    except OSError:  # the record is for humans: failing to write it (disk full) must not fail the run
        logger.warning("could not write the consolidation status %s", _status_path(memory), exc_info=True)


def _run_entry(book: dict[str, Any], run_id: str) -> dict[str, Any]:
    runs = book.setdefault("runs", {})
    entry = runs.get(run_id)
    if not isinstance(entry, dict):
        entry = runs[run_id] = {"attempts": 0, "errors": []}
    return entry


def _finish(memory: SealMemory, book: dict[str, Any], run_id: str, outcome: str, *, reason: str | None = None,
            version: str | None = None, attempts: int | None = None) -> None:
    """Record how a run ended (``failed`` and ``abandoned`` count as failures)."""
    now = _now()
    last = {"run_id": run_id, "outcome": outcome, "reason": reason, "version": version, "at": now,
            "attempts": attempts}
    book["last"] = last
    book["history"] = [*book.get("history", []), last][-_KEEP:]
    if outcome in ("failed", "abandoned"):
        book["consecutive_failures"] = int(book.get("consecutive_failures", 0)) + 1
        book["last_failure_at"] = now
    else:
        book["consecutive_failures"] = 0
        if outcome != "pending_approval":
            book["last_success_at"] = now
        if outcome == "committed":
            book["last_commit_at"] = now
            book["last_committed_version"] = version
    _save_book(memory, book)


def _abandon(memory: SealMemory, graph: Any, book: dict[str, Any], run_id: str, reason: str) -> dict[str, Any]:
    """Give up on an unfinished run: the next call starts a fresh one. Nothing was marked
    consolidated (that happens only after commit), so its interactions stay ``new``."""
    entry = book.get("runs", {}).pop(run_id, None) or {}
    try:
        ids = list(graph.get_state({"configurable": {"thread_id": run_id}}).values.get("interaction_ids", []))
    except Exception:  # the checkpoint itself may be what is broken
        ids = []
    record = {"run_id": run_id, "attempts": entry.get("attempts", 0), "reason": reason, "at": _now(),
              "interactions": len(ids), "errors": entry.get("errors", [])}
    run_dir = _run_dir(memory, run_id)
    try:
        write_atomic(run_dir / "ABANDONED.json", json.dumps({**record, "interaction_ids": ids}, indent=1))
    except OSError:
        logger.warning("could not write %s", run_dir / "ABANDONED.json", exc_info=True)
    shutil.rmtree(run_dir / "candidate", ignore_errors=True)
    book["abandoned"] = [*book.get("abandoned", []), {k: v for k, v in record.items() if k != "errors"}][-_KEEP:]
    _active_file(memory).unlink(missing_ok=True)
    logger.warning("consolidation %s abandoned after %d attempts (%s); its %d interactions stay new and the "
                   "next consolidation starts a fresh run", run_id, record["attempts"], reason, len(ids))
    _finish(memory, book, run_id, "abandoned", reason=reason, attempts=record["attempts"])
    return record


def _failed_node(graph: Any, run_id: str) -> str | None:
    try:
        nxt = graph.get_state({"configurable": {"thread_id": run_id}}).next
    except Exception:
        return None
    return ",".join(nxt) or None


def consolidation_status(memory: SealMemory) -> dict[str, Any]:
    """How background consolidation is doing, from the record in ``home/consolidation``.

    Read from disk on every call, so any process (``seal-agent status``) sees what another
    one (the ``seal-agent schedule`` daemon) did. Never raises: a damaged record is
    reported under ``error``.

    Returns:
        ``last`` (``run_id``, ``outcome``: committed / rejected / skipped /
        pending_approval / failed / abandoned, ``reason``, ``version``, ``at``,
        ``attempts``; None before any run), ``consecutive_failures``,
        ``last_success_at`` (a run that ended without error), ``last_failure_at``,
        ``last_commit_at``, ``last_committed_version``, ``pending`` (the unfinished run,
        with ``attempts`` and ``last_error``), ``max_attempts``, ``abandoned`` (the
        latest given-up runs).
    """
    try:
        book = _load_book(memory)
        runs = book.get("runs", {}) if isinstance(book.get("runs"), dict) else {}
        pending = []
        for rid in pending_runs(memory):
            entry = runs.get(rid) or {}
            errors = entry.get("errors") or []
            pending.append({"run_id": rid, "attempts": int(entry.get("attempts", 0)),
                            "last_error": errors[-1]["error"] if errors else None})
        return {
            "last": book.get("last"),
            "consecutive_failures": int(book.get("consecutive_failures", 0)),
            "last_success_at": book.get("last_success_at"),
            "last_failure_at": book.get("last_failure_at"),
            "last_commit_at": book.get("last_commit_at"),
            "last_committed_version": book.get("last_committed_version"),
            "pending": pending,
            "max_attempts": memory.config.consolidation.max_attempts,
            "abandoned": list(book.get("abandoned", []))[-5:],
        }
    except Exception as exc:  # status must always answer
        logger.warning("could not read the consolidation status of %s", memory.home, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def consolidate(
    memory: SealMemory,
    *,
    config: SealConfig | None = None,
    dry_run: bool = False,
    teacher: BaseChatModel | None = None,
    cancel_event: threading.Event | None = None,
    progress: bool = True,
    resume: Any = None,
    run_id: str | None = None,
    namespace: Namespace | None = None,
) -> ConsolidationReport:
    """Run (or resume) consolidation on `memory`; see `SealMemory.consolidate`.

    Only one consolidation runs per memory home at a time, across processes: a second
    caller gets verdict "skipped" at once. An unfinished run (its process was killed,
    or it raised) is resumed from its last checkpoint before anything new starts, up to
    ``consolidation.max_attempts`` attempts in all; then it is abandoned (named in the
    report's ``abandoned``) and a fresh run starts. Every outcome is recorded for
    `consolidation_status`.

    With ``consolidation.adapter_scope = "namespace"`` each lineage with new
    interactions gets a run of its own, one after the other (only the lineage of
    `namespace`, when given). The report then sums them up: ``runs`` holds one report
    per lineage, ``verdict`` is "committed" if any lineage committed. A lineage whose
    run raises does not stop the others: its report in ``runs`` says ``failed`` (with
    the error), its run is retried first, as any unfinished run, while other lineages
    wait -- up to ``consolidation.max_attempts``, then abandoned -- and the other lineages
    are consolidated after it.

    Raises:
        ConsolidationError: A run raised; the message names the run, the node, the
            attempt and whether the run will be resumed or was abandoned (the original
            exception is its ``__cause__``). With several lineages: only when no
            lineage's run ended without error.
        NotFoundError: `run_id` is not a pending run.
    """
    config = config or memory.config
    # home/consolidation.lock, or an advisory lock on a Postgres journal (every host)
    lock = run_lock(memory, "consolidation")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        rid = run_id or "-"
        logger.info("another consolidation holds %s; skipping", memory.home)
        return ConsolidationReport(run_id=rid, verdict="skipped", reason="another consolidation is running")
    try:
        finish_pending(memory)  # drop an unfinished run that holds forgotten interactions
        kwargs = dict(config=config, dry_run=dry_run, teacher=teacher, cancel_event=cancel_event,
                      progress=progress, resume=resume, run_id=run_id)
        if config.consolidation.adapter_scope == "global":
            return _consolidate_one(memory, lineage=Lineage(memory.home), **kwargs)
        return _consolidate_lineages(memory, namespace, **kwargs)
    finally:
        try:
            finish_pending(memory)  # what a forget during the run left to it
        finally:
            lock.release()


def _waiting_lineages(memory: SealMemory, config: SealConfig) -> list[Lineage]:
    """Lineages with new interactions, the one waiting longest first."""
    order: dict[Lineage, None] = {}
    for it in memory.list(status=InteractionStatus.NEW):  # logging order
        order.setdefault(lineage_for(memory.home, it.namespace, config.consolidation), None)
    return list(order)


def _consolidate_lineages(memory: SealMemory, namespace: Namespace | None, **kwargs: Any) -> ConsolidationReport:
    """Namespace scope: one run per lineage with new interactions (an unfinished run first)."""
    config: SealConfig = kwargs["config"]
    only = lineage_for(memory.home, namespace, config.consolidation) if namespace is not None else None
    reports: list[ConsolidationReport] = []
    tried: set[str] = set()
    failures: list[ConsolidationError] = []
    failed_runs: dict[str, int] = {}
    cancel = kwargs.get("cancel_event")
    while not (cancel is not None and cancel.is_set()):
        waiting = [ln for ln in _waiting_lineages(memory, config)
                   if ln.name not in tried and (only is None or ln == only)]
        # After a failure the unfinished run is that failed one: retried only to let
        # other waiting lineages through, else left to the next call.
        if not waiting and (failures or not pending_runs(memory)):
            break
        target = waiting[0] if waiting else Lineage(memory.home)
        try:
            report = _consolidate_one(memory, lineage=target, **kwargs)
        except ConsolidationError as exc:
            # One tenant's failing run (a bad namespace, a broken adapter) must not keep
            # every other tenant from being consolidated: record it and go on.
            kwargs.update(resume=None, run_id=None)
            name = getattr(exc, "lineage", None) or target.name
            run = getattr(exc, "run_id", None) or "-"
            logger.error("consolidation of lineage %s failed: %s", name, exc)
            failures.append(exc)
            tried.add(name)
            reports.append(ConsolidationReport(run_id=run, verdict="failed", reason=str(exc), lineage=name))
            failed_runs[run] = failed_runs.get(run, 0) + 1
            if failed_runs[run] > config.consolidation.max_attempts:  # cannot happen; never loop forever
                break
            continue
        kwargs.update(resume=None, run_id=None)  # those concern the first (resumed) run only
        tried.add(report.lineage or target.name)
        reports.append(report)
        if report.verdict == "pending_approval" or (report.lineage is not None and report.lineage != target.name
                                                    and report.verdict == "skipped"):
            break
    if not reports:
        return ConsolidationReport(run_id="-", verdict="skipped", reason="nothing new to learn in any lineage",
                                   lineage=only.name if only else None)
    if failures and all(r.verdict == "failed" for r in reports):
        raise failures[0]  # nothing else ran: as with one lineage (the error names the run)
    if len(reports) == 1:
        return reports[0]
    committed = [r for r in reports if r.verdict == "committed"]
    first = committed[0] if committed else next(r for r in reports if r.verdict != "failed")
    summary = "; ".join(f"{r.lineage}: {r.verdict}" + (f" ({r.reason})" if r.reason else "") for r in reports)
    return ConsolidationReport(run_id=first.run_id, verdict=first.verdict, reason=summary, version=first.version,
                               lineage=first.lineage, runs=reports)


def _consolidate_one(
    memory: SealMemory,
    *,
    lineage: Lineage,
    config: SealConfig,
    dry_run: bool,
    teacher: BaseChatModel | None,
    cancel_event: threading.Event | None,
    progress: bool,
    resume: Any,
    run_id: str | None,
) -> ConsolidationReport:
    """One run, under the consolidation lock: resume the unfinished run, else start one
    for `lineage` (an unfinished run keeps the lineage it started with)."""
    run = _Run(memory, config, teacher=teacher, cancel_event=cancel_event, progress=progress)
    checkpointer = _checkpointer(memory)
    try:
        graph = run.build(checkpointer)
        active = pending_runs(memory)
        if run_id is not None and run_id not in active:
            raise NotFoundError("pending consolidation run", run_id)
        inp: Any = None
        rid = active[0] if active else f"run-{new_interaction_id()}"
        snap = graph.get_state({"configurable": {"thread_id": rid}}) if active else None
        if snap is not None and snap.interrupts and resume is None:
            return _report(memory, graph, rid)  # still waiting for a human
        book = _load_book(memory)
        max_attempts = config.consolidation.max_attempts
        abandoned: list[dict[str, Any]] = []
        unfinished = snap is not None and (bool(snap.next) or not snap.values)
        tried = int(_run_entry(book, rid).get("attempts", 0)) if unfinished else 0
        if unfinished and resume is None and tried >= max_attempts:
            errors = _run_entry(book, rid).get("errors") or []
            why = (f"failed {tried} times; last: {errors[-1]['error']}" if errors else
                   f"interrupted {tried} times (the process running it stopped: killed, out of memory?)")
            abandoned.append(_abandon(memory, graph, book, rid, why))
            rid, snap = f"run-{new_interaction_id()}", None
        if snap is not None and snap.next:
            logger.info("resuming unfinished consolidation %s at %s", rid, list(snap.next))
            inp = Command(resume=resume) if snap.interrupts else None
        else:
            if snap is not None and snap.values:  # it finished; only the ACTIVE marker was left
                rid = f"run-{new_interaction_id()}"
            # Killed before its first checkpoint, or a new run: start from the top.
            _active_file(memory).write_text(rid)
            inp = {"run_id": rid, "dry_run": dry_run, "counts": {}, "timings": {},
                   "lineage": list(lineage.namespace) if lineage.namespace is not None else None}
        book["runs"] = {k: v for k, v in book.get("runs", {}).items() if k == rid}  # drop stale entries
        entry = _run_entry(book, rid)
        entry["attempts"] = attempt = int(entry.get("attempts", 0)) + 1
        _save_book(memory, book)  # before running: a process that dies mid-run still used an attempt
        try:
            # "sync": a node's checkpoint is on disk before the next node starts, so a
            # kill -9 loses at most the node that was running (LangGraph's default,
            # "async", may also lose the one before: a finished training, say).
            graph.invoke(inp, {"configurable": {"thread_id": rid}}, durability="sync")
            report = _report(memory, graph, rid)
        except Exception as exc:
            error = _failed(memory, graph, book, rid, attempt, max_attempts, exc)
            # which lineage's run failed (a resumed run keeps its own): for the report of
            # a consolidation over all lineages, which goes on with the others
            ns = inp["lineage"] if isinstance(inp, dict) else (snap.values.get("lineage") if snap else None)
            error.lineage = Lineage(memory.home, tuple(ns) if ns is not None else None).name  # type: ignore[attr-defined]
            error.run_id = rid  # type: ignore[attr-defined]
            raise error from exc
        report.abandoned = abandoned
        if report.verdict != "pending_approval":
            _active_file(memory).unlink(missing_ok=True)
            book.get("runs", {}).pop(rid, None)
        _finish(memory, book, rid, report.verdict, reason=report.reason, version=report.version,
                attempts=attempt)
        logger.info("consolidation %s: %s%s", rid, report.verdict,
                    f" ({report.reason})" if report.reason else f" -> {report.version}")
        return report
    finally:
        checkpointer.conn.close()


def _failed(memory: SealMemory, graph: Any, book: dict[str, Any], run_id: str, attempt: int, max_attempts: int,
            exc: Exception) -> ConsolidationError:
    """Record a run that raised; abandon it when it has used its attempts. Returns the error to raise."""
    node = _failed_node(graph, run_id)
    where = f" in {node}" if node else ""
    error = f"{type(exc).__name__}: {exc}"[:2000]
    entry = _run_entry(book, run_id)
    entry["errors"] = [*entry.get("errors", []), {"at": _now(), "node": node, "error": error}][-_KEEP_ERRORS:]
    if attempt >= max_attempts:
        _abandon(memory, graph, book, run_id, f"failed {attempt} times; last{where}: {error}")
        then = ("abandoned: its interactions stay new and the next consolidation starts a fresh run; "
                "see seal-agent status")
    else:
        _finish(memory, book, run_id, "failed", reason=f"{error} (at {node})" if node else error, attempts=attempt)
        then = "the next consolidation resumes it"
    message = f"consolidation {run_id} failed{where} (attempt {attempt} of {max_attempts}): {error}; {then}"
    if attempt < max_attempts:  # `_abandon` has said so already otherwise
        logger.warning("%s", message)
    return ConsolidationError(message)


def approve(memory: SealMemory, run_id: str, *, approve: bool = True, progress: bool = True) -> ConsolidationReport:
    """Resume a run paused for approval: commit it (``approve=True``) or reject it."""
    if run_id not in pending_runs(memory):
        raise NotFoundError("consolidation run awaiting approval", run_id)
    return consolidate(memory, resume="approve" if approve else "rejected by a human", run_id=run_id,
                       progress=progress)

