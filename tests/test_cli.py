"""The `seal-agent` command: status, memories search/list/import/forget, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seal_agent.cli import main


def run(capsys: pytest.CaptureFixture[str], home: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [
    {"messages": [{"role": "user", "content": "I love sushi"}, {"role": "assistant", "content": "Yum"}],
     "namespace": "users/ann", "thread_id": "t1", "metadata": {"src": "import"}, "feedback": 0.5},
    {"messages": [{"role": "user", "content": "I hate rain"}, {"role": "assistant", "content": "Same"}],
     "namespace": ["users", "ann"]},
    {"messages": [{"role": "user", "content": "I love pizza"}, {"role": "assistant", "content": "Nice"}],
     "namespace": "users/bob"},
]


def test_import_search_status_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    code, out, _ = run(capsys, home, "memories", "import", str(write_jsonl(tmp_path / "in.jsonl", ROWS)))
    assert code == 0 and "imported 3" in out

    code, out, _ = run(capsys, home, "--json", "memories", "search", "favourite food", "--namespace", "users/ann")
    hits = json.loads(out)
    assert code == 0 and hits[0]["text"].startswith("User: I love sushi")
    assert {h["namespace"] for h in hits} == {"users/ann"}  # never bob's pizza
    assert hits[0]["metadata"]["feedback"] == 0.5 and hits[0]["metadata"]["src"] == "import"

    code, out, _ = run(capsys, home, "--json", "status")
    st = json.loads(out)
    assert st["interactions"] == 3 and st["by_namespace"] == {"users/ann": {"new": 2}, "users/bob": {"new": 1}}
    code, out, _ = run(capsys, home, "status")
    assert "users/ann: new=2" in out and "chroma-embedded" in out

    code, out, _ = run(capsys, home, "memories", "forget", "--namespace", "users/ann")
    assert code == 0 and "forgot 2" in out
    code, out, _ = run(capsys, home, "--json", "memories", "list")
    assert [r["namespace"] for r in json.loads(out)] == [["users", "bob"]]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "line 2.messages[0].role='wizard'"),
        ({"messages": []}, "line 2.messages=[]"),
        ({"messages": ROWS[0]["messages"], "namespace": "a//b"}, "line 2.namespace"),
        ({"messages": ROWS[0]["messages"], "feedback": 3}, "line 2.feedback=3"),
        ({"messages": ROWS[0]["messages"], "colour": "red"}, "line 2.colour"),
    ],
)
def test_import_is_all_or_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad_line: dict,
                                  expected: str) -> None:
    home = tmp_path / "home"
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], bad_line])
    code, _, err = run(capsys, home, "memories", "import", str(path))
    assert code == 1 and expected in err
    code, out, _ = run(capsys, home, "--json", "status")
    assert json.loads(out)["interactions"] == 0


def test_import_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.jsonl").write_text("{nope\n")
    code, _, err = run(capsys, tmp_path / "h", "memories", "import", str(tmp_path / "x.jsonl"))
    assert code == 1 and "line 1" in err and "not JSON" in err
    code, _, err = run(capsys, tmp_path / "h", "memories", "import", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "no such file" in err


def test_errors_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, tmp_path / "h", "--json", "memories", "search", "x", "--namespace", "a//b")
    assert code == 1 and json.loads(out)["error"] == "ValidationError"


def test_demo_end_to_end(tmp_path: Path) -> None:
    """The README's main job: the installed console script, real graph, real Chroma, real embeddings."""
    exe = Path(sys.executable).parent / "seal-agent"
    proc = subprocess.run([str(exe), "--json", "demo", "--demo-home", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    turns = {(t["user"], t["message"]): t for t in result["turns"]}
    alice = turns[("alice", "What is the name of my dog?")]
    assert "Rex" in alice["answer"] and not any("Bolt" in r for r in alice["recalled"])
    assert "Bolt" in turns[("bob", "What is my dog called?")]["answer"]
    assert turns[("carol", "What is my dog called?")]["answer"] == "I don't know yet."
    assert "peanuts" in turns[("alice", "Can I have a peanut butter cookie?")]["answer"]
    # Part 2: facts consolidated into the weights are answered with retrieval off...
    good, bad = result["consolidations"]
    assert good["verdict"] == "committed"
    facts = result["facts"]
    assert sum(f["after"].startswith(f["expected"].rstrip(".")) for f in facts) >= 3
    assert all(f["logprob_after"] > f["logprob_before"] + 1.0 for f in facts)
    # ...and the destructive update is rejected by the gate; the good adapter keeps serving.
    assert bad["verdict"] == "rejected" and "past tasks" in bad["reason"]
    assert result["status"]["interactions"] == 16


def test_adapter_and_gate_commands_on_a_consolidated_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from seal_agent.demo import run_demo

    home = tmp_path / "demo"
    run_demo(home)  # one committed version, one rejected
    code, out, _ = run(capsys, home, "--json", "adapters", "list")
    versions = json.loads(out)
    assert [v["verdict"] for v in versions] == ["committed", "rejected"]
    assert [v["current"] for v in versions] == [True, False]
    v1, v2 = versions[0]["version"], versions[1]["version"]

    code, out, _ = run(capsys, home, "adapters", "show", "v0001")
    assert code == 0 and json.loads(out)["version"] == v1
    code, out, _ = run(capsys, home, "gate", "report", v2)
    assert code == 0 and "REJECTED" in out.upper()
    code, out, _ = run(capsys, home, "gate", "report", "v0001")
    assert code == 0 and "PASS" in out.upper()

    code, out, _ = run(capsys, home, "adapters", "export", v1, str(tmp_path / "export"))
    assert code == 0 and (tmp_path / "export" / "adapter_model.safetensors").exists()
    code, _, err = run(capsys, home, "adapters", "rollback", v2)  # never committed: refused
    assert code == 1 and v2.split("-")[0] in err

    code, out, _ = run(capsys, home, "--json", "consolidate", "--dry-run")
    assert code == 0 and json.loads(out)["verdict"] == "skipped"
    code, _, err = run(capsys, home, "consolidate", "--approve", "run-nope")
    assert code == 1 and "run-nope" in err
