"""The `seal-agent` command: status, memories search/list/import/forget, demo."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import waits

from seal_agent import SealMemory
from seal_agent.cli import build_parser, main
from seal_agent.errors import ValidationError


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
    assert code == 0 and "imported 3 new, 0 already present" in out

    code, out, _ = run(capsys, home, "--json", "memories", "search", "favourite food", "--namespace", "users/ann")
    hits = json.loads(out)
    assert code == 0 and hits[0]["text"].startswith("User: I love sushi")
    assert {tuple(h["namespace"]) for h in hits} == {("users", "ann")}  # never bob's pizza
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
        ({"messages": [{"role": "wizard", "content": "x"}]}, "bad.jsonl:2: messages[0].role='wizard'"),
        ({"messages": []}, "bad.jsonl:2: messages=[]"),
        ({"messages": ROWS[0]["messages"], "namespace": "a//b"}, "bad.jsonl:2: namespace[1]=''"),
        ({"messages": ROWS[0]["messages"], "feedback": 3}, "bad.jsonl:2: feedback=3"),
        ({"messages": ROWS[0]["messages"], "colour": "red"}, "bad.jsonl:2: colour='red'"),
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
    assert code == 1 and "x.jsonl:1=" in err and "not JSON" in err
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
    header, *lines = out.splitlines()
    assert header == "lineage global"
    assert code == 0 and "UNVERIFIED" in lines[0] and "UNVERIFIED" not in lines[1] + lines[2]
    assert f"full candidate of {v3}" in lines[1] and f"full candidate: {v2}" in lines[2]
    assert lines[2].startswith(f"* {v3}")


# ------------------------------------------------------------------ issue 9, item 13


def test_item13_bad_thread_id_on_line_3_writes_nothing_and_names_file_line_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    bad = {"messages": ROWS[2]["messages"], "namespace": "users/bob", "thread_id": 7}
    path = write_jsonl(tmp_path / "in.jsonl", [ROWS[0], ROWS[1], bad])
    code, _, err = run(capsys, home, "memories", "import", str(path))
    assert code == 1 and f"{path}:3: thread_id=7: must be a non-empty string" in err
    code, out, _ = run(capsys, home, "--json", "memories", "list")
    assert code == 0 and json.loads(out) == []  # lines 1-2 were not written either


def test_item13_reimport_says_how_many_were_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    path = write_jsonl(tmp_path / "in.jsonl", ROWS[:2])
    code, out, _ = run(capsys, home, "--json", "memories", "import", str(path))
    first = json.loads(out)
    assert code == 0 and (first["imported"], first["already_present"]) == (2, 0)
    code, out, _ = run(capsys, home, "memories", "import", str(path))
    assert code == 0 and "imported 0 new, 2 already present" in out
    code, out, _ = run(capsys, home, "--json", "memories", "import", str(path))
    again = json.loads(out)
    assert (again["imported"], again["already_present"]) == (0, 2) and again["ids"] == first["ids"]


def test_item13_log_many_is_one_transaction(mem: SealMemory) -> None:
    """A failure while writing row 2 (here a clashing id) leaves row 1 unwritten too."""
    ok = mem._new_interaction(ROWS[0]["messages"], namespace=("users", "ann"))
    clash = dataclasses.replace(mem._new_interaction(ROWS[1]["messages"]), id=ok.id)
    with pytest.raises(sqlite3.IntegrityError):
        mem._journal.insert_many([ok, clash])
    assert mem.list() == []
    with pytest.raises(ValidationError) as err:
        mem.log_many([{"messages": ROWS[0]["messages"]}, {"messages": ROWS[1]["messages"], "thread_id": ""}])
    assert err.value.field == "rows[1]: thread_id" and mem.list() == []
    assert [inserted for _, inserted in mem.log_many([ROWS[1], ROWS[1]])] == [True, False]
    assert len(mem.list()) == 1


# ------------------------------------------------------------------ issue 9, item 19


def test_item19_global_options_work_after_the_subcommand(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    code = main(["status", "--json", "--home", str(home)])
    st = json.loads(capsys.readouterr().out)
    assert code == 0 and st["interactions"] == 0 and Path(st["home"]).resolve() == home.resolve()
    parser = build_parser()
    args = parser.parse_args(["--home", "A", "memories", "search", "q", "--namespace", "n", "--json", "-v",
                              "--chroma-url", "http://x:1"])
    assert (args.home, args.json, args.verbose, args.chroma_url) == ("A", True, 1, "http://x:1")
    args = parser.parse_args(["--json", "--home", "A", "adapters", "list"])  # before: not reset by the subcommand
    assert (args.home, args.json) == ("A", True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: command"),
        (["memories", "forget"], "give --namespace and/or --ids"),
        (["memories", "search", "food"], "required: --namespace"),  # never silently `default`
        (["memories", "search", "food", "--namespace", "a", "-k", "0"], "-k: must be at least 1"),
        (["consolidate", "--approve", "r1", "--reject", "r1"], "not allowed with"),
        (["consolidate", "--dry-run", "--approve", "r1"], "--dry-run"),
        (["schedule", "--interval-minutes", "-1"], "must be a positive number"),
    ],
)
def test_item19_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                    message: str) -> None:
    code, out, err = run(capsys, tmp_path / "home", *argv)
    assert code == 2 and message in err and "usage: seal-agent" in err and out == ""


def test_item19_unwritable_home_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    home = tmp_path / "file" / "home"  # cannot be created, even by root
    for argv in (["status"], ["adapters", "list"]):
        code, out, err = run(capsys, home, *argv)
        assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("error: ")
        assert str(home) in err and "Not a directory" in err
    code, out, _ = run(capsys, home, "--json", "status")
    assert code == 1 and str(home) in json.loads(out)["message"]


def test_item19_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`seal-agent --json ... | head`: a reader that went away is no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    proc = subprocess.run([sys.executable, "-m", "seal_agent.cli", "--home", str(tmp_path / "h"), "--json",
                           "adapters", "list"], stdout=write_end, stderr=subprocess.PIPE, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    os.close(write_end)
    err = proc.stderr.decode()
    assert proc.returncode == 141 and "BrokenPipe" not in err and "Traceback" not in err, err


def test_item19_search_and_list_namespaces_are_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert run(capsys, home, "memories", "import", str(write_jsonl(tmp_path / "in.jsonl", ROWS[:1])))[0] == 0
    _, out, _ = run(capsys, home, "--json", "memories", "search", "sushi", "--namespace", "users/ann")
    _, listed, _ = run(capsys, home, "memories", "list", "--json")
    assert json.loads(out)[0]["namespace"] == json.loads(listed)[0]["namespace"] == ["users", "ann"]
    _, text, _ = run(capsys, home, "memories", "search", "sushi", "--namespace", "users/ann")
    assert text.startswith("namespace users/ann:")  # says which namespace it searched
    _, text, _ = run(capsys, home, "memories", "search", "sushi", "--namespace", "users/bob")
    assert text.strip() == "no memories found in namespace users/bob"


def test_item19_schedule_prints_what_it_does_without_v(tmp_path: Path) -> None:
    """Started, each run's outcome, stopped: on stdout, with no -v."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "seal_agent.cli", "--home", str(tmp_path / "h"), "schedule", "--interval-minutes",
         "0.02"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("finished" in line for line in lines) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(lines)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert "consolidation scheduler started" in text and "interval next at" in text
    assert "consolidation (interval trigger) finished: verdict=skipped" in text and "nothing new" in text
    assert "stopped" in text.splitlines()[-1]


def test_item19_gate_report_names_the_registry_version(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from seal_agent.gate.report import GateReport
    from seal_agent.registry import AdapterRegistry

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    candidate = tmp_path / "home" / "runs" / "r1" / "candidate"
    get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules="all-linear")).save_pretrained(
        str(candidate))
    home = tmp_path / "home"
    version = AdapterRegistry(home / "adapters").commit(candidate, {})
    report = GateReport(passed=True, adapter_dir=candidate, scale=0.5)
    report.save(home / "gate" / "reports" / version)
    assert f"adapter to commit: `{candidate}`" in report.to_markdown()  # before the commit: the candidate

    code, out, _ = run(capsys, home, "gate", "report", version.split("-")[0])
    assert code == 0 and f"adapter committed: version `{version}` (scale 0.5)" in out and str(candidate) not in out
    code, out, _ = run(capsys, home, "gate", "report", version, "--json")
    assert code == 0 and json.loads(out)["committed_version"] == version


def test_item19_stored_gate_report_of_a_committed_run_names_the_version(mem: SealMemory) -> None:
    """The gate writes gate_report.md before the commit; the copy stored with the version is rewritten."""
    from seal_agent.consolidation import _Run, _run_dir
    from seal_agent.gate.report import GateReport

    candidate = _run_dir(mem, "r1") / "candidate"
    GateReport(passed=True, adapter_dir=candidate).save(_run_dir(mem, "r1") / "gate")
    run_ = _Run(mem, mem.config, teacher=None, cancel_event=None, progress=False)
    run_._save_gate_report({"run_id": "r1"}, "v0007-abc", committed=True)
    run_._save_gate_report({"run_id": "r1"}, "v0008-def")  # e.g. approved by the gate, rejected by a person
    reports = mem.home / "gate" / "reports"
    committed = (reports / "v0007-abc" / "gate_report.md").read_text()
    assert "adapter committed: version `v0007-abc` (scale 1)" in committed and str(candidate) not in committed
    assert "adapter to commit:" in (reports / "v0008-def" / "gate_report.md").read_text()


# ------------------------------------------------------------------ issue 22, item 10 (the CLI)


def _cli_process(home: Path, *argv: str, env: dict[str, str] | None = None,
                 stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in its own process, on this checkout (PYTHONPATH), as a user runs it;
    waited for while it works (tests/waits.py), not on a clock."""
    return waits.run([sys.executable, "-m", "seal_agent.cli", "--home", str(home), *argv], input=stdin,
                     env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), **(env or {})})


def test_issue22_closed_postgres_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A journal URL to a port where nothing listens: psycopg's message spans two lines
    ("...Connection refused\\n\\tIs the server running..."); the CLI prints one."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago; nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SEAL_JOURNAL_URL": f"postgresql://seal@127.0.0.1:{port}/nothing"}
    for argv in (["status"], ["memories", "list"]):
        proc = _cli_process(tmp_path / "home", *argv, env=env)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and proc.stdout == b"", err
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert str(port) in err and "unreachable" in err
    proc = _cli_process(tmp_path / "home", "--json", "status", env=env)
    assert proc.returncode == 1 and proc.stderr == b""
    message = json.loads(proc.stdout)["message"]
    assert "\n" not in message and str(port) in message


def _committed_version(tmp_path: Path, home: Path) -> str:
    """A real (tiny) peft LoRA adapter committed to the home's global registry."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from seal_agent.registry import AdapterRegistry

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    src = tmp_path / "adapter"
    get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules="all-linear")).save_pretrained(str(src))
    return AdapterRegistry(home / "adapters").commit(src, {"gate": {"passed": True}})


def test_issue22_export_into_the_registry_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`adapters export V <home>/adapters/v0099-x` planted a version that `adapters list`
    showed. Refused for every registry folder of the home, through `..` and symlinks."""
    home = tmp_path / "home"
    v1 = _committed_version(tmp_path, home)
    code, before, _ = run(capsys, home, "--json", "adapters", "list")
    assert code == 0 and [d["version"] for d in json.loads(before)] == [v1]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(home / "adapters")  # a way in that only resolving sees
    targets = [home / "adapters" / "v0099-planted",
               tmp_path / "elsewhere" / ".." / "home" / "adapters" / "v0099-dots",
               tmp_path / "link" / "v0099-linked",
               home / "adapters",
               home / "lineages" / "users.bob-1234" / "adapters" / "v0001-x",
               home / "writer" / "adapters" / "v0001-x"]
    for dest in targets:
        for extra in ([], ["--for-vllm"]):
            code, out, err = run(capsys, home, "adapters", "export", v1, str(dest), *extra)
            assert code == 1 and out == "" and err.count("\n") == 1, (dest, err)
            assert err.startswith("error: DIR='") and "is inside the registry folder" in err, err
            assert str(dest.resolve()) in err and "Traceback" not in err  # the path as resolved
    code, after, _ = run(capsys, home, "--json", "adapters", "list")
    assert after == before  # nothing planted
    assert sorted(p.name for p in (home / "adapters").iterdir() if p.is_dir()) == [v1]
    assert not (home / "lineages").exists() and not (home / "writer").exists()
    # the library's own export refuses its registry too
    from seal_agent.registry import AdapterRegistry

    with pytest.raises(ValidationError, match="inside this adapter registry"):
        AdapterRegistry(home / "adapters").export(v1, tmp_path / "link" / "v0098-lib")
    # elsewhere (the home itself included) it exports as before
    code, out, _ = run(capsys, home, "adapters", "export", v1, str(home / "exported"))
    assert code == 0 and (home / "exported" / "adapter_model.safetensors").exists()
    assert run(capsys, home, "--json", "adapters", "list")[1] == before
