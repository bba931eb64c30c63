"""Many processes on one memory: a Postgres journal (real server on loopback, the
`postgres` fixture) and a Chroma server (`chroma_server`). Each child process stands for
an agent worker, possibly on another host: separate homes where the test says so, so
that only the database -- not a file lock -- can be what coordinates them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import waits
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.errors import BackendUnavailableError, ConfigError, StorageError

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).parent)


def _config(home: Path, url: str, collection: str | None = None) -> None:
    """home/config.toml naming the shared journal (memory.journal_url) and, on the shared
    Chroma server, a collection of this test's own."""
    home.mkdir(parents=True, exist_ok=True)
    coll = collection or f"mp_{uuid.uuid4().hex[:10]}"
    (home / "config.toml").write_text(f'[memory]\njournal_url = "{url}"\ncollection = "{coll}"\n'
                                      f'facts_collection = "{coll}_facts"\n')


def _spawn(script: str, **values: Any) -> subprocess.Popen[str]:
    code = textwrap.dedent(script).format(tests=repr(TESTS), **{k: repr(v) for k, v in values.items()})
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_ready(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "READY":
            p.kill()
            raise AssertionError(f"child did not start: {line!r} {p.stderr.read() if p.stderr else ''}")


def _finish(p: subprocess.Popen[str]) -> str:
    # No clock: under load (3-10 on 2 cores) these children take many times longer; they
    # are waited for as long as they (or their children) keep using CPU (tests/waits.py).
    out, err = waits.communicate(p)
    assert p.returncode == 0, err[-3000:]
    return out


_WRITER = """
    import os, sys, time
    sys.path.insert(0, {tests})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    m = SealMemory({home}, embeddings=HashEmbeddings(), chroma_url={chroma}, model="tiny-random")
    assert type(m._journal).__name__ == "PostgresJournal"  # chosen by memory.journal_url
    print("READY", flush=True)
    sys.stdin.readline()
    with open({out}, "w") as f:
        for i in range({n}):
            id_ = m.log([{{"role": "user", "content": f"writer {w} note {{i}} w{w}n{{i}}"}},
                         {{"role": "assistant", "content": "noted"}}], namespace=("users", f"u{{i % 5}}"))
            f.write(id_ + "\\n")
            f.flush()
    m.flush()
    while not os.path.exists({committed}):  # the consolidating process commits meanwhile
        time.sleep(0.05)
    reply = m.chat_model(max_new_tokens=2).invoke("hi")  # what this process serves now
    print("SERVES", reply.response_metadata.get("adapter"), flush=True)
    m.close()  # waits until its index worker drained the queue
"""

_RECALLER = """
    import os, sys
    sys.path.insert(0, {tests})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    m = SealMemory({home}, embeddings=HashEmbeddings(), chroma_url={chroma}, model="tiny-random")
    print("READY", flush=True)
    sys.stdin.readline()
    calls = hits = 0
    while not os.path.exists({stop}):
        hits += len(m.recall("writer note", namespace=("users", "u0"), k=5))
        calls += 1
    reply = m.chat_model(max_new_tokens=2).invoke("hi")
    m.close()
    print(calls, hits, reply.response_metadata.get("adapter"), flush=True)
"""

_LOAD_CONSOLIDATOR = """
    import json, sys, time
    sys.path.insert(0, {tests})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    m = SealMemory({home}, embeddings=HashEmbeddings(), chroma_url={chroma}, model="tiny-random")
    print("READY", flush=True)
    sys.stdin.readline()
    time.sleep(2)  # while the writers write
    r = m.consolidate(progress=False, selfedit={{"strategies": ["raw"]}}, consolidation={{"teacher": "none"}},
                      gate={{"allow_unverified": True}}, train={{"max_steps": 2, "lora_rank": 4, "rehearsal_size": 0}})
    open({committed}, "w").close()
    m.close()
    print(json.dumps({{"verdict": r.verdict, "reason": r.reason, "version": r.version,
                      "learned": r.counts.get("interactions")}}), flush=True)
"""


def test_three_writers_and_a_reader_on_postgres_and_chroma_server(
        postgres: Any, chroma_server: str, tmp_path: Path) -> None:
    url = postgres.create_database("mp")
    home = tmp_path / "shared-home"  # one home (a shared volume), one journal, one Chroma server
    _config(home, url)
    n = 1000
    outs = [tmp_path / f"acked-{w}.txt" for w in range(3)]
    committed = tmp_path / "committed"
    writers = [_spawn(_WRITER, home=str(home), chroma=chroma_server, out=str(outs[w]), n=n, w=w,
                      committed=str(committed)) for w in range(3)]
    stop = tmp_path / "stop"
    reader = _spawn(_RECALLER, home=str(home), chroma=chroma_server, stop=str(stop))
    consolidator = _spawn(_LOAD_CONSOLIDATOR, home=str(home), chroma=chroma_server, committed=str(committed))
    _wait_ready([*writers, reader, consolidator])
    for p in [*writers, reader, consolidator]:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    report = json.loads(_finish(consolidator).strip().splitlines()[-1])
    assert report["verdict"] == "committed" and report["learned"] > 0, report  # learned while they wrote
    served = [_finish(p).split("SERVES", 1)[1].strip() for p in writers]
    stop.touch()
    calls, hits, reader_serves = _finish(reader).split()
    assert int(calls) > 0 and int(hits) > 0  # the reader recalled while the writers wrote
    # every process serves the new CURRENT afterwards
    assert all(report["version"] in adapter for adapter in [*served, reader_serves]), (served, reader_serves)

    acked = [line for o in outs for line in o.read_text().split()]
    assert len(acked) == 3 * n and len(set(acked)) == 3 * n  # every call acknowledged, no id twice
    with SealMemory(home, embeddings=HashEmbeddings(), chroma_url=chroma_server) as m:
        stored = [it.id for it in m._journal.list()]
        assert sorted(stored) == sorted(acked)  # nothing lost, no duplicates
        assert m._journal.backlog() == 0
        in_chroma = set(m._index.present(acked))
        assert in_chroma == set(acked)  # every acknowledged id is recallable
        for w, i in [(0, 0), (1, n // 2), (2, n - 1)]:
            top = m.recall(f"writer {w} note {i} w{w}n{i}", namespace=("users", f"u{i % 5}"), k=1)
            assert top and top[0].text.startswith(f"User: writer {w} note {i} ")


_CONSOLIDATOR = """
    import json, os, sys, time
    sys.path.insert(0, {tests})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    m = SealMemory({home}, embeddings=HashEmbeddings(), chroma_url={chroma}, model="tiny-random")
    open({mine}, "w").close()
    while not all(os.path.exists(p) for p in {all}):  # both call consolidate at the same moment
        time.sleep(0.01)
    r = m.consolidate(progress=False, selfedit={{"strategies": ["raw"]}}, consolidation={{"teacher": "none"}},
                      gate={{"allow_unverified": True}}, train={{"max_steps": 2, "lora_rank": 4}})
    m.close()
    print(json.dumps({{"verdict": r.verdict, "reason": r.reason, "run_id": r.run_id}}), flush=True)
"""


def test_two_hosts_consolidate_at_once_one_runs(postgres: Any, chroma_server: str, tmp_path: Path) -> None:
    """Two homes (two hosts) share one Postgres journal and one Chroma server: the
    advisory lock, not a file, lets one consolidation run; the other is skipped. The run
    checkpoints in Postgres."""
    url = postgres.create_database("cons")
    homes = [tmp_path / "host-a", tmp_path / "host-b"]
    coll = f"mp_{uuid.uuid4().hex[:10]}"
    for h in homes:
        _config(h, url, coll)
    with SealMemory(homes[0], embeddings=HashEmbeddings(), chroma_url=chroma_server, model="tiny-random") as m:
        for q, a in [("What is the capital of Zorbia?", "Quexlin."), ("Who painted the blue moon?", "Ana Verr.")]:
            m.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    flags = [str(tmp_path / f"at-{i}") for i in range(2)]
    procs = [_spawn(_CONSOLIDATOR, home=str(h), chroma=chroma_server, mine=flags[i], all=flags)
             for i, h in enumerate(homes)]
    reports = [json.loads(_finish(p).strip().splitlines()[-1]) for p in procs]
    skipped = [r for r in reports if r["reason"] == "another consolidation is running"]
    ran = [r for r in reports if r["reason"] != "another consolidation is running"]
    assert len(skipped) == 1 and len(ran) == 1, reports
    assert ran[0]["verdict"] == "committed", reports
    import psycopg

    with psycopg.connect(url) as conn:
        threads = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    assert ran[0]["run_id"] in threads  # LangGraph's PostgresSaver holds the run's checkpoints
    # forget reaches those checkpoints too: the run learned the forgotten interaction
    with SealMemory(homes[0], embeddings=HashEmbeddings(), chroma_url=chroma_server, model="tiny-random") as m:
        report = m.forget(namespace=("default",))
    assert report.checkpoint_threads >= 1 and not any("Postgres" in p for p in report.pending), report
    with psycopg.connect(url) as conn:
        threads = {r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        blobs = b"".join(bytes(r[0]) for r in conn.execute("SELECT blob FROM checkpoint_blobs") if r[0])
    assert ran[0]["run_id"] not in threads and b"Quexlin" not in blobs


_SCHEDULER = """
    import sys, time
    sys.path.insert(0, {tests})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    from seal_agent.config import ScheduleConfig
    from seal_agent.scheduler import ConsolidationScheduler
    m = SealMemory({home}, embeddings=HashEmbeddings(), chroma_url={chroma}, model="tiny-random")
    s = ConsolidationScheduler(m, ScheduleConfig(interval_minutes={minutes}), run=lambda: "ran")
    print("READY", flush=True)
    sys.stdin.readline()
    s.start()
    time.sleep({seconds})
    s.stop()
    m.close()
    for r in s.history:
        print(r.trigger, r.outcome, flush=True)
"""


def test_scheduler_in_three_processes_fires_once_per_slot(postgres: Any, chroma_server: str, tmp_path: Path) -> None:
    url = postgres.create_database("sched")
    homes = [tmp_path / f"host-{i}" for i in range(3)]
    coll = f"mp_{uuid.uuid4().hex[:10]}"
    for h in homes:
        _config(h, url, coll)
    procs = [_spawn(_SCHEDULER, home=str(h), chroma=chroma_server, minutes=1 / 60, seconds=5.0) for h in homes]
    _wait_ready(procs)
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    records = [_finish(p).split("\n") for p in procs]
    outcomes = [[line.split()[1] for line in rs if line.strip()] for rs in records]
    from seal_agent.coordination import slot_claims

    claims = slot_claims(url, "interval")
    ran = sum(o.count("completed") for o in outcomes)
    assert len(claims) >= 2, (claims, outcomes)
    assert ran == len(claims), (claims, outcomes)  # one run per fire time, among three schedulers
    assert sum(o.count("elsewhere") for o in outcomes) >= len(claims)  # the others saw it claimed


def test_postgres_down_mid_load_fails_clearly_and_loses_nothing(tmp_path: Path) -> None:
    """The server stops (immediate shutdown: a crash) while a thread logs: log() raises
    BackendUnavailableError while it is down, every acknowledged id is there after restart."""
    from pgcluster import start_cluster

    cluster = start_cluster()
    if cluster is None:
        pytest.skip("PostgreSQL is not installed")
    try:
        url = cluster.create_database("outage")
        mem = SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random", journal_url=url)
        acked: list[str] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                try:
                    acked.append(mem.log([{"role": "user", "content": f"event {i}"},
                                          {"role": "assistant", "content": "ok"}]))
                except (BackendUnavailableError, StorageError) as exc:
                    failures.append(exc)
                    time.sleep(0.05)
                i += 1

        t = threading.Thread(target=load)
        t.start()
        while len(acked) < 50:
            time.sleep(0.01)
        cluster.stop("immediate")
        before_failures = len(failures)
        deadline = time.monotonic() + 30
        while len(failures) <= before_failures + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(BackendUnavailableError) as err:
            mem.log([{"role": "user", "content": "while down"}, {"role": "assistant", "content": "?"}])
        assert url.rsplit("/", 1)[-1] in str(err.value) and "nothing of this call was acknowledged" in str(err.value)
        cluster.start()
        n_at_restart = len(acked)
        deadline = time.monotonic() + 30
        while len(acked) < n_at_restart + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        t.join(30)
        assert len(acked) >= n_at_restart + 20  # service resumed by itself
        assert all(isinstance(f, BackendUnavailableError) for f in failures)
        stored = {it.id for it in mem._journal.list()}
        assert set(acked) <= stored  # every acknowledged write survived the crash
        mem.close()
    finally:
        cluster.destroy()


_HELD_RUN = """
    import sys, time
    sys.path.insert(0, {tests})
    from fakes import HashEmbeddings
    import seal_agent.consolidation as c
    from seal_agent import SealMemory

    def stall(self, state):
        print("IN train", flush=True)
        time.sleep(600)  # the parent kills us here

    c._Run.train = stall
    m = SealMemory({home}, embeddings=HashEmbeddings(), model="tiny-random")
    m.consolidate(progress=False, selfedit={{"strategies": ["raw"]}}, consolidation={{"teacher": "none"}},
                  gate={{"allow_unverified": True}}, train={{"max_steps": 2, "lora_rank": 4}})
"""


def test_kill_9_of_the_consolidating_process_next_run_resumes_from_postgres(postgres: Any, tmp_path: Path) -> None:
    """The consolidating process dies (SIGKILL) mid-run: the server frees the advisory
    lock with its connection, and the next consolidation resumes the run from its
    PostgresSaver checkpoints and commits it."""
    import signal

    from seal_agent.consolidation import pending_runs

    url = postgres.create_database("kill")
    home = tmp_path / "home"
    _config(home, url)
    raw: dict[str, Any] = {"selfedit": {"strategies": ["raw"]}, "consolidation": {"teacher": "none"},
                           "gate": {"allow_unverified": True}, "train": {"max_steps": 2, "lora_rank": 4}}
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as m:
        ids = [m.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
               for q, a in [("Capital of Zorbia?", "Quexlin."), ("Painter of the blue moon?", "Ana Verr.")]]
    proc = _spawn(_HELD_RUN, home=str(home))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "IN train", proc.stderr.read() if proc.stderr else ""
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as m:
        busy = m.consolidate(progress=False, **raw)
        assert busy.verdict == "skipped" and busy.reason == "another consolidation is running"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as m:
        [killed] = pending_runs(m)
        report = m.consolidate(progress=False, **raw)
        assert report.verdict == "committed", report.reason
        assert report.run_id == killed  # resumed, not started afresh
        assert {m.get(i).consolidated_version for i in ids} == {report.version}
        assert pending_runs(m) == []
    assert not (home / "consolidation" / "checkpoints.sqlite3").exists()  # the checkpoints are in Postgres


def test_a_second_embedded_index_on_one_postgres_journal_is_refused(postgres: Any, chroma_server: str,
                                                                     tmp_path: Path) -> None:
    """`indexed` means "in Chroma" for one Chroma: a second home with an embedded index
    would split the rows between the two indexes. Refused; a Chroma server is fine."""
    url = postgres.create_database("emb")
    first = SealMemory(tmp_path / "a", embeddings=HashEmbeddings(), model="tiny-random", journal_url=url)
    try:
        first.log([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])
        with pytest.raises(ConfigError) as err:
            SealMemory(tmp_path / "b", embeddings=HashEmbeddings(), model="tiny-random", journal_url=url)
        assert str(tmp_path / "a") in str(err.value) and "chroma_url" in str(err.value)
        again = SealMemory(tmp_path / "a", embeddings=HashEmbeddings(), model="tiny-random", journal_url=url)
        again.close()  # the same home (another process of it) is the same index
        with SealMemory(tmp_path / "c", embeddings=HashEmbeddings(), model="tiny-random", journal_url=url,
                        chroma_url=chroma_server) as served:
            assert served.get(first.list()[0].id) is not None
    finally:
        first.close()
