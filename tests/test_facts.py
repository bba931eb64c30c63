"""Semantic memory: facts distilled by consolidation, kept current, recalled per namespace.

Real Chroma, real journal, real self-edit strategies (``statements`` needs no model;
``implications`` and ``self_qa`` are written by a scripted teacher), one real
consolidation on tiny-random.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fakes import HashEmbeddings, ScriptedChatModel

from seal_agent import SealMemory
from seal_agent.config import SealConfig, SelfEditConfig
from seal_agent.errors import BackendUnavailableError
from seal_agent.gate.suite import ReplaySuite
from seal_agent.memory.facts import distill, fact_key, forget_facts, record_facts, supersedes
from seal_agent.selfedit import generate_self_edits

ALICE, BOB = ("users", "alice"), ("users", "bob")


def _mem(home: Path, **memory: Any) -> SealMemory:
    cfg = SealConfig().with_overrides(memory={"facts": True, "embed_in_subprocess": False, **memory})
    return SealMemory(home, embeddings=HashEmbeddings(), config=cfg, model="tiny-random")


def _say(mem: SealMemory, text: str, ns: tuple[str, ...], reply: str = "Noted.", **kw: Any) -> str:
    return mem.log([{"role": "user", "content": text}, {"role": "assistant", "content": reply}], namespace=ns, **kw)


def _consolidate_statements(mem: SealMemory, ids: list[str]) -> list[str]:
    """What the consolidation's self-edit step does for these interactions (statements)."""
    its = [mem.get(i) for i in ids]
    batch = generate_self_edits(its, None, SelfEditConfig(strategies=["statements"]), progress=False)
    return record_facts(mem, batch.edits, its)


def _texts(memories: list[Any]) -> list[str]:
    return [m.text for m in memories]


def test_facts_from_a_real_consolidation_are_recalled_for_their_namespace_only(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        _say(mem, "My dog is called Rex.", ALICE)
        _say(mem, "My dog is called Pim.", BOB)
        report = mem.consolidate(progress=False, selfedit={"strategies": ["statements"]},
                                 consolidation={"teacher": "none"}, gate={"allow_unverified": True},
                                 train={"epochs": 1, "rehearsal_size": 0})
        assert report.verdict == "committed", report.reason
        alice = mem.recall("what is my dog called?", namespace=ALICE, kinds=("facts",))
        bob = mem.recall("what is my dog called?", namespace=BOB, kinds=("facts",))
        assert _texts(alice) == ["My dog is called Rex."] and {m.kind for m in alice} == {"fact"}
        assert _texts(bob) == ["My dog is called Pim."]
        assert alice[0].metadata["sources"] == [mem.list(namespace=ALICE)[0].id]
        # the default stays episodes only (compatibility)
        assert {m.kind for m in mem.recall("dog", namespace=ALICE)} == {"episode"}
        both = mem.recall("dog", namespace=ALICE, kinds=("episodes", "facts"))
        assert [m.kind for m in both] == ["fact", "episode"]


def test_a_correction_supersedes_the_old_fact_and_history_keeps_both(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        old = _say(mem, "My favourite colour is blue.", ALICE)
        _say(mem, "My favourite colour is red.", BOB)
        _consolidate_statements(mem, [old])
        before = mem.recall("favourite colour", namespace=ALICE, kinds=("facts",))
        assert _texts(before) == ["My favourite colour is blue."]
        new = _say(mem, "Actually, my favourite colour is green now.", ALICE)
        [fid] = _consolidate_statements(mem, [new])
        after = mem.recall("favourite colour", namespace=ALICE, kinds=("facts",))
        assert _texts(after) == ["Actually, my favourite colour is green now."]
        events = [(e.event, e.data.get("text")) for e in mem.history(fid)]
        assert events == [("created", "My favourite colour is blue."), ("created", after[0].text),
                          ("superseded", None)]
        assert mem.history(fid)[-1].data["superseded_by"] == fid
        assert [f.status for f in mem.facts(namespace=ALICE, include_superseded=True)] == ["superseded", "active"]
        # another namespace's fact with the same key is untouched
        assert _texts(mem.recall("favourite colour", namespace=BOB, kinds=("facts",))) == []
        _consolidate_statements(mem, [mem.list(namespace=BOB)[0].id])
        assert _texts(mem.recall("favourite colour", namespace=BOB, kinds=("facts",))) == [
            "My favourite colour is red."]
        assert len(mem.facts(namespace=ALICE)) == 1


def test_an_older_exchange_consolidated_late_does_not_override_a_newer_fact(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        old = _say(mem, "I live in Lyon.", ALICE)
        new = _say(mem, "I now live in Paris.", ALICE)
        _consolidate_statements(mem, [new])
        _consolidate_statements(mem, [old])
        assert [f.text for f in mem.facts(namespace=ALICE)] == ["I now live in Paris."]


def test_teacher_written_implications_and_qa_pairs_become_facts(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        i = _say(mem, "Zorbia's capital is Quxville.", ALICE)
        its = [mem.get(i)]
        edits = []
        for strategy, reply in (("implications", "- The capital of Zorbia is Quxville.\n- Quxville is in Zorbia."),
                                ("self_qa", "Q: What is the capital of Zorbia?\nA: Quxville.")):
            config = SelfEditConfig(strategies=[strategy], heldout_fraction=0.0, samples=1, temperature=0.0)
            edits += generate_self_edits(its, ScriptedChatModel([reply]), config, progress=False).edits
        drafts = distill(edits, {i: its[0]})
        texts = sorted(d[1] for d in drafts)
        assert "The capital of Zorbia is Quxville." in texts
        assert "What is the capital of Zorbia? Quxville." in texts
        assert all(d[0] == ALICE and d[3] == i for d in drafts)
        record_facts(mem, edits, its)
        got = mem.recall("capital of Zorbia", namespace=ALICE, kinds=("facts",), k=5)
        assert "The capital of Zorbia is Quxville." in _texts(got)


def test_the_users_sentence_is_a_fact_when_its_statements_copy_was_dropped_as_a_duplicate(tmp_path: Path) -> None:
    """Default strategies: implications adds the passage itself, statements' equal example is
    dropped as a duplicate; the user's own sentence must still become a fact (issue 20:
    else a correction told by the user supersedes nothing and its stale replay stays)."""
    with _mem(tmp_path / "home") as mem:
        i = _say(mem, "My brother's sailboat is called the Tumbleweed.", ALICE)
        its = [mem.get(i)]
        config = SelfEditConfig(strategies=["implications", "statements"], heldout_fraction=0.0, samples=1,
                                temperature=0.0)
        batch = generate_self_edits(its, ScriptedChatModel(["- The Tumbleweed is a sailboat."]), config,
                                    progress=False)
        assert [e.strategy for e in batch.edits if not e.model_written] == ["implications"]  # statements: duplicate
        texts = [d[1] for d in distill(batch.edits, {i: its[0]})]
        assert "My brother's sailboat is called the Tumbleweed." in texts


def test_ttl_expiry_removes_episodes_and_their_facts(tmp_path: Path) -> None:
    with _mem(tmp_path / "home", ttl_namespaces={"users/alice": 1.0}) as mem:
        i = _say(mem, "My locker code is 4711.", ALICE)
        keep = _say(mem, "My locker code is 1234.", BOB)
        _consolidate_statements(mem, [i, keep])
        assert _texts(mem.recall("locker code", namespace=ALICE, kinds=("facts",))) == ["My locker code is 4711."]
        time.sleep(1.2)
        # expired: hidden everywhere before any sweep
        assert mem.recall("locker code", namespace=ALICE, kinds=("episodes", "facts")) == []
        assert mem.expire() == 1
        assert mem.facts(namespace=ALICE, include_superseded=True) == []
        assert [e.event for e in mem.history(i)] == ["created", "expired", "forgotten"]
        assert all(not e.data for e in mem.history(i))
        assert _texts(mem.recall("locker code", namespace=BOB, kinds=("facts",))) == ["My locker code is 1234."]
        assert mem._facts._coll().count() == 1  # the expired fact left Chroma too


def test_forget_hook_deletes_facts_of_forgotten_sources(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        i = _say(mem, "My passport number is X123.", ALICE)
        [fid] = _consolidate_statements(mem, [i])
        mem.forget(ids=[i])
        # even before the hook runs, a fact whose source is gone is never recalled
        assert mem.recall("passport", namespace=ALICE, kinds=("facts",)) == []
        assert mem.facts(include_superseded=True) == []  # the journal deleted it with its source
        forget_facts(mem, [i])  # the hook: Chroma's copy (idempotent)
        assert mem.facts(include_superseded=True) == []
        assert [e.event for e in mem.history(fid)][-1] == "forgotten"
        assert all(not e.data for e in mem.history(fid))
        assert mem._facts._coll().get(ids=[fid])["ids"] == []


def test_gate_and_facts_use_one_supersede_decision() -> None:
    assert supersedes("my dog is called", "u", "rex", "my dog is called", "u", "max")
    assert not supersedes("my dog is called", "u", "Rex!", "my dog is called", "u", "rex")  # same answer
    assert not supersedes("my dog is called", "u", "rex", "my dog is called", "v", "max")  # other namespace
    assert fact_key("Actually, my dog is now called Max.") == ("my dog is", "called max")
    from seal_agent.memory.records import Interaction, utc_now

    def it(id_: str, q: str, a: str) -> Interaction:
        return Interaction(id=id_, namespace=("u",), thread_id=None, created_at=utc_now(),
                           messages=({"role": "user", "content": q}, {"role": "assistant", "content": a}),
                           task=q, outcome=a)

    from seal_agent.gate.suite import past_item

    suite = ReplaySuite("global", 10, 0, items=[past_item(it("a" * 24, "What is my dog called?", "Rex"))])
    assert [x.id for x, _ in suite.superseded_by([it("b" * 24, "What is my dog called?", "Max")])] == ["a" * 24]
    assert suite.superseded_by([it("c" * 24, "What is my dog called?", "rex.")]) == []


def test_middleware_shows_facts_first(tmp_path: Path) -> None:
    from langchain.agents import create_agent

    with _mem(tmp_path / "home") as mem:
        i = _say(mem, "My favourite colour is blue.", ALICE)
        _consolidate_statements(mem, [i])
        new = _say(mem, "Actually, my favourite colour is green now.", ALICE)
        _consolidate_statements(mem, [new])
        model = ScriptedChatModel(["Green."])
        agent = create_agent(model, [], middleware=[mem.middleware(facts=True, log=False, namespace=ALICE)])
        agent.invoke({"messages": [{"role": "user", "content": "What is my favourite colour?"}]})
        system = model.prompts[0][0].content  # the system prompt the model was given
        facts_at, episodes_at = system.index("current facts"), system.index("earlier conversations")
        assert facts_at < episodes_at
        facts_block = system[facts_at:episodes_at]
        assert "green" in facts_block and "blue" not in facts_block


@pytest.mark.parametrize("kinds", [(), ("facts", "nope"), "facts"])
def test_bad_kinds_are_named(tmp_path: Path, kinds: Any) -> None:
    from seal_agent.errors import ValidationError

    with _mem(tmp_path / "home") as mem, pytest.raises(ValidationError, match="kinds"):
        mem.recall("x", kinds=kinds)


def test_a_read_only_home_recalls_facts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _mem(home) as mem:
        _consolidate_statements(mem, [_say(mem, "My cat is called Pim.", ALICE)])
    cfg = SealConfig().with_overrides(memory={"facts": True, "embed_in_subprocess": False})
    with SealMemory(home, embeddings=HashEmbeddings(), config=cfg, model="tiny-random", read_only=True) as ro:
        assert _texts(ro.recall("my cat", namespace=ALICE, kinds=("facts",))) == ["My cat is called Pim."]


def _pairs(name: str) -> list[dict[str, Any]]:
    import json

    path = Path(__file__).resolve().parents[1] / "bench" / "data" / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("name", "min_precision", "min_recall"), [
    ("same_fact_pairs.jsonl", 1.0, 0.95),  # written with the rule: it must hold them all
    ("same_fact_pairs_heldout.jsonl", 1.0, 0.75),  # written after, never tuned on: 7/9 found, 0 wrong
])
def test_supersession_by_meaning_on_the_labelled_pairs(name: str, min_precision: float, min_recall: float) -> None:
    """Issue 20, corrections: "b corrects a" on labelled statement pairs. A false
    supersession hides a true fact, so precision must stay perfect; recall is measured."""
    from seal_agent.memory.claims import contradicts, parse_claim

    pairs = _pairs(name)
    assert len(pairs) >= 20 and any(p["same"] for p in pairs) and not all(p["same"] for p in pairs)
    tp = fp = fn = 0
    for p in pairs:
        a, b = parse_claim(p["a"]), parse_claim(p["b"])
        got = a is not None and b is not None and contradicts(b, a)
        tp += got and p["same"]
        fp += got and not p["same"]
        fn += not got and p["same"]
    assert tp / max(tp + fp, 1) >= min_precision, (tp, fp)
    assert tp / (tp + fn) >= min_recall, (tp, fn)


def test_a_model_guess_about_a_name_does_not_supersede_the_name(tmp_path: Path) -> None:
    """The Miso case of issue 20: the reply "Miso is a Japanese word that means cat"
    makes no claim about the cat's name, and a correction of the name does supersede."""
    with _mem(tmp_path / "home") as mem:
        a = _say(mem, "My cat is called Miso.", ALICE)
        b = _say(mem, "Miso is a Japanese word that means cat.", ALICE)
        _consolidate_statements(mem, [a, b])
        assert sorted(f.text for f in mem.facts(namespace=ALICE)) == [
            "Miso is a Japanese word that means cat.", "My cat is called Miso."]
        c = _say(mem, "Sorry, my cat's name is actually Tofu.", ALICE)
        _consolidate_statements(mem, [c])
        assert sorted(f.text for f in mem.facts(namespace=ALICE)) == [
            "Miso is a Japanese word that means cat.", "Sorry, my cat's name is actually Tofu."]


def test_facts_recall_through_the_recycled_shared_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding 1: the facts collection shares the interactions index's client,
    which is closed and reopened as many tenants pass (max_open_collections = 2 here).
    Facts recall still finds the right facts; when Chroma misses the facts segment
    right after a reopen ("Nothing found on disk", seen under load; forced here once) it
    is read again through a fresh client; and a miss that stays is our error, not
    chromadb's (it used to escape from recall and from every middleware turn)."""
    from chromadb.errors import InternalError

    missed = "Error executing plan: Error constructing hnsw segment reader: Nothing found on disk"
    with _mem(tmp_path / "home", max_open_collections=2) as mem:
        i = _say(mem, "My locker code is 4711.", ALICE)
        keep = _say(mem, "My locker code is 1234.", BOB)
        _consolidate_statements(mem, [i, keep])
        for t in range(8):  # many tenants: the shared client is closed and reopened on the way
            _say(mem, f"tenant {t} says hello", ("t", str(t)))
            assert len(mem.recall("hello", namespace=("t", str(t)))) == 1
            assert _texts(mem.recall("locker code", namespace=ALICE, kinds=("facts",))) == ["My locker code is 4711."]
        assert mem._index._recycles > 0
        recycles = mem._index._recycles

        coll_type = type(mem._facts._coll())
        query = coll_type.query
        misses = [1]  # how many facts queries Chroma misses from now on

        def missing_segment(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.name == mem.config.memory.facts_collection and misses[0] > 0:
                misses[0] -= 1
                raise InternalError(missed)
            return query(self, *args, **kwargs)

        monkeypatch.setattr(coll_type, "query", missing_segment)
        assert _texts(mem.recall("locker code", namespace=BOB, kinds=("facts",))) == ["My locker code is 1234."]
        assert misses == [0] and mem._index._recycles > recycles  # read again through a fresh client
        misses[0] = 10  # missed on every client
        with pytest.raises(BackendUnavailableError, match=r"seal_facts.*Nothing found on disk") as caught:
            mem.recall("locker code", namespace=ALICE, kinds=("facts",))
        assert isinstance(caught.value.__cause__, InternalError)
        misses[0] = 0
        assert _texts(mem.recall("locker code", namespace=ALICE, kinds=("facts",))) == ["My locker code is 4711."]
