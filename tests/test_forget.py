"""forget() reaches everything (issue 10 item 2): the journal, Chroma (verified, and its
files), the middleware's cache, replay buffers, gate suites and reports, self-edit sets,
consolidation checkpoints, and the served weights -- also while a consolidation runs.

Real parts throughout: embedded Chroma, LangGraph checkpoints, peft training on
tiny-random (``gate.allow_unverified``: tiny-random has nothing to be judged on, and a
commit must happen for the weights to hold the secret). Every "nothing left" check
reads the raw bytes of every file under the home, SQLite and Chroma files included.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import waits
from fakes import HashEmbeddings, ScriptedChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from seal_agent import SealMemory
from seal_agent.consolidation import pending_runs
from seal_agent.forget import ForgetReport
from seal_agent.registry import AdapterRegistry

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

SECRET = "The vault code is Zorblax-4417-quux"
SECRET_Q = "What is the vault code?"
ALICE, BOB = ("users", "alice"), ("users", "bob")
# tiny-random writes no useful self-edits and ships no canaries: learn the exchange itself
# (`raw`) and let the first update in unverified, so that a commit happens.
RUN = {"selfedit": {"strategies": ["raw"]}, "consolidation": {"teacher": "none"},
       "gate": {"allow_unverified": True},
       "train": {"max_steps": 4, "lora_rank": 4, "learning_rate": 5e-3, "rehearsal_size": 0}}


def needles(text: str) -> list[bytes]:
    """The secret as it can appear in a file: raw, and as JSON escapes it."""
    return [text.encode(), json.dumps(text)[1:-1].encode(), b"Zorblax-4417"]


def files_with(home: Path, text: str = SECRET) -> list[str]:
    """Every file under `home` whose bytes contain the text (no file type is skipped)."""
    out = []
    for p in sorted(home.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if any(n in data for n in needles(text)):
                out.append(str(p.relative_to(home)))
    return out


def open_mem(home: Path, **config: object) -> SealMemory:
    mem = SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random")
    if config:
        mem.config = mem.config.with_overrides(**config)
    return mem


def log_pair(mem: SealMemory, ns: tuple[str, ...], q: str, a: str) -> str:
    return mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}], namespace=ns)


def teach_alice_and_bob(mem: SealMemory) -> tuple[str, str]:
    alice = log_pair(mem, ALICE, SECRET_Q, SECRET)
    bob = log_pair(mem, BOB, "What is my cat called?", "Your cat is called Mistigri.")
    mem.flush()
    return alice, bob


def served_score(mem: SealMemory) -> float:
    """Log-likelihood of the secret under what the chat model serves now (retrieval off)."""
    from seal_agent.training.scoring import answer_logprob

    chat = mem.chat_model(max_new_tokens=2)
    chat.invoke("warm-up")  # follows CURRENT before we read its weights
    with chat._host.pinned() as model:  # exactly what a request runs on (the base: adapters disabled)
        return answer_logprob(model, chat.tokenizer, [{"role": "user", "content": SECRET_Q}], SECRET)


# ------------------------------------------------------------- forget a namespace


def test_forget_namespace_after_consolidation_leaves_no_byte_and_serves_the_base(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_mem(home) as mem:
        alice, bob = teach_alice_and_bob(mem)
        base = served_score(mem)
        report = mem.consolidate(progress=False, **RUN)
        assert report.verdict == "committed", report.reason
        learned = served_score(mem)
        assert learned != base  # the weights now hold something of the secret
        assert files_with(home)  # and so do many files: the journal, Chroma, replay, suite, runs...

        fr = mem.forget(namespace=ALICE)

        assert isinstance(fr, ForgetReport)
        assert fr.ids == [alice] and fr.journal_rows == fr.forgotten == 1
        assert fr.chroma_deleted == 1 and fr.chroma_pending == 0
        assert mem._index.present([alice]) == []  # verified, not fire-and-forget
        assert fr.adapters_deleted == [f"global/{report.version}"]
        assert fr.rolled_back == {"global": None} and fr.serving == {"global": None}
        assert fr.requeued == 1 and mem.get(bob).status.value == "new"  # bob is learned again later
        assert fr.replay_items == 2 and fr.suite_items == 1  # both runs' examples; alice's past task
        assert fr.run_folders == 1 and fr.self_edit_sets == 1 and fr.checkpoint_threads == 1
        assert fr.gate_reports == 1
        assert fr.pending == [] and fr.residual == []
        assert files_with(home) == []  # at once, with the memory still open
        assert mem.recall(SECRET_Q, namespace=ALICE) == []
        # the served weights are the base model's again, exactly
        assert served_score(mem) == base
        assert mem.adapters.current is None and mem.adapters.list() == []

        again = mem.consolidate(progress=False, **RUN)  # bob alone, without her
        assert again.verdict == "committed", again.reason
        manifest = mem.adapters.get(again.version).manifest
        assert manifest["lineage"]["interaction_ids"] == [bob]
    assert files_with(home) == []
    assert files_with(home, "Mistigri")  # bob's memory is all still there


def test_forget_by_ids_rolls_back_to_the_newest_clean_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_mem(home) as mem:
        first = log_pair(mem, BOB, "Where do I live?", "You live in Trondheim, by the fjord.")
        v1 = mem.consolidate(progress=False, **RUN)
        assert v1.verdict == "committed", v1.reason
        alice, bob = teach_alice_and_bob(mem)
        other = log_pair(mem, ALICE, "What is my favourite colour?", "Your favourite colour is teal green.")
        v2 = mem.consolidate(progress=False, **RUN)
        assert v2.verdict == "committed" and mem.adapters.current == v2.version

        fr = mem.forget(ids=[alice, "0" * 24])  # an unknown id is not an error

        assert fr.ids == [alice]
        assert fr.adapters_deleted == [f"global/{v2.version}"]
        assert fr.rolled_back == {"global": v1.version} and fr.serving == {"global": v1.version}
        assert mem.adapters.current == v1.version  # v1 never saw her: it serves again
        assert fr.requeued == 2  # bob's and alice's other interaction of v2: learned again later
        assert {mem.get(i).status.value for i in (bob, other)} == {"new"}
        assert mem.get(first).status.value == "consolidated"
        assert fr.pending == [] and fr.residual == []
        assert files_with(home) == []
        assert files_with(home, "teal green")  # her other memory is kept: only the id was forgotten
        replay = json.loads((home / "consolidation" / "replay.json").read_text())
        assert {item["run_id"] for item in replay["items"]} == {v1.run_id}
        assert mem.forget(ids=[alice]).forgotten == 0  # already forgotten: nothing to do


def test_namespace_lineage_of_a_forgotten_namespace_is_deleted_whole(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_mem(home, consolidation={"adapter_scope": "namespace"}) as mem:
        alice, bob = teach_alice_and_bob(mem)
        report = mem.consolidate(progress=False, **RUN)
        assert report.verdict == "committed", report.reason
        from seal_agent.lineage import Lineage

        alice_ln, bob_ln = Lineage(home, ALICE), Lineage(home, BOB)
        bob_current = bob_ln.registry().current
        assert alice_ln.registry().current is not None and bob_current is not None

        fr = mem.forget(namespace=ALICE)

        assert fr.lineages_deleted == [alice_ln.name]
        assert not alice_ln.root.exists() and not alice_ln.suite_path.exists()
        assert fr.serving.get(bob_ln.name) == bob_current  # bob's lineage is untouched
        assert bob_ln.registry().current == bob_current and mem.get(bob).status.value == "consolidated"
        assert fr.requeued == 0 and fr.pending == [] and fr.residual == []
        assert files_with(home) == []


# ---------------------------------------------------------------------- chroma


_OWNER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    mem = SealMemory({home!r}, embeddings=HashEmbeddings(), model="tiny-random")
    mem.config = mem.config.with_overrides(memory={{"poll_interval_s": 0.1}})
    mem._worker.poll_interval_s = 0.1
    print("OWNER", flush=True)
    while not os.path.exists({flag!r}):
        time.sleep(0.05)
    mem.close()
    """
)


def test_forget_in_a_process_that_does_not_own_the_index_is_finished_by_the_owner(tmp_path: Path) -> None:
    home, flag = tmp_path / "home", tmp_path / "stop"
    with open_mem(home) as mem:
        alice, _bob = teach_alice_and_bob(mem)
    owner = subprocess.Popen([sys.executable, "-c", _OWNER.format(tests=str(Path(__file__).parent), home=str(home),
                                                                  flag=str(flag))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "OWNER"
        with open_mem(home) as mem:
            fr = mem.forget(namespace=ALICE)
            assert fr.ids == [alice] and fr.chroma_deleted == 0 and fr.chroma_pending == 1
            assert any("owns the embedded index" in p for p in fr.pending)
            deadline = 120
            while mem._journal.backlog() and deadline > 0:  # the owner deletes it within its poll
                time.sleep(0.1)
                deadline -= 0.1
            assert mem._journal.backlog() == 0
    finally:
        flag.touch()
        _out, err = waits.communicate(owner)
    assert owner.returncode == 0, err[-2000:]
    assert files_with(home) == []  # the owner scrubbed Chroma's files after deleting


def test_unused_vector_slots_are_cleared(tmp_path: Path) -> None:
    """hnswlib leaves the slots past its elements uninitialised and Chroma writes them to
    disk as they were in memory (document text was found there): they are zeroed."""
    import struct

    from seal_agent.forget import zero_hnsw_slack

    home = tmp_path / "home"
    with open_mem(home) as mem:
        teach_alice_and_bob(mem)
    header = sorted((home / "chroma").glob("*/header.bin"))[0]  # one vector segment per namespace
    data = header.with_name("data_level0.bin")
    _v, _o, max_elements, count, per_element = struct.unpack("<IQQQQ", header.read_bytes()[:36])
    assert count < max_elements and data.stat().st_size == max_elements * per_element
    blob = bytearray(data.read_bytes())
    blob[-len(SECRET) - 10:-10] = SECRET.encode()  # what process memory left in a free slot
    used = bytes(blob[:count * per_element])
    data.write_bytes(bytes(blob))
    assert zero_hnsw_slack(home / "chroma") == len(list((home / "chroma").glob("*/header.bin")))
    after = data.read_bytes()
    assert after[:count * per_element] == used and not any(after[count * per_element:])
    assert SECRET.encode() not in after
    # length.bin has one 4-byte slot per element, the unused ones as uninitialised
    lengths = header.with_name("length.bin")
    blob = bytearray(lengths.read_bytes())
    assert len(blob) == max_elements * 4
    blob[-12:-2] = b"secretbits"
    lengths.write_bytes(bytes(blob))
    zero_hnsw_slack(home / "chroma")
    assert not any(lengths.read_bytes()[count * 4:])


# ---------------------------------------------------------------- the registry


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (untrained) PEFT LoRA folder on a tiny Llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules="all-linear", bias="none"))
    out = tmp_path_factory.mktemp("adapter") / "a"
    model.save_pretrained(str(out))
    return out


class _Crash(Exception):
    pass


@pytest.mark.parametrize("point", ["deleting", "deleting-current", "deleted-one"])
def test_registry_delete_versions_finishes_after_a_crash(tmp_path: Path, adapter_dir: Path,
                                                         point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import seal_agent.registry as registry_module

    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, {"lineage": {"interaction_ids": ["a"]}})
    v2 = reg.commit(adapter_dir, {"lineage": {"interaction_ids": ["b"]}})
    v3 = reg.commit(adapter_dir, {"lineage": {"interaction_ids": ["c"]}})

    def crash(name: str) -> None:
        if name == point:
            raise _Crash(name)

    monkeypatch.setattr(registry_module, "_fault_hook", crash)
    with pytest.raises(_Crash):
        reg.delete_versions([v2, v3], new_current=v1)
    monkeypatch.setattr(registry_module, "_fault_hook", None)
    reopened = AdapterRegistry(tmp_path / "adapters")  # opening finishes the deletion
    assert [v.version for v in reopened.list()] == [v1]
    assert reopened.current == v1
    assert not (tmp_path / "adapters" / ".deleting").exists()
    assert reopened.delete_versions([v1], new_current=None) == [v1]
    assert reopened.current is None and reopened.serving().version is None


def test_writer_versions_that_learned_a_forgotten_interaction_are_deleted(tmp_path: Path, adapter_dir: Path) -> None:
    """The self-edit writer (ReST-EM) is trained on self-edits of interactions and lists
    them in its manifests: its versions that saw a forgotten one go like the others."""
    from seal_agent.selfedit.writer import writer_registry

    home = tmp_path / "home"
    with open_mem(home) as mem:
        alice, bob = teach_alice_and_bob(mem)
        writer = writer_registry(home)
        clean = writer.commit(adapter_dir, {"lineage": {"interaction_ids": [bob]}})
        saw = writer.commit(adapter_dir, {"lineage": {"interaction_ids": [alice, bob]}})
        run = home / "writer" / "runs" / "run-1" / "round-0"
        run.mkdir(parents=True)
        (run / "candidates.json").write_text(json.dumps({"interaction_id": alice, "text": SECRET}))

        fr = mem.forget(ids=[alice])

        assert f"writer/{saw}" in fr.adapters_deleted and fr.rolled_back["writer"] == clean
        assert writer_registry(home).current == clean and fr.serving["writer"] == clean
        assert not (home / "writer" / "runs" / "run-1").exists()
        assert fr.residual == [] and files_with(home) == []


# ------------------------------------------------------------------ middleware


def test_middleware_never_shows_a_memory_forgotten_during_the_turn(tmp_path: Path) -> None:
    from langchain_core.tools import tool

    with open_mem(tmp_path / "home") as mem:
        rex = log_pair(mem, ("users", "ann"), "My dog is called Rex.", "Noted, Rex it is.")

        @tool
        def forget_dog() -> str:
            """Forget the dog."""
            mem.forget(ids=[rex])
            return "done"

        model = ScriptedChatModel([
            AIMessage("", tool_calls=[{"name": "forget_dog", "args": {}, "id": "c1"}]),
            AIMessage("Forgotten."),
        ])
        agent = create_agent(model, tools=[forget_dog], middleware=[mem.middleware()])
        agent.invoke({"messages": [HumanMessage("What is my dog called?")]},
                     {"configurable": {"thread_id": "t1", "user_id": "ann"}})

        def shown(prompt: list) -> str:
            return "\n".join(str(m.content) for m in prompt if isinstance(m, SystemMessage))

        assert len(model.prompts) == 2
        assert "Rex" in shown(model.prompts[0])  # recalled before the tool ran
        assert "Rex" not in shown(model.prompts[1])  # the same turn's next call recalls afresh


# ------------------------------------------------- forget during a consolidation


_CHILD = textwrap.dedent(
    """
    import os, sys, time, json
    sys.path.insert(0, {tests!r})
    from fakes import HashEmbeddings
    import seal_agent.consolidation as c
    import seal_agent.forget as f
    from seal_agent import SealMemory

    hold, flag = {hold!r}, {flag!r}

    def stall():
        print("IN", hold, flush=True)
        while not os.path.exists(flag):  # the parent forgets, then lets us go (or kills us)
            time.sleep(0.05)

    if hold in ("train", "gate"):  # before the node
        original = getattr(c._Run, hold)
        def node(self, state):
            stall()
            return original(self, state)
        setattr(c._Run, hold, node)
    else:  # before the guarded node, outside its lock: commit (before storing), mark (after it)
        real = f.guard_node
        def guard_node(memory, fn):
            guarded = real(memory, fn)
            if fn.__name__ != hold:
                return guarded
            def node(state):
                stall()
                return guarded(state)
            node.__name__ = fn.__name__
            return node
        c.guard_node = guard_node
    mem = SealMemory({home!r}, embeddings=HashEmbeddings(), model="tiny-random")
    report = mem.consolidate(progress=False, **{run!r})
    print("REPORT", json.dumps({{"verdict": report.verdict, "reason": report.reason}}), flush=True)
    mem.close()
    """
)


@pytest.mark.parametrize(("hold", "kill"), [("train", True), ("gate", False), ("commit", False),
                                            ("mark", False), ("mark", True)])
def test_forget_during_a_consolidation_commits_nothing_of_hers_and_never_wedges(
        tmp_path: Path, hold: str, kill: bool) -> None:
    home = tmp_path / "home"
    with open_mem(home) as mem:
        alice, bob = teach_alice_and_bob(mem)
    flag = tmp_path / "go"
    script = _CHILD.format(tests=str(Path(__file__).parent), hold=hold, flag=str(flag), home=str(home), run=RUN)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            child.wait(30)
            raise AssertionError(child.stderr.read() if child.stderr else "child died")
        assert line.strip() == f"IN {hold}"
        with open_mem(home) as mem:  # another process, while the run is in progress
            fr = mem.forget(namespace=ALICE)
            assert fr.ids == [alice]
            if hold == "mark":  # the run had committed her: that version is gone at once
                assert fr.adapters_deleted and fr.serving == {"global": None}
            assert mem.adapters.current is None
            assert any("in progress" in p for p in fr.pending)
        if kill:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        else:
            flag.touch()
            out, err = waits.communicate(child)
            assert child.returncode == 0, err[-3000:]
            done = json.loads(out.split("REPORT ", 1)[1])
            assert done["verdict"] == "skipped" and done["reason"].startswith("dropped"), done
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    with open_mem(home) as mem:
        assert mem.adapters.current is None  # nothing of hers was ever committed
        assert mem.get(bob).status.value == "new"  # the dropped run's other interaction waits
        report = mem.consolidate(progress=False, **RUN)  # the next consolidation succeeds
        assert report.verdict == "committed", report.reason
        assert mem.adapters.get(report.version).manifest["lineage"]["interaction_ids"] == [bob]
        assert pending_runs(mem) == []
        assert not (home / "consolidation" / "FORGET_PENDING").exists()
    assert files_with(home) == []


def test_forget_weights_retrain_relearns_the_others_at_once_without_her(tmp_path: Path) -> None:
    """``consolidation.forget_weights = "retrain"``: the rollback happens, then forget runs
    the consolidation of the requeued interactions before it returns (through the gate)."""
    home = tmp_path / "home"
    config = {**RUN, "consolidation": {"teacher": "none", "forget_weights": "retrain"}}
    with open_mem(home, **config) as mem:
        alice, bob = teach_alice_and_bob(mem)
        first = mem.consolidate(progress=False)
        assert first.verdict == "committed", first.reason

        fr = mem.forget(namespace=ALICE)

        assert fr.adapters_deleted == [f"global/{first.version}"] and fr.requeued == 1
        assert fr.retrained is not None and [r["verdict"] for r in fr.retrained] == ["committed"]
        current = mem.adapters.current
        assert current == fr.retrained[0]["version"] != first.version
        assert mem.adapters.get(current).manifest["lineage"]["interaction_ids"] == [bob]
        assert mem.get(bob).status.value == "consolidated"
        assert "retrained global: committed" in fr.summary()
        assert fr.residual == [] and files_with(home) == []
    with pytest.raises(Exception, match="forget_weights"):
        from seal_agent.config import ConsolidationConfig

        ConsolidationConfig(forget_weights="keep")


# ------------------------------------------- forget beside another process's writes


_VICTIM = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    # opened first: this process owns the embedded index, so its worker thread writes the
    # journal (marking the other process's rows indexed) while forget runs
    mem = SealMemory({home!r}, embeddings=HashEmbeddings(), model="tiny-random")
    print("READY", flush=True)
    while not os.path.exists({go!r}):
        time.sleep(0.02)
    for i in range({rounds}):
        text = f"victim secret number {{i}}: the locker code is {{i * 7919:08d}}"
        iid = mem.log([{{"role": "user", "content": text}}, {{"role": "assistant", "content": "noted " + text}}],
                      namespace=("users", "victim"))
        report = mem.forget(ids=[iid])  # its residual check searches the home for `text`
        print("FORGOT", iid, *report.residual, flush=True)
        time.sleep(0.2)
    mem.close()
    """
)

_WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from fakes import HashEmbeddings
    from seal_agent import SealMemory
    open({go!r}, "w").close()
    n = 0
    while not os.path.exists({stop!r}) and n < {most}:
        # a process that opens the home, logs a few and closes it (a CLI, a short job):
        # closing its last connection is when SQLite checks whether any other process
        # still has the journal open
        mem = SealMemory({home!r}, embeddings=HashEmbeddings(), model="tiny-random")
        for _ in range(5):
            iid = mem.log([{{"role": "user", "content": f"note {{n}} of the other tenant"}}],
                          namespace=("users", "other"))
            print("ACK", iid, flush=True)  # acknowledged: log() returned its id
            n += 1
        mem.close()
        time.sleep(0.02)
    """
)


def test_forget_in_a_loop_beside_another_writer_keeps_the_journal_whole(tmp_path: Path) -> None:
    """Issue 22 item 1: forget's residual check read ``journal.sqlite3*`` with plain file I/O,
    and closing those descriptors dropped the process's own SQLite locks (POSIX locks are
    per process): another process then wrote at the same time, and the journal lost
    acknowledged rows and failed ``PRAGMA integrity_check``. Real processes, real SQLite."""
    import sqlite3

    home, go, stop = tmp_path / "home", tmp_path / "go", tmp_path / "stop"
    tests, rounds = str(Path(__file__).parent), 10
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM.format(tests=tests, home=str(home), go=str(go),
                                                                    rounds=rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = None
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == "READY"
        writer = subprocess.Popen([sys.executable, "-c", _WRITER.format(tests=tests, home=str(home), go=str(go),
                                                                        stop=str(stop), most=5000)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        v_out, v_err = waits.communicate(victim)
    finally:
        stop.touch()
        if victim.poll() is None:
            victim.kill()
        w_out, w_err = waits.communicate(writer) if writer is not None else ("", "")
    assert victim.returncode == 0, v_err[-3000:]
    assert writer.returncode == 0, w_err[-3000:]
    forgotten = [line.split()[1] for line in v_out.splitlines() if line.startswith("FORGOT ")]
    residual = [p for line in v_out.splitlines() if line.startswith("FORGOT ") for p in line.split()[2:]]
    acked = [line.split()[1] for line in w_out.splitlines() if line.startswith("ACK ")]
    assert len(forgotten) == rounds and acked
    # The check still ran and found nothing -- outside Chroma's vector segments: the victim
    # indexes the other process's thousands of rows, and Chroma writes a segment out from
    # memory every ~1,000 writes, unused slots included (README, "Limits"; cleared at close).
    assert [p for p in residual if not re.fullmatch(r"chroma/[0-9a-f-]{36}/[a-z_0-9]+\.bin", p)] == []

    db = sqlite3.connect(home / "journal.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    with open_mem(home) as mem:
        kept = mem._journal.get_many(acked)
        assert [i for i in acked if i not in kept] == []  # every acknowledged write is there
        assert len(mem.list(namespace=("users", "other"))) == len(acked)
        assert mem._journal.get_many(forgotten) == {}
    assert list(home.rglob(".forget-scan-*")) == []  # the copies it searched are gone


class _LiveSqliteFileIO:
    """Records every SQLite file (database, log, shared memory) that Python's file I/O
    opens while this process already holds it open -- through SQLite, Chroma's or ours:
    the close that follows drops the locks SQLite holds on it (Linux: /proc/self/fd)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import builtins
        import io
        import os
        import re

        self.opened: list[str] = []
        sqlite_name = re.compile(r"\.(sqlite3?|db)(-wal|-shm|-journal)?$")

        def held(path: str) -> bool:
            real = os.path.realpath(path)
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if os.readlink(f"/proc/self/fd/{fd}") == real:
                        return True
                except OSError:
                    continue
            return False

        def spy(real: Callable[..., Any]) -> Callable[..., Any]:
            def opener(file: Any, *args: Any, **kwargs: Any) -> Any:
                if isinstance(file, (str, bytes, os.PathLike)):
                    name = os.fsdecode(file)
                    if sqlite_name.search(name) and held(name):
                        self.opened.append(name)
                return real(file, *args, **kwargs)
            return opener

        monkeypatch.setattr(builtins, "open", spy(builtins.open))
        monkeypatch.setattr(io, "open", spy(io.open))  # pathlib's read_bytes
        monkeypatch.setattr(os, "open", spy(os.open))


def test_forget_never_opens_a_live_sqlite_file_with_python_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The class of issue 22's defect: closing a descriptor of a live SQLite file drops
    this process's locks on it. forget (this process owns the embedded index, so Chroma's
    files are scrubbed and searched here too, after a consolidation checkpointed its run)
    searches the journal, the checkpoints and Chroma's database through SQLite only --
    and still finds nothing left."""
    home = tmp_path / "home"
    with open_mem(home) as mem:
        alice, _bob = teach_alice_and_bob(mem)
        assert mem.consolidate(progress=False, **RUN).verdict == "committed"
        assert (home / "consolidation" / "checkpoints.sqlite3").is_file()
        spy = _LiveSqliteFileIO(monkeypatch)
        fr = mem.forget(namespace=ALICE)
        monkeypatch.undo()
        assert fr.ids == [alice] and fr.chroma_deleted == 1
        assert spy.opened == []
        assert fr.pending == [] and fr.residual == []
    assert files_with(home) == []  # closed: every byte of every file, read here
    assert list(home.rglob(".forget-scan-*")) == []


def test_residual_check_reads_databases_through_sqlite_free_pages_and_log_included(tmp_path: Path) -> None:
    """What forget's residual check finds in an SQLite file without opening it: text in a
    row, in a free page (deleted without secure_delete) and only in the write-ahead log
    (checkpointed through SQLite first); the database stays whole and the copy is gone."""
    import sqlite3

    from seal_agent.forget import _database_holds, _Matcher, _residual

    home = tmp_path / "home"
    home.mkdir()
    needle = "the forgotten locker code 0451-xyzzy"
    hit = _Matcher([], [])
    hit.needles, hit.has_text = [needle.encode()], True

    def db_with(name: str, how: str) -> sqlite3.Connection:
        db = sqlite3.connect(home / name, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA secure_delete=OFF")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the row stays in the log until checkpointed
        db.execute("CREATE TABLE t(x)")
        db.executemany("INSERT INTO t VALUES (?)", [(f"filler {i} " * 40,) for i in range(100)])
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if how == "free page":
            db.executemany("INSERT INTO t VALUES (?)", [(needle * 30,) for _ in range(30)])
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute("DELETE FROM t WHERE x LIKE 'the forgotten%'")
            assert db.execute("PRAGMA freelist_count").fetchone()[0] > 0
        else:
            db.execute("INSERT INTO t VALUES (?)", (f"a row with {needle}",))
        return db

    clean = db_with("clean.sqlite3", "none")
    clean.execute("DELETE FROM t WHERE x LIKE 'a row with%'")  # secure_delete off: a freed cell
    clean.execute("VACUUM")
    free, in_log = db_with("free.sqlite3", "free page"), db_with("log.db", "log")
    assert (home / "log.db-wal").stat().st_size > 0  # the row is in the log only
    try:
        assert _database_holds(home / "clean.sqlite3", hit.text_in) == (False, None)
        assert _database_holds(home / "free.sqlite3", hit.text_in) == (True, None)
        problems: list[str] = []
        assert _residual(home, hit, problems=problems) == ["free.sqlite3", "log.db"]
        assert problems == []
        assert (home / "log.db-wal").stat().st_size == 0  # checkpointed and truncated, by SQLite
        for db in (clean, free, in_log):  # still whole, still usable by their connections
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            db.execute("INSERT INTO t VALUES ('after')")
    finally:
        for db in (clean, free, in_log):
            db.close()
    assert list(home.glob(".forget-scan-*")) == []


def test_residual_check_reads_a_file_named_like_a_database_that_is_not_one(tmp_path: Path) -> None:
    """A file with an SQLite name that SQLite refuses ("file is not a database") cannot be
    held by SQLite: it is searched as plain bytes, not reported as unsearchable."""
    from seal_agent.forget import _Matcher, _residual

    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.db").write_bytes(b"x" * 200 + b"the forgotten locker code 0451-xyzzy" + b"y" * 4000)
    hit = _Matcher([], [])
    hit.needles, hit.has_text = [b"the forgotten locker code 0451-xyzzy"], True
    problems: list[str] = []
    assert _residual(home, hit, problems=problems) == ["notes.db"] and problems == []


def test_a_second_journal_on_a_live_home_never_opens_its_file_with_python_io(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same class of defect outside forget: opening a journal checked its header with
    `open()`, and the close dropped the locks of this process's other connection to it
    (a second `SealMemory` on the same home in one process). A journal nobody holds yet
    is still checked (a damaged file is refused before SQLite touches it)."""
    from seal_agent.errors import StorageError
    from seal_agent.memory.journal import Journal

    path = tmp_path / "journal.sqlite3"
    first = Journal(path)
    first.insert_many([])  # a connection of this process holds the file
    first._db().execute("SELECT COUNT(*) FROM interactions").fetchone()
    spy = _LiveSqliteFileIO(monkeypatch)
    second = Journal(path)
    monkeypatch.undo()
    assert spy.opened == []
    second.close()
    first.close()
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not a database" * 10)
    with pytest.raises(StorageError, match="not an SQLite database"):
        Journal(bad)
    # the same for Chroma's database, checked whenever the index (re)opens its client
    from seal_agent.memory.chroma import check_embedded

    with open_mem(tmp_path / "home") as mem:
        log_pair(mem, ALICE, "What is my cat called?", "Your cat is called Mistigri.")
        mem.flush()
        assert mem.recall("cat", namespace=ALICE)
        spy = _LiveSqliteFileIO(monkeypatch)
        check_embedded(tmp_path / "home")
        monkeypatch.undo()
        assert spy.opened == []


def test_the_ttl_sweep_purges_an_expired_interactions_text_everywhere(tmp_path: Path) -> None:
    """The TTL sweep forgets an expired interaction by id everywhere -- replay buffer, gate
    suite, run folders of the adapter that learned it -- and leaves its text nowhere. (By
    id, not by text: a live row may say the same words, e.g. the same exchange logged again
    after expiry, and must keep them.)"""
    from seal_agent.errors import NotFoundError

    home = tmp_path / "home"
    with open_mem(home) as mem:
        alice = mem.log([{"role": "user", "content": SECRET_Q}, {"role": "assistant", "content": SECRET}],
                        namespace=ALICE, ttl_s=3600)
        log_pair(mem, BOB, "What is my cat called?", "Your cat is called Mistigri.")
        mem.flush()
        report = mem.consolidate(progress=False, **RUN)
        assert report.verdict == "committed", report.reason
        assert mem.get(alice).status.value == "consolidated" and files_with(home)
        with mem._journal._tx() as db:  # the hour is up (a clock in the past, not a wait)
            db.execute("UPDATE interactions SET expires_at=? WHERE id=?", (946684800.0, alice))
        with pytest.raises(NotFoundError):
            mem.get(alice)
        assert mem.expire() == 1
        assert alice in mem._journal.forgotten_ids()
        assert files_with(home) == []
