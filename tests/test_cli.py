"""The `seal-agent` command: status, memories search/list/import/forget, demo."""

from __future__ import annotations

import json
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


def test_adapters_list_shows_unverified_and_the_full_candidate(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from seal_agent.gate.scale import write_scaled_adapter
    from seal_agent.registry import AdapterRegistry

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    full = tmp_path / "full"
    get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules="all-linear")).save_pretrained(str(full))
    scaled = write_scaled_adapter(full, None, 0.5, tmp_path / "scaled")["path"]
    home = tmp_path / "home"
    reg = AdapterRegistry(home / "adapters")
    v1 = reg.commit(full, {"gate": {"passed": True, "unverified": True}})
    v3 = reg.commit(scaled, {"scale": 0.5}, full_candidate=full)
    v2 = reg.list()[1].version

    code, out, _ = run(capsys, home, "--json", "adapters", "list")
    data = {d["version"]: d for d in json.loads(out)}
    assert code == 0 and list(data) == [v1, v2, v3]
    assert [data[v]["unverified"] for v in (v1, v2, v3)] == [True, False, False]
    assert data[v3]["full_candidate"] == v2 and data[v2]["full_candidate_of"] == v3
    assert data[v1]["full_candidate"] is None and data[v3]["scale"] == 0.5
    code, out, _ = run(capsys, home, "adapters", "list")
    lines = out.splitlines()
    assert code == 0 and "UNVERIFIED" in lines[0] and "UNVERIFIED" not in lines[1] + lines[2]
    assert f"full candidate of {v3}" in lines[1] and f"full candidate: {v2}" in lines[2]
    assert lines[2].startswith(f"* {v3}")
