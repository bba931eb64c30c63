"""`ChromaStore`: a LangGraph `BaseStore` kept in Chroma.

LangGraph ships stores for memory, SQLite and Postgres but none for Chroma. With
``ChromaStore`` any graph compiled with ``store=...`` (or any library that takes a
``BaseStore``) keeps its long-term memories in Chroma, embedded on disk or on a
Chroma server, with the same semantics as `langgraph.store.memory.InMemoryStore`.

Layout: two Chroma collections, like PostgresStore's ``store`` and ``store_vectors``
tables.

* ``<collection>`` -- one record per item. Id: a stable hash of (namespace, key).
  Document: the value as JSON. Metadata (scalar only, so the namespace is flattened):
  ``ns`` ("a/b"), ``ns_0`` ("a"), ``ns_1`` ("b"), ..., ``ns_depth`` (2), ``key``,
  ``created_at`` / ``updated_at`` (int microseconds since the Unix epoch, UTC: exact
  and sortable) and ``indexed`` (whether the item has vectors). Chroma insists on a
  vector per record; this collection is never queried by vector, so each record gets
  a tiny placeholder derived from its id (distinct, because thousands of identical
  points make HNSW inserts slow).
* ``<collection>_vectors`` -- one record per embedded text of an item (an item has
  several when ``fields`` selects several texts), cosine space, with the same
  namespace metadata plus ``item_id`` and ``path``. A query search asks this
  collection, max-pools the scores per item (as InMemoryStore does) and joins the
  items.

Namespace scoping is always a Chroma ``where`` on the per-depth fields, so a search
under ``("users", "alice")`` can never return Bob's items, however similar. Value
``filter``s are applied in Python on the namespace-scoped candidates (Chroma metadata
cannot express nested JSON); query searches over-fetch and widen until enough items
pass the filter. HNSW is approximate; when Chroma answers with fewer vectors than the
scope holds (it loses some among many identical vectors), the scope is scored exactly.

Chroma never embeds anything here: its default embedding function downloads a model
at run time. Vectors come from ``index["embed"]`` (default: the offline MiniLM).

Where this differs from InMemoryStore (which is lax in these places):

* ``put`` on an existing key keeps ``created_at`` (InMemoryStore resets it).
* A re-``put`` replaces the item's vectors (InMemoryStore keeps stale ones when the
  new put has ``index=False`` or embeds other paths).
* Without a query, results come oldest first (by ``created_at``, then namespace and
  key); InMemoryStore goes by insertion order grouped by namespace. Same order as
  long as each namespace is filled before the next one is started.
* ``list_namespaces`` lists namespaces that hold items; InMemoryStore also lists
  emptied ones and ones a ``get`` merely looked into.
* ``$gt``-style operators on a missing or non-numeric field do not match
  (InMemoryStore raises ``TypeError``); negative ``limit``/``offset`` are rejected.
* Values go through JSON: tuples come back as lists; non-JSON values are rejected.
* No TTL support.
* A dotted filter key matches a top-level key of that name when the value has one
  (InMemoryStore), else the nested field (SqliteStore/PostgresStore).

Writes are not atomic across the two collections: a crash in the middle of a ``put``
can leave the previous vectors of that key, which the next ``put`` of the key
replaces. Reads ignore vectors whose item is gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
)

from seal_agent.errors import BackendUnavailableError, ValidationError
from seal_agent.memory.chroma import make_client
from seal_agent.memory.records import validate_text

__all__ = ["ChromaStore", "StoreNamespaceError"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Layout version written into both collections' metadata."""

_PAGE = 1000  # records per Chroma `get` page when scanning a namespace
_ID_CHUNK = 500  # ids per `$in` clause / per delete call
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]+[A-Za-z0-9]$")  # Chroma's rule, 3+ chars
_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")


class StoreNamespaceError(ValidationError, InvalidNamespaceError):
    """A namespace the store cannot hold.

    Both a seal_agent `ValidationError` (names field and value) and LangGraph's
    `InvalidNamespaceError`, so callers written against either keep working.
    """


@dataclass
class _Plan:
    """A validated batch, split into what to read, what to write and what to embed."""

    ops: list[Op]
    puts: dict[tuple[tuple[str, ...], str], PutOp] = field(default_factory=dict)
    put_texts: dict[tuple[tuple[str, ...], str], list[tuple[str, str]]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        """Distinct texts of all puts, in first-seen order (each is embedded once)."""
        return list(dict.fromkeys(text for pairs in self.put_texts.values() for _, text in pairs))


class ChromaStore(BaseStore):
    """A LangGraph `BaseStore` on Chroma, with optional semantic search.

    Behaves like `langgraph.store.memory.InMemoryStore` on every operation (a shared
    test runs both), but persists, and scales out through a Chroma server.

    Example:
        ```python
        store = ChromaStore(home="./.seal", index={"dims": 384, "embed": "default"})
        store.put(("users", "alice"), "food", {"text": "Alice is vegetarian"})
        store.search(("users", "alice"), query="what does she eat?", limit=3)
        graph = builder.compile(store=store)
        ```

    Args:
        client: A chromadb client to use as is. Give either this or `home`/`chroma_url`.
        home: Directory of an embedded Chroma (data under ``home/chroma``).
        chroma_url: ``http(s)://host:port`` of a Chroma server; same code path.
        collection: Name of the items collection; vectors go to ``<collection>_vectors``.
        index: LangGraph's `IndexConfig`. ``None`` disables semantic search (queries are
            ignored, as in InMemoryStore). ``embed`` is a LangChain `Embeddings`, a
            sync/async callable on a list of texts, a ``"provider:model"`` string, or
            ``"default"``/absent for the offline all-MiniLM-L6-v2 (384 dims). ``fields``
            are JSON paths of the value to embed (default ``["$"]``, the whole value);
            ``put(..., index=False)`` or ``index=[paths]`` overrides them per item.

    Raises:
        ValidationError: A bad `collection`, `index` or combination of arguments.
        BackendUnavailableError: The Chroma server cannot be reached.

    Note:
        ``abatch`` embeds with the model's async methods, then runs the Chroma calls in
        a worker thread (`asyncio.to_thread`): chromadb's client is synchronous.
        TTLs are not supported (``supports_ttl`` is False).
    """

    supports_ttl = False

    def __init__(
        self,
        *,
        client: Any | None = None,
        home: str | os.PathLike[str] | None = None,
        chroma_url: str | None = None,
        collection: str = "seal_store",
        index: IndexConfig | None = None,
    ) -> None:
        if client is not None and (home is not None or chroma_url is not None):
            raise ValidationError("client", client, "give either client or home/chroma_url, not both")
        if not isinstance(collection, str) or not _COLLECTION_NAME.match(collection) or len(collection) > 500:
            raise ValidationError(
                "collection",
                collection,
                "must be 3-500 characters of [A-Za-z0-9._-], alphanumeric at both ends",
            )
        self.client = client if client is not None else make_client(home, chroma_url=chroma_url)
        self.collection_name = collection
        self._backend = chroma_url or (
            f"embedded Chroma under {home}" if home is not None else "the given client"
        )
        self.index_config: IndexConfig | None = None
        self.embeddings: Embeddings | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        self._dims: int | None = None
        if index:
            self._configure_index(index)

        with self._backend_errors("opening the collections"):
            self._items = self.client.get_or_create_collection(
                collection,
                embedding_function=None,
                metadata={"seal_store_format": FORMAT_VERSION, "seal_store_role": "items"},
            )
            self._vectors = self.client.get_or_create_collection(
                f"{collection}_vectors",
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={"seal_store_format": FORMAT_VERSION, "seal_store_role": "vectors"},
            )
        self._check_vector_space()

    # ------------------------------------------------------------------ setup

    def _configure_index(self, index: IndexConfig) -> None:
        self.index_config = dict(index)  # type: ignore[assignment]
        embed = index.get("embed")
        if embed is None or embed == "default":
            from seal_agent.memory.embeddings import MiniLMEmbeddings, default_embeddings

            self.embeddings = default_embeddings()
            self._dims = index.get("dims") or MiniLMEmbeddings.dimension
        else:
            self.embeddings = ensure_embeddings(embed)
            self._dims = index.get("dims")
        if self._dims is not None and (not isinstance(self._dims, int) or self._dims <= 0):
            raise ValidationError("index.dims", self._dims, "must be a positive int")
        fields = index.get("fields") or ["$"]
        if isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields):
            raise ValidationError("index.fields", fields, "must be a list of non-empty JSON paths")
        self._fields = [_tokenized(path) for path in fields]

    @contextmanager
    def _backend_errors(self, action: str) -> Iterator[None]:
        """Turn a lost connection to Chroma into `BackendUnavailableError`, naming the backend."""
        try:
            yield
        except BackendUnavailableError:
            raise
        except (ConnectionError, httpx.TransportError) as exc:
            raise BackendUnavailableError(
                f"ChromaStore {self.collection_name!r} on {self._backend}: {action} failed: {exc}"
            ) from exc

    def _check_vector_space(self) -> None:
        # A pre-existing collection keeps its own configuration; scores are only
        # cosine similarities if its space is cosine.
        config = getattr(self._vectors, "configuration", None) or {}
        space = None
        for kind in ("hnsw", "spann"):
            if isinstance(config.get(kind), dict):
                space = space or config[kind].get("space")
        if space not in (None, "cosine"):
            raise ValidationError(
                "collection",
                f"{self.collection_name}_vectors",
                f"has distance space {space!r}, need 'cosine'",
            )

    # ------------------------------------------------------------------ BaseStore API

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run get/search/list/put ops; reads see the state before this batch's writes.

        Like InMemoryStore: all reads are answered first, then the puts are applied
        (the last put of a (namespace, key) wins).
        """
        plan = self._plan(ops)
        texts = plan.texts
        vectors = self._checked(self.embeddings.embed_documents(texts)) if texts and self.embeddings else []
        queries = (
            {q: self._checked([self.embeddings.embed_query(q)])[0] for q in plan.queries}
            if self.embeddings
            else {}
        )
        return self._execute(plan, dict(zip(texts, vectors, strict=True)), queries)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """Async `batch`: async embedding, then the (synchronous) Chroma calls in a thread."""
        plan = self._plan(ops)
        texts = plan.texts
        vectors: list[list[float]] = []
        queries: dict[str, list[float]] = {}
        if self.embeddings:
            if texts:
                vectors = self._checked(await self.embeddings.aembed_documents(texts))
            found = await asyncio.gather(*(self.embeddings.aembed_query(q) for q in plan.queries))
            queries = dict(zip(plan.queries, self._checked(list(found)), strict=True))
        return await asyncio.to_thread(self._execute, plan, dict(zip(texts, vectors, strict=True)), queries)

    # ------------------------------------------------------------------ planning

    def _plan(self, ops: Iterable[Op]) -> _Plan:
        """Validate every op before anything is read or written; collect texts to embed."""
        plan = _Plan(ops=list(ops))
        queries: dict[str, None] = {}
        for op in plan.ops:
            if isinstance(op, GetOp):
                _check_namespace(op.namespace, "namespace", allow_empty=True)  # () just finds nothing
                _check_key(op.key)
            elif isinstance(op, PutOp):
                deleting = op.value is None  # deleting from () or a reserved root is a no-op, as in LangGraph
                _check_namespace(op.namespace, "namespace", allow_empty=deleting, writing=not deleting)
                _check_key(op.key)
                if op.value is not None and not isinstance(op.value, dict):
                    raise ValidationError("value", op.value, "must be a dict (or None to delete)")
                item_key = (tuple(op.namespace), op.key)
                plan.puts[item_key] = op
                plan.put_texts[item_key] = self._texts_to_embed(op)
            elif isinstance(op, SearchOp):
                _check_namespace(op.namespace_prefix, "namespace_prefix", allow_empty=True)
                _check_page(op.limit, op.offset)
                if op.filter is not None and not isinstance(op.filter, dict):
                    raise ValidationError("filter", op.filter, "must be a dict")
                if op.query and self.embeddings:
                    queries[op.query] = None
            elif isinstance(op, ListNamespacesOp):
                for condition in op.match_conditions or ():
                    if condition.match_type not in ("prefix", "suffix"):
                        raise ValidationError(
                            "match_type", condition.match_type, "must be 'prefix' or 'suffix'"
                        )
                    _check_namespace(condition.path, condition.match_type, allow_empty=True, wildcard=True)
                _check_page(op.limit, op.offset)
                if op.max_depth is not None and (not isinstance(op.max_depth, int) or op.max_depth < 1):
                    raise ValidationError("max_depth", op.max_depth, "must be a positive int or None")
            else:
                raise ValidationError(
                    "op", type(op).__name__, "must be a GetOp, PutOp, SearchOp or ListNamespacesOp"
                )
        plan.queries = list(queries)
        return plan

    def _texts_to_embed(self, op: PutOp) -> list[tuple[str, str]]:
        """(path, text) pairs of a put, following InMemoryStore's path labels."""
        if op.value is None or op.index is False or not self.embeddings:
            return []
        paths = self._fields if op.index is None else [_tokenized(p) for p in op.index]
        pairs: list[tuple[str, str]] = []
        for path, tokens in paths:
            texts = get_text_at_path(op.value, tokens)
            if len(texts) == 1:
                pairs.append((path, texts[0]))
            else:  # one vector per array element, labelled "path.i"
                pairs.extend((f"{path}.{i}", text) for i, text in enumerate(texts))
        return pairs

    def _checked(self, vectors: list[list[float]]) -> list[list[float]]:
        """Check the embedding width against `dims` (learnt from the first vector if unset)."""
        for vector in vectors:
            if self._dims is None:
                self._dims = len(vector)
            if len(vector) != self._dims:
                raise ValidationError(
                    "index.dims", self._dims, f"the embedding model returned a {len(vector)}-dim vector"
                )
        return [list(map(float, v)) for v in vectors]

    # ------------------------------------------------------------------ execution

    def _execute(
        self, plan: _Plan, text_vectors: dict[str, list[float]], query_vectors: dict[str, list[float]]
    ) -> list[Result]:
        with self._backend_errors("a store batch"):
            return self._run(plan, text_vectors, query_vectors)

    def _run(
        self, plan: _Plan, text_vectors: dict[str, list[float]], query_vectors: dict[str, list[float]]
    ) -> list[Result]:
        results: list[Result] = [None] * len(plan.ops)
        gets = [(i, op) for i, op in enumerate(plan.ops) if isinstance(op, GetOp)]
        if gets:
            found = self._fetch_items([_item_id(op.namespace, op.key) for _, op in gets])
            for i, op in gets:
                results[i] = found.get(_item_id(op.namespace, op.key))
        for i, op in enumerate(plan.ops):
            if isinstance(op, SearchOp):
                results[i] = self._search(op, query_vectors.get(op.query) if op.query else None)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
        if plan.puts:
            self._write(plan, text_vectors)
        return results

    # -- reads

    def _search(self, op: SearchOp, query_vector: list[float] | None) -> list[SearchItem]:
        where_ns = _namespace_where(tuple(op.namespace_prefix))
        start, stop = op.offset, op.offset + op.limit
        if query_vector is None:  # no query, or no index: plain listing, oldest first
            return [_search_item(item) for item in self._list_items(where_ns, op.filter, start, stop)]
        ranked = self._ranked_items(query_vector, where_ns, op.filter, need=stop)[start:stop]
        if len(ranked) < op.limit:
            # InMemoryStore's corner case, mirrored: when the scored items run out,
            # items without vectors fill the page (unscored, from the first one).
            unscored = self._list_items(
                _and(where_ns, {"indexed": False}), op.filter, 0, op.limit - len(ranked)
            )
            ranked.extend((None, item) for item in unscored)
        return [_search_item(item, score) for score, item in ranked]

    def _ranked_items(
        self, query_vector: list[float], where: dict | None, filter: dict | None, *, need: int
    ) -> list[tuple[float | None, Item]]:
        """Items by best cosine similarity of any of their vectors, filter applied.

        Chroma's query has no offset and cannot see the value filter, so ask for more
        vectors than needed and widen (x4) until `need` items pass or nothing is left.
        """
        total = self._vectors.count()
        if need <= 0 or total == 0:
            return []
        n_results = min(total, max(2 * need, 10))
        while True:
            answer = self._vectors.query(
                query_embeddings=[query_vector],
                n_results=n_results,
                where=where,
                include=["metadatas", "distances"],
            )
            metadatas, distances = answer["metadatas"][0], answer["distances"][0]
            scored = [(str(m["item_id"]), 1.0 - float(d)) for m, d in zip(metadatas, distances, strict=True)]
            exhausted = len(scored) < n_results or n_results >= total
            if len(scored) < n_results and self._count(self._vectors, where) > len(scored):
                # HNSW is approximate: it can fail to reach some vectors of the scope
                # (many identical vectors do that). The scope holds fewer than we asked
                # for anyway, so score all of it exactly.
                logger.debug("ChromaStore %s: exact scoring after a short HNSW answer", self.collection_name)
                scored = self._exact_scores(query_vector, where)
            best: dict[str, float] = {}  # item id -> score; best first, so this is max pooling
            for item_id, score in scored:
                best.setdefault(item_id, score)
            items = self._fetch_items(list(best))
            ranked: list[tuple[float | None, Item]] = [
                (score, items[item_id])
                for item_id, score in best.items()
                if item_id in items and _matches_filter(items[item_id].value, filter)
            ]
            if len(ranked) >= need or exhausted:
                return ranked[:need]
            n_results = min(total, n_results * 4)

    def _exact_scores(self, query_vector: list[float], where: dict | None) -> list[tuple[str, float]]:
        """(item id, cosine similarity) of every vector under `where`, best first."""
        import numpy as np

        item_ids: list[str] = []
        matrix: list[Any] = []
        for page in self._scan_pages(self._vectors, where, ["metadatas", "embeddings"]):
            item_ids.extend(str(m["item_id"]) for m in page["metadatas"])
            matrix.extend(page["embeddings"])
        if not item_ids:
            return []
        vectors = np.asarray(matrix, dtype=np.float64)
        query = np.asarray(query_vector, dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(query) or 1.0)
        scores = vectors @ query / np.where(norms == 0, 1.0, norms)
        order = sorted(range(len(item_ids)), key=lambda i: (-scores[i], item_ids[i]))
        return [(item_ids[i], float(scores[i])) for i in order]

    def _list_items(self, where: dict | None, filter: dict | None, start: int, stop: int) -> list[Item]:
        """Items under `where` passing `filter`, oldest first, sliced [start:stop]."""
        if stop <= start:
            return []
        if not filter:
            # Sort on metadata alone, then read the values of just this page.
            rows = sorted(self._scan(self._items, where, ["metadatas"]), key=lambda row: _order(row[1]))
            page_ids = [row_id for row_id, _, _ in rows[start:stop]]
            found = self._fetch_items(page_ids)
            return [found[i] for i in page_ids if i in found]
        rows = sorted(
            self._scan(self._items, where, ["metadatas", "documents"]), key=lambda row: _order(row[1])
        )
        items = (_to_item(metadata, document) for _, metadata, document in rows)
        return [item for item in items if _matches_filter(item.value, filter)][start:stop]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = list(op.match_conditions or ())
        # Push the literal labels of prefix conditions down to Chroma; the rest
        # (suffixes, wildcards) is checked here.
        clauses: list[dict] = []
        for condition in conditions:
            path = tuple(condition.path)
            clauses.append({"ns_depth": {"$gte": len(path)}})
            if condition.match_type == "prefix":
                clauses.extend({f"ns_{i}": label} for i, label in enumerate(path) if label != "*")
        seen = {
            tuple(str(metadata["ns"]).split("/"))
            for _, metadata, _ in self._scan(self._items, _and(*clauses), ["metadatas"])
        }
        namespaces = [ns for ns in seen if all(_namespace_matches(c, ns) for c in conditions)]
        if op.max_depth is not None:
            namespaces = list({ns[: op.max_depth] for ns in namespaces})
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    def _fetch_items(self, ids: Sequence[str]) -> dict[str, Item]:
        found: dict[str, Item] = {}
        for chunk in _chunks(list(dict.fromkeys(ids)), _ID_CHUNK):
            got = self._items.get(ids=chunk, include=["metadatas", "documents"])
            for item_id, metadata, document in zip(
                got["ids"], got["metadatas"], got["documents"], strict=True
            ):
                found[item_id] = _to_item(metadata, document)
        return found

    @staticmethod
    def _scan_pages(collection: Any, where: dict | None, include: list[str]) -> Iterator[dict[str, Any]]:
        """Chroma `get` results for all records under `where`, one page at a time."""
        offset = 0
        while True:
            page = collection.get(where=where, limit=_PAGE, offset=offset, include=include)
            yield page
            if len(page["ids"]) < _PAGE:
                return
            offset += _PAGE

    def _scan(
        self, collection: Any, where: dict | None, include: list[str]
    ) -> Iterator[tuple[str, dict, str | None]]:
        """All records under `where`: (id, metadata, document or None)."""
        for page in self._scan_pages(collection, where, include):
            ids = page["ids"]
            metadatas = page.get("metadatas") or [{}] * len(ids)
            documents = page.get("documents") or [None] * len(ids)
            yield from zip(ids, metadatas, documents, strict=True)

    def _count(self, collection: Any, where: dict | None) -> int:
        return sum(len(page["ids"]) for page in self._scan_pages(collection, where, []))

    # -- writes

    def _write(self, plan: _Plan, text_vectors: dict[str, list[float]]) -> None:
        now = _to_us(datetime.now(UTC))
        upserts = [op for op in plan.puts.values() if op.value is not None]
        deletes = [_item_id(op.namespace, op.key) for op in plan.puts.values() if op.value is None]
        documents = [_dump_value(op.value) for op in upserts]  # fail before writing anything
        ids = [_item_id(op.namespace, op.key) for op in upserts]

        # A put on an existing key keeps its created_at (as Postgres/SQLite stores do).
        created: dict[str, int] = {}
        for chunk in _chunks(ids, _ID_CHUNK):
            got = self._items.get(ids=chunk, include=["metadatas"])
            created.update(
                {i: int(m["created_at"]) for i, m in zip(got["ids"], got["metadatas"], strict=True)}
            )

        vector_ids: list[str] = []
        vector_embeddings: list[list[float]] = []
        vector_metadatas: list[dict[str, Any]] = []
        item_metadatas: list[dict[str, Any]] = []
        for op, item_id in zip(upserts, ids, strict=True):
            namespace = tuple(op.namespace)
            pairs = plan.put_texts[(namespace, op.key)]
            for n, (path, text) in enumerate(pairs):
                vector_ids.append(f"{item_id}:{n}")
                vector_embeddings.append(text_vectors[text])
                vector_metadatas.append(
                    {**_namespace_metadata(namespace), "key": op.key, "item_id": item_id, "path": path}
                )
            item_metadatas.append(
                {
                    **_namespace_metadata(namespace),
                    "key": op.key,
                    "created_at": created.get(item_id, now),
                    "updated_at": now,
                    "indexed": bool(pairs),
                }
            )

        # Old vectors go first: a re-put may embed other fields, or none (index=False).
        for chunk in _chunks(ids + deletes, _ID_CHUNK):
            self._vectors.delete(where={"item_id": {"$in": chunk}})
        max_batch = max(1, int(self.client.get_max_batch_size()))
        for s in range(0, len(vector_ids), max_batch):
            self._vectors.add(
                ids=vector_ids[s : s + max_batch],
                embeddings=vector_embeddings[s : s + max_batch],
                metadatas=vector_metadatas[s : s + max_batch],
            )
        for s in range(0, len(ids), max_batch):
            self._items.upsert(
                ids=ids[s : s + max_batch],
                embeddings=[_placeholder_vector(i) for i in ids[s : s + max_batch]],
                documents=documents[s : s + max_batch],
                metadatas=item_metadatas[s : s + max_batch],
            )
        for chunk in _chunks(deletes, _ID_CHUNK):
            self._items.delete(ids=chunk)
        logger.debug(
            "ChromaStore %s: %d put, %d deleted, %d vectors",
            self.collection_name,
            len(ids),
            len(deletes),
            len(vector_ids),
        )


# ---------------------------------------------------------------------- validation


def _check_namespace(
    namespace: Any, field: str, *, allow_empty: bool = False, writing: bool = False, wildcard: bool = False
) -> None:
    """LangGraph's namespace rules plus ours: no '/' (labels are joined with it)."""
    if not isinstance(namespace, tuple | list):
        raise StoreNamespaceError(field, namespace, "must be a tuple of strings")
    if not namespace and not allow_empty:
        raise StoreNamespaceError(field, namespace, "must not be empty")
    for i, label in enumerate(namespace):
        if wildcard and label == "*":
            continue
        where = f"{field}[{i}]"
        if not isinstance(label, str) or not label:
            raise StoreNamespaceError(
                where, label, f"labels must be non-empty strings (in {tuple(namespace)!r})"
            )
        for char, why in (
            (".", "LangGraph reserves '.'"),
            ("/", "ChromaStore joins labels with '/'"),
            ("\x00", "NUL"),
        ):
            if char in label:
                raise StoreNamespaceError(
                    where, label, f"must not contain {char!r}: {why} (in {tuple(namespace)!r})"
                )
    # The root label "langgraph" is refused by BaseStore.put (LangGraph's own rule, for
    # callers); through `batch` LangGraph's stores accept it (their internal writes use
    # it), and so does this one.


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise ValidationError("key", key, "must be a string")
    validate_text(key, "key")  # a lone surrogate failed hashing the id; NUL, as in namespace labels


def _check_page(limit: Any, offset: Any) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValidationError(name, value, "must be an int >= 0")


# ---------------------------------------------------------------------- records


def _item_id(namespace: Sequence[str], key: str) -> str:
    """Stable record id of (namespace, key); JSON keeps ('a', 'b/c') and ('a/b', 'c') apart."""
    return hashlib.sha256(json.dumps([list(namespace), key], ensure_ascii=False).encode()).hexdigest()[:40]


def _placeholder_vector(item_id: str) -> list[float]:
    # Distinct per item (see module docstring); never compared to anything.
    bits = int(item_id[:16], 16)
    return [((bits >> 32) & 0xFFFFFFFF) / 2**32 + 1e-3, (bits & 0xFFFFFFFF) / 2**32 + 1e-3]


def _namespace_metadata(namespace: tuple[str, ...]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"ns": "/".join(namespace), "ns_depth": len(namespace)}
    metadata.update({f"ns_{i}": label for i, label in enumerate(namespace)})
    return metadata


def _namespace_where(prefix: tuple[str, ...]) -> dict | None:
    """A hard Chroma filter for 'namespace starts with prefix'."""
    return _and(*({f"ns_{i}": label} for i, label in enumerate(prefix)))


def _and(*clauses: dict | None) -> dict | None:
    """Chroma wants `$and` with two or more clauses, a bare clause for one, None for none."""
    kept = [c for c in clauses if c]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else {"$and": kept}


def _dump_value(value: dict[str, Any]) -> str:
    try:
        # Nested 10,000 deep (RecursionError) or holding a lone surrogate (Chroma needs UTF-8): ours too.
        return validate_text(json.dumps(value, ensure_ascii=False), "value")
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ValidationError):
            raise
        raise ValidationError("value", value, f"must be JSON-serializable ({exc})") from exc


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_us(micros: Any) -> datetime:
    return _EPOCH + timedelta(microseconds=int(micros))


def _order(metadata: dict[str, Any]) -> tuple[int, tuple[str, ...], str]:
    # Oldest first; ties (same microsecond) by namespace then key, so pages are stable.
    return int(metadata["created_at"]), tuple(str(metadata["ns"]).split("/")), str(metadata["key"])


def _to_item(metadata: dict[str, Any], document: str | None) -> Item:
    return Item(
        value=json.loads(document) if document else {},
        key=str(metadata["key"]),
        namespace=tuple(str(metadata["ns"]).split("/")),
        created_at=_from_us(metadata["created_at"]),
        updated_at=_from_us(metadata["updated_at"]),
    )


def _search_item(item: Item, score: float | None = None) -> SearchItem:
    return SearchItem(
        namespace=item.namespace,
        key=item.key,
        value=item.value,
        created_at=item.created_at,
        updated_at=item.updated_at,
        score=score,
    )


def _tokenized(path: str) -> tuple[str, str | list[str]]:
    # "$" means the whole value; get_text_at_path wants it untokenized.
    return (path, path) if path == "$" else (path, tokenize_path(path))


def _chunks(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# ---------------------------------------------------------------------- matching


def _matches_filter(value: dict[str, Any], filter: dict[str, Any] | None) -> bool:
    """InMemoryStore's filter semantics: every key must match; a dotted key names a
    nested field as in LangGraph's SQLite and Postgres stores (see `_field`)."""
    return all(_matches(_field(value, name), expected) for name, expected in (filter or {}).items())


def _field(value: dict[str, Any], name: str) -> Any:
    """The value's field `name`: a top-level key of that name (InMemoryStore's reading),
    else the nested field a dotted name walks to (``"user.access-level"`` ->
    ``value["user"]["access-level"]``, SqliteStore/PostgresStore's ``$.user.access-level``);
    None when there is none. Before, only the first was tried, so a dotted filter on
    nested values silently matched nothing."""
    if name in value or "." not in name:
        return value.get(name)
    current: Any = value
    for part in name.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _matches(actual: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        if any(str(k).startswith("$") for k in expected):  # {"$gt": 3, "$lt": 9}
            return all(_apply_operator(actual, op, operand) for op, operand in expected.items())
        # A nested dict matches field by field (extra fields in the value are fine).
        return isinstance(actual, dict) and all(_matches(actual.get(k), v) for k, v in expected.items())
    if isinstance(expected, list | tuple):
        return (
            isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(_matches(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return actual == expected


def _apply_operator(actual: Any, op: str, operand: Any) -> bool:
    if op not in _OPERATORS:
        raise ValidationError("filter", op, f"unsupported operator; use one of {', '.join(_OPERATORS)}")
    if op == "$eq":
        return actual == operand
    if op == "$ne":
        return actual != operand
    try:  # numeric comparison, as InMemoryStore does
        a, b = float(actual), float(operand)
    except (TypeError, ValueError):
        return False  # a missing or non-numeric field does not match (InMemoryStore would raise)
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """A prefix/suffix match condition, where '*' matches any one label."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        part = namespace[: len(path)]
    elif condition.match_type == "suffix":
        part = namespace[len(namespace) - len(path) :]
    else:
        raise ValidationError("match_type", condition.match_type, "must be 'prefix' or 'suffix'")
    return all(p == "*" or p == label for p, label in zip(path, part, strict=True))
