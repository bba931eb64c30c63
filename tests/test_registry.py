"""AdapterRegistry: versions, CURRENT, rollback, export, staging, validation, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import waits

from seal_agent.errors import AdapterError, NotFoundError, RegistryError, ValidationError
from seal_agent.registry import MANIFEST_FORMAT_VERSION, AdapterRegistry, AdapterVersion

# peft calls a transformers API deprecated in v5; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

REPO = Path(__file__).resolve().parents[1]
HASH = "sha256:base-a"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A real (untrained) PEFT LoRA folder on a tiny Llama: what train_adapter saves."""
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


def _manifest(**extra) -> dict:
    return {"base_model": "tiny", "base_model_hash": HASH,
            "lineage": {"interaction_ids": ["i1"], "self_edit_hashes": ["h1"]},
            "hyperparameters": {"lora_rank": 2}, "metrics": {"loss": 1.0}, **extra}


def test_commit_current_list_get(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path / "adapters")
    assert reg.current is None and reg.list() == []
    v1 = reg.commit(adapter_dir, _manifest())
    v2 = reg.commit(adapter_dir, _manifest(gate={"passed": True}))
    assert reg.current == v2 and v1 < v2  # names sort by time
    assert v1.startswith("v0001-") and v2.startswith("v0002-")
    versions = reg.list()
    assert [v.version for v in versions] == [v1, v2]
    assert [v.is_current for v in versions] == [False, True]
    got = reg.get("v0002")  # the short form resolves
    assert isinstance(got, AdapterVersion) and got.version == v2
    assert (got.path / "adapter_model.safetensors").is_file()
    m = got.manifest
    assert m["format_version"] == MANIFEST_FORMAT_VERSION and m["library_version"]
    assert m["version"] == v2 and m["parent"] == v1 and got.parent == v1
    assert m["verdict"] == "committed" and m["scale"] == 1.0 and m["gate"] == {"passed": True}
    assert m["lineage"]["interaction_ids"] == ["i1"] and m["created_at"].endswith("Z")
    assert json.loads((got.path / "manifest.json").read_text()) == m
    # A second registry object (another process) sees the same state.
    assert AdapterRegistry(tmp_path / "adapters").current == v2
    with pytest.raises(NotFoundError):
        reg.get("v0099")


def test_committed_version_loads_with_peft(tmp_path, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    reg = AdapterRegistry(tmp_path)
    v = reg.commit(adapter_dir, _manifest())
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = PeftModel.from_pretrained(LlamaForCausalLM(cfg), str(reg.get(v).path))
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)


def test_rollback_and_export(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    v2 = reg.commit(adapter_dir, _manifest())
    assert reg.rollback(v1) == v1 and reg.current == v1
    v3 = reg.commit(adapter_dir, _manifest())
    assert reg.get(v3).parent == v1  # the parent is what was serving
    assert reg.rollback("v0002") == v2
    dest = reg.export(v2, tmp_path / "out" / "v2")
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in reg.get(v2).path.iterdir())
    with pytest.raises(ValidationError):
        reg.export(v2, dest)  # not empty
    with pytest.raises(NotFoundError):
        reg.rollback("v0042")


def test_stage_keeps_candidates_up_to_the_retention_limit(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path, keep_staged=2)
    v1 = reg.commit(adapter_dir, _manifest())
    staged = [reg.stage(adapter_dir, _manifest(verdict="rejected", gate={"passed": False})) for _ in range(3)]
    staged.append(reg.stage(adapter_dir, _manifest()))
    assert reg.current == v1  # staging never moves CURRENT
    kept = {v.version: v.verdict for v in reg.list()}
    assert kept == {v1: "committed", staged[2]: "rejected", staged[3]: "staged"}
    with pytest.raises(RegistryError, match="rejected"):
        reg.rollback(staged[2])
    with pytest.raises(ValidationError):
        reg.stage(adapter_dir, _manifest(verdict="committed"))


@pytest.mark.parametrize("damage", ["missing_weights", "truncated_weights", "bad_json", "bias", "modules_to_save"])
def test_corrupt_adapter_is_rejected_and_nothing_committed(tmp_path, adapter_dir, damage):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir, bad)
    weights, cfg_path = bad / "adapter_model.safetensors", bad / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if damage == "missing_weights":
        weights.unlink()
    elif damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "bad_json":
        cfg_path.write_text("{not json")
    elif damage == "bias":
        cfg_path.write_text(json.dumps({**cfg, "bias": "all"}))
    else:
        cfg_path.write_text(json.dumps({**cfg, "modules_to_save": ["lm_head"]}))
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    with pytest.raises(AdapterError):
        reg.commit(bad, _manifest())
    assert reg.current == v1 and [v.version for v in reg.list()] == [v1]


def test_base_model_hash_mismatch_is_rejected(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    with pytest.raises(AdapterError, match="base model"):
        reg.commit(adapter_dir, _manifest(base_model_hash="sha256:other"))
    assert reg.current == v1 and len(reg.list()) == 1
    reg.check_compatible(v1, HASH)
    with pytest.raises(AdapterError):
        reg.check_compatible(v1, "sha256:other")
    # A registry told its base hash refuses a mismatch from the first commit on.
    fresh = AdapterRegistry(tmp_path / "fresh", base_model_hash="sha256:other")
    with pytest.raises(AdapterError):
        fresh.commit(adapter_dir, _manifest())
    assert fresh.current is None and fresh.list() == []


def test_unknown_manifest_field_is_rejected(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path)
    with pytest.raises(ValidationError) as err:
        reg.commit(adapter_dir, _manifest(lineag={}))
    assert err.value.field == "manifest.lineag"
    with pytest.raises(ValidationError):
        reg.commit(adapter_dir, _manifest(scale="big"))
    assert reg.list() == []


def _scaled_pair(tmp_path: Path, adapter_dir: Path) -> tuple[Path, Path]:
    """(full candidate, a half-scaled copy of it): two real adapter folders with different weights."""
    from seal_agent.gate.scale import write_scaled_adapter

    full = tmp_path / "full"
    import shutil

    shutil.copytree(adapter_dir, full)
    scaled = write_scaled_adapter(full, None, 0.5, tmp_path / "scaled")["path"]
    return full, scaled


def test_scaled_back_commit_keeps_the_full_candidate_staged(tmp_path, adapter_dir):
    full, scaled = _scaled_pair(tmp_path, adapter_dir)
    reg = AdapterRegistry(tmp_path / "adapters", keep_staged=2)
    v1 = reg.commit(adapter_dir, _manifest())
    v3 = reg.commit(scaled, _manifest(scale=0.5, gate={"passed": True, "scale": 0.5}), full_candidate=full)
    versions = reg.list()
    assert [v.verdict for v in versions] == ["committed", "staged", "committed"]
    v2 = versions[1].version
    assert reg.current == v3 and v2.startswith("v0002-") and v3.startswith("v0003-")
    committed, staged = reg.get(v3), reg.get(v2)
    # Linked both ways; the committed one is the scaled adapter, the staged one the full candidate.
    assert committed.full_candidate == v2 and committed.manifest["full_candidate"] == v2
    assert staged.full_candidate_of == v3 and staged.full_candidate is None and committed.full_candidate_of is None
    assert committed.scale == 0.5 and staged.scale == 1.0 and committed.parent == staged.parent == v1
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (staged.path / name).read_bytes() == (full / name).read_bytes()
        assert (committed.path / name).read_bytes() == (scaled / name).read_bytes()
    assert staged.manifest["lineage"] == committed.manifest["lineage"]  # same run, same data
    with pytest.raises(RegistryError, match="staged"):
        reg.rollback(v2)  # inspectable, never served
    # Retained like any staged candidate: the newest keep_staged of them.
    later = [reg.stage(adapter_dir, _manifest(verdict="rejected")) for _ in range(2)]
    assert {v.version for v in reg.list()} == {v1, v3, *later}
    assert reg.get(v3).full_candidate == v2  # the link outlives the pruned version (documented)


def test_unverified_flag_in_the_manifest(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path)
    plain = reg.commit(adapter_dir, _manifest(gate={"passed": True}))
    from_gate = reg.commit(adapter_dir, _manifest(gate={"passed": True, "unverified": True}))
    explicit = reg.commit(adapter_dir, _manifest(unverified=True))
    assert [reg.get(v).unverified for v in (plain, from_gate, explicit)] == [False, True, True]
    assert reg.get(from_gate).manifest["unverified"] is True and reg.get(plain).manifest["unverified"] is False
    with pytest.raises(ValidationError) as err:
        reg.commit(adapter_dir, _manifest(unverified="yes"))
    assert err.value.field == "manifest.unverified"


# --------------------------------------------------------------------------- crash safety

_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import seal_agent.registry as r
    root, adapter, point, mode = sys.argv[1:5]
    def hook(name):
        if name == point:
            if mode == "exit":
                os._exit(9)
            Path(root, "reached").write_text(name)
            time.sleep(60)  # the parent kill -9s us here
    r._fault_hook = hook
    r.AdapterRegistry(root).commit(adapter, {"base_model_hash": "sha256:base-a"})
""")


def _child(root: Path, adapter: Path, point: str, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(adapter), point, mode], env=env)


_CHILD_FULL = _CHILD.replace(
    'r.AdapterRegistry(root).commit(adapter, {"base_model_hash": "sha256:base-a"})',
    'r.AdapterRegistry(root).commit(adapter, {"base_model_hash": "sha256:base-a", "scale": 0.5}, '
    'full_candidate=sys.argv[5])')


@pytest.mark.parametrize("point", ["copied", "pending", "renamed", "current"])
def test_crash_mid_scaled_back_commit_keeps_both_folders_or_neither(tmp_path, adapter_dir, point):
    full, scaled = _scaled_pair(tmp_path, adapter_dir)
    root = tmp_path / "adapters"
    v1 = AdapterRegistry(root).commit(adapter_dir, _manifest())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_FULL, str(root), str(scaled), point, "exit", str(full)],
                            env=env)
    assert waits.wait(proc) == 9
    reg = AdapterRegistry(root)
    versions = reg.list()
    if point == "current":  # CURRENT was swapped: both folders belong to a commit that took effect
        assert [v.verdict for v in versions] == ["committed", "staged", "committed"]
        assert reg.current == versions[2].version and versions[2].full_candidate == versions[1].version
    else:
        assert reg.current == v1 and [v.version for v in versions] == [v1]
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".pending", "CURRENT.tmp"))]


@pytest.mark.parametrize("point", ["copied", "pending", "renamed", "current"])
def test_crash_mid_commit_leaves_a_complete_current(tmp_path, adapter_dir, point):
    root = tmp_path / "adapters"
    v1 = AdapterRegistry(root).commit(adapter_dir, _manifest())
    assert waits.wait(_child(root, adapter_dir, point, "exit")) == 9
    reg = AdapterRegistry(root)  # opening repairs the interrupted commit
    names = [v.version for v in reg.list()]
    if point == "current":  # CURRENT was already swapped: the commit took effect
        assert reg.current == names[-1] != v1 and len(names) == 2
    else:
        assert reg.current == v1 and names == [v1]
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".pending", "CURRENT.tmp"))]
    v_next = reg.commit(adapter_dir, _manifest())
    assert reg.current == v_next and (reg.get(v_next).path / "adapter_model.safetensors").is_file()


def test_kill_9_between_rename_and_current_swap(tmp_path, adapter_dir):
    root = tmp_path / "adapters"
    v1 = AdapterRegistry(root).commit(adapter_dir, _manifest())
    proc = _child(root, adapter_dir, "renamed", "sleep")
    deadline = time.monotonic() + 120
    while not (root / "reached").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "child never reached the fault point"
        time.sleep(0.05)
    (root / "reached").unlink()
    os.kill(proc.pid, signal.SIGKILL)
    assert waits.wait(proc) == -signal.SIGKILL
    # Before repair, CURRENT still names the old, complete version.
    assert (root / "CURRENT").read_text().strip() == v1
    reg = AdapterRegistry(root)
    assert reg.current == v1 and [v.version for v in reg.list()] == [v1]
    v2 = reg.commit(adapter_dir, _manifest())
    assert reg.current == v2 and reg.get(v2).parent == v1


# ------------------------------------------------------------------ issue 9: damaged files


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_item14_current_holding_binary_garbage_names_the_file(tmp_path, adapter_dir):
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    v2 = reg.commit(adapter_dir, _manifest())
    (tmp_path / "adapters" / "CURRENT").write_bytes(b"\xff\xfe\x00\x9c garbage \x80")
    reg = AdapterRegistry(tmp_path / "adapters")  # opening still works
    with pytest.raises(RegistryError) as err:
        _ = reg.current
    assert str(tmp_path / "adapters" / "CURRENT") in str(err.value) and "rollback" in str(err.value)
    # Listing and rolling back still work, so the user can do what the message says ...
    assert [v.version for v in reg.list()] == [v1, v2] and not any(v.is_current for v in reg.list())
    # ... and meanwhile a served model falls back to the newest intact committed version.
    serving = reg.serving()
    assert serving.version == v2 and serving.current is None and "CURRENT" in serving.problem
    assert reg.rollback(v1) == v1 and reg.current == v1


def test_item15_manifest_records_the_weights_size_and_sha256(tmp_path, adapter_dir):
    import hashlib

    reg = AdapterRegistry(tmp_path / "adapters")
    v = reg.get(reg.commit(adapter_dir, _manifest()))
    weights = v.path / "adapter_model.safetensors"
    assert v.manifest["weights"] == {"file": "adapter_model.safetensors", "size": weights.stat().st_size,
                                     "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert v.manifest["format_version"] == MANIFEST_FORMAT_VERSION == 2
    assert reg.verify(v.version) is None


@pytest.mark.parametrize("damage", ["deleted", "truncated", "altered"])
def test_item15_damaged_current_weights_are_detected_and_serving_falls_back(tmp_path, adapter_dir, damage):
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    v2 = reg.commit(adapter_dir, _manifest())
    weights = reg.get(v2).path / "adapter_model.safetensors"
    if damage == "deleted":
        weights.unlink()
    elif damage == "truncated":
        _cut(weights)
    else:  # same size, one byte of a tensor flipped: only the hash can tell
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
    problem = reg.verify(v2)
    assert problem is not None and str(weights) in problem
    listed = {v.version: v for v in reg.list(verify=True)}
    assert listed[v2].problem == problem and listed[v2].is_current and listed[v1].problem is None
    assert reg.serving() == (v1, v2, problem)
    with pytest.raises(AdapterError):  # never roll back onto broken weights
        reg.rollback(v2)


def test_item15_old_format_manifests_stay_readable_and_checked(tmp_path, adapter_dir):
    """Format-1 manifests have no digest: a cut-short file is still caught from its header."""
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    v2 = reg.commit(adapter_dir, _manifest())
    for v in (v1, v2):
        path = reg.get(v).path / "manifest.json"
        manifest = json.loads(path.read_text())
        del manifest["weights"]
        manifest["format_version"] = 1
        path.write_text(json.dumps(manifest))
    assert reg.verify(v1) is None and reg.verify(v2) is None
    _cut(reg.get(v2).path / "adapter_model.safetensors")
    assert "cut short" in reg.verify(v2)
    assert reg.serving().version == v1


def test_item15_cli_adapters_list_shows_the_broken_version(tmp_path, adapter_dir, capsys):
    from seal_agent.cli import main

    home = tmp_path / "home"
    reg = AdapterRegistry(home / "adapters")
    v1 = reg.commit(adapter_dir, _manifest())
    v2 = reg.commit(adapter_dir, _manifest())
    _cut(reg.get(v2).path / "adapter_model.safetensors")
    assert main(["--home", str(home), "adapters", "list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if v2 in x and x.startswith("*"))
    assert "BROKEN" in line
    assert f"serves {v1} instead" in out
    assert main(["--home", str(home), "--json", "adapters", "list"]) == 0
    data = {d["version"]: d for d in json.loads(capsys.readouterr().out)}
    assert data[v2]["problem"] and data[v1]["problem"] is None and data[v1]["serving"] and not data[v2]["serving"]


def _tiny_random_adapter(path: Path, seed: int) -> Path:
    """A LoRA adapter that fits the tiny-random model (what chat_model serves in tests)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from seal_agent.model import load_model

    model, _ = load_model("tiny-random")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(path)
    return path


def test_item15_chat_model_serves_the_last_good_version_and_says_so(tmp_path, caplog):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).parent))
    from fakes import HashEmbeddings

    from seal_agent import SealMemory

    a = _tiny_random_adapter(tmp_path / "a", seed=1)
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random") as mem:
        v1 = mem.adapters.commit(a, {})
        v2 = mem.adapters.commit(a, {})
        _cut(mem.adapters.get(v2).path / "adapter_model.safetensors")
        with caplog.at_level("WARNING", logger="seal_agent.registry"):
            chat = mem.chat_model(max_new_tokens=2)
        assert chat.adapter == v1  # not the base model
        assert any(v2 in r.getMessage() and v1 in r.getMessage() for r in caplog.records)
        st = mem.status()["adapter"]
        assert st["current"] == v2 and st["serving"] == v1 and "cut short" in st["problem"]
        # Weights altered in place (same size) are refused by name when loaded directly too.
        weights = mem.adapters.get(v1).path / "adapter_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-3] ^= 0xFF
        weights.write_bytes(bytes(data))
        with pytest.raises(AdapterError, match="sha256"):
            chat.use_adapter(mem.adapters.get(v1).path)


def test_a_deleted_version_name_is_never_given_again(tmp_path: Path, adapter_dir: Path) -> None:
    """forget deletes versions; the next commit must not reuse the name (vLLM and manifests
    refer to versions by name, and two commits in one second even had the same full name)."""
    from seal_agent.registry import AdapterRegistry

    src = adapter_dir
    reg = AdapterRegistry(tmp_path / "adapters")
    v1 = reg.commit(src, {})
    reg.delete_versions([v1], new_current=None)
    v2 = reg.commit(src, {})
    assert v2.split("-")[0] == "v0002" and v2 != v1
    assert AdapterRegistry(tmp_path / "adapters").commit(src, {}).startswith("v0003-")
