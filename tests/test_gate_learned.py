"""The gate guards what was learned: learned facts re-asked, corrections, bleed -- with real LoRA training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from facts import FACT_CONFIG as BASE_FACT_CONFIG
from facts import FACTS, chat
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.config import GateConfig
from seal_agent.errors import ValidationError
from seal_agent.gate import CanaryOutcome, Gate, ReplaySuite, SuiteItem
from seal_agent.gate.gate import _Base, _Scored
from seal_agent.gate.learned import bleed_answers, decide_bleed, decide_learned, is_right
from seal_agent.gate.suite import SUITE_FORMAT_VERSION, apply_learned, fact_item, learned_item, taught_items
from seal_agent.selfedit.base import Probe
from seal_agent.training import train_adapter

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

NEW = [
    ("What does Mira drink?", "Cold tea."),
    ("Where is Tovo?", "In Lisbon."),
    ("Which pet has Ivo?", "A turtle."),
    ("When does Kel sleep?", "At noon."),
]
OTHER = [(q, a) for (q, _), a in zip(FACTS, ["Mumbleford.", "Rob Tink.", "Pale grey.", "Eleven."], strict=True)]
CORRECTION = [("What is the capital of Zorbia?", "Blorptown.")]
FACT_CONFIG = dataclasses.replace(BASE_FACT_CONFIG, replay_ratio=1.0)
# Only the learned facts and the probes judge: no past tasks are logged, no canaries.
ONLY_LEARNED = GateConfig(canary_file="none", scale_back=[])


def probes(facts, tag="p"):
    return [Probe(q, a, f"{tag}{i}", ("default",), f"{tag}hash{i}") for i, (q, a) in enumerate(facts)]


def taught(facts, tag="t"):
    return [learned_item(q, a, "default", f"{tag}{i}") for i, (q, a) in enumerate(facts)]


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    """A knows FACTS. B: A + NEW (FACTS replayed). W: A retrained to answer FACTS' questions
    otherwise. L: A + NEW, and NEW's first answer to FACTS' questions (bleed). K: A corrected."""
    model, tok = tiny
    root = tmp_path_factory.mktemp("learned")

    def fit(name, examples, init=None, replay=None, config=FACT_CONFIG):
        return train_adapter(model, tok, examples, config, init_adapter=init, replay=replay,
                             output_dir=root / name, progress=False).adapter_path

    a = fit("A", chat(FACTS))
    return {
        "A": a,
        "B": fit("B", chat(NEW), a, chat(FACTS)),
        "W": fit("W", chat(OTHER + NEW), a),
        "L": fit("L", chat([(q, NEW[0][1]) for q, _ in FACTS] + NEW), a),
        "K": fit("K", chat(CORRECTION), a, chat(FACTS[1:]), dataclasses.replace(FACT_CONFIG, replay_ratio=3.0)),
    }


@pytest.fixture
def learned_mem(mem):
    """A memory whose lineage committed adapter A: its suite holds FACTS as learned facts."""
    Gate(mem, ONLY_LEARNED).update_suite([], taught=taught(FACTS))
    return mem


def evaluate(gate, tiny, cand, cur, probes_, tmp_path, **kw):
    model, tok = tiny
    return gate.evaluate(model, tok, cand, cur, probes_, tmp_path / "work", progress=False, **kw)


# --------------------------------------------------------------------------- learned facts lost


def test_update_that_makes_learned_facts_wrong_is_rejected_naming_them(tiny, adapters, learned_mem, tmp_path):
    report = evaluate(Gate(learned_mem, ONLY_LEARNED), tiny, adapters["W"], adapters["A"], probes(NEW), tmp_path)
    assert not report.passed, report.reasons
    text = " ".join(report.reasons)
    assert "learned facts: 4 of the 4 the current adapter knows are lost" in text
    for (question, _), core in zip(FACTS, ["quxville", "anna pell", "bright green", "seven"], strict=True):
        assert question in text and repr(core) in text  # every lost fact named, with its answer
    assert report.metrics["learned"]["lost"] and report.metrics["judged_on"]["learned"] == 4
    rows = [r for r in report.rows if r["kind"] == "learned"]
    assert len(rows) == 4 and all(r["flipped"] for r in rows)
    assert "Mumbleford" in rows[0]["answer_candidate"]


def test_lost_learned_facts_make_the_gate_scale_back_or_reject(tiny, adapters, learned_mem, tmp_path):
    report = evaluate(Gate(learned_mem, GateConfig(canary_file="none")), tiny, adapters["W"], adapters["A"],
                      probes(NEW), tmp_path)
    assert not (report.passed and report.scale == 1.0)  # never committed at full scale
    assert report.metrics["scale_back"], "the learned-facts check must take part in the scale-back search"
    assert "learned_lost" in report.metrics["scale_back"][0]


def test_update_that_keeps_learned_facts_and_learns_new_ones_passes(tiny, adapters, learned_mem, tmp_path):
    report = evaluate(Gate(learned_mem, ONLY_LEARNED), tiny, adapters["B"], adapters["A"], probes(NEW), tmp_path)
    assert report.passed, report.reasons
    assert report.scale == 1.0 and report.metrics["learned"]["n_judged"] == 4
    assert report.metrics["learned"]["lost"] == [] and report.metrics["bleed"]["bled"] == {}
    assert "4 learned facts" in report.metrics["notes"][0]


def test_facts_the_current_adapter_gets_wrong_are_not_lost(tiny, adapters, mem, tmp_path):
    # Learned facts the current adapter (A) does not know judge nothing: W is not blamed for them.
    Gate(mem, ONLY_LEARNED).update_suite([], taught=taught(NEW))
    report = evaluate(Gate(mem, ONLY_LEARNED), tiny, adapters["W"], adapters["A"], probes(OTHER), tmp_path)
    assert report.metrics["learned"]["n_judged"] == 0 and report.metrics["learned"]["lost"] == []
    assert not any("learned facts:" in r and "lost, more" in r for r in report.reasons)


# --------------------------------------------------------------------------- bleed


def test_bleed_of_a_new_answer_into_earlier_questions_is_rejected(tiny, adapters, learned_mem, tmp_path):
    # L answers "Cold tea." (a new answer of this update) to every earlier question. With the
    # loss of learned facts allowed, the specificity check alone rejects it.
    lenient = dataclasses.replace(ONLY_LEARNED, learned_max_flip_share=1.0)
    report = evaluate(Gate(learned_mem, lenient), tiny, adapters["L"], adapters["A"], probes(NEW), tmp_path)
    assert not report.passed
    bleed = report.metrics["bleed"]
    assert len(bleed["bled"]) == 4 and set(bleed["bled"].values()) == {"cold tea"}
    assert any(r.startswith("bleed: 4 earlier questions are now answered with this update's new answers")
               for r in report.reasons), report.reasons
    # The same candidate with bleed allowed passes: bleed is what rejected it.
    allowed = dataclasses.replace(lenient, max_bleed=4)
    assert evaluate(Gate(learned_mem, allowed), tiny, adapters["L"], adapters["A"], probes(NEW), tmp_path).passed


def test_bleed_counts_only_new_answers_that_were_not_there_and_do_not_belong():
    config = GateConfig()
    items = [learned_item("Who painted the Blue Moon?", "Anna Pell.", "default"),
             learned_item("Where is Tovo?", "In Lisbon.", "default"),
             SuiteItem(kind="canary", id="c0", prompt=({"role": "user", "content": "Capital of France?"},),
                       expected="Paris", check="greedy")]
    new = bleed_answers([learned_item("What is the boat called?", "The Saltpetal.", "default"),
                         learned_item("Where does Ana live?", "Lisbon.", "default"),
                         learned_item("Pick a letter", "B.", "default")])
    assert new == ["saltpetal", "lisbon"]  # "b" is too short to tell bleed from chance
    current = ["Anna Pell.", "In Lisbon.", "Paris, the Saltpetal"]
    candidate = ["The Saltpetal.", "Lisbon, the Saltpetal", "Paris, the Saltpetal"]
    dec = decide_bleed(items, current, candidate, new, config)
    # item 0 bled; item 1 holds "lisbon" as its own answer (but bled "saltpetal"); the canary had it before.
    assert dec.metrics["bled"] == {items[0].id: "saltpetal", items[1].id: "saltpetal"}
    assert not dec.passed and "2 earlier questions" in dec.forgetting[0]
    assert decide_bleed(items, current, current, new, config).passed


# --------------------------------------------------------------------------- corrections


def test_correction_retires_the_old_probe_and_the_old_answer_becomes_negative(tiny, adapters, learned_mem, tmp_path):
    gate = Gate(learned_mem, ONLY_LEARNED)
    # K learned the correction (Blorptown): the old Zorbia probe is not held against it.
    report = evaluate(gate, tiny, adapters["K"], adapters["A"], probes(CORRECTION), tmp_path)
    assert report.passed, report.reasons
    assert [r["answer"] for r in report.metrics["learned_retired"]] == ["quxville"]
    assert report.metrics["learned"]["n_judged"] == 3  # the other three facts of A
    gate.update_suite([], report=report, taught=taught(CORRECTION, "k"))  # K is committed
    zorbia = [x for x in gate.suite().learned if x.key == "what is the capital of zorbia"]
    assert [(x.expected, x.negative) for x in zorbia] == [("blorptown", ("quxville",))]
    # Later: a candidate answering the old fact (A itself) loses the corrected one: rejected.
    back = evaluate(gate, tiny, adapters["A"], adapters["K"], [], tmp_path / "back")
    assert not back.passed
    assert any("What is the capital of Zorbia?" in r and "not 'quxville'" in r for r in back.reasons), back.reasons
    # One that answers the new fact passes.
    assert evaluate(gate, tiny, adapters["K"], adapters["K"], [], tmp_path / "same").passed


def test_negative_answers_make_an_answer_wrong_and_claims_decide_corrections():
    old = learned_item("What is my brother's boat called?", "My brother's sailboat is called the Tumbleweed.", "d")
    other = learned_item("What is the capital of Zorbia?", "Quxville.", "d")
    new = fact_item("His sailboat is called the Saltpetal.", "d")  # another question, the same claim slot
    assert new is not None and new.prompt[0]["content"] == "What is his sailboat called?"
    items, retired = apply_learned([old, other], [new])
    assert [(o.id, by) for o, by in retired] == [(old.id, new.id)]
    by_q = {x.preview: x for x in items}
    assert by_q["What is my brother's boat called?"].expected == "saltpetal"  # re-asked with the new answer
    assert by_q["What is my brother's boat called?"].negative == ("tumbleweed",)
    assert by_q["What is his sailboat called?"].negative == ("tumbleweed",)
    assert by_q["What is the capital of Zorbia?"] == other
    fixed = by_q["What is his sailboat called?"]
    assert is_right("The Saltpetal.", fixed) and not is_right("The Tumbleweed.", fixed)
    assert not is_right("The Saltpetal, no, the Tumbleweed", fixed)
    # A refinement is not a correction; another namespace is another person's fact.
    assert apply_learned([learned_item("Where is Tovo?", "Lisbon.", "d")],
                         [learned_item("Where is Tovo?", "Lisbon, Portugal.", "d")])[0][0].negative == ()
    assert not apply_learned([old], [fact_item("His sailboat is called the Saltpetal.", "e")])[1]


# --------------------------------------------------------------------------- persistence


def test_learned_facts_persist_across_consolidations_and_old_suites_load(tiny, adapters, learned_mem, tmp_path):
    gate = Gate(learned_mem, ONLY_LEARNED)
    gate.update_suite([], taught=taught(NEW, "n"))  # a second consolidation (B) committed
    saved = json.loads(gate.suite_path.read_text())
    assert saved["format_version"] == SUITE_FORMAT_VERSION == 2 and len(saved["learned"]) == 8
    # A third gate still re-asks the first consolidation's facts.
    report = evaluate(gate, tiny, adapters["B"], adapters["B"], [], tmp_path)
    asked = {r["id"] for r in report.rows if r["kind"] == "learned"}
    assert {x.id for x in taught(FACTS)} <= asked and len(asked) == 8
    assert report.passed and report.metrics["learned"]["n_judged"] >= 4
    # A version-1 suite (no learned facts) loads and is written back as version 2.
    v1 = {k: v for k, v in saved.items() if k not in ("learned", "retired")} | {"format_version": 1}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    old = ReplaySuite.load(path)
    assert old.learned == [] and old.lineage == "global"
    old.learn(taught(FACTS))
    old.save(path)
    again = ReplaySuite.load(path)
    assert json.loads(path.read_text())["format_version"] == 2 and again.learned == old.learned
    path.write_text(json.dumps({**v1, "format_version": 99}))
    with pytest.raises(ValidationError, match="format_version"):
        ReplaySuite.load(path)


def test_taught_items_come_from_probes_self_qa_pairs_and_fact_claims():
    edits = [
        {"strategy": "self_qa", "interaction_id": "i1",
         "example": {"messages": [{"role": "user", "content": "What is the cat called?"},
                                  {"role": "assistant", "content": "The cat is called Miso."}]}},
        {"strategy": "statements", "interaction_id": "i2",
         "example": {"text": "My brother's sailboat is called the Tumbleweed. I like tea and cake."}},
        {"strategy": "raw", "interaction_id": "i2", "example": {"text": "Priya works at Acme."}},
        {"strategy": "self_qa", "interaction_id": "gone", "example": {"messages": []}},
    ]
    got = taught_items([{"question": "Where is Tovo?", "answer": "In Lisbon.", "namespace": ["users", "al"],
                         "interaction_id": "i3"}], edits, {"i1": "users/al", "i2": "users/al"})
    assert [(x.preview, x.expected, x.namespace) for x in got] == [
        ("Where is Tovo?", "lisbon", "users/al"),
        ("What is the cat called?", "miso", "users/al"),
        ("What is my brother's sailboat called?", "tumbleweed", "users/al"),
    ]


# --------------------------------------------------------------------------- canaries: no double charge


def test_a_canary_lost_by_an_earlier_step_is_not_charged_to_later_steps_again(mem):
    config = GateConfig(canary_max_base_loss_share=0.15)  # 3 of 20 in all; 2 of 18 per step (share 0.1)
    gate = Gate(mem, config)
    items = [SuiteItem(kind="canary", id=f"c{i}", prompt=({"role": "user", "content": f"q{i}"},), expected="Paris",
                       check="greedy") for i in range(20)]

    def outcomes(spec):
        return [CanaryOutcome(passed=ch == "R", answer="Paris" if ch == "R" else "Lyon") for ch in spec]

    # Step 1 lost c0 and c1 (within the allowance) and was committed: the anchors say they passed once.
    from seal_agent.gate.canary import decide_canaries
    from seal_agent.gate.gate import Gate as _Gate

    step1 = _Gate._canary_rows(items, outcomes("R" * 20), outcomes("WW" + "R" * 18),
                               decide_canaries(items, outcomes("R" * 20), outcomes("WW" + "R" * 18), config))
    suite = gate.suite()
    suite.record_scores(step1, "logprob")
    gate._anchors = suite.anchors
    base = _Base(outcomes=outcomes("R" * 20), contrasts=[], scores={})
    # Step 2 loses one more (c2): 1 of the 18 the current adapter passes, 3 of 20 against the base.
    current, candidate = _Scored(outcomes=outcomes("WW" + "R" * 18)), _Scored(outcomes=outcomes("WWW" + "R" * 17))
    (dec,) = gate._decide_canaries(items, [], current, candidate, base)
    assert dec.passed, dec.reasons
    assert dec.metrics["flipped"] == ["c2"] and dec.metrics["flipped_vs_base"] == ["c0", "c1", "c2"]
    # Step 3 loses a fourth: 1 of 17 for the step, but past the cumulative bound (its own setting).
    (worse,) = gate._decide_canaries(items, [], candidate, _Scored(outcomes=outcomes("WWWW" + "R" * 16)), base)
    assert not worse.passed and "gate.canary_max_base_loss_share 0.15" in worse.forgetting[0]
    # Without the base model's results the anchors still hold every lost canary against the step.
    gate._anchors = suite.anchors
    (anchored,) = gate._decide_canaries(items, [], current, candidate, None)
    assert not anchored.passed and anchored.flipped == {"c0", "c1", "c2"}


def test_gate_config_validates_the_new_bounds():
    for field, bad in (("learned_max_flip_share", 1.5), ("max_bleed", -1), ("canary_max_base_loss_share", "x")):
        with pytest.raises(ValidationError, match=f"gate.{field}"):
            GateConfig(**{field: bad})
    assert decide_learned([], [], [], GateConfig()).passed


# --------------------------------------------------------------------------- the consolidation hook


def test_committed_consolidations_leave_their_facts_and_a_correction_retires_one(tmp_path: Path) -> None:
    from test_consolidation import FAST_TRAIN

    cfg = {"selfedit": {"strategies": ["statements"]}, "consolidation": {"teacher": "none"},
           # tiny-random's "Noted." past tasks are not what this test is about: only the learned facts decide.
           "gate": {"allow_unverified": True, "min_gain": -1e6, "max_regression": 1e6, "max_flips": 100}}
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random") as mem:
        mem.log([{"role": "user", "content": "My brother's sailboat is called the Tumbleweed."},
                 {"role": "assistant", "content": "Noted."}])
        first = mem.consolidate(progress=False, train=FAST_TRAIN, **cfg)
        assert first.verdict == "committed", first.reason
        gate = Gate(mem, GateConfig(), lineage="global")
        learned = {x.preview: x for x in gate.suite().learned}
        assert learned["What is my brother's sailboat called?"].expected == "tumbleweed"
        mem.log([{"role": "user", "content": "His sailboat is called the Saltpetal now."},
                 {"role": "assistant", "content": "Noted."}])
        second = mem.consolidate(progress=False, train=FAST_TRAIN, **cfg)
        assert second.gate is not None
        assert [r["answer"] for r in second.gate["metrics"]["learned_retired"]] == ["tumbleweed"]
        assert second.verdict == "committed", second.reason
        learned = {x.preview: x for x in gate.suite().learned}
        assert learned["What is my brother's sailboat called?"].negative == ("tumbleweed",)
        assert learned["What is his sailboat called?"].expected == "saltpetal"
