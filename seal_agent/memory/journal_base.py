"""What a journal backend is: the calls SealMemory, the index worker, consolidation, forget
and the facts make on it, and `open_journal`, which picks the backend from a URL.

Why an interface at all: one process on one host is served by the SQLite journal (zero
setup, fsync'd, see `seal_agent.memory.journal`); several processes on several hosts need
a journal they all reach, and that is PostgreSQL (`seal_agent.memory.journal_postgres`),
the engine LangGraph's own production store and checkpointer run on. Both keep the same
promises: an acknowledged write is durable (fsync'd before the call returns), a duplicate
exchange is merged rather than stored twice, forget deletes and remembers the id for the
index, and the indexing queue is shared fairly between namespaces.

The facts (`seal_agent.memory.facts`) run their own SQL inside the journal's database through
``_tx()`` and ``_db()``: written in SQLite's dialect with ``?`` placeholders, which the
Postgres journal's connection wrapper translates (see `journal_postgres._Compat`).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from seal_agent.errors import ValidationError
from seal_agent.memory.records import HistoryEvent, Interaction, InteractionStatus, Namespace

__all__ = ["JournalBackend", "is_postgres_url", "open_journal", "redact_url", "journal_url_from_env"]

JOURNAL_URL_ENV = "SEAL_JOURNAL_URL"


@runtime_checkable
class JournalBackend(Protocol):
    """The journal's contract (both backends are thread-safe and multi-process safe)."""

    read_only: bool
    path: Any  # a Path (SQLite) or the URL without its password (Postgres): named by errors

    # -- writes: each one transaction, durable when it returns
    def insert(self, it: Interaction) -> tuple[str, bool]: ...
    def insert_many(self, items: Sequence[Interaction]) -> list[tuple[str, bool]]: ...
    def set_feedback(self, id_: str, score: float, comment: str | None) -> bool: ...
    def update(self, id_: str, *, messages: Sequence[dict[str, Any]] | None = None, task: str = "",
               outcome: str = "", content_hash: str = "", metadata: dict[str, Any] | None = None,
               feedback: Any = ..., feedback_comment: str | None = None) -> bool:
        """Raises `sqlite3.IntegrityError` on a duplicate, whatever the backend (SealMemory
        turns it into a ValidationError)."""
        ...
    def set_status(self, ids: Sequence[str], status: InteractionStatus, version: str | None) -> int: ...
    def forget(self, *, namespace: Namespace | None, ids: Sequence[str] | None,
               event: str = "forgotten") -> list[str]: ...
    def requeue(self, ids: Sequence[str]) -> int: ...
    def note_expired(self, ids: Sequence[str]) -> None: ...
    def scrub(self) -> str | None: ...

    # -- the indexing queue (watermarks: ``indexed`` and ``forgotten.chroma_deleted``)
    def unindexed(self, limit: int, *, exclude: Sequence[str] = (),
                  up_to_id: str | None = None) -> list[Interaction]: ...
    def unindexed_rows_in(self, namespace: Namespace, up_to_id: str | None = None, *,
                          include_descendants: bool = False, limit: int = 64) -> list[Interaction]: ...
    def unindexed_in(self, namespace: Namespace, up_to_id: str | None = None, *,
                     include_descendants: bool = False) -> int: ...
    def mark_indexed(self, ids: Sequence[str], indexed: bool = True) -> None: ...
    def pending_deletes(self, limit: int) -> list[str]: ...
    def mark_deleted(self, ids: Sequence[str]) -> None: ...
    def forgotten_among(self, ids: Sequence[str]) -> list[str]: ...
    def namespaces_of(self, ids: Sequence[str]) -> dict[str, Namespace]: ...
    def backlog(self, up_to_id: str | None = None) -> int: ...
    def checkpoint(self) -> None: ...
    def indexed_ids(self) -> set[str]: ...
    def requeue_escaped_keys(self) -> int: ...
    def indexed_ids_in(self, namespace: Namespace, *,
                       include_descendants: bool = False) -> dict[str, Namespace]: ...

    # -- reads
    def revision(self) -> int: ...
    def get(self, id_: str) -> Interaction | None: ...
    def get_many(self, ids: Sequence[str]) -> dict[str, Interaction]: ...
    def list(self, *, namespace: Namespace | None = None, since: datetime | None = None,
             status: InteractionStatus | None = None, limit: int | None = None,
             filter: dict[str, Any] | None = None) -> list[Interaction]: ...
    def history(self, id_: str) -> list[HistoryEvent]: ...
    def expired(self, limit: int = 500) -> list[str]: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    def count(self) -> int: ...
    def is_empty(self) -> bool: ...
    def has_forgotten(self) -> bool: ...
    def forgotten_ids(self) -> set[str]: ...

    # -- the facts' access to the same database (SQLite dialect, ``?`` placeholders)
    def _tx(self) -> AbstractContextManager[Any]: ...
    def _db(self) -> Any: ...

    def close(self) -> None: ...


def is_postgres_url(url: str | os.PathLike[str] | None) -> bool:
    return isinstance(url, str) and url.split(":", 1)[0].lower() in ("postgresql", "postgres")


def redact_url(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


def journal_url_from_env() -> str | None:
    value = os.environ.get(JOURNAL_URL_ENV, "").strip()
    return value or None


def validate_journal_url(url: Any, field: str = "journal_url") -> str | None:
    """None, or a ``postgresql://`` URL (a path is not a URL: the SQLite journal lives in
    the home). Raises `ValidationError` naming `field` otherwise."""
    if url is None:
        return None
    if not isinstance(url, str) or not is_postgres_url(url):
        raise ValidationError(field, url if not isinstance(url, str) else redact_url(url),
                              "must be None (the home's SQLite journal) or a postgresql://user@host:port/db URL")
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname and "host=" not in parts.query:
        raise ValidationError(field, redact_url(url), "names no host (postgresql://user@host:port/db)")
    return url


def open_journal(url_or_path: str | os.PathLike[str], *, read_only: bool = False) -> JournalBackend:
    """``postgresql://...`` opens `PostgresJournal`; anything else is the path of an SQLite journal."""
    if is_postgres_url(url_or_path):
        from seal_agent.memory.journal_postgres import PostgresJournal

        return PostgresJournal(validate_journal_url(url_or_path) or "", read_only=read_only)
    from seal_agent.memory.journal import Journal

    return Journal(Path(url_or_path), read_only=read_only)  # type: ignore[return-value]
