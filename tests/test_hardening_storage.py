"""Issue 9, items 14 and 16: damaged files, a full disk and a read-only home.

Every fault must come out as one of our errors (`StorageError`, `ConfigError`) naming
the file, what is wrong and what to do -- never a raw ``sqlite3``/``UnicodeDecodeError``
-- and must leave nothing acknowledged lost.

The full disk and the read-only disk are real: a small tmpfs and a read-only bind mount
in a private mount namespace (``unshare``), run in a child process. Where mount
namespaces are not available those two tests are skipped; the in-process tests cover
the same errors through SQLite's own ``max_page_count`` limit and ``read_only=True``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import waits
from fakes import HashEmbeddings

from seal_agent import SealMemory, StorageError
from seal_agent.config import SealConfig
from seal_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _open(home: Path, **kwargs) -> SealMemory:
    return SealMemory(home, embeddings=HashEmbeddings(), **kwargs)


def _home_with(home: Path, n: int, *, size: int = 50) -> list[str]:
    """A closed home holding `n` indexed interactions; their ids."""
    with _open(home) as mem:
        ids = [mem.log([{"role": "user", "content": f"fact number {i} about the garden " + "x" * size},
                        {"role": "assistant", "content": "noted"}]) for i in range(n)]
        mem.flush()
    return ids


# ------------------------------------------------------------------ item 14: config


def test_item14_config_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"[memory]\nrecall_k = 3 # \xff\xfe caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        SealConfig.load(tmp_path)
    assert str(tmp_path / "config.toml") in str(err.value) and "UTF-8" in str(err.value)
    with pytest.raises(ConfigError):  # and so does opening the home
        _open(tmp_path)


def test_item14_config_that_is_a_folder_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").mkdir()
    for target in (tmp_path, tmp_path / "config.toml"):
        with pytest.raises(ConfigError) as err:
            SealConfig.load(target)
        assert str(tmp_path / "config.toml") in str(err.value) and "folder" in str(err.value)


# ------------------------------------------------------------------ item 14: journal


def test_item14_journal_with_a_garbage_header_names_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    garbage = bytes(range(256)) * 16
    (home / "journal.sqlite3").write_bytes(garbage)
    with pytest.raises(StorageError) as err:
        _open(home)
    msg = str(err.value)
    assert str(home / "journal.sqlite3") in msg and "damaged" in msg and "backup" in msg
    assert err.value.path == str(home / "journal.sqlite3")
    assert (home / "journal.sqlite3").read_bytes() == garbage  # left as it was, for salvage


def test_item14_journal_cut_in_half_names_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _home_with(home, 120, size=400)
    path = home / "journal.sqlite3"
    assert not (home / "journal.sqlite3-wal").exists() or not (home / "journal.sqlite3-wal").stat().st_size
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageError) as err:
        _open(home)
    assert str(path) in str(err.value) and "cut short" in str(err.value)


def test_item14_journal_damaged_inside_fails_on_read_with_a_storage_error(tmp_path: Path) -> None:
    """Damage the header check cannot see (a page in the middle): the read that meets it
    raises StorageError naming the journal, not sqlite3.DatabaseError."""
    home = tmp_path / "home"
    _home_with(home, 120, size=400)
    path = home / "journal.sqlite3"
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for p in range(2, len(data) // page):  # every page but the schema page: b-tree headers garbage
        data[p * page: p * page + 16] = b"\xee" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError) as err:
        with _open(home) as mem:
            mem.list()
    assert str(path) in str(err.value) and "damaged" in str(err.value)


def test_item14_empty_journal_beside_an_index_with_records_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _home_with(home, 3)
    (home / "journal.sqlite3").write_bytes(b"")  # e.g. a botched copy: 0 bytes
    for _ in range(2):  # and still on the next try: the first refusal created no usable journal
        with pytest.raises(StorageError) as err:
            _open(home)
        msg = str(err.value)
        assert str(home / "journal.sqlite3") in msg and "3 records" in msg and "backup" in msg
    (home / "journal.sqlite3").unlink()  # deleted outright: the same
    with pytest.raises(StorageError):
        _open(home)


def test_item14_new_home_and_forgotten_everything_still_open(tmp_path: Path) -> None:
    """The empty-journal check must not refuse the legitimate cases."""
    with _open(tmp_path / "new") as mem:
        assert mem.list() == []
    home = tmp_path / "home"
    _home_with(home, 2)
    with _open(home) as mem:
        assert mem.forget(namespace=("default",)).forgotten == 2
        mem.flush()
    with _open(home) as mem:
        assert mem.list() == []


# ------------------------------------------------------------------ item 14: Chroma


def test_item14_garbage_chroma_names_the_file_and_how_to_rebuild(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = _home_with(home, 4)
    (home / "chroma" / "chroma.sqlite3").write_bytes(b"\x00\x13garbage" * 500)
    with pytest.raises(StorageError) as err:
        _open(home)
    msg = str(err.value)
    assert str(home / "chroma" / "chroma.sqlite3") in msg and "rebuilt from" in msg and "move" in msg
    # Doing what it says works: the index is rebuilt from the journal (in a new process,
    # as after a restart: this one's Chroma client still caches the old folder).
    shutil.move(home / "chroma", tmp_path / "chroma.damaged")
    script = textwrap.dedent(f"""
        import json
        from fakes import HashEmbeddings
        from seal_agent import SealMemory
        with SealMemory({str(home)!r}, embeddings=HashEmbeddings()) as mem:
            mem.flush()
            print(json.dumps([m.id for m in mem.recall("fact about the garden", k=10)]))
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
               ANONYMIZED_TELEMETRY="False")
    child = waits.run([sys.executable, "-c", script], text=True, env=env)
    assert child.returncode == 0, child.stderr[-3000:]
    assert set(__import__("json").loads(child.stdout.strip().splitlines()[-1])) == set(ids)


# ------------------------------------------------------------------ item 16: disk full


def test_item16_disk_full_log_raises_storage_error_and_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    """SQLite's page limit is its own "disk full" (SQLITE_FULL), raised where a full disk raises it."""
    with _open(tmp_path / "home") as mem:
        kept = [mem.log([{"role": "user", "content": f"kept {i}"}]) for i in range(3)]
        db = mem._journal._db()  # this thread's connection: the one log() writes with
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(StorageError) as err:
            mem.log([{"role": "user", "content": "does not fit " + "z" * 20_000}])
        msg = str(err.value)
        assert str(tmp_path / "home" / "journal.sqlite3") in msg and "disk full" in msg
        assert not isinstance(err.value, sqlite3.Error)
        assert [mem.get(i).id for i in kept] == kept  # nothing acknowledged was lost
        assert mem.list(limit=10) and len(mem.list()) == 3  # and nothing half-written
        db.execute("PRAGMA max_page_count = 1073741823")  # space again: the connection is not wedged
        mem.log([{"role": "user", "content": "fits again " + "z" * 20_000}])
        mem.flush()
        assert len(mem.list()) == 4


def _namespace_runner() -> list[str] | None:
    """A command prefix that runs a child in a private mount namespace, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null "
                            "|| mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def _run_child(script: str, setup: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    prefix = _namespace_runner()
    if prefix is None:
        pytest.skip("mount namespaces (unshare -m) are not available here")
    code = tmp_path / "child.py"
    code.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
               ANONYMIZED_TELEMETRY="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # A hang is the failure the close() test looks for: the child gets a generous bound.
    return subprocess.run([*prefix, "sh", "-c", f"{setup} && exec {sys.executable} {code}"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_item16_full_disk_log_is_clear_and_close_does_not_hang(tmp_path: Path) -> None:
    """A real full disk (a 3 MB tmpfs): log() raises StorageError naming the journal and
    "disk full", every acknowledged log survives, and close() -- told it may wait an hour
    for indexing -- returns (it used to wait out its whole timeout on a full disk)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    result = _run_child(f"""
        import json, sys
        from fakes import HashEmbeddings
        from seal_agent import SealMemory, SealConfig, StorageError
        home = {str(disk / 'home')!r}
        cfg = SealConfig().with_overrides(memory={{"close_timeout_s": 3600.0}})
        mem = SealMemory(home, embeddings=HashEmbeddings(), config=cfg)
        ids, error = [], None
        try:
            for i in range(100_000):
                ids.append(mem.log([{{"role": "user", "content": f"row {{i}} " + "y" * 2000}}]))
        except StorageError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"RAW {{type(exc).__name__}}: {{exc}}"
        mem.close()
        with open({str(tmp_path / 'ids.json')!r}, "w") as f:
            json.dump({{"ids": ids, "error": error}}, f)
        import shutil
        shutil.copytree(home, {str(tmp_path / 'copy')!r})
        """, f"mount -t tmpfs -o size=3m tmpfs {disk}", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = __import__("json").loads((tmp_path / "ids.json").read_text())
    assert out["ids"] and out["error"] is not None
    assert not out["error"].startswith("RAW"), out["error"]
    assert "disk full" in out["error"] and str(disk / "home" / "journal.sqlite3") in out["error"]
    # Nothing acknowledged was lost: the home, copied off the full disk, holds every id.
    with _open(tmp_path / "copy") as mem:
        assert {it.id for it in mem.list()} == set(out["ids"])


# ------------------------------------------------------------------ item 16: read-only home


def test_item16_read_only_true_recalls_and_refuses_writes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = _home_with(home, 3)
    before = {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()}
    with _open(home, read_only=True) as mem:
        assert mem.read_only
        assert {m.id for m in mem.recall("fact about the garden", k=5)} == set(ids)
        assert len(mem.list()) == 3 and mem.status()["interactions"] == 3
        for write in (lambda: mem.log([{"role": "user", "content": "new"}]),
                      lambda: mem.feedback(ids[0], 1.0), lambda: mem.forget(ids=ids[:1]),
                      lambda: mem.consolidate()):
            with pytest.raises(StorageError) as err:
                write()
            assert "read-only" in str(err.value)
    after = {p: p.stat().st_mtime_ns for p in home.rglob("*") if p.is_file()}
    assert {p: after[p] for p in before} == before  # not one file of the home was written
    # (a read-only SQLite connection may leave the WAL's empty side files, as SQLite does)
    assert all(p.name.endswith(("-wal", "-shm")) for p in set(after) - set(before))


def test_item16_read_only_home_opens_for_recall(tmp_path: Path) -> None:
    """A home on a read-only disk: opening it used to raise "unable to open database file"
    without a path. Now it opens read-only by itself (recall works; log raises a clear
    error), and insisting on read_only=False names the journal."""
    home = tmp_path / "home"
    ids = _home_with(home, 3)
    if os.geteuid() == 0:  # root writes through permissions: a read-only bind mount instead
        setup = f"mount --bind {home} {home} && mount -o remount,bind,ro {home}"
    else:
        setup = "true"
        subprocess.run(["chmod", "-R", "a-w", str(home)], check=True)
    try:
        result = _run_child(f"""
            import json
            from fakes import HashEmbeddings
            from seal_agent import SealMemory, StorageError
            home = {str(home)!r}
            out = {{}}
            try:
                SealMemory(home, embeddings=HashEmbeddings(), read_only=False)
            except StorageError as exc:
                out["forced"] = str(exc)
            except Exception as exc:
                out["forced"] = f"RAW {{type(exc).__name__}}: {{exc}}"
            with SealMemory(home, embeddings=HashEmbeddings()) as mem:
                out["read_only"] = mem.read_only
                out["recalled"] = [m.id for m in mem.recall("fact about the garden", k=5)]
                out["adapters"] = [v.version for v in mem.adapters.list()]  # none, and no folder made
                try:
                    mem.log([{{"role": "user", "content": "new"}}])
                except StorageError as exc:
                    out["log"] = str(exc)
            print(json.dumps(out))
            """, setup, tmp_path)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(home)], check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = __import__("json").loads(result.stdout.strip().splitlines()[-1])
    assert not out["forced"].startswith("RAW") and str(home / "journal.sqlite3") in out["forced"], out
    assert out["read_only"] is True and set(out["recalled"]) == set(ids) and out["adapters"] == []
    assert "read-only" in out["log"]


def test_item16_read_only_recall_includes_rows_the_writer_had_not_indexed(tmp_path: Path) -> None:
    """Read-your-writes holds read-only too: rows still waiting for the index are scored exactly."""
    home = tmp_path / "home"
    ids = _home_with(home, 2)
    with _open(home) as mem:
        mem._worker.stop(timeout=5)  # the writer dies before indexing its last row
        late = mem.log([{"role": "user", "content": "the shed key hangs behind the door"},
                        {"role": "assistant", "content": "noted"}])
    with _open(home, read_only=True) as mem:
        got = mem.recall("where is the shed key", k=3)
        assert got[0].id == late and {m.id for m in got} == {late, *ids}
