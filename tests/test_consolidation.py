"""Consolidation end to end on tiny-random: real Chroma, real graph, real training, real gate."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from facts import FACT_CONFIG, FACTS
from fakes import HashEmbeddings, ScriptedChatModel

from seal_agent import SealMemory
from seal_agent.consolidation import _Run, approve, consolidation_status, load_replay, pending_runs
from seal_agent.errors import ConsolidationError, NotFoundError

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

# The served tiny-random model has random weights: it cannot write useful self-edits,
# so these runs learn from the exchanges themselves (`raw`) -- see test_selfedit.py for
# the SEAL/SELF strategies' parsing, and the teacher tests below for routing.
# tiny-random ships no canaries and `raw` writes no probes: a first run has nothing to be
# judged on, which the gate refuses unless told the update may go in unverified.
RAW = {"selfedit": {"strategies": ["raw"]}, "consolidation": {"teacher": "none"},
       "gate": {"allow_unverified": True}}
FAST_TRAIN = {k: getattr(FACT_CONFIG, k) for k in ("learning_rate", "epochs", "batch_size", "lora_rank",
                                                    "lora_alpha", "warmup_ratio")}
# tiny-random has no abilities to protect: rehearsing its random answers only dilutes.
FAST_TRAIN["rehearsal_size"] = 0


def teach(mem: SealMemory, facts: list[tuple[str, str]] = FACTS, **kw: object) -> list[str]:
    return [mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}], **kw)  # type: ignore[arg-type]
            for q, a in facts]


def answer_scores(mem: SealMemory, facts: list[tuple[str, str]]) -> tuple[list[float], list[str]]:
    """Mean answer log-likelihood and greedy answers of the served model, retrieval OFF
    (the question alone, no memories in the prompt)."""
    from seal_agent.training.scoring import answer_logprob

    chat = mem.chat_model(max_new_tokens=12)
    chat.invoke("warm-up")  # makes the model follow CURRENT before we read its weights
    model, tok = chat.served_model, chat.tokenizer
    scores = [answer_logprob(model, tok, [{"role": "user", "content": q}], a) for q, a in facts]
    answers = [chat.invoke(q).text.strip() for q, _ in facts]
    return scores, answers


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def open_mem(home: Path) -> SealMemory:
    return SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random")


# ---------------------------------------------------------------- the main promise


def test_taught_facts_are_answered_from_weights_after_consolidation(home: Path) -> None:
    with open_mem(home) as mem:
        ids = teach(mem)
        before, before_answers = answer_scores(mem, FACTS)
        report = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert report.verdict == "committed", report.reason
        assert mem.adapters.current == report.version
        assert report.gate is not None and report.gate["passed"]
        assert {mem.get(i).status.value for i in ids} == {"consolidated"}
        assert {mem.get(i).consolidated_version for i in ids} == {report.version}
        after, after_answers = answer_scores(mem, FACTS)
        assert chat_follows(mem, report.version)
    gains = [a - b for a, b in zip(after, before, strict=True)]
    assert min(gains) > 1.0, gains  # nats per token, every fact
    right = sum(ans.startswith(a.rstrip(".")) for ans, (_, a) in zip(after_answers, FACTS, strict=True))
    assert right >= 3, after_answers
    assert not any(ans.startswith(a.rstrip(".")) for ans, (_, a) in zip(before_answers, FACTS, strict=True))
    manifest = json.loads((home / "adapters" / report.version / "manifest.json").read_text())
    assert manifest["lineage"]["interaction_ids"] == ids
    assert len(manifest["lineage"]["self_edit_hashes"]) == 4
    assert (home / "gate" / "reports" / report.version / "gate_report.json").exists()


def chat_follows(mem: SealMemory, version: str) -> bool:
    return mem.chat_model().adapter == version


def test_nothing_new_is_skipped_without_training(home: Path) -> None:
    with open_mem(home) as mem:
        report = mem.consolidate(progress=False, **RAW)
        assert report.verdict == "skipped" and "nothing new" in report.reason
        assert "train" not in report.timings and mem.adapters.current is None


def test_dry_run_stops_before_training(home: Path) -> None:
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
        report = mem.consolidate(dry_run=True, progress=False, **RAW)
        assert report.verdict == "skipped" and "dry run" in report.reason
        assert [e["messages"][0]["content"] for e in report.self_edits] == [q for q, _ in FACTS[:2]]
        assert {mem.get(i).status.value for i in ids} == {"new"}
        assert mem.adapters.list() == [] and pending_runs(mem) == []


def test_garbage_and_failing_teachers_skip_with_counts(home: Path) -> None:
    class Broken(ScriptedChatModel):
        def _generate(self, *a: object, **k: object) -> object:
            raise RuntimeError("teacher is down")

    with open_mem(home) as mem:
        teach(mem, FACTS[:2])
        garbage = ScriptedChatModel(["", "zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz"] * 4)
        report = mem.consolidate(teacher=garbage, selfedit={"strategies": ["self_qa"]}, progress=False)
        assert report.verdict == "skipped" and "no usable self-edits" in report.reason
        assert sum(v for k, v in report.counts.items() if k.startswith("dropped_")) >= 2
        report = mem.consolidate(teacher=Broken([]), selfedit={"strategies": ["self_qa"]}, progress=False)
        assert report.verdict == "skipped" and report.counts.get("dropped_teacher_error") == 2


def test_negative_feedback_goes_to_critique_and_exclusions_are_kept_out(home: Path) -> None:
    with open_mem(home) as mem:
        bad = mem.log([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
                      feedback=-1.0)
        secret = mem.log([{"role": "user", "content": "my PIN is 1234"}, {"role": "assistant", "content": "ok"}],
                         namespace=("users", "bob"))
        teacher = ScriptedChatModel(["Critique: the sum is wrong.\nRefined answer: 2+2 is 4."])
        report = mem.consolidate(dry_run=True, teacher=teacher, progress=False,
                                 selfedit={"strategies": ["raw"], "exclude_namespaces": ["users/bob"], "samples": 1})
        assert report.counts["excluded"] == 1 and mem.get(secret).status.value == "excluded"
        (edit,) = report.self_edits
        assert edit["messages"][-1] == {"role": "assistant", "content": "2+2 is 4."}  # never the bad "5"
        assert mem.get(bad).status.value == "new"


def test_human_approval(home: Path) -> None:
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
        report = mem.consolidate(progress=False, consolidation={"teacher": "none", "require_approval": True},
                                 selfedit={"strategies": ["raw"]}, train={"max_steps": 2, "lora_rank": 4},
                                 gate={"allow_unverified": True})
        assert report.verdict == "pending_approval" and report.run_id in report.reason
        assert mem.adapters.current is None and {mem.get(i).status.value for i in ids} == {"new"}
        # A new consolidate() does not start another run while one waits for a human.
        assert mem.consolidate(progress=False).verdict == "pending_approval"
        with pytest.raises(NotFoundError):
            approve(mem, "run-nope")
        done = approve(mem, report.run_id, progress=False)
        assert done.verdict == "committed" and mem.adapters.current == done.version
        assert {mem.get(i).status.value for i in ids} == {"consolidated"}
        assert pending_runs(mem) == []


# --------------------------------------------------------------- faults and locks

_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from fakes import HashEmbeddings
    import seal_agent.consolidation as c
    from seal_agent import SealMemory

    hold = {hold!r}
    original = getattr(c._Run, hold)

    def stall(self, state):
        if hold == "mark":
            print("COMMITTED", self.memory.adapters.current, flush=True)
        else:
            print("IN", hold, flush=True)
        time.sleep(600)  # the parent kills us here
        return original(self, state)

    setattr(c._Run, hold, stall)
    mem = SealMemory({home!r}, embeddings=HashEmbeddings(), model="tiny-random")
    mem.consolidate(progress=False, selfedit={{"strategies": ["raw"]}}, consolidation={{"teacher": "none"}},
                    gate={{"allow_unverified": True}},
                    train={{"max_steps": 3, "lora_rank": 4}})
    """
)


def _start_and_wait(home: Path, hold: str) -> tuple[subprocess.Popen[str], str]:
    script = _SCRIPT.format(tests=str(Path(__file__).parent), home=str(home), hold=hold)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child reached the stalled node
    if not line:
        proc.wait(5)
        raise AssertionError(proc.stderr.read() if proc.stderr else "child died")
    return proc, line.strip()


@pytest.mark.parametrize("hold", ["train", "mark"])
def test_kill_9_midway_never_marks_without_commit_and_next_run_completes(home: Path, hold: str) -> None:
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
    proc, line = _start_and_wait(home, hold)
    try:
        # Another process on the same home is refused while the first holds the lock.
        with open_mem(home) as mem:
            busy = mem.consolidate(progress=False, **RAW)
            assert busy.verdict == "skipped" and busy.reason == "another consolidation is running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with open_mem(home) as mem:
        committed_before = mem.adapters.current
        if hold == "train":
            assert committed_before is None
        else:  # killed after commit, before mark: committed, and still nothing marked
            assert line == f"COMMITTED {committed_before}"
        assert {mem.get(i).status.value for i in ids} == {"new"}  # never marked without a commit
        assert len(pending_runs(mem)) == 1
        report = mem.consolidate(progress=False, **RAW)  # resumes the killed run
        assert report.verdict == "committed", report.reason
        if hold == "mark":
            assert report.version == committed_before  # resumed, not committed twice
        assert len([v for v in mem.adapters.list() if v.verdict == "committed"]) == 1
        assert {mem.get(i).consolidated_version for i in ids} == {report.version}
        assert pending_runs(mem) == []
        assert mem.consolidate(progress=False, **RAW).verdict == "skipped"  # and the next one is clean


def test_tiny_random_with_defaults_says_clearly_why_nothing_is_committed(home: Path) -> None:
    """tiny-random has random weights: its self-edits are gibberish (dropped, with reasons),
    only what the user stated is left to learn, and with no canaries shipped for it and no
    probes the gate has nothing to judge the update on: it refuses, and says so."""
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
        report = mem.consolidate(progress=False, selfedit={"max_new_tokens": 24})
        assert report.verdict == "rejected" and "nothing to judge" in report.reason
        assert mem.adapters.current is None
        assert {mem.get(i).status.value for i in ids} == {"new"}  # kept for a later run
        assert report.counts["self_edits"] >= 2  # the stated facts, at least


# ------------------------------------------------- never wedged (issue 9, items 5-7)

def _long_text(n_chars: int) -> str:
    """Deterministic prose-like text with no repeated phrases (the degeneracy filter would drop a loop)."""
    rng = random.Random(5)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append("".join(rng.choice("abcdefghiklmnoprstuvwy") for _ in range(rng.randint(3, 9))))
        if rng.random() < 0.1:
            words[-1] += "."
    return " ".join(words)[:n_chars].rstrip() + "."


# Within memory.max_message_chars (32,000) and far beyond train.max_seq_len (1,024 tokens).
LONG = _long_text(25_000)


def _log_long(mem: SealMemory) -> str:
    return mem.log([{"role": "user", "content": LONG}, {"role": "assistant", "content": "That is a long story."}])


def test_item5_overlong_interaction_is_dropped_named_and_excluded(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A chat self-edit (raw) that cannot fit is dropped and named; its interaction is
    excluded, so it can never poison a later run; the others are learned."""
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
        long_id = _log_long(mem)
        with caplog.at_level("WARNING", logger="seal_agent.consolidation"):
            report = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert report.verdict == "committed", report.reason
        assert report.too_long == [{"interaction_id": long_id, "strategy": "raw", "tokens": report.too_long[0]["tokens"],
                                    "action": "dropped"}]
        assert report.too_long[0]["tokens"] > 1024
        assert report.counts["too_long_dropped"] == 1 and report.counts["excluded_too_long"] == 1
        assert long_id in caplog.text
        assert mem.get(long_id).status.value == "excluded"
        assert {mem.get(i).status.value for i in ids} == {"consolidated"}
        manifest = json.loads((home / "adapters" / report.version / "manifest.json").read_text())
        assert long_id not in manifest["lineage"]["interaction_ids"]
        # Alone, it still cannot wedge anything: nothing is left to learn.
        assert mem.consolidate(progress=False, train=FAST_TRAIN, **RAW).verdict == "skipped"


def test_item5_overlong_document_is_truncated_and_counted(home: Path) -> None:
    """A document self-edit (the stated text) is cut to fit train.max_seq_len and trained on."""
    with open_mem(home) as mem:
        long_id = _log_long(mem)
        report = mem.consolidate(progress=False, train=FAST_TRAIN, selfedit={"strategies": ["statements"]},
                                 consolidation={"teacher": "none"}, gate={"allow_unverified": True})
        assert report.verdict == "committed", report.reason
        (item,) = report.too_long
        assert item["interaction_id"] == long_id and item["action"] == "truncated" and item["tokens"] > 1024
        assert report.counts["too_long_truncated"] == 1
        assert mem.get(long_id).status.value == "consolidated"
        (trained,) = load_replay(mem)
        assert LONG.startswith(trained["text"]) and 100 < len(trained["text"]) < len(LONG)


def test_item5_failing_run_is_retried_then_abandoned_and_next_run_proceeds(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that keeps failing is resumed max_attempts times, then abandoned (interactions
    stay new, the reason recorded) and the next call starts a fresh run that completes."""
    original = _Run.self_edit
    poisoned: list[str] = []

    def failing(self: _Run, state: dict) -> dict:
        if not poisoned:
            poisoned.append(state["run_id"])
        if state["run_id"] == poisoned[0]:  # this run's checkpoint can never get past here
            raise RuntimeError("poisoned checkpoint")
        return original(self, state)

    monkeypatch.setattr(_Run, "self_edit", failing)
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
        with pytest.raises(ConsolidationError, match=r"failed in self_edit \(attempt 1 of 2\).*poisoned.*resumes it"):
            mem.consolidate(progress=False, consolidation={"teacher": "none", "max_attempts": 2})
        assert pending_runs(mem) == poisoned
        with pytest.raises(ConsolidationError, match=r"attempt 2 of 2.*abandoned"):
            mem.consolidate(progress=False, consolidation={"teacher": "none", "max_attempts": 2})
        assert pending_runs(mem) == []
        assert {mem.get(i).status.value for i in ids} == {"new"}
        record = json.loads((home / "consolidation" / "runs" / poisoned[0] / "ABANDONED.json").read_text())
        assert record["attempts"] == 2 and "poisoned checkpoint" in record["reason"]
        assert record["interaction_ids"] == ids
        st = consolidation_status(mem)
        assert st["last"]["outcome"] == "abandoned" and st["consecutive_failures"] == 2
        assert st["abandoned"][-1]["run_id"] == poisoned[0]

        report = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert report.verdict == "committed", report.reason
        assert report.run_id != poisoned[0]
        assert {mem.get(i).status.value for i in ids} == {"consolidated"}
        st = consolidation_status(mem)
        assert st["consecutive_failures"] == 0 and st["last_success_at"] is not None
        assert st["last"]["outcome"] == "committed" and st["last_committed_version"] == report.version


def test_item5_run_whose_process_keeps_dying_is_abandoned(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts are counted when a run starts: a run that kills its process every time
    (out of memory, say) is given up after max_attempts, not resumed forever."""

    class Died(BaseException):  # not an Exception: nothing in consolidate() sees it, like a kill
        pass

    def dies(self: _Run, state: dict) -> dict:
        raise Died

    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:1])
        with monkeypatch.context() as m:
            m.setattr(_Run, "self_edit", dies)
            for _ in range(2):
                with pytest.raises(Died):
                    mem.consolidate(progress=False, consolidation={"teacher": "none", "max_attempts": 2})
        (dead,) = pending_runs(mem)
        report = mem.consolidate(dry_run=True, progress=False, consolidation={"teacher": "none", "max_attempts": 2},
                                 selfedit={"strategies": ["raw"]})
        assert [a["run_id"] for a in report.abandoned] == [dead] and report.abandoned[0]["attempts"] == 2
        assert "interrupted 2 times" in report.abandoned[0]["reason"]
        assert report.run_id != dead and report.verdict == "skipped" and "dry run" in report.reason
        assert mem.get(ids[0]).status.value == "new"


def test_item6_teacher_none_runs_model_free_strategies_without_a_chat_model(home: Path) -> None:
    """consolidation.teacher = "none" with the default strategies (implications, self_qa,
    statements): no chat model is asked for; what needs one is skipped and counted."""
    with open_mem(home) as mem:
        ids = teach(mem, FACTS[:2])
        bad = mem.log([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}],
                      feedback=-1.0)
        report = mem.consolidate(progress=False, train=FAST_TRAIN, consolidation={"teacher": "none"},
                                 gate={"allow_unverified": True})
        assert report.verdict == "committed", report.reason
        # implications + self_qa for 2 interactions, critique for the negative one
        assert report.counts["skipped_needs_teacher"] == 5
        assert report.counts["self_edits"] == 2  # `statements`: what the user stated
        assert mem._chat is None  # the served model was never loaded to write self-edits
        assert {mem.get(i).status.value for i in ids} == {"consolidated"}
        assert mem.get(bad).status.value == "new"  # kept for a run with a teacher
        # Only model strategies configured: "raw only", as documented.
        more = teach(mem, FACTS[2:3])
        dry = mem.consolidate(dry_run=True, progress=False, consolidation={"teacher": "none"},
                              selfedit={"strategies": ["implications", "self_qa"]})
        assert [e["messages"][0]["content"] for e in dry.self_edits] == [FACTS[2][0]]
        assert mem.get(more[0]).status.value == "new"


def test_item7_status_shows_consolidation_outcome_from_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`seal-agent status` (and SealMemory.status) read the persisted record: last outcome,
    consecutive failures, last success time, the unfinished run's attempts."""
    from seal_agent.cli import main

    home = tmp_path / "home"

    def boom(self: _Run, state: dict) -> dict:
        raise RuntimeError("disk on fire")

    with SealMemory(home, model="tiny-random") as mem:  # the CLI's own (default) embeddings
        assert mem.status()["consolidation"]["last"] is None
        assert mem.consolidate(progress=False).verdict == "skipped"  # nothing new: a success
        with monkeypatch.context() as m:
            m.setattr(_Run, "collect", boom)
            with pytest.raises(ConsolidationError):
                mem.consolidate(progress=False)
    # A fresh process-like reader: a new SealMemory, and the CLI.
    with SealMemory(home, model="tiny-random") as other:
        st = other.status()["consolidation"]
    assert st["last"]["outcome"] == "failed" and "disk on fire" in st["last"]["reason"]
    assert st["consecutive_failures"] == 1 and st["last_success_at"] is not None
    assert st["pending"][0]["attempts"] == 1 and "disk on fire" in st["pending"][0]["last_error"]
    assert main(["--home", str(home), "--json", "status"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["consolidation"]["consecutive_failures"] == 1
    assert data["consolidation"]["last"]["outcome"] == "failed"
    assert main(["--home", str(home), "status"]) == 0
    out = capsys.readouterr().out
    assert "consecutive failures: 1" in out and "failed" in out and "disk on fire" in out
    assert f"last success: {st['last_success_at']}" in out


def test_item5_fit_examples_cuts_documents_drops_long_chats_and_unusable_items(tiny: tuple) -> None:
    """The data layer judges each example alone instead of rejecting the whole set."""
    from seal_agent.training.data import encode_example, encode_examples, fit_examples

    _, tok = tiny
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}
    long_chat = {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "fine"}]}
    no_answer = {"messages": [{"role": "user", "content": "no answer here"}]}
    fit = fit_examples(tok, [{"text": LONG}, long_chat, ok, no_answer], max_seq_len=64)
    assert fit.kept == [0, 2]
    assert [i for i, _ in fit.truncated] == [0] and fit.truncated[0][1] > 64
    assert [(i, why.split(":")[0]) for i, _, why in fit.dropped] == [(1, "too_long"), (3, "invalid")]
    assert fit.dropped[0][1] > 64
    cut = fit.examples[0]["text"]
    assert LONG.startswith(cut) and 32 < len(encode_example(tok, {"text": cut})) <= 64
    assert fit.examples[1] == ok
    encode_examples(tok, fit.examples, max_seq_len=64)  # what train_adapter does: no error now
