"""ReST-EM (seal_agent.selfedit.writer): rewarded self-edits, the writer lineage, resumability.

On tiny-random (real peft training of every throwaway update and of the writer) with a
scripted writer and a scripted reward; one small round on the real default model.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fakes import HashEmbeddings, ScriptedChatModel

from seal_agent import SealMemory
from seal_agent.config import SealConfig
from seal_agent.errors import ConfigError, ValidationError
from seal_agent.selfedit.writer import (
    Evaluation,
    WriterCandidate,
    WriterConfig,
    list_writer,
    writer_registry,
    writer_status,
)

PASSAGE = "The Kelpwood lab is in Tromso. Its lead engineer is Ada Brandt."
# Grounded implications (every word is in the passage), so the filters keep them all.
REPLIES = [
    "- The Kelpwood lab is in Tromso.",
    "- Ada Brandt is the lead engineer of the Kelpwood lab.",
    "- The lead engineer of the Kelpwood lab is Ada Brandt.\n- The Kelpwood lab is in Tromso.",
]
REWARDS = {REPLIES[0]: 0.1, REPLIES[1]: 0.7, REPLIES[2]: 0.3}
QUESTIONS = [("Who is the lead engineer of the Kelpwood lab?", "Ada Brandt is the lead engineer.")]
FAST = WriterConfig(candidates=3, inner_steps=1, writer_epochs=1, check_canaries=False)


def _teacher(rounds: int = 1) -> ScriptedChatModel:
    return ScriptedChatModel(REPLIES * rounds * 2)


def _mem(home: Path) -> SealMemory:
    return SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random",
                      config=SealConfig().with_overrides(train={"lora_rank": 4}))


def _teach(mem: SealMemory) -> str:
    return mem.log([{"role": "user", "content": PASSAGE}, {"role": "assistant", "content": "Noted."}],
                   namespace=("users", "t"))


def _scripted(calls: list[str]):
    def reward(candidate: WriterCandidate, adapter_dir: Path) -> float:
        assert (adapter_dir / "adapter_model.safetensors").is_file()  # the throwaway update was trained
        calls.append(candidate.id)
        return REWARDS[candidate.text]
    return reward


def test_the_kept_candidate_is_the_best_rewarded_and_the_writer_commits(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        calls: list[str] = []
        report = mem.improve_writer(rounds=1, candidates=3, config=FAST, questions={iid: QUESTIONS},
                                    reward_fn=_scripted(calls), teacher=_teacher(), progress=False)
        assert report.verdict == "committed", report.reason
        assert len(calls) == 3
        (version,) = report.versions
        v = writer_registry(mem.home).get(version)
        assert v.is_current
        metrics = v.manifest["metrics"]
        # Rejection sampling: only the best-rewarded candidate of the interaction is kept.
        assert [k["reward"] for k in metrics["kept"]] == [0.7]
        (record,) = metrics["reward_history"]
        assert record["kept"] == 1 and record["total"] == 3
        assert record["mean_reward"] == pytest.approx((0.1 + 0.7 + 0.3) / 3)
        assert record["seconds_per_candidate"] > 0 and record["seconds"] > 0
        assert report.rounds[0]["version"] == version
        # The knowledge adapter is untouched: the writer is a lineage of its own.
        assert mem.adapters.current is None
        kept = json.loads((mem.home / "writer" / "runs" / report.run_id / "round-0" / "evaluations.jsonl")
                          .read_text().splitlines()[1])
        assert kept["reward"] == 0.7


def test_rounds_chain_roll_back_and_history(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        report = mem.improve_writer(rounds=2, config=FAST, questions={iid: QUESTIONS},
                                    reward_fn=_scripted([]), teacher=_teacher(2), progress=False)
        assert report.verdict == "committed" and len(report.versions) == 2
        first, second = report.versions
        reg = writer_registry(mem.home)
        assert reg.current == second and reg.get(second).parent == first
        assert len(reg.get(second).manifest["metrics"]["reward_history"]) == 2  # the history carries over
        rows = list_writer(mem.home)
        assert [r["version"] for r in rows] == [first, second] and rows[1]["current"]
        # Roll back the writer through the CLI; the knowledge lineage does not move.
        from seal_agent.cli import main

    assert main(["--home", str(tmp_path / "home"), "writer", "rollback", first]) == 0
    assert writer_registry(tmp_path / "home").current == first
    assert writer_status(tmp_path / "home")["current"] == first
    assert main(["--home", str(tmp_path / "home"), "writer", "list"]) == 0


def test_a_round_whose_candidates_all_hurt_the_canaries_commits_nothing(tmp_path: Path) -> None:
    def hurts(candidate: WriterCandidate, adapter_dir: Path) -> Evaluation:
        return Evaluation(reward=5.0, canaries_ok=False, detail={"canaries": "flipped"})

    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        report = mem.improve_writer(rounds=1, config=FAST, questions={iid: QUESTIONS}, reward_fn=hurts,
                                    teacher=_teacher(), progress=False)
        assert report.verdict == "skipped" and report.versions == []
        assert report.rounds[0]["hurt_canaries"] == 3 and report.rounds[0]["kept"] == 0
        assert writer_registry(mem.home).current is None and writer_registry(mem.home).list() == []


def test_no_gain_keeps_nothing_and_bad_arguments_are_named(tmp_path: Path) -> None:
    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        report = mem.improve_writer(rounds=1, config=FAST, questions={iid: QUESTIONS},
                                    reward_fn=lambda c, d: -0.2, teacher=_teacher(), progress=False)
        assert report.verdict == "skipped" and report.rounds[0]["kept"] == 0
        with pytest.raises(ValidationError, match="rounds"):
            mem.improve_writer(rounds=0)
        with pytest.raises(ValidationError, match=r"questions\["):
            mem.improve_writer(questions={iid: ["not a pair"]})
    with pytest.raises(ConfigError, match="writer.candidates"):
        WriterConfig(candidates=0)
    with pytest.raises(ConfigError, match="writer.bogus"):
        WriterConfig.from_dict({"bogus": 1})


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from fakes import HashEmbeddings, ScriptedChatModel
    from seal_agent import SealMemory
    from seal_agent.config import SealConfig
    from seal_agent.selfedit.writer import WriterConfig

    replies = {replies!r}
    rewards = {rewards!r}
    seen = []

    def reward(candidate, adapter_dir):
        seen.append(candidate.id)
        if len(seen) == 5:  # round 1, second candidate: round 0 is committed
            print("IN", candidate.id, flush=True)
            time.sleep(600)  # the parent kills us here
        return rewards[candidate.text]

    mem = SealMemory({home!r}, embeddings=HashEmbeddings(), model="tiny-random",
                     config=SealConfig().with_overrides(train={{"lora_rank": 4}}))
    iid = mem.list()[0].id
    mem.improve_writer(rounds=2, config=WriterConfig(candidates=3, inner_steps=1, writer_epochs=1,
                                                     check_canaries=False),
                       questions={{iid: {questions!r}}}, reward_fn=reward,
                       teacher=ScriptedChatModel(replies * 4), progress=False)
    """
)


def test_survives_kill_9_mid_round_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _mem(home) as mem:
        iid = _teach(mem)
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), home=str(home), replies=REPLIES,
                                 rewards=REWARDS, questions=QUESTIONS)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            raise AssertionError(proc.stderr.read() if proc.stderr else "child died")
        assert line.startswith("IN r1-")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    status = writer_status(home)
    assert status["pending"] and status["attempts"] == 1
    committed = writer_registry(home).current
    assert committed is not None  # round 0 finished before the kill
    with _mem(home) as mem:
        calls: list[str] = []
        report = mem.improve_writer(rounds=2, config=FAST, questions={iid: QUESTIONS}, reward_fn=_scripted(calls),
                                    teacher=_teacher(2), progress=False)
    assert report.run_id == status["pending"]  # resumed, not restarted
    assert report.verdict == "committed" and len(report.versions) == 2
    assert report.versions[0] == committed  # round 0 not committed twice
    # Round 1's first candidate was finished before the kill: only the rest are evaluated again.
    assert len(calls) == 2 and all(c.startswith("r1-") for c in calls)
    assert len([v for v in writer_registry(home).list() if v.verdict == "committed"]) == 2
    assert writer_status(home)["pending"] is None


@pytest.mark.real_model
def test_one_small_round_end_to_end_on_the_default_model(tmp_path: Path) -> None:
    """smollm2-135m: the served model samples 2 candidates, each trains a 2-step throwaway
    update that is scored closed-book and on the shipped canaries; the round commits a
    writer version or, if no candidate gained, nothing -- either way with its costs."""
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="smollm2-135m") as mem:
        iid = _teach(mem)
        cfg = WriterConfig(candidates=2, max_new_tokens=32, inner_steps=2, writer_epochs=1,
                           reward="loglik", min_reward=-1e9)
        report = mem.improve_writer(rounds=1, config=cfg, questions={iid: QUESTIONS}, progress=False)
        (record,) = report.rounds
        assert record["total"] == 2
        usable = record["total"] - record["unusable"]
        assert record["seconds_per_candidate"] is None or record["seconds_per_candidate"] > 0
        if usable and record["hurt_canaries"] < usable:  # min_reward=-inf: any usable, harmless one is kept
            assert report.verdict == "committed", report.reason
            assert writer_registry(mem.home).get(report.versions[0]).manifest["metrics"]["reward_history"]
        else:
            assert report.verdict == "skipped"


def test_consolidation_writes_self_edits_with_the_committed_writer(tmp_path: Path, monkeypatch) -> None:
    """The served model writes with the writer adapter pinned; the knowledge adapter keeps serving."""
    from seal_agent.model import AdaptiveChatModel

    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        report = mem.improve_writer(rounds=1, config=FAST, questions={iid: QUESTIONS},
                                    reward_fn=_scripted([]), teacher=_teacher(), progress=False)
        writer_dir = str(writer_registry(mem.home).get(report.versions[0]).path)
        pins: list[object] = []
        original = AdaptiveChatModel.pinned

        def spy(self, adapter):  # type: ignore[no-untyped-def]
            pins.append(adapter)
            return original(self, adapter)

        monkeypatch.setattr(AdaptiveChatModel, "pinned", spy)
        mem.consolidate(progress=False, dry_run=True, selfedit={"strategies": ["implications"], "max_new_tokens": 8,
                                                                "samples": 1})
        assert pins == [writer_dir]
        assert mem.chat_model().adapter is None  # serving is untouched: no knowledge adapter yet


def test_the_optional_scheduled_writer_job(tmp_path: Path) -> None:
    """``schedule.writer_cron`` (off by default) adds a job that runs one ReST-EM round."""
    from seal_agent.config import ScheduleConfig
    from seal_agent.scheduler import ConsolidationScheduler

    assert ScheduleConfig().writer_cron is None
    with pytest.raises(ConfigError, match="writer_cron"):
        ScheduleConfig(writer_cron="every day")
    with _mem(tmp_path / "home") as mem:
        _teach(mem)
        sched = ConsolidationScheduler(mem, ScheduleConfig(writer_cron="0 4 * * *", jobstore_url=None))
        sched.start()
        try:
            assert set(sched.next_run_times()) == {"writer"}
            sched._fire("writer")  # what the cron job calls
        finally:
            sched.stop()
        (record,) = sched.history
        assert record.trigger == "writer" and record.outcome == "completed", record.error
        # tiny-random writes no usable questions: the round says so and commits nothing.
        assert record.report.verdict == "skipped" and record.report.reason


def test_cancel_stops_between_candidates_and_the_next_call_resumes(tmp_path: Path) -> None:
    import asyncio
    import threading

    cancel = threading.Event()

    def reward(candidate: WriterCandidate, adapter_dir: Path) -> float:
        cancel.set()  # stop after this candidate
        return REWARDS[candidate.text]

    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        report = asyncio.run(mem.aimprove_writer(rounds=1, config=FAST, questions={iid: QUESTIONS}, reward_fn=reward,
                                                 teacher=_teacher(), cancel_event=cancel, progress=False))
        assert report.verdict == "cancelled" and report.versions == []
        assert writer_status(mem.home)["pending"] == report.run_id
        assert writer_status(mem.home)["attempts"] == 0  # a cancel is not a failed attempt
        calls: list[str] = []
        resumed = mem.improve_writer(rounds=1, config=FAST, questions={iid: QUESTIONS}, reward_fn=_scripted(calls),
                                     teacher=_teacher(), progress=False)
        assert resumed.run_id == report.run_id and resumed.verdict == "committed"
        assert len(calls) == 2  # the first candidate's reward was kept


def test_canaries_are_checked_best_first_until_one_holds_and_a_resumed_round_does_not_recheck(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real closed-book rewards on tiny-random; the canary verdicts are scripted (the best
    candidate's update "flips" them). Checks go in reward order and stop at the first
    that holds: the kept one is the second best, two checks for three candidates. A
    cancel between checks keeps the finished check; the resumed round does not redo it."""
    import threading

    from seal_agent.selfedit.writer import _Run

    checked: list[int] = []
    cancel = threading.Event()

    def check(self, state, index):  # type: ignore[no-untyped-def]
        adapter = self._candidate_dir(state, index)
        assert (adapter / "adapter_model.safetensors").is_file()  # the trained update waited for its check
        checked.append(index)
        cancel.set()  # stop before the next check
        return (len(checked) > 1), ("held" if len(checked) > 1 else "flipped: 3 canaries"), 0.1

    monkeypatch.setattr(_Run, "_check_canaries", check)
    monkeypatch.setattr(_Run, "canaries", lambda self: ["a canary"])  # tiny-random ships none
    config = WriterConfig(candidates=3, inner_steps=1, writer_epochs=1, reward="both", min_reward=-1e9)
    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        first = mem.improve_writer(rounds=1, config=config, questions={iid: QUESTIONS}, teacher=_teacher(),
                                   cancel_event=cancel, progress=False)
        assert first.verdict == "cancelled" and len(checked) == 1
        rdir = mem.home / "writer" / "runs" / first.run_id / "round-0"
        evaluations = [json.loads(line) for line in (rdir / "evaluations.jsonl").read_text().splitlines()]
        assert all(e["canaries_ok"] is None and isinstance(e["reward"], float) for e in evaluations)
        order = sorted(range(3), key=lambda i: -evaluations[i]["reward"])
        assert checked == [order[0]]

        report = mem.improve_writer(rounds=1, config=config, questions={iid: QUESTIONS}, teacher=_teacher(),
                                    progress=False)
        assert report.run_id == first.run_id and report.verdict == "committed", report.reason
        assert checked == order[:2]  # the best one's check was not redone
        (record,) = report.rounds
        assert (record["hurt_canaries"], record["canary_checks"], record["kept"]) == (1, 2, 1)
        kept = writer_registry(mem.home).get(report.versions[0]).manifest["metrics"]["kept"]
        assert [k["reward"] for k in kept] == [evaluations[order[1]]["reward"]]
        lines = [json.loads(line) for line in (rdir / "canaries.jsonl").read_text().splitlines()]
        assert [line["ok"] for line in lines] == [False, True]
        assert not (rdir / "candidates").exists()  # the round's throwaway updates are gone


def _one_real_round(mem: SealMemory, config: WriterConfig) -> tuple[Any, dict[str, Any]]:
    """Teach the passage, run one round with real closed-book rewards: the report and its round."""
    iid = _teach(mem)
    report = mem.improve_writer(rounds=1, config=config, questions={iid: QUESTIONS}, teacher=_teacher(),
                                progress=False)
    (record,) = report.rounds
    return report, record


def test_no_canaries_means_no_checks_and_a_lost_update_is_never_kept_unchecked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real rewards on tiny-random, which ships no canaries: the best is kept with nothing
    checked. With canaries, a candidate whose trained update is gone is passed over (and
    counted), never kept unchecked and never recorded as a canary failure."""
    from seal_agent.selfedit.writer import _Run

    config = WriterConfig(candidates=2, inner_steps=1, writer_epochs=1, reward="loglik", min_reward=-1e9)
    with _mem(tmp_path / "a") as mem:
        report, record = _one_real_round(mem, config)
        assert report.verdict == "committed" and (record["kept"], record["canary_checks"]) == (1, 0)

    original = _Run.select

    def lose_updates(self, state):  # type: ignore[no-untyped-def]
        shutil.rmtree(self._round_dir(state) / "candidates")
        return original(self, state)

    monkeypatch.setattr(_Run, "select", lose_updates)
    monkeypatch.setattr(_Run, "canaries", lambda self: ["a canary"])
    with _mem(tmp_path / "b") as mem:
        report, record = _one_real_round(mem, config)
        assert report.verdict == "skipped" and record["kept"] == 0
        assert (record["unchecked_missing"], record["hurt_canaries"], record["canary_checks"]) == (2, 0, 0)
        assert not (mem.home / "writer" / "runs" / report.run_id / "round-0" / "canaries.jsonl").exists()


def test_prepare_takes_the_newest_up_to_max_interactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seal_agent.selfedit.writer import Question, _Run

    def run(n: int) -> list[str]:
        r = _Run(mem, WriterConfig(max_interactions=n), questions={}, interactions=None, reward_fn=None,
                 teacher=None, cancel_event=None, progress=False)
        return r.prepare({"run_id": "r"})["interaction_ids"]

    monkeypatch.setattr(_Run, "_self_qa", lambda self, its: {it.id: [Question("q?", "a").to_dict()] for it in its})
    with _mem(tmp_path / "home") as mem:
        ids = [mem.log([{"role": "user", "content": f"Lab {i} is in town {i}."}, {"role": "assistant", "content": "Ok."}],
                       namespace=("users", "t")) for i in range(5)]
        assert run(8) == ids and run(5) == ids and run(3) == ids[-3:]


def test_a_round_whose_knowledge_adapter_was_deleted_meanwhile_keeps_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rewards were measured against an adapter a forget purged: nothing is kept, the
    run does not fail (or retry) over it, and the report says why."""
    from seal_agent.selfedit.writer import _Run

    monkeypatch.setattr(_Run, "_knowledge_gone", lambda self, state: "v0001-gone")
    config = WriterConfig(candidates=2, inner_steps=1, writer_epochs=1, reward="loglik", min_reward=-1e9)
    with _mem(tmp_path / "home") as mem:
        report, record = _one_real_round(mem, config)
        assert report.verdict == "skipped" and record["kept"] == 0 and record["knowledge_gone"] == "v0001-gone"
        assert writer_status(mem.home)["attempts"] == 0 and writer_registry(mem.home).list() == []


def test_questions_come_from_later_exchanges_the_user_rated_well(tmp_path: Path) -> None:
    """No questions given: a later exchange rated > 0 whose question recalls the passage
    checks the passage's self-edits with its question and approved answer. A rated
    question logged before the passage, an unrelated rated one and a badly rated one
    check nothing; the rated exchange is a question, not an interaction to write for."""
    seen: dict[str, set] = {}

    def reward(candidate: WriterCandidate, adapter_dir: Path) -> float:
        seen.setdefault(candidate.interaction_id, set()).update((q.question, q.answer) for q in candidate.questions)
        return 0.5

    ns = ("users", "t")
    with _mem(tmp_path / "home") as mem:
        before = mem.log([{"role": "user", "content": "Who leads the Kelpwood lab in Tromso?"},
                          {"role": "assistant", "content": "Ada Brandt."}], namespace=ns, feedback=1.0)
        passage = _teach(mem)
        liked = mem.log([{"role": "user", "content": "Who is the lead engineer of the Kelpwood lab?"},
                         {"role": "assistant", "content": "Ada Brandt is the lead engineer."}], namespace=ns,
                        feedback=0.8)
        mem.log([{"role": "user", "content": "Which engineer leads the Kelpwood lab?"},
                 {"role": "assistant", "content": "Bob Stone."}], namespace=ns, feedback=-1.0)
        mem.log([{"role": "user", "content": "How many legs does a spider have?"},
                 {"role": "assistant", "content": "Eight legs."}], namespace=ns, feedback=1.0)
        config = WriterConfig(candidates=2, inner_steps=1, writer_epochs=1, check_canaries=False,
                              feedback_min_score=0.5)
        report = mem.improve_writer(rounds=1, config=config, reward_fn=reward,
                                    teacher=ScriptedChatModel(["nothing to ask"] * 6 + REPLIES * 4), progress=False)
        assert report.verdict == "committed", report.reason
        assert seen == {passage: {("Who is the lead engineer of the Kelpwood lab?",
                                   "Ada Brandt is the lead engineer.")}}, seen
        assert liked not in seen and before not in seen
        with pytest.raises(ConfigError, match="feedback_min_score"):
            WriterConfig(feedback_min_score=2.0)
        with pytest.raises(ConfigError, match="feedback_recall_k"):
            WriterConfig(feedback_recall_k=0)


def test_a_round_whose_interaction_is_forgotten_meanwhile_commits_nothing(tmp_path: Path) -> None:
    """A forget during the round (here: while the candidates are scored) must not let the
    writer commit what it learned from the forgotten interaction."""
    with _mem(tmp_path / "home") as mem:
        iid = _teach(mem)
        scored = _scripted([])

        def forget_midway(candidate: WriterCandidate, adapter_dir: Path) -> float:
            if not mem._journal.forgotten_among([iid]):
                mem.forget(ids=[iid])
            return scored(candidate, adapter_dir)

        report = mem.improve_writer(rounds=1, candidates=3, config=FAST, questions={iid: QUESTIONS},
                                    reward_fn=forget_midway, teacher=_teacher(), progress=False)
        assert report.versions == [] and writer_registry(mem.home).current is None
        assert report.rounds[0]["version"] is None and report.rounds[0]["dropped_forgotten"] == 1
