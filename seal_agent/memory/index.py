"""The vector index of interactions in a Chroma collection, and the worker that fills it.

Chroma holds one record per interaction: the embedding, the text, and scalar metadata
(Chroma metadata cannot hold lists or dicts). The namespace is stored as the joined
path ``ns`` plus one field per level (``ns_0``, ``ns_1``, ...) and ``ns_depth``, so a
namespace filter is a hard ``where`` clause evaluated by Chroma, never a relevance hint.

The `IndexWorker` thread moves interactions from the journal into Chroma in batches
(one embedding call per batch) and deletes forgotten ones. When Chroma fails it backs
off exponentially and says so in the log; the journal keeps everything meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings

from seal_agent.errors import BackendUnavailableError, ValidationError
from seal_agent.memory.journal import Journal
from seal_agent.memory.records import Interaction, Namespace, join_namespace

__all__ = ["ChromaIndex", "IndexWorker", "namespace_where"]

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1


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
        self._collection: Any = None
        self._lock = threading.Lock()

    @property
    def collection(self) -> Any:
        """The Chroma collection, opened on first use (so a dead server fails late, not at init)."""
        with self._lock:
            if self._collection is None:
                try:
                    if self._client is None:
                        assert self._client_factory is not None
                        self._client = self._client_factory()
                    self._collection = self._client.get_or_create_collection(
                        self.collection_name,
                        embedding_function=None,  # Chroma's default would download a model
                        metadata={"hnsw:space": "cosine", "seal_format_version": INDEX_FORMAT_VERSION},
                    )
                except BackendUnavailableError:
                    raise
                except Exception as exc:
                    raise BackendUnavailableError(
                        f"cannot open Chroma collection {self.collection_name!r}: {exc}"
                    ) from exc
            return self._collection

    def embed_texts(self, texts: list[str]) -> list[list[float]]:
        return self.document_embeddings.embed_documents([t[: self.text_chars] for t in texts])

    def upsert(self, interactions: Sequence[Interaction]) -> None:
        """Embed and write a batch (idempotent: re-running after a crash is harmless)."""
        if not interactions:
            return
        vectors = self.embed_texts([it.text for it in interactions])
        metadatas = []
        for it in interactions:
            md: dict[str, Any] = {
                "ns": join_namespace(it.namespace),
                "ns_depth": len(it.namespace),
                "created_at": it.created_at.timestamp(),
                "thread_id": it.thread_id or "",
            }
            md.update({f"ns_{i}": label for i, label in enumerate(it.namespace)})
            metadatas.append(md)
        self.collection.upsert(
            ids=[it.id for it in interactions],
            embeddings=vectors,
            documents=[it.text for it in interactions],
            metadatas=metadatas,
        )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.collection.delete(ids=list(ids))

    def embed_query(self, query: str) -> list[float]:
        return self.embeddings.embed_query(query)

    def query(
        self, vector: list[float], namespace: Namespace, k: int, *, include_descendants: bool = False
    ) -> list[tuple[str, float]]:
        """Top-k (id, cosine similarity) nearest to `vector` within the namespace, best first."""
        try:
            res = self.collection.query(
                query_embeddings=[vector],
                n_results=k,
                where=namespace_where(namespace, include_descendants=include_descendants),
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
        return int(self.collection.count())

    def all_ids(self, page: int = 5000) -> set[str]:
        out: set[str] = set()
        offset = 0
        while True:
            got = self.collection.get(include=[], limit=page, offset=offset)["ids"]
            out.update(got)
            if len(got) < page:
                return out
            offset += page


class IndexWorker:
    """Background thread: journal rows with ``indexed=0`` -> Chroma, forgotten ids -> deleted.

    `notify()` wakes it after a write; `wait_idle()` blocks until the backlog is empty
    (that is `SealMemory.flush`). Failures never lose data: the rows stay unindexed in
    the journal and are retried with exponential back-off.
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
    ) -> None:
        self.journal = journal
        self.index = index
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.last_error: Exception | None = None
        self._wake = threading.Condition()
        self._dirty = True  # a fresh start may find rows that Chroma lacks
        self._stop = False
        self._reconciled = threading.Event()  # set once the startup check against Chroma ran
        self._thread = threading.Thread(target=self._run, name="seal-index-worker", daemon=True)

    def start(self) -> None:
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
            pending: What to wait for (default: the whole backlog). `recall` passes the
                count of its own namespace's rows logged before it, so that one user's
                bulk import does not stall every other user's recall.
            stop_on_error: Give up as soon as a round fails (Chroma down): `recall`
                should fail fast, while `flush` waits through the retries.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        # Until the startup reconcile ran, the backlog count does not yet include rows Chroma lost.
        def give_up() -> bool:
            return ((deadline is not None and time.monotonic() >= deadline)
                    or (stop_on_error and self.last_error is not None))

        while not self._reconciled.wait(0.02):
            if give_up():
                return False
        left = pending or self.journal.backlog
        while left():
            if give_up():
                return False
            self.notify()
            with self._wake:
                self._wake.wait(0.01)
        return True

    def reconcile(self) -> int:
        """Mark journal rows that Chroma lacks as unindexed (e.g. a Chroma dir restored
        from an older backup). Cheap when the counts agree, which is the common case."""
        expected = self.journal.indexed_ids()
        if self.index.count() == len(expected):
            return 0
        missing = sorted(expected - self.index.all_ids())
        if missing:
            logger.warning("Chroma lacks %d journaled interactions; re-indexing them", len(missing))
            self.journal.mark_indexed(missing, indexed=False)
            self.notify()
        return len(missing)

    def _round(self) -> bool:
        """One batch of work; True if there may be more."""
        deletes = self.journal.pending_deletes(self.batch_size)
        if deletes:
            self.index.delete(deletes)
            self.journal.mark_deleted(deletes)
        batch = self.journal.unindexed(self.batch_size)
        if batch:
            self.index.upsert(batch)
            self.journal.mark_indexed([it.id for it in batch])
        return len(batch) == self.batch_size or len(deletes) == self.batch_size

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
                    self._wake.wait(wait if wait > 0 else None)
                if self._stop:
                    return
                self._dirty = False
            try:
                if not self._reconciled.is_set():
                    self.reconcile()
                    self._reconciled.set()
                while self._round():
                    pass
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
