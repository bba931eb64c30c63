"""ChromaStore against LangGraph's InMemoryStore, embedded Chroma and a real `chroma run` server.

The core is one scripted scenario (`_scenario`) run on both stores with the same
embeddings; every answer is recorded and the two records must agree: keys, values,
namespaces, order, and scores within float32 noise. The scenario stays clear of the
places where InMemoryStore is lax on purpose (see `test_semantics_where_chroma_store_is_stricter`).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import waits
from langchain_core.embeddings import Embeddings
from langgraph.store.base import GetOp, InvalidNamespaceError, Item, PutOp, SearchItem, SearchOp
from langgraph.store.memory import InMemoryStore

from seal_agent.errors import ValidationError
from seal_agent.integrations.store import ChromaStore, StoreNamespaceError

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------- embeddings


class TrigramEmbeddings(Embeddings):
    """Deterministic, tie-free-enough fake: hashed character trigrams plus a constant bias.

    Texts that share spelling are similar (so rankings mean something), and the bias
    dimension keeps unrelated texts from all scoring exactly 0 (ties would make the
    order of equal scores, which no store promises, part of the comparison).
    """

    def __init__(self, dim: int = 128) -> None:
        self.dim = dim

    def _vec(self, text: str) -> list[float]:
        import hashlib
        import math

        v = [0.0] * self.dim
        v[0] = 0.5  # bias
        padded = f"  {text.lower()}  "
        for i in range(len(padded) - 2):
            h = int(hashlib.md5(padded[i : i + 3].encode()).hexdigest(), 16)
            v[1 + h % (self.dim - 1)] += 1.0
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


class CachedEmbeddings(Embeddings):
    """Wraps a real model so each distinct text is embedded once per test session.

    The same vectors reach both stores (what the comparison needs), and MiniLM's
    per-call cost on a small CPU is paid once; `prime` embeds a list in one batch.
    """

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self.cache: dict[str, list[float]] = {}

    def prime(self, texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        self.cache.update(zip(todo, self.inner.embed_documents(todo), strict=True))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.prime(texts)
        return [self.cache[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@pytest.fixture(scope="session")
def minilm() -> CachedEmbeddings:
    from seal_agent.memory.embeddings import default_embeddings

    cached = CachedEmbeddings(default_embeddings())
    cached.prime(_scenario_texts())
    return cached


# ---------------------------------------------------------------------- the shared scenario

NS_AF = ("users", "alice", "facts")
NS_AP = ("users", "alice", "prefs")
NS_BF = ("users", "bob", "facts")
NS_DOCS = ("docs",)


def _value(text: str, n: int, tags: list[str], source: str, lang: str = "en", **extra: Any) -> dict[str, Any]:
    return {"text": text, "n": n, "tags": tags, "meta": {"source": source, "lang": lang}, **extra}


# (namespace, key, value, index) -- tags differ between items (equal vectors would tie), and each namespace's items are put together, so the
# insertion order InMemoryStore lists by equals the creation order ChromaStore lists by.
SEED: list[tuple[tuple[str, ...], str, dict[str, Any], Any]] = [
    (NS_AF, "a1", _value("Alice was born in Lyon and moved to Berlin", 1, ["bio", "travel"], "chat"), None),
    (NS_AF, "a2", _value("Alice is allergic to peanuts", 5, ["health"], "form"), None),
    (
        NS_AF,
        "a3",
        _value("Alice works as a pastry chef in a small bakery", 3, ["work", "baking"], "chat", "fr"),
        None,
    ),
    # The best match for "pastry chef" in Alice's facts, but not indexed.
    (NS_AF, "raw", _value("pastry chef pastry chef bakery", 2, ["scratch"], "import"), False),
    (NS_AP, "p1", _value("Alice prefers dark mode and short answers", 4, ["ui"], "settings"), None),
    (NS_AP, "p2", _value("Alice likes jazz music in the evening", 7, ["music"], "chat", "de"), None),
    (NS_BF, "b1", _value("Bob is a pastry chef who loves peanuts", 6, ["work", "food"], "chat"), None),
    (NS_BF, "b2", _value("Bob lives in Berlin near the river", 8, ["home", "river"], "chat"), None),
    (
        NS_DOCS,
        "d1",
        _value("How to bake sourdough bread at home", 9, ["howto"], "web", title="Baking guide"),
        ["title"],
    ),
]
A2_UPDATED = _value("Alice outgrew her peanut allergy last year", 5, ["health", "update"], "form")
D2 = _value("Pancakes for breakfast", 10, ["breakfast"], "web", title="Pancake recipe")

QUERIES = [
    "who is a pastry chef",
    "food allergy",
    "what does Alice like to listen to",
    "Berlin",
    "baking bread",
    "health",
]
FILTERS: list[dict[str, Any]] = [
    {"n": 5},
    {"n": {"$gt": 3}},
    {"n": {"$gte": 2, "$lt": 6}},
    {"meta": {"source": "chat"}},
    {"meta": {"lang": {"$ne": "en"}}},
    {"tags": ["work", "food"]},
    {"tags": ["food"]},  # lists compare whole: matches nothing
    {"meta": {"source": "chat"}, "n": {"$lte": 3}},
]


def _scenario_texts() -> list[str]:
    values = [v for _, _, v, _ in SEED] + [A2_UPDATED, D2]
    texts = [json.dumps(v, sort_keys=True, ensure_ascii=False) for v in values]  # "$" embeds the whole value
    for v in values:
        texts += [v["text"], v.get("title", ""), *v["tags"]]
    return [t for t in texts if t] + QUERIES


def _record(result: Any) -> Any:
    """Store answers as plain data; a SearchItem's score goes in its own slot for approx compare."""
    if isinstance(result, SearchItem):
        return {"ns": result.namespace, "key": result.key, "value": result.value, "score": result.score}
    if isinstance(result, Item):
        return {"ns": result.namespace, "key": result.key, "value": result.value}
    if isinstance(result, list):
        return [_record(r) for r in result]
    return result


async def _scenario(store: Any, aio: bool, *, short: bool = False) -> list[tuple[str, Any]]:
    """Drive `store` through put/get/update/delete/search/list_namespaces; return every answer."""
    log: list[tuple[str, Any]] = []

    async def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if aio:
            return await getattr(store, f"a{name}")(*args, **kwargs)
        return getattr(store, name)(*args, **kwargs)

    async def see(label: str, name: str, *args: Any, **kwargs: Any) -> None:
        log.append((label, _record(await call(name, *args, **kwargs))))

    for namespace, key, value, index in SEED:
        kwargs = {} if index is None else {"index": index}
        await call("put", namespace, key, value, **kwargs)

    for namespace, key, _, _ in SEED:
        await see(f"get {namespace} {key}", "get", namespace, key)
    await see("get missing key", "get", NS_AF, "nope")

    # Listing, no query: whole store, pages, sub-trees, filters.
    await see("search all", "search", (), limit=100)
    for offset in (0, 3, 6):
        await see(f"search users page {offset}", "search", ("users",), limit=3, offset=offset)
    await see("search alice", "search", ("users", "alice"))
    for f in FILTERS if not short else FILTERS[:3]:
        await see(f"filter {f}", "search", ("users",), filter=f, limit=20)

    # Semantic search; with no index these are plain listings, as in InMemoryStore.
    for q in QUERIES if not short else QUERIES[:2]:
        await see(f"query {q!r} users", "search", ("users",), query=q, limit=4)
        await see(f"query {q!r} all", "search", (), query=q, limit=20)
    await see("query page 2", "search", ("users",), query="who is a pastry chef", limit=3, offset=3)
    await see("query with filter", "search", ("users",), query="food allergy", filter={"n": {"$lte": 5}})
    # Past the scored items: unindexed items fill the page, unscored.
    await see("query alice facts", "search", NS_AF, query="pastry chef", limit=10)
    await see("query past scored", "search", NS_AF, query="pastry chef", limit=2, offset=3)
    await see("query docs", "search", NS_DOCS, query="baking bread")

    for kwargs in [
        {},
        {"prefix": ("users",)},
        {"prefix": ("users", "*", "facts")},
        {"suffix": ("facts",)},
        {"suffix": ("alice", "*")},
        {"max_depth": 2},
        {"prefix": ("users",), "max_depth": 2},
        {"limit": 2, "offset": 1},
        {"prefix": ("nobody",)},
    ]:
        await see(f"list_namespaces {kwargs}", "list_namespaces", **kwargs)

    # Update keeps the key, replaces the value and its vectors.
    await call("put", NS_AF, "a2", A2_UPDATED)
    await see("get updated", "get", NS_AF, "a2")
    await see("query after update", "search", ("users",), query="food allergy", limit=3)

    # Delete (Bob keeps b1, so no namespace empties: InMemoryStore keeps empty ones listed).
    await call("delete", NS_BF, "b2")
    await see("get deleted", "get", NS_BF, "b2")
    await see("search bob", "search", ("users", "bob"))
    await see("query after delete", "search", (), query="Berlin", limit=5)

    # Within a batch, reads see the state before the batch's writes.
    batch = store.abatch if aio else store.batch
    ops = [PutOp(NS_DOCS, "d2", D2), GetOp(NS_DOCS, "d2"), SearchOp(NS_DOCS, query="pancake")]
    answer = await batch(ops) if aio else batch(ops)
    log.append(("batch", _record(answer)))
    await see("get after batch", "get", NS_DOCS, "d2")
    await see("query after batch", "search", NS_DOCS, query="pancake")
    await see("list_namespaces end", "list_namespaces")
    return log


def _split_scores(record: Any) -> tuple[Any, list[float]]:
    """(record with scores blanked, the scores in order)."""
    scores: list[float] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict) and "score" in node:
            if node["score"] is not None:
                scores.append(node["score"])
            return {**node, "score": node["score"] is not None}
        if isinstance(node, list):
            return [walk(n) for n in node]
        return node

    return walk(record), scores


def _assert_same(expected: list[tuple[str, Any]], actual: list[tuple[str, Any]]) -> None:
    assert [label for label, _ in actual] == [label for label, _ in expected]
    for (label, want), (_, got) in zip(expected, actual, strict=True):
        want_shape, want_scores = _split_scores(want)
        got_shape, got_scores = _split_scores(got)
        # Equal scores may come in any order in either store; the data avoids them.
        assert all(abs(a - b) > 1e-5 for a, b in zip(want_scores, want_scores[1:], strict=False)), (
            f"{label}: tie in data"
        )
        assert got_shape == want_shape, label
        assert got_scores == pytest.approx(want_scores, abs=1e-4), label


def _index(kind: str, minilm: Embeddings | None) -> dict[str, Any] | None:
    if kind == "none":
        return None
    if kind == "minilm":
        return {"dims": 384, "embed": minilm, "fields": ["text"]}
    fields = {"fake-text": ["text"], "fake-multi": ["text", "tags[*]"], "fake-whole": None}[kind]
    config: dict[str, Any] = {"dims": 128, "embed": TrigramEmbeddings()}
    if fields is not None:
        config["fields"] = fields
    return config


def _compare(make_chroma: Any, index: dict[str, Any] | None, aio: bool, short: bool = False) -> None:
    expected = asyncio.run(_scenario(InMemoryStore(index=index), aio, short=short))
    actual = asyncio.run(_scenario(make_chroma(index), aio, short=short))
    _assert_same(expected, actual)


@pytest.mark.parametrize(
    ("kind", "aio"),
    [
        ("fake-text", False),
        ("fake-text", True),
        ("fake-multi", False),
        ("fake-whole", True),
        ("none", False),
        ("minilm", False),
    ],
)
def test_same_answers_as_in_memory_store(
    kind: str, aio: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    embeddings = request.getfixturevalue("minilm") if kind == "minilm" else None
    _compare(lambda index: ChromaStore(home=tmp_path, index=index), _index(kind, embeddings), aio)


# ---------------------------------------------------------------------- persistence, isolation


def test_data_survives_reopening(tmp_path: Path) -> None:
    index = {"dims": 128, "embed": TrigramEmbeddings(), "fields": ["text"]}
    store = ChromaStore(home=tmp_path, index=index)
    store.put(NS_AF, "a1", {"text": "Alice was born in Lyon"})
    store.put(NS_AF, "a2", {"text": "Alice likes tea"}, index=False)
    created = store.get(NS_AF, "a1").created_at

    # A fresh process: chromadb caches clients per path in-process, so only a new
    # process proves the data is on disk.
    script = textwrap.dedent(
        """
        import json, sys
        from langchain_core.embeddings import Embeddings
        from seal_agent.integrations.store import ChromaStore
        {fake}
        store = ChromaStore(home=sys.argv[1], index={{"dims": 128, "embed": TrigramEmbeddings(), "fields": ["text"]}})
        hits = store.search(("users",), query="where was Alice born")
        item = store.get(("users", "alice", "facts"), "a1")
        print(json.dumps({{"hits": [[h.key, h.score] for h in hits], "created": item.created_at.isoformat(),
                          "ns": store.list_namespaces()}}))
        """
    ).format(fake=inspect.getsource(TrigramEmbeddings))
    out = waits.run([sys.executable, "-c", script, str(tmp_path)], text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert [k for k, _ in seen["hits"]] == ["a1", "a2"]
    assert seen["hits"][0][1] > 0.3 and seen["hits"][1][1] is None
    assert seen["created"] == created.isoformat()
    assert seen["ns"] == [list(NS_AF)]


@pytest.mark.parametrize("backend", ["embedded", pytest.param("server", marks=pytest.mark.slow)])
def test_namespace_prefix_is_a_hard_filter(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    index = {"dims": 128, "embed": TrigramEmbeddings(), "fields": ["text"]}
    if backend == "server":
        url = request.getfixturevalue("chroma_server")
        store = ChromaStore(chroma_url=url, collection=f"iso-{uuid.uuid4().hex[:12]}", index=index)
    else:
        store = ChromaStore(home=tmp_path, index=index)
    query = "the secret code is 4711"
    # Many perfect matches elsewhere, a few poor ones in the searched namespace. The 200
    # identical vectors also defeat HNSW, which must not lose any of them (exact fallback).
    store.batch([PutOp(("users", "bob"), f"s{i}", {"text": query}) for i in range(200)])
    store.batch([PutOp(("users", "alicex"), f"x{i}", {"text": query}) for i in range(20)])
    store.put(("users", "alice"), "m1", {"text": "likes green tea"})
    store.put(("users", "alice", "deep"), "m2", {"text": "plays the cello"})
    store.put(("users", "alice"), "m3", {"text": "code reviews on Fridays"}, index=False)

    hits = store.search(("users", "alice"), query=query, limit=50)
    assert {(h.namespace, h.key) for h in hits} == {
        (("users", "alice"), "m1"),
        (("users", "alice", "deep"), "m2"),
        (("users", "alice"), "m3"),
    }
    assert all(h.namespace[:2] == ("users", "alice") for h in store.search(("users", "alice"), limit=50))
    assert store.search(("users", "al"), query=query) == []  # labels match whole, not as string prefixes
    assert len(store.search(("users", "bob"), query=query, limit=500)) == 200
    assert store.list_namespaces(prefix=("users", "alice")) == [
        ("users", "alice"),
        ("users", "alice", "deep"),
    ]


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("namespace", "bad"),
    [
        (("users", "a/b"), "a/b"),
        (("users", ""), ""),
        (("x", 3), "3"),
        ((), "()"),
    ],
)
def test_invalid_namespace_is_rejected_and_named(tmp_path: Path, namespace: tuple, bad: str) -> None:
    store = ChromaStore(home=tmp_path)
    good = PutOp(("users", "ok"), "k", {"v": 1})
    # Straight to batch, so our own check runs (BaseStore.put checks some rules first).
    with pytest.raises(StoreNamespaceError) as caught:
        store.batch([good, PutOp(namespace, "k", {"v": 1})])
    assert isinstance(caught.value, ValidationError) and isinstance(caught.value, InvalidNamespaceError)
    assert bad in str(caught.value)
    assert store.get(("users", "ok"), "k") is None  # nothing of the batch was written


def test_root_label_langgraph_like_langgraphs_own_stores(tmp_path: Path) -> None:
    """`batch` accepts writes under "langgraph" (LangGraph's stores do: their internal
    writes use it); `put` refuses them (BaseStore's rule for callers), on both stores."""
    answers = []
    for store in (InMemoryStore(), ChromaStore(home=tmp_path)):
        assert store.batch([PutOp(("langgraph", "x"), "k", {"v": 1})]) == [None]
        got, found = store.batch([GetOp(("langgraph", "x"), "k"), SearchOp(("langgraph",), limit=10)])
        answers.append((tuple(got.namespace), got.key, got.value,
                        [(tuple(h.namespace), h.key, h.value) for h in found]))
        with pytest.raises(InvalidNamespaceError, match="langgraph"):
            store.put(("langgraph", "y"), "k", {"v": 2})
    assert answers[0] == answers[1] == (("langgraph", "x"), "k", {"v": 1}, [(("langgraph", "x"), "k", {"v": 1})])


def test_dotted_filter_keys_match_nested_fields_like_langgraphs_sql_stores(tmp_path: Path) -> None:
    """``{"user.access-level": ...}`` names a nested field in LangGraph's SQLite (and
    Postgres) stores; it used to match nothing here. A top-level key spelled with a dot
    still matches as InMemoryStore reads it."""
    import sqlite3

    from langgraph.store.sqlite import SqliteStore

    nested = {"a": {"user": {"access-level": "admin", "n": 3}}, "b": {"user": {"access-level": "guest", "n": 1}},
              "c": {"other": 1}}
    # ($ne on a missing field: SqliteStore excludes the item, InMemoryStore and ChromaStore include it)
    filters = [{"user.access-level": "admin"}, {"user.n": {"$gt": 2}}, {"user.n": {"$lt": 3}},
               {"user.n": {"$lte": 3}}, {"user.access-level": "admin", "user.n": 3}]
    sql = SqliteStore(sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None))
    sql.setup()
    chroma = ChromaStore(home=tmp_path, index={"dims": 128, "embed": TrigramEmbeddings(), "fields": ["$"]})
    for store in (sql, chroma):
        for key, value in nested.items():
            store.put(("users",), key, value, index=False)

    def keys(store: Any, flt: dict[str, Any], query: str | None = None) -> list[str]:
        return sorted(h.key for h in store.search(("users",), filter=flt, query=query, limit=10))

    for flt in filters:
        want = keys(sql, flt)
        assert keys(chroma, flt) == want, flt
        assert keys(chroma, flt, query="admin") == want, flt
    assert keys(chroma, {"user.access-level": "admin"}) == ["a"]  # not vacuous
    # a literal dotted top-level key: InMemoryStore's reading, kept
    mem = InMemoryStore()
    for store in (mem, chroma):
        store.put(("flat",), "d", {"user.access-level": "admin"}, index=False)
    assert [h.key for h in chroma.search(("flat",), filter={"user.access-level": "admin"})] == \
        [h.key for h in mem.search(("flat",), filter={"user.access-level": "admin"})] == ["d"]


def test_invalid_input_through_the_public_methods(tmp_path: Path) -> None:
    store = ChromaStore(home=tmp_path)
    with pytest.raises(InvalidNamespaceError, match="a/b"):
        store.put(("users", "a/b"), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError, match="a.b"):  # LangGraph's own rule, raised by BaseStore.put
        store.put(("users", "a.b"), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError, match="x/y"):
        store.search(("x/y",))
    with pytest.raises(ValidationError, match="value"):
        store.put(("users",), "k", {"when": object()})
    with pytest.raises(ValidationError, match="limit=-1"):
        store.search(("users",), limit=-1)
    with pytest.raises(ValidationError, match="collection"):
        ChromaStore(home=tmp_path, collection="x")
    assert store.search(()) == [] and store.get((), "k") is None


def test_lost_connection_is_a_backend_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from seal_agent.errors import BackendUnavailableError

    store = ChromaStore(home=tmp_path)

    class DeadCollection:
        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise httpx.ConnectError("[Errno 111] Connection refused")

            return fail

    monkeypatch.setattr(store, "_items", DeadCollection())
    with pytest.raises(BackendUnavailableError, match="seal_store.*Connection refused"):
        store.get(("users",), "k")


# ---------------------------------------------------------------------- ChromaStore-only semantics


def test_semantics_where_chroma_store_is_stricter(tmp_path: Path) -> None:
    """Where InMemoryStore is lax (documented in the module docstring), ChromaStore is exact."""
    store = ChromaStore(home=tmp_path, index={"dims": 128, "embed": TrigramEmbeddings(), "fields": ["text"]})
    ns = ("users", "carol")
    store.put(ns, "k", {"text": "Carol collects stamps", "n": 1})
    first = store.get(ns, "k")
    time.sleep(0.002)
    store.put(ns, "k", {"text": "Carol collects coins", "n": 2})
    second = store.get(ns, "k")
    # An update keeps created_at (InMemoryStore resets it) and moves updated_at.
    assert second.created_at == first.created_at and second.updated_at > first.updated_at

    # Re-put with index=False drops the old vectors (InMemoryStore keeps them).
    store.put(ns, "k", {"text": "Carol collects coins", "n": 2}, index=False)
    assert [h.score for h in store.search(ns, query="coins")] == [None]

    # Operators on a missing or non-numeric field do not match (InMemoryStore raises TypeError).
    store.put(ns, "j", {"text": "no number here"})
    assert [h.key for h in store.search(ns, filter={"n": {"$gt": 0}})] == ["k"]

    # Deleting the last item of a namespace removes it from list_namespaces.
    store.delete(ns, "k")
    store.delete(ns, "j")
    assert store.list_namespaces() == []
    # A get in an unknown namespace does not create it (it does in InMemoryStore).
    assert store.get(("ghost",), "k") is None and store.list_namespaces() == []


def test_query_filter_widens_until_enough_items_pass(tmp_path: Path) -> None:
    store = ChromaStore(home=tmp_path, index={"dims": 128, "embed": TrigramEmbeddings(), "fields": ["text"]})
    # 60 strong matches fail the filter; the 5 that pass rank below all of them.
    store.batch([PutOp(("t",), f"bad{i}", {"text": f"red apple pie {i}", "ok": False}) for i in range(60)])
    store.batch([PutOp(("t",), f"good{i}", {"text": f"green tea {i}", "ok": True}) for i in range(5)])
    hits = store.search(("t",), query="red apple pie", filter={"ok": True}, limit=3, offset=1)
    assert len(hits) == 3 and all(h.key.startswith("good") for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------------- client/server


# `chroma_server` (a real `chroma run` on loopback) comes from conftest.py.


@pytest.mark.slow
@pytest.mark.parametrize("aio", [False, True])
def test_same_answers_through_a_chroma_server(chroma_server: str, aio: bool) -> None:
    collection = f"store-{uuid.uuid4().hex[:12]}"  # the server outlives the test
    _compare(
        lambda index: ChromaStore(chroma_url=chroma_server, collection=collection, index=index),
        _index("fake-text", None),
        aio,
        short=True,
    )


def test_same_digest_for_equal_namespaces() -> None:
    """Ids are stable across processes and versions: a hash of (namespace, key), not Python's hash()."""
    from seal_agent.integrations.store import _item_id

    assert _item_id(("a", "b"), "c") == _item_id(["a", "b"], "c")
    assert _item_id(("a", "b"), "c") != _item_id(("a",), "b/c")
    expected = hashlib.sha256(json.dumps([["a", "b"], "c"]).encode()).hexdigest()[:40]
    assert _item_id(("a", "b"), "c") == expected


# ---------------------------------------------------------------------- the example


def test_store_agent_example_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("store_agent_example", REPO / "examples" / "store_agent.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # dataclasses look their module up there
    spec.loader.exec_module(example)

    replies = example.main(str(tmp_path), embed=TrigramEmbeddings(), dims=128)
    out = capsys.readouterr().out
    assert replies[-1] == "Nothing you have told me about."
    bob_lines = [line for line in out.splitlines() if line.strip().startswith("- ")]
    assert any("peanuts" in line for line in bob_lines)  # Alice's memory is recalled for Alice...
    bob_part = out.split("[bob] recalled for 'Am I allergic to anything?'")[1]
    assert "peanuts" not in bob_part.split("assistant:")[0]  # ...and never for Bob
    assert "[('memories', 'alice'), ('memories', 'bob')]" in out
