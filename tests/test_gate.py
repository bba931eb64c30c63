"""The validation gate: replay suite, scorers, decision, scale-back, reports -- with real training."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from facts import FACT_CONFIG as BASE_FACT_CONFIG
from facts import FACTS, chat
from fakes import HashEmbeddings, ScriptedChatModel

from seal_agent import SealMemory
from seal_agent.config import GateConfig, TrainConfig
from seal_agent.errors import ValidationError
from seal_agent.gate import (
    CanaryOutcome,
    Gate,
    GateReport,
    ReplaySuite,
    SuiteItem,
    answer_contains,
    canary_outcomes,
    decide_canaries,
    load_canaries,
    render_report,
    shipped_canary_file,
    write_scaled_adapter,
)
from seal_agent.gate.canary import allowed_flips
from seal_agent.gate.decision import NO_PAST_NOTE, paired_bootstrap_ci
from seal_agent.gate.scale import lora_deltas
from seal_agent.gate.scorers import normalize_answer, token_f1
from seal_agent.gate.suite import canary_anchor_key, normalize_text
from seal_agent.selfedit.base import Probe
from seal_agent.training import train_adapter

# peft calls a transformers API deprecated in v5; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TINYSTORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "tinystories-260k"

NEW = [
    ("What does Mira drink?", "Cold tea."),
    ("Where is Tovo?", "In Lisbon."),
    ("Which pet has Ivo?", "A turtle."),
    ("When does Kel sleep?", "At noon."),
]
FACT_CONFIG = dataclasses.replace(BASE_FACT_CONFIG, replay_ratio=1.0)


def probes(facts, tag="p"):
    return [Probe(q, a, f"{tag}{i}", ("default",), f"{tag}hash{i}") for i, (q, a) in enumerate(facts)]


def log_consolidated(mem: SealMemory, facts, version="v0001") -> list[str]:
    ids = [mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in facts]
    mem.mark(ids, "consolidated", version=version)
    return ids


@pytest.fixture(scope="module")
def adapters(tiny, tmp_path_factory):
    """A: knows FACTS (the current adapter). B: continued from A on NEW with replay of FACTS."""
    model, tok = tiny
    root = tmp_path_factory.mktemp("adapters")
    a = train_adapter(model, tok, chat(FACTS), FACT_CONFIG, output_dir=root / "A", progress=False).adapter_path
    b = train_adapter(model, tok, chat(NEW), FACT_CONFIG, init_adapter=a, replay=chat(FACTS),
                      output_dir=root / "B", progress=False).adapter_path
    return a, b


@pytest.fixture
def fact_mem(mem):
    log_consolidated(mem, FACTS)
    return mem


def evaluate(gate, tiny, cand, cur, probes_, tmp_path):
    model, tok = tiny
    return gate.evaluate(model, tok, cand, cur, probes_, tmp_path / "work", progress=False)


# --------------------------------------------------------------------------- verdicts


def test_destructive_update_is_rejected_naming_the_regressed_items(tiny, adapters, fact_mem, tmp_path):
    model, tok = tiny
    a, _ = adapters
    docs = [{"text": "the cat sat on the mat and the dog ran in the park " * 4}] * 4
    wreck = train_adapter(model, tok, docs, TrainConfig(learning_rate=5e-2, epochs=30, batch_size=4, lora_rank=8),
                          init_adapter=a, output_dir=tmp_path / "D", progress=False).adapter_path
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = evaluate(Gate(fact_mem, GateConfig()), tiny, wreck, a, probes(NEW), tmp_path)
    assert not report.passed and report.adapter_dir is None
    text = " ".join(report.reasons)
    assert "mean replay score fell" in text and "right to wrong" in text
    for question, _ in FACTS:
        assert question in text  # every regressed past task is named
    assert report.metrics["flips"] == 4 and report.metrics["replay_delta"] < -1.0
    lo, hi = report.metrics["replay_delta_ci"]
    assert lo <= report.metrics["replay_delta"] <= hi
    assert {r["kind"] for r in report.rows} == {"past", "probe"} and sum(r["flipped"] for r in report.rows) == 4
    # The gate unloads its LoRA layers: the base model is as it came.
    assert not any("lora" in n for n, _ in model.named_modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_benign_update_teaching_new_facts_passes(tiny, adapters, fact_mem, tmp_path):
    a, b = adapters
    report = evaluate(Gate(fact_mem, GateConfig()), tiny, b, a, probes(NEW), tmp_path)
    assert report.passed, report.reasons
    assert report.scale == 1.0 and report.adapter_dir == b
    assert report.metrics["probe_gain"] > 1.0 and report.metrics["n_past"] == 4
    assert report.metrics["seconds"] > 0 and "score_candidate_seconds" in report.metrics["timings"]


def test_knowledge_update_is_not_flagged_as_forgetting(tiny, adapters, fact_mem, tmp_path):
    model, tok = tiny
    a, _ = adapters
    # A later conversation corrects the first fact (logged, not yet consolidated).
    correction = [("What is the capital of Zorbia?", "Blorptown.")]
    new_id = fact_mem.log([{"role": "user", "content": correction[0][0]},
                           {"role": "assistant", "content": correction[0][1]}])
    cfg = dataclasses.replace(FACT_CONFIG, replay_ratio=3.0)  # one new example: replay all three others
    cand = train_adapter(model, tok, chat(correction), cfg, init_adapter=a, replay=chat(FACTS[1:]),
                         output_dir=tmp_path / "K", progress=False).adapter_path
    gate = Gate(fact_mem, GateConfig())
    report = evaluate(gate, tiny, cand, a, probes(correction), tmp_path)
    assert report.passed, report.reasons
    old_id = fact_mem.list(status="consolidated")[0].id
    assert report.metrics["superseded"] == [{"id": old_id, "superseded_by": new_id}]
    assert report.metrics["n_past"] == 3 and old_id not in {r["id"] for r in report.rows}
    assert any("superseded" in r for r in report.reasons)
    # After the commit the suite itself drops the old answer for good.
    fact_mem.mark([new_id], "consolidated", version="v0002")
    assert gate.update_suite([fact_mem.get(new_id)]) == 1
    suite = gate.suite()
    assert old_id not in {it.id for it in suite.items} and new_id in {it.id for it in suite.items}
    assert suite.dropped[-1] == {"id": old_id, "superseded_by": new_id}


def test_scale_back_commits_a_partial_update_where_the_full_one_fails(tiny, adapters, fact_mem, tmp_path):
    from safetensors.torch import load_file, save_file

    a, b = adapters
    # The benign candidate plus a deterministic random perturbation of its B factors:
    # it still learned NEW but damages FACTS; a fraction of it keeps most of both.
    weights = load_file(str(b / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if "lora_B" in k else v
             for k, v in weights.items()}
    cand = tmp_path / "noisy"
    cand.mkdir()
    shutil.copy(b / "adapter_config.json", cand)
    save_file(noisy, str(cand / "adapter_model.safetensors"))
    config = GateConfig(max_regression=0.2, scale_back=[0.5, 0.25])
    report = evaluate(Gate(fact_mem, config), tiny, cand, a, probes(NEW), tmp_path)
    assert report.passed, report.reasons
    assert report.scale == 0.25  # the largest that passes: 0.5 was tried first and failed
    assert [(x["scale"], x["passed"]) for x in report.metrics["scale_back"]] == [(0.5, False), (0.25, True)]
    assert report.adapter_dir is not None and report.adapter_dir.parent == tmp_path / "work"
    assert (report.adapter_dir / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "work" / "candidate-scale-0.5").exists()  # failed attempt cleaned up
    assert report.metrics["candidate_full"]["replay_delta"] < -0.2 <= report.metrics["replay_delta"]
    assert report.metrics["probe_gain"] > 0
    assert any("full update rejected" in r for r in report.reasons)
    assert json.loads((report.adapter_dir / "adapter_config.json").read_text())["r"] == 8  # rank kept


def _random_adapter(model, path: Path, *, seed: int, r: int, alpha: int, rslora: bool = False,
                    b_std: float = 0.05) -> Path:
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear",
                                                             use_rslora=rslora))
        for name, p in pm.named_parameters():
            if "lora_B" in name and b_std > 0:
                p.data.normal_(0, b_std)  # B starts at zero: make the delta non-trivial
    pm.save_pretrained(str(path))
    return path


def test_scaled_adapter_equals_interpolated_merged_weights(tiny, tmp_path):
    from peft import PeftModel

    model, tok = tiny
    cur = _random_adapter(model, tmp_path / "cur", seed=1, r=4, alpha=8)
    cand = _random_adapter(model, tmp_path / "cand", seed=2, r=8, alpha=16, rslora=True)
    ids = tok("Once upon a time the cat", return_tensors="pt")["input_ids"]

    def merged_logits(s: float, with_current: bool) -> torch.Tensor:
        # W + (1 - s) dW_cur + s dW_cand, written straight into a copy of the base weights.
        base = copy.deepcopy(model)
        sd = base.state_dict()
        d_cur, d_cand = (lora_deltas(cur) if with_current else {}), lora_deltas(cand)
        for mod, d in d_cand.items():
            key = mod.removeprefix("base_model.model.") + ".weight"
            sd[key] = sd[key] + s * d + ((1 - s) * d_cur[mod] if with_current else 0)
        base.load_state_dict(sd)
        return base(ids).logits

    with torch.no_grad():
        for s in (0.5, 0.25):
            for current in (cur, None):
                out = write_scaled_adapter(cand, current, s, tmp_path / f"s{s}-{current is None}")
                got = PeftModel.from_pretrained(copy.deepcopy(model), str(out["path"]))(ids).logits
                assert (got - merged_logits(s, current is not None)).abs().max() < 1e-4
                cfg = json.loads((out["path"] / "adapter_config.json").read_text())
                assert cfg["bias"] == "none" and not cfg.get("modules_to_save")
                assert out["rank"] == (12 if current is not None else 8) and out["truncation_error"] == 0.0
        # Capped rank: an SVD truncation, reported, still a loadable adapter of that rank.
        out = write_scaled_adapter(cand, cur, 0.5, tmp_path / "capped", max_rank=8)
        assert out["rank"] == 8 and 0 < out["truncation_error"] < 1
        got = PeftModel.from_pretrained(copy.deepcopy(model), str(out["path"]))(ids).logits
        assert torch.isfinite(got).all()
    with pytest.raises(ValidationError, match="scale"):
        write_scaled_adapter(cand, cur, 1.5, tmp_path / "bad")


# --------------------------------------------------------------------------- tinystories


@pytest.mark.skipif(not TINYSTORIES.is_dir(), reason="../shared/models/tinystories-260k is absent")
def test_tinystories_story_canary_rejects_a_wreck_and_passes_a_light_update(mem, tmp_path):
    from seal_agent.model import load_model

    model, tok = load_model(str(TINYSTORIES), device="cpu")
    canaries = tmp_path / "canaries.jsonl"
    canaries.write_text("\n".join(json.dumps(c) for c in [
        {"id": "story", "raw": True, "prompt": "Once upon a time, there was a little girl named Lily.",
         "expected": " She loved to play outside in the park."},
        {"id": "story-2", "raw": True, "prompt": "Tom had a big red ball.",
         "expected": " He liked to play with it every day."},
    ]) + "\n")
    gate = Gate(mem, GateConfig(canary_file=str(canaries), canary_tolerance=0.3, scale_back=[]))
    noise = [{"text": "zq xv kj qq zx vv jj kk qz xq " * 3}] * 4
    wreck = train_adapter(model, tok, noise, TrainConfig(learning_rate=3e-2, epochs=30, batch_size=4, lora_rank=8),
                          output_dir=tmp_path / "wreck", progress=False).adapter_path
    story = [{"text": "Once upon a time, a little dog named Max found a shiny stone in the park."}] * 4
    light = train_adapter(model, tok, story, TrainConfig(learning_rate=1e-3, epochs=2, batch_size=4, lora_rank=8),
                          output_dir=tmp_path / "light", progress=False).adapter_path
    bad = gate.evaluate(model, tok, wreck, None, [], tmp_path / "w1", progress=False)
    assert not bad.passed and any("canary" in r and "'Once upon a time" in r for r in bad.reasons)
    assert bad.metrics["canary_deltas"]["story"] < -0.3
    good = gate.evaluate(model, tok, light, None, [], tmp_path / "w2", progress=False)
    assert good.passed, good.reasons
    # What decided is said: no past tasks, two (logprob) canaries, no probes.
    assert good.metrics["notes"][0] == (f"{NO_PAST_NOTE}: judged on 2 logprob canaries and no new-knowledge "
                                        "probes (no gain measured)")


# --------------------------------------------------------------------------- edge cases


def test_first_consolidation_is_judged_on_probes_and_nothing_to_judge_is_refused(tiny, adapters, mem, tmp_path):
    a, _ = adapters
    report = evaluate(Gate(mem, GateConfig()), tiny, a, None, probes(FACTS), tmp_path)
    assert report.passed and report.reasons[0] == f"{NO_PAST_NOTE}: judged on 4 new-knowledge probes"
    assert report.metrics["notes"][0] == report.reasons[0] and "nothing to judge" not in " ".join(report.reasons)
    assert report.metrics["judged_on"] == {"past": 0, "canaries": 0, "canaries_total": 0, "logprob_canaries": 0,
                                           "probes": 4}
    assert report.metrics["n_past"] == 0 and report.metrics["probe_gain"] > 1.0
    assert any("new-knowledge gain" in r and "required > 0.2" in r for r in report.reasons)
    # Probes that did not gain enough fail the gain requirement.
    worse = evaluate(Gate(mem, GateConfig(min_gain=10.0)), tiny, a, None, probes(FACTS), tmp_path)
    assert not worse.passed and "min_gain" in worse.reasons[0]
    # Nothing at all to judge (no past tasks, canaries or probes): refused by default, saying why.
    empty = evaluate(Gate(mem, GateConfig()), tiny, a, None, [], tmp_path)
    assert not empty.passed and empty.adapter_dir is None and not empty.unverified
    assert empty.verdict == "rejected" and "nothing to judge" in empty.reasons[-1]
    assert "allow_unverified" in empty.reasons[-1]
    # ... or committed flagged unverified, when allowed; the flag survives the report's JSON.
    loose = evaluate(Gate(mem, GateConfig(allow_unverified=True)), tiny, a, None, [], tmp_path)
    assert loose.passed and loose.unverified and loose.adapter_dir == a
    assert loose.verdict == "passed (unverified)" and "UNVERIFIED" in loose.reasons[-1]
    data = loose.to_dict()
    assert data["unverified"] is True and GateReport.from_dict(data).unverified
    assert "UNVERIFIED" in loose.to_markdown()


def test_an_update_must_gain_on_what_it_was_meant_to_teach(tiny, adapters, fact_mem, tmp_path):
    a, b = adapters
    # B learned NEW: gain well above min_gain.
    good = evaluate(Gate(fact_mem, GateConfig()), tiny, b, a, probes(NEW), tmp_path)
    assert good.passed and good.metrics["probe_gain"] > GateConfig().min_gain
    # A candidate identical to the current adapter forgot nothing and learned nothing: rejected
    # for no gain (scale-back cannot add gain, so it is not tried).
    same = evaluate(Gate(fact_mem, GateConfig()), tiny, b, b, probes(NEW), tmp_path)
    assert not same.passed and same.metrics["probe_gain"] == pytest.approx(0.0, abs=1e-6)
    assert same.metrics["flips"] == 0 and same.metrics["scale_back"] == []
    assert any("does not exceed min_gain" in r and "did not learn" in r for r in same.reasons)
    # Strictly greater: min_gain = 0 still refuses a zero gain.
    assert not evaluate(Gate(fact_mem, GateConfig(min_gain=0.0)), tiny, b, b, probes(NEW), tmp_path).passed


# --------------------------------------------------------------------------- canaries


def _outcomes(spec: str) -> list[CanaryOutcome]:
    """'RRW' -> right, right, wrong (greedy answers that do / do not contain the answer)."""
    return [CanaryOutcome(passed=c == "R", answer="Paris" if c == "R" else "Lyon") for c in spec]


def _canaries(n: int) -> list[SuiteItem]:
    return [SuiteItem(kind="canary", id=f"c{i}", prompt=({"role": "user", "content": f"Q{i}?"},),
                      expected="Paris", check="greedy") for i in range(n)]


def test_greedy_canary_passes_while_the_answer_holds_and_flips_when_it_changes():
    # An unchanged -- or reworded -- right answer passes; a changed, wrong one fails.
    assert answer_contains("The capital of France is Paris.", "Paris")
    assert answer_contains("Paris, of course!", "paris") and answer_contains("It is the city of PARIS", "Paris")
    assert answer_contains("A week has seven days.", "7", ["seven"])
    assert answer_contains("The chemical formula of water is H2O.", "H2O")
    assert not answer_contains("The capital of France is Lyon.", "Paris")
    assert not answer_contains("It is 42.", "4") and not answer_contains("Parisian food", "Paris")

    config = GateConfig()  # canary_max_flip_share 0.1
    items = _canaries(20)
    assert allowed_flips(config, 20) == 2 and allowed_flips(config, 29) == 2 and allowed_flips(config, 9) == 0
    # Same pass/fail everywhere: not forgetting, whatever the log-likelihoods did.
    dec = decide_canaries(items, _outcomes("R" * 19 + "W"), _outcomes("R" * 19 + "W"), config)
    assert dec.passed and dec.flipped == set() and dec.metrics["n_judged"] == 19
    assert dec.notes[0] == "canaries: none of 19 went from right to wrong (greedy check)"
    assert "fail under the current adapter already" in dec.notes[1]
    # Three of 20 flipped, 2 allowed: forgetting, naming them with both answers.
    dec = decide_canaries(items, _outcomes("R" * 20), _outcomes("WWW" + "R" * 17), config)
    assert not dec.passed and dec.flipped == {"c0", "c1", "c2"}
    (reason,) = dec.forgetting
    assert reason.startswith("canaries: 3 of 20 went from right to wrong") and "2 allowed" in reason
    assert "c0 ('Q0?': 'Paris' -> 'Lyon')" in reason
    ok = decide_canaries(items, _outcomes("R" * 20), _outcomes("WW" + "R" * 18), config)
    assert ok.passed and ok.notes[0].startswith("canaries: 2 of 20 went from right to wrong") and "within" in ok.notes[0]
    # A canary wrong under the current adapter judges nothing; one that became right is counted.
    gained = decide_canaries(items[:2], _outcomes("WR"), _outcomes("RR"), config)
    assert gained.passed and gained.metrics["gained"] == ["c0"] and gained.metrics["n_judged"] == 1


def test_canary_anchors_stop_lost_canaries_from_adding_up(tmp_path):
    from seal_agent.gate.gate import Gate as _Gate

    items = _canaries(20)
    config = GateConfig(canary_max_flip_share=0.1)  # 2 of 20 may flip
    # Update 1 lost c0 and c1 (allowed) and was committed: its report's rows raise the anchors.
    cur, cand = _outcomes("R" * 20), _outcomes("WW" + "R" * 18)
    assert decide_canaries(items, cur, cand, config).passed
    suite = ReplaySuite("global", 8)
    rows = _Gate._canary_rows(items, cur, cand, decide_canaries(items, cur, cand, config))
    assert suite.record_scores(rows, "logprob") == 20
    key = canary_anchor_key(items[0])
    assert suite.anchors[key] == {"greedy": 1.0} and rows[0]["answer_candidate"] == "Lyon" and rows[0]["flipped"]
    suite.save(tmp_path / "suite.json")
    assert ReplaySuite.load(tmp_path / "suite.json").anchors[key] == {"greedy": 1.0}  # kept on save
    # Update 2 loses c2 as well: against the current adapter alone that is 1 flip of 18, allowed...
    after = _outcomes("WWW" + "R" * 17)
    assert decide_canaries(items, cand, after, config).passed
    # ...against the anchors, all three lost canaries count: 3 of 20, rejected.
    anchored = decide_canaries(items, cand, after, config, anchors=suite.anchors)
    assert not anchored.passed and anchored.flipped == {"c0", "c1", "c2"}
    assert "against the best committed result" in anchored.forgetting[0]
    # The committed adapter itself still passes (scale-back toward it can always succeed).
    assert decide_canaries(items, cand, cand, config, anchors=suite.anchors).passed
    # Editing a canary gives it a fresh anchor.
    assert canary_anchor_key(dataclasses.replace(items[0], expected="Lyon")) != key


def _greedy_canary_file(tiny, path: Path, n: int = 6) -> Path:
    """Canaries tiny-random answers right: the first words of its own greedy answers."""
    from seal_agent.gate.scorers import generate_answers

    model, tok = tiny
    prompts = [f"Tell me about topic {i}." for i in range(n)]
    items = [SuiteItem(kind="canary", id=str(i), prompt=({"role": "user", "content": p},), expected="x")
             for i, p in enumerate(prompts)]
    answers = generate_answers(model, tok, items, max_new_tokens=8)
    lines = [{"id": f"topic-{i}", "prompt": p, "expected": " ".join(normalize_answer(a).split()[:3])}
             for i, (p, a) in enumerate(zip(prompts, answers, strict=True))]
    assert all(line["expected"] for line in lines)
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_gate_judges_canaries_by_their_greedy_answers(tiny, mem, tmp_path):
    model, tok = tiny
    canaries = _greedy_canary_file(tiny, mem.home / "canaries.jsonl")
    config = GateConfig(canary_file="canaries.jsonl", max_new_tokens=8, scale_back=[])
    same = _random_adapter(model, tmp_path / "zero", seed=1, r=4, alpha=8, b_std=0.0)  # B = 0: no change
    report = evaluate(Gate(mem, config), tiny, same, None, [], tmp_path)
    assert report.passed and not report.unverified, report.reasons
    assert report.reasons[0] == f"{NO_PAST_NOTE}: judged on 6 canaries (greedy check) and no new-knowledge " \
                                "probes (no gain measured)"
    assert report.reasons[1] == "canaries: none of 6 went from right to wrong (greedy check)"
    assert report.metrics["canaries"]["passing_current"] == 6 == report.metrics["canaries"]["passing_candidate"]
    rows = [r for r in report.rows if r["kind"] == "canary"]
    assert len(rows) == 6 and all(r["answer_current"] == r["answer_candidate"] for r in rows)
    # A candidate whose answers changed: every canary flips; the reasons name them.
    wreck = _random_adapter(model, tmp_path / "wreck", seed=2, r=8, alpha=16, b_std=2.0)
    bad = evaluate(Gate(mem, config), tiny, wreck, None, [], tmp_path)
    flipped = bad.metrics["canaries"]["flipped"]
    assert not bad.passed and len(flipped) > 0 and bad.metrics["canaries"]["allowed_flips"] == 0
    assert bad.reasons[0].startswith(f"canaries: {len(flipped)} of 6 went from right to wrong")
    assert "nothing to judge" not in " ".join(bad.reasons)
    md = bad.to_markdown()
    assert "## Canaries that went from right to wrong" in md and flipped[0] in md
    assert canaries.is_file()
    # Canaries that fail under the current adapter judge nothing: with nothing else, refused.
    canaries.write_text(json.dumps({"prompt": "What is the capital of France?", "expected": "Paris"}) + "\n")
    none = evaluate(Gate(mem, config), tiny, same, None, [], tmp_path)
    assert not none.passed and "nothing to judge" in none.reasons[-1]
    assert any("1 of 1 fail under the current adapter already" in r for r in none.reasons)


def test_shipped_canaries_load_and_are_the_default_for_smollm2(mem, tmp_path):
    import tomllib

    path = shipped_canary_file("smollm2-135m")
    assert path is not None and path.parent.name == "canaries" and path.is_file()
    assert shipped_canary_file("tiny-random") is None and shipped_canary_file(None) is None
    items = load_canaries(path, default_tolerance=0.25)
    assert 20 <= len(items) <= 30 and len({it.id for it in items}) == len(items)
    assert len({normalize_text(it.prompt[0]["content"]) for it in items}) == len(items)
    for it in items:
        assert it.check == "greedy" and len(it.wrong) >= 3 and it.reply_prefix and not it.raw
        assert it.expected not in it.wrong
    # rank by configuration: every shipped line has wrong answers to rank against.
    assert {it.check for it in load_canaries(path, default_tolerance=0.25, default_check="rank")} == {"rank"}
    # Package data: pyproject ships the folder's JSONL files.
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "canaries/*.jsonl" in pyproject["tool"]["setuptools"]["package-data"]["seal_agent.gate"]

    # Used by default when the served model is smollm2-135m and canary_file is unset...
    assert Gate(mem, GateConfig(), model_name="smollm2-135m").canary_source() == path
    assert len(Gate(mem, GateConfig(), model_name="smollm2-135m").canaries()) == len(items)
    smol = SealMemory(tmp_path / "smol", model="smollm2-135m", embeddings=HashEmbeddings())
    try:
        assert Gate(smol, GateConfig()).canary_source() == path
        # ..."none" says no canaries, explicitly; a file of one's own replaces them.
        assert Gate(smol, GateConfig(canary_file="none")).canaries() == []
        own = smol.home / "mine.jsonl"
        own.write_text('{"prompt": "2+2?", "expected": "4"}\n')
        assert [c.id for c in Gate(smol, GateConfig(canary_file="mine.jsonl")).canaries()] == ["canary-1"]
    finally:
        smol.close()
    # Other models have none shipped.
    assert Gate(mem, GateConfig()).canaries() == []


@pytest.mark.slow
def test_smollm2_answers_every_shipped_canary_right(mem):
    from seal_agent.model import load_model

    model, tok = load_model("smollm2-135m")
    gate = Gate(mem, GateConfig())
    # The gate picks the shipped canaries from the evaluated model itself (its name_or_path).
    assert gate.canary_source(gate._served_name(model)) == shipped_canary_file("smollm2-135m")
    items = gate.canaries("smollm2-135m")
    # Greedy, through the chat template, batched with left padding: exactly as the gate asks.
    greedy = canary_outcomes(model, tok, items, max_new_tokens=GateConfig().max_new_tokens)
    assert all(o.passed for o in greedy), {it.id: o.answer for it, o in zip(items, greedy, strict=True)
                                           if not o.passed}
    # And each expected answer outranks its wrong ones after its reply prefix (the rank check).
    ranked = canary_outcomes(model, tok, [dataclasses.replace(it, check="rank") for it in items],
                             max_new_tokens=1)
    assert all(o.passed for o in ranked), {it.id: o.margin for it, o in zip(items, ranked, strict=True)}


class _BrokenJudge(ScriptedChatModel):
    def _generate(self, *args, **kwargs):
        raise ConnectionError("judge endpoint down")


def test_failing_judge_is_skipped_and_the_others_decide(tiny, adapters, fact_mem, tmp_path):
    a, b = adapters
    report = evaluate(Gate(fact_mem, GateConfig(), judge=_BrokenJudge([])), tiny, b, a, probes(NEW), tmp_path)
    assert report.passed and report.scorer == "logprob"
    assert "judge endpoint down" in report.metrics["scorers"]["judge"]["skipped"]
    assert any(r.startswith("scorer judge skipped") for r in report.reasons)
    # A working judge and a user scorer decide alongside logprob.
    judge = ScriptedChatModel(["yes"] * 64)
    gate = Gate(fact_mem, GateConfig(max_new_tokens=6), judge=judge,
                scorers={"nonempty": lambda item, text: float(bool(text.strip()) or True)})
    report = evaluate(gate, tiny, b, a, probes(NEW), tmp_path)
    assert report.passed and report.metrics["scorers"]["judge"]["passed"]
    assert set(report.metrics["scorers"]) == {"logprob", "judge", "nonempty"}
    assert len(judge.prompts) == 2 * 8  # current and candidate, 4 past + 4 probes each
    with pytest.raises(ValidationError, match="judge"):
        Gate(fact_mem, GateConfig(scorer="judge"))


def test_malformed_canary_file_names_line_and_field(mem, tmp_path):
    path = mem.home / "canaries.jsonl"
    path.write_text('{"prompt": "2+2?", "expected": "4"}\n\n{"prompt": "Capital of France?"}\n')
    with pytest.raises(ValidationError) as err:
        Gate(mem, GateConfig(canary_file="canaries.jsonl")).canaries()
    assert err.value.field == "canaries.jsonl:3.expected"
    path.write_text("not json\n")
    with pytest.raises(ValidationError, match="canaries.jsonl:1"):
        load_canaries(path, default_tolerance=0.1)
    path.write_text('{"prompt": "", "expected": "x"}\n')
    with pytest.raises(ValidationError) as err:
        load_canaries(path, default_tolerance=0.1)
    assert err.value.field == "canaries.jsonl:1.prompt"
    with pytest.raises(ValidationError, match="canary_file"):
        Gate(mem, GateConfig(canary_file="missing.jsonl")).canaries()


def test_report_save_load_render_roundtrip(tiny, adapters, fact_mem, tmp_path):
    a, b = adapters
    report = evaluate(Gate(fact_mem, GateConfig()), tiny, b, a, probes(NEW), tmp_path)
    folder = report.save(tmp_path / "report")
    assert {p.name for p in folder.iterdir()} >= {"gate_report.json", "gate_report.md", "gate_report.png"}
    data = json.loads((folder / "gate_report.json").read_text())
    assert data["format_version"] == 1 and data["library_version"] and data["passed"] is True
    loaded = GateReport.load(folder)
    assert loaded.to_dict() == report.to_dict()
    assert len(loaded.rows) == 8 and {"kind", "id", "prompt", "expected", "current", "candidate", "delta",
                                      "flipped"} <= set(loaded.rows[0])
    text = render_report(folder)
    assert "PASSED" in text and "What does Mira drink?" in text and "gate_report.png" in text
    with pytest.raises(ValidationError):
        GateReport.load(tmp_path / "nowhere")


def test_suite_persists_with_a_reservoir_cap(tmp_path):
    def build(home: Path) -> tuple[Gate, SealMemory]:
        m = SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random")
        log_consolidated(m, [(f"Question number {i}?", f"Answer {i}.") for i in range(30)])
        return Gate(m, GateConfig(replay_size=10, seed=3)), m

    gate, m1 = build(tmp_path / "h1")
    try:
        suite = gate.suite()
        assert len(suite.items) == 10 and suite.n_seen == 30 and gate.suite_path.is_file()
        assert gate.suite_path == m1.home / "gate" / "suite-global.json"
        assert json.loads(gate.suite_path.read_text())["format_version"] == 1
        assert [it.id for it in gate.suite().items] == [it.id for it in suite.items]  # reloaded, same
        first_build = sorted(it.expected for it in suite.items)
        # Negative feedback is not an accepted outcome; already-seen ids are not offered again.
        neg = m1.log([{"role": "user", "content": "Bad?"}, {"role": "assistant", "content": "Bad."}], feedback=-1)
        more = log_consolidated(m1, [(f"Later question {i}?", f"Later {i}.") for i in range(20)], "v0002")
        m1.mark([neg], "consolidated", version="v0002")
        assert gate.update_suite(m1.list(status="consolidated")) == 20
        suite = ReplaySuite.load(gate.suite_path)
        assert len(suite.items) == 10 and suite.n_seen == 50
        assert {it.id for it in suite.items} & set(more)  # later items got their chance
        with pytest.raises(ValidationError, match="lineage"):
            Gate(m1, GateConfig(), lineage="../evil")
    finally:
        m1.close()
    # Deterministic: the same log in another home samples the same questions.
    gate2, m2 = build(tmp_path / "h2")
    try:
        assert sorted(it.expected for it in gate2.suite().items) == first_build
    finally:
        m2.close()


def test_text_metrics_and_bootstrap():
    assert normalize_answer("The  Quxville!") == "quxville"
    assert token_f1("bright green", "Bright green.") == 1.0 and token_f1("green", "bright green") == pytest.approx(2 / 3)
    assert paired_bootstrap_ci([], samples=100, seed=0) is None
    lo, hi = paired_bootstrap_ci([1.0, 2.0, 3.0, 4.0], samples=500, seed=0)
    assert 1.0 <= lo < 2.5 < hi <= 4.0


def test_anchors_stop_small_regressions_from_adding_up(tiny, adapters, fact_mem, tmp_path):
    """Two updates, each within max_regression of its predecessor, together beyond it:
    with anchors (the default) the second is rejected; comparing only with the current
    adapter, it would pass."""
    a, _ = adapters
    b = tmp_path / "B"
    write_scaled_adapter(a, None, 0.8, b)  # A's update shrunk: it forgets a little
    c = tmp_path / "C"
    write_scaled_adapter(a, None, 0.6, c)  # shrunk further: a little more again
    loose = dict(flip_margin=1e6, max_flips=100, scale_back=[], max_regression=1e6)

    step1 = evaluate(Gate(fact_mem, GateConfig(**loose)), tiny, b, a, [], tmp_path)
    assert step1.passed
    Gate(fact_mem, GateConfig(**loose)).update_suite([], report=step1)  # B committed: anchors = A's scores
    d1 = -step1.metrics["replay_delta"]
    step2 = evaluate(Gate(fact_mem, GateConfig(**loose, anchor_past=False)), tiny, c, b, [], tmp_path)
    d2 = -step2.metrics["replay_delta"]
    assert d1 > 0 and d2 > 0

    limit = (max(d1, d2) + d1 + d2) / 2  # above either step alone, below both together
    strict = {**loose, "max_regression": limit}
    unanchored = evaluate(Gate(fact_mem, GateConfig(**strict, anchor_past=False)), tiny, c, b, [], tmp_path)
    assert unanchored.passed, unanchored.reasons
    anchored = evaluate(Gate(fact_mem, GateConfig(**strict)), tiny, c, b, [], tmp_path)
    assert not anchored.passed
    assert "against their best committed scores" in " ".join(anchored.reasons)
    assert anchored.metrics["replay_drift"] == pytest.approx(-(d1 + d2), abs=1e-3)


def test_a_scaled_back_commit_keeps_the_full_candidate_staged(tiny, adapters, mem, tmp_path):
    """consolidation's commit step: the committed adapter is the scaled one, the full candidate
    is kept as a staged version it points to (registry retention rules apply)."""
    from seal_agent.consolidation import _Run

    _, b = adapters
    scaled = write_scaled_adapter(b, None, 0.5, tmp_path / "scaled")["path"]
    run = _Run(mem, mem.config, teacher=None, cancel_event=None, progress=False)
    run._base = tiny  # the base model the manifest hashes
    state = {"run_id": "run-test", "candidate_dir": str(b), "gate_adapter_dir": str(scaled), "scale": 0.5,
             "edits": [], "interaction_ids": [], "parent": None, "gate": {"passed": True, "scale": 0.5}}
    version = run.commit(state)["version"]
    committed = mem.adapters.get(version)
    assert mem.adapters.current == version and committed.scale == 0.5 and committed.full_candidate
    full = mem.adapters.get(committed.full_candidate)
    assert full.verdict == "staged" and full.full_candidate_of == version and full.scale == 1.0
    weights = "adapter_model.safetensors"
    assert (full.path / weights).read_bytes() == (b / weights).read_bytes()
    assert (committed.path / weights).read_bytes() == (scaled / weights).read_bytes()
    # A resumed run finds its commit and stores nothing twice; an unscaled commit stages nothing.
    assert run.commit(state)["version"] == version and len(mem.adapters.list()) == 2
    plain = run.commit({**state, "run_id": "run-2", "gate_adapter_dir": str(b), "scale": 1.0})["version"]
    assert mem.adapters.get(plain).full_candidate is None and len(mem.adapters.list()) == 3
