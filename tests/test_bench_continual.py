"""bench/bench_continual.py's step logic: the judging of one step (pure), and a short
sequence end to end on tiny-random (real SealMemory, facts, training, gate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_continual as bc  # noqa: E402
from continual_data import CORRECTION, PASSAGES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_data_is_big_enough_and_unlike_bench_knowledge() -> None:
    from knowledge_data import PASSAGES as KNOWLEDGE

    assert len(PASSAGES) >= 16 and len({p["id"] for p in PASSAGES}) == len(PASSAGES)
    assert all(2 <= len(p["questions"]) <= 3 and p["markers"] for p in PASSAGES)
    assert not {p["text"] for p in PASSAGES} & {p["text"] for p in KNOWLEDGE}
    for p in PASSAGES:  # asked in other words than the passage used
        assert all(q.rstrip("?") not in p["text"] for q, _ in p["questions"])
    assert bc.schedule(8, 2, 5)[4]["correction"] and len(bc.schedule(8, 2, 5)) == 8


def test_judge_step_counts_retention_bleed_and_the_correction() -> None:
    plan = bc.schedule(3, 1, 3)  # sailboat, alpaca, bookclub; the rename at step 3
    qs = bc.questions_so_far(plan, 3)
    name_q = next(q for q in qs if q["question"] == CORRECTION["question"])
    assert name_q["accepted"] == CORRECTION["new"] and name_q["corrected"]
    answers = []
    for q in qs:
        if q is name_q:
            answers.append("It is called the Saltpetal.")
        elif q["passage"] == "alpaca" and "market" in q["question"]:
            answers.append("The Saltpetal market.")  # bleed of the correction into an older fact
        elif q["passage"] == "sailboat":
            answers.append("In Brighton, next to the Crooked Lamp.")  # bleed of a newer passage
        else:
            answers.append(q["accepted"][0])
    row = bc.judge_step(plan, 3, qs, answers, [], [])
    assert row["bleed"] == 2
    assert {b["question"] for b in row["bleed_items"]} == {"At which market does Ottilie sell her wool?",
                                                           "In which town does Dario moor his boat?"}
    assert row["retention"] == {1: 1.0, 2: pytest.approx(2 / 3), 3: 1.0} and row["new_accuracy"] == 1.0
    assert row["confusions"] == 2  # an older passage's name in a newer answer would count here too
    assert row["correction"] == {"b_answered": True, "a_answers": []}
    older = next(i for i, q in enumerate(qs) if q["passage"] == "bookclub" and "together" in q["question"])
    swapped = [*answers[:older], "At the Fenwick Lamproom.", *answers[older + 1:]]  # an older name, newer question
    row = bc.judge_step(plan, 3, qs, swapped, [], [])
    assert row["bleed"] == 2 and row["confusions"] == 3 and row["retention"][3] == 0.5
    answers[qs.index(name_q)] = "The Tumbleweed."  # A after the correction: wrong, and seen
    row = bc.judge_step(plan, 3, qs, answers, [], [])
    assert row["correction"]["b_answered"] is False and row["correction"]["a_answers"] == ["The Tumbleweed."]
    assert row["retention"][1] == 0.5


def test_sequence_on_tiny_random_writes_the_record_after_every_step(tmp_path: Path) -> None:
    out = tmp_path / "continual.json"
    extra = {"selfedit": {"strategies": ["statements"]}, "consolidation": {"teacher": "none"},
             "gate": {"allow_unverified": True}, "train": {"max_steps": 2, "lora_rank": 4, "rehearsal_size": 0}}
    rec = bc.main(["--model", "tiny-random", "--steps", "2", "--per-step", "1", "--seeds", "0", "--threads", "0",
                   "--extra", json.dumps(extra), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["kind"] == "continual" and saved["data"]["complete"] and out.with_suffix(".png").is_file()
    (run,) = rec["runs"]
    assert [s["step"] for s in run["steps"]] == [1, 2]
    assert all(s["verdict"] == "committed" for s in run["steps"])
    last = run["steps"][-1]
    # The rename reached the facts store, and the first step's stale self-edit left the
    # replay buffer before the correction's run trained.
    assert last["fact_superseded"] is True and last["counts"]["replay_superseded"] == 1
    assert "correction" in last and last["train"]["replay_examples"] >= 1
    trace = last["correction_trace"]
    assert trace["replay_items_saying_a"] == []
    assert any(f["status"] == "superseded" and "Tumbleweed" in f["text"] and "Saltpetal" in f["superseded_by"]
               for f in trace["facts"])
    summary = rec["summary"]["replay"]
    assert len(summary["retention_mean"]) == 2 and summary["retention_mean"][0][1] is None
    assert {g["name"] for g in saved["goals"]} >= {bc.GOALS["bleed"], bc.GOALS["correction"]}
