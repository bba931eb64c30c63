"""The README's main job on the real default model (smollm2-135m), run once through the
installed console script: episodic recall by the real LLM, facts consolidated from the
model's own self-edits and answered closed-book, a destructive update rejected on the
shipped canaries. The adapter and gate commands are checked on the home it leaves.

This is the suite's real-model consolidation (slow: the model writes its self-edits
and a 135M model is trained on the CPU), so every assertion shares one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import waits

from seal_agent.cli import main
from seal_agent.demo import TOLD

# The module fixture runs for minutes, longer under load (18 on a loaded 2-core machine):
# its wait fails on a stall (tests/waits.py), and scripts/test.sh's --timeout=3600 stays
# as the hang guard (a child whose background threads still tick is never "stalled").
pytestmark = [pytest.mark.slow]

# General abilities the base model has; they must survive the committed update.
GENERAL = [("What is the capital of France?", "Paris"), ("What is the opposite of hot?", "cold")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("demo") / "home"
    exe = Path(sys.executable).parent / "seal-agent"
    # No clock: the demo took 18 minutes on a loaded 2-core machine (5 idle). It runs as
    # long as it keeps working (tests/waits.py), with a generous stall window for the
    # moments it waits on its own embedding child.
    proc = waits.run([str(exe), "--json", "demo", "--demo-home", str(home)], text=True, stall_s=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    result["home_path"] = home
    return result


def cli(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_part1_the_real_llm_answers_from_recalled_memories(demo: dict) -> None:
    turns = {(t["user"], t["message"]): t for t in demo["turns"]}
    alice = turns[("alice", "What is the name of my dog?")]
    assert any("Rex" in r for r in alice["recalled"]) and not any("Bolt" in r for r in alice["recalled"])
    assert "Rex" in alice["answer"]
    bob = turns[("bob", "What is my dog called?")]
    assert any("Bolt" in r for r in bob["recalled"]) and "Bolt" in bob["answer"]
    carol = turns[("carol", "What is my dog called?")]
    assert carol["recalled"] == [] and "Rex" not in carol["answer"] and "Bolt" not in carol["answer"]


def test_part2_facts_are_answered_closed_book_after_consolidation(demo: dict) -> None:
    good = demo["consolidations"][0]
    assert good["verdict"] == "committed", good
    assert good["lineage"].startswith("users.dana-")  # dana's own adapter lineage
    facts = demo["facts"]
    right = [f["expected"].lower() in f["after"].lower() for f in facts]
    assert not any(f["expected"].lower() in f["before"].lower() for f in facts)
    assert sum(right) >= 3, [(f["question"], f["after"]) for f in facts]
    assert sum(f["logprob_after"] > f["logprob_before"] for f in facts) >= 3


def test_part2_another_tenant_is_served_the_base_model(demo: dict) -> None:
    """Issue 10's isolation on the real model: dana's facts, asked as erin, are no more
    likely than under the base model (erin has no lineage: she is served the base)."""
    for f in demo["facts"]:
        assert f["logprob_other"] <= f["logprob_before"] + 1e-3, f
        assert f["expected"].lower() not in f["other"].lower(), f


def test_part2_general_abilities_survive_the_committed_update(demo: dict) -> None:
    from seal_agent import SealMemory

    with SealMemory(demo["home_path"]) as mem:
        chat = mem.chat_model(max_new_tokens=24)
        adapter = mem.lineage(("users", "dana")).registry().current
        assert adapter is not None
        dana = str(mem.lineage(("users", "dana")).adapters_dir / adapter)
        answers = [row[0] for row in chat.generate_batch([q for q, _ in GENERAL], adapter=dana)]
    assert all(exp.lower() in a.lower() for a, (_, exp) in zip(answers, GENERAL, strict=True)), answers
    gate = demo["consolidations"][0]["gate"]
    assert "canar" in " ".join(gate["reasons"])  # judged on the shipped canaries, not "nothing to judge"


def test_part2_self_edits_are_grounded_and_every_drop_is_kept(demo: dict) -> None:
    good = demo["consolidations"][0]
    run_dir = demo["home_path"] / "consolidation" / "runs" / good["run_id"]
    data = json.loads((run_dir / "selfedits.json").read_text())
    assert data["format_version"] >= 2 and data["edits"]
    assert sum(data["dropped"].values()) >= len(data["rejected"])
    for r in data["rejected"]:
        assert r["reason"] in data["dropped"] and r["strategy"] and isinstance(r["text"], str)
    # What the user stated is learned as it was said, labels and acknowledgement left out
    # (added once, by `implications` or `statements`)...
    stated = [e["example"]["text"] for e in data["edits"] if not e["model_written"] and "text" in e["example"]]
    assert any("Orlo" in t and "Got it" not in t and "User:" not in t for t in stated), stated
    # ...and no kept model-written item states what the exchange did not.
    from seal_agent.selfedit._filters import unsupported_words

    told = " ".join(TOLD)
    for e in data["edits"]:
        if e["model_written"] and "text" in e["example"]:
            assert unsupported_words(e["example"]["text"], told) == [], e


def test_part3_destructive_update_is_rejected_and_the_good_adapter_keeps_serving(demo: dict) -> None:
    good, bad = demo["consolidations"]
    assert bad["verdict"] == "rejected", bad
    assert bad["lineage"] == good["lineage"]  # the same user's adapter was at stake
    assert "canar" in bad["reason"]


def test_adapter_and_gate_commands_on_the_demo_home(demo: dict, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    home = demo["home_path"]
    good, bad = demo["consolidations"]
    ns = ("--namespace", "users/dana")
    code, out, _ = cli(capsys, home, "--json", "adapters", "list")
    assert json.loads(out) == []  # the global lineage learned nothing: every user has their own
    code, out, _ = cli(capsys, home, "--json", "adapters", "list", *ns)
    versions = {v["version"]: v for v in json.loads(out)}
    assert versions[good["version"]]["current"] and versions[good["version"]]["verdict"] == "committed"
    assert versions[bad["version"]]["verdict"] == "rejected" and not versions[bad["version"]]["current"]
    assert all("unverified" in v for v in versions.values())

    code, out, _ = cli(capsys, home, "adapters", "show", good["version"], *ns)
    assert code == 0 and json.loads(out)["version"] == good["version"]
    code, out, _ = cli(capsys, home, "gate", "report", bad["version"], *ns)
    assert code == 0 and "REJECTED" in out.upper()
    code, out, _ = cli(capsys, home, "gate", "report", good["version"], *ns)
    assert code == 0 and "PASS" in out.upper()

    code, out, _ = cli(capsys, home, "adapters", "export", good["version"], str(tmp_path / "export"), *ns)
    assert code == 0 and (tmp_path / "export" / "adapter_model.safetensors").exists()
    code, _, err = cli(capsys, home, "adapters", "rollback", bad["version"], *ns)  # never committed: refused
    assert code == 1 and bad["version"].split("-")[0] in err
    code, _, err = cli(capsys, home, "consolidate", "--approve", "run-nope")
    assert code == 1 and "run-nope" in err
