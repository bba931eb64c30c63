"""Coordination between processes and hosts that share one memory: locks, scheduler slots
and the consolidation checkpointer, on the journal's database when it is PostgreSQL.

Why on the database and not beside it: with the SQLite journal every process runs on
one host, and a file lock on the home (``filelock``) is exact. With a Postgres journal
the processes may run on several hosts whose home is a shared volume, where file locks
are unreliable (NFS) or absent; the database they all reach already offers what is
needed, with no coordinator of our own:

  * `run_lock`: ``pg_try_advisory_lock`` on a connection held for the lock's life. The
    server releases it when that connection ends -- also when its process is killed -- so
    a crashed consolidation never leaves a stale lock;
  * `claim_slot`: ``INSERT ... ON CONFLICT DO NOTHING`` on ``(job, slot)`` in table
    ``seal_schedule_slots``: the first scheduler process to claim a fire time runs it,
    the others skip it; one row per fire, so the claim is also a record of who ran what;
  * `checkpointer`: LangGraph's ``PostgresSaver`` for the consolidation graph, so a run
    started on one host is resumed by the next consolidation on any host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from seal_agent.errors import BackendUnavailableError
from seal_agent.memory.journal_base import is_postgres_url, redact_url

if TYPE_CHECKING:
    from seal_agent.seal_memory import SealMemory

__all__ = ["AdvisoryLock", "checkpoint_threads_matching", "checkpointer", "claim_embedded_index", "claim_slot",
           "delete_checkpoint_threads", "journal_url_of", "run_lock"]

logger = logging.getLogger(__name__)

_SLOTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS seal_schedule_slots (
    job TEXT NOT NULL,
    slot TEXT NOT NULL,
    claimed_by TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job, slot)
)"""


def journal_url_of(memory: SealMemory) -> str | None:
    """The Postgres URL of `memory`'s journal, or None for the home's SQLite journal."""
    url = getattr(memory, "journal_url", None)
    return url if is_postgres_url(url) else None


def _key(name: str) -> int:
    """A signed 64-bit advisory-lock key for `name` (stable across hosts and versions)."""
    return int.from_bytes(hashlib.blake2b(f"seal_agent:{name}".encode(), digest_size=8).digest(), "big",
                          signed=True)


def _connect(url: str) -> Any:
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise BackendUnavailableError(f"the journal database {redact_url(url)} is unreachable ({exc})") from exc


class AdvisoryLock:
    """A cross-host lock named `name` on the database at `url`; FileLock's interface
    (``acquire(timeout=0)`` raises ``filelock.Timeout`` when another session holds it),
    so `consolidate` uses either without knowing which."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.key = url, name, _key(name)
        self._conn: Any = None
        self._depth = 0
        self._mutex = threading.RLock()

    @property
    def is_locked(self) -> bool:
        return self._depth > 0

    def acquire(self, timeout: float = 0) -> AdvisoryLock:
        """Take the lock or raise ``filelock.Timeout`` at once (`timeout` is accepted for
        FileLock's interface; only 0, "do not wait", is used here)."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                return self
            conn = _connect(self.url)
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
            if not got:
                conn.close()
                raise Timeout(f"advisory lock {self.name!r} on {redact_url(self.url)}")
            self._conn, self._depth = conn, 1
            return self

    def release(self) -> None:
        with self._mutex:
            if not self._depth:
                return
            self._depth -= 1
            if self._depth:
                return
            conn, self._conn = self._conn, None
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            except Exception:  # the connection is gone: so is the lock
                logger.debug("advisory unlock of %s failed; the server dropped it with the connection", self.name,
                             exc_info=True)
            finally:
                conn.close()

    def __enter__(self) -> AdvisoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(memory: SealMemory, name: str = "consolidation") -> Any:
    """The single-flight lock `name` of `memory`: an `AdvisoryLock` on its Postgres journal
    (one per database: every host sharing it), else ``FileLock(home/<name>.lock)``."""
    url = journal_url_of(memory)
    if url is not None:
        return AdvisoryLock(url, name)
    return FileLock(str(Path(memory.home) / f"{name}.lock"))


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_slot(url: str, job: str, slot: str) -> bool:
    """Claim fire time `slot` of scheduler job `job`; True for exactly one caller across
    every process and host sharing the database."""
    conn = _connect(url)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key("schema:slots"),))
            conn.execute(_SLOTS_SCHEMA)
        row = conn.execute("INSERT INTO seal_schedule_slots (job, slot, claimed_by) VALUES (%s, %s, %s) "
                           "ON CONFLICT (job, slot) DO NOTHING RETURNING claimed_by",
                           (job, slot, _holder())).fetchone()
        return row is not None
    finally:
        conn.close()


def slot_claims(url: str, job: str) -> list[tuple[str, str]]:
    """``[(slot, claimed_by)]`` of `job`, oldest first (what ran where)."""
    conn = _connect(url)
    try:
        if conn.execute("SELECT to_regclass('seal_schedule_slots')").fetchone()[0] is None:
            return []
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT slot, claimed_by FROM seal_schedule_slots WHERE job=%s ORDER BY slot", (job,))]
    finally:
        conn.close()


def claim_embedded_index(journal: Any, home: Path) -> None:
    """Refuse a second embedded Chroma index on one Postgres journal.

    The journal's ``indexed`` flag says "Chroma has this row" -- one Chroma. Two homes
    (hosts) each with an embedded index on one journal would split the rows between
    them: each indexes what it sees first and marks it done for both. The first home
    that opens the journal with an embedded index records itself (``meta.embedded_index``,
    host and path); any other is refused with `ConfigError`. Several homes need a Chroma
    server (``chroma_url``), which every process indexes into."""
    from seal_agent.errors import ConfigError

    me = f"{socket.gethostname()}:{Path(home).resolve()}"
    holder = journal.claim_meta("embedded_index", me)
    if holder != me:
        raise ConfigError(
            "chroma_url", None,
            f"the journal {journal.path} is indexed by the embedded Chroma of {holder}; another home cannot keep an "
            "embedded index of it (each would hold part of the rows). Run a Chroma server and open every home with "
            "chroma_url=... (SEAL_CHROMA_URL); to move the embedded index to this home instead, delete the row "
            "meta.embedded_index in that database and move the old home's chroma/ folder away")


def checkpointer(memory: SealMemory, sqlite_path: Path) -> Any:
    """The consolidation graph's checkpointer: LangGraph's ``PostgresSaver`` on the
    Postgres journal's database (tables ``checkpoints*``, created by ``setup()``), else
    ``SqliteSaver`` on `sqlite_path`."""
    url = journal_url_of(memory)
    if url is None:
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteSaver(sqlite3.connect(sqlite_path, check_same_thread=False))
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    try:  # the settings LangGraph's docs require for a connection given to PostgresSaver
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=0, row_factory=dict_row,
                               connect_timeout=10)
    except psycopg.Error as exc:
        raise BackendUnavailableError(f"the journal database {redact_url(url)} is unreachable ({exc})") from exc
    saver = PostgresSaver(conn)
    # two processes setting up at once would collide in the catalog: one at a time
    conn.execute("SELECT pg_advisory_lock(%s)", (_key("schema:checkpoints"),))
    try:
        saver.setup()
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_key("schema:checkpoints"),))
    return saver


_CHECKPOINT_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def checkpoint_threads_matching(url: str, match: Callable[[bytes], bool], *, only: str | None = None) -> set[str]:
    """Threads (consolidation run ids) of the Postgres checkpointer whose checkpoints,
    metadata, channel blobs or pending writes `match` (forget's search for a forgotten
    interaction's text or id); `only`: look at that thread alone."""
    conn = _connect(url)
    try:
        if conn.execute("SELECT to_regclass('checkpoints')").fetchone()[0] is None:
            return set()
        where, params = ("WHERE thread_id = %s", (only,)) if only is not None else ("", ())
        found: set[str] = set()
        queries = (f"SELECT thread_id, convert_to(checkpoint::text || metadata::text, 'UTF8') FROM checkpoints {where}",
                   f"SELECT thread_id, blob FROM checkpoint_blobs {where}",
                   f"SELECT thread_id, blob FROM checkpoint_writes {where}")
        for sql in queries:
            for tid, data in conn.execute(sql, params):
                if tid not in found and data is not None and match(bytes(data)):
                    found.add(tid)
        return found
    finally:
        conn.close()


def delete_checkpoint_threads(url: str, threads: Iterable[str]) -> int:
    """Delete whole threads from the Postgres checkpointer's tables (one transaction),
    then VACUUM them so the rows' space is reclaimed; how many threads had rows."""
    wanted = sorted(set(threads))
    if not wanted:
        return 0
    conn = _connect(url)
    try:
        with conn.transaction():
            n = len({r[0] for r in conn.execute("SELECT DISTINCT thread_id FROM checkpoints WHERE thread_id = ANY(%s)",
                                                (wanted,))})
            for table in _CHECKPOINT_TABLES:
                conn.execute(f"DELETE FROM {table} WHERE thread_id = ANY(%s)", (wanted,))
        conn.execute(f"VACUUM {', '.join(_CHECKPOINT_TABLES)}")
        return n
    finally:
        conn.close()
