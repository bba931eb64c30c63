"""Background consolidation on a schedule: APScheduler wiring for `SealMemory.consolidate`.

Three kinds of trigger, any combination (``[schedule]`` in the config):

- ``cron``: a crontab expression, in the scheduler's local time zone.
- ``interval_minutes``: every N minutes (fractions allowed: 0.5 = 30 s).
- ``min_new_interactions``: a cheap probe every ``check_seconds`` counts the new
  interactions; once at least N have arrived since the last run, it schedules a
  consolidation as a one-off job. Counting "since the last run" (not "in total") matters:
  a rejected run leaves its interactions ``new``, and retraining on exactly the same data
  every few seconds would only burn CPU. The probe and the run are separate jobs so that
  a long training does not make APScheduler warn, every ``check_seconds``, that the
  probe's previous instance is still running.

Single flight. Every job has ``max_instances=1`` and ``coalesce=True``, and on top of
that a non-blocking in-process lock makes the cron, interval, threshold and manual
(`ConsolidationScheduler.run_now`) runs exclude one another: a run that finds another
in progress is logged ("consolidation already running; skipping") and recorded, never
queued. Across processes, `SealMemory.consolidate` itself holds a file lock on the home
and returns verdict "skipped" when another process is consolidating.

Persistent jobs. With ``jobstore_url`` set (``"default"``: ``home/scheduler.sqlite3``)
jobs live in a SQLAlchemy job store and survive a restart: a missed cron or interval
fire time is caught up once (coalesced) if it is less than an hour late. A stored job is
pickled, so it cannot point at a bound method of a live scheduler (which holds threads,
locks and a Chroma client). It names the module-level function `_run_job` by its text
reference and carries only ``(home, kind)``; `_run_job` finds the live
`ConsolidationScheduler` of that home in this process through a module-level registry.
Each home gets its own table (``seal_jobs_<hash of home>``) and stable job ids, so
several homes can share one database without firing each other's jobs. APScheduler 3
does not coordinate several *processes* on one job store: if you share one, each
process fires the jobs, and the file lock in `consolidate` lets only one of them run.
With a Postgres journal (``memory.journal_url``) that is done on the database instead:
each cron, interval and writer fire time is claimed in table ``seal_schedule_slots``
(`seal_agent.coordination.claim_slot`) and runs in the one process that claimed it,
whichever host it is on; the others record the outcome ``elsewhere``.

Failures. A run that raises is logged and recorded (`RunRecord`, outcome ``error``) and
the scheduler keeps firing. `SealMemory.consolidate` resumes a failed run at most
``consolidation.max_attempts`` times in all, then abandons it and starts afresh, so a
run that can never succeed does not make every later fire fail. `history` lives in this
process only; the persisted record that ``seal-agent status`` shows from any process is
`seal_agent.consolidation.consolidation_status`.

Serving. Nothing is pushed to the served model after a committed run: an
`AdaptiveChatModel` (``mem.chat_model()``) checks the registry's CURRENT before each
request and hot-swaps to the new adapter by itself.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from seal_agent.config import ScheduleConfig
from seal_agent.coordination import claim_slot, journal_url_of
from seal_agent.errors import ConfigError, SealAgentError

if TYPE_CHECKING:
    from apscheduler.job import Job

    from seal_agent.seal_memory import SealMemory

__all__ = ["ConsolidationScheduler", "RunRecord", "run_forever"]

logger = logging.getLogger(__name__)

JOBSTORE_FILENAME = "scheduler.sqlite3"
HISTORY_SIZE = 100
"""How many `RunRecord` entries `ConsolidationScheduler.history` keeps."""
CATCH_UP_S = 3600
"""A cron or interval run missed by less than this (process down or suspended) still happens, once."""

# The text reference stored in the job store instead of a (unpicklable) bound method.
_JOB_FUNC = f"{__name__}:_run_job"
_REGISTRY: dict[str, ConsolidationScheduler] = {}
_REGISTRY_LOCK = threading.Lock()

Trigger = Literal["cron", "interval", "threshold", "manual"]
Outcome = Literal["completed", "busy", "error", "elsewhere"]


@dataclass(frozen=True)
class RunRecord:
    """One attempt to consolidate, as the scheduler saw it.

    Attributes:
        trigger: What started it: ``cron``, ``interval``, ``threshold``, ``manual``, or
            ``writer`` (a ReST-EM round, ``schedule.writer_cron``: its report is a `WriterReport`).
        outcome: ``completed`` (the run returned a report, whatever its verdict),
            ``busy`` (another consolidation was running in this process; nothing ran),
            ``elsewhere`` (a Postgres journal: another process claimed this fire time
            and runs it) or ``error`` (the run raised; see `error` and the log).
        started_at: When the attempt began (UTC).
        finished_at: When it ended (UTC).
        report: What the run returned (a `ConsolidationReport`), when it completed.
        error: ``"ExceptionType: message"``, when it raised.
    """

    trigger: str
    outcome: Outcome
    started_at: datetime
    finished_at: datetime
    report: Any = None
    error: str | None = None

    @property
    def verdict(self) -> str | None:
        """The report's verdict (``committed``, ``rejected``, ``skipped``, ...), if any."""
        return getattr(self.report, "verdict", None)


def _now() -> datetime:
    return datetime.now(UTC)


def _run_job(home: str, kind: str) -> None:
    """What every stored job calls: dispatch to the live scheduler of `home`.

    Module-level and called with plain strings so that a job in a persistent store can
    be pickled and resolved again by a restarted process (see the module docstring).
    """
    with _REGISTRY_LOCK:
        scheduler = _REGISTRY.get(home)
    if scheduler is None:
        logger.warning("no running consolidation scheduler for home %s in this process; %s job ignored",
                       home, kind)
        return
    scheduler._fire(kind)


def _check_triggers(config: ScheduleConfig) -> None:
    if (config.cron is None and config.interval_minutes is None and config.min_new_interactions is None
            and config.writer_cron is None):
        raise ConfigError("schedule", config, "set cron, interval_minutes or min_new_interactions (or writer_cron)")


class ConsolidationScheduler:
    """Runs `SealMemory.consolidate` on cron, interval and new-interaction triggers.

    A thin layer over APScheduler's `BackgroundScheduler` (daemon threads); see the
    module docstring for single-flight and persistence. Usually built by
    `SealMemory.start_scheduler`, or by `run_forever` for the ``seal-agent schedule``
    daemon. At most one scheduler per memory home runs in a process.

    Args:
        memory: The `SealMemory` whose home is consolidated.
        config: When to run (`ScheduleConfig`); at least one trigger must be set.
        run: What one run does; default ``memory.consolidate(progress=False)`` with the
            scheduler's cancel event. Its return value is recorded as the report.

    Raises:
        ConfigError: No trigger configured, or a crontab expression APScheduler rejects.

    Example:
        >>> sched = ConsolidationScheduler(mem, ScheduleConfig(cron="0 3 * * *"))  # doctest: +SKIP
        >>> sched.start(); sched.next_run_times()                                   # doctest: +SKIP
        {'cron': datetime.datetime(2025, 1, 2, 3, 0, tzinfo=...)}
    """

    def __init__(
        self,
        memory: SealMemory,
        config: ScheduleConfig,
        *,
        run: Callable[[], Any] | None = None,
    ) -> None:
        _check_triggers(config)
        self.memory = memory
        self.config = config
        self.home = str(Path(memory.home).resolve())
        self._run_fn: Callable[[], Any] = run if run is not None else self._consolidate
        self._triggers = self._build_triggers(config)  # fail on a bad crontab before anything starts
        # A Postgres journal is shared by every process and host: each cron or interval
        # fire time runs once among all schedulers (`claim_slot`). Interval triggers then
        # count from the epoch, so every process fires at the same instants.
        self._slots_url = journal_url_of(memory)
        if self._slots_url is not None and config.interval_minutes is not None:
            self._triggers["interval"] = IntervalTrigger(seconds=config.interval_minutes * 60.0,
                                                         start_date=datetime(1970, 1, 1, tzinfo=UTC))
        key = hashlib.sha1(self.home.encode("utf-8")).hexdigest()[:12]
        self._table = f"seal_jobs_{key}"
        self._job_ids = {kind: f"seal-consolidation-{key}-{kind}"
                         for kind in ("cron", "interval", "check", "threshold", "writer")}
        self._scheduler: BackgroundScheduler | None = None
        self._run_lock = threading.Lock()  # single flight within this process
        self._state_lock = threading.Lock()  # guards _baseline and _history
        self._cancel = threading.Event()
        self._baseline = 0  # new interactions left after the last run; the threshold counts beyond it
        self._history: deque[RunRecord] = deque(maxlen=HISTORY_SIZE)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the background scheduler and (re)install this home's jobs.

        A stored job whose trigger is unchanged is kept as it is, so its next fire time
        (and a missed run to catch up) survives a restart; a changed one is replaced, and
        a stored job for a trigger no longer configured is removed.

        Raises:
            SealAgentError: This scheduler, or another one for the same home, is running
                in this process.
        """
        with _REGISTRY_LOCK:
            other = _REGISTRY.get(self.home)
            if other is not None:
                raise SealAgentError(f"a consolidation scheduler is already running for home {self.home}")
            _REGISTRY[self.home] = self  # before jobs can fire: they look us up here
        try:
            self._cancel = threading.Event()
            scheduler = BackgroundScheduler(
                jobstores={"default": self._make_jobstore()},
                # One worker runs a consolidation, one the threshold probe, one spare for a
                # trigger that arrives mid-run and must be seen (and skipped) promptly.
                executors={"default": ThreadPoolExecutor(max_workers=3)},
                job_defaults={"max_instances": 1, "coalesce": True},
            )
            # Paused: stored jobs must not fire before they are reconciled with the config.
            scheduler.start(paused=True)
            self._scheduler = scheduler
            self._install_jobs()
            scheduler.resume()
        except BaseException:
            self._shutdown(wait=False)
            raise
        logger.info("consolidation scheduler started for %s: %s", self.home,
                    ", ".join(f"{k} next at {t}" for k, t in self.next_run_times().items()))

    def stop(self, wait: bool = True, *, cancel: bool = False) -> None:
        """Stop firing jobs; with `wait`, return only once a running consolidation ended.

        Stored jobs stay in a persistent job store for the next start.

        Args:
            wait: Wait for a consolidation in progress to finish.
            cancel: Also ask it to stop at its next step (nothing is committed).
        """
        if cancel:
            self.cancel()
        if self._scheduler is not None:
            logger.info("stopping the consolidation scheduler for %s%s", self.home,
                        " (waiting for the running consolidation)" if wait and self.busy else "")
        self._shutdown(wait=wait)

    def cancel(self) -> None:
        """Ask a running consolidation (the default `run`) to stop at its next step."""
        self._cancel.set()

    def _shutdown(self, *, wait: bool) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=wait)
        with _REGISTRY_LOCK:
            if _REGISTRY.get(self.home) is self:
                del _REGISTRY[self.home]

    # ------------------------------------------------------------------- queries

    @property
    def running(self) -> bool:
        """Whether the scheduler is started (jobs may fire)."""
        return self._scheduler is not None and self._scheduler.running

    @property
    def busy(self) -> bool:
        """Whether a consolidation is running in this process right now."""
        return self._run_lock.locked()

    @property
    def jobs(self) -> list[Job]:
        """This home's APScheduler jobs (empty when stopped)."""
        if self._scheduler is None:
            return []
        ids = set(self._job_ids.values())
        return [job for job in self._scheduler.get_jobs() if job.id in ids]

    def next_run_times(self) -> dict[str, datetime | None]:
        """``{kind: next fire time}`` for each job: cron, interval, check, threshold."""
        kinds = {job_id: kind for kind, job_id in self._job_ids.items()}
        return {kinds[job.id]: job.next_run_time for job in self.jobs}

    @property
    def history(self) -> list[RunRecord]:
        """The most recent attempts, oldest first (at most `HISTORY_SIZE`)."""
        with self._state_lock:
            return list(self._history)

    @property
    def last_report(self) -> Any:
        """The report of the last completed run, or None."""
        for record in reversed(self.history):
            if record.outcome == "completed":
                return record.report
        return None

    # ---------------------------------------------------------------------- runs

    def run_now(self) -> RunRecord:
        """Consolidate now, in the calling thread, unless a run is already in progress.

        Never raises for a failed run: the error is logged and recorded like a scheduled
        one, and the returned record says what happened.
        """
        record = self._run("manual")
        assert record is not None  # only threshold runs can decide there is nothing to do
        return record

    def _consolidate(self) -> Any:
        return self.memory.consolidate(progress=False, cancel_event=self._cancel)

    def _slot(self, kind: str) -> str:
        """The fire time this `kind` job is firing for (the same text in every process)."""
        now = _now()
        if kind == "interval":
            period = self.config.interval_minutes * 60.0
            return datetime.fromtimestamp(math.floor(now.timestamp() / period) * period, UTC).isoformat()
        trigger = self._triggers[kind]  # cron or writer: the latest fire time not after now
        at = trigger.get_next_fire_time(None, now - timedelta(seconds=CATCH_UP_S))
        latest = at
        while at is not None and at <= now:
            latest = at
            at = trigger.get_next_fire_time(at, at + timedelta(microseconds=1))
        return (latest or now).astimezone(UTC).isoformat()

    def _claimed_elsewhere(self, kind: str) -> bool:
        """With a Postgres journal: True when another scheduler process claimed this fire."""
        if self._slots_url is None or kind not in ("cron", "interval", "writer"):
            return False
        slot = self._slot(kind)
        if claim_slot(self._slots_url, kind, slot):
            logger.info("claimed the %s slot %s for %s", kind, slot, self.home)
            return False
        logger.info("the %s slot %s was claimed by another process; skipping", kind, slot)
        self._record(RunRecord(kind, "elsewhere", _now(), _now()))
        return True

    def _fire(self, kind: str) -> None:
        """Entry point of every job (through `_run_job`)."""
        try:
            if self._claimed_elsewhere(kind):
                return
        except Exception:  # the database is down: this fire is lost, the next one tries again
            logger.exception("could not claim the %s slot for %s; skipping this fire", kind, self.home)
            return
        if kind == "check":
            self._check_threshold()
        elif kind == "writer":  # a ReST-EM round; single flight with the consolidations
            self._run("writer", fn=lambda: self.memory.improve_writer(rounds=1, progress=False,
                                                                      cancel_event=self._cancel))
        elif kind == "threshold":
            self._run("threshold", only_if_due=True)
        else:
            self._run(kind)

    def _run(self, trigger: str, *, only_if_due: bool = False, fn: Callable[[], Any] | None = None) -> RunRecord | None:
        started = _now()
        if not self._run_lock.acquire(blocking=False):
            logger.info("consolidation already running; skipping (%s trigger)", trigger)
            return self._record(RunRecord(trigger, "busy", started, _now()))
        try:
            # A threshold run was scheduled by a probe; a run that ended meanwhile (cron,
            # another process) may have taken those interactions already.
            if only_if_due and not self._threshold_due():
                logger.debug("threshold no longer reached; nothing to do")
                return None
            logger.info("consolidation starting (%s trigger) for %s", trigger, self.home)
            try:
                report = (fn or self._run_fn)()
            except Exception as exc:  # a failed run must not take the daemon down
                logger.exception("consolidation (%s trigger) failed; the scheduler keeps running", trigger)
                record = RunRecord(trigger, "error", started, _now(), error=f"{type(exc).__name__}: {exc}")
            else:
                record = RunRecord(trigger, "completed", started, _now(), report=report)
                logger.info("consolidation (%s trigger) finished: verdict=%s version=%s reason=%s",
                            trigger, record.verdict, getattr(report, "version", None),
                            getattr(report, "reason", None))
            # Whatever happened, the threshold counts interactions that arrive from now on.
            n = self._count_new()
            if n is not None:
                with self._state_lock:
                    self._baseline = n
            return self._record(record)
        finally:
            self._run_lock.release()

    def _check_threshold(self) -> None:
        """The probe job: schedule a threshold run once enough new interactions arrived."""
        if self.busy:  # the probe after the run will look again
            return
        arrived = self._arrived_since_last_run()
        scheduler = self._scheduler
        if arrived is None or scheduler is None or arrived < (self.config.min_new_interactions or 0):
            return
        logger.info("%d new interactions since the last run reached the threshold (%d): scheduling a "
                    "consolidation", arrived, self.config.min_new_interactions)
        # A one-off job rather than running here: see the module docstring. Same id +
        # replace_existing, so repeated probes before it runs still make one run.
        scheduler.add_job(_JOB_FUNC, trigger="date", args=(self.home, "threshold"),
                          id=self._job_ids["threshold"], name=f"consolidate {self.home} (threshold)",
                          replace_existing=True, misfire_grace_time=None)

    def _threshold_due(self) -> bool:
        arrived = self._arrived_since_last_run()
        need = self.config.min_new_interactions
        return arrived is not None and need is not None and arrived >= need

    def _arrived_since_last_run(self) -> int | None:
        """New interactions beyond those left new by the last run (None: cannot count)."""
        n = self._count_new()
        if n is None:
            return None
        with self._state_lock:
            # Fewer than at the last run: someone (another process, forget()) took some.
            self._baseline = min(self._baseline, n)
            return n - self._baseline

    def _count_new(self) -> int | None:
        """New interactions in the home, from the journal's per-status counts (one SQL query)."""
        try:
            counts = self.memory.status()["by_namespace"]
        except Exception:  # e.g. the memory was closed under us: skip this probe, keep running
            logger.warning("could not count new interactions in %s", self.home, exc_info=True)
            return None
        return sum(int(by_status.get("new", 0)) for by_status in counts.values())

    def _record(self, record: RunRecord) -> RunRecord:
        with self._state_lock:
            self._history.append(record)
        return record

    # ------------------------------------------------------------------- helpers

    @staticmethod
    def _build_triggers(config: ScheduleConfig) -> dict[str, BaseTrigger]:
        triggers: dict[str, BaseTrigger] = {}
        if config.cron is not None:
            try:
                triggers["cron"] = CronTrigger.from_crontab(config.cron)
            except ValueError as exc:
                raise ConfigError("schedule.cron", config.cron, str(exc)) from exc
        if config.interval_minutes is not None:
            triggers["interval"] = IntervalTrigger(seconds=config.interval_minutes * 60.0)
        if config.min_new_interactions is not None:
            triggers["check"] = IntervalTrigger(seconds=config.check_seconds)
        if config.writer_cron is not None:
            try:
                triggers["writer"] = CronTrigger.from_crontab(config.writer_cron)
            except ValueError as exc:
                raise ConfigError("schedule.writer_cron", config.writer_cron, str(exc)) from exc
        return triggers

    def _make_jobstore(self) -> Any:
        url = self.config.jobstore_url
        if url is None:
            return MemoryJobStore()
        if url == "default":
            url = f"sqlite:///{Path(self.home) / JOBSTORE_FILENAME}"
        return SQLAlchemyJobStore(url=url, tablename=self._table)

    def _install_jobs(self) -> None:
        assert self._scheduler is not None
        for kind, job_id in self._job_ids.items():
            trigger = self._triggers.get(kind)
            if trigger is None:
                # A pending one-off threshold run is kept while the threshold is configured.
                if kind == "threshold" and "check" in self._triggers:
                    continue
                try:
                    self._scheduler.remove_job(job_id)
                    logger.info("removed stored %s job for %s: no longer configured", kind, self.home)
                except JobLookupError:
                    pass
                continue
            spec: dict[str, Any] = {
                "func": _JOB_FUNC,
                "args": (self.home, kind),
                # APScheduler wants whole seconds; a late probe is harmless, a skipped one too.
                "misfire_grace_time": (CATCH_UP_S if kind in ("cron", "interval", "writer")
                                       else max(5, math.ceil(2 * self.config.check_seconds))),
                "max_instances": 1,
                "coalesce": True,
            }
            existing = self._scheduler.get_job(job_id)
            if existing is not None and _same_job(existing, trigger, spec):
                logger.info("kept stored %s job for %s (next run %s)", kind, self.home, existing.next_run_time)
                continue
            self._scheduler.add_job(trigger=trigger, id=job_id, name=f"consolidate {self.home} ({kind})",
                                    replace_existing=True, **spec)


def _same_job(job: Job, trigger: BaseTrigger, spec: dict[str, Any]) -> bool:
    """Whether a stored job already does what `spec` asks (so its next fire time can be kept)."""

    def key(t: BaseTrigger) -> tuple[str, str]:
        # str() shows the schedule without an interval's start date, which differs per start.
        return type(t).__name__, f"{t} {getattr(t, 'timezone', '')}"

    return (
        key(job.trigger) == key(trigger)
        and job.func_ref == spec["func"]
        and tuple(job.args) == spec["args"]
        and job.misfire_grace_time == spec["misfire_grace_time"]
        and job.max_instances == spec["max_instances"]
        and job.coalesce == spec["coalesce"]
    )


def run_forever(
    memory_or_home: SealMemory | str | os.PathLike[str],
    config: ScheduleConfig | None = None,
    *,
    stop_event: threading.Event | None = None,
) -> int:
    """The ``seal-agent schedule`` daemon: consolidate on schedule until told to stop.

    Blocks until SIGINT/SIGTERM (handled only when called from the main thread) or
    `stop_event` is set. The first signal stops firing jobs and waits for a running
    consolidation to finish; a second one cancels it (nothing is committed).

    Args:
        memory_or_home: An open `SealMemory` (left open), or a home directory (opened
            with its ``config.toml`` and closed on return).
        config: When to run; default the memory's ``[schedule]`` config section.
        stop_event: Set it to stop, e.g. from another thread.

    Returns:
        0, the process exit status.

    Raises:
        ConfigError: No trigger configured (cron, interval_minutes, min_new_interactions).
    """
    from seal_agent.seal_memory import SealMemory

    if config is not None:
        _check_triggers(config)  # before opening anything
    owned = not isinstance(memory_or_home, SealMemory)
    memory = SealMemory(memory_or_home) if owned else memory_or_home
    try:
        scheduler = ConsolidationScheduler(memory, config if config is not None else memory.config.schedule)
        stop = stop_event if stop_event is not None else threading.Event()
        signals_seen = 0

        def on_signal(signum: int, frame: Any) -> None:
            nonlocal signals_seen
            signals_seen += 1
            name = signal.Signals(signum).name
            if signals_seen == 1:
                logger.info("%s received: stopping after the running consolidation (send again to cancel it)",
                            name)
                stop.set()
            else:
                logger.warning("%s received again: cancelling the running consolidation", name)
                scheduler.cancel()

        previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():  # signal.signal() demands it
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            scheduler.start()
            # A timed wait keeps the loop responsive even where a signal does not wake Event.wait().
            while not stop.wait(0.5):
                pass
        finally:
            scheduler.stop(wait=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info("consolidation scheduler for %s stopped", scheduler.home)
    finally:
        if owned:
            memory.close()
    return 0
