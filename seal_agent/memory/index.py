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
machine, a niced embedding process) delays nothing a caller depends on. `catch_up` also
checks, once per namespace until the worker's startup reconcile has run, that Chroma holds
what the journal marks indexed (a lost ``chroma/`` folder), and gives up after a bound,
saying how many rows are missing, rather than answer from an incomplete index.

Errors of Chroma are ours: a server that cannot be reached is a `BackendUnavailableError`
naming its URL, a process out of file descriptors a `StorageError` naming the limit
(`seal_agent.memory.chroma.open_files_fault`), whichever operation met them.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.embeddings import Embeddings

from seal_agent.errors import (
    BackendUnavailableError,
    ConfigError,
    SealAgentError,
    StorageError,
    ValidationError,
)
from seal_agent.memory.chroma import client_location, connection_fault, open_collections_cap, open_files_fault
from seal_agent.memory.embeddings import embedding_identity
from seal_agent.memory.journal import Journal
from seal_agent.memory.records import (
    Interaction,
    Namespace,
    flat_metadata,
    join_namespace,
    new_interaction_id,
)

__all__ = ["ChromaIndex", "IndexWorker", "METADATA_PREFIX", "metadata_where", "namespace_where"]

logger = logging.getLogger(__name__)

# 2: one collection per namespace (1: one collection, namespaces in metadata; migrated at open)
INDEX_FORMAT_VERSION = 2

CHECKPOINT_EVERY_S = 2.0  # how often the worker checkpoints the journal's WAL at most


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


class _Exact:
    """One namespace's vectors in memory, unit length, for exact cosine search.

    Replaced, never changed in place (`with_rows`, `without`), so a query reading an old
    one while a write builds the next needs no lock."""

    def __init__(self, ids: list[str], vectors: Any) -> None:
        import numpy as np

        mat = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1) if len(ids) else np.zeros((0, 0), np.float32)
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        self.ids = list(ids)
        self.pos = {id_: i for i, id_ in enumerate(self.ids)}
        self.mat = mat / np.maximum(norms, 1e-12)

    def with_rows(self, ids: Sequence[str], vectors: Sequence[Sequence[float]]) -> _Exact:
        import numpy as np

        fresh = _Exact(list(ids), vectors)
        keep = [i for i, id_ in enumerate(self.ids) if id_ not in fresh.pos]
        out = _Exact([], [])
        out.ids = [self.ids[i] for i in keep] + fresh.ids
        out.pos = {id_: i for i, id_ in enumerate(out.ids)}
        out.mat = np.concatenate([self.mat[keep], fresh.mat]) if self.mat.size else fresh.mat
        return out

    def without(self, ids: Sequence[str]) -> _Exact:
        drop = {self.pos[i] for i in ids if i in self.pos}
        if not drop:
            return self
        out = _Exact([], [])
        keep = [i for i in range(len(self.ids)) if i not in drop]
        out.ids = [self.ids[i] for i in keep]
        out.pos = {id_: i for i, id_ in enumerate(out.ids)}
        out.mat = self.mat[keep]
        return out

    def top(self, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        import numpy as np

        if not self.ids:
            return []
        q = np.asarray(vector, dtype=np.float32)
        scores = self.mat @ (q / max(float(np.linalg.norm(q)), 1e-12))
        k = min(k, len(self.ids))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(self.ids[i], float(scores[i])) for i in best]


class _ExactStore:
    """The in-memory copies of one index's namespaces, shared by every `ChromaIndex` of
    the process on the same embedded Chroma and collection (`shared`): two `SealMemory`
    objects on one home both write it, and each must see the other's writes."""

    _registry: weakref.WeakValueDictionary[str, _ExactStore] = weakref.WeakValueDictionary()
    _registry_lock = threading.Lock()

    def __init__(self) -> None:
        self.entries: OrderedDict[Namespace, _Exact | None] = OrderedDict()  # None: too big, use HNSW
        self.lock = threading.Lock()
        # Writes counted per namespace (deletes, whose namespace may be unknown, under ()):
        # a copy loaded from Chroma while a write landed may lack it, so it is not kept.
        self.writes: dict[Namespace, int] = {}

    @classmethod
    def shared(cls, key: str) -> _ExactStore:
        with cls._registry_lock:
            store = cls._registry.get(key)
            if store is None:
                store = cls._registry[key] = cls()
            return store


def shard_name(prefix: str, namespace: Namespace) -> str:
    """The Chroma collection holding one namespace's interactions.

    A digest, not the labels: Chroma allows only ``[a-zA-Z0-9._-]`` in names, labels may
    hold anything. The namespace itself is in the collection's metadata."""
    digest = hashlib.sha256(join_namespace(namespace).encode("utf-8")).hexdigest()[:32]
    return f"{prefix}-{digest}"


def _under(namespace: Namespace, prefix: Namespace) -> bool:
    return tuple(namespace[: len(prefix)]) == tuple(prefix)


def _namespace_of(metadata: dict[str, Any]) -> Namespace | None:
    """The namespace a record's (or a collection's) metadata names, from ``ns_0..ns_{depth-1}``."""
    depth = metadata.get("ns_depth")
    if not isinstance(depth, int):
        return None
    labels = [metadata.get(f"ns_{i}") for i in range(depth)]
    return tuple(labels) if all(isinstance(x, str) for x in labels) else None  # type: ignore[return-value]


class ChromaIndex:
    """Interactions in Chroma, embedded by us (never by Chroma).

    With ``per_namespace=True`` (what `SealMemory` uses) every namespace has its own
    collection, ``<collection>-<digest of the namespace>``. Why: a query scoped to one
    namespace then searches only that namespace's HNSW graph. Chroma's filtered search
    over one shared collection cost 7-55 ms at 10k-100k records on 2 cores (it
    pre-filters by metadata, then searches the whole graph with an allow-list), a
    per-namespace collection 0.7-1.4 ms, and exact-search agreement stays at 100 % where
    the filtered HNSW search fell to ~53 % on near-duplicates. A query over a namespace
    and its descendants asks each matching collection and merges the answers. Each
    collection's metadata names its namespace, so the set of collections can be listed
    (cached for `listing_ttl_s`; collections this process creates are seen at once).
    Without ``per_namespace`` (the facts), one collection holds everything and the
    namespace is a ``where`` clause.

    Args:
        client: A chromadb client, or a zero-argument callable making one. A callable is
            called on first use, so that a Chroma server that is down at start-up only
            delays indexing instead of failing the constructor.
        collection: Collection name (with ``per_namespace``: the prefix of the names).
        embeddings: Any LangChain `Embeddings` (queries, and documents unless below).
        text_chars: Characters of an interaction's text that are embedded.
        document_embeddings: The same model, for the worker's document batches, when it
            runs elsewhere (e.g. `SubprocessEmbeddings`); default `embeddings`.
        per_namespace: One collection per namespace (see above).
        search_ef: HNSW's candidate list at query time (Chroma's default is 10); larger
            finds the exact top-k more often among near-duplicates, at a small cost.
        listing_ttl_s: How long a listing of the collections is trusted before a query
            over descendants lists them again (collections other hosts create on a
            shared Chroma server are seen within this time).
        exact_rows: With ``per_namespace``, score namespaces of up to this many records
            exactly against an in-memory copy of their vectors (loaded from Chroma on
            first use, then kept current by this index's own writes), keeping up to 10x
            this many vectors in all, least recently queried dropped first; 0: always
            Chroma's HNSW. Only for an index this process alone writes (the owner of an
            embedded Chroma): another writer's records would be missed. See
            `MemoryConfig.exact_search_rows` for why.
        exact_key: Indexes of this process with the same key (the embedded Chroma's
            folder and the collection) share their in-memory copies, so each sees the
            others' writes; None: this index's own.
        max_open_collections: With ``per_namespace``, how many namespaces' collection
            handles are kept (least recently used dropped first; a dropped one is looked
            up again when next used). An embedded client this index made itself (a
            `client` callable) is also closed and reopened between operations once this
            many namespaces (at most `open_collections_cap`) were used through it: Chroma
            keeps up to 8 files open per collection it loaded, and closing the client is
            the one way to release them. A query over more sub-namespaces than that runs in
            chunks, with such a release between them.

    Each collection records which embedding model filled it (`embedding_identity`);
    opening it with another raises `ConfigError` instead of comparing incomparable vectors.
    """

    def __init__(
        self,
        client: Any | Callable[[], Any],
        collection: str,
        embeddings: Embeddings,
        *,
        text_chars: int = 2000,
        document_embeddings: Embeddings | None = None,
        per_namespace: bool = False,
        search_ef: int = 128,
        listing_ttl_s: float = 1.0,
        exact_rows: int = 0,
        exact_key: str | None = None,
        max_open_collections: int = 128,
    ) -> None:
        self._client = None if callable(client) else client
        self._client_factory = client if callable(client) else None
        self.collection_name = collection
        self.embeddings = embeddings
        self.document_embeddings = document_embeddings or embeddings
        self.text_chars = text_chars
        self.per_namespace = per_namespace
        self.search_ef = search_ef
        self.listing_ttl_s = listing_ttl_s
        self.identity = embedding_identity(embeddings)
        self._collection: Any = None
        # namespace -> collection handle, least recently used first (one per tenant
        # would grow without bound: a handle holds its collection's whole model)
        self._shards: OrderedDict[Namespace, Any] = OrderedDict()
        self.max_open_collections = max(1, max_open_collections)
        self._cap: int | None = None  # namespaces per client lifetime; None: no recycling
        self._touched: set[Namespace] = set()  # namespaces used since the client opened
        self._recycle_due = False
        self._recycles = 0  # times `_recycle` closed the client
        self._listing: dict[Namespace, str] | None = None  # namespace -> collection name
        self._listed_at = 0.0
        self._migrated = False
        self.exact_rows = exact_rows if per_namespace else 0
        self._store = _ExactStore.shared(exact_key) if exact_key else _ExactStore()
        self._lock = threading.RLock()
        # `exclusive` (a forget scrubbing Chroma's files from a child process) waits for the
        # operations in flight and holds new ones back: a VACUUM under a write made
        # Chroma's write fail half-applied (deleted records came back).
        self._gate = threading.Condition()
        self._ops = 0
        self._exclusive = False
        self._depth = threading.local()  # this thread's operations in progress (nesting)

    @contextmanager
    def _op(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        recycle = False
        with self._gate:
            if not depth:  # an operation inside one of this thread's own must not wait for itself
                while self._exclusive:
                    self._gate.wait()
                # Release Chroma's open files once too many namespaces were used (see
                # `max_open_collections`): new operations wait, those in flight finish
                # first (the closed client would break their handles).
                if self._recycle_due:
                    recycle = self._exclusive = True
                    while self._ops:
                        self._gate.wait()
            if not recycle:
                self._ops += 1
        if recycle:
            try:
                self._recycle()
            finally:
                with self._gate:
                    self._exclusive = False
                    self._ops += 1
                    self._gate.notify_all()
        self._depth.n = depth + 1
        try:
            yield
        except Exception as exc:
            err = self._fault(exc)
            if err is None:
                raise
            raise err from exc
        finally:
            self._depth.n = depth
            with self._gate:
                self._ops -= 1
                self._gate.notify_all()

    def _recycle(self) -> None:
        """Close the embedded client (releasing every HNSW file it holds open); the next
        call reopens it. The in-memory exact copies stay: this process wrote them."""
        with self._lock:
            self._recycle_due = False
            self._recycles += 1
            client, self._client, self._collection = self._client, None, None
            self._shards, self._listing, self._touched = OrderedDict(), None, set()
            if client is not None and hasattr(client, "close"):
                logger.debug("closing the Chroma client of %s after %d namespaces (memory.max_open_collections)",
                             self.collection_name, self._cap or 0)
                try:
                    client.close()
                except Exception as exc:  # the next open starts afresh all the same
                    logger.debug("closing the Chroma client failed: %s", exc)
                del client
                # Chroma's Rust core writes its vector segments out when it is freed, and
                # reference cycles keep it alive until the garbage collector runs: a client
                # opened before that found segments "nothing found on disk" (seen under load).
                gc.collect()

    def _reopening(self, call: Callable[[], Any]) -> Any:
        """`call()` (idempotent), run again on a freshly opened client when Chroma says a
        vector segment has "nothing found on disk" after this index closed its client
        (`_recycle`). Seen under load: the client opened right after another was closed
        can miss a segment the old one was still writing out, and keeps missing it; a
        client opened later finds it. A Chroma server says the same for a moment when
        another process has just written a collection's first vectors (seen in CI: three
        writers and a reader on one server): there the call is asked again after a pause."""
        for attempt in range(3):
            try:
                return call()
            except Exception as exc:
                text = " ".join(str(e) for e in (exc, exc.__cause__) if e is not None).lower()
                if attempt == 2 or "nothing found on disk" not in text:
                    raise
                if self._recycles:
                    logger.info("Chroma missed a vector segment after its client was reopened; reopening it again")
                    with self._lock:
                        self._recycle_due = True  # the next operation reopens the client
                else:
                    logger.info("Chroma missed a vector segment another writer is writing out; asking again")
                    time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def _note_used(self, namespace: Namespace) -> None:
        """Count a namespace used through the current client (callers hold `_lock`)."""
        if self._cap is None or namespace in self._touched:
            return
        self._touched.add(namespace)
        if len(self._touched) > self._cap:
            self._recycle_due = True

    @property
    def location(self) -> str:
        """The server's URL or the embedded folder (for messages)."""
        client = self._client
        return client_location(client) if client is not None else f"the Chroma of {self.collection_name!r}"

    def error_for(self, exc: BaseException, what: str, target: ChromaIndex | None = None) -> SealAgentError:
        """Our error for a failed Chroma call, never chromadb's: a known fault (`_fault`:
        files, server down), vectors of another size (`ValidationError` naming the
        embeddings), else `BackendUnavailableError` naming what failed and where.

        Args:
            what: The operation, for the message ("query", "facts upsert", ...).
            target: The index whose collection was called (this one by default; the
                facts' index shares this one's client).
        """
        target = target or self
        if (err := self._fault(exc)) is not None:
            return err
        if "dimension" in str(exc).lower():
            return ValidationError(
                "embeddings", type(target.embeddings).__name__,
                f"produce vectors of another size than collection {target.collection_name!r} holds ({exc})")
        return BackendUnavailableError(
            f"Chroma {what} failed ({target.collection_name!r} at {self.location}): {exc}")

    def _fault(self, exc: BaseException) -> SealAgentError | None:
        """Our error for a Chroma failure, or None when it has no better name than its own.

        A server that cannot be reached -> `BackendUnavailableError` with its URL (the
        handles of its collections are dropped, so a restarted server is asked afresh);
        no file descriptor left -> `StorageError` naming ``ulimit -n`` and
        ``memory.max_open_collections``."""
        if isinstance(exc, SealAgentError):
            return None
        location = self.location
        err: SealAgentError | None = open_files_fault(exc, location, self.max_open_collections)
        if err is None:
            err = connection_fault(exc, location)
            if err is not None:
                with self._lock:
                    self._shards.clear()
                    self._listing = None
        return err

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

    # ------------------------------------------------------------------ opening

    @property
    def client(self) -> Any:
        """The Chroma client, made on first use (so a dead server fails late, not at init)."""
        with self._lock:
            if self._client is None:
                assert self._client_factory is not None
                try:
                    self._client = self._client_factory()
                except (BackendUnavailableError, ConfigError, StorageError):
                    raise
                except Exception as exc:
                    raise BackendUnavailableError(f"cannot open Chroma for {self.collection_name!r}: {exc}") from exc
                self._touched = set()
                # only an embedded client holds files per collection, and only ours may be closed
                try:
                    persistent = bool(getattr(self._client.get_settings(), "is_persistent", False))
                except Exception:
                    persistent = False
                self._cap = (open_collections_cap(self.max_open_collections)
                             if self.per_namespace and persistent else None)
            return self._client

    def _metadata(self, namespace: Namespace | None) -> dict[str, Any]:
        md: dict[str, Any] = {"hnsw:space": "cosine", "hnsw:search_ef": self.search_ef,
                              "seal_format_version": INDEX_FORMAT_VERSION, "seal_embeddings": self.identity}
        if namespace is not None:
            md.update({"seal_index": self.collection_name, "ns_depth": len(namespace),
                       **{f"ns_{i}": label for i, label in enumerate(namespace)}})
        return md

    def _open(self, name: str, metadata: dict[str, Any] | None) -> Any:
        """Get (metadata None) or get-or-create a collection; None when it does not exist."""
        try:
            if metadata is None:
                try:
                    collection = self.client.get_collection(name, embedding_function=None)
                except Exception as exc:
                    if type(exc).__name__ in ("NotFoundError", "InvalidCollectionException") or \
                            "does not exist" in str(exc):
                        return None
                    raise
            else:
                collection = self.client.get_or_create_collection(
                    name, embedding_function=None,  # Chroma's default would download a model
                    metadata=metadata)
            self._check_identity(collection)
            return collection
        except (BackendUnavailableError, ConfigError, StorageError):
            raise
        except Exception as exc:
            raise (self._fault(exc) or BackendUnavailableError(
                f"cannot open Chroma collection {name!r} at {self.location}: {exc}")) from exc

    @property
    def collection(self) -> Any:
        """The single collection (only without ``per_namespace``), opened on first use."""
        if self.per_namespace:
            raise TypeError("a per-namespace ChromaIndex has one collection per namespace: use shard()")
        with self._lock:
            if self._collection is None:
                self._collection = self._open(self.collection_name, self._metadata(None))
            return self._collection

    def shard(self, namespace: Namespace, *, create: bool = False) -> Any:
        """The collection of one namespace (None if it has none and `create` is false)."""
        namespace = tuple(namespace)
        with self._lock:
            self._migrate_single_collection()
            found = self._shards.get(namespace)
            if found is None:
                found = self._open(shard_name(self.collection_name, namespace),
                                   self._metadata(namespace) if create else None)
                if found is not None:
                    self._note_used(namespace)
                    self._shards[namespace] = found
                    while len(self._shards) > self.max_open_collections:
                        self._shards.popitem(last=False)
                    if self._listing is not None:
                        self._listing[namespace] = found.name
            else:
                self._shards.move_to_end(namespace)
            return found

    def namespaces(self, *, fresh: bool = False) -> list[Namespace]:
        """Every namespace that has a collection (listed at most every `listing_ttl_s`)."""
        with self._lock:
            self._migrate_single_collection()
            now = time.monotonic()
            if fresh or self._listing is None or now - self._listed_at > self.listing_ttl_s:
                listing: dict[Namespace, str] = {}
                offset = 0
                while True:
                    try:
                        page = self.client.list_collections(limit=1000, offset=offset)
                    except Exception as exc:
                        err = self._fault(exc)
                        if err is None:
                            raise
                        raise err from exc
                    for coll in page:
                        md = dict(coll.metadata or {})
                        ns = _namespace_of(md)
                        if md.get("seal_index") == self.collection_name and ns is not None:
                            listing[ns] = coll.name
                    if len(page) < 1000:
                        break
                    offset += 1000
                self._listing, self._listed_at = listing, now
            return list(self._listing)

    def _shards_for(self, namespace: Namespace, include_descendants: bool) -> list[Any]:
        if not include_descendants:
            found = self.shard(namespace)
            return [found] if found is not None else []
        out = [self.shard(ns) for ns in self.namespaces() if _under(ns, namespace)]
        return [c for c in out if c is not None]

    def _all_shards(self) -> list[Any]:
        if not self.per_namespace:
            return [self.collection]
        return [c for c in (self.shard(ns) for ns in self.namespaces(fresh=True)) if c is not None]

    def _migrate_single_collection(self) -> None:
        """Move an index of format 1 (one collection, namespaces as metadata) into
        per-namespace collections: vectors are copied, nothing is embedded again; the old
        collection is deleted last, so a crash midway only repeats the copy.

        On a Chroma server shared by several hosts, upgrade with every writer stopped: a
        host still running the old version keeps writing the old collection, and two
        hosts copying at once may put an older vector over a newer one."""
        if self._migrated or not self.per_namespace:
            return
        old = self._open(self.collection_name, None)  # raises (again, each call) on other embeddings
        self._migrated = True  # set first: `shard` below calls back here
        if old is None:
            return
        total = old.count()
        logger.info("moving %d records of Chroma collection %r into one collection per namespace",
                    total, self.collection_name)
        try:
            self._copy_into_shards(old)
        except BaseException:
            self._migrated = False  # not finished: the next call copies again (upserts are idempotent)
            raise
        self.client.delete_collection(self.collection_name)
        logger.info("moved %d records into %d namespace collections", total, len(self.namespaces(fresh=True)))

    def _copy_into_shards(self, old: Any, page: int = 5000) -> None:
        offset = 0
        while True:
            got = old.get(include=["embeddings", "documents", "metadatas"], limit=page, offset=offset)
            groups: dict[Namespace, list[int]] = {}
            for i, md in enumerate(got["metadatas"] or []):
                ns = _namespace_of(dict(md or {}))
                if ns is not None:
                    groups.setdefault(ns, []).append(i)
            for ns, rows in groups.items():
                self.shard(ns, create=True).upsert(
                    ids=[got["ids"][i] for i in rows], embeddings=[got["embeddings"][i] for i in rows],
                    documents=[got["documents"][i] for i in rows], metadatas=[got["metadatas"][i] for i in rows])
            if len(got["ids"]) < page:
                return
            offset += page

    def _check_identity(self, collection: Any) -> None:
        metadata = dict(collection.metadata or {})
        stored = metadata.get("seal_embeddings")
        if stored is None:  # made before identities were recorded: adopt ours
            collection.modify(metadata={**metadata, "seal_embeddings": self.identity})
        elif stored != self.identity:
            raise ConfigError(
                "embeddings", self.identity,
                f"Chroma collection {collection.name!r} was indexed with embeddings {stored!r}; "
                "vectors of another model cannot be compared with them. Open this home with the same "
                "embeddings, or rebuild the index for the new model: stop every process using it, move "
                "the home's chroma/ folder away and reopen (the journal re-indexes everything)",
            )

    # ------------------------------------------------------------------ writing

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
        self._reopening(lambda: self._write(interactions, vectors))

    def _write(self, interactions: Sequence[Interaction], vectors: list[list[float]]) -> None:
        groups: dict[Namespace, list[int]] = {}
        for i, it in enumerate(interactions):
            groups.setdefault(tuple(it.namespace) if self.per_namespace else (), []).append(i)
        # one operation per namespace: a batch spans many, and the client may release its
        # open files between them (`max_open_collections`)
        for ns, rows in groups.items():
            with self._op():
                target = self.shard(ns, create=True) if self.per_namespace else self.collection
                batch = [interactions[i] for i in rows]
                metadatas = [self._record_metadata(it) for it in batch]
                # An upsert merges metadata into a stored record's: a key the caller removed
                # (`SealMemory.update`) is deleted explicitly (None), or filters would still match it.
                stored = target.get(ids=[it.id for it in batch], include=["metadatas"])
                old = dict(zip(stored["ids"], stored["metadatas"] or [], strict=False))
                for it, md in zip(batch, metadatas, strict=True):
                    md.update({k: None for k in (old.get(it.id) or {})
                               if k.startswith(METADATA_PREFIX) and k not in md})
                target.upsert(ids=[it.id for it in batch], embeddings=[vectors[i] for i in rows],
                              documents=[it.text for it in batch], metadatas=metadatas)
                if self.exact_rows:
                    self._exact_write(ns, lambda e, b=batch, r=rows: e.with_rows([it.id for it in b],
                                                                                  [vectors[i] for i in r]))

    @staticmethod
    def _record_metadata(it: Interaction) -> dict[str, Any]:
        md: dict[str, Any] = {
            "ns": join_namespace(it.namespace),
            "ns_depth": len(it.namespace),
            "created_at": it.created_at.timestamp(),
            "thread_id": it.thread_id or "",
        }
        md.update({f"ns_{i}": label for i, label in enumerate(it.namespace)})
        md.update({METADATA_PREFIX + k: v for k, v in flat_metadata(it.metadata).items()})
        return md

    def _targets(self, ids: Sequence[str], namespaces: dict[str, Namespace] | None) -> list[tuple[Any, list[str]]]:
        """(collection, ids) pairs covering `ids`: the known namespaces' collections, and
        every collection for ids of unknown namespace."""
        if not self.per_namespace:
            return [(self.collection, list(ids))]
        known: dict[Namespace, list[str]] = {}
        unknown: list[str] = []
        for id_ in ids:
            ns = (namespaces or {}).get(id_)
            (known.setdefault(tuple(ns), []) if ns is not None else unknown).append(id_)
        out = [(c, chunk) for ns, chunk in known.items() if (c := self.shard(ns)) is not None]
        if unknown:
            out += [(c, unknown) for c in self._all_shards()]
        return out

    def delete(self, ids: Sequence[str], namespaces: dict[str, Namespace] | None = None) -> None:
        """Delete `ids`; `namespaces` (id -> namespace) spares asking every collection."""
        if ids:
            for ns, chunk in self._groups(ids, namespaces):
                with self._op():
                    for coll, part in self._targets(chunk, {i: ns for i in chunk} if ns is not None else None):
                        coll.delete(ids=part)
            with self._op():
                if self.exact_rows:
                    with self._store.lock:
                        self._store.writes[()] = self._store.writes.get((), 0) + 1
                        for ns, cached in list(self._store.entries.items()):
                            if cached is not None:
                                self._store.entries[ns] = cached.without(ids)

    def present(self, ids: Sequence[str], namespaces: dict[str, Namespace] | None = None) -> list[str]:
        """Those of `ids` that Chroma holds (a deletion is verified with it)."""
        if not ids:
            return []
        found: list[str] = []
        for ns, chunk in self._groups(ids, namespaces):
            with self._op():
                for coll, part in self._targets(chunk, {i: ns for i in chunk} if ns is not None else None):
                    found += coll.get(ids=part, include=[])["ids"]
        return list(dict.fromkeys(found))

    def _groups(self, ids: Sequence[str], namespaces: dict[str, Namespace] | None
                ) -> list[tuple[Namespace | None, list[str]]]:
        """`ids` by namespace (None: unknown, or a single-collection index), for one
        operation each."""
        if not self.per_namespace:
            return [(None, list(ids))]
        out: dict[Namespace | None, list[str]] = {}
        for id_ in ids:
            ns = (namespaces or {}).get(id_)
            out.setdefault(tuple(ns) if ns is not None else None, []).append(id_)
        return list(out.items())

    # ------------------------------------------------------------------ reading

    def embed_query(self, query: str) -> list[float]:
        return self.embeddings.embed_query(query)

    def query(
        self, vector: list[float], namespace: Namespace, k: int, *, include_descendants: bool = False,
        filter: dict[str, Any] | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k (id, cosine similarity) nearest to `vector` within the namespace (and
        matching the validated metadata `filter`, if any), best first."""
        return self._reopening(lambda: self._query(vector, namespace, k, include_descendants, filter))

    def _query(self, vector: list[float], namespace: Namespace, k: int, include_descendants: bool,
               filter: dict[str, Any] | None) -> list[tuple[str, float]]:
        hits: list[tuple[str, float]] = []
        try:
            if self.per_namespace and include_descendants:
                with self._op():
                    spaces = [ns for ns in self.namespaces() if _under(ns, tuple(namespace))]
                # in chunks, each its own operation: the client may release its open files
                # between them (more sub-namespaces than `max_open_collections`)
                step = min(self.max_open_collections, self._cap or self.max_open_collections)
                for start in range(0, len(spaces), step):
                    with self._op():
                        chunk = [c for c in (self.shard(ns) for ns in spaces[start:start + step]) if c is not None]
                        hits += self._query_shards(chunk, vector, k, filter)
            elif self.per_namespace:
                with self._op():
                    hits = self._query_shards(self._shards_for(tuple(namespace), False), vector, k, filter)
            else:
                with self._op():
                    where = with_filter(namespace_where(namespace, include_descendants=include_descendants), filter)
                    hits = self._query_collections([self.collection], vector, k, where)
        except (BackendUnavailableError, ConfigError, StorageError):
            raise
        except Exception as exc:
            raise self.error_for(exc, "query") from exc
        hits.sort(key=lambda h: -h[1])
        return hits[:k]

    def _query_shards(self, targets: list[Any], vector: list[float], k: int,
                      filter: dict[str, Any] | None) -> list[tuple[str, float]]:
        """Top-k of each namespace collection in `targets` (exactly where kept in memory)."""
        hits: list[tuple[str, float]] = []
        if self.exact_rows and not filter:
            exact = [self._exact_for(coll) for coll in targets]
            hits = [h for e in exact if e is not None for h in e.top(vector, k)]
            targets = [coll for coll, e in zip(targets, exact, strict=True) if e is None]
        return hits + self._query_collections(targets, vector, k, metadata_where(filter) if filter else None)

    def _query_collections(self, targets: list[Any], vector: list[float], k: int,
                           where: dict[str, Any] | None) -> list[tuple[str, float]]:
        hits: list[tuple[str, float]] = []
        for coll in targets:
            res = coll.query(query_embeddings=[vector], n_results=k, where=where, include=["distances"])
            # cosine space: distance = 1 - cos_sim
            hits += [(i, 1.0 - float(d)) for i, d in zip(res["ids"][0], res["distances"][0], strict=True)]
        return hits

    # ------------------------------------------------------------------ exact search

    def _exact_for(self, coll: Any) -> _Exact | None:
        """The in-memory vectors of a namespace's collection (loaded on first use), or
        None when it holds more than `exact_rows` records."""
        ns = _namespace_of(dict(coll.metadata or {}))
        if ns is None:
            return None
        with self._store.lock:
            if ns in self._store.entries:
                self._store.entries.move_to_end(ns)
                return self._store.entries[ns]
            writes = (self._store.writes.get(ns, 0), self._store.writes.get((), 0))
        n = int(coll.count())
        cached: _Exact | None = None
        if n <= self.exact_rows:
            got = coll.get(include=["embeddings"])
            cached = _Exact(list(got["ids"]), got["embeddings"] if len(got["ids"]) else [])
        with self._store.lock:
            if writes != (self._store.writes.get(ns, 0), self._store.writes.get((), 0)):
                return None  # written while loading: HNSW this time, load again next time
            if ns not in self._store.entries:
                self._store.entries[ns] = cached
            self._store.entries.move_to_end(ns)
            budget = 10 * self.exact_rows
            while sum(len(e.ids) for e in self._store.entries.values() if e is not None) > budget and len(self._store.entries) > 1:
                self._store.entries.popitem(last=False)
            return self._store.entries.get(ns)

    def _exact_write(self, ns: Namespace, change: Callable[[_Exact], _Exact]) -> None:
        """Apply a write to a cached namespace (one not cached is loaded from Chroma,
        written already, when next queried); past `exact_rows` it goes back to HNSW."""
        with self._store.lock:
            self._store.writes[ns] = self._store.writes.get(ns, 0) + 1
            cached = self._store.entries.get(ns)
            if cached is not None:
                cached = change(cached)
                self._store.entries[ns] = cached if len(cached.ids) <= self.exact_rows else None

    def _each_shard(self) -> Iterator[Any]:
        """Every collection, each looked up in its own operation (so that the client may
        release its open files between them); yields inside that operation."""
        if not self.per_namespace:
            with self._op():
                yield self.collection
            return
        with self._op():
            spaces = self.namespaces(fresh=True)
        for ns in spaces:
            with self._op():
                coll = self.shard(ns)
                if coll is not None:
                    yield coll

    def count(self) -> int:
        return sum(int(c.count()) for c in self._each_shard())

    def open_all(self) -> int:
        """Open every collection (Chroma loads each vector segment, and writes it out again);
        returns the records held. Forget's scrub calls it inside `exclusive` (so not as an
        operation, which would wait for that block) before clearing unused slots; the
        client is closed and reopened on the way as often as `max_open_collections` asks."""
        total = 0
        for coll in self._all_shards_handles():
            total += int(coll.count())
        return total

    def _all_shards_handles(self) -> Iterator[Any]:
        if not self.per_namespace:
            yield self.collection
            return
        for ns in self.namespaces(fresh=True):
            if self._recycle_due:  # inside `exclusive`: nothing else is in flight
                self._recycle()
            coll = self.shard(ns)
            if coll is not None:
                yield coll

    def close(self) -> None:
        """Release a client this index opened itself, so that a later open in this process
        reads Chroma afresh from disk (another process may have written it meanwhile)."""
        with self._lock:
            client, self._collection = self._client, None
            self._shards, self._listing = OrderedDict(), None
            with self._store.lock:
                self._store.entries.clear()
            if self._client_factory is not None:
                self._client = None
                if client is not None and hasattr(client, "close"):
                    try:
                        client.close()
                    except Exception as exc:  # closing must not fail a shutdown
                        logger.debug("closing the Chroma client failed: %s", exc)

    def all_ids(self, page: int = 5000) -> set[str]:
        out: set[str] = set()
        if not self.per_namespace:
            spaces: list[Namespace | None] = [None]
        else:
            with self._op():  # not while a forget scrubs Chroma's files (`exclusive`)
                spaces = list(self.namespaces(fresh=True))
        for ns in spaces:
            offset = 0
            while True:
                with self._op():  # the handle is looked up again: the client may have been reopened
                    coll = self.collection if ns is None else self.shard(ns)
                    got = [] if coll is None else coll.get(include=[], limit=page, offset=offset)["ids"]
                out.update(got)
                if len(got) < page:
                    break
                offset += page
        return out


class StallClock:
    """A deadline that moves on with progress: expired once `stall_s` seconds passed
    without any (None: never).

    Why not a fixed clock: on a busy machine indexing a backlog can take minutes while
    never stopping, and ``flush()`` failed there ("313 interactions not indexed after
    60.0s") though each look found fewer rows left. Progress is a backlog smaller than at
    the previous look (`observe`), or a batch the caller indexed itself (`progress`).
    """

    def __init__(self, stall_s: float | None) -> None:
        self.stall_s = stall_s
        self._since = time.monotonic()
        self._last: int | None = None

    def progress(self) -> None:
        self._since = time.monotonic()

    def observe(self, backlog: int) -> None:
        """Note the backlog now; fewer rows than at the last look is progress."""
        if self._last is not None and backlog < self._last:
            self.progress()
        self._last = backlog

    @property
    def stalled_s(self) -> float:
        """Seconds since the last progress (or since the clock started)."""
        return time.monotonic() - self._since

    def expired(self) -> bool:
        return self.stall_s is not None and self.stalled_s >= self.stall_s

    def left(self) -> float | None:
        return None if self.stall_s is None else max(0.0, self.stall_s - self.stalled_s)


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
        self._next_checkpoint = 0.0
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
        # (namespace, include_descendants) that `catch_up` checked against Chroma before the
        # startup reconcile had run (see `_verify`)
        self._verified: set[tuple[Namespace, bool]] = set()
        self._verify_lock = threading.Lock()  # guards the two fields around it, held briefly
        self._verify_locks: dict[tuple[Namespace, bool], threading.Lock] = {}  # a check in progress
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
        """True once nothing is left to write; False if `timeout` seconds passed with no progress.

        Args:
            timeout: Longest wait, in seconds, without a row being indexed (`StallClock`);
                None waits for ever.
            pending: What to wait for (default: the whole backlog).
            stop_on_error: Give up as soon as a round fails (Chroma down).
        """
        clock = StallClock(timeout)

        def give_up() -> bool:
            return clock.expired() or (stop_on_error and self.last_error is not None)

        # Until the startup reconcile ran, the backlog count does not yet include rows Chroma lost.
        while self._started and not self._reconciled.wait(0.02):
            if give_up() or not self.alive:
                return False
        left = pending or self.journal.backlog
        while n := left():
            clock.observe(n)
            if give_up() or (self._started and not self.alive):  # a stopped worker drains nothing
                return False
            self.notify()
            with self._wake:
                self._wake.wait(0.01)
        return True

    # ----------------------------------------------------------- indexing in the caller

    def catch_up(self, namespace: Namespace, up_to_id: str, *, include_descendants: bool = False,
                 timeout: float | None = None) -> int:
        """Index, in this thread, the namespace's rows logged up to `up_to_id`; how many.

        This is `recall`'s read-your-writes: whatever the background worker's state
        (starved, backing off, another tenant's import ahead), an acknowledged log is in
        Chroma before the query runs. Rows the worker is embedding meanwhile are embedded
        here too (idempotent; waiting on a starved worker is what this avoids).

        Until the worker's startup reconcile has run, rows the journal marks indexed may
        be missing from Chroma (its folder was lost or restored from a backup): the
        namespace is first checked id by id (`_verify`), so the first recall of a fresh
        process does not answer from an index that lacks them.

        Args:
            timeout: Seconds of indexing after which rows still missing make it raise
                (batches in progress finish first); None: no bound.

        Raises:
            BackendUnavailableError: Rows logged before the call are still not indexed
                after `timeout` (the message says how many), or Chroma cannot be reached.
        """
        if not self._reconciled.is_set():
            self._verify(tuple(namespace), include_descendants)
        # after `_verify`: the bound is for indexing, not for checking what Chroma holds
        deadline = None if timeout is None else time.monotonic() + timeout
        done = 0
        while True:
            rows = self.journal.unindexed_rows_in(namespace, up_to_id, include_descendants=include_descendants,
                                                  limit=self.batch_size)
            if not rows:
                return done
            if deadline is not None and time.monotonic() >= deadline:
                missing = self.journal.unindexed_in(namespace, up_to_id, include_descendants=include_descendants)
                raise BackendUnavailableError(
                    f"recall in namespace {join_namespace(namespace)!r}"
                    f"{' and below' if include_descendants else ''}: {missing} interactions logged before the "
                    f"call are not in the Chroma index yet after {timeout:g}s of indexing them in this call "
                    f"({done} indexed; the index is catching up with the journal, e.g. after its folder was "
                    "lost, or a bulk import is ahead). Retry shortly (the background worker goes on), or raise "
                    "memory.recall_index_timeout_s")
            self._index(rows, self.index.embeddings)
            done += len(rows)

    def _verify(self, namespace: Namespace, include_descendants: bool) -> None:
        """Queue again the namespace's rows that the journal marks indexed but Chroma lacks.

        The startup reconcile does this for every namespace, in the background worker;
        a caller that cannot wait for it (a starved worker, a big index) checks just the
        namespace it reads, once per process."""
        key = (namespace, include_descendants)
        # One lock per key, not one for all: a tenant's check never waits for another's.
        # (The check is idempotent; the lock only spares a second thread the same work.)
        with self._verify_lock:
            if key in self._verified:
                return
            lock = self._verify_locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._verified:
                return
            # ids only (rows still queued are no loss: just those marked indexed are
            # checked), never the rows themselves: a big namespace's first recall would
            # load and parse all of them
            marked = self.journal.indexed_ids_in(namespace, include_descendants=include_descendants)
            ids = list(marked)
            missing: list[str] = []
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                held = set(self.index.present(chunk, {i: marked[i] for i in chunk}))
                missing += [i for i in chunk if i not in held]
            if missing:
                logger.warning("Chroma lacks %d journaled interactions of namespace %r; re-indexing them",
                               len(missing), join_namespace(namespace))
                self.journal.mark_indexed(missing, indexed=False)
            with self._verify_lock:
                self._verified.add(key)
                self._verify_locks.pop(key, None)

    def drain(self, timeout: float | None, up_to_id: str | None = None) -> bool:
        """Index the rows logged up to `up_to_id` (None: up to now, `new_interaction_id`),
        helping from this thread; False once `timeout` seconds passed without progress
        (no row indexed by anyone: `StallClock`).

        `flush` calls it: the caller is waiting anyway, so its thread embeds batches too
        (with the in-process model) instead of depending on the background worker alone.
        When Chroma fails, it waits through the worker's retries instead. The watermark
        is why it ends: with the whole backlog as its goal, every batch counted as
        progress and other threads logging all along kept it from ever returning.
        """
        watermark = up_to_id if up_to_id is not None else new_interaction_id()
        clock = StallClock(timeout)
        remaining = clock.left

        def before() -> int:
            return self.journal.backlog(watermark)

        while self._started and self.alive and not self._reconciled.wait(0.05):
            if clock.expired():
                return False
        if isinstance(self.last_error, ConfigError):
            raise self.last_error
        while n := before():
            clock.observe(n)
            if clock.expired():
                return False
            try:
                self._delete_forgotten()
                with self._claim_lock:
                    busy = list(self._claimed)
                rows = self.journal.unindexed(self.batch_size, exclude=busy, up_to_id=watermark)
                if not rows and busy:
                    # only rows in another thread's hands are left: give it a moment, then take them too
                    if self.wait_idle(min(2.0, remaining() or 2.0), before):
                        return True
                    rows = self.journal.unindexed(self.batch_size, up_to_id=watermark)
                self._index(rows, self.index.embeddings)
                if rows:
                    clock.progress()
            except (ConfigError, StorageError):  # other embeddings, a full disk: waiting does not heal it
                raise
            except Exception as exc:  # Chroma down: the worker retries with back-off
                self.last_error = exc
                return self.wait_idle(remaining(), before)
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
                self.index.delete(raced, {it.id: it.namespace for it in rows})
        finally:
            with self._claim_lock:
                self._claimed.difference_update(ids)

    def _delete_forgotten(self) -> int:
        deletes = self.journal.pending_deletes(self.batch_size)
        if deletes:
            self.index.delete(deletes, self.journal.namespaces_of(deletes))
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
            self.index.delete(orphans, self.journal.namespaces_of(orphans))
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
                # here, not in a caller's commit (see Journal.checkpoint); at most every
                # CHECKPOINT_EVERY_S: each one fsyncs the database file
                if time.monotonic() >= self._next_checkpoint:
                    self.journal.checkpoint()
                    self._next_checkpoint = time.monotonic() + CHECKPOINT_EVERY_S
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
