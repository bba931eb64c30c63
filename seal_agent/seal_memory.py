"""`SealMemory`: the one object an application holds.

It owns the memory home (``./.seal`` by default)::

    home/
      config.toml          settings (optional; see seal_agent.config)
      journal.sqlite3      every interaction, fsync'd: the store of truth
      chroma/              the embedded Chroma index (absent with chroma_url)
      adapters/            versioned LoRA adapters + CURRENT (see seal_agent.registry)
      consolidation/       checkpoints, self-edit sets, replay buffer of consolidation runs

and composes the journal (durable writes), the Chroma index (recall) and the
background worker that keeps the second in step with the first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from seal_agent.config import SealConfig
from seal_agent.errors import (
    BackendUnavailableError,
    NotFoundError,
    SealAgentError,
    StorageError,
    ValidationError,
)
from seal_agent.memory.chroma import (
    check_embedded,
    embedded_record_count,
    is_storage_fault,
    make_client,
    parse_chroma_url,
    snapshot_embedded,
)
from seal_agent.memory.embeddings import SubprocessEmbeddings, default_embeddings
from seal_agent.memory.facts import Fact, FactStore, forget_facts
from seal_agent.memory.index import ChromaIndex, IndexWorker, StallClock
from seal_agent.memory.journal import Journal
from seal_agent.memory.owner import IndexOwnership
from seal_agent.memory.records import (
    HistoryEvent,
    Interaction,
    InteractionStatus,
    Memory,
    Namespace,
    content_hash,
    new_interaction_id,
    normalize_messages,
    parse_time,
    task_and_outcome,
    utc_now,
    validate_filter,
    validate_metadata,
    validate_min_score,
    validate_namespace,
    validate_score,
    validate_text,
    validate_thread_id,
    validate_ttl,
)

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool

    from seal_agent.consolidation import ConsolidationReport
    from seal_agent.forget import ForgetReport
    from seal_agent.lineage import Lineage
    from seal_agent.model import AdaptiveChatModel
    from seal_agent.registry import AdapterRegistry

__all__ = ["SealMemory"]

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE: Namespace = ("default",)


def _interaction_id(value: Any, field: str) -> str:
    """An id argument: a string SQLite can store (a lone surrogate would raise deep inside)."""
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be an interaction id (a string)")
    return validate_text(value, field)


def _unwritable(home: Path) -> bool:
    """An existing home (or its journal) that this process cannot write."""
    journal = home / "journal.sqlite3"
    return home.is_dir() and (not os.access(home, os.W_OK)
                              or (journal.exists() and not os.access(journal, os.W_OK)))


class _ReadOnlyWorker(IndexWorker):
    """The worker of a read-only memory: indexes nothing (it could not mark rows indexed).

    `recall` queries the index as it is; waiting for, or catching up with, indexing
    returns at once.
    """

    def start(self) -> None:
        self._reconciled.set()

    def notify(self) -> None:
        pass

    def stop(self, timeout: float | None = 10.0) -> None:
        pass

    def wait_idle(self, timeout: float | None, pending: Callable[[], int] | None = None,
                  *, stop_on_error: bool = False) -> bool:
        return True

    def catch_up(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def drain(self, timeout: float | None, up_to_id: str | None = None) -> bool:
        return True


class SealMemory:
    """Long-term memory for an agent: every exchange logged durably and recalled by meaning.

    Args:
        home: Directory holding the journal, the embedded Chroma and (later) adapters.
        embeddings: Any LangChain `Embeddings`; default: all-MiniLM-L6-v2, offline.
        chroma_url: ``http://host:port`` of a Chroma server; default: embedded Chroma in ``home``.
        config: Settings; default: ``home/config.toml`` if present, else the defaults.
        chroma_client: An existing chromadb client to use instead of creating one.
        model: The served model (overrides ``config.model.name_or_path``): a local
            folder, a hub id, or ``"tiny-random"`` (random weights; tests and demos).
        read_only: Open for reading only (`recall`, `get`, `list`, `status`): the journal
            is opened read-only and an embedded index is read from a temporary copy
            (Chroma writes on open). `log`, `feedback`, `forget` and `consolidate` then
            raise `StorageError`. Default (None): read-only exactly when the home exists
            and cannot be written (a read-only disk or permissions), with a warning.
            Interactions the writer had not yet indexed are not recalled read-only.
        journal_url: ``postgresql://user@host:port/db``: the journal (and consolidation's
            lock, checkpoints and the scheduler's slots) on PostgreSQL, shared by every
            process and host; default ``$SEAL_JOURNAL_URL``, then ``memory.journal_url``,
            else ``home/journal.sqlite3``. With an embedded index, one home per journal
            (several homes need ``chroma_url``). See the README's Deployment section.

    Raises:
        StorageError: A file of the home is damaged (the message says how to restore or
            rebuild it), its disk is full, it cannot be written (and `read_only` is
            False), or the journal is empty while the embedded index still holds records
            (the store of truth was lost: restore it rather than serve an index that
            disagrees with it).
        ConfigError: ``home/config.toml`` is invalid, not UTF-8, or a folder.

    Example:
        >>> with SealMemory("./.seal") as mem:                      # doctest: +SKIP
        ...     mem.log([{"role": "user", "content": "I live in Lyon"},
        ...              {"role": "assistant", "content": "Noted!"}], namespace=("users", "ana"))
        ...     mem.recall("where does the user live?", namespace=("users", "ana"))

    Thread-safe. Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] = "./.seal",
        *,
        embeddings: Embeddings | None = None,
        chroma_url: str | None = None,
        config: SealConfig | None = None,
        chroma_client: Any = None,
        model: str | None = None,
        read_only: bool | None = None,
        journal_url: str | None = None,
    ) -> None:
        if chroma_url is not None:
            parse_chroma_url(chroma_url)  # fail before anything is created
        from seal_agent.memory.journal_base import journal_url_from_env, open_journal, validate_journal_url

        journal_url = validate_journal_url(journal_url or journal_url_from_env())
        self.home = Path(home).expanduser().resolve()
        if read_only is None:
            read_only = _unwritable(self.home)
            if read_only:
                logger.warning("memory home %s cannot be written: opened read-only (recall works; log, feedback, "
                               "forget and consolidate raise StorageError)", self.home)
        self.read_only = bool(read_only)
        if not self.read_only:
            try:
                self.home.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the memory home {self.home}: {exc.strerror or exc}",
                                   path=self.home) from exc
        self.config = config if config is not None else SealConfig.load(self.home)
        if model is not None:
            self.config = self.config.with_overrides(model={"name_or_path": model})
        self.chroma_url = chroma_url
        self.embeddings = embeddings if embeddings is not None else default_embeddings()
        mc = self.config.memory
        # The journal: home/journal.sqlite3, or PostgreSQL for many processes and hosts
        # (argument, then SEAL_JOURNAL_URL, then memory.journal_url; see journal_base).
        self.journal_url = journal_url or mc.journal_url
        self._journal = (open_journal(self.journal_url, read_only=self.read_only) if self.journal_url
                         else Journal(self.home / "journal.sqlite3", read_only=self.read_only))
        self._snapshot: Path | None = None  # read-only: the private copy of the embedded index
        try:
            if chroma_url is None and chroma_client is None:
                self._check_embedded_index()
                if self.journal_url and not self.read_only:  # one embedded index per Postgres journal
                    from seal_agent.coordination import claim_embedded_index

                    claim_embedded_index(self._journal, self.home)
                if self.read_only:
                    self._snapshot = snapshot_embedded(self.home)
            if not self.read_only:
                # Once per journal: rows indexed before metadata keys were escaped in Chroma
                # are indexed again, or recall(filter=...) on such a key would miss them.
                self._journal.requeue_escaped_keys()
        except BaseException:
            self._journal.close()
            raise
        client = chroma_client
        if client is None:
            home_dir = self._snapshot or self.home

            def client() -> Any:  # opened lazily by the index: a server may come up later
                return make_client(home_dir, chroma_url=chroma_url, max_open_collections=mc.max_open_collections)
        # The default model also runs in a child process for the worker's batches: see
        # SubprocessEmbeddings for why (log()'s tail latency).
        self._doc_embeddings = (SubprocessEmbeddings() if embeddings is None and mc.embed_in_subprocess
                                else None)
        self._index = ChromaIndex(client, mc.collection, self.embeddings, text_chars=mc.embedding_text_chars,
                                  document_embeddings=self._doc_embeddings, per_namespace=True,
                                  listing_ttl_s=mc.poll_interval_s,
                                  # exact search needs this process to be the index's only writer
                                  exact_rows=mc.exact_search_rows if chroma_url is None and chroma_client is None else 0,
                                  exact_key=f"{(self._snapshot or self.home).resolve() / 'chroma'}|{mc.collection}",
                                  max_open_collections=mc.max_open_collections)
        index = self._index

        def facts_client() -> Any:  # the interactions' client: one client per home and process
            return index.client

        self._facts = FactStore(self._journal, ChromaIndex(facts_client, mc.facts_collection, self.embeddings,
                                                           text_chars=mc.embedding_text_chars),
                                read_only=self.read_only, shares_client_of=self._index)
        self._worker = (_ReadOnlyWorker if self.read_only else IndexWorker)(
            self._journal, self._index,
            batch_size=mc.embed_batch_size, interval_s=mc.flush_interval_s,
            retry_initial_s=mc.retry_initial_s, retry_max_s=mc.retry_max_s, poll_interval_s=mc.poll_interval_s,
        )
        # Embedded Chroma has one writer per home (see seal_agent.memory.owner); with a
        # server or a client of your own every process indexes for itself.
        self._ownership = (IndexOwnership(self.home / "chroma.lock")
                           if chroma_url is None and chroma_client is None and not self.read_only else None)
        if self._ownership is not None:  # forgotten records' text leaves Chroma's files too
            from seal_agent.forget import close_and_scrub

            chroma_dir, journal, index = self.home / "chroma", self._journal, self._index

            def scrub(_ids: list[str]) -> None:
                problem, _ = close_and_scrub(index, chroma_dir, journal.forgotten_ids())
                if problem:
                    logger.warning("after deleting forgotten records: %s", problem)

            self._worker.after_delete = scrub
        self._closed = False
        self._registry: AdapterRegistry | None = None
        self._chat: AdaptiveChatModel | None = None
        self._scheduler: Any = None
        self._lock = threading.RLock()  # guards the lazily built registry, chat model, scheduler
        self._indexing = False  # True once this process writes the index (see _take_index)
        self._take_index()
        # TTL: expired rows are hidden from every read at once; this thread forgets them.
        self._sweep_stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        if not self.read_only:
            self._sweeper = threading.Thread(target=self._sweep, name="seal-ttl-sweep", daemon=True)
            self._sweeper.start()

    # ------------------------------------------------------------------ lifecycle

    @property
    def backend(self) -> str:
        """``"chroma-embedded"`` or ``"chroma-server <url>"``."""
        return f"chroma-server {self.chroma_url}" if self.chroma_url else "chroma-embedded"

    def _take_index(self) -> bool:
        """Start indexing in this process if it may (it owns the embedded index, or a
        server is used); True if it does. Called at open, and again by `recall` and
        `flush` in a process that found another owner, which may have exited since."""
        with self._lock:
            if self._indexing:
                return True
            if self._ownership is not None and not self._ownership.try_acquire():
                return False
            self._indexing = True
            self._worker.start()  # replays whatever the journal holds that Chroma lacks
            return True

    def _not_owner_error(self) -> BackendUnavailableError:
        assert self._ownership is not None
        return BackendUnavailableError(
            f"the embedded Chroma index of {self.home} is in use by {self._ownership.holder()}; an embedded "
            "index has one process at a time (this one can still log, list, forget and consolidate: the "
            "owner indexes what it writes). For recall from several processes run a Chroma server "
            f"(chroma run --path {self.home / 'chroma'} --port 8000) and open the home with "
            "chroma_url='http://localhost:8000' (or SEAL_CHROMA_URL) in every process"
        )

    def __enter__(self) -> SealMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_embedded_index(self) -> None:
        """Refuse a garbage ``chroma.sqlite3``, and an empty journal beside an index with records.

        The second happens when the journal was deleted, truncated to 0 bytes or replaced:
        serving recall from such an index would answer from memories the store of truth
        no longer has (and that `get`, `forget` and consolidation cannot see).
        """
        check_embedded(self.home)
        if not self._journal.is_empty():
            return
        n = embedded_record_count(self.home, self.config.memory.collection)
        if n:
            raise StorageError(
                f"the journal {self._journal.path} is empty or new, but the Chroma index {self.home / 'chroma'} "
                f"holds {n} records: the journal (the store of truth) was lost or replaced. Restore "
                f"{self._journal.path.name} from a backup; to start over with an empty memory instead, move "
                f"{self.home / 'chroma'} away as well", path=self._journal.path)

    def _wait_indexed(self, timeout: float) -> bool:
        """`close`'s wait for the worker to drain; False if it did not.

        Gives up at once on a storage fault (a full disk, a read-only or damaged index):
        those do not heal within a timeout, and closing must not hang on them. A Chroma
        server that is down is waited for, up to `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._worker.wait_idle(min(max(left, 0.0), 0.25)):
                return True
            err = self._worker.last_error
            if err is not None and is_storage_fault(err):
                logger.warning("not waiting for indexing to finish: %s", err)
                return False
            if left <= 0 or not self._worker.alive:  # a stopped worker drains nothing
                return False

    def close(self) -> None:
        """Wait (up to ``memory.close_timeout_s``) for indexing, then release everything.

        What could not be indexed in time stays in the journal and is indexed at the
        next start: nothing acknowledged is lost. On a storage fault (disk full) it does
        not wait.
        """
        if self._closed:
            return
        self.stop_scheduler()
        self._sweep_stop.set()
        if self._sweeper is not None:
            self._sweeper.join(30)
        self._closed = True
        if self._indexing and not self._wait_indexed(self.config.memory.close_timeout_s):
            logger.warning(
                "closing with %d interactions not yet in Chroma; they stay in the journal and are "
                "indexed at the next start", self._journal.backlog(),
            )
        self._worker.stop()
        self._index.close()
        if self._indexing and self._ownership is not None:
            self._clear_vector_slack()
        if self._ownership is not None:
            self._ownership.release()
        if self._doc_embeddings is not None:
            self._doc_embeddings.close()
        self._journal.close()
        if self._snapshot is not None:
            shutil.rmtree(self._snapshot, ignore_errors=True)

    def _clear_vector_slack(self) -> None:
        """Chroma just wrote its vector files from memory, unused slots included, which may
        hold text of forgotten interactions (see `seal_agent.forget.zero_hnsw_slack`): clear
        them before another process can open the index. Only in a home that forgot anything."""
        from seal_agent.forget import _chroma_open_here, zero_hnsw_slack

        try:
            if self._journal.has_forgotten() and not _chroma_open_here(self.home / "chroma"):
                zero_hnsw_slack(self.home / "chroma")
        except Exception:  # closing must not fail on it
            logger.warning("could not clear the unused slots of %s", self.home / "chroma", exc_info=True)

    def _check_open(self) -> None:
        if self._closed:
            raise SealAgentError("this SealMemory is closed")

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise StorageError(f"cannot {action}: the memory home {self.home} was opened read-only; open it "
                               "with read_only=False (it must be writable)", path=self.home)

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until every interaction logged before the call is in Chroma (rows other
        threads log meanwhile are not waited for: they would keep it from returning).

        This thread indexes batches too (the background worker may be starved on a busy
        machine). In a process that does not own an embedded index it waits for the
        owner to index them. It waits as long as indexing progresses, however slowly
        (a busy machine, a large backlog): `timeout` bounds a stall, not the whole wait.

        Args:
            timeout: Give up after this many seconds in which no interaction was
                indexed; None waits for ever.

        Raises:
            BackendUnavailableError: Nothing was indexed for `timeout` seconds with work
                left (Chroma failing, or the owning process not indexing); it says how
                many interactions are left.
        """
        self._check_open()
        # What to wait for: rows logged before this call. The whole backlog moved on while
        # other threads kept logging, and flush never returned.
        watermark = new_interaction_id()
        clock = StallClock(timeout)
        while not self._take_index():  # another process indexes: wait for it
            left = self._journal.backlog(watermark)
            if not left:
                return
            clock.observe(left)
            if clock.expired():
                raise BackendUnavailableError(
                    f"{left} interactions not indexed: none was indexed for {clock.stalled_s:.1f}s (flush timeout "
                    f"{timeout}s without progress) by the process that owns the index "
                    f"({self._ownership.holder() if self._ownership else '?'})")
            time.sleep(0.05)
        if not self._worker.drain(timeout, watermark):
            err = self._worker.last_error
            raise BackendUnavailableError(
                f"{self._journal.backlog(watermark)} interactions not indexed: none was indexed for {timeout}s (flush "
                "timeout without progress)" + (f"; last Chroma error: {err}" if err else "")
            )

    # ---------------------------------------------------------------------- write

    def log(
        self,
        messages: Sequence[Any],
        *,
        namespace: Namespace | Sequence[str] | str = DEFAULT_NAMESPACE,
        thread_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        feedback: float | None = None,
        ttl_s: float | None = None,
    ) -> str:
        """Record one exchange; return its id once it is durable (fsync'd).

        Embedding and the Chroma write happen in the background. Logging the same
        messages again in the same namespace and thread returns the existing id and
        merges into it what the new call adds: metadata key-wise (new values win) and
        the feedback, which replaces the stored one when given.

        Args:
            messages: LangChain messages or ``{"role", "content"}`` dicts, tool calls and
                tool results included. Content may be a list of LangChain content
                blocks: non-text blocks (images, files, audio...) are logged as a
                placeholder such as ``[image]`` plus a description in the message's
                ``attachments``.
            namespace: Scope, e.g. ``("users", "alice")``.
            thread_id: Conversation thread.
            metadata: JSON-serialisable extras, returned with recalled memories.
            feedback: Optional score in [-1, 1] (same as calling `feedback` afterwards).
            ttl_s: Seconds until it expires (default: the namespace's ``memory.ttl_namespaces``
                entry, else ``memory.ttl_s``; 0 there means never). Expired, it is never
                returned and the sweep forgets it everywhere (see `expire`).

        Raises:
            ValidationError: Bad messages, namespace, metadata or score (lone surrogates,
                NaN, values JSON cannot hold), naming the field; nothing is written.
        """
        self._check_open()
        interaction = self._new_interaction(messages, namespace=namespace, thread_id=thread_id,
                                            metadata=metadata, feedback=feedback, ttl_s=ttl_s)
        id_, inserted = self._journal.insert(interaction)
        if inserted:
            self._worker.notify()
        return id_

    def _new_interaction(
        self,
        messages: Any,
        *,
        namespace: Any = DEFAULT_NAMESPACE,
        thread_id: Any = None,
        metadata: Any = None,
        feedback: Any = None,
        ttl_s: Any = None,
    ) -> Interaction:
        """Validate one exchange and build its record; writes nothing.

        The single place where `log` and `log_many` check their input, so an import
        accepts exactly what `log` accepts.
        """
        mc = self.config.memory
        msgs = normalize_messages(messages, max_messages=mc.max_messages, max_message_chars=mc.max_message_chars)
        ns = validate_namespace(namespace)
        thread_id = validate_thread_id(thread_id)
        md = validate_metadata(metadata)
        score = None if feedback is None else validate_score(feedback, "feedback")
        task, outcome = task_and_outcome(msgs)
        ttl = self._ttl_for(ns, validate_ttl(ttl_s))
        now = utc_now()
        return Interaction(
            id=new_interaction_id(), namespace=ns, thread_id=thread_id, created_at=now,
            messages=tuple(msgs), task=task, outcome=outcome, metadata=md, feedback=score,
            content_hash=content_hash(msgs), expires_at=None if ttl is None else now + timedelta(seconds=ttl),
        )

    def _ttl_for(self, namespace: Namespace, ttl_s: float | None) -> float | None:
        """The time-to-live of a new interaction: its own, else its namespace's (longest
        matching path of ``memory.ttl_namespaces``), else ``memory.ttl_s``; None: never."""
        if ttl_s is not None:
            return ttl_s
        mc = self.config.memory
        path = "/".join(namespace)
        best = None
        for prefix, ttl in mc.ttl_namespaces.items():
            p = prefix.strip("/")
            if (path == p or path.startswith(p + "/")) and (best is None or len(p) > len(best[0])):
                best = (p, ttl)
        ttl = best[1] if best is not None else mc.ttl_s
        return float(ttl) if ttl else None

    def log_many(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        labels: Sequence[str] | None = None,
    ) -> list[tuple[str, bool]]:
        """Record several exchanges in one fsync'd transaction: all of them or none.

        Every row is validated exactly as `log` validates its arguments before anything
        is written, so a bad row 900 leaves nothing behind (what ``seal-agent memories
        import`` needs).

        Args:
            rows: One mapping of `log`'s arguments per exchange: ``messages`` and
                optionally ``namespace``, ``thread_id``, ``metadata``, ``feedback``.
            labels: How errors name each row (e.g. ``"in.jsonl:3"``); default ``rows[i]``.

        Returns:
            ``(id, inserted)`` per row; ``inserted`` is False for an exchange already
            stored (its existing id is returned), like `log`'s de-duplication.

        Raises:
            ValidationError: A bad row; the field names the row, e.g.
                ``in.jsonl:3: thread_id``. Nothing is written.
        """
        self._check_open()
        allowed = {"messages", "namespace", "thread_id", "metadata", "feedback", "ttl_s"}
        items = []
        for i, row in enumerate(rows):
            label = labels[i] if labels is not None else f"rows[{i}]"
            try:
                if not isinstance(row, Mapping):
                    raise ValidationError("row", row, f"must be a mapping of {sorted(allowed)}")
                extra = sorted(set(row) - allowed)
                if extra:
                    raise ValidationError(str(extra[0]), row[extra[0]], f"unknown field; known: {sorted(allowed)}")
                if "messages" not in row:
                    raise ValidationError("messages", None, "is required")
                items.append(self._new_interaction(
                    row["messages"], namespace=row.get("namespace", DEFAULT_NAMESPACE),
                    thread_id=row.get("thread_id"), metadata=row.get("metadata"), feedback=row.get("feedback"),
                    ttl_s=row.get("ttl_s")))
            except ValidationError as exc:
                raise ValidationError(f"{label}: {exc.field}", exc.value, exc.reason) from exc
        done = self._journal.insert_many(items)
        if any(inserted for _, inserted in done):
            self._worker.notify()
        return done

    async def alog(self, messages: Sequence[Any], **kwargs: Any) -> str:
        """Async `log` (the fsync runs in a thread so the event loop is not blocked)."""
        return await asyncio.to_thread(self.log, messages, **kwargs)

    def feedback(self, interaction_id: str, score: float, comment: str | None = None) -> None:
        """Attach a score in [-1, 1] (and an optional comment) to a logged interaction.

        Negative feedback routes the interaction to the `critique` self-edit at the
        next consolidation.

        Raises:
            ValidationError: Score out of range or comment not a string.
            NotFoundError: Unknown interaction id.
        """
        self._check_open()
        interaction_id = _interaction_id(interaction_id, "interaction_id")
        value = validate_score(score)
        if comment is not None and not isinstance(comment, str):
            raise ValidationError("comment", comment, "must be a string or None")
        if comment is not None:
            validate_text(comment, "comment")
        if not self._journal.set_feedback(interaction_id, value, comment):
            raise NotFoundError("interaction", interaction_id)

    def mark(self, ids: Sequence[str], status: InteractionStatus | str, *, version: str | None = None) -> int:
        """Set the status of interactions (the consolidation uses this); returns how many changed."""
        self._check_open()
        try:
            st = InteractionStatus(status)
        except ValueError as exc:
            raise ValidationError("status", status, f"must be one of {[s.value for s in InteractionStatus]}") from exc
        return self._journal.set_status(list(ids), st, version if st is InteractionStatus.CONSOLIDATED else None)

    _KEEP: Any = object()

    def update(self, interaction_id: str, *, messages: Sequence[Any] | None = None,
               metadata: dict[str, Any] | None = None, feedback: Any = _KEEP,
               comment: str | None = None) -> Interaction:
        """Change a logged interaction in place; return it as it is now.

        The previous version stays in `history` (written in the same transaction).
        New messages are re-embedded (recall finds the new text, never the old one);
        new metadata replaces the old (and is what recall's filters see). An update
        does not retrain adapters that learned the old text: the next consolidation
        learns the new one, and the gate's supersede rule treats it as a knowledge update.

        Args:
            messages: The new exchange (validated like `log`'s).
            metadata: The new metadata, whole (use `log` of the same exchange to merge keys).
            feedback: A new score in [-1, 1], or None to clear it; with `comment`.

        Raises:
            NotFoundError: No such interaction (or it expired).
            ValidationError: A bad value, or the new messages duplicate another
                interaction of the same namespace and thread.
        """
        import sqlite3

        self._check_open()
        self._check_writable("update")
        interaction_id = _interaction_id(interaction_id, "interaction_id")
        fields: dict[str, Any] = {}
        if messages is not None:
            mc = self.config.memory
            msgs = normalize_messages(messages, max_messages=mc.max_messages, max_message_chars=mc.max_message_chars)
            task, outcome = task_and_outcome(msgs)
            fields.update(messages=msgs, task=task, outcome=outcome, content_hash=content_hash(msgs))
        if metadata is not None:
            fields["metadata"] = validate_metadata(metadata)
        if feedback is not self._KEEP:
            if comment is not None:
                if not isinstance(comment, str):
                    raise ValidationError("comment", comment, "must be a string or None")
                validate_text(comment, "comment")
            fields.update(feedback=None if feedback is None else validate_score(feedback, "feedback"),
                          feedback_comment=comment)
        try:
            found = self._journal.update(interaction_id, **fields)
        except sqlite3.IntegrityError as exc:
            raise ValidationError("messages", messages, "an identical exchange is already logged in this namespace "
                                  "and thread (log it to merge metadata instead)") from exc
        if not found:
            raise NotFoundError("interaction", interaction_id)
        self._worker.notify()
        return self.get(interaction_id)

    async def aupdate(self, interaction_id: str, **kwargs: Any) -> Interaction:
        """Async `update`."""
        return await asyncio.to_thread(self.update, interaction_id, **kwargs)

    def history(self, id_: str) -> list[HistoryEvent]:
        """Every version of an interaction or a fact, oldest first.

        An interaction: ``created``, ``updated`` (each with the version's messages,
        metadata, feedback) and ``forgotten``/``expired`` (content removed: forget
        reaches the history too). A fact (id ``fact-...``): its ``created`` and
        ``superseded`` events and those of the facts it superseded or that superseded it.
        An unknown id has no history (an empty list).
        """
        self._check_open()
        id_ = _interaction_id(id_, "id")
        if id_.startswith("fact-"):
            return self._facts.history(id_)
        return self._journal.history(id_)

    async def ahistory(self, id_: str) -> list[HistoryEvent]:
        """Async `history`."""
        return await asyncio.to_thread(self.history, id_)

    def facts(self, *, namespace: Namespace | Sequence[str] | str | None = None,
              include_superseded: bool = False) -> list[Fact]:
        """Stored facts (see `seal_agent.memory.facts`), of one namespace or all; the
        active ones unless `include_superseded`."""
        self._check_open()
        ns = validate_namespace(namespace) if namespace is not None else None
        return self._facts.list(ns, include_superseded=include_superseded)

    def expire(self) -> int:
        """Forget every interaction whose time-to-live has passed, through `forget`
        (everywhere: Chroma, replay buffers, adapters, facts); how many.

        Expired interactions are never returned by `get`, `list` or `recall`, even
        before this runs; a background thread calls it every ``memory.ttl_sweep_s``.
        """
        self._check_open()
        self._check_writable("expire")
        total = 0
        while True:
            ids = self._journal.expired()
            if not ids:
                return total
            self._journal.note_expired(ids)
            self.forget(ids=ids)
            forget_facts(self, ids)  # idempotent when `forget` already did it
            total += len(ids)

    async def aexpire(self) -> int:
        """Async `expire`."""
        return await asyncio.to_thread(self.expire)

    def _sweep(self) -> None:
        while not self._sweep_stop.wait(self.config.memory.ttl_sweep_s):
            try:
                n = self.expire()
                if n:
                    logger.info("TTL sweep: forgot %d expired interactions", n)
            except Exception:  # a closed memory, a busy lock: the next sweep retries
                if self._sweep_stop.is_set():
                    return
                logger.warning("TTL sweep failed; retrying in %ss", self.config.memory.ttl_sweep_s, exc_info=True)

    def forget(self, *, namespace: Namespace | Sequence[str] | str | None = None,
               ids: Sequence[str] | None = None) -> ForgetReport:
        """Forget interactions by namespace (exactly), by ids, or both (their intersection),
        everywhere the memory home holds them (see `seal_agent.forget`).

        When it returns they are gone from `get`, `list` and `recall`; from the journal's
        and (in the process that owns the embedded index, or with a server) Chroma's
        records, verified, and from their files; from replay buffers, gate suites, gate
        reports, self-edit sets, consolidation checkpoints; and from the served weights:
        every adapter version that learned from them is deleted and CURRENT serves the
        newest version that never saw them (or the base model); a namespace lineage of a
        forgotten namespace is deleted whole. A consolidation running meanwhile never
        commits what it learned from them. What could not be done at once (another
        process owns the index, a run in progress holds files) is in ``pending``.

        Returns:
            A `ForgetReport` (``report.forgotten``: how many were deleted).

        Raises:
            ValidationError: Neither namespace nor ids, or a bad one.
            StorageError: The home is read-only.
        """
        from seal_agent.forget import ForgetReport, forget_interactions

        self._check_open()
        self._check_writable("forget")
        if namespace is None and ids is None:
            raise ValidationError("namespace", None, "give a namespace, ids, or both (refusing to forget everything)")
        ns = validate_namespace(namespace) if namespace is not None else None
        if ids is not None:
            if isinstance(ids, str) or not all(isinstance(i, str) for i in ids):
                raise ValidationError("ids", ids, "must be a list of interaction ids")
            ids = [_interaction_id(i, f"ids[{n}]") for n, i in enumerate(ids)]
            if not ids:
                return ForgetReport()
        report = forget_interactions(self, namespace=ns, ids=ids)
        if self.config.consolidation.forget_weights == "retrain":
            from seal_agent.forget import retrain_after_forget

            retrain_after_forget(self, report)
        return report

    async def aforget(self, **kwargs: Any) -> ForgetReport:
        """Async `forget` (the purge runs in a thread)."""
        return await asyncio.to_thread(self.forget, **kwargs)

    # ----------------------------------------------------------------------- read

    def get(self, interaction_id: str) -> Interaction:
        """The interaction with this id. Raises `NotFoundError` if there is none."""
        self._check_open()
        it = self._journal.get(_interaction_id(interaction_id, "interaction_id"))
        if it is None:
            raise NotFoundError("interaction", interaction_id)
        return it

    def list(
        self,
        *,
        namespace: Namespace | Sequence[str] | str | None = None,
        since: datetime | str | None = None,
        status: InteractionStatus | str | None = None,
        limit: int | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[Interaction]:
        """Interactions in logging order, filtered by namespace (exact), time, status and
        metadata (`filter`, as in `recall`). Expired interactions are never listed."""
        self._check_open()
        ns = validate_namespace(namespace) if namespace is not None else None
        t = parse_time(since, "since") if since is not None else None
        st = None
        if status is not None:
            try:
                st = InteractionStatus(status)
            except ValueError as exc:
                raise ValidationError("status", status,
                                      f"must be one of {[s.value for s in InteractionStatus]}") from exc
        # Past 2**63 - 1 both journals' drivers raised (OverflowError, bigint out of range).
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit < 2**63):
            raise ValidationError("limit", limit, "must be a positive integer below 2**63, or None")
        flt = validate_filter(filter)
        return self._journal.list(namespace=ns, since=t, status=st, limit=limit, filter=flt)

    def recall(
        self,
        query: str,
        *,
        namespace: Namespace | Sequence[str] | str = DEFAULT_NAMESPACE,
        k: int | None = None,
        min_score: float | None = None,
        include_descendants: bool = False,
        filter: dict[str, Any] | None = None,
        kinds: Sequence[str] = ("episodes",),
    ) -> list[Memory]:
        """The `k` past interactions most relevant to `query`, best first.

        The namespace is a hard filter: nothing from another namespace is ever returned.
        Everything logged before the call is included, however busy the machine: what
        the background worker has not indexed yet is indexed by this call first.

        Args:
            query: What to look for.
            namespace: Where to look.
            k: How many at most; default ``memory.recall_k``.
            min_score: Drop memories whose cosine similarity is below this.
            include_descendants: Also search sub-namespaces (``("users",)`` covers
                ``("users", "alice")``). Off by default: recall stays within one scope.
                Each namespace has its own Chroma collection, so this costs one query
                per sub-namespace (about a millisecond each): fine for a user's few
                threads, slow across thousands of tenants.
            filter: Metadata filter on the episodes, a hard ``where`` clause like the
                namespace: ``{"topic": "billing"}``, ``{"priority": {"$gte": 2}}``,
                ``$eq $ne $gt $gte $lt $lte $in $nin``, ``$and``/``$or``; a dotted key
                names a nested field (see `seal_agent.memory.records.validate_filter`).
            kinds: ``"episodes"`` (logged interactions, the default) and/or ``"facts"``
                (distilled facts, ``Memory.kind == "fact"``): facts come first, up to
                `k` of each.

        Raises:
            ValidationError: Bad query, namespace, k or min_score.
            BackendUnavailableError: Chroma cannot be reached (the message names the
                server's URL), another process owns this home's embedded index (use a
                Chroma server for several processes), or rows logged before the call are
                still not indexed after ``memory.recall_index_timeout_s`` (it says how many).
            StorageError: The process has no file descriptor left for the index (the
                message names ``ulimit -n`` and ``memory.max_open_collections``).
        """
        self._check_open()
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query", query, "must be a non-empty string")
        # A lone surrogate would fail in the embedder, unnamed; NUL is fine (a query is never stored).
        validate_text(query, "query", allow_nul=True)
        ns = validate_namespace(namespace)
        k = self.config.memory.recall_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise ValidationError("k", k, "must be an integer in [1, 1000]")
        min_score = validate_min_score(min_score)  # finite, in [-1, 1]: NaN would disable the filter
        flt = validate_filter(filter)
        if isinstance(kinds, str) or not kinds or not set(kinds) <= {"episodes", "facts"}:
            raise ValidationError("kinds", kinds, "must be a non-empty list of 'episodes' and/or 'facts'")
        if not self._take_index():
            raise self._not_owner_error()
        watermark = new_interaction_id()  # ids sort by time: everything logged before this call
        vector = self._index.embed_query(query)
        facts: list[Memory] = []
        if "facts" in kinds:
            if not self.read_only:  # a read-only home recalls the facts Chroma already holds
                self._facts.sync()
            facts = [f for f in self._facts.query(vector, ns, k, include_descendants=include_descendants)
                     if min_score is None or f.score >= min_score]
            if "episodes" not in kinds:
                return facts
        # Read-your-writes whatever the load: what this namespace logged before the call
        # and the background worker has not indexed yet (it may be starved, or busy with
        # another tenant's import) is indexed now, in this thread, before the query.
        # Bounded (memory.recall_index_timeout_s): past it, an error says how many rows are missing.
        self._worker.catch_up(ns, watermark, include_descendants=include_descendants,
                              timeout=self.config.memory.recall_index_timeout_s)
        hits = self._index.query(vector, ns, k, include_descendants=include_descendants, filter=flt)
        if self.read_only and flt is None:  # nothing may write the index here: score what it lacks exactly
            hits = self._with_unindexed(hits, vector, ns, watermark, k, include_descendants)
        # The journal is the truth: an id forgotten but not yet deleted from Chroma is dropped.
        rows = self._journal.get_many([i for i, _ in hits])
        out = []
        for id_, score in hits:
            it = rows.get(id_)
            if it is None or (min_score is not None and score < min_score):
                continue
            md = dict(it.metadata)
            md.update(thread_id=it.thread_id, feedback=it.feedback, status=it.status.value)
            out.append(Memory(id=it.id, text=it.text, score=score, namespace=it.namespace,
                              created_at=it.created_at, metadata=md))
        return facts + out

    def _with_unindexed(self, hits: list[tuple[str, float]], vector: list[float], ns: Namespace, watermark: str,
                        k: int, include_descendants: bool) -> list[tuple[str, float]]:
        """`hits` merged with the exact cosine scores of the namespace's unindexed rows."""
        import numpy as np

        pending = self._journal.unindexed_rows_in(ns, watermark, include_descendants=include_descendants,
                                                  limit=100_000)
        if not pending:
            return hits
        docs = np.asarray(self._index.embed_texts([it.text for it in pending], self._index.embeddings))
        q = np.asarray(vector)
        scores = docs @ q / np.maximum(np.linalg.norm(docs, axis=1) * np.linalg.norm(q), 1e-12)
        merged = dict(hits)
        merged.update({it.id: float(sc) for it, sc in zip(pending, scores, strict=True)})
        return sorted(merged.items(), key=lambda kv: -kv[1])[:k]

    async def arecall(self, query: str, **kwargs: Any) -> list[Memory]:
        """Async `recall`."""
        return await asyncio.to_thread(self.recall, query, **kwargs)

    def status(self) -> dict[str, Any]:
        """Counts by namespace and status, where things live, the indexing backlog, and how
        consolidation is doing (``consolidation``: see `seal_agent.consolidation.consolidation_status`)."""
        from seal_agent.consolidation import consolidation_status

        self._check_open()
        err = self._worker.last_error
        return {
            "home": str(self.home),
            "backend": self.backend,
            "collection": self.config.memory.collection,
            "interactions": self._journal.count(),
            "by_namespace": self._journal.counts(),
            "backlog": self._journal.backlog(),
            "last_index_error": str(err) if err else None,
            # who writes the embedded index: this process, or another one (see memory.owner)
            "index_owner": ("this process" if self._take_index()
                            else self._ownership.holder() if self._ownership else "?"),
            # the last consolidation's outcome, failures in a row, last success: read from
            # home/consolidation, so a CLI process sees what the scheduler daemon did
            "consolidation": consolidation_status(self),
            # what a chat model serves: CURRENT, or the version it falls back to when
            # CURRENT's weights are missing or damaged (with the problem)
            "adapter": self._adapter_status(),
        }

    def _adapter_status(self) -> dict[str, Any] | None:
        if not (self.home / "adapters").is_dir():
            return None
        serving = self.adapters.serving()
        return {"current": serving.current, "serving": serving.version, "problem": serving.problem}

    # ------------------------------------------------------- parametric memory

    def lineage(self, namespace: Namespace | Sequence[str] | str) -> Lineage:
        """The adapter lineage that learns from and serves `namespace` (see `seal_agent.lineage`):
        the global one unless ``consolidation.adapter_scope = "namespace"``."""
        from seal_agent.lineage import lineage_for

        return lineage_for(self.home, validate_namespace(namespace), self.config.consolidation)

    @property
    def adapters(self) -> AdapterRegistry:
        """The adapter registry of this home (``home/adapters``)."""
        with self._lock:
            if self._registry is None:
                from seal_agent.registry import AdapterRegistry

                self._registry = AdapterRegistry(self.home / "adapters")
            return self._registry

    def chat_model(self, **fields: Any) -> AdaptiveChatModel:
        """The served model as a LangChain chat model, following the registry's CURRENT.

        Loaded once per `SealMemory` (later calls return the same object; ``fields`` only
        apply to the first). Before each request it checks CURRENT and hot-swaps to a
        newly committed adapter, so an agent built on it picks up every consolidation.
        If CURRENT's weights are missing or damaged it serves the newest intact version
        of CURRENT's lineage (or the base model) instead and logs a warning; ``status()``
        and ``seal-agent adapters list`` show it (see `AdapterRegistry.serving`).

        With ``consolidation.adapter_scope = "namespace"`` each request is served its
        own namespace's adapter instead (`seal_agent.model.routing.LineageRouter`): the
        namespace is resolved as `SealMemoryMiddleware` resolves it (a run naming none
        gets ``("default",)``, the middleware's default too), up to
        ``model.max_loaded_adapters`` adapters stay loaded on the one base model, and a
        commit to one lineage is served to that namespace's next request.
        """
        self._check_open()
        with self._lock:
            if self._chat is None:
                from seal_agent.model import AdaptiveChatModel

                registry = self.adapters
                if self.config.consolidation.adapter_scope == "namespace":
                    from seal_agent.model.routing import LineageRouter

                    serving: dict[str, Any] = {"route": LineageRouter(
                        self.home, self.config.consolidation, default_namespace=DEFAULT_NAMESPACE,
                        global_registry=registry)}
                else:
                    serving = {"follow": lambda: registry.serving().version}
                self._chat = AdaptiveChatModel.from_config(
                    self.config.model,
                    resolver=lambda version: registry.get(version).path,
                    **serving,
                    **fields,
                )
            return self._chat

    def consolidate(
        self,
        *,
        dry_run: bool = False,
        teacher: BaseChatModel | None = None,
        cancel_event: threading.Event | None = None,
        progress: bool = True,
        namespace: Namespace | Sequence[str] | str | None = None,
        **overrides: dict[str, Any],
    ) -> ConsolidationReport:
        """Learn from new interactions: self-edits -> LoRA training -> gate -> commit or reject.

        With ``consolidation.adapter_scope = "namespace"`` every lineage with new
        interactions is consolidated in turn (see `seal_agent.lineage`).

        Args:
            dry_run: Generate self-edits, then stop before training.
            teacher: A LangChain chat model that writes the self-edits instead of the
                served model.
            cancel_event: Set it to stop the run at the next step; nothing is committed.
            progress: Show tqdm bars.
            namespace: With namespace scope, consolidate only the lineage of this namespace.
            **overrides: Config sections replaced for this run only, e.g.
                ``train={"learning_rate": 1e-3, "epochs": 3}``.

        Returns:
            A `ConsolidationReport` (``verdict`` is "committed", "rejected" or "skipped").
        """
        self._check_open()
        self._check_writable("consolidate")
        from seal_agent.consolidation import consolidate

        ns = validate_namespace(namespace) if namespace is not None else None
        return consolidate(self, dry_run=dry_run, teacher=teacher, cancel_event=cancel_event,
                           progress=progress, config=self.config.with_overrides(**overrides), namespace=ns)

    def improve_writer(self, *, rounds: int = 1, candidates: int | None = None, **kwargs: Any) -> Any:
        """ReST-EM: teach the model to write self-edits whose updates work (SEAL's outer loop).

        Each round samples `candidates` self-edits per interaction from the current
        writer, rewards each by what a throwaway LoRA update trained on it does to the
        interaction's questions (closed-book), keeps the best per interaction unless it
        hurt the canaries, fine-tunes the writer adapter on them and commits it to its
        own lineage (``home/writer/adapters``); consolidation then writes with it. Thin
        facade over `seal_agent.selfedit.writer.improve_writer` (``config``,
        ``questions``, ``interactions``, ``reward_fn``, ``teacher``, ``cancel_event``,
        ``progress`` pass through). Resumable after a kill; cancellable.

        Returns:
            A `seal_agent.selfedit.writer.WriterReport`.
        """
        self._check_open()
        self._check_writable("improve_writer")
        from seal_agent.selfedit.writer import improve_writer

        return improve_writer(self, rounds=rounds, candidates=candidates, **kwargs)

    async def aimprove_writer(self, **kwargs: Any) -> Any:
        """Async `improve_writer` (runs in a thread; cancel with ``cancel_event``)."""
        return await asyncio.to_thread(self.improve_writer, **kwargs)

    def start_scheduler(
        self,
        *,
        cron: str | None = None,
        interval_minutes: float | None = None,
        min_new_interactions: int | None = None,
        **schedule: Any,
    ) -> Any:
        """Run `consolidate` in the background on a schedule (APScheduler).

        Arguments override the ``[schedule]`` config section. Returns the running
        `seal_agent.scheduler.ConsolidationScheduler`.
        """
        self._check_open()
        self._check_writable("start the consolidation scheduler")
        from seal_agent.scheduler import ConsolidationScheduler

        overrides = {k: v for k, v in dict(cron=cron, interval_minutes=interval_minutes,
                                             min_new_interactions=min_new_interactions).items() if v is not None}
        cfg = self.config.with_overrides(schedule={**overrides, **schedule}).schedule
        with self._lock:
            if self._scheduler is not None:
                raise SealAgentError("a scheduler is already running for this SealMemory; stop_scheduler() first")
            self._scheduler = ConsolidationScheduler(self, cfg)
            self._scheduler.start()
            return self._scheduler

    def stop_scheduler(self, wait: bool = True) -> None:
        """Stop the background scheduler (waits for a running consolidation when `wait`)."""
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.stop(wait=wait)

    # ---------------------------------------------------------- LangGraph pieces

    def recall_node(self, **kwargs: Any) -> Callable[..., Any]:
        """A StateGraph node that puts recalled memories into the prompt (see integrations.langgraph)."""
        from seal_agent.integrations.langgraph import make_recall_node

        return make_recall_node(self, **kwargs)

    def log_node(self, **kwargs: Any) -> Callable[..., Any]:
        """A StateGraph node that logs the exchange of the turn (see integrations.langgraph)."""
        from seal_agent.integrations.langgraph import make_log_node

        return make_log_node(self, **kwargs)

    def pre_model_hook(self, **kwargs: Any) -> Callable[..., Any]:
        """``pre_model_hook`` for ``langgraph.prebuilt.create_react_agent`` (legacy API)."""
        from seal_agent.integrations.langgraph import make_pre_model_hook

        return make_pre_model_hook(self, **kwargs)

    def post_model_hook(self, **kwargs: Any) -> Callable[..., Any]:
        """``post_model_hook`` for ``langgraph.prebuilt.create_react_agent`` (legacy API)."""
        from seal_agent.integrations.langgraph import make_post_model_hook

        return make_post_model_hook(self, **kwargs)

    def tools(self, **kwargs: Any) -> list[BaseTool]:
        """``save_memory`` and ``recall_memory`` tools for agent-driven memory."""
        from seal_agent.integrations.langgraph import make_memory_tools

        return make_memory_tools(self, **kwargs)

    def middleware(self, **kwargs: Any) -> Any:
        """A `SealMemoryMiddleware` for ``langchain.agents.create_agent``."""
        from seal_agent.integrations.middleware import SealMemoryMiddleware

        return SealMemoryMiddleware(self, **kwargs)
