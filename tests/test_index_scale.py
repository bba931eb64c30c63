"""Issue 22, items 8, 9 and 10 (server down): many tenants' open files, recall after the
index folder was lost, and a Chroma server that dies and comes back.

Real parts: embedded Chroma in child processes with a lowered ``RLIMIT_NOFILE``, a real
`chroma run` on loopback that is killed and restarted, the journal in SQLite.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
import waits
from conftest import _free_port, start_chroma_server
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.config import MemoryConfig, SealConfig
from seal_agent.errors import BackendUnavailableError

TESTS = str(Path(__file__).parent)
ROOT = str(Path(__file__).parents[1])


def ex(user: str, answer: str = "ok") -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def run_child(code: str) -> dict:
    """Run `code` in a fresh interpreter (this tree's seal_agent, the tests' fakes), as long
    as it keeps working (tests/waits.py); its last stdout line is JSON."""
    prelude = f"import sys; sys.path[:0] = [{ROOT!r}, {TESTS!r}]\n"
    proc = waits.run([sys.executable, "-c", prelude + textwrap.dedent(code)], text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_for(condition, what: str, bound_s: float = 300.0):  # noqa: ANN001, ANN201
    """Poll `condition` until it returns something truthy (a generous bound against a hang,
    not a timing: the worker's back-off and a server restart take seconds, not minutes)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {bound_s}s")


# ------------------------------------------------------------- item 8: many tenants


def test_item8_many_namespaces_recall_with_bounded_open_files(tmp_path: Path) -> None:
    """320 tenants under a soft limit of 256 open files (Chroma alone used to keep ~4 per
    tenant open and fail with "Nothing found on disk" at ~25 here): every tenant's
    recall finds its own row and the open files stay bounded."""
    out = run_child(f"""
        import json, os, resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        from fakes import HashEmbeddings
        from seal_agent import SealMemory
        from seal_agent.memory import chroma

        def fds():
            try:
                return len(os.listdir("/proc/self/fd"))
            except OSError:  # not even one left to list them
                return 256

        n, wrong, errors, peak = 320, [], [], 0
        with SealMemory({str(tmp_path / "home")!r}, embeddings=HashEmbeddings(), model="tiny-random") as m:
            base = fds()
            ids = [m.log([{{"role": "user", "content": f"tenant {{i}} keeps the word w{{i}}"}},
                          {{"role": "assistant", "content": "ok"}}], namespace=("t", str(i))) for i in range(n)]
            for i in range(n):
                try:
                    got = [x.id for x in m.recall(f"word w{{i}}", namespace=("t", str(i)), k=1)]
                except Exception as exc:
                    errors.append(f"tenant {{i}}: {{type(exc).__name__}}: {{str(exc)[:300]}}")
                    got = None
                if got != [ids[i]]:
                    wrong.append(i)
                peak = max(peak, fds())
            # one recall over all 320 sub-namespaces: in chunks, the files released between them
            try:
                across = [x.id for x in m.recall("tenant 7 keeps the word w7", namespace=("t",),
                                                 include_descendants=True, k=10)]
            except Exception as exc:
                across = f"{{type(exc).__name__}}: {{str(exc)[:300]}}"
            peak = max(peak, fds())
            handles = len(m._index._shards)
            across_ok = isinstance(across, list) and ids[7] in across  # hashed words may tie
        cap = chroma.open_collections_cap(128) if hasattr(chroma, "open_collections_cap") else None
        print(json.dumps({{"wrong": wrong, "errors": errors[:3], "base": base, "peak": peak, "cap": cap,
                           "handles": handles, "across": across, "across_ok": across_ok}}))
    """)
    assert out["wrong"] == [] and out["errors"] == [], out
    assert out["across_ok"], out["across"]
    assert out["cap"] == 16  # 256 // 16: a sixteenth of the soft limit, below memory.max_open_collections
    # up to 8 files per loaded collection (read and write handles of 4 HNSW files), and slack
    assert out["peak"] <= out["base"] + 8 * out["cap"] + 64, out
    assert out["handles"] <= 128


def test_item8_out_of_file_descriptors_names_the_limit(tmp_path: Path) -> None:
    """When the process has no file descriptor left anyway, recall raises our StorageError
    naming `ulimit -n`, the soft limit and the setting, not Chroma's "Nothing found on
    disk"; once files are free again, the same recall works."""
    out = run_child(f"""
        import json, os, resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        from fakes import HashEmbeddings
        from seal_agent import SealMemory
        from seal_agent.errors import StorageError

        msg = kind = None
        with SealMemory({str(tmp_path / "home")!r}, embeddings=HashEmbeddings(), model="tiny-random") as m:
            m.log([{{"role": "user", "content": "warm up"}}, {{"role": "assistant", "content": "ok"}}])
            m.recall("warm up")
            m._worker.stop(timeout=30)  # so that this recall, not the worker, opens the new collection
            new = m.log([{{"role": "user", "content": "a new tenant's row"}}, {{"role": "assistant", "content": "ok"}}],
                        namespace=("new", "tenant"))
            hog = []
            try:
                while True:
                    hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            try:
                m.recall("new tenant row", namespace=("new", "tenant"))
            except Exception as exc:
                kind, msg = type(exc).__name__, str(exc)
            for fd in hog:
                os.close(fd)
            after = [x.id for x in m.recall("new tenant row", namespace=("new", "tenant"))]
        print(json.dumps({{"kind": kind, "msg": msg, "after": after, "new": new}}))
    """)
    assert out["kind"] == "StorageError", out
    assert "ulimit -n" in out["msg"] and "is 256" in out["msg"] and "memory.max_open_collections" in out["msg"]
    assert out["after"] == [out["new"]]


# --------------------------------------------- item 9: recall after chroma/ was lost


def _home_with_lost_index(home: Path) -> list[str]:
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as m:
        ids = [m.log(ex(f"ana's fact number {i} about quinces"), namespace=("users", "ana")) for i in range(5)]
        m.log(ex("bob's fact about quinces"), namespace=("users", "bob"))
        m.flush()
    shutil.rmtree(home / "chroma")  # the index is lost; the journal still marks every row indexed
    return ids


@pytest.mark.parametrize("starved_worker", [True, False])
def test_item9_first_recall_after_chroma_lost_returns_every_journaled_row(tmp_path: Path,
                                                                          starved_worker: bool) -> None:
    """A fresh process's first recall returns all 5 journaled rows, even while the
    background worker has not started re-indexing (starved: its startup reconcile is
    held back until the recall returned; before the fix it returned 0 of 5)."""
    home = tmp_path / "home"
    ids = _home_with_lost_index(home)
    out = run_child(f"""
        import json, threading
        from fakes import HashEmbeddings
        from seal_agent import SealMemory
        from seal_agent.memory import index

        recalled = threading.Event()
        if {starved_worker!r}:
            reconcile = index.IndexWorker.reconcile

            def starved(self):
                recalled.wait(120)  # the worker gets no CPU until the recall is done
                return reconcile(self)

            index.IndexWorker.reconcile = starved
        with SealMemory({str(home)!r}, embeddings=HashEmbeddings(), model="tiny-random") as m:
            got = [x.id for x in m.recall("quinces", namespace=("users", "ana"), k=10)]
            recalled.set()
        print(json.dumps({{"got": got}}))
    """)
    assert sorted(out["got"]) == sorted(ids)


def test_item9_recall_past_its_bound_says_how_many_rows_are_missing(tmp_path: Path) -> None:
    """With next to nothing allowed for indexing in the call (recall_index_timeout_s = 1 ns,
    over before the first batch: 0 is rejected by the config) and rows missing from the
    index, recall raises instead of answering from an incomplete index."""
    cfg = SealConfig(memory=MemoryConfig(recall_index_timeout_s=1e-9))
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random", config=cfg) as m:
        m._worker.stop(timeout=5)  # no background indexing
        m.log_many([{"messages": ex(f"row {i} about quinces"), "namespace": ["users", "ana"]} for i in range(3)])
        with pytest.raises(BackendUnavailableError, match=r"'users/ana'.*3 interactions logged before the call "
                                                          r"are not in the Chroma index.*recall_index_timeout_s"):
            m.recall("quinces", namespace=("users", "ana"))
        m.config.memory.recall_index_timeout_s = 60.0
        assert len(m.recall("quinces", namespace=("users", "ana"))) == 3


def test_item9_verify_reads_ids_only_one_tenant_never_waits_for_another(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding 2: before the startup reconcile ran, recall's check of a namespace
    (`_verify`) reads the ids the journal marks indexed, never the rows (it listed and
    parsed every row of the namespace), and holds no lock another tenant's check holds
    (one global lock made every tenant's first recall wait for the slowest one)."""
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random") as m:
        ana = [m.log(ex(f"ana's fact number {i} about quinces"), namespace=("users", "ana")) for i in range(5)]
        m.log(ex("bob's fact about quinces"), namespace=("users", "bob"))
        m.flush()
        worker = m._worker
        worker.stop(timeout=30)
        worker._reconciled.clear()  # as in a fresh process whose worker has not reconciled yet
        # Chroma lost three of ana's records; the journal still marks them indexed
        m._index.delete(ana[:3], dict.fromkeys(ana[:3], ("users", "ana")))

        def full_rows(*args: object, **kwargs: object) -> None:
            raise AssertionError("_verify loaded whole rows")

        used: list[tuple[object, bool]] = []
        indexed_ids_in = m._journal.indexed_ids_in

        def ids_only(namespace, *, include_descendants=False):  # noqa: ANN001, ANN202
            used.append((tuple(namespace), include_descendants))
            return indexed_ids_in(namespace, include_descendants=include_descendants)

        monkeypatch.setattr(m._journal, "list", full_rows)
        monkeypatch.setattr(m._journal, "unindexed_rows_in", full_rows)
        monkeypatch.setattr(m._journal, "indexed_ids_in", ids_only)
        # bob's check is held inside Chroma until released; ana's must not wait for it
        entered, release = threading.Event(), threading.Event()
        present = m._index.present

        def held_present(ids, namespaces=None):  # noqa: ANN001, ANN202
            if namespaces and ("users", "bob") in namespaces.values():
                entered.set()
                release.wait(120)
            return present(ids, namespaces)

        monkeypatch.setattr(m._index, "present", held_present)
        bob = threading.Thread(target=worker._verify, args=(("users", "bob"), False))
        bob.start()
        try:
            assert entered.wait(60), "bob's check never reached Chroma"
            ana_check = threading.Thread(target=worker._verify, args=(("users", "ana"), True))
            ana_check.start()
            ana_check.join(60)  # a bound, not a timing: with one lock it waits for `release`
            assert not ana_check.is_alive(), "ana's check waited for bob's"
        finally:
            release.set()
            bob.join(60)
        assert used == [(("users", "bob"), False), (("users", "ana"), True)]
        assert m._journal.unindexed_in(("users", "ana")) == 3  # queued again, the two held ones not
        monkeypatch.undo()
        got = [x.id for x in m.recall("quinces", namespace=("users", "ana"), k=10)]
        assert sorted(got) == sorted(ana)


def test_item9_recall_bound_starts_after_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding 2: `recall_index_timeout_s` bounds the indexing, not the check
    against Chroma before it: a check that takes longer than the bound (here a clock
    moved on by 1000 s inside it) still lets recall index the namespace's rows."""
    from seal_agent.memory import index as index_mod

    cfg = SealConfig(memory=MemoryConfig(recall_index_timeout_s=60.0))
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random", config=cfg) as m:
        m._worker.stop(timeout=30)
        m._worker._reconciled.clear()
        ids = [m.log(ex(f"row {i} about quinces"), namespace=("users", "ana")) for i in range(3)]
        now = [0.0]
        # the index module's clock only (it uses nothing else of `time`), not the process's
        monkeypatch.setattr(index_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
        verify = m._worker._verify

        def slow_verify(namespace, include_descendants):  # noqa: ANN001, ANN202
            verify(namespace, include_descendants)
            now[0] += 1000.0

        monkeypatch.setattr(m._worker, "_verify", slow_verify)
        got = [x.id for x in m.recall("quinces", namespace=("users", "ana"), k=10)]
        monkeypatch.undo()
        assert sorted(got) == sorted(ids)


# ---------------------------------------------------- item 10: Chroma server down


def test_item10_server_killed_recall_raises_our_error_naming_the_url_then_recovers(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_chroma_server(tmp_path / "server", port)
    cfg = SealConfig(memory=MemoryConfig(retry_initial_s=0.1, retry_max_s=0.5, close_timeout_s=0.5))
    try:
        with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), chroma_url=url, config=cfg) as m:
            first = m.log(ex("my dog is called Rex"), namespace=("users", "ana"))
            assert [x.id for x in m.recall("dog Rex", namespace=("users", "ana"))] == [first]
            server.kill()
            server.wait(30)
            # acknowledged by the journal; the caller's own indexing (read-your-writes) then meets the dead server
            second = m.log(ex("my dog Rex likes the beach"), namespace=("users", "ana"))
            with pytest.raises(BackendUnavailableError, match=f"Chroma server at {url}"):
                m.recall("dog Rex", namespace=("users", "ana"))
            with pytest.raises(BackendUnavailableError, match=f"Chroma server at {url}"):
                m.recall("dog Rex", namespace=("users",), include_descendants=True)  # the listing of collections
            report = m.forget(ids=[first])
            assert report.chroma_pending == 1 and url in " ".join(report.pending)
            # the background worker records why it cannot index, and keeps retrying
            err = wait_for(lambda: m._worker.last_error, "the worker's error")
            assert isinstance(err, BackendUnavailableError) and url in str(err)
            assert url in m.status()["last_index_error"]
            server = start_chroma_server(tmp_path / "server", port)
            got = wait_for(lambda: _recall_ids(m), "recall after the restart")
            assert got == [second]  # the forgotten one is gone, the one logged while down is there
    finally:
        server.kill()
        server.wait(30)


def _recall_ids(m: SealMemory) -> list[str] | None:
    try:
        return [x.id for x in m.recall("dog Rex", namespace=("users", "ana"))]
    except BackendUnavailableError:
        return None
