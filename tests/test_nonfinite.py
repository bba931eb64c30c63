"""Issue 22, item 4: NaN/inf never passes a check, is never committed, served or kept.

Every comparison with NaN is False, so "reject when the mean change < -limit" passed an
all-NaN adapter, which was committed and served (empty answers). Real peft LoRA on the
TinyStories model and on tiny-random, the real gate, registry, trainer and writer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from facts import FACTS, chat
from fakes import HashEmbeddings, ScriptedChatModel

from seal_agent import SealMemory
from seal_agent.config import GateConfig, SealConfig, TrainConfig
from seal_agent.errors import AdapterError, TrainingError, ValidationError
from seal_agent.gate import Gate, GateReport, SuiteItem
from seal_agent.gate.canary import CanaryOutcome, ContrastOutcome, decide_canaries, decide_contrastive
from seal_agent.gate.decision import decide
from seal_agent.gate.suite import ReplaySuite
from seal_agent.registry import AdapterRegistry
from seal_agent.selfedit.writer import WriterCandidate, WriterConfig, writer_registry
from seal_agent.training import train_adapter

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TINYSTORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "tinystories-260k"
NAN, INF = float("nan"), float("inf")
WEIGHTS = "adapter_model.safetensors"


def _strict_json(text: str) -> Any:
    """json.loads that refuses the NaN/Infinity tokens (as strict readers do)."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"invalid JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _fill(adapter: Path, value: float, *, only_b: bool = False) -> Path:
    """Overwrite an adapter's LoRA tensors with `value` (in place)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(adapter / WEIGHTS))
    tensors = {k: (torch.full_like(t, value) if not only_b or "lora_B" in k else t) for k, t in tensors.items()}
    save_file(tensors, str(adapter / WEIGHTS), metadata={"format": "pt"})
    return adapter


def _past(n: int = 4) -> list[SuiteItem]:
    return [SuiteItem(kind="past", id=f"p{i}", prompt=({"role": "user", "content": f"Q{i}?"},), expected="A")
            for i in range(n)]


def _probes(n: int = 2) -> list[SuiteItem]:
    return [SuiteItem(kind="probe", id=f"n{i}", prompt=({"role": "user", "content": f"N{i}?"},), expected="B")
            for i in range(n)]


def _lp_canary() -> SuiteItem:
    return SuiteItem(kind="canary", id="story", prompt=({"role": "text", "content": "Once"},), expected=" upon",
                     raw=True, check="logprob", tolerance=0.25)


# --------------------------------------------------------------------------- the decision rule


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("bounded", [False, True])
def test_a_non_finite_past_task_score_fails_naming_the_mean_replay_change(bad: float, bounded: bool) -> None:
    items = _past()
    cur = [0.9, 0.8, 0.9, 0.7] if bounded else [-1.0, -1.2, -0.9, -1.1]
    for where in ("candidate", "current"):
        cand = list(cur)
        scores = {"candidate": cand, "current": list(cur)}
        scores[where][1] = bad
        dec = decide(items, scores["current"], scores["candidate"], GateConfig(), scorer="logprob", bounded=bounded)
        assert not dec.passed, (where, dec.notes)
        (reason,) = dec.nonfinite
        assert reason.startswith("logprob: non-finite mean replay change")
        assert f"1 of 4 past items under the {'candidate' if where == 'candidate' else 'current adapter'}" in reason
        assert "'Q1?' (past p1" in reason
        # Not also reported as a regression or a flip of a made-up size.
        assert dec.forgetting == [] and dec.metrics["flips"] == 0


def test_all_nan_candidate_with_past_tasks_fails_where_it_passed() -> None:
    items = _past()
    dec = decide(items, [-1.0] * 4, [NAN] * 4, GateConfig(), scorer="logprob", bounded=False)
    assert not dec.passed and dec.reasons == dec.nonfinite
    assert "4 of 4 past items under the candidate" in dec.nonfinite[0] and "(nan)" in dec.nonfinite[0]
    assert dec.metrics["replay_delta_ci"] is None  # no interval of a NaN
    # An anchor that is NaN (a report of before the fix) anchors nothing instead of failing forever.
    ok = decide(items, [-1.0] * 4, [-1.0] * 4, GateConfig(), scorer="logprob", bounded=False,
                references=[NAN, None, -INF, -0.9])
    assert ok.passed, ok.reasons


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_a_non_finite_logprob_canary_fails_under_candidate_current_or_base(bad: float) -> None:
    items = [_lp_canary()]
    config = GateConfig()
    for cur, cand, base in (([-1.0], [bad], None), ([bad], [-1.0], None), ([-1.0], [-1.0], [bad])):
        dec = decide(items, cur, cand, config, scorer="logprob", bounded=False, base=base)
        assert not dec.passed and dec.metrics["canary_failed"] == ["story"]
        (reason,) = dec.nonfinite
        assert reason.startswith("logprob: non-finite logprob canary change") and "canary story" in reason
    # Finite and within the tolerance still passes.
    assert decide(items, [-1.0], [-1.2], config, scorer="logprob", bounded=False, base=[-1.1]).passed


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("require_gain", [True, False])
def test_a_non_finite_probe_gain_fails_even_where_the_gain_is_only_reported(bad: float, require_gain: bool) -> None:
    items = _probes()
    # +inf gain (current -inf) used to pass `gain > min_gain`; NaN failed only by luck.
    for cur, cand in (([-2.0, -2.0], [bad, -0.5]), ([bad, -2.0], [-0.5, -0.5])):
        dec = decide(items, cur, cand, GateConfig(), scorer="logprob", bounded=False, require_gain=require_gain)
        assert not dec.passed and dec.no_gain == []
        assert dec.nonfinite[0].startswith("logprob: non-finite new-knowledge gain")


def test_non_finite_rank_and_contrastive_margins_fail() -> None:
    config = GateConfig()
    items = [SuiteItem(kind="canary", id=f"r{i}", prompt=({"role": "user", "content": f"R{i}?"},),
                       expected="Paris", wrong=("Lyon",), check="rank") for i in range(3)]
    ok = [CanaryOutcome(passed=True, margin=2.0)] * 3
    # A NaN margin never passes, and under the candidate it rejects even a canary that judges nothing.
    broken = [CanaryOutcome(passed=False, margin=NAN)] + ok[1:]
    dec = decide_canaries(items, [CanaryOutcome(passed=False, margin=-1.0)] + ok[1:], broken, config)
    assert not dec.passed and "non-finite rank margin" in dec.nonfinite[0] and "r0" in dec.nonfinite[0]
    foils = [SuiteItem(kind="canary", id="k0", prompt=({"role": "user", "content": "Capital?"},),
                       expected="Paris", foils=("Berlin",), check="greedy")]
    assert not ContrastOutcome({"Berlin": NAN}).passed and not ContrastOutcome({"Berlin": INF}).passed
    assert ContrastOutcome({"Berlin": 1.0, "London": NAN}).worst == "London"
    dec = decide_contrastive(foils, [ContrastOutcome({"Berlin": 2.0})], [ContrastOutcome({"Berlin": NAN})])
    assert not dec.passed and dec.forgetting == []
    assert "non-finite margin" in dec.nonfinite[0] and "vs 'Berlin' nan" in dec.nonfinite[0]


def test_a_report_with_nan_metrics_is_strict_json_and_renders(tmp_path: Path) -> None:
    report = GateReport(passed=False, reasons=["logprob: non-finite mean replay change (nan)"],
                        metrics={"replay_delta": NAN, "probe_gain": INF, "replay_delta_ci": None},
                        rows=[{"kind": "past", "id": "p0", "prompt": "Q?", "expected": "A", "current": -1.0,
                               "candidate": NAN, "delta": NAN, "flipped": False}])
    report.save(tmp_path / "r")
    data = _strict_json((tmp_path / "r" / "gate_report.json").read_text())
    assert data["metrics"]["replay_delta"] is None and data["rows"][0]["candidate"] is None
    assert "| past | p0 | Q? | -1.000 | nan | nan |" in GateReport.load(tmp_path / "r").to_markdown()
    # A committed report's null scores raise no anchor (and do not crash the suite).
    suite = ReplaySuite("global", 8, items=_past(1))
    assert suite.record_scores(data["rows"], "logprob") == 1 and suite.anchors == {"p0": {"logprob": -1.0}}


# --------------------------------------------------------------------------- the real gate


@pytest.fixture(scope="module")
def stories():
    if not TINYSTORIES.is_dir():
        pytest.skip("../shared/models/tinystories-260k is absent")
    from seal_agent.model import load_model

    return load_model(str(TINYSTORIES), device="cpu")


def _story_adapters(stories, root: Path) -> tuple[Path, Path]:
    """A committed-like current adapter and a candidate continued from it (real peft LoRA)."""
    model, tok = stories
    cfg = TrainConfig(learning_rate=1e-3, epochs=2, batch_size=4, lora_rank=4, rehearsal_size=0)
    docs = [{"text": "Once upon a time, a little dog named Max found a shiny stone in the park."}] * 4
    cur = train_adapter(model, tok, docs, cfg, output_dir=root / "current", progress=False).adapter_path
    more = [{"text": "Lily and Tom played with the red ball in the garden every day."}] * 4
    cand = train_adapter(model, tok, more, cfg, init_adapter=cur, output_dir=root / "cand", progress=False)
    return cur, cand.adapter_path


def _with_past_tasks(mem: SealMemory) -> None:
    ids = [mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in FACTS]
    mem.mark(ids, "consolidated", version="v0001")


def test_real_gate_rejects_an_all_nan_adapter_with_past_tasks_and_current_stays(stories, mem, tmp_path) -> None:
    model, tok = stories
    _with_past_tasks(mem)
    current, cand = _story_adapters(stories, tmp_path)
    registry = AdapterRegistry(tmp_path / "registry")
    v1 = registry.commit(current)
    gate = Gate(mem, GateConfig(canary_file="none"))
    # The intact candidate is judged on the 4 past tasks (a control: the gate works here).
    ok = gate.evaluate(model, tok, cand, registry.get(v1).path, [], tmp_path / "w0", progress=False)
    assert ok.metrics["judged_on"]["past"] == 4 and not ok.metrics.get("nonfinite")

    _fill(cand, NAN)
    report = gate.evaluate(model, tok, cand, registry.get(v1).path, [], tmp_path / "w1", progress=False)
    assert not report.passed and report.adapter_dir is None and report.verdict == "rejected"
    (reason,) = report.reasons
    assert "weights hold NaN/inf values" in reason and "rejected before evaluation" in reason
    assert "lora_A.weight" in reason or "lora_B.weight" in reason
    assert not any("lora" in n for n, _ in model.named_modules())  # nothing was loaded into the base
    # The registry refuses it too, whoever calls commit: CURRENT does not move.
    with pytest.raises(AdapterError, match="NaN/inf weights"):
        registry.commit(cand)
    assert registry.current == v1 and len(registry.list()) == 1
    report.save(tmp_path / "saved")
    _strict_json((tmp_path / "saved" / "gate_report.json").read_text())


def test_real_gate_rejects_finite_weights_whose_scores_are_nan_naming_the_measure(stories, mem, tmp_path) -> None:
    """Weights that are finite but overflow in the forward pass: NaN scores, caught by the rule itself."""
    model, tok = stories
    _with_past_tasks(mem)
    current, cand = _story_adapters(stories, tmp_path)
    _fill(cand, 1e30)  # finite in float32; B @ A overflows to inf, the logits to NaN
    gate = Gate(mem, GateConfig(canary_file="none", scale_back=[0.5]))
    report = gate.evaluate(model, tok, cand, current, [], tmp_path / "w", progress=False)
    assert not report.passed and report.adapter_dir is None
    text = " ".join(report.reasons)
    assert "non-finite mean replay change" in text and "past items under the candidate" in text
    assert report.metrics["nonfinite"] and report.metrics["scale_back"] == []  # no scale-back of a NaN update
    report.save(tmp_path / "saved")
    data = _strict_json((tmp_path / "saved" / "gate_report.json").read_text())
    assert data["metrics"]["replay_delta"] is None


# --------------------------------------------------------------------------- consolidation end to end


RAW = {"selfedit": {"strategies": ["raw"]}, "consolidation": {"teacher": "none"}}
FAST_TRAIN = {"learning_rate": 1e-2, "epochs": 20, "batch_size": 4, "lora_rank": 8, "lora_alpha": 16,
              "rehearsal_size": 0}


def test_consolidation_never_commits_a_nan_candidate_and_current_is_unchanged(tmp_path, monkeypatch) -> None:
    import seal_agent.training as training

    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random") as mem:
        for q, a in FACTS:
            mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        first = mem.consolidate(progress=False, train=FAST_TRAIN, gate={"allow_unverified": True}, **RAW)
        assert first.verdict == "committed", first.reason
        for q, a in [("Where is Tovo?", "In Lisbon."), ("Which pet has Ivo?", "A turtle.")]:
            mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        real = training.train_adapter

        def nan_training(*args: Any, **kwargs: Any) -> Any:  # real training, then a damaged result
            result = real(*args, **kwargs)
            _fill(result.adapter_path, NAN)
            return result

        monkeypatch.setattr(training, "train_adapter", nan_training)
        report = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert report.verdict == "rejected", report.reason
        assert "NaN/inf" in report.reason
        assert mem.adapters.current == first.version
        assert mem.chat_model().adapter == first.version
        assert {it.status.value for it in mem.list(status="new")} == {"new"} and len(mem.list(status="new")) == 2
        for v in mem.adapters.list():  # every manifest strict JSON
            _strict_json((v.path / "manifest.json").read_text())


# --------------------------------------------------------------------------- registry


def test_registry_refuses_nan_weights_and_nan_manifest_numbers(tiny, tmp_path) -> None:
    model, tok = tiny
    good = train_adapter(model, tok, chat(FACTS[:1]), TrainConfig(epochs=1, lora_rank=4, rehearsal_size=0),
                         output_dir=tmp_path / "good", progress=False).adapter_path
    registry = AdapterRegistry(tmp_path / "reg")
    v1 = registry.commit(good)
    with pytest.raises(ValidationError, match=r"manifest\.metrics\.train\.final_loss=nan: must be a finite"):
        registry.commit(good, {"metrics": {"train": {"final_loss": NAN}}})
    bad = _fill(train_adapter(model, tok, chat(FACTS[:1]), TrainConfig(epochs=1, lora_rank=4, rehearsal_size=0),
                              output_dir=tmp_path / "bad", progress=False).adapter_path, INF, only_b=True)
    with pytest.raises(AdapterError, match="lora_B.weight"):
        registry.commit(bad)
    assert registry.current == v1 and [v.version for v in registry.list()] == [v1]
    staged = registry.stage(bad, {"verdict": "rejected"})  # kept for inspection, never served
    assert registry.current == v1 and registry.get(staged).verdict == "rejected"


# --------------------------------------------------------------------------- trainer


def test_training_never_saves_non_finite_weights(tiny, tmp_path) -> None:
    model, tok = tiny
    cfg = TrainConfig(epochs=1, max_steps=1, lora_rank=4, rehearsal_size=0)
    # A gradient that turns infinite while the loss stays finite: clipping by an inf norm
    # multiplies by NaN and the last step's NaN weights were saved.
    layer = model.model.layers[0].mlp

    def inf_grad(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        if output.requires_grad:
            output.register_hook(lambda g: g * INF)
        return output

    handle = layer.register_forward_hook(inf_grad)
    try:
        with pytest.raises(TrainingError, match="gradient norm diverged at step 1"):
            train_adapter(model, tok, chat(FACTS), cfg, output_dir=tmp_path / "out", progress=False)
    finally:
        handle.remove()
    assert not (tmp_path / "out").exists()
    # Continuing from NaN weights is refused before anything runs.
    ok = train_adapter(model, tok, chat(FACTS[:1]), cfg, output_dir=tmp_path / "ok", progress=False).adapter_path
    _fill(ok, NAN, only_b=True)
    with pytest.raises(ValidationError, match=r"init_adapter=.*NaN/inf values in"):
        train_adapter(model, tok, chat(FACTS), cfg, init_adapter=ok, output_dir=tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------- writer


PASSAGE = "The Kelpwood lab is in Tromso. Its lead engineer is Ada Brandt."
REPLIES = [
    "- The Kelpwood lab is in Tromso.",
    "- Ada Brandt is the lead engineer of the Kelpwood lab.",
    "- The lead engineer of the Kelpwood lab is Ada Brandt.\n- The Kelpwood lab is in Tromso.",
]


def test_writer_never_keeps_a_nan_or_inf_reward_and_writes_strict_json(tmp_path: Path) -> None:
    rewards = {REPLIES[0]: INF, REPLIES[1]: NAN, REPLIES[2]: 0.3}

    def reward(candidate: WriterCandidate, adapter_dir: Path) -> float:
        return rewards[candidate.text]

    config = WriterConfig(candidates=3, inner_steps=1, writer_epochs=1, check_canaries=False)
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random",
                    config=SealConfig().with_overrides(train={"lora_rank": 4})) as mem:
        iid = mem.log([{"role": "user", "content": PASSAGE}, {"role": "assistant", "content": "Noted."}],
                      namespace=("users", "t"))
        report = mem.improve_writer(rounds=1, config=config, questions={iid: [("Who leads Kelpwood?", "Ada Brandt.")]},
                                    reward_fn=reward, teacher=ScriptedChatModel(REPLIES * 2), progress=False)
        assert report.verdict == "committed", report.reason
        (version,) = report.versions
        manifest = _strict_json((writer_registry(mem.home).get(version).path / "manifest.json").read_text())
        # Only the finite reward is kept, however "high" +inf looked.
        assert [k["reward"] for k in manifest["metrics"]["kept"]] == [0.3]
        (record,) = manifest["metrics"]["reward_history"]
        assert record["nonfinite_rewards"] == 2 and record["mean_reward"] == pytest.approx(0.3)
        lines = (mem.home / "writer" / "runs" / report.run_id / "round-0" / "evaluations.jsonl").read_text()
        evals = [_strict_json(line) for line in lines.splitlines()]
        assert [e["reward"] for e in evals] == [None, None, 0.3]
        assert [e["usable"] for e in evals] == [False, False, True]
        assert "non-finite reward (inf)" in evals[0]["detail"]["why"]
        _strict_json((mem.home / "writer" / "status.json").read_text())
    with pytest.raises(Exception, match="writer.min_reward"):
        WriterConfig(min_reward=NAN)
    assert math.isfinite(WriterConfig().min_reward)


def test_a_writer_candidate_whose_update_diverges_is_unusable_and_the_round_goes_on(tmp_path, monkeypatch) -> None:
    import seal_agent.training as training

    real, calls = training.train_adapter, []

    def diverges_once(*args: Any, **kwargs: Any) -> Any:  # the second throwaway update diverges
        calls.append(1)
        if len(calls) == 2:
            raise TrainingError("loss diverged at step 1: nan; try a lower train.learning_rate; nothing was saved")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_adapter", diverges_once)
    config = WriterConfig(candidates=3, inner_steps=1, writer_epochs=1, check_canaries=False)
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random",
                    config=SealConfig().with_overrides(train={"lora_rank": 4})) as mem:
        iid = mem.log([{"role": "user", "content": PASSAGE}, {"role": "assistant", "content": "Noted."}],
                      namespace=("users", "t"))
        report = mem.improve_writer(rounds=1, config=config, questions={iid: [("Who leads Kelpwood?", "Ada Brandt.")]},
                                    reward_fn=lambda c, d: 0.5 if c.text == REPLIES[2] else 0.1,
                                    teacher=ScriptedChatModel(REPLIES * 2), progress=False)
        assert report.verdict == "committed", report.reason
        assert report.rounds[0]["unusable"] == 1 and report.rounds[0]["kept"] == 1
