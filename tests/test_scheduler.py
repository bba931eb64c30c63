"""The scheduler fires on interval and on the new-interaction threshold.

A real APScheduler `BackgroundScheduler` throughout; the only stand-in is the `run`
callable (or ``mem.consolidate``), replaced by a recorder so no model is trained.
Waits poll with generous timeouts; nothing asserts how long anything took.
"""

from __future__ import annotations

import logging
import queue
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from seal_agent import SealMemory
from seal_agent.config import ScheduleConfig
from seal_agent.errors import ConfigError, SealAgentError
from seal_agent.scheduler import ConsolidationScheduler, run_forever

TICK_MIN = 0.005  # interval_minutes giving a 0.3 s interval
TIMEOUT_S = 20.0


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Recorder:
    """A `run` callable that counts calls and the most runs ever active at once."""

    def __init__(self, *, delay: float = 0.0, fail_first: int = 0) -> None:
        self.delay = delay
        self.fail_first = fail_first
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        with self._lock:
            self.calls += 1
            n = self.calls
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if n <= self.fail_first:
                raise RuntimeError("boom")
            time.sleep(self.delay)
            return SimpleNamespace(verdict="skipped", reason="recorded", version=None, run_id=f"run-{n}",
                                   kwargs=kwargs)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def make(mem: SealMemory) -> Iterator[Callable[..., ConsolidationScheduler]]:
    """Build and start schedulers on `mem`; every one is stopped at teardown."""
    started: list[ConsolidationScheduler] = []

    def _make(run: Callable[[], Any] | None = None, **schedule: Any) -> ConsolidationScheduler:
        schedule.setdefault("jobstore_url", None)
        sched = ConsolidationScheduler(mem, ScheduleConfig(**schedule), run=run)
        sched.start()
        started.append(sched)
        return sched

    yield _make
    for sched in started:
        sched.stop(wait=True)


def log_n(mem: SealMemory, n: int, tag: str) -> None:
    for i in range(n):
        mem.log([{"role": "user", "content": f"fact {tag} {i}"}, {"role": "assistant", "content": "noted"}])


def test_interval_fires_repeatedly_from_the_sqlite_jobstore(mem: SealMemory, make: Any) -> None:
    rec = Recorder()
    sched = make(rec, interval_minutes=TICK_MIN, jobstore_url="default")  # jobs pickled in SQLite
    assert wait_until(lambda: rec.calls >= 2)
    assert sched.running
    history = sched.history
    assert {r.trigger for r in history} == {"interval"}
    assert all(r.outcome == "completed" and r.verdict == "skipped" for r in history)
    assert sched.last_report.run_id.startswith("run-")


def test_threshold_fires_once_enough_new_interactions_arrived(mem: SealMemory, make: Any) -> None:
    rec = Recorder()
    log_n(mem, 2, "a")
    sched = make(rec, min_new_interactions=3, check_seconds=0.05)
    time.sleep(0.5)  # several probes below the threshold
    assert rec.calls == 0

    log_n(mem, 1, "b")
    assert wait_until(lambda: rec.calls >= 1)
    assert sched.history[-1].trigger == "threshold"

    # The recorder consolidates nothing, so 3 interactions stay new; they were tried
    # already, so the threshold waits for 3 *more* instead of firing again and again.
    time.sleep(0.5)
    assert rec.calls == 1
    log_n(mem, 3, "c")
    assert wait_until(lambda: rec.calls >= 2)


def test_runs_never_overlap(mem: SealMemory, make: Any) -> None:
    rec = Recorder(delay=0.3)
    log_n(mem, 1, "a")
    sched = make(rec, interval_minutes=TICK_MIN, min_new_interactions=1, check_seconds=0.05)

    def overlapped() -> bool:
        sched.run_now()  # from this thread, racing the scheduled runs
        return rec.calls >= 3 and any(r.outcome == "busy" for r in sched.history)

    assert wait_until(overlapped)
    assert rec.max_active == 1


def test_a_failing_run_is_logged_and_the_scheduler_keeps_going(
    mem: SealMemory, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="seal_agent.scheduler")
    rec = Recorder(fail_first=2)
    sched = make(rec, interval_minutes=TICK_MIN)
    assert wait_until(lambda: sched.last_report is not None)
    errors = [r for r in sched.history if r.outcome == "error"]
    assert [r.error for r in errors] == ["RuntimeError: boom"] * 2
    assert sched.running
    assert any(r.exc_info is not None for r in caplog.records)  # traceback logged


def test_item5_scheduler_gets_past_a_run_that_keeps_failing(
    mem: SealMemory, make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose checkpoint always fails used to be resumed by every scheduled run,
    forever. Now it is abandoned after consolidation.max_attempts (3) and the next
    scheduled run starts a fresh one; the record says so for `seal-agent status`."""
    from seal_agent.consolidation import _Run

    original = _Run.self_edit
    poisoned: list[str] = []

    def failing(self: _Run, state: dict) -> dict:
        if not poisoned:
            poisoned.append(state["run_id"])
        if state["run_id"] == poisoned[0]:
            raise RuntimeError("poisoned checkpoint")
        return original(self, state)

    monkeypatch.setattr(_Run, "self_edit", failing)
    log_n(mem, 1, "a")

    def run() -> Any:  # the real consolidate, stopped before training to stay fast
        return mem.consolidate(dry_run=True, progress=False, consolidation={"teacher": "none"},
                               selfedit={"strategies": ["raw"]})

    sched = make(run, interval_minutes=TICK_MIN)
    assert wait_until(lambda: sched.last_report is not None)
    sched.stop(wait=True)
    tried = [r for r in sched.history if r.outcome != "busy"]
    assert [r.outcome for r in tried[:4]] == ["error", "error", "error", "completed"]
    assert "attempt 3 of 3" in (tried[2].error or "") and "abandoned" in (tried[2].error or "")
    assert tried[3].report.run_id != poisoned[0] and "dry run" in tried[3].report.reason
    st = mem.status()["consolidation"]
    assert st["abandoned"][-1]["run_id"] == poisoned[0] and "poisoned checkpoint" in st["abandoned"][-1]["reason"]
    assert st["consecutive_failures"] == 0 and st["last"]["outcome"] == "skipped"


def test_stop_waits_for_the_running_consolidation(mem: SealMemory) -> None:
    started, finished = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.3)
        finished.set()
        return "done"

    sched = ConsolidationScheduler(mem, ScheduleConfig(interval_minutes=TICK_MIN, jobstore_url=None), run=slow)
    sched.start()
    try:
        assert started.wait(TIMEOUT_S)
    finally:
        sched.stop(wait=True)
    assert finished.is_set()
    assert not sched.running


def test_stop_with_cancel_reaches_consolidate(mem: SealMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    seen: list[Any] = []

    def consolidate(*, progress: bool, cancel_event: threading.Event) -> None:
        started.set()
        seen.append((progress, cancel_event.wait(TIMEOUT_S)))

    monkeypatch.setattr(mem, "consolidate", consolidate)
    sched = ConsolidationScheduler(mem, ScheduleConfig(interval_minutes=TICK_MIN, jobstore_url=None))
    sched.start()
    assert started.wait(TIMEOUT_S)
    sched.stop(wait=True, cancel=True)
    assert seen == [(False, True)]  # no progress bars in the background; cancel event set


def _stored_jobs(home: Path) -> list[str]:
    with sqlite3.connect(home / "scheduler.sqlite3") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert len(tables) == 1 and tables[0].startswith("seal_jobs_")
        return sorted(i for (i,) in db.execute(f"SELECT id FROM {tables[0]}"))


def test_jobs_persist_across_restarts_one_copy_each(mem: SealMemory) -> None:
    cfg = ScheduleConfig(cron="0 3 * * *", interval_minutes=60, min_new_interactions=5)  # jobstore "default"
    first = ConsolidationScheduler(mem, cfg, run=Recorder())
    first.start()
    try:
        before = first.next_run_times()
        assert set(before) == {"cron", "interval", "check"}
        with pytest.raises(SealAgentError, match="already running"):
            ConsolidationScheduler(mem, cfg, run=Recorder()).start()  # one per home per process
    finally:
        first.stop()
    ids = _stored_jobs(mem.home)
    assert len(ids) == 3

    second = ConsolidationScheduler(mem, cfg, run=Recorder())
    second.start()
    try:
        assert second.next_run_times() == before  # the stored jobs themselves, not fresh ones
        assert len(second.jobs) == 3
    finally:
        second.stop()
    assert _stored_jobs(mem.home) == ids

    third = ConsolidationScheduler(mem, ScheduleConfig(cron="0 3 * * *"), run=Recorder())
    third.start()
    third.stop()
    assert _stored_jobs(mem.home) == [i for i in ids if i.endswith("-cron")]  # stale triggers removed


def test_missing_or_bad_trigger_is_a_config_error(mem: SealMemory) -> None:
    with pytest.raises(ConfigError, match="set cron, interval_minutes or min_new_interactions") as exc:
        ConsolidationScheduler(mem, ScheduleConfig())
    assert exc.value.field == "schedule"
    with pytest.raises(ConfigError, match="set cron"):
        run_forever(mem, ScheduleConfig())
    with pytest.raises(ConfigError) as exc:
        ConsolidationScheduler(mem, ScheduleConfig(cron="99 * * * *"))
    assert exc.value.field == "schedule.cron"


def test_start_scheduler_runs_consolidate(mem: SealMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(mem, "consolidate", rec)
    sched = mem.start_scheduler(interval_minutes=TICK_MIN, jobstore_url=None)
    assert wait_until(lambda: rec.calls >= 1)
    mem.stop_scheduler()
    assert not sched.running
    assert sched.last_report.kwargs["progress"] is False


def test_run_forever_returns_when_stop_event_is_set(mem: SealMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(mem, "consolidate", rec)
    log_n(mem, 1, "a")
    stop = threading.Event()
    rc: list[int] = []
    cfg = ScheduleConfig(min_new_interactions=1, check_seconds=0.05, jobstore_url=None)
    t = threading.Thread(target=lambda: rc.append(run_forever(mem, cfg, stop_event=stop)))  # not main: no signals
    t.start()
    try:
        assert wait_until(lambda: rec.calls >= 1)  # it is running
    finally:
        stop.set()
        t.join(TIMEOUT_S)
    assert rc == [0]


def test_run_forever_exits_0_on_sigterm(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import logging, sys
        from seal_agent.config import ScheduleConfig
        from seal_agent.scheduler import run_forever
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        sys.exit(run_forever({str(tmp_path / "home")!r}, ScheduleConfig(cron="0 3 * * *")))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60  # interpreter + chromadb import on a busy CPU
        while not any("scheduler started" in line for line in seen):
            assert proc.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                pass
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "home" / "scheduler.sqlite3").exists()  # the home's own config: default jobstore
