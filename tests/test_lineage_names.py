"""Issue 22, items 2 and 3: lineage names are collision-free and always valid; old homes migrate.

Real parts: real PEFT adapters on tiny-random committed to real lineage registries, the
real `LineageRouter`, real `SealMemory` (SQLite journal, embedded Chroma), real
consolidation runs, real separate processes racing to migrate one home.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from facts import FACT_CONFIG
from fakes import HashEmbeddings

from seal_agent import SealConfig, SealMemory
from seal_agent.config import ConsolidationConfig
from seal_agent.errors import StorageError
from seal_agent.lineage import Lineage, all_lineages, lineage_for
from seal_agent.model import load_model
from seal_agent.model.loader import base_model_hash
from seal_agent.model.routing import LineageRouter
from seal_agent.registry import AdapterRegistry

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

SCOPE = ConsolidationConfig(adapter_scope="namespace")
# Found by the hostile round: the old names (60 readable characters + 8 hex digits of a
# sha1) of these two tenants' namespaces are the same folder.
A = ("tenants", "acme-corporation-international-holdings-eu", "users", "user-0025495")
B = ("tenants", "acme-corporation-international-holdings-eu", "users", "user-0061729")
ALICE = ("users", "alice")
GATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # seal_agent/gate/suite.py's rule
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RAW = {"selfedit": {"strategies": ["raw"]}, "gate": {"allow_unverified": True}}
FAST_TRAIN = {k: getattr(FACT_CONFIG, k) for k in ("learning_rate", "epochs", "batch_size", "lora_rank",
                                                    "lora_alpha", "warmup_ratio")}
FAST_TRAIN["rehearsal_size"] = 0


def old_name(namespace: tuple[str, ...]) -> str:
    """The lineage name the code before issue 22 gave a namespace (its folder and suite)."""
    readable = ".".join(re.sub(r"[^A-Za-z0-9_-]+", "_", label).strip("_") or "_" for label in namespace)[:60]
    return f"{readable}-{hashlib.sha1('/'.join(namespace).encode()).hexdigest()[:8]}"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real LoRA adapters on tiny-random (random nonzero B weights), not committed anywhere."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("weights")
    out = {}
    for i, name in enumerate(("a", "alice")):
        model, _ = load_model("tiny-random")
        torch.manual_seed(i + 1)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(0.0, 0.5)
        peft_model.save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def base_hash() -> str:
    model, _ = load_model("tiny-random")
    return base_model_hash(model)


def commit(registry: AdapterRegistry, folder: Path, base_hash: str) -> Path:
    return registry.root / registry.commit(folder, {"base_model": "tiny-random", "base_model_hash": base_hash})


def open_mem(home: Path, **consolidation: object) -> SealMemory:
    cfg = SealConfig().with_overrides(model={"name_or_path": "tiny-random"},
                                      consolidation={"adapter_scope": "namespace", "teacher": "none",
                                                     **consolidation})
    return SealMemory(home, embeddings=HashEmbeddings(), config=cfg)


def teach(mem: SealMemory, namespace: tuple[str, ...], fact: tuple[str, str]) -> str:
    return mem.log([{"role": "user", "content": fact[0]}, {"role": "assistant", "content": fact[1]}],
                   namespace=namespace)


# ------------------------------------------------------------------ names


def test_colliding_namespaces_get_their_own_valid_lineages(tmp_path: Path) -> None:
    assert old_name(A) == old_name(B)  # the reported collision
    la, lb = lineage_for(tmp_path, A, SCOPE), lineage_for(tmp_path, B, SCOPE)
    assert la.name != lb.name and la.root != lb.root and la.suite_path != lb.suite_path
    for ns in (A, B, ("..",), ("用户", "li"), ("-x",), ("a" * 500,), ("_",), ("global",), (".", "..", "...")):
        name = lineage_for(tmp_path, ns, SCOPE).name
        assert GATE_NAME.match(name), (ns, name)  # folder, gate suite and vLLM names alike
        assert name == Lineage(tmp_path, ns).name  # stable
    from seal_agent.gate.suite import ReplaySuite
    from seal_agent.serving.vllm import adapter_name

    for ns in (("..",), ("用户", "li")):
        name = Lineage(tmp_path, ns).name
        ReplaySuite(name, 4)  # the gate accepts it
        assert adapter_name(name, "v0001") == f"{name}-v0001"  # served under its own name, unchanged
    # labels that only differ in unsafe characters still get different names
    assert len({Lineage(tmp_path, ns).name for ns in (("用户",), ("户用",), ("..",), ("...",))}) == 4


def test_one_tenants_commit_is_never_served_to_or_forgotten_by_the_other(
        tmp_path: Path, adapters: dict[str, Path], base_hash: str) -> None:
    home = tmp_path / "home"
    la = lineage_for(home, A, SCOPE)
    la.write_marker()
    served_a = commit(la.registry(), adapters["a"], base_hash)
    router = LineageRouter(home, SCOPE)
    assert router.adapter_for(A) == str(served_a)
    assert router.adapter_for(B) is None  # B has no lineage: the base model, never A's adapter
    lb = lineage_for(home, B, SCOPE)
    assert not lb.root.exists() and lb.registry().current is None

    with open_mem(home) as mem:
        teach(mem, B, ("What is my plan?", "The gold plan."))
        report = mem.forget(namespace=B)
        assert report.pending == [], report.pending
        assert la.name not in report.lineages_deleted
    assert la.registry().current == served_a.name and served_a.is_dir()  # A's lineage is untouched
    assert LineageRouter(home, SCOPE).adapter_for(A) == str(served_a)


def test_a_folder_whose_marker_names_another_namespace_is_refused(
        tmp_path: Path, adapters: dict[str, Path], base_hash: str) -> None:
    """A copied or hand-renamed lineage folder is never served, written or deleted as
    another namespace's: the marker is checked on open."""
    home = tmp_path / "home"
    la, lb = Lineage(home, A), Lineage(home, B)
    la.write_marker()
    commit(la.registry(), adapters["a"], base_hash)
    shutil.copytree(la.root, lb.root)  # B's folder now holds A's adapter and A's marker
    with pytest.raises(StorageError, match="user-0025495"):
        lb.registry()
    with pytest.raises(StorageError, match="user-0025495"):
        lb.write_marker()
    with pytest.raises(StorageError):
        LineageRouter(home, SCOPE).adapter_for(B)
    assert [ln.name for ln in all_lineages(home)] == ["global", la.name]  # the copy is not listed
    with open_mem(home) as mem:
        teach(mem, B, ("What is my plan?", "The gold plan."))
        report = mem.forget(namespace=B)
        assert any("user-0025495" in p for p in report.pending), report.pending
    assert (lb.root / "adapters").is_dir() and la.registry().current is not None  # nothing deleted


# ------------------------------------------------------------------ consolidation


def test_namespaces_without_ascii_labels_consolidate_and_a_failing_tenant_blocks_no_one(tmp_path: Path) -> None:
    home = tmp_path / "home"
    broken = ("tenants", "broken")
    with open_mem(home) as mem:
        # A lineage folder of `broken` that holds another namespace's marker (a bad copy):
        # its run fails when it commits; the tenants after it must still be consolidated.
        Lineage(home, broken).root.mkdir(parents=True)
        (Lineage(home, broken).root / "lineage.json").write_text(json.dumps({"format_version": 1,
                                                                             "namespace": list(A)}))
        ids = {ns: teach(mem, ns, fact) for ns, fact in (
            (broken, ("Where is the vault?", "Behind the waterfall.")),
            (("..",), ("What colour is the door?", "The door is teal.")),
            (("用户", "li"), ("What is Li's cat called?", "Li's cat is called Mochi.")),
            (ALICE, ("Where does alice live?", "Alice lives in Quxville.")))}
        report = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        by_lineage: dict[str | None, list[str]] = {}
        for r in report.runs:
            by_lineage.setdefault(r.lineage, []).append(r.verdict)
        for ns in (("..",), ("用户", "li"), ALICE):
            ln = Lineage(home, ns)
            assert by_lineage.get(ln.name) == ["committed"], (ns, by_lineage, report.reason)
            assert ln.registry().current is not None and ln.suite_path.is_file()
            assert mem.get(ids[ns]).status.value == "consolidated"
        failed = by_lineage.get(Lineage(home, broken).name)
        assert failed and set(failed) == {"failed"}, (by_lineage, report.reason)
        assert report.verdict == "committed" and "failed" in (report.reason or "")
        assert mem.get(ids[broken]).status.value == "new"  # waits for its folder to be fixed
        assert not (Lineage(home, broken).root / "adapters").exists()  # nothing written into the foreign folder


# ------------------------------------------------------------------ migration of old homes


def write_old_lineage(home: Path, namespace: tuple[str, ...], adapter: Path | None, base_hash: str,
                      suite_namespaces: tuple[str, ...] = ()) -> Path:
    """A lineage folder as the old code laid it out: ``lineages/<old name>/`` with a
    format-1 marker, a registry, and ``gate/suite-<old name>.json``."""
    from seal_agent.gate.suite import ReplaySuite, SuiteItem

    folder = home / "lineages" / old_name(namespace)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "lineage.json").exists():  # the old write_marker never overwrote
        (folder / "lineage.json").write_text(json.dumps({"format_version": 1, "namespace": list(namespace)}))
    if adapter is not None:
        commit(AdapterRegistry(folder / "adapters"), adapter, base_hash)
    if suite_namespaces:
        suite = ReplaySuite(old_name(namespace), 8)
        for i, ns in enumerate(suite_namespaces):
            suite.items.append(SuiteItem(kind="past", id=f"i{i}", prompt=({"role": "user", "content": f"q{i}"},),
                                         expected=f"a{i}", namespace=ns))
        suite.save(ReplaySuite.path_for(home, old_name(namespace)))
    return folder


def test_an_old_home_is_migrated_and_still_serves_its_adapters(
        tmp_path: Path, adapters: dict[str, Path], base_hash: str, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "home"
    # A's folder, into which B's runs also committed (their old names collided); alice's own.
    shared = write_old_lineage(home, A, adapters["a"], base_hash, suite_namespaces=("/".join(A), "/".join(B)))
    own = write_old_lineage(home, ALICE, adapters["alice"], base_hash, suite_namespaces=("users/alice",))
    versions = {ns: AdapterRegistry(f / "adapters").current for ns, f in ((A, shared), (ALICE, own))}

    with caplog.at_level(logging.WARNING, logger="seal_agent.lineage"):
        router = LineageRouter(home, SCOPE)
        la, lalice = Lineage(home, A), Lineage(home, ALICE)
        assert router.adapter_for(A) == str(la.adapters_dir / versions[A])
        assert router.adapter_for(ALICE) == str(lalice.adapters_dir / versions[ALICE])
        assert router.adapter_for(B) is None  # the collided folder is A's (its marker), never B's too
    assert "user-0061729" in caplog.text  # the warning names the other namespace that trained it
    assert not shared.exists() and not own.exists()
    assert sorted(p.name for p in (home / "lineages").iterdir()) == sorted([la.name, lalice.name])
    assert la.suite_path.is_file() and lalice.suite_path.is_file()
    assert not list((home / "gate").glob(f"suite-{old_name(A)}.json"))
    assert {ln.name for ln in all_lineages(home)} == {"global", la.name, lalice.name}
    from seal_agent.lineage import migrate_lineage_names

    assert migrate_lineage_names(home) == {}  # idempotent: nothing left to do
    assert router.adapter_for(A) == str(la.adapters_dir / versions[A])


def test_a_migration_killed_midway_is_finished_by_the_next_open(
        tmp_path: Path, adapters: dict[str, Path], base_hash: str) -> None:
    """The states a ``kill -9`` can leave: the suite hard-linked under both names, or
    moved while the folder is not."""
    from seal_agent.lineage import migrate_lineage_names

    home = tmp_path / "home"
    folder = write_old_lineage(home, A, adapters["a"], base_hash, suite_namespaces=("/".join(A),))
    write_old_lineage(home, ALICE, None, base_hash, suite_namespaces=("users/alice",))
    la, lalice = Lineage(home, A), Lineage(home, ALICE)
    os.link(home / "gate" / f"suite-{old_name(A)}.json", la.suite_path)  # killed after the link
    (home / "gate" / f"suite-{old_name(ALICE)}.json").rename(lalice.suite_path)  # killed before the folder
    current = AdapterRegistry(folder / "adapters").current

    migrate_lineage_names(home)

    assert sorted(p.name for p in (home / "gate").iterdir()) == sorted([la.suite_path.name, lalice.suite_path.name])
    assert sorted(p.name for p in (home / "lineages").iterdir()) == sorted([la.name, lalice.name])
    assert LineageRouter(home, SCOPE).adapter_for(A) == str(la.adapters_dir / current)


def _open_and_resolve(home: str, namespaces: list[list[str]], start: object) -> dict[str, str | None]:
    start.wait()  # type: ignore[attr-defined]
    router = LineageRouter(home, SCOPE)
    return {"/".join(ns): router.adapter_for(tuple(ns)) for ns in namespaces}


def test_processes_opening_an_old_home_at_once_migrate_it_once(
        tmp_path: Path, adapters: dict[str, Path], base_hash: str) -> None:
    home = tmp_path / "home"
    namespaces = [("users", f"user-{i}") for i in range(12)]
    expected = {}
    for ns in namespaces:
        folder = write_old_lineage(home, ns, adapters["alice"] if ns == namespaces[0] else None, base_hash,
                                   suite_namespaces=("/".join(ns),))
        # (paths built by hand: `Lineage.root` would migrate the home in this process)
        expected["/".join(ns)] = (str(home / "lineages" / Lineage(home, ns).name / "adapters"
                                      / AdapterRegistry(folder / "adapters").current)
                                  if ns == namespaces[0] else None)
    assert len(list((home / "lineages").iterdir())) == len(namespaces)  # still the old layout
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(3) as pool:
            pending = [pool.apply_async(_open_and_resolve, (str(home), [list(n) for n in namespaces], start))
                       for _ in range(3)]
            start.set()
            results = [p.get(timeout=600) for p in pending]
    assert all(r == expected for r in results), results
    assert sorted(p.name for p in (home / "lineages").iterdir()) == sorted(Lineage(home, ns).name for ns in namespaces)
    assert sorted(p.name for p in (home / "gate").iterdir()) == sorted(
        Lineage(home, ns).suite_path.name for ns in namespaces)


def test_forget_names_a_stray_lineage_folder_it_cannot_purge(mem: SealMemory) -> None:
    """A folder whose marker names a namespace but is not that namespace's folder (a copy,
    or an old folder left beside the migrated one) is never served -- and forget says it
    was not purged, instead of passing over it in silence."""
    i = mem.log([{"role": "user", "content": "my pin is 1234"}, {"role": "assistant", "content": "ok"}],
                namespace=("users", "alice"))
    stray = mem.home / "lineages" / "users.alice-0000copy"
    stray.mkdir(parents=True)
    (stray / "lineage.json").write_text(json.dumps({"namespace": ["users", "alice"]}))
    report = mem.forget(ids=[i])
    assert report.ids == [i]
    assert any(str(stray) in p and "not purged" in p for p in report.pending), report.pending
