"""Forget: everything that holds a forgotten interaction, in one place.

`SealMemory.forget` delegates here. An interaction's text, once logged, is copied into
many places of the memory home; each is listed below with what forget does to it:

* **journal** (``journal.sqlite3``): the rows are deleted (their ids and namespace stay in
  the ``forgotten`` table, no content: the index and the lineage checks need them). The
  journal writes with ``secure_delete`` (deleted cells are zeroed), then `Journal.scrub`
  runs ``VACUUM`` (free space left by older updates) and truncates the write-ahead log.
* **Chroma**: deleted synchronously and *verified* (``collection.get(ids)`` is empty).
  An embedded index (``home/chroma/chroma.sqlite3``) keeps documents in more places than
  its records: its write-ahead log table ``embeddings_queue`` (every upsert, with the
  document, kept until Chroma purges it -- in chromadb 1.5 that is only after ~1,000 more
  writes), the FTS5 shadow tables of its full-text index (deleted rows' trigrams stay in
  old segments until a merge) and free pages. `scrub_chroma_files` deletes the forgotten
  ids' upsert entries from the log (their delete entries stay, so a replay still
  deletes), merges the FTS index (``'optimize'``) and runs ``VACUUM``. Only the process
  that owns the embedded index may open it (`seal_agent.memory.owner`); elsewhere the
  owner's indexing worker deletes the records within ``memory.poll_interval_s`` and
  scrubs the files after it, and the report says so (``pending``).
* **the middleware's caches**: keyed on `Journal.revision`, which the deletion changes:
  nothing to do here.
* **every adapter lineage** (`seal_agent.lineage.all_lineages`): an adapter version whose
  manifest lists a forgotten interaction learned it, and so did every version trained
  from it (its descendants), and every later version of the lineage that replayed
  training examples while the tainted run's examples were in the replay buffer. All of
  them -- committed, staged, rejected, scaled-back full candidates -- are deleted from
  disk, and CURRENT goes back to the newest committed ancestor that never saw forgotten
  data, or is removed (the base model serves) -- before `forget` returns
  (``consolidation.forget_weights = "rollback"``). A namespace lineage whose namespace is
  forgotten is deleted whole. Interactions of other users that the deleted versions had
  learned are set back to ``new``: the next consolidation learns them again, without the
  forgotten data, through the gate.
* per lineage, the **replay buffer** (examples of the tainted runs, or quoting forgotten
  text), the **gate suite** (past tasks of forgotten interactions), **gate reports**
  (deleted with their version; a kept version's report, in its folder and in its
  manifest, loses the rows that quote forgotten interactions).
* **consolidation runs** (``home/consolidation``): run folders (self-edit sets, gate
  outputs, candidates) and LangGraph checkpoint threads that mention a forgotten
  interaction are deleted, then ``checkpoints.sqlite3`` is vacuumed.

A consolidation may be running meanwhile (in this process or another). `forget` never
touches the files of a run in progress; instead:

* a lock (``home/forget.lock``) makes a forget and a run's commit exclusive, and the run
  checks under it, just before it commits, rejects or marks (`guard_node`), whether any
  of its interactions were forgotten: then it drops itself -- nothing is stored or
  marked, its other interactions stay ``new`` -- so nothing learned from forgotten data
  is ever committed, whichever comes first;
* ``home/consolidation/FORGET_PENDING`` asks the consolidation to finish the purge when
  the run ends (`finish_pending`, also called when a consolidation starts, which drops
  an unfinished -- e.g. killed -- run that holds a forgotten interaction instead of
  resuming it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from seal_agent._fs import write_atomic
from seal_agent.errors import SealAgentError
from seal_agent.lineage import Lineage, all_lineages, lineage_for
from seal_agent.memory.records import Interaction, Namespace

if TYPE_CHECKING:
    from seal_agent.registry import AdapterRegistry, AdapterVersion
    from seal_agent.seal_memory import SealMemory

__all__ = ["ForgetReport", "close_and_scrub", "finish_pending", "forget_interactions", "guard_node",
           "scrub_chroma_files", "zero_hnsw_slack"]

logger = logging.getLogger(__name__)

FORGET_REPORT_FORMAT_VERSION = 1
_LOCK_NAME = "forget.lock"
_PENDING_NAME = "FORGET_PENDING"
_LOCK_TIMEOUT_S = 600.0  # a commit holds the lock for seconds; a forget for as long as its purge
_MIN_NEEDLE = 8  # shorter message texts ("ok", "thanks") are not searched for
_ID_RE = re.compile(rb"(?<![0-9a-f])[0-9a-f]{24}(?![0-9a-f])")  # `new_interaction_id`: 24 hex digits
_SKIP_SCAN = (".safetensors", ".bin", ".pickle", ".png", ".lock")  # weights, vectors, plots: no text
# SQLite's files: a database (the journal, checkpoints, the scheduler's jobs, Chroma's), its
# write-ahead log, shared-memory index and rollback journal. Never read with Python's file
# I/O (see `_database_holds`).
_SQLITE_FILE = re.compile(r"\.(?:sqlite3?|db)(?P<companion>-wal|-shm|-journal)?$")
_SCAN_COPY = ".forget-scan-"  # prefix of the consistent copies `_database_holds` searches
_STALE_COPY_S = 3600.0  # such a copy this old was left by a killed forget
_SQLITE_NOTADB = 26  # SQLite's "file is not a database"


@dataclass
class ForgetReport:
    """What one `SealMemory.forget` removed, where, and what is left to do.

    Attributes:
        ids: The interactions forgotten by this call.
        journal_rows: Rows deleted from the journal (``len(ids)``).
        facts: Distilled facts whose source was forgotten, deleted (`seal_agent.memory.facts`).
        chroma_deleted: Chroma records deleted and verified gone (this call's, plus any
            an earlier forget left pending).
        chroma_pending: Records left to the process that owns the embedded index (or to
            the worker's retries when Chroma is down); see ``pending``.
        replay_items: Training examples removed from replay buffers.
        suite_items: Past tasks removed from gate replay suites.
        self_edit_sets: ``selfedits.json`` files deleted (with their run folders).
        run_folders: Consolidation run folders deleted.
        runs_dropped: Unfinished consolidation runs dropped (never resumed).
        checkpoint_threads: LangGraph checkpoint threads deleted.
        gate_reports: Gate reports deleted (with their version) or stripped of the rows
            that quoted forgotten interactions.
        adapters_deleted: Adapter versions deleted, as ``"<lineage>/<version>"``.
        rolled_back: Lineages whose CURRENT moved: lineage -> what CURRENT names now
            (None: removed, the base model serves).
        lineages_deleted: Namespace lineages deleted whole.
        requeued: Other interactions set back to ``new`` because the versions that had
            learned them were deleted (the next consolidation learns them again).
        serving: Every lineage -> the version served now (None: the base model).
        pending: What could not be done yet, who completes it and when; empty when
            everything is done.
        residual: Files under the home that still contain the forgotten text (searched
            as bytes, weights and vector files excepted); empty when the purge is complete.
        retrained: With ``consolidation.forget_weights = "retrain"``: the consolidation
            run at once on the requeued interactions (``verdict``, ``version``,
            ``reason``, ``lineage`` per run); None otherwise.
    """

    ids: list[str] = field(default_factory=list)
    journal_rows: int = 0
    facts: int = 0
    chroma_deleted: int = 0
    chroma_pending: int = 0
    replay_items: int = 0
    suite_items: int = 0
    self_edit_sets: int = 0
    run_folders: int = 0
    runs_dropped: list[str] = field(default_factory=list)
    checkpoint_threads: int = 0
    gate_reports: int = 0
    adapters_deleted: list[str] = field(default_factory=list)
    rolled_back: dict[str, str | None] = field(default_factory=dict)
    lineages_deleted: list[str] = field(default_factory=list)
    requeued: int = 0
    serving: dict[str, str | None] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    residual: list[str] = field(default_factory=list)
    retrained: list[dict[str, Any]] | None = None

    @property
    def forgotten(self) -> int:
        """How many interactions were forgotten (what `forget` returned before it returned a report)."""
        return self.journal_rows

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORGET_REPORT_FORMAT_VERSION, **asdict(self)}

    def summary(self) -> str:
        """A few lines for people (``seal-agent memories forget``)."""
        served = ", ".join(f"{k}: {v or 'base model'}" for k, v in self.serving.items()) or "base model"
        lines = [
            f"forgot {self.journal_rows} interactions" + (f" ({self.facts} facts distilled from them)"
                                                           if self.facts else ""),
            f"  chroma: {self.chroma_deleted} deleted (verified)"
            + (f", {self.chroma_pending} pending" if self.chroma_pending else ""),
            f"  replay items: {self.replay_items}, gate suite items: {self.suite_items}, gate reports: "
            f"{self.gate_reports}",
            f"  consolidation: {self.run_folders} run folders ({self.self_edit_sets} self-edit sets), "
            f"{self.checkpoint_threads} checkpoint threads, {len(self.runs_dropped)} unfinished runs dropped",
            f"  adapters deleted: {', '.join(self.adapters_deleted) or 'none'}"
            + ("; rolled back: " + ", ".join(f"{k} -> {v or 'base model'}" for k, v in self.rolled_back.items())
               if self.rolled_back else "")
            + (f"; lineages deleted: {', '.join(self.lineages_deleted)}" if self.lineages_deleted else ""),
            f"  requeued for consolidation: {self.requeued}; serving: {served}",
        ]
        for run in self.retrained or []:
            lines.append(f"  retrained {run['lineage']}: {run['verdict']}"
                         + (f" -> {run['version']}" if run.get("version") else "")
                         + (f" ({run['reason']})" if run.get("reason") and run["verdict"] != "committed" else ""))
        lines += [f"  pending: {p}" for p in self.pending]
        lines += [f"  STILL CONTAINS FORGOTTEN TEXT: {p}" for p in self.residual]
        return "\n".join(lines)


# ------------------------------------------------------------------------- matching


class _Matcher:
    """Does a blob mention a forgotten interaction: its id, or (when known) its text?

    Ids are found with one regex pass (every interaction id is 24 hex digits) and looked
    up in the set, so the cost is the blob's size whatever the number of forgotten ids.
    The texts are the forgotten messages (and task/outcome) of this call, searched raw and
    as JSON escapes them (ASCII-escaped or not); shorter than 8 characters they are not
    searched for (they would match everywhere).
    """

    def __init__(self, ids: Collection[str], interactions: Iterable[Interaction] = ()) -> None:
        self.ids = {i.encode() for i in ids}
        texts: set[str] = set()
        for it in interactions:
            for m in it.messages:
                content = m.get("content")
                if isinstance(content, str):
                    texts.add(content.strip())
            texts.update((it.task.strip(), it.outcome.strip()))
        needles: set[bytes] = set()
        for t in texts:
            if len(t) < _MIN_NEEDLE:
                continue
            needles.add(t.encode("utf-8", "surrogatepass"))
            needles.add(json.dumps(t)[1:-1].encode())
            needles.add(json.dumps(t, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass"))
        self.needles = sorted(needles, key=len)
        self.has_text = bool(self.needles)

    def text_in(self, blob: bytes) -> bool:
        return any(n in blob for n in self.needles)

    def __call__(self, blob: bytes) -> bool:
        if self.ids and any(m.group(0) in self.ids for m in _ID_RE.finditer(blob)):
            return True
        return self.text_in(blob)

    def obj(self, value: Any) -> bool:
        return self(json.dumps(value, default=str).encode())


def _redact(value: Any, hit: _Matcher) -> Any:
    """`value` (parsed JSON) without what mentions a forgotten interaction: a list loses
    the objects (report rows, items) that do, a string that does becomes "[forgotten]"."""
    if isinstance(value, list):
        return [_redact(x, hit) for x in value if not (isinstance(x, dict) and hit.obj(x))]
    if isinstance(value, dict):
        return {k: _redact(v, hit) for k, v in value.items()}
    if isinstance(value, str) and hit.obj(value):
        return "[forgotten]"
    return value


# --------------------------------------------------------------------------- locks


def _run_lock(memory: SealMemory, name: str) -> Any:
    """The lock `name` of the memory: ``home/<name>.lock``, or an advisory lock on a
    Postgres journal's database (`seal_agent.coordination.run_lock`) when there is one."""
    try:
        from seal_agent.coordination import run_lock
    except ImportError:  # a tree without cross-host coordination: the home's file lock
        return FileLock(str(memory.home / f"{name}.lock"))
    return run_lock(memory, name)


@contextmanager
def _forget_lock(memory: SealMemory) -> Iterator[None]:
    """Held by a forget for its whole purge, and by a consolidation's commit/reject/mark
    (``home/forget.lock``). Waits for the holder (a commit holds it for seconds)."""
    lock = _run_lock(memory, _LOCK_NAME.removesuffix(".lock"))
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except Timeout:
            if time.monotonic() > deadline:
                raise SealAgentError(f"{memory.home}: the forget lock was held for more than {_LOCK_TIMEOUT_S:.0f} s "
                                     "by another forget or a consolidation's commit; retry") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


def _pending_marker(home: Path) -> Path:
    return home / "consolidation" / _PENDING_NAME


def _ask_consolidation_to_finish(home: Path, reason: str) -> None:
    from seal_agent.consolidation import _now

    write_atomic(_pending_marker(home), json.dumps({"format_version": 1, "at": _now(), "reason": reason}))


# ------------------------------------------------------------------------ the entry


def forget_interactions(memory: SealMemory, *, namespace: Namespace | None,
                        ids: Sequence[str] | None) -> ForgetReport:
    """Forget interactions everywhere (see the module docstring); `SealMemory.forget`'s body.

    Args:
        memory: The open, writable memory.
        namespace: Forget this namespace (exactly; not its sub-namespaces) ...
        ids: ... or these ids; both: their intersection. Validated by the caller.

    Returns:
        The `ForgetReport`.
    """
    journal = memory._journal
    home = memory.home
    report = ForgetReport()
    if ids is not None:
        rows = [it for it in journal.get_many(list(ids)).values()
                if namespace is None or tuple(it.namespace) == tuple(namespace)]
    else:
        rows = journal.list(namespace=namespace)
    with _forget_lock(memory):
        # Under the lock: a consolidation's commit either happened before (its version is
        # found below and deleted) or checks the journal after (and drops itself).
        gone = journal.forget(namespace=namespace, ids=list(ids) if ids is not None else None)
        report.ids = list(gone)
        report.journal_rows = len(gone)
        if gone and getattr(memory, "_facts", None) is not None:
            from seal_agent.memory.facts import forget_facts

            report.facts = len(forget_facts(memory, gone))  # distilled from them: table, history, Chroma
        gone_set = set(gone)
        hit = _Matcher(journal.forgotten_ids(), [it for it in rows if it.id in gone_set])
        if gone or _pending_marker(home).exists():
            _purge_lineages(memory, hit, namespace, report)
            _purge_consolidation(memory, hit, report, holding_run_lock=False)
            problem = journal.scrub()
            if problem:
                report.pending.append(f"journal: {problem}; the next forget retries")
        _serving(memory, report)
    chroma_residual: list[str] = []
    _purge_chroma(memory, report, hit, chroma_residual)
    if hit.has_text:
        report.residual = _residual(home, hit, chroma_residual, report.pending)
        for path in report.residual:
            logger.warning("forget: %s still contains forgotten text", path)
    logger.info("forget: %d interactions; %d adapter versions deleted; pending: %s", report.journal_rows,
                len(report.adapters_deleted), "; ".join(report.pending) or "nothing")
    return report


def finish_pending(memory: SealMemory) -> ForgetReport | None:
    """What a consolidation calls when it starts and when it ends (it holds its lock).

    Drops the unfinished run if it holds a forgotten interaction (a run killed, or
    interrupted, after a forget: resuming it would train on what was forgotten), and
    completes the purge a forget left to the consolidation (``FORGET_PENDING``: files
    of the run that was in progress then). Cheap when there is nothing to do.

    Returns:
        The report of what it removed, or None when there was nothing to do (or it
        failed: logged, never raised -- the run's own guards still keep forgotten data
        out of every commit, and the next call tries again).
    """
    try:
        return _finish_pending(memory)
    except Exception:
        logger.error("forget: could not finish the purge a forget left to the consolidation", exc_info=True)
        return None


def _finish_pending(memory: SealMemory) -> ForgetReport | None:
    from seal_agent.consolidation import pending_runs

    home = memory.home
    marker = _pending_marker(home)
    active = pending_runs(memory)
    if not marker.exists() and not active:
        return None
    journal = memory._journal
    with _forget_lock(memory):
        forgotten = journal.forgotten_ids()
        if not forgotten:
            marker.unlink(missing_ok=True)
            return None
        hit = _Matcher(forgotten)
        if not marker.exists() and not any(_run_mentions(memory, rid, hit) for rid in active):
            return None
        report = ForgetReport()
        _purge_lineages(memory, hit, None, report)
        _purge_consolidation(memory, hit, report, holding_run_lock=True)
        _serving(memory, report)
        if not report.pending:
            marker.unlink(missing_ok=True)
    logger.info("forget: finished by the consolidation: %s", report.summary().replace("\n", ";"))
    return report


@contextlib.contextmanager
def forgotten_guard(memory: SealMemory, ids: Sequence[str]) -> Iterator[list[str]]:
    """For a run that is about to store what it learned from `ids` (the writer's commit):
    under the forget lock, yields those of `ids` forgotten meanwhile. The caller stores
    nothing when the list is not empty; a forget cannot slip in while the block runs."""
    with _forget_lock(memory):
        yield memory._journal.forgotten_among(list(ids))


def guard_node(memory: SealMemory, node: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """Wrap a consolidation node that stores or marks (commit, reject, mark).

    The node runs under the forget lock, after checking that none of the run's
    interactions was forgotten. If some were, it does nothing and the run ends
    ``skipped`` ("dropped"): no version is stored, nothing is marked, the run's other
    interactions stay ``new`` and the next consolidation collects them again. The run's
    files are purged when it ends (`finish_pending`).
    """
    name = getattr(node, "__name__", "node")

    def guarded(state: Any) -> dict[str, Any]:
        if name == "mark" and state.get("verdict") != "committed":
            return {}  # an earlier guard dropped the run
        with _forget_lock(memory):
            ids = list(state.get("interaction_ids") or [])
            gone = memory._journal.forgotten_among(ids)
            if not gone:
                return node(state)
            _ask_consolidation_to_finish(memory.home, f"run {state.get('run_id')} dropped")
        logger.warning("consolidation %s: %d of its %d interactions were forgotten during the run; dropping it "
                       "before %s (nothing is committed; the others stay new)", state.get("run_id"), len(gone),
                       len(ids), name)
        return {"verdict": "skipped", "version": None,
                "reason": f"dropped: {len(gone)} of its {len(ids)} interactions were forgotten during the run "
                          "(nothing committed; the others stay new for the next run)"}

    guarded.__name__ = name
    return guarded


# ----------------------------------------------------------------------- lineages


def _number(version: str) -> int:
    try:
        return int(version.split("-", 1)[0][1:])
    except ValueError:
        return 0


def _tainted(versions: list[AdapterVersion], forgotten: Collection[str]) -> set[str]:
    """Versions that saw a forgotten interaction: they list one in their manifest, descend
    from one that did, or (later in the lineage) replayed training examples while a
    tainted committed run's examples were in the lineage's replay buffer."""
    by_name = {v.version: v for v in versions}
    direct = {v.version for v in versions
              if set((v.manifest.get("lineage") or {}).get("interaction_ids") or []) & set(forgotten)}

    def closure(seed: set[str]) -> set[str]:
        out = set(seed)
        changed = True
        while changed:
            changed = False
            for v in versions:
                if v.version not in out and (v.parent in out or v.full_candidate_of in out):
                    out.add(v.version)
                    changed = True
        return out

    tainted = closure(direct)
    committed = [_number(n) for n in tainted if by_name[n].verdict == "committed"]
    if committed:
        first = min(committed)
        for v in versions:
            train = ((v.manifest.get("metrics") or {}).get("train") or {})
            replayed = train.get("replay_examples")
            if _number(v.version) > first and (replayed is None or replayed > 0):
                tainted.add(v.version)  # no record of replay counts as replay: err on forgetting
        tainted = closure(tainted)
    return tainted


def _lineages(memory: SealMemory, namespace: Namespace | None) -> list[Lineage]:
    out = all_lineages(memory.home)
    if namespace is not None:
        own = lineage_for(memory.home, namespace, memory.config.consolidation)
        if own not in out and own.root.is_dir():
            out.append(own)
    return out


def _registry(lineage: Lineage, memory: SealMemory) -> AdapterRegistry | None:
    if not lineage.adapters_dir.is_dir():
        return None
    return memory.adapters if lineage.namespace is None else lineage.registry()


def _purge_lineages(memory: SealMemory, hit: _Matcher, namespace: Namespace | None, report: ForgetReport) -> None:
    forgotten = {i.decode() for i in hit.ids}
    _remove_trash(memory.home)
    for lineage in _lineages(memory, namespace):
        try:
            _purge_lineage(memory, lineage, hit, forgotten, namespace, report)
        except Exception as exc:  # one damaged lineage must not keep the others serving forgotten data
            logger.error("forget: lineage %s could not be purged: %s", lineage.name, exc, exc_info=True)
            report.pending.append(f"lineage {lineage.name}: {type(exc).__name__}: {exc}; fix it and forget again "
                                  "(the same ids or namespace: already forgotten rows are harmless)")
    for folder in _stray_lineage_folders(memory.home):
        # never served (lineage.all_lineages skips them), but their adapters may hold what
        # was just forgotten: say so instead of passing over them in silence
        report.pending.append(f"lineage folder {folder} is not the lineage folder of the namespace its marker "
                              "records (an old or copied folder) and was not purged: delete it, or open the "
                              "home with a version that migrates it, and forget again")
    try:
        _purge_writer(memory, hit, report)
    except Exception as exc:
        logger.error("forget: the writer lineage could not be purged: %s", exc, exc_info=True)
        report.pending.append(f"writer: {type(exc).__name__}: {exc}; fix it and forget again")


def _stray_lineage_folders(home: Path) -> list[Path]:
    """Folders under ``home/lineages`` with a lineage marker that are not the folder of the
    namespace it records (`all_lineages` skips them)."""
    listed = {lineage.root for lineage in all_lineages(home)}
    root = home / "lineages"
    if not root.is_dir():
        return []
    return [f for f in sorted(root.iterdir())
            if f.is_dir() and f not in listed and (f / "lineage.json").is_file()]


def _purge_lineage(memory: SealMemory, lineage: Lineage, hit: _Matcher, forgotten: set[str],
                   namespace: Namespace | None, report: ForgetReport) -> None:
    journal = memory._journal
    if namespace is not None and lineage.namespace is not None and tuple(lineage.namespace) == tuple(namespace):
        _delete_lineage(memory, lineage, forgotten, report)
        return
    registry = _registry(lineage, memory)
    tainted_runs: set[str] = set()
    if registry is not None:
        tainted_runs, deleted, relearn = _purge_registry(registry, lineage.name, hit, forgotten, report)
        report.requeued += journal.requeue(relearn)
        for n in deleted:
            report.gate_reports += _delete_report(lineage, n)
    report.gate_reports += _redact_reports(lineage, hit)
    report.replay_items += _purge_replay(lineage.replay_path, hit, tainted_runs)
    report.suite_items += _purge_suite(lineage.suite_path, hit)


def _purge_registry(registry: AdapterRegistry, name: str, hit: _Matcher, forgotten: set[str],
                    report: ForgetReport) -> tuple[set[str], list[str], list[str]]:
    """Delete the versions that saw forgotten data, CURRENT first moved to the newest
    committed ancestor that did not (or removed). Returns (their runs, the versions
    deleted, the other interactions the deleted committed versions had learned)."""
    versions = registry.list()
    tainted = _tainted(versions, forgotten)
    deleted: list[str] = []
    relearn: list[str] = []
    runs: set[str] = set()
    if tainted:
        by_name = {v.version: v for v in versions}
        runs = {str((by_name[n].manifest.get("lineage") or {}).get("run_id")) for n in tainted}
        current = registry._current_or_none()
        target: Any = current
        if current in tainted:
            target = by_name[current].parent
            while target is not None and (target in tainted or target not in by_name
                                          or by_name[target].verdict != "committed"):
                target = by_name[target].parent if target in by_name else None
        relearn = [i for n in tainted if by_name[n].verdict == "committed"
                   for i in (by_name[n].manifest.get("lineage") or {}).get("interaction_ids") or []
                   if i not in forgotten]
        deleted = registry.delete_versions(sorted(tainted, key=_number), new_current=target)
        if target != current:
            report.rolled_back[name] = target
        report.adapters_deleted += [f"{name}/{n}" for n in deleted]
    for v in registry.list():  # kept versions: their reports may quote a forgotten past task
        gate = v.manifest.get("gate")
        if gate is not None and hit.obj(gate):
            registry.replace_gate_report(v.version, _redact(gate, hit))
    return runs, deleted, relearn


def _purge_writer(memory: SealMemory, hit: _Matcher, report: ForgetReport) -> None:
    """The self-edit writer (``home/writer``, `seal_agent.selfedit.writer`): its adapter
    versions are trained on self-edits of interactions and list them like the knowledge
    lineages; its runs and checkpoints hold their text."""
    from seal_agent.registry import AdapterRegistry

    root = memory.home / "writer"
    if not root.is_dir():
        return
    forgotten = {i.decode() for i in hit.ids}
    if (root / "adapters").is_dir():
        _purge_registry(AdapterRegistry(root / "adapters"), "writer", hit, forgotten, report)
    lock = FileLock(str(root / "writer.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        report.pending.append("a writer run (seal_agent.selfedit.writer) is in progress: its files are left to it "
                              "and it does not check for forgotten interactions before it commits; forget again "
                              "once it has ended")
        return
    try:
        if (root / "runs").is_dir():
            for folder in sorted(p for p in (root / "runs").iterdir() if p.is_dir()):
                if _folder_mentions(folder, hit):
                    shutil.rmtree(folder, ignore_errors=True)
                    report.run_folders += 1
        threads = _threads_mentioning(root / "checkpoints.sqlite3", hit)
        if threads:
            report.checkpoint_threads += _delete_threads(root / "checkpoints.sqlite3", threads, report)
        status = root / "status.json"
        if status.is_file() and hit(status.read_bytes()):
            write_atomic(status, json.dumps(_redact(json.loads(status.read_text(encoding="utf-8")), hit), indent=1))
    finally:
        lock.release()


def _delete_lineage(memory: SealMemory, lineage: Lineage, forgotten: set[str], report: ForgetReport) -> None:
    """A forgotten namespace's own lineage: every version, its replay, suite and reports."""
    lineage.verify()  # a folder whose marker names another namespace is never deleted as this one's
    registry = _registry(lineage, memory)
    if registry is not None:
        versions = registry.list()
        relearn = [i for v in versions if v.verdict == "committed"
                   for i in (v.manifest.get("lineage") or {}).get("interaction_ids") or [] if i not in forgotten]
        report.requeued += memory._journal.requeue(relearn)
        # CURRENT first (the base model serves at once), then the folder
        registry.delete_versions([v.version for v in versions], new_current=None)
        report.adapters_deleted += [f"{lineage.name}/{v.version}" for v in versions]
        report.gate_reports += sum(1 for v in versions if (lineage.reports_dir / v.version).is_dir())
        if registry.current is None and versions:
            report.rolled_back[lineage.name] = None
    report.suite_items += _count_suite(lineage.suite_path)
    report.replay_items += _count_replay(lineage.replay_path)
    lineage.suite_path.unlink(missing_ok=True)
    if lineage.root.is_dir():
        trash = memory.home / f".trash-{uuid.uuid4().hex[:8]}"
        os.replace(lineage.root, trash)  # out of `all_lineages` in one step; a crash leaves only trash
        shutil.rmtree(trash, ignore_errors=True)
    report.lineages_deleted.append(lineage.name)


def _remove_trash(home: Path) -> None:
    for p in home.glob(".trash-*"):
        shutil.rmtree(p, ignore_errors=True)


def _delete_report(lineage: Lineage, version: str) -> int:
    folder = lineage.reports_dir / version
    if not folder.is_dir():
        return 0
    try:  # a report folder of another lineage's version of the same name (an older layout) is kept
        owner = json.loads((folder / "gate_report.json").read_text(encoding="utf-8")).get("lineage")
    except (OSError, ValueError):
        owner = None
    if owner not in (None, lineage.name):
        return 0
    shutil.rmtree(folder, ignore_errors=True)
    return 1


def _redact_reports(lineage: Lineage, hit: _Matcher) -> int:
    """Strip kept gate reports of the rows (and reason texts) about forgotten interactions."""
    from seal_agent.gate.report import GateReport

    n = 0
    if not lineage.reports_dir.is_dir():
        return 0
    for folder in lineage.reports_dir.iterdir():
        path = folder / "gate_report.json"
        if not path.is_file():
            continue
        blob = path.read_bytes()
        if not hit(blob):
            continue
        data = _redact(json.loads(blob), hit)
        write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False))
        try:
            md = GateReport.from_dict(data).to_markdown(version=folder.name)
        except Exception:  # an older report layout: no summary rather than a stale one
            logger.debug("cannot re-render %s", path, exc_info=True)
            (folder / "gate_report.md").unlink(missing_ok=True)
        else:
            write_atomic(folder / "gate_report.md", md)
        (folder / "gate_report.png").unlink(missing_ok=True)  # it plotted the rows that are gone
        n += 1
    return n


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _count_replay(path: Path) -> int:
    data = _load_json(path)
    return len(data.get("items", [])) if isinstance(data, dict) else 0


def _purge_replay(path: Path, hit: _Matcher, tainted_runs: set[str]) -> int:
    """Drop replay examples of the tainted runs (their interactions are learned again)
    and any that mentions a forgotten interaction."""
    data = _load_json(path)
    if not isinstance(data, dict):
        return 0
    items = data.get("items", [])
    keep = [it for it in items if str(it.get("run_id")) not in tainted_runs and not hit.obj(it)]
    if len(keep) != len(items):
        write_atomic(path, json.dumps({**data, "items": keep}))
    return len(items) - len(keep)


def _count_suite(path: Path) -> int:
    data = _load_json(path)
    return len(data.get("items", [])) if isinstance(data, dict) else 0


def _purge_suite(path: Path, hit: _Matcher) -> int:
    from seal_agent.gate.suite import ReplaySuite

    if not path.is_file() or not hit(path.read_bytes()):
        return 0
    suite = ReplaySuite.load(path)
    before = len(suite.items)
    suite.items = [it for it in suite.items if not hit.obj(it.to_dict())]
    suite.dropped = [d for d in suite.dropped if not hit.obj(d)]
    suite.anchors = {k: v for k, v in suite.anchors.items() if not hit(k.encode())}
    suite.save(path)  # anchors of removed items go with them
    return before - len(suite.items)


# ------------------------------------------------------------------- consolidation


def _run_mentions(memory: SealMemory, run_id: str, hit: _Matcher) -> bool:
    return bool(_threads_mentioning(memory.home / "consolidation" / "checkpoints.sqlite3", hit, only=run_id)) or \
        _folder_mentions(memory.home / "consolidation" / "runs" / run_id, hit)


def _folder_mentions(folder: Path, hit: _Matcher) -> bool:
    if not folder.is_dir():
        return False
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.endswith(_SKIP_SCAN):
            found, problem = _file_holds(p, hit)
            if problem:
                logger.warning("forget: %s", problem)
            if found:
                return True
    return False


def _threads_mentioning(path: Path, hit: _Matcher, *, only: str | None = None) -> set[str]:
    if not path.is_file():
        return set()
    db = sqlite3.connect(path, timeout=30)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        out: set[str] = set()
        where, params = ("WHERE thread_id=?", (only,)) if only is not None else ("", ())
        if "checkpoints" in tables:
            for tid, cp, md in db.execute(f"SELECT thread_id, checkpoint, metadata FROM checkpoints {where}", params):
                if tid not in out and (hit(_bytes(cp)) or hit(_bytes(md))):
                    out.add(tid)
        if "writes" in tables:
            for tid, value in db.execute(f"SELECT thread_id, value FROM writes {where}", params):
                if tid not in out and hit(_bytes(value)):
                    out.add(tid)
        return out
    finally:
        db.close()


def _bytes(value: Any) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")


def _purge_consolidation(memory: SealMemory, hit: _Matcher, report: ForgetReport, *, holding_run_lock: bool) -> None:
    """Run folders, checkpoint threads and the run record; the running run's are left to it."""
    from seal_agent.consolidation import _active_file, _finish, _load_book, _save_book, pending_runs

    home = memory.home
    root = home / "consolidation"
    url = str(getattr(memory, "journal_url", None) or "")
    on_postgres = url.startswith(("postgres://", "postgresql://"))  # checkpoints in the journal's database
    if not root.is_dir() and not on_postgres:
        return
    run_lock = None if holding_run_lock else _run_lock(memory, "consolidation")
    running = False
    if run_lock is not None:
        try:
            run_lock.acquire(timeout=0)
        except Timeout:
            running = True
    try:
        active = pending_runs(memory)
        busy = set(active) if running else set()  # a run in progress: its files are its own
        checkpoints = root / "checkpoints.sqlite3"
        threads = _threads_mentioning(checkpoints, hit) - busy
        pg_threads: set[str] = set()
        if on_postgres:
            from seal_agent.coordination import checkpoint_threads_matching

            pg_threads = checkpoint_threads_matching(url, hit) - busy
        folders = {p.name for p in (root / "runs").iterdir() if p.is_dir() and p.name not in busy
                   and _folder_mentions(p, hit)} if (root / "runs").is_dir() else set()
        for rid in active:
            if rid not in busy and (rid in threads or rid in pg_threads or rid in folders):
                _active_file(memory).unlink(missing_ok=True)
                book = _load_book(memory)
                book.get("runs", {}).pop(rid, None)
                _finish(memory, book, rid, "skipped", reason="dropped: it held interactions forgotten since")
                report.runs_dropped.append(rid)
                logger.warning("forget: unfinished consolidation %s held forgotten interactions: dropped (its "
                               "other interactions stay new)", rid)
        for rid in sorted(folders):
            folder = root / "runs" / rid
            report.self_edit_sets += int((folder / "selfedits.json").is_file())
            shutil.rmtree(folder, ignore_errors=True)
            report.run_folders += 1
        if threads:
            report.checkpoint_threads += _delete_threads(checkpoints, threads, report)
        if pg_threads:
            from seal_agent.coordination import delete_checkpoint_threads

            report.checkpoint_threads += delete_checkpoint_threads(url, pg_threads)
        book_path = root / "status.json"
        if book_path.is_file() and hit(book_path.read_bytes()):  # e.g. an error message quoting a value
            _save_book(memory, _redact(_load_book(memory), hit))
        if running:
            _ask_consolidation_to_finish(home, "a consolidation was running during a forget")
            report.pending.append(
                f"consolidation run {', '.join(sorted(busy)) or '(starting)'} is in progress: it drops itself "
                "before it commits if it holds a forgotten interaction (nothing it learned from them is ever "
                "committed), and its files are purged when it ends")
    finally:
        if run_lock is not None and run_lock.is_locked:
            run_lock.release()


def _delete_threads(path: Path, threads: set[str], report: ForgetReport) -> int:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for tid in threads:
            db.execute("DELETE FROM checkpoints WHERE thread_id=?", (tid,))
            db.execute("DELETE FROM writes WHERE thread_id=?", (tid,))
        db.execute("COMMIT")
        try:
            db.execute("VACUUM")  # deleted blobs stay in free pages otherwise
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.OperationalError:
            busy = 1
        if busy:
            report.pending.append(f"{path}: VACUUM deferred (in use); the consolidation finishes it")
            _ask_consolidation_to_finish(path.parent.parent, "checkpoints not vacuumed")
    finally:
        db.close()
    return len(threads)


# -------------------------------------------------------------------------- chroma


def _purge_chroma(memory: SealMemory, report: ForgetReport, hit: _Matcher, chroma_residual: list[str]) -> None:
    """Delete pending forgotten records from Chroma now, verify, and scrub its files."""
    journal = memory._journal
    # this call's ids (the worker may have deleted them already: verified all the same),
    # and any an earlier forget left pending
    pending = list(dict.fromkeys([*report.ids, *journal.pending_deletes(10_000_000)]))
    if not pending:
        return
    ownership = memory._ownership
    if ownership is not None and not memory._take_index():
        report.chroma_pending = len(pending)
        report.pending.append(
            f"chroma: {len(pending)} records are deleted by the process that owns the embedded index "
            f"({ownership.holder()}) within memory.poll_interval_s, which then scrubs chroma.sqlite3")
        return
    index = memory._index
    try:
        for start in range(0, len(pending), 1000):
            chunk = pending[start:start + 1000]
            where = journal.namespaces_of(chunk)
            index.delete(chunk, where)
            left = index.present(chunk, where)
            if left:
                raise RuntimeError(f"{len(left)} records still present after delete (e.g. {left[0]})")
            journal.mark_deleted(chunk)
            report.chroma_deleted += len(chunk)
    except Exception as exc:  # Chroma down: the worker keeps retrying (journal rows chroma_deleted=0)
        report.chroma_pending = len(pending) - report.chroma_deleted
        report.pending.append(f"chroma: {report.chroma_pending} records not deleted yet ({exc}); the indexing "
                              "worker retries with back-off")
        return
    if memory.chroma_url is not None:
        report.pending.append("chroma server: records deleted; compacting its storage (write-ahead log, "
                              "free pages) is the server's own (run `chroma vacuum` on its data folder)")
    elif ownership is not None:
        problem, residual = close_and_scrub(index, memory.home / "chroma", journal.forgotten_ids(), hit.needles)
        if problem:
            report.pending.append(f"chroma files: {problem}")
        chroma_residual.extend(residual)


def close_and_scrub(index: Any, chroma_dir: Path, ids: Collection[str],
                    texts: Sequence[bytes] = ()) -> tuple[str | None, list[str]]:
    """Scrub the files of this process's embedded index: no call of `index` runs meanwhile,
    and its client is closed first (Chroma's SQLite must not be written from this process
    while Chroma has it open), then reopened and its vector files' unused slots cleared.

    A limit that stays: Chroma writes its vector segment out again every ~1,000 writes
    (``hnsw:sync_threshold``), unused slots included, from memory allocated when it was
    opened; `SealMemory.close` clears them once more, but until then a process that held
    forgotten text may have put some of it there. Returns `_scrub_chroma`'s answer."""
    with index.exclusive():
        index.close()
        hnsw = not _chroma_open_here(chroma_dir)
        problem, residual = _scrub_chroma(chroma_dir, ids, texts, hnsw=False)
        if hnsw and problem is None:
            # Opening the collection makes Chroma load its vector segment and write it out
            # again at once, with fresh uninitialised slots from this process's memory --
            # which held the forgotten text. So: open it now, then clear what it wrote.
            try:
                index.open_all()
            except Exception as exc:  # Chroma down: it will be reopened (and cleared at close) later
                logger.warning("could not reopen %s after scrubbing it: %s", chroma_dir, exc)
            zero_hnsw_slack(chroma_dir)
            # Chroma has its SQLite file open again: the child searched it, through SQLite
            residual += _vector_files_holding(chroma_dir, texts)
        return problem, residual


def _chroma_open_here(chroma_dir: Path) -> bool:
    """Whether another client of this process still holds Chroma's system for the folder
    (e.g. a `ChromaStore` on the same home): then its vector files are not rewritten."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        return any(str(Path(chroma_dir)) in str(key) for key in SharedSystemClient._identifier_to_system)
    except Exception:  # another chromadb layout: assume it is open, touch nothing
        return True


def scrub_chroma_files(chroma_dir: str | os.PathLike[str], ids: Collection[str],
                       texts: Sequence[bytes] = (), *, hnsw: bool = True) -> str | None:
    """Remove deleted records' text from an embedded Chroma's SQLite file; None when done.

    chromadb 1.5 keeps, after ``collection.delete``: the upsert entries of its write-ahead
    log (``embeddings_queue``, document and vector included), purged only once its vector
    segment has persisted past them (every ~1,000 writes); the trigrams of the FTS5
    full-text index in old segments; and the deleted rows in free pages. Here: the
    forgotten ids' add/update/upsert log entries are deleted (their delete entries stay,
    so a replay of the log after a crash still ends without them), the FTS index is merged
    (``'optimize'``), and the file is vacuumed. Chroma's own ``chroma vacuum`` does not
    purge that log (tried). With `texts`, the child then searches the database for them
    through SQLite (a page-by-page copy, never the live file: see `_database_holds`).
    With `hnsw` (only when no process has the index open: `close_and_scrub` closes this
    process's client first), the unused slots of each vector segment are zeroed
    (`zero_hnsw_slack`) and the other files of the folder are searched for `texts`.
    The vectors of deleted records stay in the HNSW files as tombstones until their
    slots are reused: numbers, not text.

    It runs in a child process: Chroma's Rust core links its own SQLite, and two SQLite
    libraries in one process do not see each other's POSIX locks (closing one's file
    descriptor drops the other's locks), so writing the file from this process corrupted
    it ("disk I/O error" from Chroma, seen). Across processes SQLite's locking holds.
    Call it from the process that owns the index (or with no process using it).

    Args:
        chroma_dir: ``home/chroma``.
        ids: The forgotten ids.
        texts: Forgotten texts (as bytes) to look for afterwards.
        hnsw: Also clear the vector segments' unused slots and search every file.

    Returns:
        None when done and (if `texts`) none of them is left in the folder's files,
        else what is wrong.
    """
    problem, residual = _scrub_chroma(chroma_dir, ids, texts, hnsw)
    return problem or (f"forgotten text still in {', '.join(residual)}" if residual else None)


def _scrub_chroma(chroma_dir: str | os.PathLike[str], ids: Collection[str], texts: Sequence[bytes],
                  hnsw: bool = True) -> tuple[str | None, list[str]]:
    """`scrub_chroma_files`: (what went wrong, files still holding one of `texts`)."""
    import subprocess
    import sys

    path = Path(chroma_dir) / "chroma.sqlite3"
    if not path.is_file():
        return None, []
    payload = json.dumps({"path": str(path), "ids": list(ids), "texts": [t.hex() for t in texts],
                          "copy_dir": str(Path(chroma_dir).resolve().parent), "copy_prefix": _SCAN_COPY})
    try:
        done = subprocess.run([sys.executable, "-c", _SCRUB_CHILD], input=payload, capture_output=True,
                              text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"could not scrub {path} ({exc}); the next forget retries", []
    if done.returncode != 0:
        logger.warning("could not scrub %s after a forget: %s", path, done.stderr[-2000:])
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"could not scrub {path} ({last}); the next forget retries", []
    residual: list[str] = []
    if texts:
        try:
            found = json.loads(done.stdout.strip().splitlines()[-1])["found"]
        except (IndexError, KeyError, ValueError):
            return f"could not search {path} (the scrub said {done.stdout[-200:]!r}); the next forget retries", []
        if found:
            residual.append(str(Path(Path(chroma_dir).name) / path.name))
    if hnsw:  # nothing of this process holds the index: its vector files may be written
        zero_hnsw_slack(chroma_dir)
        residual += _vector_files_holding(chroma_dir, texts)
    return None, residual


def _vector_files_holding(chroma_dir: str | os.PathLike[str], texts: Sequence[bytes]) -> list[str]:
    """Files of an embedded Chroma other than its SQLite database that hold one of `texts`.

    ``chroma.sqlite3`` (and its journal) is left out: it is only read through SQLite, by
    the scrub's child process (`_SCRUB_CHILD`). The vector segments' files are plain
    files: Chroma keeps descriptors of them open but no locks (checked in /proc/locks with
    chromadb 1.5), so opening and closing them here takes nothing from Chroma."""
    out: list[str] = []
    if not texts:
        return out
    root = Path(chroma_dir)
    for p in sorted(root.rglob("*")):
        if not p.is_file() or _SQLITE_FILE.search(p.name) or p.name.startswith(_SCAN_COPY):
            continue
        try:
            if any(t in p.read_bytes() for t in texts):
                out.append(str(Path(root.name) / p.relative_to(root)))
        except OSError:
            continue
    return out


# The child of `scrub_chroma_files`: plain sqlite3, nothing of seal_agent or chromadb.
_SCRUB_CHILD = r"""
import json, os, sqlite3, sys, tempfile
args = json.load(sys.stdin)
ids = args["ids"]
db = sqlite3.connect(args["path"], timeout=60, isolation_level=None)
tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
db.execute("BEGIN IMMEDIATE")
if "embeddings_queue" in tables:
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        db.execute("DELETE FROM embeddings_queue WHERE operation != 3 AND id IN (%s)" % ",".join("?" * len(chunk)),
                   chunk)
    # and any record's writes that a later delete undid (distilled facts of forgotten
    # interactions, among others: their ids are not the interactions')
    db.execute("DELETE FROM embeddings_queue WHERE operation != 3 AND EXISTS (SELECT 1 FROM embeddings_queue d "
               "WHERE d.operation = 3 AND d.id = embeddings_queue.id AND d.topic = embeddings_queue.topic "
               "AND d.seq_id > embeddings_queue.seq_id)")
if "embedding_fulltext_search" in tables:
    db.execute("INSERT INTO embedding_fulltext_search(embedding_fulltext_search) VALUES('optimize')")
db.execute("COMMIT")
db.execute("VACUUM")
found = False
texts = [bytes.fromhex(t) for t in args["texts"]]
if texts:
    # Search the file through SQLite, not with file I/O (see forget._database_holds): the
    # log checkpointed and truncated, then a page-by-page copy (free pages included)
    # beside the home's other files, searched and deleted.
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fd, name = tempfile.mkstemp(prefix=args["copy_prefix"], suffix=".tmp", dir=args["copy_dir"])
    os.close(fd)
    try:
        dst = sqlite3.connect(name, isolation_level=None)
        try:
            db.backup(dst)
        finally:
            dst.close()
        with open(name, "rb") as f:
            blob = f.read()
        found = any(t in blob for t in texts)
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(name + suffix)
            except OSError:
                pass
db.close()
print(json.dumps({"found": found}))
"""


def _zero_from(path: Path, offset: int) -> None:
    """Overwrite `path` with zeros from `offset` to its end, durably."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(offset)
        left = size - offset
        while left > 0:
            chunk = min(left, 1 << 20)
            f.write(bytes(chunk))
            left -= chunk
        f.flush()
        os.fsync(f.fileno())


def zero_hnsw_slack(chroma_dir: str | os.PathLike[str]) -> int:
    """Zero the unused slots of every vector segment's ``data_level0.bin``; how many files.

    hnswlib allocates its level-0 array with malloc and never clears the slots past the
    elements it holds, and Chroma writes the whole array out: those slots hold whatever
    the process's memory held -- the text of documents, forgotten ones included (found in
    a test). ``header.bin`` is a 4-byte version, then hnswlib's header (offsetLevel0,
    max_elements, cur_element_count, size_data_per_element, ...); a file of another layout
    is left alone. Only while no process has the index open (Chroma would write its
    memory back): `close_and_scrub` and `SealMemory.close` call it after closing.
    (`close_and_scrub` calls it again after reopening, inside `ChromaIndex.exclusive`: no
    operation of the index runs, so Chroma writes none of these files meanwhile; it keeps
    descriptors of them open but takes no lock on them -- they are not SQLite's -- so
    opening and closing them here drops nothing of Chroma's.)
    """
    import struct

    n = 0
    for header in Path(chroma_dir).glob("*/header.bin"):
        data = header.with_name("data_level0.bin")
        try:
            head = header.read_bytes()[:36]
            if len(head) < 36 or not data.is_file():
                continue
            _version, _offset, max_elements, count, per_element = struct.unpack("<IQQQQ", head)
            size = data.stat().st_size
            if per_element <= 0 or max_elements * per_element != size or count > max_elements:
                continue
            _zero_from(data, count * per_element)
            # length.bin: one 4-byte link-list size per slot, max_elements of them, the
            # unused ones as uninitialised as data_level0's (forgotten text was found there)
            lengths = header.with_name("length.bin")
            if lengths.is_file() and lengths.stat().st_size == max_elements * 4:
                _zero_from(lengths, count * 4)
            n += 1
        except OSError as exc:
            logger.warning("could not clear the unused slots of %s: %s", data, exc)
    return n


# ------------------------------------------------------------------------ reporting


def _serving(memory: SealMemory, report: ForgetReport) -> None:
    for lineage in all_lineages(memory.home):
        registry = _registry(lineage, memory)
        if registry is not None:
            report.serving[lineage.name] = registry.serving().version
    if (memory.home / "writer" / "adapters").is_dir():
        from seal_agent.selfedit.writer import writer_registry

        report.serving["writer"] = writer_registry(memory.home).serving().version


def _residual(home: Path, hit: _Matcher, chroma_residual: Sequence[str] = (),
              problems: list[str] | None = None) -> list[str]:
    """Files under the home that still contain the forgotten text (bytes), for the report.

    ``home/chroma`` is not opened here (closing a descriptor of Chroma's SQLite file in
    this process would drop the locks Chroma's own SQLite holds on it): the scrub's child
    process searched it (`chroma_residual`). SQLite databases (the journal, checkpoints)
    are searched through SQLite (`_database_holds`); what could not be searched is added
    to `problems`."""
    out = list(chroma_residual)
    chroma = home / "chroma"
    for p in home.rglob(f"{_SCAN_COPY}*"):  # left by a forget killed while it searched one (not
        with contextlib.suppress(OSError):  # another forget's, searching now)
            if time.time() - p.stat().st_mtime > _STALE_COPY_S:
                p.unlink()
    for p in sorted(home.rglob("*")):
        if not p.is_file() or p.name.endswith(_SKIP_SCAN) or chroma in p.parents:
            continue
        found, problem = _file_holds(p, hit.text_in)
        if problem and problems is not None:
            problems.append(problem)
        if found:
            out.append(str(p.relative_to(home)))
    return out


def _file_holds(path: Path, test: Callable[[bytes], bool]) -> tuple[bool, str | None]:
    """Whether the file at `path` holds bytes that `test` finds: (found, why it could not
    be searched or None). An SQLite file is searched through SQLite (`_database_holds`)."""
    if path.name.startswith(_SCAN_COPY):
        return False, None  # another forget's copy of a database, deleted by that forget
    kind = _SQLITE_FILE.search(path.name)
    if kind is not None:
        if kind.group("companion") is None:
            return _database_holds(path, test)
        if path.with_name(path.name[:kind.start("companion")]).exists():
            # -wal: checkpointed and truncated by `_database_holds` on its database;
            # -shm: the log's index (frame numbers, checksums), no content; -journal:
            # exists during a transaction only. SQLite may hold any of them open.
            return False, None
        # no database beside it (an orphan): no SQLite connection can hold it, read it below
    try:
        return test(path.read_bytes()), None
    except OSError:
        return False, None


def _database_holds(path: Path, test: Callable[[bytes], bool]) -> tuple[bool, str | None]:
    """Whether the SQLite database at `path` holds bytes that `test` finds, read through
    SQLite -- never with Python's file I/O: (found, why its log could not be searched).

    Why: POSIX record locks (SQLite's) belong to a process, and closing *any* descriptor
    of a file drops all of that process's locks on it. SQLite's own connections know (one
    descriptor per file and process, closes deferred while locks are held), but a
    ``read_bytes()`` of ``journal.sqlite3`` or of its ``-shm`` in the process that has the
    journal open released the journal's locks behind SQLite's back: another process then
    wrote at the same time, or, closing its last connection, believed itself alone and
    deleted the write-ahead log still in use here -- acknowledged writes were lost and
    ``PRAGMA integrity_check`` failed (issue 22).

    How, keeping the guarantee that the forgotten text is in none of the home's files:
    through a connection of our own, the write-ahead log is checkpointed into the database
    and truncated to zero bytes (``wal_checkpoint(TRUNCATE)``), so the database file holds
    everything there is; then SQLite's backup API copies the database page by page --
    free pages as they are, so deleted text left in free space is found just as in the
    file (``VACUUM INTO`` would drop it) -- into a temporary file beside it (the home's
    data stays in the home), whose bytes are searched; the copy is deleted. If the log
    cannot be truncated (a reader holds it), its older frames cannot be searched: that
    is the returned problem.
    """
    import tempfile
    import urllib.parse

    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=rw"  # never creates a database
    fd, name = tempfile.mkstemp(prefix=_SCAN_COPY, suffix=".tmp", dir=path.parent)
    os.close(fd)  # a fresh, empty file: SQLite makes it a database; no one else has it open
    copy = Path(name)
    try:
        src = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
        try:
            busy = src.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            dst = sqlite3.connect(copy, isolation_level=None)
            try:
                src.backup(dst)
            finally:
                dst.close()
        finally:
            src.close()
        found = test(copy.read_bytes())  # our own copy, closed by SQLite: safe to read
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) == _SQLITE_NOTADB:
            # not a database (a file of ours named like one): no SQLite connection can
            # hold it as one, so its bytes may be read
            try:
                return test(path.read_bytes()), None
            except OSError:
                return False, None
        return False, f"{path}: could not be searched for forgotten text through SQLite ({exc}); forget again"
    except OSError as exc:
        return False, f"{path}: could not be searched for forgotten text through SQLite ({exc}); forget again"
    finally:
        _unlink_copy(copy)
    problem = (f"{path}: its write-ahead log is in use and could not be truncated, so it was not searched for "
               "forgotten text; forget again" if busy else None)
    return found, problem


def _unlink_copy(copy: Path) -> None:
    for p in (copy, *(copy.with_name(copy.name + s) for s in ("-journal", "-wal", "-shm"))):
        with contextlib.suppress(OSError):
            p.unlink()


def retrain_after_forget(memory: SealMemory, report: ForgetReport) -> None:
    """``forget_weights = "retrain"``: relearn now what the deleted versions had learned
    from other interactions (they were requeued), through the gate like any update.

    The rollback has already happened: nothing forgotten is served meanwhile. A skipped
    run (another consolidation holds the home) leaves the requeued interactions to the
    next one, and the report says so.
    """
    if not report.requeued:
        report.retrained = []
        return
    done = memory.consolidate(progress=False)
    runs = done.runs or [done]
    report.retrained = [{"lineage": r.lineage, "verdict": r.verdict, "version": r.version, "reason": r.reason}
                        for r in runs]
    if any(r.verdict == "skipped" for r in runs):
        report.pending.append("retrain: a consolidation was skipped; the requeued interactions wait for the next one")
