"""Self-edit strategies: parsing of well-formed and malformed model output, filters and
their drop counts, grounding, rejected items and yield, sampling several replies, the
batched path (prefill, truncation), the registry, routing, held-out probes, dedup,
cancellation, async."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from fakes import ScriptedChatModel
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from seal_agent.config import SelfEditConfig
from seal_agent.errors import ConfigError, NotFoundError, TrainingCancelled, ValidationError
from seal_agent.memory.records import Interaction, content_hash, task_and_outcome, utc_now
from seal_agent.selfedit import (
    DROP_REASONS,
    SelfEditBatch,
    SelfEditStrategy,
    agenerate_self_edits,
    base,
    generate_self_edits,
    get_self_edit_strategy,
    is_degenerate,
    register_self_edit_strategy,
    self_edit_strategies,
    stated_text,
)
from seal_agent.selfedit._filters import unsupported_words
from seal_agent.selfedit.critique import parse_refined_answer
from seal_agent.selfedit.self_qa import parse_qa_pairs
from seal_agent.training.data import validate_examples

FACT = "The office wifi password is tulip-42 and the router sits in room 3B."


def interaction(
    id: str = "i1",
    *,
    task: str = "What is the office wifi password?",
    answer: str = FACT,
    feedback: float | None = 1.0,  # the user confirmed the answer: it is knowledge (provenance)
    comment: str | None = None,
    namespace: tuple[str, ...] = ("users", "alice"),
    messages: Sequence[dict[str, Any]] | None = None,
) -> Interaction:
    msgs = tuple(messages or ({"role": "user", "content": task}, {"role": "assistant", "content": answer}))
    t, o = task_and_outcome(msgs)
    return Interaction(id=id, namespace=namespace, thread_id=None, created_at=utc_now(), messages=msgs,
                       task=t, outcome=o, feedback=feedback, feedback_comment=comment,
                       content_hash=content_hash(msgs))


class FnChatModel(BaseChatModel):
    """Answers with `fn(prompt text)`: deterministic per prompt, whatever the call order."""

    fn: Callable[[str], str]
    calls: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "fn"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        prompt = "\n".join(m.text for m in messages)
        self.calls.append(prompt)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self.fn(prompt)))])


def by_strategy(prompt: str) -> str:
    """A well-behaved teacher: recognises which strategy asked from its prompt."""
    if "list the facts it states" in prompt:  # implications
        return "Implications:\n1. The wifi password is tulip-42.\n- The router is in room 3B."
    if "Write questions and answers" in prompt:  # self_qa
        return ("Q: What is the office wifi password?\nA: tulip-42\n\n"
                "Q: Where is the router?\nA: In room 3B.\n\n"
                "Q: Which room has the office router?\nA: Room 3B.\n\n"
                "Q: Is tulip-42 the wifi password?\nA: Yes, it is.")
    if "Restate" in prompt:
        return "Rewritten passage: The password for the office wifi is tulip-42; the router is in 3B."
    if "Refined answer" in prompt:
        return "Critique: it guessed.\nRefined answer: The password is tulip-42."
    return "???"


# One reply per job: these tests script exact replies (a plain chat model is invoked
# `samples` times per job).
CFG = SelfEditConfig(strategies=["implications", "rewrite", "self_qa", "raw"], heldout_fraction=0.25, samples=1)
STATED = "What is the office wifi password?\n" + FACT  # stated_text(interaction()): no labels


def run(strategy: str, reply: str, inter: Interaction | None = None, **config: Any) -> SelfEditBatch:
    cfg = SelfEditConfig(**{"samples": 1, **config})
    return get_self_edit_strategy(strategy).generate(inter or interaction(), ScriptedChatModel([reply]), cfg)


def texts(batch: SelfEditBatch) -> list[str]:
    return [e.example["text"] for e in batch.edits if e.kind == "document"]


# --------------------------------------------------------------------------- filters


def test_degenerate_rule() -> None:
    assert is_degenerate("!" * 25)
    assert is_degenerate("the the the the cat the the the the the the the the")
    assert is_degenerate("I think so. " * 5)
    assert is_degenerate("call traincul\x02z F Exac") and is_degenerate("about \ufffd3")
    assert not is_degenerate(FACT)
    assert not is_degenerate("The cat sat on the mat, and then the dog sat on the rug by the door.")


# --------------------------------------------------------------------------- implications


@pytest.mark.parametrize("reply", [
    "1. The wifi password is tulip-42.\n2. The router is in room 3B.",
    "Here are the implications:\n- The wifi password is tulip-42.\n* The router is in room 3B.\n",
    "  (1) The wifi password is tulip-42.\n\n  2) **The router is in room 3B.**",
    "• The wifi password is tulip-42.\n• The router is in room 3B.",
])
def test_implications_well_formed(reply: str) -> None:
    batch = run("implications", reply)
    # The extra example is what was stated, without role labels (not passage_text).
    assert texts(batch) == ["The wifi password is tulip-42.", "The router is in room 3B.", STATED]
    assert {e.strategy for e in batch.edits} == {"implications"}
    assert [e.model_written for e in batch.edits] == [True, True, False]
    assert batch.dropped == {} and batch.rejected == [] and batch.yield_rate == 1.0
    validate_examples(batch.examples)


def test_implications_prompt_contains_the_passage_and_tool_results() -> None:
    inter = interaction(messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}]},
        {"role": "tool", "content": "-3C and snowing", "tool_call_id": "c1", "name": "weather"},
        {"role": "assistant", "content": "It is -3C and snowing in Oslo."},
    ])
    for name in ("implications", "self_qa", "rewrite"):
        prompt = get_self_edit_strategy(name).build_prompt(inter)
        assert prompt is not None and isinstance(prompt[-1], HumanMessage)
        # The stated text: user turn, tool result, answer; no labels, no system prompt.
        asked = prompt[-1].text
        assert asked.endswith("Weather in Oslo?\n-3C and snowing\nIt is -3C and snowing in Oslo."), name
        assert "Tool result" not in asked and "User:" not in asked
        assert "You are terse" not in "\n".join(m.text for m in prompt)


def test_implications_malformed_counts_drops() -> None:
    reply = "\n".join([
        "Implications:",
        "ok",  # too short (min_item_chars=8)
        "The wifi password is tulip-42.",
        "- The wifi password is tulip-42.",  # duplicate once the bullet is stripped
        "go go go go go go go go go go go go go go",  # degenerate
        " ".join(f"word{i}" for i in range(200)),  # too long (> max_item_chars=1000)
        "The router is in room 3B.",
        "The office router sits in room 3B.",
        "Guests use the separate lobby network.",  # not in the exchange
        "The office wifi password is tulip-42.",
    ])
    batch = run("implications", reply, max_items_per_interaction=2)
    assert texts(batch) == ["The wifi password is tulip-42.", "The router is in room 3B.", STATED]
    assert batch.dropped == {"too_short": 1, "duplicate": 1, "degenerate": 1, "too_long": 1, "unsupported": 1,
                             "over_cap": 2}
    # Every dropped item is kept with its reason, in the order it was judged (over_cap last).
    assert [r["reason"] for r in batch.rejected] == [
        "too_short", "duplicate", "degenerate", "too_long", "unsupported", "over_cap", "over_cap"]
    assert [r["text"] for r in batch.rejected if r["reason"] == "over_cap"] == [
        "The office router sits in room 3B.", "The office wifi password is tulip-42."]
    assert all(r["strategy"] == "implications" and r["interaction_id"] == "i1" for r in batch.rejected)
    # yield: 2 usable of 2 + 3 bad (too_short, degenerate, too_long) + 1 unsupported; dups and cap don't count
    assert batch.yield_rate == pytest.approx(2 / 6)


@pytest.mark.parametrize(("reply", "reason"), [("", "empty"), ("   \n\n", "empty"), ("Implications:\n\n- \n", "unparseable")])
def test_implications_empty_or_unparseable_keeps_the_passage(reply: str, reason: str) -> None:
    batch = run("implications", reply)
    assert batch.dropped == {reason: 1}
    assert [(r["reason"], r["text"]) for r in batch.rejected] == [(reason, reply)]  # the whole reply is kept
    assert texts(batch) == [STATED] and batch.yield_rate == 0.0


# --------------------------------------------------------------------------- rewrite


@pytest.mark.parametrize("reply", [
    "The password for the office wifi is tulip-42.",
    "Rewritten passage: The password for the office wifi is tulip-42.",
    "**Rewrite:**\nThe password for the office wifi is tulip-42.\n",
    "Here is the restated passage:\nThe password for the office wifi is tulip-42.",
])
def test_rewrite_well_formed(reply: str) -> None:
    batch = run("rewrite", reply)
    assert texts(batch) == ["The password for the office wifi is tulip-42.", STATED]
    assert batch.dropped == {}


@pytest.mark.parametrize(("reply", "reason"), [
    ("", "empty"),
    ("Rewrite:", "unparseable"),
    ("so so so so so so so so so so so so so so so", "degenerate"),
    ("hm", "too_short"),
])
def test_rewrite_malformed(reply: str, reason: str) -> None:
    batch = run("rewrite", reply)
    assert batch.dropped == {reason: 1}
    assert len(batch.edits) == 1  # the passage only


# --------------------------------------------------------------------------- self_qa


@pytest.mark.parametrize("reply", [
    "Q: What is the wifi password?\nA: tulip-42\n\nQ: Where is the router?\nA: In room 3B.",
    "1. Q: What is the wifi password?\n   A: tulip-42\n2. Q: Where is the router?\n   A: In room 3B.",
    "**Question 1:** What is the wifi password?\n**Answer 1:** tulip-42\n\n"
    "Question 2: Where is the router?\nAnswer 2:\nIn room 3B.",
    "Sure! Here are some pairs.\nQ1: What is the wifi password?\nA1: tulip-42\nQ2: Where is the router?\nA2: In room 3B.",
])
def test_self_qa_parse_variants(reply: str) -> None:
    assert parse_qa_pairs(reply) == [("What is the wifi password?", "tulip-42"), ("Where is the router?", "In room 3B.")]


def test_self_qa_examples_and_malformed_pairs() -> None:
    reply = ("A: an answer without a question\n"  # ignored
             "Q: What is the wifi password?\nA: tulip-42\n\n"
             "Q: A question nobody answered?\n"  # missing A: -> empty
             "Q: What is the wifi password?\nA: tulip-42\n"  # duplicate
             "Q: la la la la la la la la la la la la?\nA: la la la la\n")  # degenerate
    batch = run("self_qa", reply, heldout_fraction=0.0)
    assert [e.example for e in batch.edits] == [{"messages": [
        {"role": "user", "content": "What is the wifi password?"}, {"role": "assistant", "content": "tulip-42"}]}]
    assert batch.dropped == {"empty": 1, "duplicate": 1, "degenerate": 1}
    validate_examples(batch.examples)


@pytest.mark.parametrize(("reply", "reason"), [("", "empty"), ("no pairs at all, sorry", "unparseable"),
                                               ("A: tulip-42", "unparseable")])
def test_self_qa_nothing_parseable(reply: str, reason: str) -> None:
    batch = run("self_qa", reply)
    assert batch.edits == [] and batch.probes == [] and batch.dropped == {reason: 1}


DESKS = interaction(task="Where do the desks face?", answer=" ".join(f"Desk {i} faces window {i}." for i in range(8)))


def test_self_qa_heldout_split_is_deterministic_and_disjoint() -> None:
    reply = "\n\n".join(f"Q: Which window does desk {i} face?\nA: Desk {i} faces window {i}." for i in range(8))
    cfg = {"heldout_fraction": 0.25, "seed": 3}
    first, second = run("self_qa", reply, DESKS, **cfg), run("self_qa", reply, DESKS, **cfg)
    assert len(first.probes) == 2 and len(first.edits) == 6
    assert first.probes == second.probes and first.edits == second.edits
    trained = {e.example["messages"][0]["content"] for e in first.edits}
    assert not trained & {p.question for p in first.probes}
    assert {p.hash for p in first.probes}.isdisjoint(e.hash for e in first.edits)
    assert all(p.namespace == ("users", "alice") and p.interaction_id == "i1" for p in first.probes)
    other_seed = run("self_qa", reply, DESKS, heldout_fraction=0.25, seed=4)
    assert len(other_seed.probes) == 2  # same share, a (likely) different draw


def test_self_qa_single_pair_stays_in_training() -> None:
    batch = run("self_qa", "Q: What is the wifi password?\nA: tulip-42", heldout_fraction=0.9)
    assert len(batch.edits) == 1 and batch.probes == []


# --------------------------------------------------------------------------- critique


TOOL_EXCHANGE = [
    {"role": "system", "content": "You are the office helper."},
    {"role": "user", "content": "What is the wifi password?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "lookup", "args": {"key": "wifi"}, "id": "c1"}]},
    {"role": "tool", "content": "tulip-42", "tool_call_id": "c1", "name": "lookup"},
    {"role": "assistant", "content": "I don't know."},
]


def test_critique_well_formed() -> None:
    inter = interaction(messages=TOOL_EXCHANGE, feedback=-1.0, comment="the tool told you!")
    model = ScriptedChatModel(["Critique: it ignored the tool result.\n**Refined answer:** The password is tulip-42."])
    batch = get_self_edit_strategy("critique").generate(inter, model, SelfEditConfig(samples=1))
    (prompt_messages,) = model.prompts  # one reply asked for
    prompt = prompt_messages[0].text
    assert "-1.00" in prompt and "the tool told you!" in prompt and "Assistant: I don't know." in prompt
    (edit,) = batch.edits
    messages = edit.example["messages"]
    assert messages[-1] == {"role": "assistant", "content": "The password is tulip-42."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert "I don't know." not in json.dumps(messages)
    assert edit.strategy == "critique" and edit.model_written and batch.dropped == {}
    validate_examples(batch.examples)


def test_critique_is_not_grounded() -> None:
    # The refined answer is meant to say what the exchange did not: no unsupported drop.
    batch = run("critique", "Refined answer: Ask the facilities desk on floor 4.", interaction(feedback=-1.0))
    assert [e.example["messages"][-1]["content"] for e in batch.edits] == ["Ask the facilities desk on floor 4."]
    assert batch.dropped == {}


@pytest.mark.parametrize(("reply", "reason"), [
    ("Critique: it was wrong.", "unparseable"),  # no refined answer
    ("Refined answer:", "unparseable"),
    ("lorem ipsum dolor", "unparseable"),
    ("", "empty"),
    ("Refined answer: no no no no no no no no no no no no no", "degenerate"),
])
def test_critique_malformed(reply: str, reason: str) -> None:
    batch = run("critique", reply, interaction(feedback=-0.5))
    assert batch.edits == [] and batch.dropped == {reason: 1}


def test_parse_refined_answer_stops_at_a_later_critique() -> None:
    assert parse_refined_answer("Refined answer: Paris.\nCritique: more text") == "Paris."


# --------------------------------------------------------------------------- raw


def test_raw_renders_tool_calls_as_text_and_needs_no_model() -> None:
    batch = get_self_edit_strategy("raw").generate(interaction(messages=TOOL_EXCHANGE), None, SelfEditConfig())
    (edit,) = batch.edits
    messages = edit.example["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    call = messages[2]["content"]
    assert call.startswith("\n<tool_call>\n") and call.endswith("\n</tool_call>")
    assert json.loads(call.split("\n")[2]) == {"name": "lookup", "arguments": {"key": "wifi"}}
    assert messages[3] == {"role": "tool", "content": "tulip-42"}
    assert set(messages[0]) == {"role", "content"}
    validate_examples(batch.examples)


def test_raw_never_learns_a_rejected_answer_and_drops_empty() -> None:
    raw = get_self_edit_strategy("raw")
    assert raw.generate(interaction(feedback=-0.1), None, SelfEditConfig()).edits == []
    assert len(raw.generate(interaction(feedback=0.0), None, SelfEditConfig()).edits) == 1
    empty = interaction(messages=[{"role": "user", "content": "hello?"}])
    assert raw.generate(empty, None, SelfEditConfig()).dropped == {"empty": 1}


# --------------------------------------------------------------------------- registry


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strategies registered in a test vanish after it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


@pytest.mark.usefixtures("registry")
def test_custom_strategy_by_decorator_and_name() -> None:
    @register_self_edit_strategy("shout")
    class Shout(SelfEditStrategy):
        def build_prompt(self, interaction: Interaction) -> list[BaseMessage]:
            return [HumanMessage(f"Shout this: {interaction.outcome}")]

        def parse(self, text: str, interaction: Interaction) -> list[Any]:
            return [text.upper()]

        def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
            return {"text": item}

    @register_self_edit_strategy
    class Named(Shout):
        name = "named"

    assert {"shout", "named"} <= set(self_edit_strategies())
    cfg = SelfEditConfig(strategies=["shout", "named"], samples=1)
    model = ScriptedChatModel(["the wifi password", "the router room", "loud words", "the router room"])
    batch = generate_self_edits([interaction(), interaction("i2", answer="Loud words here.")], model, cfg,
                                progress=False)
    assert [(e.strategy, e.example["text"]) for e in batch.edits] == [
        ("shout", "THE WIFI PASSWORD"), ("named", "THE ROUTER ROOM"), ("shout", "LOUD WORDS")]
    # A custom strategy is grounded by default: the router is not in interaction i2.
    (rejected,) = batch.rejected
    assert rejected["reason"] == "unsupported" and rejected["strategy"] == "named"


@pytest.mark.usefixtures("registry")
def test_registry_errors() -> None:
    with pytest.raises(NotFoundError, match=r"'nope'.*known: critique, implications, raw, rewrite, self_qa, statements"):
        get_self_edit_strategy("nope")
    with pytest.raises(NotFoundError):  # an unknown configured name fails before any model call
        generate_self_edits([interaction()], ScriptedChatModel([]), SelfEditConfig(strategies=["nope"]),
                            progress=False)
    with pytest.raises(ValidationError, match="strategy"):
        register_self_edit_strategy("bad")(dict)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="model"):
        get_self_edit_strategy("rewrite").generate(interaction(), None, SelfEditConfig())


# --------------------------------------------------------------------------- many interactions


def test_routing_negative_feedback_goes_to_critique_only() -> None:
    model = FnChatModel(fn=by_strategy, calls=[])
    good, bad = interaction("good"), interaction("bad", answer="No idea, sorry.", feedback=-1.0)
    batch = generate_self_edits([good, bad], model, CFG, progress=False)
    bad_edits = [e for e in batch.edits if e.interaction_id == "bad"]
    assert [e.strategy for e in bad_edits] == ["critique"]
    assert bad_edits[0].example["messages"][-1]["content"] == "The password is tulip-42."
    assert "No idea, sorry." not in json.dumps([e.example for e in batch.edits])
    assert {e.strategy for e in batch.edits if e.interaction_id == "good"} == {"implications", "rewrite", "self_qa", "raw"}
    assert len(model.calls) == 4  # implications, rewrite, self_qa for "good"; critique for "bad"
    assert len(batch.probes) == 1 and batch.probes[0].interaction_id == "good"
    # rewrite adds the same stated text implications added: one copy survives, and a
    # logged-text copy is not a dropped self-edit
    assert batch.dropped == {}
    assert sum(e.example.get("text") == STATED for e in batch.edits) == 1
    validate_examples(batch.examples)
    json.dumps(batch.to_dict())


def test_teacher_that_raises_is_counted_not_raised() -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("server down")

    batch = generate_self_edits([interaction("a"), interaction("b", feedback=-1.0)], FnChatModel(fn=broken, calls=[]),
                                CFG, progress=False)
    assert batch.dropped["teacher_error"] == 4
    assert len(batch.errors) == 4 and all("server down" in e for e in batch.errors)
    assert {e.strategy for e in batch.edits} == {"implications", "raw"}  # the passage and the exchange remain


def test_garbage_teacher_is_counted() -> None:
    model = FnChatModel(fn=lambda p: "%%%", calls=[])
    batch = generate_self_edits([interaction()], model, SelfEditConfig(strategies=["self_qa", "rewrite"], samples=4),
                                progress=False)
    assert len(model.calls) == 8  # 4 samples per job, each garbage reply counted
    assert batch.dropped == {"unparseable": 4, "too_short": 4}
    assert len(batch.rejected) == 8 and batch.yield_rate == 0.0
    assert [e.strategy for e in batch.edits] == ["rewrite"]  # its passage document


def test_dedup_across_interactions_and_against_probes() -> None:
    same = [interaction("a"), interaction("b"), interaction("c", namespace=("users", "bob"))]
    cfg = SelfEditConfig(strategies=["raw"])
    batch = generate_self_edits(same, None, cfg, progress=False)
    assert len(batch.edits) == 1 and batch.edits[0].interaction_id == "a"
    assert batch.dropped == {"duplicate": 2}

    # A pair held out for one interaction is never trained on through another.
    qa = "Q: What is the wifi password?\nA: tulip-42\n\nQ: Where is the router?\nA: In room 3B."
    model = FnChatModel(fn=lambda p: qa, calls=[])
    batch = generate_self_edits([interaction("a"), interaction("b")], model,
                                SelfEditConfig(strategies=["self_qa"], heldout_fraction=0.5), progress=False)
    assert batch.probes
    assert {p.hash for p in batch.probes}.isdisjoint(e.hash for e in batch.edits)
    assert len({e.hash for e in batch.edits}) == len(batch.edits)


def test_excluded_namespaces_are_skipped() -> None:
    cfg = SelfEditConfig(strategies=["raw"], exclude_namespaces=["users/bob"])
    batch = generate_self_edits([interaction("a", answer="Alice's answer here."),
                                 interaction("b", namespace=("users", "bob", "work"))], None, cfg, progress=False)
    assert [e.interaction_id for e in batch.edits] == ["a"] and batch.dropped == {"excluded": 1}


def test_cancel_event_stops_early() -> None:
    cancel = threading.Event()

    def cancel_after_first(prompt: str) -> str:
        cancel.set()
        return "- The meeting room has a projector."

    model = FnChatModel(fn=cancel_after_first, calls=[])
    inters = [interaction(str(i), answer=f"Fact {i}: the meeting room {i} has a projector.") for i in range(5)]
    batch = generate_self_edits(inters, model, SelfEditConfig(strategies=["implications", "raw"], samples=1),
                                progress=False, cancel_event=cancel)
    assert batch.cancelled and len(model.calls) == 1
    # Model-free jobs (raw) are collected for every interaction; model-written items only
    # for the one job the model answered.
    assert {e.interaction_id for e in batch.edits if e.model_written} == {"0"}
    assert {e.interaction_id for e in batch.edits if e.strategy == "implications"} == {"0"}
    assert not batch.errors and "teacher_error" not in batch.dropped


def test_async_twin_matches_sync() -> None:
    inters = [interaction("a"), interaction("b", answer="The printer on floor 2 needs badge access."),
              interaction("c", answer="Wrong.", feedback=-0.5, comment="bad")]
    sync = generate_self_edits(inters, FnChatModel(fn=by_strategy, calls=[]), CFG, progress=False)
    asyn = asyncio.run(agenerate_self_edits(inters, FnChatModel(fn=by_strategy, calls=[]), CFG, progress=False))
    assert asyn == sync and sync.edits and sync.probes

    def broken(prompt: str) -> str:
        raise RuntimeError("boom")

    failed = asyncio.run(agenerate_self_edits(inters[:1], FnChatModel(fn=broken, calls=[]), CFG, progress=False))
    assert failed.dropped["teacher_error"] == 3


# --------------------------------------------------------------------------- grounding


def test_hallucinated_item_is_dropped_as_unsupported_with_the_missing_words() -> None:
    reply = "- The wifi password is tulip-42.\n- The router in room 3B was installed by Siemens in Berlin."
    batch = run("implications", reply)
    assert texts(batch) == ["The wifi password is tulip-42.", STATED]
    (rejected,) = batch.rejected
    assert rejected == {"reason": "unsupported", "strategy": "implications", "interaction_id": "i1",
                        "text": "The router in room 3B was installed by Siemens in Berlin.",
                        "detail": "not in the exchange: installed, siemens, berlin"}
    assert batch.dropped == {"unsupported": 1} and batch.yield_rate == 0.5


def test_self_qa_grounds_the_answer_and_lets_the_question_paraphrase() -> None:
    reply = ("Q: What is the office wifi password?\nA: The office wifi password is tulip-42.\n\n"
             "Q: Which chamber holds the office router?\nA: The router sits in room 3B.\n\n"  # paraphrased question
             "Q: Who set up the router?\nA: The router was set up by Dana.")  # "set", "dana": invented
    batch = run("self_qa", reply, heldout_fraction=0.0)
    assert [e.example["messages"][0]["content"] for e in batch.edits] == [
        "What is the office wifi password?", "Which chamber holds the office router?"]
    (rejected,) = batch.rejected
    assert rejected["reason"] == "unsupported" and rejected["text"].startswith("Who set up the router?")
    assert rejected["detail"] == "not in the exchange: set, up, dana"


def test_grounding_tolerates_inflection() -> None:
    inter = interaction(task="Tell me about the lab.",
                        answer="The lab discovered two comets, and its bells ring at noon.")
    reply = ("- The discovery of two comets was made by the lab.\n"  # "made" is new
             "- The lab's bell rings at noon.\n"  # bells -> bell
             "- The lab discovers a comet.")  # discovered -> discovers, comets -> comet
    batch = run("implications", reply, inter)
    assert texts(batch)[:2] == ["The lab's bell rings at noon.", "The lab discovers a comet."]
    # "discovery" is supported by "discovered"; "made" is the only word the exchange lacks
    assert [(r["reason"], r["detail"]) for r in batch.rejected] == [("unsupported", "not in the exchange: made")]
    assert unsupported_words("The discovery of comets", "The lab discovered two comets.") == []
    assert unsupported_words("The bell rings", "its bells ring") == []
    assert unsupported_words("A red bell", "its bells ring") == ["red"]


def _few_shot_lines(strategy: str) -> str:
    """The worked example's answer in `strategy`'s prompt (a previous assistant turn)."""
    prompt = get_self_edit_strategy(strategy).build_prompt(interaction())
    assert prompt is not None
    (example,) = [m for m in prompt if isinstance(m, AIMessage)]
    return example.text


@pytest.mark.parametrize("strategy", ["implications", "self_qa"])
def test_a_copy_of_the_few_shot_example_is_dropped(strategy: str) -> None:
    copied = _few_shot_lines(strategy)
    assert "Lake Tamsu" in copied
    batch = run(strategy, copied, heldout_fraction=0.0)
    assert [e for e in batch.edits if e.model_written] == [] and batch.probes == []
    n = len(get_self_edit_strategy(strategy).parse(copied, interaction()))
    assert n >= 3 and batch.dropped == {"unsupported": n}
    assert all("tamsu" in r["detail"] or "orbin" in r["detail"] for r in batch.rejected)
    assert batch.yield_rate == 0.0


# --------------------------------------------------------------------------- rejected, yield, to_dict


def test_rejected_keeps_every_dropped_reply_and_item() -> None:
    cfg = SelfEditConfig(strategies=["implications", "self_qa"], samples=1, heldout_fraction=0.0,
                         max_items_per_interaction=1)
    model = ScriptedChatModel([
        "- ok\n- The wifi password is tulip-42.\n- The wifi password is tulip-42.\n- The router is in room 3B.",
        "no pairs here",
    ])
    batch = generate_self_edits([interaction()], model, cfg, progress=False)
    assert [(r["reason"], r["strategy"], r["text"]) for r in batch.rejected] == [
        ("too_short", "implications", "ok"),
        ("duplicate", "implications", "The wifi password is tulip-42."),
        ("over_cap", "implications", "The router is in room 3B."),
        ("unparseable", "self_qa", "no pairs here"),  # a whole reply
    ]
    assert all(set(r) == {"reason", "strategy", "interaction_id", "text", "detail"} for r in batch.rejected)
    assert all(r["reason"] in DROP_REASONS for r in batch.rejected)
    # every count in `dropped` has its entry here (nothing else was dropped)
    assert sum(batch.dropped.values()) == len(batch.rejected)
    # 1 usable / (1 usable + too_short + unparseable); duplicate and over_cap are not the model's fault
    assert batch.yield_rate == pytest.approx(1 / 3)


def test_yield_rate() -> None:
    assert SelfEditBatch().yield_rate is None
    # model-free strategies write nothing: no yield
    assert generate_self_edits([interaction()], None, SelfEditConfig(strategies=["raw", "statements"]),
                               progress=False).yield_rate is None
    # probes count as usable model-written items
    reply = "\n\n".join(f"Q: Which window does desk {i} face?\nA: Desk {i} faces window {i}." for i in range(4))
    batch = run("self_qa", reply + "\n\nQ: Who painted desk 1?\nA: Lee painted it.", DESKS, heldout_fraction=0.5)
    assert len(batch.probes) == 2 and len(batch.edits) == 2 and batch.dropped == {"unsupported": 1}
    assert batch.yield_rate == pytest.approx(4 / 5)


def test_to_dict_carries_yield_rejected_and_lineage() -> None:
    batch = run("implications", "- The wifi password is tulip-42.\n- Berlin is far away.")
    d = json.loads(json.dumps(batch.to_dict()))
    assert d["format_version"] == 2
    assert d["yield"] == 0.5
    assert d["rejected"] == batch.rejected and d["rejected"][0]["reason"] == "unsupported"
    assert [e["model_written"] for e in d["edits"]] == [True, False]  # the stated text is logged text
    assert d["dropped"] == {"unsupported": 1}


# --------------------------------------------------------------------------- stated text, statements


CAT_EXCHANGE = [
    {"role": "system", "content": "You are a pet helper."},
    {"role": "user", "content": "My cat is called Pim."},
    {"role": "assistant", "content": "Got it, thanks! I'll remember that."},
    {"role": "user", "content": "What does Pim eat?"},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "notes", "args": {"q": "Pim"}, "id": "c1"}]},
    {"role": "tool", "content": "Pim eats tuna on Fridays.", "tool_call_id": "c1", "name": "notes"},
    {"role": "assistant", "content": "Pim eats tuna on Fridays."},
]


@pytest.mark.parametrize(("text", "ack"), [
    ("Got it, thanks! I'll remember that.", True),
    ("Sure, happy to help with anything else.", True),
    ("Noted.", True),
    ("Okay, I will keep that in mind.", True),
    ("Pim eats tuna on Fridays.", False),
    ("Noted: the router is in room 3B.", False),
])
def test_is_acknowledgement(text: str, ack: bool) -> None:
    assert base.is_acknowledgement(text) is ack


def test_stated_text_drops_labels_system_prompt_and_acknowledgements() -> None:
    inter = interaction(messages=CAT_EXCHANGE)
    assert stated_text(inter) == ("My cat is called Pim.\nWhat does Pim eat?\n"
                                  "Pim eats tuna on Fridays.\nPim eats tuna on Fridays.")
    assert stated_text(interaction()) == STATED  # an answer with content is kept
    # passage_text (still what critique shows) keeps labels and the acknowledgement
    assert "Assistant: Got it" in base.passage_text(inter)


def test_statements_strategy_is_one_document_of_what_was_stated() -> None:
    inter = interaction(messages=CAT_EXCHANGE[:3])
    statements = get_self_edit_strategy("statements")
    batch = statements.generate(inter, None, SelfEditConfig())
    assert [(e.kind, e.example, e.model_written) for e in batch.edits] == [
        ("document", {"text": "My cat is called Pim."}, False)]
    assert batch.dropped == {} and batch.yield_rate is None
    validate_examples(batch.examples)
    # never a rejected answer: neither directly ...
    assert statements.generate(interaction(feedback=-0.5), None, SelfEditConfig()).edits == []
    assert len(statements.generate(interaction(feedback=0.0), None, SelfEditConfig()).edits) == 1
    # ... nor through routing (negative feedback goes to critique only)
    bad = interaction("bad", answer="No idea, sorry.", feedback=-1.0)
    batch = generate_self_edits([inter, bad], ScriptedChatModel(["Refined answer: The password is tulip-42."]),
                                SelfEditConfig(strategies=["statements"], samples=1), progress=False)
    assert [(e.strategy, e.interaction_id) for e in batch.edits] == [("statements", "i1"), ("critique", "bad")]
    assert "No idea" not in json.dumps(batch.examples[0])


def test_default_strategies_share_the_stated_text_once() -> None:
    cfg = SelfEditConfig(samples=1)
    assert cfg.strategies == ["implications", "self_qa", "statements"]
    model = FnChatModel(fn=by_strategy, calls=[])
    batch = generate_self_edits([interaction()], model, cfg, progress=False)
    stated = [e for e in batch.edits if e.example == {"text": STATED}]
    assert len(stated) == 1 and stated[0].strategy == "implications"  # statements' copy is merged
    assert batch.dropped == {} and len(model.calls) == 2


# --------------------------------------------------------------------------- sampling several replies


def test_samples_pool_and_dedup_items_from_several_replies() -> None:
    model = ScriptedChatModel([
        "- The wifi password is tulip-42.\n- The router is in room 3B.",
        "- The router is in room 3B.\n- The office wifi password is tulip-42.",
        "- The wifi password is tulip-42.\n- The router sits in Paris.",
    ])
    cfg = SelfEditConfig(strategies=["implications"], samples=3, temperature=0.7)
    batch = generate_self_edits([interaction()], model, cfg, progress=False)
    assert len(model.prompts) == 3  # one invoke per sample, same prompt
    assert model.prompts[0] == model.prompts[1] == model.prompts[2]
    assert texts(batch) == ["The wifi password is tulip-42.", "The router is in room 3B.",
                            "The office wifi password is tulip-42.", STATED]
    assert batch.dropped == {"duplicate": 2, "unsupported": 1}
    assert batch.yield_rate == pytest.approx(3 / 4)  # duplicates count neither way


def test_samples_above_one_need_a_temperature() -> None:
    with pytest.raises(ConfigError, match=r"selfedit\.samples"):
        SelfEditConfig(samples=2, temperature=0.0)
    with pytest.raises(ConfigError, match=r"selfedit\.samples"):
        SelfEditConfig(samples=0)
    assert SelfEditConfig(samples=1, temperature=0.0).samples == 1
    assert SelfEditConfig().samples == 4 and SelfEditConfig().temperature > 0


class SeededChatModel(BaseChatModel):
    """A hosted-style model with `seed` and `temperature` fields; records the kwargs of each call."""

    seed: int | None = None
    temperature: float = 1.0
    seen: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return "seeded"

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        self.seen.append(dict(kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage("- The wifi password is tulip-42."))])


def test_samples_of_a_seeded_plain_model_use_different_seeds() -> None:
    model = SeededChatModel(seen=[])
    generate_self_edits([interaction()], model, SelfEditConfig(strategies=["implications"], samples=3),
                        progress=False)
    assert len(model.seen) == 3 and all(k["temperature"] == 0.5 for k in model.seen)
    assert len({k.get("seed") for k in model.seen}) == 3


# --------------------------------------------------------------------------- the batched path


class WordTokenizer:
    """Whitespace "tokens": enough for the token-budget check."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


class BatchModel:
    """A local model with `generate_batch`: records every call; answers with
    ``prefill + fn(prompt text, prefill, sample index)``, as AdaptiveChatModel does."""

    def __init__(self, fn: Callable[[str, str, int], str], *, tokenizer: Any = None,
                 raise_on_cancel: bool = False) -> None:
        self.fn = fn
        self.tokenizer = tokenizer
        self.raise_on_cancel = raise_on_cancel
        self.calls: list[dict[str, Any]] = []

    def generate_batch(self, prompts: Sequence[Sequence[BaseMessage]], **kwargs: Any) -> list[list[str]]:
        self.calls.append({"prompts": list(prompts), **kwargs})
        out = []
        for prompt, prefill in zip(prompts, kwargs["prefill"], strict=True):
            text = "\n".join(m.text for m in prompt)
            out.append([prefill + self.fn(text, prefill, k) for k in range(kwargs["n"])])
            cancel = kwargs["cancel_event"]
            if self.raise_on_cancel and cancel is not None and cancel.is_set():
                raise TrainingCancelled("generate_batch cancelled")
        return out

    async def agenerate_batch(self, prompts: Sequence[Sequence[BaseMessage]], **kwargs: Any) -> list[list[str]]:
        return self.generate_batch(prompts, **kwargs)


def prefilled(text: str, prefill: str, k: int) -> str:
    """A teacher that continues the prefill (the prefill itself is not repeated)."""
    if prefill == "-":
        return " The wifi password is tulip-42.\n- The router is in room 3B."
    if prefill == "Q:":
        return f" Where is the router?\nA: The router is in room 3B.\nQ: What is the wifi password?\nA: tulip-{42 + k}"
    return by_strategy(text)


def test_batched_path_passes_prefill_and_sampling_options_once() -> None:
    model = BatchModel(prefilled)
    cfg = SelfEditConfig(strategies=["implications", "self_qa", "rewrite", "statements"], samples=2,
                         temperature=0.9, max_new_tokens=64, seed=7, heldout_fraction=0.0)
    cancel = threading.Event()
    inters = [interaction("a"), interaction("b", answer="Wrong.", feedback=-1.0)]
    batch = generate_self_edits(inters, model, cfg, progress=False, cancel_event=cancel)
    (call,) = model.calls  # every job in one call, in plan order
    assert call["prefill"] == ["-", "Q:", "", ""]  # implications, self_qa, rewrite for a; critique for b
    assert [p[-1].text for p in call["prompts"]][:3] == [
        get_self_edit_strategy(n).build_prompt(inters[0])[-1].text for n in ("implications", "self_qa", "rewrite")]
    assert {k: call[k] for k in ("n", "temperature", "max_new_tokens", "seed", "progress")} == {
        "n": 2, "temperature": 0.9, "max_new_tokens": 64, "seed": 7, "progress": False}
    assert call["cancel_event"] is cancel
    # the prefilled replies were parsed with their prefill: "- ..." items and "Q: ..." pairs
    assert [(e.strategy, e.interaction_id) for e in batch.edits if e.model_written] == [
        ("implications", "a"), ("implications", "a"), ("self_qa", "a"), ("self_qa", "a"), ("rewrite", "a"),
        ("critique", "b")]
    qa = [e.example["messages"][1]["content"] for e in batch.edits if e.strategy == "self_qa"]
    assert qa == ["The router is in room 3B.", "tulip-42"]  # sample 2's "tulip-43" is unsupported
    assert [(r["reason"], r["text"]) for r in batch.rejected if r["reason"] != "duplicate"] == [
        ("unsupported", "What is the wifi password?\ntulip-43")]
    assert not batch.cancelled and not batch.errors
    validate_examples(batch.examples)
    # the async twin goes through agenerate_batch the same way
    asyn = asyncio.run(agenerate_self_edits(inters, BatchModel(prefilled), cfg, progress=False))
    assert asyn.edits == batch.edits and asyn.rejected == batch.rejected


def test_a_plain_chat_model_gets_no_prefill() -> None:
    model = ScriptedChatModel(["The wifi password is tulip-42.", "Q: Where is the router?\nA: In room 3B."])
    cfg = SelfEditConfig(strategies=["implications", "self_qa"], samples=1, heldout_fraction=0.0)
    batch = generate_self_edits([interaction()], model, cfg, progress=False)
    # the prompt ends with the user turn asking about the passage: no assistant turn to continue
    assert all(isinstance(p[-1], HumanMessage) and p[-1].text.endswith("Text: " + STATED) for p in model.prompts)
    # the unbulleted line is still an implication: nothing was prefilled for it
    assert texts(batch)[0] == "The wifi password is tulip-42." and not batch.dropped


def test_truncated_reply_drops_its_last_item() -> None:
    def reply(text: str, prefill: str, k: int) -> str:
        if k == 0:  # 11 words after the prefill: the 8-token budget ran out mid-item
            return " The wifi password is tulip-42.\n- The router is in room"
        return " The wifi password is tulip-42."  # 5 words: ended on its own

    cfg = SelfEditConfig(strategies=["implications"], samples=2, max_new_tokens=8)
    batch = generate_self_edits([interaction()], BatchModel(reply, tokenizer=WordTokenizer()), cfg, progress=False)
    assert texts(batch) == ["The wifi password is tulip-42.", STATED]
    assert [(r["reason"], r["text"], r["detail"]) for r in batch.rejected] == [
        ("truncated", "The router is in room", "the reply hit max_new_tokens"),
        ("duplicate", "The wifi password is tulip-42.", "")]
    assert "truncated" in DROP_REASONS
    assert batch.yield_rate == 0.5
    # without a tokenizer nothing can be judged truncated: the cut-off item is kept
    batch = generate_self_edits([interaction()], BatchModel(reply), cfg, progress=False)
    assert "The router is in room" in texts(batch)


def test_cancel_during_a_plain_model_run_marks_the_result_cancelled() -> None:
    cancel = threading.Event()

    def fn(prompt: str) -> str:
        cancel.set()
        return "- The wifi password is tulip-42."

    model = FnChatModel(fn=fn, calls=[])
    cfg = SelfEditConfig(strategies=["implications", "self_qa", "statements"], samples=1)
    batch = generate_self_edits([interaction("a"), interaction("b")], model, cfg, progress=False, cancel_event=cancel)
    assert batch.cancelled and len(model.calls) == 1
    assert [e.strategy for e in batch.edits if e.model_written] == ["implications"]


def test_cancel_during_a_batched_run_marks_the_result_cancelled() -> None:
    cancel = threading.Event()

    def fn(text: str, prefill: str, k: int) -> str:
        cancel.set()  # cancelled while generating
        return " The wifi password is tulip-42."

    model = BatchModel(fn, raise_on_cancel=True)
    batch = generate_self_edits([interaction("a"), interaction("b")], model, SelfEditConfig(samples=1),
                                progress=False, cancel_event=cancel)
    assert batch.cancelled
    assert not [e for e in batch.edits if e.model_written]


def test_a_batched_cancel_is_not_a_teacher_error() -> None:
    cancel = threading.Event()
    cancel.set()
    model = BatchModel(lambda t, p, k: " x", raise_on_cancel=True)
    batch = generate_self_edits([interaction("a"), interaction("b")], model, SelfEditConfig(samples=1),
                                progress=False, cancel_event=cancel)
    assert batch.cancelled
    assert not batch.errors and "teacher_error" not in batch.dropped


# --------------------------------------------------------------------------- real model


def test_smoke_with_tiny_random_model() -> None:
    from seal_agent.model import AdaptiveChatModel

    model = AdaptiveChatModel.load("tiny-random")
    cfg = SelfEditConfig(strategies=["implications", "self_qa", "raw"], max_new_tokens=24)
    inters = [interaction("good"), interaction("bad", answer="No idea.", feedback=-1.0)]
    batch = generate_self_edits(inters, model, cfg, progress=False)
    assert not batch.errors
    assert sum(batch.dropped.values()) >= 1  # random weights write garbage: self_qa/critique cannot parse it
    assert len(batch.edits) >= 2  # whatever the model wrote, the passage and the exchange are kept
    raw = [e for e in batch.edits if e.strategy == "raw"]
    assert len(raw) == 1 and raw[0].interaction_id == "good"
    validate_examples(batch.examples)


def test_tiny_random_model_goes_through_the_batched_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real AdaptiveChatModel, end to end: one generate_batch call with prefills; its
    gibberish replies are all accounted for (each reply's items are kept or rejected, and
    a reply with no item is one rejected entry)."""
    from seal_agent.model import AdaptiveChatModel

    calls: list[tuple[list[Any], dict[str, Any], list[list[str]]]] = []
    real = AdaptiveChatModel.generate_batch

    def recording(self: AdaptiveChatModel, prompts: Any, **kwargs: Any) -> list[list[str]]:
        outs = real(self, prompts, **kwargs)
        calls.append((list(prompts), kwargs, outs))
        return outs

    monkeypatch.setattr(AdaptiveChatModel, "generate_batch", recording)
    model = AdaptiveChatModel.load("tiny-random")
    cfg = SelfEditConfig(strategies=["implications", "self_qa", "statements"], samples=2, max_new_tokens=16)
    inters = [interaction("good", messages=CAT_EXCHANGE), interaction("bad", answer="No idea.", feedback=-1.0)]
    batch = generate_self_edits(inters, model, cfg, progress=False)

    (call,) = calls
    prompts, kwargs, outs = call
    assert kwargs["prefill"] == ["-", "Q:", ""] and kwargs["n"] == 2 and kwargs["max_new_tokens"] == 16
    assert [len(o) for o in outs] == [2, 2, 2]
    assert all(o.startswith(p) for o, p in zip([o[0] for o in outs], kwargs["prefill"], strict=True))
    assert not batch.errors and not batch.cancelled

    expected = 0  # entries the replies must account for
    for name, interaction_, replies in zip(["implications", "self_qa", "critique"], inters[:1] * 2 + inters[1:],
                                           outs, strict=True):
        for reply in replies:
            items = get_self_edit_strategy(name).parse(reply, interaction_) if reply.strip() else []
            expected += max(1, len(items))
    written = [e for e in batch.edits if e.model_written]
    assert expected == len(written) + len(batch.probes) + len(batch.rejected)
    assert all(r["reason"] in DROP_REASONS and r["strategy"] in {"implications", "self_qa", "critique"}
               for r in batch.rejected)
    assert batch.yield_rate is not None and 0.0 <= batch.yield_rate <= 1.0
    # whatever the model wrote, what the user stated is kept once (implications' copy wins)
    stated = [e for e in batch.edits if e.example == {"text": stated_text(inters[0])}]
    assert len(stated) == 1 and not stated[0].model_written
    assert not [e for e in batch.edits if e.strategy == "statements" and e.interaction_id == "bad"]
    validate_examples(batch.examples)
    json.dumps(batch.to_dict())

    # a cancel before generation: nothing is generated, the result is marked cancelled
    cancel = threading.Event()
    cancel.set()
    cancelled = generate_self_edits(inters, model, cfg, progress=False, cancel_event=cancel)
    assert cancelled.cancelled and not [e for e in cancelled.edits if e.model_written]


def test_one_prompt_longer_than_the_context_fails_only_its_own_jobs() -> None:
    """Issue 9 item 5's follow-up: a 25,000-character exchange made the real model's batched
    generation refuse the whole batch, so every interaction of the run lost its model-written
    self-edits. Only the over-long interaction's jobs may fail."""
    from seal_agent.model import AdaptiveChatModel

    model = AdaptiveChatModel.load("tiny-random", max_new_tokens=4)
    long_answer = " ".join(f"word{i}" for i in range(6000))  # far past tiny-random's 2048 positions
    inters = [interaction("short"), interaction("long", answer=long_answer), interaction("short2")]
    cfg = SelfEditConfig(strategies=["implications", "self_qa"], samples=1, max_new_tokens=4, heldout_fraction=0.0)
    batch = generate_self_edits(inters, model, cfg, progress=False)
    assert batch.dropped["teacher_error"] == 2  # the long exchange's two jobs, nothing else
    assert len(batch.errors) == 2 and all("interaction long" in e and "context" in e for e in batch.errors)
    asyn = asyncio.run(agenerate_self_edits(inters, model, cfg, progress=False))
    assert asyn.dropped["teacher_error"] == 2


MISO = ({"role": "user", "content": "Please remember this: my cat is called Miso."},
        {"role": "assistant", "content": "Miso is a Japanese word that means cat."})


def test_provenance_a_guess_nobody_confirmed_is_never_trained_on() -> None:
    """Issue 20, provenance: the 135M model's reply to a user's fact adds words nobody
    said; the self-edits learn the user's words and not the reply, until the user
    confirms it (feedback > 0). A reply the user marked wrong is never learned."""
    guess = interaction(messages=MISO, feedback=None)
    assert stated_text(guess) == "Please remember this: my cat is called Miso."
    [edit] = get_self_edit_strategy("statements").generate(guess, None, SelfEditConfig()).edits
    assert "Japanese" not in json.dumps(edit.example)
    confirmed = interaction(messages=MISO, feedback=1.0)
    assert "Japanese" in stated_text(confirmed)
    assert "Japanese" not in stated_text(interaction(messages=MISO, feedback=-1.0))


@pytest.mark.parametrize(("messages", "learned"), [
    # grounded in the user's words (acknowledgement words aside)
    (({"role": "user", "content": "My cat is called Miso."},
      {"role": "assistant", "content": "Got it, your cat is called Miso!"}), True),
    # grounded in a tool result
    (({"role": "user", "content": "What's the weather in Oslo?"},
      {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}]},
      {"role": "tool", "content": "Oslo: 4 degrees, light snow", "tool_call_id": "c1", "name": "weather"},
      {"role": "assistant", "content": "It is 4 degrees with light snow in Oslo."}), True),
    # the model's own knowledge, nobody said it
    (({"role": "user", "content": "What is the capital of Zorbia?"},
      {"role": "assistant", "content": "The capital of Zorbia is Quxville."}), False),
])
def test_provenance_grounded_replies_are_knowledge(messages: Any, learned: bool) -> None:
    from seal_agent.memory.provenance import reply_is_knowledge

    inter = interaction(messages=messages, feedback=None)
    reply = messages[-1]["content"]
    assert reply_is_knowledge(reply, inter.messages, None) is learned
    assert (reply in stated_text(inter)) is learned
