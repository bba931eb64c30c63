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
    assert proc.wait(timeout=120) == 9
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
    assert _child(root, adapter_dir, point, "exit").wait(timeout=120) == 9
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
    assert proc.wait(timeout=30) == -signal.SIGKILL
    # Before repair, CURRENT still names the old, complete version.
    assert (root / "CURRENT").read_text().strip() == v1
    reg = AdapterRegistry(root)
    assert reg.current == v1 and [v.version for v in reg.list()] == [v1]
    v2 = reg.commit(adapter_dir, _manifest())
    assert reg.current == v2 and reg.get(v2).parent == v1
