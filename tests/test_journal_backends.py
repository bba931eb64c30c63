"""The journal's contract, run against both backends: SQLite (a file) and PostgreSQL (a real
server on loopback, the `postgres` fixture). Same calls, same answers."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from seal_agent.errors import BackendUnavailableError, ValidationError
from seal_agent.memory.journal_base import JournalBackend, open_journal, validate_journal_url
from seal_agent.memory.records import (
    Interaction,
    InteractionStatus,
    content_hash,
    new_interaction_id,
    normalize_messages,
    utc_now,
    validate_filter,
)


def make(text: str, ns: tuple[str, ...] = ("default",), thread: str | None = None, *,
         metadata: dict[str, Any] | None = None, feedback: float | None = None,
         expires_in: float | None = None) -> Interaction:
    msgs = normalize_messages([{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
                              max_messages=5, max_message_chars=1000)
    return Interaction(id=new_interaction_id(), namespace=ns, thread_id=thread, created_at=utc_now(),
                       messages=tuple(msgs), task=text, outcome="ok", content_hash=content_hash(msgs),
                       metadata=metadata or {}, feedback=feedback,
                       expires_at=None if expires_in is None else utc_now() + timedelta(seconds=expires_in))


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What `open_journal` is given: a file path, or the URL of a fresh database."""
    if request.param == "sqlite":
        return str(tmp_path / "journal.sqlite3")
    return request.getfixturevalue("postgres").create_database("journal")


@pytest.fixture
def journal(target: str) -> Iterator[JournalBackend]:
    j = open_journal(target)
    yield j
    j.close()


def test_backend_is_chosen_by_url(journal: JournalBackend, target: str) -> None:
    assert isinstance(journal, JournalBackend)
    assert type(journal).__name__ == ("PostgresJournal" if target.startswith("postgresql") else "Journal")


def test_insert_dedup_merges_metadata_and_feedback(journal: JournalBackend) -> None:
    first = make("my dog is Rex", thread="t", metadata={"channel": "web", "rating": 1})
    assert journal.insert(first) == (first.id, True)
    again = make("my dog is Rex", thread="t", metadata={"rating": 2}, feedback=0.5)
    assert journal.insert(again) == (first.id, False)
    other_thread = make("my dog is Rex", thread="u")
    assert journal.insert(other_thread)[1]
    got = journal.get(first.id)
    assert got is not None and got.metadata == {"channel": "web", "rating": 2} and got.feedback == 0.5
    assert journal.count() == 2
    assert [e.event for e in journal.history(first.id)] == ["created", "updated"]


def test_insert_many_dedups_within_the_batch(journal: JournalBackend) -> None:
    a, b, a2 = make("one"), make("two"), make("one", metadata={"k": 1})
    out = journal.insert_many([a, b, a2])
    assert out == [(a.id, True), (b.id, True), (a.id, False)]
    assert journal.get(a.id).metadata == {"k": 1}


def test_concurrent_writers_store_a_duplicate_once(journal: JournalBackend, target: str) -> None:
    """Eight threads, each with its own journal object (as separate processes would be),
    log the same 20 exchanges: 20 rows, every call answered with the stored id."""
    answers: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        j = open_journal(target)
        try:
            for i in range(20):
                it = make(f"shared {i}")
                answers.append((f"shared {i}", j.insert(it)[0]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            j.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert journal.count() == 20
    by_text: dict[str, set[str]] = {}
    for text, id_ in answers:
        by_text.setdefault(text, set()).add(id_)
    assert all(len(ids) == 1 for ids in by_text.values())
    assert {i for ids in by_text.values() for i in ids} == {it.id for it in journal.list()}


def test_status_transitions_and_requeue(journal: JournalBackend) -> None:
    a, b = make("a"), make("b")
    journal.insert_many([a, b])
    assert journal.set_status([a.id, b.id], InteractionStatus.CONSOLIDATED, "v0001") == 2
    assert {it.id for it in journal.list(status=InteractionStatus.CONSOLIDATED)} == {a.id, b.id}
    assert journal.get(a.id).consolidated_version == "v0001"
    assert journal.requeue([a.id]) == 1
    assert journal.get(a.id).status == InteractionStatus.NEW and journal.get(a.id).consolidated_version is None
    assert journal.counts() == {"default": {"new": 1, "consolidated": 1}}


def test_forget_records_ids_and_empties_history(journal: JournalBackend) -> None:
    a, b, c = make("a", ("users", "al")), make("b", ("users", "al")), make("c", ("users", "bo"))
    journal.insert_many([a, b, c])
    journal.mark_indexed([a.id, b.id, c.id])
    assert sorted(journal.forget(namespace=("users", "al"), ids=None)) == sorted([a.id, b.id])
    assert journal.get(a.id) is None and journal.get(c.id) is not None
    assert journal.forgotten_ids() == {a.id, b.id} and journal.has_forgotten()
    assert sorted(journal.pending_deletes(10)) == sorted([a.id, b.id])
    assert journal.forgotten_among([a.id, c.id]) == [a.id]
    hist = journal.history(a.id)
    assert [e.event for e in hist] == ["created", "forgotten"] and all(e.data == {} for e in hist)
    assert journal.backlog() == 2
    journal.mark_deleted([a.id, b.id])
    assert journal.pending_deletes(10) == [] and journal.backlog() == 0
    assert journal.forget(namespace=None, ids=[c.id]) == [c.id]
    assert journal.count() == 0 and not journal.is_empty()  # the forgotten ids stay


def test_indexing_queue_is_fair_between_namespaces(journal: JournalBackend) -> None:
    bulk = [make(f"bulk {i}", ("tenants", "big")) for i in range(30)]
    journal.insert_many(bulk)
    lone = make("lone", ("tenants", "small"))
    journal.insert(lone)
    batch = journal.unindexed(8)
    assert lone.id in {it.id for it in batch} and len(batch) == 8
    assert journal.unindexed_in(("tenants",), include_descendants=True) == 31
    assert journal.unindexed_in(("tenants", "small")) == 1
    assert [it.id for it in journal.unindexed_rows_in(("tenants", "big"), limit=2)] == [bulk[-1].id, bulk[-2].id]
    journal.mark_indexed([it.id for it in batch])
    assert journal.backlog() == 23
    assert {it.id for it in journal.unindexed(100, exclude=[bulk[-1].id])} == \
        {it.id for it in bulk[7:-1]}
    assert journal.indexed_ids() == {it.id for it in batch}


def test_backlog_and_queue_up_to_a_watermark(journal: JournalBackend) -> None:
    """Review finding 3: `flush` waits for the rows logged before it (ids up to a
    watermark), not for rows other threads log meanwhile."""
    early = [make(f"early {i}", ("t", str(i % 2))) for i in range(3)]
    journal.insert_many(early)
    journal.forget(namespace=None, ids=[early[2].id])  # a pending Chroma delete, before the mark
    mark = new_interaction_id()
    late = make("late", ("t", "0"))
    journal.insert(late)
    assert journal.backlog() == 4 and journal.backlog(mark) == 3
    assert {it.id for it in journal.unindexed(10, up_to_id=mark)} == {early[0].id, early[1].id}
    assert [it.id for it in journal.unindexed(10, exclude=[early[0].id], up_to_id=mark)] == [early[1].id]
    journal.mark_indexed([early[0].id, early[1].id])
    journal.mark_deleted([early[2].id])
    assert journal.backlog(mark) == 0 and journal.backlog() == 1


def test_indexed_ids_in_one_namespace_or_below(journal: JournalBackend) -> None:
    """Review finding 2: recall's check against Chroma reads ids, never rows (the
    namespace's marked-indexed ids and their namespaces; a sibling whose name extends
    the prefix is not below it)."""
    a, b = make("a", ("t", "x")), make("b", ("t", "x", "deep"))
    c, d = make("c", ("t", "xy")), make("d", ("t", "x"))
    journal.insert_many([a, b, c, d])
    journal.mark_indexed([a.id, b.id, c.id])  # d stays queued
    assert journal.indexed_ids_in(("t", "x")) == {a.id: ("t", "x")}
    assert journal.indexed_ids_in(("t", "x"), include_descendants=True) == {a.id: ("t", "x"),
                                                                           b.id: ("t", "x", "deep")}
    assert journal.indexed_ids_in(("nobody",)) == {}


def test_update_feedback_and_duplicate_update(journal: JournalBackend) -> None:
    a, b = make("a"), make("b")
    journal.insert_many([a, b])
    assert journal.set_feedback(a.id, 0.25, "meh")
    assert journal.update(a.id, metadata={"x": 1})
    assert journal.get(a.id).metadata == {"x": 1} and journal.get(a.id).feedback == 0.25
    with pytest.raises(sqlite3.IntegrityError):  # SealMemory turns it into a ValidationError
        journal.update(b.id, messages=list(a.messages), task=a.task, outcome=a.outcome,
                       content_hash=a.content_hash)
    assert not journal.set_feedback("nope", 0.1, None) and not journal.update("nope", metadata={})


def test_list_filters_and_expiry(journal: JournalBackend) -> None:
    a = make("a", metadata={"topic": "billing", "n": 3, "ok": True})
    b = make("b", metadata={"topic": "support", "n": 10})
    c = make("c", metadata={})
    d = make("d", expires_in=-1)  # already expired
    journal.insert_many([a, b, c, d])

    def ids(flt: dict[str, Any]) -> set[str]:
        return {it.id for it in journal.list(filter=validate_filter(flt))}

    assert ids({"topic": "billing"}) == {a.id}
    assert ids({"topic": {"$ne": "billing"}}) == {b.id, c.id}
    assert ids({"n": {"$gte": 3}}) == {a.id, b.id}
    assert ids({"topic": {"$in": ["billing", "support"]}}) == {a.id, b.id}
    assert ids({"topic": {"$nin": ["billing"]}}) == {b.id, c.id}
    assert ids({"$or": [{"n": {"$gt": 5}}, {"ok": True}]}) == {a.id, b.id}
    assert journal.get(d.id) is None and d.id not in {it.id for it in journal.list()}
    assert journal.expired() == [d.id]
    journal.note_expired([d.id])
    assert journal.forget(namespace=None, ids=[d.id], event="expired") == [d.id]
    assert [e.event for e in journal.history(d.id)][-1] == "expired"
    assert [it.id for it in journal.list(limit=2)] == [a.id, b.id]


def test_revision_changes_on_every_write_by_anyone(journal: JournalBackend, target: str) -> None:
    seen = [journal.revision()]

    def changed() -> bool:
        seen.append(journal.revision())
        return seen[-1] != seen[-2]

    assert not changed()
    a = make("a")
    journal.insert(a)
    assert changed()
    other = open_journal(target)
    try:
        other.insert(make("from elsewhere"))
    finally:
        other.close()
    assert changed()
    journal.forget(namespace=None, ids=[a.id])
    assert changed()
    assert not changed()


def test_read_only_journal_refuses_writes(journal: JournalBackend, target: str) -> None:
    journal.insert(make("a"))
    ro = open_journal(target, read_only=True)
    try:
        assert ro.count() == 1
        with pytest.raises(Exception) as err:
            ro.insert(make("b"))
        assert "read-only" in str(err.value)
    finally:
        ro.close()


def test_journal_url_validation() -> None:
    assert validate_journal_url(None) is None
    for bad in ["journal.sqlite3", "mysql://x/y", 5, "postgresql:///db"]:
        with pytest.raises(ValidationError) as err:
            validate_journal_url(bad)
        assert err.value.field == "journal_url"
    with pytest.raises(ValidationError) as err:
        validate_journal_url("mysql://al:secret@h/db")
    assert "secret" not in str(err.value)


def test_unreachable_postgres_is_named_and_nothing_acknowledged() -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailableError) as err:
        open_journal(f"postgresql://al:secret@127.0.0.1:{port}/seal")
    assert f"127.0.0.1:{port}/seal" in str(err.value) and "secret" not in str(err.value)


def test_facts_live_in_the_journals_database(journal: JournalBackend) -> None:
    """The facts' SQL (SQLite dialect) runs on both backends: add, supersede, list,
    history, and forget of a source deletes its facts in the same transaction."""
    from fakes import HashEmbeddings

    from seal_agent.memory.facts import FactStore, fact_key
    from seal_agent.memory.index import ChromaIndex

    a, b = make("my favourite colour is green"), make("actually my favourite colour is blue")
    journal.insert_many([a, b])
    store = FactStore(journal, ChromaIndex(lambda: None, "unused_facts", HashEmbeddings()))  # type: ignore[arg-type]
    green, blue = "My favourite colour is green.", "My favourite colour is blue."
    [g] = store.add([(("default",), green, fact_key(green)[0], a.id)])
    [bl] = store.add([(("default",), blue, fact_key(blue)[0], b.id)])
    assert [f.text for f in store.list()] == [blue]  # the newer answer supersedes the older
    assert {f.id: f.status for f in store.list(include_superseded=True)} == {g: "superseded", bl: "active"}
    assert [e.event for e in store.history(g)][:2] == ["created", "created"]
    journal.forget(namespace=None, ids=[b.id])
    assert store.get(bl) is None and [f.id for f in store.list(include_superseded=True)] == [g]


def test_postgres_checkpoints_are_found_and_deleted_by_content(postgres: Any, tmp_path: Path) -> None:
    """What forget needs from the Postgres checkpointer: the threads whose state holds a
    text, and their deletion (`seal_agent.coordination`)."""
    from types import SimpleNamespace
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    from seal_agent.coordination import checkpoint_threads_matching, checkpointer, delete_checkpoint_threads

    class State(TypedDict):
        text: str

    url = postgres.create_database("ckpt")
    saver = checkpointer(SimpleNamespace(journal_url=url, home=tmp_path), tmp_path / "unused.sqlite3")
    g = StateGraph(State)
    g.add_node("echo", lambda s: {"text": s["text"] + " (seen)"})
    g.add_edge(START, "echo")
    g.add_edge("echo", END)
    graph = g.compile(checkpointer=saver)
    graph.invoke({"text": "the code is 4711-secret"}, {"configurable": {"thread_id": "run-a"}})
    graph.invoke({"text": "nothing to hide"}, {"configurable": {"thread_id": "run-b"}})
    assert not (tmp_path / "unused.sqlite3").exists()
    assert checkpoint_threads_matching(url, lambda b: b"4711-secret" in b) == {"run-a"}
    assert checkpoint_threads_matching(url, lambda b: b"4711-secret" in b, only="run-b") == set()
    assert delete_checkpoint_threads(url, {"run-a"}) == 1
    assert checkpoint_threads_matching(url, lambda b: b"4711-secret" in b) == set()
    assert graph.get_state({"configurable": {"thread_id": "run-a"}}).values == {}
    assert graph.get_state({"configurable": {"thread_id": "run-b"}}).values["text"] == "nothing to hide (seen)"
    saver.conn.close()


def test_a_failing_batch_writes_nothing(journal: JournalBackend) -> None:
    """insert_many is one transaction: a clashing id in row 2 leaves row 1 unwritten, and
    the error is `sqlite3.IntegrityError` on both backends."""
    import dataclasses

    ok = make("one")
    clash = dataclasses.replace(make("two"), id=ok.id)
    with pytest.raises(sqlite3.IntegrityError):
        journal.insert_many([ok, clash])
    assert journal.count() == 0
    assert journal.insert(ok) == (ok.id, True)  # the connection is usable after the rollback


def test_corrections_supersede_by_meaning_on_both_backends(journal: JournalBackend) -> None:
    """The boat case of issue 20: a pronoun for the same owner supersedes; a refinement,
    another owner and a description do not; facts keyed the old way are rekeyed at open
    and superseded by meaning afterwards; history follows the chain."""
    from fakes import HashEmbeddings

    from seal_agent.memory.facts import FactStore, fact_key, statement_key
    from seal_agent.memory.index import ChromaIndex

    texts = ["My brother's sailboat is called the Tumbleweed.", "The Tumbleweed is my brother's sailboat.",
             "My sailboat is called the Marlin.", "The Saltpetal is my brother's sailboat.",
             "The Saltpetal is a sailboat.", "His sailboat is called the Saltpetal."]
    its = [make(t) for t in texts]
    journal.insert_many(its)
    # a home whose facts were keyed by sentence prefix (key format 1), then reopened
    old = FactStore(journal, ChromaIndex(lambda: None, "unused_facts", HashEmbeddings()))  # type: ignore[arg-type]
    with journal._tx() as db:
        db.execute("DELETE FROM facts_meta")
    [tumble] = old.add([(("default",), texts[0], fact_key(texts[0])[0], its[0].id)])
    store = FactStore(journal, ChromaIndex(lambda: None, "unused_facts", HashEmbeddings()))  # type: ignore[arg-type]
    assert store.get(tumble).key == statement_key(texts[0]) == "sailboat | identity"
    ids = [tumble] + [store.add([(("default",), t, statement_key(t), it.id)])[0]
                      for t, it in zip(texts[1:], its[1:], strict=True)]
    status = {f.text: f.status for f in store.list(include_superseded=True)}
    assert status == {texts[0]: "superseded", texts[1]: "superseded",  # the Saltpetal replaced both
                      texts[2]: "active",  # my sailboat is not my brother's
                      texts[3]: "active",  # "his sailboat ... the Saltpetal" agrees with it: both stay
                      texts[4]: "active",  # "a sailboat" describes, it names nothing
                      texts[5]: "active"}
    chain = {e.id for e in store.history(ids[3])}
    assert {ids[0], ids[1], ids[3]} <= chain and ids[2] not in chain and ids[4] not in chain


# ------------------------------------------------------------- TTL: re-log after expiry (issue 22, item 5)


def test_relog_of_an_expired_exchange_is_a_new_live_row(journal: JournalBackend) -> None:
    """Dedup never answers with an expired row: the re-log is a new row (new id) that
    get, list and the indexing queue see, and the sweep's forget of the expired row
    leaves it alone. Nothing of the expired copy is merged into it."""
    old = make("the locker code is 4711", thread="t", metadata={"old": 1}, feedback=-1.0, expires_in=-1)
    assert journal.insert(old) == (old.id, True)
    again = make("the locker code is 4711", thread="t", metadata={"new": 2})
    new_id, inserted = journal.insert(again)
    assert inserted and new_id == again.id != old.id
    got = journal.get(new_id)
    assert got is not None and got.metadata == {"new": 2} and got.feedback is None and got.expires_at is None
    assert [it.id for it in journal.list()] == [new_id]
    assert new_id in {it.id for it in journal.unindexed(10)}  # queued for Chroma: recallable
    assert journal.expired() == [old.id]
    journal.note_expired([old.id])  # what the sweep does
    assert journal.forget(namespace=None, ids=journal.expired()) == [old.id]
    assert journal.get(new_id) is not None and journal.expired() == []
    assert journal.insert(make("the locker code is 4711", thread="t")) == (new_id, False)  # live: merged
    assert [e.event for e in journal.history(new_id)] == ["created"]


def test_insert_many_relogs_an_expired_exchange_once(journal: JournalBackend) -> None:
    x = make("x", expires_in=-1)
    journal.insert(x)
    x2, x3 = make("x", metadata={"k": 1}), make("x", metadata={"k": 2})
    assert journal.insert_many([x2, x3]) == [(x2.id, True), (x2.id, False)]
    assert journal.get(x2.id).metadata == {"k": 2} and journal.expired() == [x.id]


def test_relog_of_a_live_exchange_keeps_the_longest_expiry(journal: JournalBackend) -> None:
    """An acknowledged log is not lost when an earlier copy's TTL ends: the stored row
    lives as long as its longest-lived log asks (no TTL: for ever)."""
    a = make("a", expires_in=3600)
    journal.insert(a)
    first = journal.get(a.id).expires_at
    assert journal.insert(make("a", expires_in=60)) == (a.id, False)
    assert journal.get(a.id).expires_at == first  # a shorter TTL does not shorten it
    assert journal.insert(make("a", expires_in=7200)) == (a.id, False)
    assert journal.get(a.id).expires_at > first
    assert journal.insert(make("a")) == (a.id, False)
    assert journal.get(a.id).expires_at is None
    assert journal.insert(make("a", expires_in=60)) == (a.id, False)
    assert journal.get(a.id).expires_at is None
    history = journal.history(a.id)
    assert [e.event for e in history] == ["created", "updated", "updated"]
    assert history[-1].data["expires_at"] is None


def test_update_to_the_messages_of_an_expired_row(journal: JournalBackend) -> None:
    """An expired row does not block an update to its messages (it is retired), while a
    live one still does."""
    old, b, live = make("same", expires_in=-1), make("other"), make("live one")
    journal.insert_many([old, b, live])
    assert journal.update(b.id, messages=list(old.messages), task=old.task, outcome=old.outcome,
                          content_hash=old.content_hash)
    assert journal.get(b.id).task == "same" and journal.expired() == [old.id]
    with pytest.raises(sqlite3.IntegrityError):
        journal.update(b.id, messages=list(live.messages), task=live.task, outcome=live.outcome,
                       content_hash=live.content_hash)


def test_concurrent_relogs_of_expired_exchanges_store_each_once(journal: JournalBackend, target: str) -> None:
    """Eight writers (own journal objects, as separate processes) re-log 20 expired
    exchanges at once: each gets exactly one new live row, every call its id."""
    expired = [make(f"shared {i}", expires_in=-1) for i in range(20)]
    journal.insert_many(expired)
    answers: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        j = open_journal(target)
        try:
            for i in range(20):
                answers.append((f"shared {i}", j.insert(make(f"shared {i}"))[0]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            j.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    live = {it.id for it in journal.list()}
    assert len(live) == 20 and not live & {it.id for it in expired}
    by_text: dict[str, set[str]] = {}
    for text, id_ in answers:
        by_text.setdefault(text, set()).add(id_)
    assert all(len(ids) == 1 for ids in by_text.values()) and {i for s in by_text.values() for i in s} == live
    assert sorted(journal.expired()) == sorted(it.id for it in expired)


# ------------------------------------------------------------- TTL: expired content is never served (item 6)


def test_history_of_an_expired_interaction_has_no_content(journal: JournalBackend) -> None:
    """Before the sweep, an expired interaction's history is what the sweep will leave:
    its versions without content, ending with ``expired``; a live one keeps its content."""
    old = make("my PIN is 4711", metadata={"pin": "4711"}, expires_in=-1)
    live = make("my PIN is public")
    journal.insert_many([old, live])
    events = journal.history(old.id)
    assert [e.event for e in events] == ["created", "expired"] and all(e.data == {} for e in events)
    assert "4711" not in repr([(e.event, e.data) for e in events])  # ids are hex: may hold "4711"
    assert journal.history(live.id)[0].data["messages"][0]["content"] == "my PIN is public"
    journal.note_expired([old.id])
    assert [e.event for e in journal.history(old.id)] == ["created", "expired"]
    journal.forget(namespace=None, ids=[old.id])
    assert [e.event for e in journal.history(old.id)] == ["created", "expired", "forgotten"]
    assert journal.history("no-such-id") == []


def test_facts_of_an_expired_interaction_are_not_served(journal: JournalBackend) -> None:
    """A fact distilled from an interaction that expired is hidden from list, get and
    history (its text is the interaction's) before the sweep deletes it."""
    from fakes import HashEmbeddings

    from seal_agent.memory.facts import FactStore, statement_key
    from seal_agent.memory.index import ChromaIndex

    a, b = make("my locker code is 4711", expires_in=3600), make("my bike is red")
    journal.insert_many([a, b])
    store = FactStore(journal, ChromaIndex(lambda: None, "unused_facts", HashEmbeddings()))  # type: ignore[arg-type]
    code, bike = "My locker code is 4711.", "My bike is red."
    [fc] = store.add([(("default",), code, statement_key(code), a.id)])
    [fb] = store.add([(("default",), bike, statement_key(bike), b.id)])
    assert {f.id for f in store.list()} == {fc, fb} and store.history(fc)[0].data["text"] == code
    c = make("my locker code is 4711", expires_in=-1)  # the same fact from an expired source
    journal.insert(c)
    store.add([(("default",), code, statement_key(code), c.id)])
    assert [f.id for f in store.list(include_superseded=True)] == [fb] and store.get(fc) is None
    assert store.get(fb) is not None
    assert all(e.data == {} for e in store.history(fc))
    assert "4711" not in repr([(e.event, e.data) for e in store.history(fc)])  # data only: ids are hex


def test_rows_with_escaped_metadata_keys_are_queued_again_once(journal: JournalBackend) -> None:
    """Review finding 4: once per journal, the rows marked indexed whose metadata has a key
    with ``.``, ``\\`` or a leading ``$`` (at any depth) are queued for Chroma again (their
    names there are escaped now); other rows, and rows still queued, are left alone."""
    rows = [make("dot", metadata={"http.status": 200}), make("slash", metadata={"a": {"b\\c": 1}}),
            make("dollar", metadata={"$kind": "web"}), make("plain", metadata={"a": {"b": 1.5}, "s": "x.y$"}),
            make("queued", metadata={"q.r": 1})]
    journal.insert_many(rows)
    journal.mark_indexed([it.id for it in rows[:4]])
    with journal._tx() as db:  # a journal from before the escaping: not marked (a fresh one is not either)
        db.execute("DELETE FROM meta WHERE key='index_metadata_keys'")
    assert journal.requeue_escaped_keys() == 3
    assert {it.id for it in journal.unindexed(10)} == {rows[0].id, rows[1].id, rows[2].id, rows[4].id}
    journal.mark_indexed([it.id for it in rows])
    assert journal.requeue_escaped_keys() == 0 and journal.backlog() == 0  # once
