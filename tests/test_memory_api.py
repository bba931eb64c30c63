"""The memory API peers have: update + history, metadata filters, TTL (real journal, real Chroma)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.config import SealConfig
from seal_agent.errors import ConfigError, NotFoundError, ValidationError

NS = ("users", "ana")


def _mem(home: Path, **memory: Any) -> SealMemory:
    cfg = SealConfig().with_overrides(memory={"embed_in_subprocess": False, **memory})
    return SealMemory(home, embeddings=HashEmbeddings(), config=cfg, model="tiny-random")


def _say(mem: SealMemory, text: str, ns: tuple[str, ...] = NS, **kw: Any) -> str:
    return mem.log([{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}], namespace=ns, **kw)


ROWS = {  # name -> metadata
    "a": {"topic": "billing", "prio": 3, "vip": True, "user": {"tier": "gold"}},
    "b": {"topic": "shipping", "prio": 1, "vip": False, "user": {"tier": "basic"}},
    "c": {"topic": "billing", "prio": 2},
    "d": {},
}


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Any:
    mem = _mem(tmp_path_factory.mktemp("filters") / "home")
    ids = {name: _say(mem, f"question {name} about an order", metadata=md) for name, md in ROWS.items()}
    _say(mem, "question elsewhere about an order", ns=("users", "bob"), metadata={"topic": "billing"})
    yield mem, ids
    mem.close()


@pytest.mark.parametrize(("flt", "expected"), [
    ({"topic": "billing"}, "ac"),
    ({"topic": {"$eq": "shipping"}}, "b"),
    ({"topic": {"$ne": "billing"}}, "bd"),  # Chroma's meaning: a row without the key matches $ne
    ({"prio": {"$gt": 2}}, "a"),
    ({"prio": {"$gte": 2}}, "ac"),
    ({"prio": {"$lt": 2}}, "b"),
    ({"prio": {"$lte": 2}}, "bc"),
    ({"topic": {"$in": ["shipping", "returns"]}}, "b"),
    ({"topic": {"$nin": ["billing"]}}, "bd"),
    ({"vip": True}, "a"),
    ({"user.tier": "gold"}, "a"),
    ({"topic": "billing", "prio": {"$lt": 3}}, "c"),
    ({"$and": [{"topic": "billing"}, {"prio": {"$gte": 3}}]}, "a"),
    ({"$or": [{"topic": "shipping"}, {"prio": 2}]}, "bc"),
])
def test_filters_match_in_recall_and_list(filtered: Any, flt: dict[str, Any], expected: str) -> None:
    mem, ids = filtered
    want = sorted(ids[n] for n in expected)
    assert sorted(m.id for m in mem.recall("question about an order", namespace=NS, k=10, filter=flt)) == want
    assert sorted(i.id for i in mem.list(namespace=NS, filter=flt)) == want


@pytest.mark.parametrize(("flt", "field"), [
    ({}, "filter"),
    ({"prio": {"$regex": "x"}}, "filter.prio"),
    ({"prio": {"$gt": 1, "$lt": 3}}, "filter.prio"),
    ({"topic": ["a"]}, "filter.topic"),
    ({"topic": {"$in": []}}, "filter.topic.$in"),
    ({"$or": []}, "filter.$or"),
    ({"$x": 1}, "filter"),
    ({"prio": float("nan")}, "filter.prio"),
])
def test_bad_filters_are_named(filtered: Any, flt: dict[str, Any], field: str) -> None:
    mem, _ = filtered
    for call in (lambda: mem.recall("q", namespace=NS, filter=flt), lambda: mem.list(filter=flt)):
        with pytest.raises(ValidationError) as caught:
            call()
        assert caught.value.field == field


def test_update_reembeds_keeps_history_and_refilters(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        i = _say(mem, "My cat is called Pim", metadata={"topic": "pets", "old": 1})
        assert [m.id for m in mem.recall("cat Pim", namespace=NS)] == [i]
        it = mem.update(i, messages=[{"role": "user", "content": "My turtle is called Zed"},
                                     {"role": "assistant", "content": "ok"}],
                        metadata={"topic": "reptiles"}, feedback=0.5, comment="fixed")
        assert it.task == "My turtle is called Zed" and it.feedback == 0.5 and it.metadata == {"topic": "reptiles"}
        hit = mem.recall("turtle Zed", namespace=NS)[0]
        assert hit.id == i and "turtle" in hit.text and "Pim" not in hit.text
        assert [m.id for m in mem.recall("x", namespace=NS, filter={"topic": "reptiles"})] == [i]
        assert mem.recall("x", namespace=NS, filter={"topic": "pets"}) == []
        assert mem.recall("x", namespace=NS, filter={"old": 1}) == []  # a removed key no longer matches
        hist = mem.history(i)
        assert [e.event for e in hist] == ["created", "updated"]
        assert hist[0].data["messages"][0]["content"] == "My cat is called Pim"
        assert hist[1].data["messages"][0]["content"] == "My turtle is called Zed"
        assert hist[1].data["feedback_comment"] == "fixed" and hist[0].at <= hist[1].at
        mem.feedback(i, -1.0)
        mem.log([{"role": "user", "content": "My turtle is called Zed"}, {"role": "assistant", "content": "ok"}],
                namespace=NS, metadata={"more": True})  # a duplicate merges: a version too
        assert [e.event for e in mem.history(i)] == ["created", "updated", "updated", "updated"]
        assert mem.history(i)[-1].data["metadata"] == {"topic": "reptiles", "more": True}
        mem.forget(ids=[i])
        assert [e.event for e in mem.history(i)] == ["created", "updated", "updated", "updated", "forgotten"]
        assert all(not e.data for e in mem.history(i))  # forget reaches the history
        assert mem.history("f" * 24) == []
        with pytest.raises(NotFoundError):
            mem.update(i, metadata={})


def test_update_refuses_a_duplicate_and_bad_values(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        a, b = _say(mem, "one"), _say(mem, "two")
        with pytest.raises(ValidationError, match="identical"):
            mem.update(b, messages=[{"role": "user", "content": "one"}, {"role": "assistant", "content": "ok"}])
        with pytest.raises(ValidationError) as caught:
            mem.update(a, feedback=3)
        assert caught.value.field == "feedback"
        with pytest.raises(ValidationError) as caught:
            mem.update(a, metadata={"x": float("inf")})
        assert caught.value.field == "metadata.x"
        assert [e.event for e in mem.history(b)] == ["created"]
        assert asyncio.run(mem.aupdate(a, feedback=None)).feedback is None
        assert [e.event for e in asyncio.run(mem.ahistory(a))] == ["created", "updated"]


def test_ttl_per_interaction_and_per_namespace(tmp_path: Path) -> None:
    with _mem(tmp_path / "home", ttl_s=0.0, ttl_namespaces={"users": 3600, "users/tmp": 0.5}) as mem:
        short = _say(mem, "short lived", ttl_s=0.5)
        tmp = _say(mem, "namespace default", ns=("users", "tmp", "x"))
        longer = _say(mem, "an hour")
        forever = _say(mem, "forever", ns=("other",))
        assert mem.get(longer).expires_at is not None and mem.get(forever).expires_at is None
        time.sleep(0.7)
        # expired rows are never returned, before any sweep
        for i in (short, tmp):
            with pytest.raises(NotFoundError):
                mem.get(i)
        assert [i.id for i in mem.list()] == [longer, forever]
        assert [m.id for m in mem.recall("short lived", namespace=NS, k=5)] == [longer]
        with pytest.raises(NotFoundError):
            mem.feedback(short, 1.0)
        assert mem.expire() == 2
        assert [e.event for e in mem.history(short)] == ["created", "expired", "forgotten"]
        mem.flush()
        assert not {short, tmp} & mem._index.all_ids()  # gone from Chroma, through forget
        assert mem.expire() == 0
        with pytest.raises(ValidationError) as caught:
            _say(mem, "x", ttl_s=-1)
        assert caught.value.field == "ttl_s"


def test_ttl_sweep_runs_in_the_background(tmp_path: Path) -> None:
    with _mem(tmp_path / "home", ttl_sweep_s=0.2) as mem:
        i = _say(mem, "gone soon", ttl_s=0.1)
        deadline = time.monotonic() + 30
        while mem._journal.expired() or mem._journal.forgotten_ids() != {i}:
            assert time.monotonic() < deadline, "the sweep never forgot the expired interaction"
            time.sleep(0.05)
        assert [e.event for e in mem.history(i)][-1] == "forgotten"


def test_ttl_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = SealConfig().with_overrides(memory={"ttl_s": 86400, "ttl_namespaces": {"users/tmp": 60.0, 'a"b': 1},
                                              "facts": True})
    assert SealConfig.load(cfg.save(tmp_path)) == cfg


def test_ttl_config_is_validated() -> None:
    for memory, field in (({"ttl_s": -1}, "memory.ttl_s"), ({"ttl_namespaces": {"": 5}}, "memory.ttl_namespaces"),
                          ({"ttl_namespaces": {"a": -5}}, "memory.ttl_namespaces.a"),
                          ({"ttl_sweep_s": 0}, "memory.ttl_sweep_s"),
                          ({"facts_collection": "seal_interactions"}, "memory.facts_collection")):
        with pytest.raises(ConfigError) as caught:
            SealConfig().with_overrides(memory=memory)
        assert caught.value.field == field


# ------------------------------------------------------------- TTL: issue 22, items 5 and 6


@pytest.fixture(params=["sqlite", "postgres"])
def journal_url(request: pytest.FixtureRequest) -> str | None:
    """None: the home's SQLite journal; else a fresh database of the real Postgres cluster."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres").create_database("ttl")


def _no_sweep_mem(home: Path, journal_url: str | None) -> SealMemory:
    """A memory whose background sweep never runs during the test: the test sweeps."""
    cfg = SealConfig().with_overrides(memory={"embed_in_subprocess": False, "ttl_sweep_s": 86_400.0})
    return SealMemory(home, embeddings=HashEmbeddings(), config=cfg, model="tiny-random", journal_url=journal_url)


def _wait_expired(mem: SealMemory, id_: str) -> None:
    deadline = time.monotonic() + 120
    while True:  # until reads say it expired: progress, not a fixed sleep
        try:
            mem.get(id_)
        except NotFoundError:
            return
        assert time.monotonic() < deadline, f"{id_} never expired"
        time.sleep(0.05)


def test_relog_after_expiry_is_a_live_record_everywhere(tmp_path: Path, journal_url: str | None) -> None:
    """Item 5: re-logging an expired exchange returns a new, live id that get, list and
    recall see, before and after the sweep (which forgets only the expired copy, in the
    journal and in Chroma); the same through log_many."""
    with _no_sweep_mem(tmp_path / "home", journal_url) as mem:
        old = _say(mem, "my locker code is 4711", metadata={"v": 1}, ttl_s=0.5)
        mem.flush()
        _wait_expired(mem, old)
        new = _say(mem, "my locker code is 4711", metadata={"v": 2})
        assert new != old
        for swept in (False, True):
            got = mem.get(new)
            assert got.expires_at is None and got.metadata == {"v": 2}
            assert [i.id for i in mem.list(namespace=NS)] == [new]
            assert [m.id for m in mem.recall("my locker code", namespace=NS, k=5)] == [new]
            if not swept:
                assert mem.expire() == 1
        mem.flush()
        assert old not in mem._index.all_ids() and new in mem._index.all_ids()
        assert [e.event for e in mem.history(old)] == ["created", "expired", "forgotten"]
        assert [e.event for e in mem.history(new)] == ["created"]
        assert mem.history(new)[0].data["metadata"] == {"v": 2}

        msgs = [{"role": "user", "content": "my bike is red"}, {"role": "assistant", "content": "ok"}]
        [(first, _)] = mem.log_many([{"messages": msgs, "namespace": NS, "ttl_s": 0.5}])
        _wait_expired(mem, first)
        [(second, inserted)] = mem.log_many([{"messages": msgs, "namespace": NS}])
        assert inserted and second != first and mem.get(second).expires_at is None
        assert mem.expire() == 1 and {i.id for i in mem.list(namespace=NS)} == {new, second}


def test_relog_of_a_live_exchange_outlives_the_first_ttl(tmp_path: Path, journal_url: str | None) -> None:
    """Item 5's other half: a second log without a TTL, while the first copy (with one)
    is live, is merged into it -- and is not lost when the first copy's TTL ends."""
    with _no_sweep_mem(tmp_path / "home", journal_url) as mem:
        first = _say(mem, "my cat is Tom", ttl_s=3600)
        assert _say(mem, "my cat is Tom") == first
        assert mem.get(first).expires_at is None and not mem._journal.expired()


def test_history_never_returns_expired_content(tmp_path: Path, journal_url: str | None) -> None:
    """Item 6: once expired, an interaction's history shows its versions without content
    and an ``expired`` event, before the sweep runs; after it, what the sweep leaves."""
    with _no_sweep_mem(tmp_path / "home", journal_url) as mem:
        i = _say(mem, "my PIN is 4711", metadata={"pin": "4711"}, ttl_s=0.5)
        _wait_expired(mem, i)
        events = mem.history(i)
        assert events[0].event == "created" and events[-1].event == "expired"
        # the data only: ids are hex and may hold "4711"
        assert all(e.data == {} for e in events) and "4711" not in repr([(e.event, e.data) for e in events])
        assert mem.expire() == 1
        events = mem.history(i)
        assert [e.event for e in events][-2:] == ["expired", "forgotten"]
        assert "4711" not in repr([(e.event, e.data) for e in events])
