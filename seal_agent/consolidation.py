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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from filelock import FileLock, Timeout
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from seal_agent._fs import write_atomic
from seal_agent.config import SealConfig
from seal_agent.errors import NotFoundError, TrainingCancelled
from seal_agent.memory.records import InteractionStatus, new_interaction_id, parse_namespace

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from seal_agent.seal_memory import SealMemory

__all__ = ["CONSOLIDATION_FORMAT_VERSION", "ConsolidationReport", "approve", "consolidate", "pending_runs"]

logger = logging.getLogger(__name__)

CONSOLIDATION_FORMAT_VERSION = 1

Verdict = Literal["committed", "rejected", "skipped", "pending_approval"]


@dataclass
class ConsolidationReport:
    """What one consolidation run did.

    Attributes:
        run_id: Id of the run (its checkpoint thread; pass it to `approve`).
        verdict: ``committed`` (a new CURRENT), ``rejected`` (the gate said no; the
            candidate is kept as a staged version), ``skipped`` (nothing to do, dry
            run, cancelled, or another run holds the home), ``pending_approval``.
        reason: Why, for anything but ``committed``.
        version: The committed or staged adapter version.
        gate: The gate report (dict), when the gate ran.
        counts: interactions, excluded, self_edits, probes, replay, dropped_<reason>.
        timings: Seconds per stage.
        train: Training metrics (steps, final loss, tokens/s, ...).
        dry_run: Whether this was a dry run (self-edits only).
        self_edits: The training examples written (dry runs only, for inspection).
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

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": CONSOLIDATION_FORMAT_VERSION, **dataclasses.asdict(self)}


class _State(TypedDict, total=False):
    run_id: str
    dry_run: bool
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


# ------------------------------------------------------------------------- paths


def _root(memory: SealMemory) -> Path:
    return memory.home / "consolidation"


def _run_dir(memory: SealMemory, run_id: str) -> Path:
    return _root(memory) / "runs" / run_id


def _merge(state: _State, key: str, values: dict[str, Any]) -> dict[str, Any]:
    return {**state.get(key, {}), **values}  # type: ignore[misc]


# -------------------------------------------------------------------- replay buffer


def _replay_path(memory: SealMemory) -> Path:
    return _root(memory) / "replay.json"


def load_replay(memory: SealMemory) -> list[dict[str, Any]]:
    """Training examples of committed runs, kept for replay (oldest first)."""
    path = _replay_path(memory)
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [item["example"] for item in data.get("items", [])]


def _extend_replay(memory: SealMemory, edits: list[dict[str, Any]], run_id: str, cap: int) -> None:
    path = _replay_path(memory)
    items = json.loads(path.read_text(encoding="utf-8"))["items"] if path.exists() else []
    seen = {i["hash"] for i in items}
    items += [{"example": e["example"], "hash": e["hash"], "run_id": run_id} for e in edits if e["hash"] not in seen]
    items = items[-cap:] if cap else []
    write_atomic(path, json.dumps({"format_version": CONSOLIDATION_FORMAT_VERSION, "items": items}))


# ------------------------------------------------------------------------- the run


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
        """A fresh copy of the base model for training and the gate (never the served one)."""
        if self._base is None:
            from seal_agent.model import load_model

            mc = self.config.model
            self._base = load_model(mc.name_or_path, device=mc.device, dtype=mc.dtype, seed=mc.seed)
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

    # -- nodes ---------------------------------------------------------------

    def collect(self, state: _State) -> dict[str, Any]:
        t0 = time.perf_counter()
        cc = self.config.consolidation
        new = self.memory.list(status=InteractionStatus.NEW, limit=cc.max_interactions)
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
        if teacher is None and self.config.consolidation.teacher == "served":
            teacher = self.memory.chat_model()
        batch = generate_self_edits(interactions, teacher, self.config.selfedit,
                                    progress=self.progress, cancel_event=self.cancel_event)
        run_dir = _run_dir(self.memory, state["run_id"])
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "selfedits.json").write_text(json.dumps(batch.to_dict(), indent=1), encoding="utf-8")
        edits = [{"example": e.example, "hash": e.hash, "strategy": e.strategy, "interaction_id": e.interaction_id}
                 for e in batch.edits]
        probes = [dataclasses.asdict(p) for p in batch.probes]
        counts = {"self_edits": len(edits), "probes": len(probes),
                  **{f"dropped_{k}": v for k, v in batch.dropped.items()}}
        out: dict[str, Any] = {
            "edits": edits, "probes": probes,
            "counts": _merge(state, "counts", counts),
            "timings": _merge(state, "timings", {"self_edit": time.perf_counter() - t0}),
        }
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
        parent = self.memory.adapters.current
        init = self.memory.adapters.get(parent).path if parent else None
        replay = load_replay(self.memory)
        out_dir = _run_dir(self.memory, state["run_id"]) / "candidate"
        shutil.rmtree(out_dir, ignore_errors=True)  # a resumed run retrains from scratch
        try:
            rehearsal = self._rehearsal()
            result = train_adapter(model, tokenizer, [e["example"] for e in state["edits"]], self.config.train,
                                   init_adapter=init, replay=replay, rehearsal=rehearsal, output_dir=out_dir,
                                   cancel_event=self.cancel_event, progress=self.progress)
        except TrainingCancelled:
            return {"verdict": "skipped", "reason": "cancelled"}
        metrics = {
            "steps": result.steps,
            # Mean loss over the first and the last epoch: comparable, unlike two single batches.
            "first_loss": result.epoch_losses[0] if result.epoch_losses else None,
            "final_loss": result.epoch_losses[-1] if result.epoch_losses else None,
            "epoch_losses": list(result.epoch_losses), "rehearsal_examples": result.rehearsal_examples,
            "tokens_seen": result.tokens_seen, "tokens_per_second": result.tokens_per_second,
            "seconds": result.seconds, "stopped_reason": result.stopped_reason,
            "examples": result.examples, "replay_examples": result.replay_examples,
            "peak_memory_bytes": result.peak_memory_bytes,
        }
        return {
            "candidate_dir": str(result.adapter_path), "parent": parent, "train": metrics,
            "counts": _merge(state, "counts", {"replay": result.replay_examples}),
            "timings": _merge(state, "timings", {"train": time.perf_counter() - t0}),
        }

    def gate(self, state: _State) -> dict[str, Any]:
        from seal_agent.gate import Gate
        from seal_agent.selfedit import Probe

        t0 = time.perf_counter()
        model, tokenizer = self.base_model()
        parent = state.get("parent")
        current_dir = self.memory.adapters.get(parent).path if parent else None
        probes = [Probe(**{**p, "namespace": tuple(p["namespace"])}) for p in state.get("probes", [])]
        report = Gate(self.memory, self.config.gate).evaluate(
            model, tokenizer, Path(state["candidate_dir"]), current_dir, probes,
            _run_dir(self.memory, state["run_id"]) / "gate", cancel_event=self.cancel_event, progress=self.progress,
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

    def _own_version(self, run_id: str, verdict: str) -> str | None:
        """The version this run already stored (a resumed run must not store twice)."""
        for v in self.memory.adapters.list():
            if v.manifest.get("lineage", {}).get("run_id") == run_id and v.verdict == verdict:
                return v.version
        return None

    def commit(self, state: _State) -> dict[str, Any]:
        t0 = time.perf_counter()
        version = self._own_version(state["run_id"], "committed")
        if version is None:
            adapter_dir = state.get("gate_adapter_dir") or state["candidate_dir"]
            scaled = adapter_dir != state["candidate_dir"]  # keep the full candidate staged, for inspection
            version = self.memory.adapters.commit(adapter_dir, self._manifest(state, state.get("scale", 1.0)),
                                                  full_candidate=state["candidate_dir"] if scaled else None)
        _extend_replay(self.memory, state["edits"], state["run_id"], self.config.consolidation.replay_buffer_size)
        self._save_gate_report(state, version, committed=True)
        self._update_suite(state)
        return {"verdict": "committed", "version": version, "reason": None,
                "timings": _merge(state, "timings", {"commit": time.perf_counter() - t0})}

    def reject(self, state: _State) -> dict[str, Any]:
        version = self._own_version(state["run_id"], "rejected")
        if version is None:
            manifest = self._manifest(state, 1.0)
            version = self.memory.adapters.stage(state["candidate_dir"], {**manifest, "verdict": "rejected"})
        self._save_gate_report(state, version)
        reasons = (state.get("gate") or {}).get("reasons") or []
        return {"verdict": "rejected", "version": version,
                "reason": state.get("reason") or "; ".join(reasons) or "rejected by the gate"}

    def mark(self, state: _State) -> dict[str, Any]:
        # Only ever after commit: CURRENT already names the adapter that learned these.
        self.memory.mark(state["interaction_ids"], InteractionStatus.CONSOLIDATED, version=state["version"])
        shutil.rmtree(_run_dir(self.memory, state["run_id"]) / "candidate", ignore_errors=True)
        return {}

    def _save_gate_report(self, state: _State, version: str, *, committed: bool = False) -> None:
        src = _run_dir(self.memory, state["run_id"]) / "gate"
        dest = self.memory.home / "gate" / "reports" / version
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
        from seal_agent.gate import Gate

        interactions = [self.memory.get(i) for i in state["interaction_ids"]]
        Gate(self.memory, self.config.gate).update_suite(interactions, report=state.get("gate"))

    # -- graph ---------------------------------------------------------------

    def build(self, checkpointer: Any) -> Any:
        g = StateGraph(_State)
        g.add_node("collect", self.collect)
        g.add_node("self_edit", self.self_edit)
        g.add_node("train", self.train)
        g.add_node("gate", self.gate)
        g.add_node("approve", self.approve)
        g.add_node("commit", self.commit)
        g.add_node("reject", self.reject)
        g.add_node("mark", self.mark)

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
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    _root(memory).mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(_root(memory) / "checkpoints.sqlite3", check_same_thread=False)
    return SqliteSaver(conn)


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
    )


def _active_file(memory: SealMemory) -> Path:
    return _root(memory) / "ACTIVE"


def pending_runs(memory: SealMemory) -> list[str]:
    """Runs started but not finished (killed midway, or awaiting approval)."""
    path = _active_file(memory)
    return [path.read_text().strip()] if path.exists() and path.read_text().strip() else []


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
) -> ConsolidationReport:
    """Run (or resume) one consolidation on `memory`; see `SealMemory.consolidate`.

    Only one consolidation runs per memory home at a time, across processes: a second
    caller gets verdict "skipped" at once. An unfinished run (its process was killed)
    is resumed from its last checkpoint before anything new starts.
    """
    config = config or memory.config
    lock = FileLock(str(memory.home / "consolidation.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        rid = run_id or "-"
        logger.info("another consolidation holds %s; skipping", memory.home)
        return ConsolidationReport(run_id=rid, verdict="skipped", reason="another consolidation is running")
    try:
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
            if snap is not None and snap.next:
                logger.info("resuming unfinished consolidation %s at %s", rid, list(snap.next))
                inp = Command(resume=resume) if snap.interrupts else None
            else:
                if snap is not None and snap.values:  # it finished; only the ACTIVE marker was left
                    rid = f"run-{new_interaction_id()}"
                # Killed before its first checkpoint, or a new run: start from the top.
                _active_file(memory).write_text(rid)
                inp = {"run_id": rid, "dry_run": dry_run, "counts": {}, "timings": {}}
            graph.invoke(inp, {"configurable": {"thread_id": rid}})
            report = _report(memory, graph, rid)
            if report.verdict != "pending_approval":
                _active_file(memory).unlink(missing_ok=True)
            logger.info("consolidation %s: %s%s", rid, report.verdict,
                        f" ({report.reason})" if report.reason else f" -> {report.version}")
            return report
        finally:
            checkpointer.conn.close()
    finally:
        lock.release()


def approve(memory: SealMemory, run_id: str, *, approve: bool = True, progress: bool = True) -> ConsolidationReport:
    """Resume a run paused for approval: commit it (``approve=True``) or reject it."""
    if run_id not in pending_runs(memory):
        raise NotFoundError("consolidation run awaiting approval", run_id)
    return consolidate(memory, resume="approve" if approve else "rejected by a human", run_id=run_id,
                       progress=progress)

