"""The vector index of interactions in a Chroma collection, and the worker that fills it.

Chroma holds one record per interaction: the embedding, the text, and scalar metadata
(Chroma metadata cannot hold lists or dicts). The namespace is stored as the joined
path ``ns`` plus one field per level (``ns_0``, ``ns_1``, ...) and ``ns_depth``, so a
namespace filter is a hard ``where`` clause evaluated by Chroma, never a relevance hint.
The caller's metadata goes in too, each scalar leaf under ``md_<dotted path>``
(``{"user": {"tier": 2}}`` -> ``md_user.tier = 2``), so `recall`'s metadata filters are
hard ``where`` clauses as well (`metadata_where`), joined with the namespace's.

The `IndexWorker` thread moves interactions from the journal into Chroma in batches
(one embedding call per batch, namespaces served in turn) and deletes forgotten ones.
When Chroma fails it backs off exponentially and says so in the log; the journal keeps
everything meanwhile. Callers that cannot wait for it -- `recall` (read-your-writes)
and `flush` -- index what they need in their own thread with the in-process embedder
(`IndexWorker.catch_up`, `IndexWorker.drain`), so a starved background worker (a busy
machine, a niced embedding process) delays nothing a caller depends on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.embeddings import Embeddings

from seal_agent.errors import BackendUnavailableError, ConfigError, StorageError, ValidationError
from seal_agent.memory.embeddings import embedding_identity
from seal_agent.memory.journal import Journal
from seal_agent.memory.records import Interaction, Namespace, flat_metadata, join_namespace

__all__ = ["ChromaIndex", "IndexWorker", "METADATA_PREFIX", "metadata_where", "namespace_where"]

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1


METADATA_PREFIX = "md_"


def metadata_where(flt: dict[str, Any]) -> dict[str, Any]:
    """A validated metadata filter (`seal_agent.memory.records.validate_filter`) as a Chroma
    ``where``: keys prefixed with `METADATA_PREFIX`, several keys joined with ``$and``."""
    clauses: list[dict[str, Any]] = []
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            subs = [metadata_where(c) for c in cond]
            clauses.append(subs[0] if len(subs) == 1 else {key: subs})
        else:
            clauses.append({METADATA_PREFIX + key: dict(cond)})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def with_filter(where: dict[str, Any], flt: dict[str, Any] | None) -> dict[str, Any]:
    """`where` (the namespace's) AND the metadata filter `flt`, if any."""
    if not flt:
        return where
    parts = where["$and"] if set(where) == {"$and"} else [where]
    return {"$and": [*parts, metadata_where(flt)]}


def namespace_where(namespace: Namespace, *, include_descendants: bool = False) -> dict[str, Any]:
    """The Chroma ``where`` filter selecting one namespace (or it and its sub-namespaces)."""
    if not include_descendants:
        return {"ns": join_namespace(namespace)}
    clauses: list[dict[str, Any]] = [{f"ns_{i}": label} for i, label in enumerate(namespace)]
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


class ChromaIndex:
    """Interactions in one Chroma collection, embedded by us (never by Chroma).

    Args:
        client: A chromadb client, or a zero-argument callable making one. A callable is
            called on first use, so that a Chroma server that is down at start-up only
            delays indexing instead of failing the constructor.
        collection: Collection name.
        embeddings: Any LangChain `Embeddings` (queries, and documents unless below).
        text_chars: Characters of an interaction's text that are embedded.
        document_embeddings: The same model, for the worker's document batches, when it
            runs elsewhere (e.g. `SubprocessEmbeddings`); default `embeddings`.

    The collection records which embedding model filled it (`embedding_identity`); opening
    it with another raises `ConfigError` instead of comparing incomparable vectors.
    """

    def __init__(
        self,
        client: Any | Callable[[], Any],
        collection: str,
        embeddings: Embeddings,
        *,
        text_chars: int = 2000,
        document_embeddings: Embeddings | None = None,
    ) -> None:
        self._client = None if callable(client) else client
        self._client_factory = client if callable(client) else None
        self.collection_name = collection
        self.embeddings = embeddings
        self.document_embeddings = document_embeddings or embeddings
        self.text_chars = text_chars
        self.identity = embedding_identity(embeddings)
        self._collection: Any = None
        self._lock = threading.Lock()
        # `exclusive` (a forget scrubbing Chroma's files from a child process) waits for the
        # operations in flight and holds new ones back: a VACUUM under a write made
        # Chroma's write fail half-applied (deleted records came back).
        self._gate = threading.Condition()
        self._ops = 0
        self._exclusive = False

    @contextmanager
    def _op(self) -> Iterator[None]:
        with self._gate:
            while self._exclusive:
                self._gate.wait()
            self._ops += 1
        try:
            yield
        finally:
            with self._gate:
                self._ops -= 1
                self._gate.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No operation of this index runs while the block runs (it waits for those in flight)."""
        with self._gate:
            while self._exclusive:
                self._gate.wait()
            self._exclusive = True
            while self._ops:
                self._gate.wait()
        try:
            yield
        finally:
            with self._gate:
                self._exclusive = False
                self._gate.notify_all()

    @property
    def collection(self) -> Any:
        """The Chroma collection, opened on first use (so a dead server fails late, not at init)."""
        with self._lock:
            if self._collection is None:
                try:
                    if self._client is None:
                        assert self._client_factory is not None
                        self._client = self._client_factory()
                    collection = self._client.get_or_create_collection(
                        self.collection_name,
                        embedding_function=None,  # Chroma's default would download a model
                        metadata={"hnsw:space": "cosine", "seal_format_version": INDEX_FORMAT_VERSION,
                                  "seal_embeddings": self.identity},
                    )
                    self._check_identity(collection)
                    self._collection = collection
                except (BackendUnavailableError, ConfigError, StorageError):
                    raise
                except Exception as exc:
                    raise BackendUnavailableError(
                        f"cannot open Chroma collection {self.collection_name!r}: {exc}"
                    ) from exc
            return self._collection

    def _check_identity(self, collection: Any) -> None:
        metadata = dict(collection.metadata or {})
        stored = metadata.get("seal_embeddings")
        if stored is None:  # made before identities were recorded: adopt ours
            collection.modify(metadata={**metadata, "seal_embeddings": self.identity})
        elif stored != self.identity:
            raise ConfigError(
                "embeddings", self.identity,
                f"Chroma collection {self.collection_name!r} was indexed with embeddings {stored!r}; "
                "vectors of another model cannot be compared with them. Open this home with the same "
                "embeddings, or rebuild the index for the new model: stop every process using it, move "
                "the home's chroma/ folder away and reopen (the journal re-indexes everything)",
            )

    def embed_texts(self, texts: list[str], embeddings: Embeddings | None = None) -> list[list[float]]:
        model = embeddings or self.document_embeddings
        return model.embed_documents([t[: self.text_chars] for t in texts])

    def upsert(self, interactions: Sequence[Interaction], *, embeddings: Embeddings | None = None) -> None:
        """Embed and write a batch (idempotent: re-running after a crash is harmless).

        Args:
            embeddings: Embed with this model instead of `document_embeddings` (the same
                model in this process, for callers that cannot wait for the worker's).
        """
        if not interactions:
            return
        vectors = self.embed_texts([it.text for it in interactions], embeddings)
        metadatas = []
        for it in interactions:
            md: dict[str, Any] = {
                "ns": join_namespace(it.namespace),
                "ns_depth": len(it.namespace),
                "created_at": it.created_at.timestamp(),
                "thread_id": it.thread_id or "",
            }
            md.update({f"ns_{i}": label for i, label in enumerate(it.namespace)})
            md.update({METADATA_PREFIX + k: v for k, v in flat_metadata(it.metadata).items()})
            metadatas.append(md)
        with self._op():
            # An upsert merges metadata into a stored record's: a key the caller removed
            # (`SealMemory.update`) is deleted explicitly (None), or filters would still match it.
            stored = self.collection.get(ids=[it.id for it in interactions], include=["metadatas"])
            old = dict(zip(stored["ids"], stored["metadatas"] or [], strict=False))
            for it, md in zip(interactions, metadatas, strict=True):
                md.update({k: None for k in (old.get(it.id) or {}) if k.startswith(METADATA_PREFIX) and k not in md})
            self.collection.upsert(
                ids=[it.id for it in interactions],
                embeddings=vectors,
                documents=[it.text for it in interactions],
                metadatas=metadatas,
            )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            with self._op():
                self.collection.delete(ids=list(ids))

    def present(self, ids: Sequence[str]) -> list[str]:
        """Those of `ids` that Chroma holds (a deletion is verified with it)."""
        if not ids:
            return []
        with self._op():
            return list(self.collection.get(ids=list(ids), include=[])["ids"])

    def embed_query(self, query: str) -> list[float]:
        return self.embeddings.embed_query(query)

    def query(
        self, vector: list[float], namespace: Namespace, k: int, *, include_descendants: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k (id, cosine similarity) nearest to `vector` within the namespace (and
        matching the validated metadata `filter`, if any), best first."""
        try:
            with self._op():
                res = self.collection.query(
                    query_embeddings=[vector],
                    n_results=k,
                    where=with_filter(namespace_where(namespace, include_descendants=include_descendants),
                                      filter),
                    include=["distances"],
                )
        except BackendUnavailableError:
            raise
        except Exception as exc:
            if "dimension" in str(exc).lower():
                raise ValidationError(
                    "embeddings", type(self.embeddings).__name__,
                    f"produce vectors of another size than collection {self.collection_name!r} holds ({exc})",
                ) from exc
            raise BackendUnavailableError(f"Chroma query failed: {exc}") from exc
        ids = res["ids"][0]
        dists = res["distances"][0]
        # cosine space: distance = 1 - cos_sim
        return [(i, 1.0 - float(d)) for i, d in zip(ids, dists, strict=True)]

    def count(self) -> int:
        with self._op():
            return int(self.collection.count())

    def close(self) -> None:
        """Release a client this index opened itself, so that a later open in this process
        reads Chroma afresh from disk (another process may have written it meanwhile)."""
        with self._lock:
            client, self._collection = self._client, None
            if self._client_factory is not None:
                self._client = None
                if client is not None and hasattr(client, "close"):
                    try:
                        client.close()
                    except Exception as exc:  # closing must not fail a shutdown
                        logger.debug("closing the Chroma client failed: %s", exc)

    def all_ids(self, page: int = 5000) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            with self._op():
                got = self.collection.get(include=[], limit=page, offset=offset)["ids"]
            out.update(got)
            if len(got) < page:
                return out
            offset += page


class IndexWorker:
    """Background thread: journal rows with ``indexed=0`` -> Chroma, forgotten ids -> deleted.

    `notify()` wakes it after a write; it also looks at the journal every
    `poll_interval_s` for rows that other processes logged. Failures never lose data:
    the rows stay unindexed in the journal and are retried with exponential back-off.

    Any thread may also index rows itself (`catch_up`, `drain`): every write is
    idempotent, rows another thread is already embedding are skipped where waiting is
    cheaper, and a write that raced a `forget` is undone right after it.
    """

    def __init__(
        self,
        journal: Journal,
        index: ChromaIndex,
        *,
        batch_size: int = 64,
        interval_s: float = 0.05,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.journal = journal
        self.index = index
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.poll_interval_s = poll_interval_s
        self.last_error: Exception | None = None
        # Called with the ids just deleted from Chroma (forgotten ones): the owner of an
        # embedded index scrubs their text from Chroma's files (see seal_agent.forget).
        self.after_delete: Callable[[list[str]], None] | None = None
        self._wake = threading.Condition()
        self._dirty = True  # a fresh start may find rows that Chroma lacks
        self._stop = False
        self._started = False
        self._reconciled = threading.Event()  # set once the startup check against Chroma ran
        self._claimed: set[str] = set()  # ids some thread is embedding right now
        self._claim_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="seal-index-worker", daemon=True)

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def notify(self) -> None:
        with self._wake:
            self._dirty = True
            self._wake.notify_all()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout: float | None, pending: Callable[[], int] | None = None,
                  *, stop_on_error: bool = False) -> bool:
        """True once nothing is left to write; False if `timeout` passed first.

        Args:
            timeout: Longest wait in seconds; None waits for ever.
            pending: What to wait for (default: the whole backlog).
            stop_on_error: Give up as soon as a round fails (Chroma down).
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def give_up() -> bool:
            return ((deadline is not None and time.monotonic() >= deadline)
                    or (stop_on_error and self.last_error is not None))

        # Until the startup reconcile ran, the backlog count does not yet include rows Chroma lost.
        while self._started and not self._reconciled.wait(0.02):
            if give_up() or not self.alive:
                return False
        left = pending or self.journal.backlog
        while left():
            if give_up() or (self._started and not self.alive):  # a stopped worker drains nothing
                return False
            self.notify()
            with self._wake:
                self._wake.wait(0.01)
        return True

    # ----------------------------------------------------------- indexing in the caller

    def catch_up(self, namespace: Namespace, up_to_id: str, *, include_descendants: bool = False) -> int:
        """Index, in this thread, the namespace's rows logged up to `up_to_id`; how many.

        This is `recall`'s read-your-writes: whatever the background worker's state
        (starved, backing off, another tenant's import ahead), an acknowledged log is in
        Chroma before the query runs. Rows the worker is embedding meanwhile are embedded
        here too (idempotent; waiting on a starved worker is what this avoids).
        """
        done = 0
        while True:
            rows = self.journal.unindexed_rows_in(namespace, up_to_id, include_descendants=include_descendants,
                                                  limit=self.batch_size)
            if not rows:
                return done
            self._index(rows, self.index.embeddings)
            done += len(rows)

    def drain(self, timeout: float | None) -> bool:
        """Index the whole backlog, helping from this thread; False if `timeout` passed first.

        `flush` calls it: the caller is waiting anyway, so its thread embeds batches too
        (with the in-process model) instead of depending on the background worker alone.
        When Chroma fails, it waits through the worker's retries instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        while self._started and self.alive and not self._reconciled.wait(0.05):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        if isinstance(self.last_error, ConfigError):
            raise self.last_error
        while self.journal.backlog():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            try:
                self._delete_forgotten()
                with self._claim_lock:
                    busy = list(self._claimed)
                rows = self.journal.unindexed(self.batch_size, exclude=busy)
                if not rows and busy:
                    # only rows in another thread's hands are left: give it a moment, then take them too
                    if self.wait_idle(min(2.0, remaining() or 2.0)):
                        return True
                    rows = self.journal.unindexed(self.batch_size)
                self._index(rows, self.index.embeddings)
            except (ConfigError, StorageError):  # other embeddings, a full disk: waiting does not heal it
                raise
            except Exception as exc:  # Chroma down: the worker retries with back-off
                self.last_error = exc
                return self.wait_idle(remaining())
        return True

    def _index(self, rows: Sequence[Interaction], embeddings: Embeddings | None) -> None:
        """Embed and write rows, mark them indexed, undo any that a forget raced."""
        if not rows:
            return
        ids = [it.id for it in rows]
        with self._claim_lock:
            self._claimed.update(ids)
        try:
            self.index.upsert(rows, embeddings=embeddings)
            self.journal.mark_indexed(ids)
            raced = self.journal.forgotten_among(ids)
            if raced:  # forgotten while being embedded: it must not stay in Chroma
                self.index.delete(raced)
        finally:
            with self._claim_lock:
                self._claimed.difference_update(ids)

    def _delete_forgotten(self) -> int:
        deletes = self.journal.pending_deletes(self.batch_size)
        if deletes:
            self.index.delete(deletes)
            self.journal.mark_deleted(deletes)
            if self.after_delete is not None:
                self.after_delete(deletes)
        return len(deletes)

    # ------------------------------------------------------------------ reconciliation

    def reconcile(self) -> int:
        """Make Chroma agree with the journal, id by id; returns how many rows were queued.

        Journal rows marked indexed that Chroma lacks (a Chroma folder restored from a
        backup, records lost by two processes writing one embedded Chroma) are queued
        again; ids in Chroma that the journal forgot are deleted. Counts are not enough:
        a lost record and an orphan cancel out.
        """
        expected = self.journal.indexed_ids()
        present = self.index.all_ids()
        missing = sorted(expected - present)
        if missing:
            logger.warning("Chroma lacks %d journaled interactions; re-indexing them", len(missing))
            self.journal.mark_indexed(missing, indexed=False)
            self.notify()
        orphans = sorted((present - expected) & self.journal.forgotten_ids())
        if orphans:
            logger.warning("Chroma still holds %d forgotten interactions; deleting them", len(orphans))
            self.index.delete(orphans)
            if self.after_delete is not None:
                self.after_delete(orphans)
        return len(missing)

    # ------------------------------------------------------------------ the thread

    def _round(self) -> bool:
        """One batch of work; True if there may be more."""
        deleted = self._delete_forgotten()
        with self._claim_lock:
            busy = list(self._claimed)
        batch = self.journal.unindexed(self.batch_size, exclude=busy)
        self._index(batch, None)
        return len(batch) == self.batch_size or deleted == self.batch_size

    def _run(self) -> None:
        delay = self.retry_initial_s
        retry_at = 0.0  # monotonic time before which a failed round is not retried
        while True:
            with self._wake:
                while not self._stop:
                    wait = retry_at - time.monotonic()
                    if self._dirty and wait <= 0:
                        break
                    # notify() must not cut a back-off short: wait it out.
                    if not self._wake.wait(wait if wait > 0 else self.poll_interval_s) and wait <= 0:
                        self._dirty = True  # poll: other processes may have logged rows
                if self._stop:
                    return
                self._dirty = False
            try:
                if not self._reconciled.is_set():
                    self.reconcile()
                    self._reconciled.set()
                while self._round():
                    pass
            except ConfigError as exc:  # e.g. other embeddings than the index holds: no retry heals it
                self.last_error = exc
                logger.error("indexing stopped: %s", exc)
                return
            except Exception as exc:  # keep the thread alive whatever Chroma does
                self.last_error = exc
                logger.warning("indexing into Chroma failed (%s); retrying in %.1fs", exc, delay)
                retry_at = time.monotonic() + delay
                delay = min(delay * 2, self.retry_max_s)
                with self._wake:
                    self._dirty = True
                continue
            if self.last_error is not None:
                logger.info("Chroma is reachable again; indexing resumed")
                self.last_error = None
            delay = self.retry_initial_s
            # Let concurrent log() calls gather into one batch (one embedding call).
            if self.interval_s:
                with self._wake:
                    self._wake.wait_for(lambda: self._stop, timeout=self.interval_s)
