"""The journal: the durable record of every interaction, in SQLite.

Why SQLite rather than an append-only JSONL file: in WAL mode with
``synchronous=FULL`` a committed insert is fsync'd before it returns (the same
guarantee as an fsync'd append, measured at ~0.2 ms here), and it also gives us the
secondary indexes that `list`, duplicate detection and the indexing queue need, plus
transactions so that a rejected write leaves nothing behind. It is the store of
truth; Chroma is an index rebuilt from it.

Columns worth knowing:
  * ``indexed`` -- 0 until the background worker has put the row into Chroma. Startup
    (and any worker round) picks up rows with 0, so a ``kill -9`` between the journal
    write and the Chroma write loses nothing.
  * ``thread_key`` -- ``thread_id`` or ``""``: SQLite treats NULLs as distinct in a
    UNIQUE index, so duplicates are keyed on this instead.
  * table ``forgotten`` -- ids deleted by `forget`, kept so the worker can delete them
    from Chroma (``chroma_deleted``) and so adapter lineages can be checked later.
  * ``expires_at`` -- unix time after which the row is expired (None: never). Reads
    never return an expired row; `SealMemory.expire` forgets them. Logging an expired
    row's exchange again never answers with the expired row: it is *retired* (its
    ``content_hash`` becomes ``expired:<id>``, so the dedup index no longer holds it)
    and a new row is stored, while the sweep still forgets the old one everywhere.
  * table ``history`` -- every version of an interaction (``created``, ``updated``,
    ``forgotten``/``expired``), written in the same transaction as the change; forget
    empties the ``data`` of the forgotten ids' versions (their content must go too).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seal_agent._fs import held_by_this_process
from seal_agent.errors import StorageError
from seal_agent.memory.records import (
    NAMESPACE_SEP,
    HistoryEvent,
    Interaction,
    InteractionStatus,
    Namespace,
    has_escaped_keys,
    iso,
    join_namespace,
    metadata_key_path,
    parse_namespace,
    utc_now,
)

__all__ = ["Journal", "JOURNAL_FORMAT_VERSION"]

JOURNAL_FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interactions (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    thread_id TEXT,
    thread_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    messages TEXT NOT NULL,
    task TEXT NOT NULL,
    outcome TEXT NOT NULL,
    metadata TEXT NOT NULL,
    feedback REAL,
    feedback_comment TEXT,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new',
    consolidated_version TEXT,
    indexed INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS interactions_dedup
    ON interactions (namespace, thread_key, content_hash);
CREATE INDEX IF NOT EXISTS interactions_ns ON interactions (namespace, id);
CREATE INDEX IF NOT EXISTS interactions_unindexed ON interactions (indexed, id);
CREATE INDEX IF NOT EXISTS interactions_unindexed_ns ON interactions (indexed, namespace, id);
CREATE TABLE IF NOT EXISTS forgotten (
    id TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    forgotten_at TEXT NOT NULL,
    chroma_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS forgotten_pending ON forgotten (chroma_deleted) WHERE chroma_deleted=0;
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL,
    namespace TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS history_id ON history (id, seq);
"""

# An expired row is one whose expires_at (unix seconds) has passed; SQLite's clock, so a
# read and the sweep agree whatever the caller's clock says.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_LIVE = f"(expires_at IS NULL OR expires_at > {_NOW})"

_COLUMNS = (
    "id, namespace, thread_id, created_at, messages, task, outcome, metadata, feedback, "
    "feedback_comment, content_hash, status, consolidated_version"
)


def retired_hash(id_sql: str) -> str:
    """SQL for the ``content_hash`` of a retired (expired) row: ``'expired:' || <id>``.

    Why retire rather than merge into it or revive it: dedup answering with an expired
    row's id acknowledged a `log` that no read returned and the sweep then deleted; and
    reviving the row in place races the sweep, which forgets the ids it found expired
    (a revived row among them would be lost). A retired row keeps its id, its expiry and
    its content until the sweep forgets it (Chroma, adapters, facts...), but a real hash
    is hex, so it never matches a new log again; the new log gets a new row and id.
    Both journals use it (SQLite and Postgres both spell concatenation ``||``)."""
    return f"('expired:' || {id_sql})"


def history_events(rows: Sequence[Sequence[Any]]) -> list[HistoryEvent]:
    """`HistoryEvent`s from ``(id, event, at, namespace, data, expires_at, live)`` rows
    (history joined with the interaction's current row, both journals).

    An interaction whose time-to-live has passed is shown as the sweep will leave it:
    every version without its content, ending with an ``expired`` event. Expired content
    is never served, even in the moments before the sweep forgets it."""
    expired = next((r for r in rows if r[6] is not None and not r[6]), None)
    out = [HistoryEvent(id=r[0], event=r[1], at=datetime.fromisoformat(r[2]), namespace=parse_namespace(r[3]),
                        data=json.loads(r[4]) if r[4] and expired is None else {}) for r in rows]
    if expired is not None and not any(e.event == "expired" for e in out):
        out.append(HistoryEvent(id=expired[0], event="expired", at=datetime.fromtimestamp(expired[5], UTC),
                                namespace=parse_namespace(expired[3]), data={}))
    return out


# SQLite primary result codes that mean the file or its disk is at fault, not the caller.
_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CORRUPT = 3, 8, 10, 11
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 13, 14, 26
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _damaged(path: Path, what: str) -> StorageError:
    return StorageError(
        f"the journal {path} is damaged: {what}. It is the store of truth (the Chroma index cannot "
        f"rebuild it): restore it from a backup, or salvage what is readable with "
        f"`sqlite3 {path} .recover | sqlite3 recovered.sqlite3` and put that file in its place", path=path)


def _storage_error(exc: sqlite3.Error, path: Path) -> StorageError | None:
    """The `StorageError` an SQLite error about the file or its disk stands for; None for
    any other error (a constraint, a lock held too long, a bug), which stays as it is."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary is None:  # e.g. sqlite3.connect() on a folder: no code attached
        text = str(exc).lower()
        primary = (_SQLITE_CANTOPEN if "unable to open" in text else _SQLITE_FULL if "is full" in text
                   else _SQLITE_NOTADB if "not a database" in text else _SQLITE_CORRUPT if "malformed" in text
                   else None)
    if primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return _damaged(path, str(exc))
    if primary == _SQLITE_FULL:
        return StorageError(
            f"cannot write to the journal {path}: disk full ({exc}). The write was rolled back and "
            "everything acknowledged before it is kept; free some space and retry", path=path)
    if primary in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM):
        return StorageError(
            f"cannot open or write the journal {path}: its folder or file is read-only or not accessible "
            f"({exc}). To recall only, open the home with SealMemory(home, read_only=True); to log, make "
            f"{path.parent} writable", path=path)
    if primary == _SQLITE_IOERR:
        return StorageError(f"I/O error on the journal {path} ({exc}); check the disk, then retry", path=path)
    return None


def _check_file(path: Path) -> None:
    """Refuse a journal file that cannot be an SQLite database, before SQLite opens it.

    No file yet, or a 0-byte one, is a new journal. Cheap: reads the 100-byte header only. A file cut short is caught by comparing its size with the page
    count in the header -- only when no write-ahead log is present, since a checkpoint
    interrupted by a crash may legitimately leave the file short until the log is replayed.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot read the journal {path}: {exc.strerror or exc}", path=path) from exc
    if stat.S_ISDIR(st.st_mode):
        raise StorageError(f"the journal {path} is a folder, not a file; move it away or restore the journal "
                           "from a backup", path=path)
    if st.st_size == 0 or held_by_this_process(path):
        return  # held: an open connection already read it, and a close here would drop its locks
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError as exc:
        raise StorageError(f"cannot read the journal {path}: {exc.strerror or exc}", path=path) from exc
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        raise _damaged(path, "it is not an SQLite database (its header is garbage)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    header_valid = head[24:28] == head[92:96]  # the in-header size is trusted only then
    wal = path.with_name(path.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    if header_valid and wal_size == 0 and pages and st.st_size < pages * page_size:
        raise _damaged(path, f"it is cut short ({st.st_size} bytes of the {pages * page_size} its header "
                             "announces)")


_SQL_OPS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _filter_sql(flt: dict[str, Any]) -> tuple[str, list[Any]]:
    """A validated metadata filter as an SQL condition on ``metadata`` (Chroma's meaning:
    ``$ne``/``$nin`` also match rows that lack the key, like Chroma does)."""
    parts: list[str] = []
    params: list[Any] = []
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            subs = [_filter_sql(c) for c in cond]
            parts.append("(" + (" AND " if key == "$and" else " OR ").join(s for s, _ in subs) + ")")
            for _, p in subs:
                params.extend(p)
            continue
        (op, value), = cond.items()
        # $ne/$nin are NOT($eq/$in): a row without the key (or with a non-scalar there) matches.
        if op in ("$in", "$nin"):
            test, tparams = f"IN ({','.join('?' * len(value))})", list(value)
        else:
            test, tparams = f"{_SQL_OPS['$eq' if op == '$ne' else op]} ?", [value]
        found, fparams = _leaf_exists(metadata_key_path(key), test)
        parts.append(f"(NOT {found})" if op in ("$ne", "$nin") else found)
        params += fparams + tparams
    return "(" + " AND ".join(parts) + ")", params


def _leaf_exists(path: list[str], test: str) -> tuple[str, list[Any]]:
    """``EXISTS`` a scalar at `path` (keys of nested objects) of ``metadata`` passing `test`.

    The keys are walked with ``json_each``, which compares each key as decoded text: a
    JSON path string (``$."a.b"``) cannot hold every key (a ``"`` ends it) and SQLite
    versions disagree on its escapes, so a key with a backslash or newline was missed.
    Only objects are entered (never arrays), as Chroma's flattened metadata does.
    """
    joins = ["json_each(metadata) AS k0"]
    for i in range(1, len(path)):
        joins.append(f"json_each(CASE WHEN k{i - 1}.type = 'object' THEN k{i - 1}.value ELSE '{{}}' END) AS k{i}")
    leaf = f"k{len(path) - 1}"
    where = [f"k{i}.key = ?" for i in range(len(path))]
    where += [f"{leaf}.type IN ('text', 'integer', 'real', 'true', 'false')", f"{leaf}.atom {test}"]
    return f"EXISTS (SELECT 1 FROM {', '.join(joins)} WHERE {' AND '.join(where)})", list(path)


class _Cursor(sqlite3.Cursor):
    """A cursor whose storage faults come out as `StorageError` naming the journal."""

    def _fail(self, exc: sqlite3.Error) -> BaseException:
        return _storage_error(exc, self.connection.seal_path) or exc  # type: ignore[attr-defined]

    def execute(self, sql: str, parameters: Any = (), /) -> _Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _Cursor:
        try:
            return super().executemany(sql, seq_of_parameters)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def fetchmany(self, size: int | None = None) -> list[Any]:
        try:
            return super().fetchmany(self.arraysize if size is None else size)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc


class _Connection(sqlite3.Connection):
    """Routes every statement through `_Cursor` (``Connection.execute`` would bypass it)."""

    seal_path: Path

    def cursor(self, factory: Any = _Cursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> Any:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> Any:  # type: ignore[override]
        return self.cursor().executemany(sql, parameters)


def _row_to_interaction(row: Sequence[Any]) -> Interaction:
    (id_, ns, thread_id, created_at, messages, task, outcome, metadata, feedback,
     comment, chash, status, version) = row[:13]
    expires = row[13] if len(row) > 13 else None
    return Interaction(
        id=id_,
        namespace=tuple(ns.split("/")),
        thread_id=thread_id,
        created_at=datetime.fromisoformat(created_at),
        messages=tuple(json.loads(messages)),
        task=task,
        outcome=outcome,
        metadata=json.loads(metadata),
        feedback=feedback,
        feedback_comment=comment,
        content_hash=chash,
        status=InteractionStatus(status),
        consolidated_version=version,
        expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _history(db: sqlite3.Connection, id_: str, event: str, namespace: str, data: Any) -> None:
    db.execute("INSERT INTO history (id, event, at, namespace, data) VALUES (?,?,?,?,?)",
               (id_, event, iso(utc_now()), namespace, None if data is None else _json(data)))


def _snapshot(db: sqlite3.Connection, id_: str, event: str) -> None:
    """Record the row `id_` as it is now, as a `event` version in ``history``."""
    row = db.execute("SELECT namespace, messages, metadata, feedback, feedback_comment, expires_at "
                     "FROM interactions WHERE id=?", (id_,)).fetchone()
    if row is not None:
        ns, messages, metadata, feedback, comment, expires = row
        _history(db, id_, event, ns, {"messages": json.loads(messages), "metadata": json.loads(metadata),
                                      "feedback": feedback, "feedback_comment": comment, "expires_at": expires})


_UNSET: Any = object()

# WAL pages after which a commit checkpoints by itself (see `Journal._db`); SQLite's default is 1000
_AUTOCHECKPOINT_PAGES = 10_000


# meta key of the Chroma metadata names' format: 2 = keys escaped by `flat_metadata`
# (``{"a.b": 1}`` -> ``md_a\.b``); before, ``md_a.b``, the name ``{"a": {"b": 1}}`` has too.
METADATA_KEYS_META = "index_metadata_keys"
METADATA_KEYS_FORMAT = "2"


def requeue_escaped_keys(db: Any, contains: str) -> int:
    """Once per journal (meta `METADATA_KEYS_META`), in the caller's transaction: queue for
    Chroma again every row marked indexed whose metadata has a key `flat_metadata` escapes
    (`has_escaped_keys`); how many. Such a row was indexed under the old, unescaped name
    and `recall(filter=...)`, which looks up the escaped one, missed it; the re-index
    writes the new name and deletes the old one (`ChromaIndex.upsert`).

    Args:
        db: A connection taking SQLite-dialect statements (``?``).
        contains: The SQL test "column metadata contains the text ?" of the backend, a
            cheap pre-filter before each candidate's JSON is parsed.
    """
    if db.execute("SELECT 1 FROM meta WHERE key=?", (METADATA_KEYS_META,)).fetchone() is not None:
        return 0
    test = " OR ".join([contains] * 3)
    ids = [id_ for id_, md in db.execute(f"SELECT id, metadata FROM interactions WHERE indexed=1 AND ({test})",
                                         (".", "\\", "$")).fetchall()
           if has_escaped_keys(json.loads(md))]
    db.executemany("UPDATE interactions SET indexed=0 WHERE id=?", [(i,) for i in ids])
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (METADATA_KEYS_META, METADATA_KEYS_FORMAT))
    if ids:
        logger.info("re-indexing %d interactions whose metadata keys hold '.', '\\' or a leading '$' "
                    "(their names in Chroma are escaped now)", len(ids))
    return len(ids)


class Journal:
    """SQLite-backed, fsync'd store of interactions. Thread-safe.

    Each thread gets its own connection (SQLite connections must not be shared
    across threads while in use); writers serialise on SQLite's own lock, with a
    generous busy timeout so that several processes on one home also work.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        _check_file(self.path)
        if read_only:
            names = {r[0] for r in self._db().execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"meta", "interactions", "forgotten"} <= names:
                raise StorageError(f"{self.path} is not a seal_agent journal (it lacks the tables "
                                   "'meta', 'interactions' and 'forgotten')", path=self.path)
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the folder of the journal {self.path}: {exc.strerror or exc}",
                                   path=self.path.parent) from exc
            with self._tx() as db:
                # executescript() would commit on its own; run the statements inside our transaction
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)",
                           (str(JOURNAL_FORMAT_VERSION),))
                if "expires_at" not in {r[1] for r in db.execute("PRAGMA table_info(interactions)")}:
                    db.execute("ALTER TABLE interactions ADD COLUMN expires_at REAL")  # journals before TTL
                db.execute("CREATE INDEX IF NOT EXISTS interactions_expiry ON interactions (expires_at) "
                           "WHERE expires_at IS NOT NULL")
        # A journal written before TTL and opened read-only has no expires_at: nothing expires.
        ttl = "expires_at" in {r[1] for r in self._db().execute("PRAGMA table_info(interactions)")}
        self._cols = _COLUMNS + (", expires_at" if ttl else "")
        self._live = _LIVE if ttl else "1=1"
        row = self._db().execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        version = int(row[0]) if row else JOURNAL_FORMAT_VERSION
        if version > JOURNAL_FORMAT_VERSION:
            from seal_agent.errors import SealAgentError

            raise SealAgentError(
                f"{self.path} has journal format {version}; this seal_agent reads up to "
                f"{JOURNAL_FORMAT_VERSION}. Upgrade seal_agent."
            )

    # -- connections -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """A new connection whose errors about the file itself (damaged, disk full,
        read-only) come out as `StorageError` naming the journal (see `_Connection`)."""
        kwargs: dict[str, Any] = dict(timeout=30.0, isolation_level=None, check_same_thread=False,
                                      factory=_Connection)
        if not self.read_only:
            return self._tag(sqlite3.connect(self.path, **kwargs))
        # mode=ro still needs the WAL's shared-memory file, which a read-only folder cannot
        # hold once the last writer closed; then nothing can change the file under us, so
        # immutable=1 (no locking, no WAL) reads it correctly.
        uri = "file:" + urllib.parse.quote(str(self.path.resolve()))
        db = None
        try:
            db = self._tag(sqlite3.connect(uri + "?mode=ro", uri=True, **kwargs))
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return db
        except (sqlite3.Error, StorageError) as exc:
            if db is not None:
                db.close()
            if not self.path.is_file():
                raise StorageError(f"there is no journal at {self.path} to open read-only",
                                   path=self.path) from exc
        return self._tag(sqlite3.connect(uri + "?immutable=1", uri=True, **kwargs))

    def _tag(self, db: sqlite3.Connection) -> sqlite3.Connection:
        db.seal_path = self.path  # type: ignore[attr-defined]  # named by the errors of `_Cursor`
        return db

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = self._connect()
            except sqlite3.Error as exc:  # before the connection exists: not translated by it
                err = _storage_error(exc, self.path)
                if err is None:
                    raise
                raise err from exc
            if not self.read_only:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # fsync on every commit: an ack is durable
                # The index worker checkpoints the WAL (`checkpoint`) in its own thread; a
                # commit crossing this many WAL pages would do it itself, and a `log` that
                # paid for copying and fsyncing the database file took milliseconds. The
                # limit stays as the safety net when no worker runs (~40 MB of WAL).
                db.execute(f"PRAGMA wal_autocheckpoint={_AUTOCHECKPOINT_PAGES}")
                # What `forget` deletes (and what an update moves) is overwritten with zeros,
                # not left readable in free space of the file (see `scrub`).
                db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    def _restore_durability(self, db: sqlite3.Connection) -> None:
        """Back to fsync on every commit after a `_tx(durable=False)`, whatever happened in
        it: a connection left at NORMAL would ack later `log` calls without an fsync. The
        pragma cannot change inside a transaction, so one a failed ROLLBACK left open is
        closed first; if the connection is unusable it is dropped (the next use opens one)."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, StorageError) as exc:
            logger.warning("journal %s: dropping a connection whose durability could not be restored (%s)",
                           self.path, exc)
            if getattr(self._local, "db", None) is db:
                self._local.db = None
            try:
                db.close()
            except sqlite3.Error:
                pass

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, without blocking readers or writers
        (SQLite's PASSIVE checkpoint); the index worker calls it between batches."""
        if self.read_only:
            return
        try:
            self._db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except (sqlite3.Error, StorageError) as exc:  # a later checkpoint (or the safety net) catches up
            logger.debug("WAL checkpoint of %s failed: %s", self.path, exc)

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: all of it is committed (and fsync'd) or none.

        A failure (disk full, a bad row) rolls it back and leaves the connection usable:
        after some errors SQLite has already rolled back itself, so ROLLBACK is only
        sent while a transaction is still open.

        Args:
            durable: False for bookkeeping that a crash may lose because it is redone
                (the index worker's ``indexed``/``chroma_deleted`` marks: re-indexing and
                re-deleting are idempotent). Its commit skips the fsync, so the write lock
                is held for microseconds instead of a disk flush, and a `log` waiting for
                that lock is not delayed by it (log()'s tail latency). Atomicity is kept;
                the next durable commit flushes these pages too.
        """
        if self.read_only:
            raise StorageError(f"this memory opened its journal {self.path} read-only; it cannot be written. "
                               "Open the home without read_only (it must be writable) to log, give feedback, "
                               "forget or consolidate", path=self.path)
        db = self._db()
        try:
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")  # per connection, and only outside a transaction
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except (sqlite3.Error, StorageError):
                    logger.warning("rollback on the journal %s failed", self.path, exc_info=True)
            raise
        finally:
            if not durable:
                self._restore_durability(db)

    def close(self) -> None:
        with self._all_lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    # -- writes ----------------------------------------------------------------

    def insert(self, it: Interaction) -> tuple[str, bool]:
        """Store `it`, or merge it into its duplicate; return (id, inserted).

        A duplicate (same namespace, thread and messages) is not stored twice, but what
        the new copy adds is not dropped either: its metadata is merged key-wise into the
        stored metadata (new values win) and its feedback, when given, replaces the
        stored feedback and comment. The lookup and the merge are one transaction, so a
        concurrent writer cannot slip in between.
        """
        with self._tx() as db:
            return self._insert_or_merge(db, it)

    @staticmethod
    def _insert_or_merge(db: sqlite3.Connection, it: Interaction) -> tuple[str, bool]:
        ns = join_namespace(it.namespace)
        thread_key = it.thread_id or ""
        row = db.execute(
            f"SELECT id, metadata, expires_at, {_LIVE} FROM interactions "
            "WHERE namespace=? AND thread_key=? AND content_hash=?",
            (ns, thread_key, it.content_hash),
        ).fetchone()
        if row is not None and not row[3]:  # expired: retired, never merged into (see `retired_hash`)
            db.execute(f"UPDATE interactions SET content_hash={retired_hash('id')} WHERE id=?", (row[0],))
            row = None
        if row is not None:
            id_, stored, expires, _live = row
            # The row lives as long as its longest-lived log asks: a re-log without a TTL
            # (or with a later expiry) must not be lost when the first copy's TTL ends.
            new_expiry = None if it.expires_at is None else it.expires_at.timestamp()
            extend = expires is not None and (new_expiry is None or new_expiry > expires)
            if extend:
                db.execute("UPDATE interactions SET expires_at=? WHERE id=?", (new_expiry, id_))
            if it.metadata:
                merged = {**json.loads(stored), **dict(it.metadata)}
                # indexed=0: Chroma holds the scalar metadata too (recall's filters)
                db.execute("UPDATE interactions SET metadata=?, indexed=0 WHERE id=?",
                           (json.dumps(merged, ensure_ascii=False, allow_nan=False), id_))
            if it.feedback is not None:
                db.execute("UPDATE interactions SET feedback=?, feedback_comment=? WHERE id=?",
                           (it.feedback, it.feedback_comment, id_))
            if it.metadata or it.feedback is not None or extend:
                _snapshot(db, id_, "updated")
            return id_, False
        db.execute(
            "INSERT INTO interactions (id, namespace, thread_id, thread_key, created_at, messages, task,"
            " outcome, metadata, feedback, feedback_comment, content_hash, status, consolidated_version,"
            " expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                it.id, ns, it.thread_id, thread_key, iso(it.created_at),
                json.dumps(list(it.messages), ensure_ascii=False, allow_nan=False), it.task, it.outcome,
                json.dumps(dict(it.metadata), ensure_ascii=False, allow_nan=False), it.feedback,
                it.feedback_comment, it.content_hash, it.status.value, it.consolidated_version,
                None if it.expires_at is None else it.expires_at.timestamp(),
            ),
        )
        _snapshot(db, it.id, "created")
        return it.id, True

    def revision(self) -> int:
        """A number that changes whenever anything was committed to the journal since the
        previous call, by this process or by another (SQLite's ``PRAGMA data_version``).

        Caches of what recall returns (the middleware's) key on it, so they can never
        serve memories from before a log, feedback or forget. ``data_version`` only
        counts commits made by *other* connections, so it is read from a connection of
        its own that never writes.
        """
        with self._all_lock:
            db = getattr(self, "_revision_db", None)
            if db is None or db not in self._all:  # first call, or reopened after close()
                db = self._connect()  # read-only journals too; errors name the journal
                self._revision_db = db
                self._all.append(db)
            return int(db.execute("PRAGMA data_version").fetchone()[0])

    def insert_many(self, items: Sequence[Interaction]) -> list[tuple[str, bool]]:
        """Store several interactions in ONE transaction (all or none); ``(id, inserted)`` each.

        A bulk import must not leave its first rows written when a later one fails (disk
        full, a crash), and one fsync'd commit is also much faster than one per row. Each
        item is handled like `insert` handles it: a duplicate -- of a stored row or of an
        earlier item in `items` -- is merged into the stored row.
        """
        with self._tx() as db:
            return [self._insert_or_merge(db, it) for it in items]

    def set_feedback(self, id_: str, score: float, comment: str | None) -> bool:
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE interactions SET feedback=?, feedback_comment=? WHERE id=? AND {self._live}",
                (score, comment, id_)
            )
            if cur.rowcount:
                _snapshot(db, id_, "updated")
            return cur.rowcount > 0

    def update(self, id_: str, *, messages: Sequence[dict[str, Any]] | None = None, task: str = "",
               outcome: str = "", content_hash: str = "", metadata: dict[str, Any] | None = None,
               feedback: Any = _UNSET, feedback_comment: str | None = None) -> bool:
        """Change a live interaction in place and record the new version in ``history``
        (one transaction); False when there is no such (unexpired) interaction.

        New messages (with their `task`, `outcome` and `content_hash`) or metadata set
        ``indexed=0``: the worker re-embeds the row and rewrites its Chroma metadata
        (`recall` catches up with it first). `feedback` given (None clears it) replaces
        the score and comment. Raises `sqlite3.IntegrityError` when new messages would
        duplicate another interaction of the same namespace and thread.
        """
        sets: list[str] = []
        params: list[Any] = []
        if messages is not None:
            sets += ["messages=?", "task=?", "outcome=?", "content_hash=?"]
            params += [_json(list(messages)), task, outcome, content_hash]
        if metadata is not None:
            sets.append("metadata=?")
            params.append(_json(dict(metadata)))
        if messages is not None or metadata is not None:
            sets.append("indexed=0")
        if feedback is not _UNSET:
            sets += ["feedback=?", "feedback_comment=?"]
            params += [feedback, feedback_comment]
        if not sets:
            return self.get(id_) is not None
        with self._tx() as db:
            if messages is not None:  # an expired row with these messages is retired, not a duplicate
                db.execute(f"UPDATE interactions SET content_hash={retired_hash('id')} WHERE content_hash=? "
                           f"AND NOT {_LIVE} AND id<>? AND (namespace, thread_key) = "
                           "(SELECT namespace, thread_key FROM interactions WHERE id=?)", (content_hash, id_, id_))
            cur = db.execute(f"UPDATE interactions SET {', '.join(sets)} WHERE id=? AND {self._live}",
                             (*params, id_))
            if not cur.rowcount:
                return False
            _snapshot(db, id_, "updated")
            return True

    def history(self, id_: str) -> list[HistoryEvent]:
        """Every recorded version of `id_`, oldest first (empty for an unknown id); an
        expired interaction's without content (see `history_events`)."""
        if self._live == "1=1":  # a journal from before TTL, read-only: nothing expires
            expiry = "NULL, NULL"
        else:  # one statement: the versions and whether the row has expired, from one snapshot
            expiry = f"i.expires_at, CASE WHEN i.id IS NULL THEN NULL ELSE {_LIVE} END"
        rows = self._db().execute(
            f"SELECT h.id, h.event, h.at, h.namespace, h.data, {expiry} FROM history h "
            "LEFT JOIN interactions i ON i.id=h.id WHERE h.id=? ORDER BY h.seq", (id_,)).fetchall()
        return history_events(rows)

    def expired(self, limit: int = 500) -> list[str]:
        """Ids of interactions whose time-to-live has passed (the sweep forgets them)."""
        if self._live == "1=1":
            return []
        rows = self._db().execute(f"SELECT id FROM interactions WHERE expires_at <= {_NOW} ORDER BY expires_at "
                                  "LIMIT ?", (limit,)).fetchall()
        return [r[0] for r in rows]

    def note_expired(self, ids: Sequence[str]) -> None:
        """Record an ``expired`` event for each of `ids` (the sweep, before it forgets them)."""
        with self._tx() as db:
            for id_ in ids:
                row = db.execute("SELECT namespace FROM interactions WHERE id=?", (id_,)).fetchone()
                if row is not None:
                    _history(db, id_, "expired", row[0], None)

    def set_status(self, ids: Sequence[str], status: InteractionStatus, version: str | None) -> int:
        with self._tx() as db:
            n = 0
            for id_ in ids:
                n += db.execute(
                    "UPDATE interactions SET status=?, consolidated_version=? WHERE id=?",
                    (status.value, version, id_),
                ).rowcount
            return n

    def forget(self, *, namespace: Namespace | None, ids: Sequence[str] | None,
               event: str = "forgotten") -> list[str]:
        """Delete interactions; record them in ``forgotten`` for Chroma and lineage.

        Their ``history`` loses every version's content in the same transaction and
        gains one `event` (``forgotten``, or ``expired`` from the TTL sweep) with none."""
        clauses, params = [], []
        if namespace is not None:
            clauses.append("namespace=?")
            params.append(join_namespace(namespace))
        if ids is not None:
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        where = " AND ".join(clauses)
        now = iso(utc_now())
        with self._tx() as db:
            rows = db.execute(f"SELECT id, namespace FROM interactions WHERE {where}", params).fetchall()
            db.executemany(
                "INSERT OR REPLACE INTO forgotten (id, namespace, forgotten_at, chroma_deleted) VALUES (?,?,?,0)",
                [(r[0], r[1], now) for r in rows],
            )
            db.execute(f"DELETE FROM interactions WHERE {where}", params)
            for start in range(0, len(rows), 500):
                chunk = [r[0] for r in rows[start:start + 500]]
                db.execute(f"UPDATE history SET data=NULL WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            for r in rows:
                _history(db, r[0], event, r[1], None)
            from seal_agent.memory.facts import forget_in_transaction  # facts build on the journal

            forget_in_transaction(db, [r[0] for r in rows])
        return [r[0] for r in rows]

    def requeue(self, ids: Sequence[str]) -> int:
        """Set consolidated interactions back to ``new`` (their adapter version was deleted
        by `forget`: no served weights hold them any more, so a later run learns them again)."""
        if not ids:
            return 0
        with self._tx() as db:
            n = 0
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                n += db.execute(
                    "UPDATE interactions SET status='new', consolidated_version=NULL WHERE status='consolidated' "
                    f"AND id IN ({','.join('?' * len(chunk))})", chunk).rowcount
            return n

    def scrub(self) -> str | None:
        """Make deleted text unrecoverable from the journal's files; None when done, else why not.

        Every connection writes with ``secure_delete`` (deleted rows are zeroed), but rows
        updated or deleted before that, or by an older version, may have left copies in
        free space of their pages: ``VACUUM`` rewrites the file without them. Then the
        write-ahead log, which may hold earlier images of those pages, is checkpointed
        into the file and truncated to zero bytes. Needs a moment when no other
        connection (another process) is inside a transaction; it waits up to the busy
        timeout, then reports what is left.
        """
        db = self._db()
        problems = []
        try:
            db.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # busy: another process reads or writes
            problems.append(f"VACUUM deferred ({exc})")
        busy, _log, _done = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            problems.append("the write-ahead log could not be truncated (another connection is reading)")
        return "; ".join(problems) or None

    # -- the indexing queue ----------------------------------------------------

    def unindexed(self, limit: int, *, exclude: Sequence[str] = (), up_to_id: str | None = None) -> list[Interaction]:
        """Up to `limit` rows not yet in Chroma, shared fairly between namespaces.

        Strictly oldest-first made one tenant's bulk import delay every other tenant's
        new rows (4,000 rows ahead of one). Each namespace with a backlog gets an equal
        share of the batch (oldest rows first within it), so a lone new row is picked up
        in the next batch whatever the other backlogs. Ids in `exclude` (rows another
        thread is embedding) are skipped; with `up_to_id`, rows logged after it too.
        """
        db = self._db()
        skip = f" AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        args: tuple[Any, ...] = tuple(exclude)
        if up_to_id is not None:
            skip += " AND id<=?"
            args += (up_to_id,)
        spaces = [r[0] for r in db.execute(
            f"SELECT namespace, MIN(id) AS first FROM interactions WHERE indexed=0{skip}"
            " GROUP BY namespace ORDER BY first LIMIT ?", (*args, limit))]
        if not spaces:
            return []
        queues = [db.execute(f"SELECT {self._cols} FROM interactions WHERE indexed=0 AND namespace=?{skip}"
                             " ORDER BY id LIMIT ?", (ns, *args, limit)).fetchall() for ns in spaces]
        rows: list[Any] = []
        depth = 0
        while len(rows) < limit and any(depth < len(q) for q in queues):  # round-robin
            rows.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return [_row_to_interaction(r) for r in sorted(rows[:limit], key=lambda r: r[0])]

    def unindexed_rows_in(self, namespace: Namespace, up_to_id: str | None = None, *,
                          include_descendants: bool = False, limit: int = 64) -> list[Interaction]:
        """Rows of one namespace (and its sub-namespaces) not yet in Chroma, newest first."""
        where, params = self._ns_clause(namespace, include_descendants)
        sql = f"SELECT {self._cols} FROM interactions WHERE indexed=0 AND {where}"
        if up_to_id is not None:
            sql += " AND id<=?"
            params.append(up_to_id)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [_row_to_interaction(r) for r in self._db().execute(sql, params)]

    @staticmethod
    def _ns_clause(namespace: Namespace, include_descendants: bool) -> tuple[str, list[Any]]:
        path = join_namespace(namespace)
        if not include_descendants:
            return "namespace=?", [path]
        # substr, not LIKE: a label may contain LIKE's wildcards
        return "(namespace=? OR substr(namespace, 1, ?)=?)", [path, len(path) + 1, path + "/"]

    def forgotten_among(self, ids: Sequence[str]) -> list[str]:
        """Those of `ids` that were forgotten (to undo a Chroma write that raced a forget)."""
        if not ids:
            return []
        rows = self._db().execute(
            f"SELECT id FROM forgotten WHERE id IN ({','.join('?' * len(ids))})", list(ids)).fetchall()
        return [r[0] for r in rows]

    def namespaces_of(self, ids: Sequence[str]) -> dict[str, Namespace]:
        """The namespace of each of `ids` the journal knows, forgotten or not (the index
        keeps one Chroma collection per namespace: a delete must find the right one)."""
        out: dict[str, Namespace] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for table in ("interactions", "forgotten"):
                for id_, ns in self._db().execute(
                        f"SELECT id, namespace FROM {table} WHERE id IN ({marks})", chunk):
                    out[id_] = tuple(ns.split(NAMESPACE_SEP))
        return out

    def mark_indexed(self, ids: Sequence[str], indexed: bool = True) -> None:
        with self._tx(durable=indexed is False) as db:  # a lost "indexed" mark only re-indexes
            db.executemany("UPDATE interactions SET indexed=? WHERE id=?", [(int(indexed), i) for i in ids])

    def pending_deletes(self, limit: int) -> list[str]:
        rows = self._db().execute(
            "SELECT id FROM forgotten WHERE chroma_deleted=0 LIMIT ?", (limit,)
        ).fetchall()
        return [r[0] for r in rows]

    def mark_deleted(self, ids: Sequence[str]) -> None:
        with self._tx(durable=False) as db:  # a lost mark only deletes from Chroma again
            db.executemany("UPDATE forgotten SET chroma_deleted=1 WHERE id=?", [(i,) for i in ids])

    def backlog(self, up_to_id: str | None = None) -> int:
        """Rows the worker still has to write to or delete from Chroma (with `up_to_id`:
        those of ids up to it, i.e. logged before it was made: `flush`'s watermark)."""
        db = self._db()
        upto, args = ("", ()) if up_to_id is None else (" AND id<=?", (up_to_id,))
        a = db.execute(f"SELECT COUNT(*) FROM interactions WHERE indexed=0{upto}", args).fetchone()[0]
        b = db.execute(f"SELECT COUNT(*) FROM forgotten WHERE chroma_deleted=0{upto}", args).fetchone()[0]
        return int(a) + int(b)

    def unindexed_in(self, namespace: Namespace, up_to_id: str | None = None, *,
                     include_descendants: bool = False) -> int:
        """Rows of one namespace not yet in Chroma (logged up to `up_to_id`, if given)."""
        where, params = self._ns_clause(namespace, include_descendants)
        sql = f"SELECT COUNT(*) FROM interactions WHERE indexed=0 AND {where}"
        if up_to_id is not None:
            sql += " AND id<=?"
            params.append(up_to_id)
        return int(self._db().execute(sql, params).fetchone()[0])

    def indexed_ids(self) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT id FROM interactions WHERE indexed=1")}

    def requeue_escaped_keys(self) -> int:
        """See `requeue_escaped_keys` (the module's): once per journal, at open."""
        with self._tx() as db:
            return requeue_escaped_keys(db, "instr(metadata, ?) > 0")

    def indexed_ids_in(self, namespace: Namespace, *, include_descendants: bool = False) -> dict[str, Namespace]:
        """Id -> namespace of the rows of one namespace (and its sub-namespaces) marked
        indexed: ids only, from the ``(indexed, namespace, id)`` index (no row is loaded or
        parsed; recall checks them against Chroma before the startup reconcile ran)."""
        where, params = self._ns_clause(namespace, include_descendants)
        return {id_: tuple(ns.split(NAMESPACE_SEP)) for id_, ns in self._db().execute(
            f"SELECT id, namespace FROM interactions WHERE indexed=1 AND {where}", params)}

    # -- reads -----------------------------------------------------------------

    def get(self, id_: str) -> Interaction | None:
        """The live interaction `id_` (None when unknown, forgotten or expired)."""
        row = self._db().execute(f"SELECT {self._cols} FROM interactions WHERE id=? AND {self._live}",
                                 (id_,)).fetchone()
        return _row_to_interaction(row) if row else None

    def get_many(self, ids: Sequence[str]) -> dict[str, Interaction]:
        if not ids:
            return {}
        rows = self._db().execute(
            f"SELECT {self._cols} FROM interactions WHERE id IN ({','.join('?' * len(ids))}) AND {self._live}",
            list(ids)
        ).fetchall()
        return {r[0]: _row_to_interaction(r) for r in rows}

    def list(
        self,
        *,
        namespace: Namespace | None = None,
        since: datetime | None = None,
        status: InteractionStatus | None = None,
        limit: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Interaction]:
        """Live interactions in logging order; `filter` is a `validate_filter` result,
        evaluated on the metadata with ``json_extract``."""
        clauses, params = [self._live], []
        if filter is not None:
            sql, fparams = _filter_sql(filter)
            clauses.append(sql)
            params.extend(fparams)
        if namespace is not None:
            clauses.append("namespace=?")
            params.append(join_namespace(namespace))
        if since is not None:
            clauses.append("created_at>=?")
            params.append(iso(since))
        if status is not None:
            clauses.append("status=?")
            params.append(status.value)
        sql = f"SELECT {self._cols} FROM interactions WHERE {' AND '.join(clauses)} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_row_to_interaction(r) for r in self._db().execute(sql, params)]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{namespace_path: {status: count}}``."""
        out: dict[str, dict[str, int]] = {}
        for ns, status, n in self._db().execute(
            "SELECT namespace, status, COUNT(*) FROM interactions GROUP BY namespace, status ORDER BY namespace"
        ):
            out.setdefault(ns, {})[status] = n
        return out

    def count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM interactions").fetchone()[0])

    def is_empty(self) -> bool:
        """No interaction and no forgotten one: a new journal (or one that lost its content)."""
        db = self._db()
        return (db.execute("SELECT 1 FROM interactions LIMIT 1").fetchone() is None
                and db.execute("SELECT 1 FROM forgotten LIMIT 1").fetchone() is None)

    def has_forgotten(self) -> bool:
        """Whether anything was ever forgotten (cheap)."""
        return self._db().execute("SELECT 1 FROM forgotten LIMIT 1").fetchone() is not None

    def forgotten_ids(self) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT id FROM forgotten")}
