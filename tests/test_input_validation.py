"""Issue 22, items 7 and 10 (input): what either journal cannot store faithfully is refused
with our `ValidationError`, the same on SQLite and PostgreSQL, before anything is written;
every accepted metadata key is reached alike by `list(filter=...)` (the journal's SQL) and
`recall(filter=...)` (Chroma's ``where``); errors about huge or deep values stay short.

Real parts: a SQLite file or a real PostgreSQL server (tests/pgcluster.py), and the
embedded Chroma index (only the embedding model is a fake, `HashEmbeddings`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.config import SealConfig
from seal_agent.errors import ValidationError

MAX_TTL_S = 1e10  # seal_agent.memory.records.MAX_TTL_S (a literal, so that this file runs on main too)

EXCHANGE = [{"role": "user", "content": "where is my parcel?"}, {"role": "assistant", "content": "on its way"}]


@pytest.fixture(params=["sqlite", "postgres"])
def mem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SealMemory]:
    """A memory home on a SQLite journal or on a fresh PostgreSQL database."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres").create_database("input")
    cfg = SealConfig().with_overrides(memory={"embed_in_subprocess": False})
    m = SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), config=cfg, model="tiny-random", journal_url=url)
    yield m
    m.close()


def _say(mem: SealMemory, text: str, ns: tuple[str, ...], **kw: Any) -> str:
    return mem.log([{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}], namespace=ns, **kw)


# ------------------------------------------------------------- item 7: NUL in text


NUL_CASES = [
    ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content"),
    ({"messages": EXCHANGE, "namespace": ("users", "al\x00")}, "namespace[1]"),
    ({"messages": EXCHANGE, "thread_id": "t\x00"}, "thread_id"),
    ({"messages": EXCHANGE, "metadata": {"k\x00": 1}}, "metadata key 'k\\x00'"),
    ({"messages": EXCHANGE, "metadata": {"k": "v\x00"}}, "metadata.k"),
    ({"messages": EXCHANGE, "metadata": {"user": {"tags": ["ok", "x\x00"]}}}, "metadata.user.tags[1]"),
]


@pytest.mark.parametrize(("kwargs", "field"), NUL_CASES)
def test_item7_nul_is_refused_alike_on_both_backends_and_nothing_is_written(
    mem: SealMemory, kwargs: dict[str, Any], field: str
) -> None:
    other = _say(mem, "bob's parcel", ("users", "bob"), metadata={"k": "v"})
    with pytest.raises(ValidationError) as err:
        mem.log(**kwargs)
    assert err.value.field == field and "NUL" in str(err.value)
    with pytest.raises(ValidationError) as err:  # an import: the whole batch is refused
        mem.log_many([{"messages": [{"role": "user", "content": "fine"}]}, kwargs])
    assert err.value.field == f"rows[1]: {field}"
    assert mem._journal.count() == 1
    # Every tenant's filtered list still works (a NUL stored in one row's metadata used to
    # make Postgres' jsonb cast fail for every tenant's filtered list).
    assert [i.id for i in mem.list(filter={"k": "v"})] == [other]
    assert [i.id for i in mem.list(namespace=("users", "bob"), filter={"k": {"$ne": "w"}})] == [other]


def test_item7_update_feedback_and_lookups_refuse_nul(mem: SealMemory) -> None:
    id_ = _say(mem, "my parcel", ("users", "al"), metadata={"k": 1})
    calls = [
        (lambda: mem.update(id_, metadata={"k": "\x00"}), "metadata.k"),
        (lambda: mem.update(id_, messages=[{"role": "user", "content": "\x00"}]), "messages[0].content"),
        (lambda: mem.update(id_, feedback=0.5, comment="bad\x00"), "comment"),
        (lambda: mem.feedback(id_, 0.5, "bad\x00"), "comment"),
        (lambda: mem.get("x\x00"), "interaction_id"),  # a raw DataError on Postgres before
        (lambda: mem.forget(ids=["x\x00"]), "ids[0]"),
        (lambda: mem.list(filter={"a\x00b": 1}), "filter"),  # a raw sqlite3.OperationalError before
        (lambda: mem.list(filter={"k": "a\x00"}), "filter.k"),
        (lambda: mem.recall("parcel", namespace=("users", "al"), filter={"a\x00b": 1}), "filter"),
    ]
    for call, field in calls:
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == field, field
    got = mem.get(id_)
    assert got.metadata == {"k": 1} and got.feedback is None and [e.event for e in mem.history(id_)] == ["created"]
    # A query is never stored: NUL in it is no reason to refuse a recall.
    assert [m.id for m in mem.recall("my\x00parcel", namespace=("users", "al"))] == [id_]


# ------------------------------------- items 7 and 10: one addressing of metadata keys


KEY_CASES = [  # (metadata, filter key that reaches the 1)
    ({"a.b.c": 1}, "a\\.b\\.c"),
    ({"a": {"b": {"c": 1}}}, "a.b.c"),
    ({"a.b": {"c": 1}}, "a\\.b.c"),
    ({"a": {"b.c": 1}}, "a.b\\.c"),
    ({"back\\slash": 1}, "back\\\\slash"),
    ({"new\nline": 1}, "new\nline"),
    ({"t\tab": 1}, "t\tab"),
    ({'qu"ote': 1}, 'qu"ote'),
    ({"it's": 1}, "it's"),
    ({"$dollar": 1}, "\\$dollar"),
    ({"": 1}, ""),
    ({"clé": {"ünï": 1}}, "clé.ünï"),
]


def test_items7_10_every_accepted_key_is_found_alike_by_list_and_recall(mem: SealMemory) -> None:
    ids = [_say(mem, f"parcel question {n}", ("keys", str(n)), metadata=md) for n, (md, _) in enumerate(KEY_CASES)]
    # A list index is never a path step (Chroma's flattened metadata leaves lists out;
    # Postgres' `#>` used to index the array), and a literal-dot key never stands in for
    # the nested field or the other way round.
    decoys = [_say(mem, "parcel decoy tags", ("keys", "decoy"), metadata={"tags": [1, 2]}),
              _say(mem, "parcel decoy dotted", ("keys", "decoy"), metadata={"a.b": 1, "x": {"y": 1}})]
    for n, (_, key) in enumerate(KEY_CASES):
        ns = ("keys", str(n))
        for flt, want in (({key: 1}, [ids[n]]), ({key: {"$ne": 1}}, []), ({key: {"$in": [1, 2]}}, [ids[n]]),
                          ({key: {"$gte": 1}}, [ids[n]]), ({key: 2}, [])):
            listed = [i.id for i in mem.list(namespace=ns, filter=flt)]
            recalled = [m.id for m in mem.recall("parcel question", namespace=ns, k=5, filter=flt)]
            assert listed == recalled == want, (key, flt, listed, recalled)
    dns = ("keys", "decoy")
    for flt, want in (({"tags.0": 1}, []), ({"tags.0": {"$ne": 1}}, decoys),
                      ({"a.b": 1}, []), ({"a\\.b": 1}, [decoys[1]]), ({"x\\.y": 1}, []), ({"x.y": 1}, [decoys[1]])):
        listed = [i.id for i in mem.list(namespace=dns, filter=flt)]
        recalled = sorted(m.id for m in mem.recall("parcel decoy", namespace=dns, k=5, filter=flt))
        assert listed == recalled == want, (flt, listed, recalled)


def test_item10_64_bit_integers_compare_exactly_in_list_and_recall(mem: SealMemory) -> None:
    big = 2**53 + 1  # float8 (Postgres' cast before) cannot tell it from 2**53
    ids = [_say(mem, "parcel big", ("ints",), metadata={"n": big}),
           _say(mem, "parcel max", ("ints",), metadata={"n": 2**63 - 1})]
    for flt, want in (({"n": 2**53}, []), ({"n": big}, ids[:1]), ({"n": {"$gt": 2**53}}, ids),
                      ({"n": {"$gte": 2**63 - 1}}, ids[1:]), ({"n": {"$lt": -(2**63)}}, [])):
        listed = [i.id for i in mem.list(namespace=("ints",), filter=flt)]
        recalled = sorted(m.id for m in mem.recall("parcel", namespace=("ints",), k=5, filter=flt))
        assert listed == recalled == sorted(want), (flt, listed, recalled)


def test_item10_bad_filter_keys_are_named() -> None:
    from seal_agent.memory.records import metadata_key_path

    assert metadata_key_path("a.b\\.c\\\\d.\\$e") == ["a", "b.c\\d", "$e"]
    assert metadata_key_path("") == [""] and metadata_key_path("a..b") == ["a", "", "b"]
    for key in ("a\\b", "a\\", "a\\n"):
        with pytest.raises(ValidationError) as err:
            metadata_key_path(key)
        assert err.value.field == "filter" and "escape" in str(err.value)


# ------------------------------------------------------------ item 10: ttl_s range


@pytest.mark.parametrize("bad", [1e12, 10**400, float("inf"), float("nan"), 0, -1, MAX_TTL_S * 1.0001, True, "60"])
def test_item10_ttl_out_of_range_is_refused_and_nothing_written(mem: SealMemory, bad: Any) -> None:
    with pytest.raises(ValidationError) as err:  # 1e12 raised OverflowError, 10**400 too
        mem.log(EXCHANGE, ttl_s=bad)
    assert err.value.field == "ttl_s" and "None (never expires)" in str(err.value)
    with pytest.raises(ValidationError):
        mem.log_many([{"messages": EXCHANGE, "ttl_s": bad}])
    assert mem._journal.count() == 0


def test_item10_longest_ttl_is_accepted(mem: SealMemory) -> None:
    from seal_agent.memory import records

    assert records.MAX_TTL_S == MAX_TTL_S
    id_ = mem.log(EXCHANGE, ttl_s=MAX_TTL_S)
    got = mem.get(id_)
    assert got.expires_at is not None and got.expires_at.year > 2300


# --------------------------------------------- item 10: huge and deep values, short errors


def _deep(levels: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for _ in range(levels):
        cur["a"] = {}
        cur = cur["a"]
    return out


@pytest.mark.parametrize(("metadata", "field", "reason"), [
    (_deep(10_000), "metadata" + ".a" * 64, "deeper than 64"),
    ({"big": 10**5000}, "metadata.big", "-2**63"),
    ({"n": 2**63}, "metadata.n", "-2**63"),
    ({"n": [-(2**63) - 1]}, "metadata.n[0]", "-2**63"),
])
def test_item10_deep_or_huge_metadata_gets_a_short_error(
    mem: SealMemory, metadata: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as err:  # RecursionError / ValueError inside the error's message before
        mem.log(EXCHANGE, metadata=metadata)
    assert err.value.field == field and reason in str(err.value)
    assert len(str(err.value)) < 500
    id_ = mem.log(EXCHANGE, metadata={"ok": 1})
    with pytest.raises(ValidationError) as err:
        mem.update(id_, metadata=metadata)
    assert err.value.field == field and len(str(err.value)) < 500
    assert mem.get(id_).metadata == {"ok": 1}


def test_item10_huge_numbers_elsewhere_are_named(mem: SealMemory) -> None:
    id_ = mem.log(EXCHANGE)
    huge = 10**5000
    calls = [  # each raised OverflowError (math.isfinite / float() of a huge int) before
        (lambda: mem.feedback(id_, huge), "score"),
        (lambda: mem.update(id_, feedback=-huge), "feedback"),
        (lambda: mem.recall("parcel", min_score=huge), "min_score"),
        (lambda: mem.list(filter={"n": huge}), "filter.n"),
        (lambda: mem.list(filter={"n": {"$in": [1, huge]}}), "filter.n.$in"),
        (lambda: mem.list(limit=huge), "limit"),  # a raw OverflowError / "bigint out of range" before
        (lambda: mem.log([{"role": "assistant", "content": "",
                           "tool_calls": [{"name": "f", "args": {"x": huge}, "id": "c"}]}]),
         "messages[0].tool_calls[0].args.x"),
    ]
    for call, field in calls:
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == field and "<int of about 5001 digits>" in str(err.value), field
        assert len(str(err.value)) < 300
    assert mem.get(id_).feedback is None and mem._journal.count() == 1


def test_error_messages_are_bounded_whatever_the_value() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    for value in (_deep(10_000), [_deep(5_000)], 10**5000, -(10**5000), "x" * 1_000_000, Broken(), [Broken()]):
        text = str(ValidationError("f" * 10_000, value, "why"))
        assert len(text) < 400 and text.endswith(": why")
    assert str(ValidationError("score", float("nan"), "r")) == "score=nan: r"
    assert math.isnan(ValidationError("score", float("nan"), "r").value)


# ------------------------------------------------------------------- ChromaStore.put


def test_store_put_names_unstorable_keys_and_values(tmp_path: Path) -> None:
    from seal_agent.integrations.store import ChromaStore

    store = ChromaStore(home=tmp_path)
    store.put(("docs",), "ok", {"text": "fine"})
    for key, value, field in (("k\ud800", {"a": 1}, "key"), ("k\x00", {"a": 1}, "key"),
                              ("deep", _deep(10_000), "value"), ("big", {"n": 10**5000}, "value"),
                              ("sur", {"t": "\ud800"}, "value")):
        with pytest.raises(ValidationError) as err:  # UnicodeEncodeError / RecursionError / ValueError before
            store.put(("docs",), key, value)
        assert err.value.field == field and len(str(err.value)) < 400
    assert [item.key for item in store.search(("docs",))] == ["ok"]
