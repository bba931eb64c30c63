"""Self-edit strategies: parsing of well-formed and malformed model output, filters and
their drop counts, the registry, routing, held-out probes, dedup, cancellation, async."""

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
from seal_agent.errors import NotFoundError, ValidationError
from seal_agent.memory.records import Interaction, content_hash, task_and_outcome, utc_now
from seal_agent.selfedit import (
    SelfEditBatch,
    SelfEditStrategy,
    agenerate_self_edits,
    base,
    generate_self_edits,
    get_self_edit_strategy,
    is_degenerate,
    register_self_edit_strategy,
    self_edit_strategies,
)
from seal_agent.selfedit.critique import parse_refined_answer
from seal_agent.selfedit.self_qa import parse_qa_pairs
from seal_agent.training.data import validate_examples

FACT = "The office wifi password is tulip-42 and the router sits in room 3B."


def interaction(
    id: str = "i1",
    *,
    task: str = "What is the office wifi password?",
    answer: str = FACT,
    feedback: float | None = None,
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
    if "implications" in prompt:
        return "Implications:\n1. The wifi password is tulip-42.\n- The router is in room 3B."
    if "question-answer pairs" in prompt:
        return ("Q: What is the office wifi password?\nA: tulip-42\n\n"
                "Q: Where is the router?\nA: In room 3B.\n\n"
                "Q: Which room holds the office router?\nA: Room 3B.\n\n"
                "Q: Is tulip-42 the wifi password?\nA: Yes, it is.")
    if "Restate" in prompt:
        return "Rewritten passage: The password for the office wifi is tulip-42; the router is in 3B."
    if "Refined answer" in prompt:
        return "Critique: it guessed.\nRefined answer: The password is tulip-42."
    return "???"


CFG = SelfEditConfig(strategies=["implications", "rewrite", "self_qa", "raw"], heldout_fraction=0.25)


def run(strategy: str, reply: str, inter: Interaction | None = None, **config: Any) -> SelfEditBatch:
    cfg = SelfEditConfig(**config)
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
    passage = "User: What is the office wifi password?\nAssistant: " + FACT
    assert texts(batch) == ["The wifi password is tulip-42.", "The router is in room 3B.", passage]
    assert {e.strategy for e in batch.edits} == {"implications"}
    assert batch.dropped == {}
    validate_examples(batch.examples)


def test_implications_prompt_contains_the_passage_and_tool_results() -> None:
    inter = interaction(messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}]},
        {"role": "tool", "content": "-3C and snowing", "tool_call_id": "c1", "name": "weather"},
        {"role": "assistant", "content": "It is -3C and snowing in Oslo."},
    ])
    prompt = get_self_edit_strategy("implications").build_prompt(inter)
    assert prompt is not None and isinstance(prompt[0], HumanMessage)
    assert "Tool result (weather): -3C and snowing" in prompt[0].text
    assert "User: Weather in Oslo?" in prompt[0].text and "You are terse" not in prompt[0].text


def test_implications_malformed_counts_drops() -> None:
    reply = "\n".join([
        "Implications:",
        "ok",  # too short (min_item_chars=8)
        "The wifi password is tulip-42.",
        "- The wifi password is tulip-42.",  # duplicate once the bullet is stripped
        "go go go go go go go go go go go go go go",  # degenerate
        " ".join(f"word{i}" for i in range(200)),  # too long (> max_item_chars=1000)
        "The router is in room 3B.",
        "Guests use the separate lobby network.",
        "Printing needs the office VPN.",
    ])
    batch = run("implications", reply, max_items_per_interaction=2)
    assert texts(batch)[:2] == ["The wifi password is tulip-42.", "The router is in room 3B."]
    assert len(batch.edits) == 3  # two capped implications + the passage
    assert batch.dropped == {"too_short": 1, "duplicate": 1, "degenerate": 1, "too_long": 1, "over_cap": 2}


@pytest.mark.parametrize(("reply", "reason"), [("", "empty"), ("   \n\n", "empty"), ("Implications:\n\n- \n", "unparseable")])
def test_implications_empty_or_unparseable_keeps_the_passage(reply: str, reason: str) -> None:
    batch = run("implications", reply)
    assert batch.dropped == {reason: 1}
    assert len(batch.edits) == 1 and texts(batch)[0].startswith("User: What is the office wifi password?")


# --------------------------------------------------------------------------- rewrite


@pytest.mark.parametrize("reply", [
    "The password for the office wifi is tulip-42.",
    "Rewritten passage: The password for the office wifi is tulip-42.",
    "**Rewrite:**\nThe password for the office wifi is tulip-42.\n",
    "Here is the restated passage:\nThe password for the office wifi is tulip-42.",
])
def test_rewrite_well_formed(reply: str) -> None:
    batch = run("rewrite", reply)
    assert texts(batch)[0] == "The password for the office wifi is tulip-42."
    assert len(batch.edits) == 2 and batch.dropped == {}


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


def test_self_qa_heldout_split_is_deterministic_and_disjoint() -> None:
    reply = "\n\n".join(f"Q: What is fact number {i}?\nA: Fact {i} is true." for i in range(8))
    cfg = {"heldout_fraction": 0.25, "seed": 3}
    first, second = run("self_qa", reply, **cfg), run("self_qa", reply, **cfg)
    assert len(first.probes) == 2 and len(first.edits) == 6
    assert first.probes == second.probes and first.edits == second.edits
    trained = {e.example["messages"][0]["content"] for e in first.edits}
    assert not trained & {p.question for p in first.probes}
    assert {p.hash for p in first.probes}.isdisjoint(e.hash for e in first.edits)
    assert all(p.namespace == ("users", "alice") and p.interaction_id == "i1" for p in first.probes)
    other_seed = run("self_qa", reply, heldout_fraction=0.25, seed=4)
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
    batch = get_self_edit_strategy("critique").generate(inter, model, SelfEditConfig())
    prompt = model.prompts[0][0].text
    assert "-1.00" in prompt and "the tool told you!" in prompt and "Assistant: I don't know." in prompt
    (edit,) = batch.edits
    messages = edit.example["messages"]
    assert messages[-1] == {"role": "assistant", "content": "The password is tulip-42."}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert "I don't know." not in json.dumps(messages)
    assert edit.strategy == "critique" and batch.dropped == {}
    validate_examples(batch.examples)


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
    cfg = SelfEditConfig(strategies=["shout", "named"])
    batch = generate_self_edits([interaction()], ScriptedChatModel(["loud words", "other words"]), cfg, progress=False)
    assert [(e.strategy, e.example["text"]) for e in batch.edits] == [("shout", "LOUD WORDS"), ("named", "OTHER WORDS")]


@pytest.mark.usefixtures("registry")
def test_registry_errors() -> None:
    with pytest.raises(NotFoundError, match=r"'nope'.*known: critique, implications, raw, rewrite, self_qa"):
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
    # rewrite keeps the same passage implications kept: one copy survives
    assert batch.dropped == {"duplicate": 1}
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
    batch = generate_self_edits([interaction()], FnChatModel(fn=lambda p: "%%%", calls=[]),
                                SelfEditConfig(strategies=["self_qa", "rewrite"]), progress=False)
    assert batch.dropped == {"unparseable": 1, "too_short": 1}
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
        return by_strategy(prompt)

    model = FnChatModel(fn=cancel_after_first, calls=[])
    inters = [interaction(str(i), answer=f"Fact {i}: the meeting room {i} has a projector.") for i in range(5)]
    batch = generate_self_edits(inters, model, SelfEditConfig(strategies=["implications", "raw"]),
                                progress=False, cancel_event=cancel)
    assert batch.cancelled and len(model.calls) == 1
    assert {e.interaction_id for e in batch.edits} == {"0"}


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
