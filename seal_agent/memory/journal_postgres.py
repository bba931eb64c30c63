"""The journal on PostgreSQL: one store of truth for many agent processes on many hosts.

Same promises as the SQLite journal (`seal_agent.memory.journal`), kept by the server:

  * **durable acknowledgement** -- every connection runs with ``synchronous_commit=on``,
    so a write returns only after the server flushed its commit record to disk (and to
    synchronous standbys when the operator configured some);
  * **dedup** -- the unique index ``(namespace, thread_key, content_hash)`` with
    ``INSERT ... ON CONFLICT DO NOTHING``, then the stored row is merged (metadata key-wise,
    feedback replaced, expiry extended) under a row lock: two hosts logging the same
    exchange at once store it once; an expired stored row is retired instead and the
    insert retried (see `seal_agent.memory.journal.retired_hash`);
  * **forget** -- rows deleted, ids kept in ``forgotten`` for the index worker and the
    lineages, history content emptied, in one transaction (facts too);
  * **watermarks / indexing queue** -- ``indexed`` and ``forgotten.chroma_deleted``, the
    queue shared fairly between namespaces exactly as in SQLite;
  * **revision** -- the text of ``pg_current_snapshot()``, hashed: it changes whenever any
    transaction that wrote has committed since the previous call (one that was running
    leaves the in-progress list; a new one moves ``xmax``), whoever committed it, so the
    middleware's cache is never served across another host's write.

Ids and namespaces use the ``"C"`` collation so that ``ORDER BY id`` is the byte order
SQLite uses (ids are time-ordered strings). An unreachable server makes every call raise
`BackendUnavailableError` naming the database (nothing of that call was acknowledged);
the connection is reopened by the next call, so service resumes when the server is back.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from seal_agent.errors import BackendUnavailableError, StorageError
from seal_agent.memory.journal import history_events, requeue_escaped_keys, retired_hash
from seal_agent.memory.journal_base import redact_url
from seal_agent.memory.records import (
    NAMESPACE_SEP,
    HistoryEvent,
    Interaction,
    InteractionStatus,
    Namespace,
    iso,
    join_namespace,
    metadata_key_path,
    utc_now,
)

__all__ = ["PostgresJournal"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interactions (
    id TEXT COLLATE "C" PRIMARY KEY,
    namespace TEXT COLLATE "C" NOT NULL,
    thread_id TEXT,
    thread_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    messages TEXT NOT NULL,
    task TEXT NOT NULL,
    outcome TEXT NOT NULL,
    metadata TEXT NOT NULL,
    feedback DOUBLE PRECISION,
    feedback_comment TEXT,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'new',
    consolidated_version TEXT,
    indexed INTEGER NOT NULL DEFAULT 0,
    expires_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS interactions_dedup ON interactions (namespace, thread_key, content_hash);
CREATE INDEX IF NOT EXISTS interactions_ns ON interactions (namespace, id);
CREATE INDEX IF NOT EXISTS interactions_unindexed ON interactions (indexed, id);
CREATE INDEX IF NOT EXISTS interactions_unindexed_ns ON interactions (indexed, namespace, id);
CREATE INDEX IF NOT EXISTS interactions_expiry ON interactions (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS forgotten (
    id TEXT COLLATE "C" PRIMARY KEY,
    namespace TEXT COLLATE "C" NOT NULL,
    forgotten_at TEXT NOT NULL,
    chroma_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS forgotten_pending ON forgotten (chroma_deleted) WHERE chroma_deleted=0;
CREATE TABLE IF NOT EXISTS history (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL,
    event TEXT NOT NULL,
    at TEXT NOT NULL,
    namespace TEXT COLLATE "C" NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS history_id ON history (id, seq)
"""

# Key of the advisory lock that serialises schema creation: CREATE TABLE IF NOT EXISTS
# run by two new processes at once can still collide in the catalog.
_SCHEMA_LOCK = 0x5EA1_0001

_NOW = "extract(epoch from clock_timestamp())"
_LIVE = f"(expires_at IS NULL OR expires_at > {_NOW})"
_COLS = ("id, namespace, thread_id, created_at, messages, task, outcome, metadata, feedback, "
         "feedback_comment, content_hash, status, consolidated_version, expires_at")

_UNSET: Any = object()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _row(row: Sequence[Any]) -> Interaction:
    (id_, ns, thread_id, created_at, messages, task, outcome, metadata, feedback,
     comment, chash, status, version, expires) = row
    return Interaction(
        id=id_, namespace=tuple(ns.split("/")), thread_id=thread_id,
        created_at=datetime.fromisoformat(created_at), messages=tuple(json.loads(messages)), task=task,
        outcome=outcome, metadata=json.loads(metadata), feedback=feedback, feedback_comment=comment,
        content_hash=chash, status=InteractionStatus(status), consolidated_version=version,
        expires_at=None if expires is None else datetime.fromtimestamp(expires, UTC),
    )


# ---------------------------------------------------------------- metadata filters

_OPS = {"$eq": "=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _typed(op: str, path: list[str], value: Any) -> tuple[str, list[Any]]:
    """``metadata[path] op value`` when the stored value is a scalar of value's kind, else
    false. CASE, not AND: Postgres does not promise to evaluate AND left to right, and the
    cast must never see a value of another kind."""
    # One `->` per key, never `#>` with a text[] path: `#>` also indexes arrays by a key
    # that looks like a number ("tags.0"), which SQLite's journal and Chroma never do.
    x = "(metadata::jsonb" + " -> %s::text" * len(path) + ")"
    if isinstance(value, bool):
        kind, cast = "boolean", "::boolean"
    elif isinstance(value, int):  # numeric: exact for every 64-bit integer (float8 is not past 2**53)
        kind, cast = "number", "::numeric"
    elif isinstance(value, float):
        kind, cast = "number", "::float8"
    else:
        kind, cast, value = "string", "", str(value)
    return (f"(CASE WHEN jsonb_typeof({x})='{kind}' THEN ({x} #>> '{{}}'){cast} {op} %s ELSE false END)",
            [*path, *path, value])


def _filter_sql(flt: dict[str, Any]) -> tuple[str, list[Any]]:
    """A validated metadata filter as a condition on ``metadata`` with Chroma's meaning
    (``$ne``/``$nin`` also match rows that lack the key), like the SQLite journal's."""
    parts: list[str] = []
    params: list[Any] = []
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            subs = [_filter_sql(c) for c in cond]
            parts.append("(" + (" AND " if key == "$and" else " OR ").join(s for s, _ in subs) + ")")
            for _, p in subs:
                params.extend(p)
            continue
        path = metadata_key_path(key)  # keys may hold dots, escaped
        (op, value), = cond.items()
        if op in ("$in", "$nin"):
            subs = [_typed("=", path, v) for v in value]
            sql = "(" + " OR ".join(s for s, _ in subs) + ")" if subs else "false"
            parts.append(sql if op == "$in" else f"(NOT {sql})")
            for _, p in subs:
                params.extend(p)
        elif op == "$ne":
            sql, p = _typed("=", path, value)
            parts.append(f"(NOT {sql})")
            params.extend(p)
        else:
            sql, p = _typed(_OPS[op], path, value)
            parts.append(sql)
            params.extend(p)
    return "(" + " AND ".join(parts) + ")", params


# ---------------------------------------------------------------- the facts' SQL

_SQLITE_TABLE_CHECK = re.compile(r"SELECT 1 FROM sqlite_master WHERE type='table' AND name='(\w+)'")


@functools.lru_cache(maxsize=256)
def _translate(sql: str) -> str:
    """SQLite-dialect SQL of `seal_agent.memory.facts` in Postgres' dialect: ``?`` to
    ``%s``, ``INSERT OR IGNORE`` to ``ON CONFLICT DO NOTHING``, the ``sqlite_master``
    existence check to the catalog. Only these idioms: the facts' SQL uses no others (its
    tests run on both backends)."""
    m = _SQLITE_TABLE_CHECK.fullmatch(sql.strip())
    if m:
        return f"SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = '{m.group(1)}'"
    out = sql.replace("%", "%%").replace("?", "%s")
    if re.match(r"\s*INSERT OR IGNORE INTO", out, re.I):
        out = re.sub(r"INSERT OR IGNORE INTO", "INSERT INTO", out, count=1, flags=re.I) + " ON CONFLICT DO NOTHING"
    return out


class _Compat:
    """A psycopg connection that takes the facts' SQLite-dialect statements."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        return self._conn.execute(_translate(sql), tuple(parameters) if parameters else None)

    def executemany(self, sql: str, seq: Any) -> Any:
        cur = self._conn.cursor()
        rows = [tuple(p) for p in seq]
        if rows:
            cur.executemany(_translate(sql), rows)
        return cur


class PostgresJournal:
    """The journal in a PostgreSQL database (its ``public`` schema, or the ``search_path``
    the URL sets with ``?options=-csearch_path%3Dname``). Thread-safe: one connection per
    thread, like the SQLite journal; processes and hosts coordinate through the server.

    Args:
        url: ``postgresql://user[:password]@host[:port]/dbname[?...]`` (libpq's URL).
        read_only: Write nothing (a writing call raises `StorageError`); the schema must exist.
    """

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        import psycopg  # the optional extra "postgres": seal-agent[postgres]

        self._psycopg = psycopg
        self.url = url
        self.path = redact_url(url)  # what errors name (never the password)
        self.read_only = read_only
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._revision_conn: Any = None
        if read_only:
            if self._db().execute("SELECT to_regclass('interactions')").fetchone()[0] is None:
                raise StorageError(f"the database {self.path} holds no seal_agent journal (no table 'interactions')",
                                   path=self.path)
            return
        from seal_agent.memory.facts import _SCHEMA as FACTS_SCHEMA

        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in filter(str.strip, (_SCHEMA + ";" + FACTS_SCHEMA).split(";")):
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('format_version', '1') ON CONFLICT (key) DO NOTHING")

    # -- connections -----------------------------------------------------------

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                   options="-c synchronous_commit=on"
                                   + (" -c default_transaction_read_only=on" if self.read_only else ""))
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _unavailable(self, exc: BaseException) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"the journal database {self.path} is unreachable or went away ({str(exc).strip() or type(exc).__name__}); "
            "nothing of this call was acknowledged. Retry when the server is back: the next call reconnects")

    def _drop(self) -> None:
        conn = getattr(self._local, "db", None)
        self._local.db = None
        if conn is not None:
            with self._all_lock:
                if conn in self._all:
                    self._all.remove(conn)
            try:
                conn.close()
            except Exception:  # already broken
                pass

    def _raw(self) -> Any:
        conn = getattr(self._local, "db", None)
        if conn is None or conn.closed or conn.broken:
            self._drop()
            conn = self._connect()
            self._local.db = conn
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Server faults as our errors; a broken connection is dropped (the next call reconnects)."""
        psycopg = self._psycopg
        try:
            yield
        except psycopg.IntegrityError as exc:  # the interface's type on both backends (SealMemory catches it)
            raise sqlite3.IntegrityError(f"UNIQUE constraint failed: {str(exc).strip()}") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if isinstance(exc, psycopg.errors.DiskFull):
                raise StorageError(f"the journal database {self.path} is out of disk space ({exc}); the write was "
                                   "rolled back and everything acknowledged before it is kept", path=self.path) from exc
            if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
                raise StorageError(f"the journal database {self.path} is read-only ({exc})", path=self.path) from exc
            self._drop()
            raise self._unavailable(exc) from exc

    def _db(self) -> _Compat:
        """This thread's connection, taking the facts' SQLite-dialect SQL (autocommit)."""
        with self._errors():
            return _Compat(self._raw())

    @contextmanager
    def _tx(self) -> Iterator[_Compat]:
        """One transaction (facts' dialect): committed -- and flushed by the server -- or none."""
        with self._conn_tx() as conn:
            yield _Compat(conn)

    @contextmanager
    def _conn_tx(self) -> Iterator[Any]:
        if self.read_only:
            raise StorageError(f"this memory opened its journal {self.path} read-only; it cannot be written",
                               path=self.path)
        with self._errors():
            conn = self._raw()
            with conn.transaction():
                yield conn

    def _q(self, sql: str, params: Sequence[Any] | None = None) -> list[Any]:
        with self._errors():
            return self._raw().execute(sql, params).fetchall()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        self._local = threading.local()
        self._revision_conn = None

    # -- writes ----------------------------------------------------------------

    @staticmethod
    def _history(conn: Any, id_: str, event: str, namespace: str, data: Any) -> None:
        conn.execute("INSERT INTO history (id, event, at, namespace, data) VALUES (%s,%s,%s,%s,%s)",
                     (id_, event, iso(utc_now()), namespace, None if data is None else _json(data)))

    def _snapshot(self, conn: Any, id_: str, event: str) -> None:
        row = conn.execute("SELECT namespace, messages, metadata, feedback, feedback_comment, expires_at "
                           "FROM interactions WHERE id=%s", (id_,)).fetchone()
        if row is not None:
            ns, messages, metadata, feedback, comment, expires = row
            self._history(conn, id_, event, ns, {"messages": json.loads(messages), "metadata": json.loads(metadata),
                                                 "feedback": feedback, "feedback_comment": comment,
                                                 "expires_at": expires})

    def _insert_or_merge(self, conn: Any, it: Interaction) -> tuple[str, bool]:
        ns = join_namespace(it.namespace)
        thread_key = it.thread_id or ""
        for _ in range(5):  # a duplicate forgotten between our two statements: insert again
            row = conn.execute(
                "INSERT INTO interactions (id, namespace, thread_id, thread_key, created_at, messages, task, outcome,"
                " metadata, feedback, feedback_comment, content_hash, status, consolidated_version, expires_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (namespace, thread_key, content_hash) DO NOTHING RETURNING id",
                (it.id, ns, it.thread_id, thread_key, iso(it.created_at), _json(list(it.messages)), it.task,
                 it.outcome, _json(dict(it.metadata)), it.feedback, it.feedback_comment, it.content_hash,
                 it.status.value, it.consolidated_version,
                 None if it.expires_at is None else it.expires_at.timestamp())).fetchone()
            if row is not None:
                self._snapshot(conn, it.id, "created")
                return it.id, True
            stored = conn.execute(f"SELECT id, metadata, expires_at, {_LIVE} FROM interactions WHERE namespace=%s "
                                  "AND thread_key=%s AND content_hash=%s FOR UPDATE",
                                  (ns, thread_key, it.content_hash)).fetchone()
            if stored is None:
                continue
            id_, metadata, expires, live = stored
            if not live:  # expired: retired under the row lock, never merged into; insert again
                conn.execute(f"UPDATE interactions SET content_hash={retired_hash('id')} WHERE id=%s", (id_,))
                continue
            # The row lives as long as its longest-lived log asks (as in the SQLite journal).
            new_expiry = None if it.expires_at is None else it.expires_at.timestamp()
            extend = expires is not None and (new_expiry is None or new_expiry > expires)
            if extend:
                conn.execute("UPDATE interactions SET expires_at=%s WHERE id=%s", (new_expiry, id_))
            if it.metadata:
                conn.execute("UPDATE interactions SET metadata=%s, indexed=0 WHERE id=%s",
                             (_json({**json.loads(metadata), **dict(it.metadata)}), id_))
            if it.feedback is not None:
                conn.execute("UPDATE interactions SET feedback=%s, feedback_comment=%s WHERE id=%s",
                             (it.feedback, it.feedback_comment, id_))
            if it.metadata or it.feedback is not None or extend:
                self._snapshot(conn, id_, "updated")
            return id_, False
        raise StorageError(f"could not store interaction {it.id} in {self.path}: its duplicate kept being "
                           "forgotten or expiring while it was merged; retry", path=self.path)

    def insert(self, it: Interaction) -> tuple[str, bool]:
        """Store `it`, or merge it into its duplicate; (id, inserted). Durable on return."""
        with self._conn_tx() as conn:
            return self._insert_or_merge(conn, it)

    def insert_many(self, items: Sequence[Interaction]) -> list[tuple[str, bool]]:
        """Several interactions in ONE transaction (all or none)."""
        with self._conn_tx() as conn:
            return [self._insert_or_merge(conn, it) for it in items]

    def set_feedback(self, id_: str, score: float, comment: str | None) -> bool:
        with self._conn_tx() as conn:
            n = conn.execute(f"UPDATE interactions SET feedback=%s, feedback_comment=%s WHERE id=%s AND {_LIVE}",
                             (score, comment, id_)).rowcount
            if n:
                self._snapshot(conn, id_, "updated")
            return n > 0

    def update(self, id_: str, *, messages: Sequence[dict[str, Any]] | None = None, task: str = "",
               outcome: str = "", content_hash: str = "", metadata: dict[str, Any] | None = None,
               feedback: Any = _UNSET, feedback_comment: str | None = None) -> bool:
        """As `Journal.update`; a duplicate raises `sqlite3.IntegrityError`, as there (every
        constraint violation does, on this backend too: see `_errors`)."""
        sets: list[str] = []
        params: list[Any] = []
        if messages is not None:
            sets += ["messages=%s", "task=%s", "outcome=%s", "content_hash=%s"]
            params += [_json(list(messages)), task, outcome, content_hash]
        if metadata is not None:
            sets.append("metadata=%s")
            params.append(_json(dict(metadata)))
        if messages is not None or metadata is not None:
            sets.append("indexed=0")
        if feedback is not _UNSET:
            sets += ["feedback=%s", "feedback_comment=%s"]
            params += [feedback, feedback_comment]
        if not sets:
            return self.get(id_) is not None
        with self._conn_tx() as conn:
            if messages is not None:  # an expired row with these messages is retired, not a duplicate
                conn.execute(f"UPDATE interactions SET content_hash={retired_hash('id')} WHERE content_hash=%s "
                             f"AND NOT {_LIVE} AND id<>%s AND (namespace, thread_key) = "
                             "(SELECT namespace, thread_key FROM interactions WHERE id=%s)", (content_hash, id_, id_))
            n = conn.execute(f"UPDATE interactions SET {', '.join(sets)} WHERE id=%s AND {_LIVE}",
                             (*params, id_)).rowcount
            if n:
                self._snapshot(conn, id_, "updated")
            return n > 0

    def set_status(self, ids: Sequence[str], status: InteractionStatus, version: str | None) -> int:
        with self._conn_tx() as conn:
            return int(conn.execute("UPDATE interactions SET status=%s, consolidated_version=%s WHERE id = ANY(%s)",
                                    (status.value, version, list(ids))).rowcount)

    def forget(self, *, namespace: Namespace | None, ids: Sequence[str] | None,
               event: str = "forgotten") -> list[str]:
        """Delete interactions, remember them in ``forgotten``, empty their history's
        content and delete the facts distilled from them: one transaction."""
        clauses, params = ["true"], []
        if namespace is not None:
            clauses.append("namespace=%s")
            params.append(join_namespace(namespace))
        if ids is not None:
            clauses.append("id = ANY(%s)")
            params.append(list(ids))
        now = iso(utc_now())
        with self._conn_tx() as conn:
            rows = conn.execute(f"SELECT id, namespace FROM interactions WHERE {' AND '.join(clauses)} FOR UPDATE",
                                params).fetchall()
            if not rows:
                return []
            gone = [r[0] for r in rows]
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO forgotten (id, namespace, forgotten_at, chroma_deleted) "
                                "VALUES (%s,%s,%s,0) ON CONFLICT (id) DO UPDATE SET namespace=excluded.namespace, "
                                "forgotten_at=excluded.forgotten_at, chroma_deleted=0",
                                [(r[0], r[1], now) for r in rows])
            conn.execute("DELETE FROM interactions WHERE id = ANY(%s)", (gone,))
            conn.execute("UPDATE history SET data=NULL WHERE id = ANY(%s)", (gone,))
            for id_, ns in rows:
                self._history(conn, id_, event, ns, None)
            from seal_agent.memory.facts import forget_in_transaction

            forget_in_transaction(_Compat(conn), gone)
        return gone

    def requeue(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._conn_tx() as conn:
            return int(conn.execute("UPDATE interactions SET status='new', consolidated_version=NULL "
                                    "WHERE status='consolidated' AND id = ANY(%s)", (list(ids),)).rowcount)

    def note_expired(self, ids: Sequence[str]) -> None:
        with self._conn_tx() as conn:
            for id_, ns in conn.execute("SELECT id, namespace FROM interactions WHERE id = ANY(%s)",
                                        (list(ids),)).fetchall():
                self._history(conn, id_, "expired", ns, None)

    def scrub(self) -> str | None:
        """VACUUM the tables that held forgotten text; what is left, always something here:
        Postgres leaves the freed bytes in the table files until they are overwritten and
        keeps them in its write-ahead log and in backups until those are recycled."""
        try:
            with self._errors():
                self._raw().execute("VACUUM interactions, history, facts")
        except BackendUnavailableError:
            raise
        except self._psycopg.Error as exc:  # e.g. another VACUUM running
            return f"VACUUM on {self.path} deferred ({exc})"
        return (f"on PostgreSQL ({self.path}) VACUUM removed the deleted rows, but their bytes can stay in free "
                "space of the table files, in the write-ahead log and in backups until those are overwritten or "
                "recycled (VACUUM FULL, then CHECKPOINT, in a maintenance window)")

    # -- the indexing queue ----------------------------------------------------

    def unindexed(self, limit: int, *, exclude: Sequence[str] = (), up_to_id: str | None = None) -> list[Interaction]:
        """Up to `limit` rows not yet in Chroma, an equal share per namespace with a backlog
        (oldest first within each), none logged after `up_to_id`: like the SQLite journal's."""
        skip = " AND NOT (id = ANY(%s))" if exclude else ""
        ex: list[Any] = [list(exclude)] if exclude else []
        if up_to_id is not None:
            skip += " AND id<=%s"
            ex.append(up_to_id)
        spaces = [r[0] for r in self._q(
            f"SELECT namespace, MIN(id) AS first FROM interactions WHERE indexed=0{skip}"
            " GROUP BY namespace ORDER BY first LIMIT %s", (*ex, limit))]
        if not spaces:
            return []
        queues = [self._q(f"SELECT {_COLS} FROM interactions WHERE indexed=0 AND namespace=%s{skip}"
                          " ORDER BY id LIMIT %s", (ns, *ex, limit)) for ns in spaces]
        rows: list[Any] = []
        depth = 0
        while len(rows) < limit and any(depth < len(q) for q in queues):
            rows.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        return [_row(r) for r in sorted(rows[:limit], key=lambda r: r[0])]

    @staticmethod
    def _ns_clause(namespace: Namespace, include_descendants: bool) -> tuple[str, list[Any]]:
        path = join_namespace(namespace)
        if not include_descendants:
            return "namespace=%s", [path]
        return "(namespace=%s OR substr(namespace, 1, %s)=%s)", [path, len(path) + 1, path + "/"]

    def unindexed_rows_in(self, namespace: Namespace, up_to_id: str | None = None, *,
                          include_descendants: bool = False, limit: int = 64) -> list[Interaction]:
        where, params = self._ns_clause(namespace, include_descendants)
        sql = f"SELECT {_COLS} FROM interactions WHERE indexed=0 AND {where}"
        if up_to_id is not None:
            sql += " AND id<=%s"
            params.append(up_to_id)
        params.append(limit)
        return [_row(r) for r in self._q(sql + " ORDER BY id DESC LIMIT %s", params)]

    def unindexed_in(self, namespace: Namespace, up_to_id: str | None = None, *,
                     include_descendants: bool = False) -> int:
        where, params = self._ns_clause(namespace, include_descendants)
        sql = f"SELECT COUNT(*) FROM interactions WHERE indexed=0 AND {where}"
        if up_to_id is not None:
            sql += " AND id<=%s"
            params.append(up_to_id)
        return int(self._q(sql, params)[0][0])

    def forgotten_among(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return [r[0] for r in self._q("SELECT id FROM forgotten WHERE id = ANY(%s)", (list(ids),))]

    def namespaces_of(self, ids: Sequence[str]) -> dict[str, Namespace]:
        if not ids:
            return {}
        rows = self._q("SELECT id, namespace FROM interactions WHERE id = ANY(%s) "
                       "UNION ALL SELECT id, namespace FROM forgotten WHERE id = ANY(%s)", (list(ids), list(ids)))
        return {r[0]: tuple(r[1].split(NAMESPACE_SEP)) for r in rows}

    def mark_indexed(self, ids: Sequence[str], indexed: bool = True) -> None:
        with self._conn_tx() as conn:
            conn.execute("UPDATE interactions SET indexed=%s WHERE id = ANY(%s)", (int(indexed), list(ids)))

    def pending_deletes(self, limit: int) -> list[str]:
        return [r[0] for r in self._q("SELECT id FROM forgotten WHERE chroma_deleted=0 LIMIT %s", (limit,))]

    def mark_deleted(self, ids: Sequence[str]) -> None:
        with self._conn_tx() as conn:
            conn.execute("UPDATE forgotten SET chroma_deleted=1 WHERE id = ANY(%s)", (list(ids),))

    def checkpoint(self) -> None:
        """Nothing to do: the server checkpoints its own WAL."""

    def backlog(self, up_to_id: str | None = None) -> int:
        if up_to_id is None:
            row = self._q("SELECT (SELECT COUNT(*) FROM interactions WHERE indexed=0) + "
                          "(SELECT COUNT(*) FROM forgotten WHERE chroma_deleted=0)")
        else:  # `flush`'s watermark: rows logged before it
            row = self._q("SELECT (SELECT COUNT(*) FROM interactions WHERE indexed=0 AND id<=%s) + "
                          "(SELECT COUNT(*) FROM forgotten WHERE chroma_deleted=0 AND id<=%s)",
                          (up_to_id, up_to_id))
        return int(row[0][0])

    def indexed_ids(self) -> set[str]:
        return {r[0] for r in self._q("SELECT id FROM interactions WHERE indexed=1")}

    def requeue_escaped_keys(self) -> int:
        """See `seal_agent.memory.journal.requeue_escaped_keys`: once per database (hosts
        opening it at once take turns: the second finds the mark)."""
        with self._tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            return requeue_escaped_keys(db, "strpos(metadata, ?) > 0")

    def indexed_ids_in(self, namespace: Namespace, *, include_descendants: bool = False) -> dict[str, Namespace]:
        """Id -> namespace of the namespace's rows marked indexed (ids only), like the SQLite journal's."""
        where, params = self._ns_clause(namespace, include_descendants)
        return {r[0]: tuple(r[1].split(NAMESPACE_SEP))
                for r in self._q(f"SELECT id, namespace FROM interactions WHERE indexed=1 AND {where}", params)}

    def claim_meta(self, key: str, value: str) -> str:
        """Set ``meta[key]`` to `value` unless it is set; the value it holds afterwards
        (the first claimant's, among all processes and hosts)."""
        with self._conn_tx() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))
            return str(conn.execute("SELECT value FROM meta WHERE key=%s", (key,)).fetchone()[0])

    # -- reads -----------------------------------------------------------------

    def revision(self) -> int:
        """Changes whenever a writing transaction committed since the previous call, on any
        host (see the module docstring); read on a connection of its own."""
        with self._all_lock:
            conn = self._revision_conn
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
            self._revision_conn = conn
        with self._errors():
            snap = conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
        return int.from_bytes(hashlib.blake2b(snap.encode(), digest_size=8).digest(), "big") >> 1

    def get(self, id_: str) -> Interaction | None:
        rows = self._q(f"SELECT {_COLS} FROM interactions WHERE id=%s AND {_LIVE}", (id_,))
        return _row(rows[0]) if rows else None

    def get_many(self, ids: Sequence[str]) -> dict[str, Interaction]:
        if not ids:
            return {}
        rows = self._q(f"SELECT {_COLS} FROM interactions WHERE id = ANY(%s) AND {_LIVE}", (list(ids),))
        return {r[0]: _row(r) for r in rows}

    def list(self, *, namespace: Namespace | None = None, since: datetime | None = None,
             status: InteractionStatus | None = None, limit: int | None = None,
             filter: dict[str, Any] | None = None) -> list[Interaction]:
        clauses, params = [_LIVE], []
        if filter is not None:
            sql, fparams = _filter_sql(filter)
            clauses.append(sql)
            params.extend(fparams)
        if namespace is not None:
            clauses.append("namespace=%s")
            params.append(join_namespace(namespace))
        if since is not None:
            clauses.append("created_at>=%s")
            params.append(iso(since))
        if status is not None:
            clauses.append("status=%s")
            params.append(status.value)
        sql = f"SELECT {_COLS} FROM interactions WHERE {' AND '.join(clauses)} ORDER BY id"
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return [_row(r) for r in self._q(sql, params)]

    def history(self, id_: str) -> list[HistoryEvent]:
        """As `Journal.history`: an expired interaction's versions without content."""
        rows = self._q(f"SELECT h.id, h.event, h.at, h.namespace, h.data, i.expires_at, "
                       f"CASE WHEN i.id IS NULL THEN NULL ELSE {_LIVE} END FROM history h "
                       "LEFT JOIN interactions i ON i.id=h.id WHERE h.id=%s ORDER BY h.seq", (id_,))
        return history_events(rows)

    def expired(self, limit: int = 500) -> list[str]:
        return [r[0] for r in self._q(f"SELECT id FROM interactions WHERE expires_at <= {_NOW} "
                                      "ORDER BY expires_at LIMIT %s", (limit,))]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for ns, status, n in self._q("SELECT namespace, status, COUNT(*) FROM interactions "
                                     "GROUP BY namespace, status ORDER BY namespace"):
            out.setdefault(ns, {})[status] = int(n)
        return out

    def count(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM interactions")[0][0])

    def is_empty(self) -> bool:
        return not self._q("SELECT 1 FROM interactions LIMIT 1") and not self._q("SELECT 1 FROM forgotten LIMIT 1")

    def has_forgotten(self) -> bool:
        return bool(self._q("SELECT 1 FROM forgotten LIMIT 1"))

    def forgotten_ids(self) -> set[str]:
        return {r[0] for r in self._q("SELECT id FROM forgotten")}
