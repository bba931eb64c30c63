"""Issue 10: one adapter lineage per namespace (``consolidation.adapter_scope = "namespace"``).

tiny-random, real Chroma, real graph, real training: what alice said trains only alice's
lineage, with its own registry, replay buffer and gate suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from facts import FACT_CONFIG, FACTS
from fakes import HashEmbeddings

from seal_agent import SealConfig, SealMemory
from seal_agent.config import ConsolidationConfig
from seal_agent.errors import ConfigError
from seal_agent.lineage import Lineage, all_lineages, lineage_for

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

RAW = {"selfedit": {"strategies": ["raw"]}, "gate": {"allow_unverified": True}}
FAST_TRAIN = {k: getattr(FACT_CONFIG, k) for k in ("learning_rate", "epochs", "batch_size", "lora_rank",
                                                    "lora_alpha", "warmup_ratio")}
FAST_TRAIN["rehearsal_size"] = 0
ALICE, BOB = ("users", "alice"), ("users", "bob")
ALICE_FACTS, BOB_FACTS = FACTS[:2], FACTS[2:]


def open_mem(home: Path, **consolidation: object) -> SealMemory:
    cfg = SealConfig().with_overrides(model={"name_or_path": "tiny-random"},
                                      consolidation={"adapter_scope": "namespace", "teacher": "none",
                                                     **consolidation})
    return SealMemory(home, embeddings=HashEmbeddings(), config=cfg)


def teach(mem: SealMemory, facts: list[tuple[str, str]], namespace: tuple[str, ...]) -> list[str]:
    return [mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}], namespace=namespace)
            for q, a in facts]


def scores_with(adapter: Path | None, facts: list[tuple[str, str]]) -> list[float]:
    """Answer log-likelihoods of tiny-random with `adapter` (None: the base model)."""
    from peft import PeftModel

    from seal_agent.model import load_model
    from seal_agent.training.scoring import answer_logprob

    model, tok = load_model("tiny-random", seed=0)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return [answer_logprob(model, tok, [{"role": "user", "content": q}], a) for q, a in facts]


def test_lineage_names_paths_and_rules(tmp_path: Path) -> None:
    cfg = ConsolidationConfig(adapter_scope="namespace", lineage_depth=2, shared_namespaces=["teams/docs"])
    a = lineage_for(tmp_path, ("users", "alice", "chat-3"), cfg)
    assert a == lineage_for(tmp_path, ("users", "alice", "chat-9"), cfg) == Lineage(tmp_path, ALICE)
    assert a.name.startswith("users.alice-") and a.root == tmp_path / "lineages" / a.name
    assert lineage_for(tmp_path, ("teams", "docs", "faq"), cfg).namespace is None  # shared: the global lineage
    # labels that are not filename-safe still give distinct, safe names
    odd = [lineage_for(tmp_path, ns, cfg).name for ns in (("a b", "c"), ("a_b", "c"), ("a/b",), ("..", "x"))]
    assert len(set(odd)) == 4 and all("/" not in n and not n.startswith(".") for n in odd)
    g = lineage_for(tmp_path, ALICE, ConsolidationConfig())
    assert g.namespace is None and g.adapters_dir == tmp_path / "adapters"  # the global files stay where they were
    with pytest.raises(ConfigError, match="adapter_scope"):
        ConsolidationConfig(adapter_scope="tenant")
    with pytest.raises(ConfigError, match="shared_namespaces"):
        ConsolidationConfig(shared_namespaces=["a//b"])


def test_each_namespace_trains_only_its_own_lineage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    with open_mem(home) as mem:
        alice_ids = teach(mem, ALICE_FACTS, ALICE)
        bob_ids = teach(mem, BOB_FACTS, BOB)
        report = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert report.verdict == "committed", report.reason
        by_lineage = {r.lineage: r for r in report.runs}
        la, lb = Lineage(home, ALICE), Lineage(home, BOB)
        assert set(by_lineage) == {la.name, lb.name}
        assert all(r.verdict == "committed" for r in report.runs), [r.reason for r in report.runs]
        # each version learned from its own namespace only
        va = la.registry().get(la.registry().current)
        vb = lb.registry().get(lb.registry().current)
        assert sorted(va.manifest["lineage"]["interaction_ids"]) == sorted(alice_ids)
        assert sorted(vb.manifest["lineage"]["interaction_ids"]) == sorted(bob_ids)
        assert mem.adapters.current is None  # the global lineage learned nothing
        assert {mem.get(i).consolidated_version for i in alice_ids} == {va.version}
        # replay buffers and gate suites are per lineage
        replay_a = json.loads(la.replay_path.read_text())["items"]
        assert {i["interaction_id"] for i in replay_a} == set(alice_ids)
        assert la.suite_path != lb.suite_path and la.suite_path.exists() and lb.suite_path.exists()
        assert "Quxville" in la.suite_path.read_text() and "Quxville" not in lb.suite_path.read_text()
        assert {ln.name for ln in all_lineages(home)} == {"global", la.name, lb.name}
        (home / "config.toml").write_text('[consolidation]\nadapter_scope = "namespace"\n')
        from seal_agent.cli import main

        capsys.readouterr()
        assert main(["--home", str(home), "adapters", "list", "--namespace", "users/alice", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(d["version"], d["current"]) for d in listed] == [(va.version, True)]
        assert main(["--home", str(home), "adapters", "list"]) == 0
        out = capsys.readouterr().out
        assert "no adapters yet" in out and "users/alice" in out and "users/bob" in out
        # nothing new: nothing to do
        again = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert again.verdict == "skipped"
    # isolation in the weights: alice's adapter knows her facts, bob's does not
    base = scores_with(None, ALICE_FACTS)
    alice = scores_with(va.path, ALICE_FACTS)
    bob = scores_with(vb.path, ALICE_FACTS)
    assert min(a - b for a, b in zip(alice, base, strict=True)) > 1.0, (alice, base)
    assert max(b - z for b, z in zip(bob, base, strict=True)) < 0.5, (bob, base)  # not learned for bob


def test_consolidate_one_namespace_and_depth_grouping(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_mem(home, lineage_depth=2, shared_namespaces=["teams/docs"]) as mem:
        a = teach(mem, ALICE_FACTS[:1], ("users", "alice", "chat-1")) + teach(mem, ALICE_FACTS[1:], ("users", "alice", "chat-2"))
        b = teach(mem, BOB_FACTS, BOB)
        shared = teach(mem, [("What is the team wiki?", "wiki.example.org.")], ("teams", "docs"))
        report = mem.consolidate(progress=False, namespace=("users", "alice", "chat-1"), train=FAST_TRAIN, **RAW)
        assert report.verdict == "committed" and report.lineage == Lineage(home, ALICE).name
        assert {mem.get(i).status.value for i in a} == {"consolidated"}  # both chats: one lineage
        assert {mem.get(i).status.value for i in b + shared} == {"new"}  # not this call's lineage
        rest = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert {r.lineage for r in rest.runs} == {Lineage(home, BOB).name, "global"}
        assert mem.adapters.current is not None  # the shared namespace trained the global lineage
        assert mem.adapters.get(mem.adapters.current).manifest["lineage"]["interaction_ids"] == shared


def test_a_lineage_writes_its_self_edits_with_its_own_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consolidation graph's run names no user: without a pin, the served model would
    route to the default namespace's adapter, not the lineage's."""
    from seal_agent.model import AdaptiveChatModel

    home = tmp_path / "home"
    seen: list[object] = []
    real = AdaptiveChatModel.generate_batch

    def recording(self: AdaptiveChatModel, prompts: object, **kwargs: object) -> object:
        seen.append(self._pin.get())
        return real(self, prompts, **kwargs)

    monkeypatch.setattr(AdaptiveChatModel, "generate_batch", recording)
    with open_mem(home) as mem:
        teach(mem, ALICE_FACTS, ALICE)
        first = mem.consolidate(progress=False, train=FAST_TRAIN, **RAW)
        assert first.verdict == "committed" and not seen  # teacher "none": no model wrote
        teach(mem, [("What does alice grow?", "Tomatoes.")], ALICE)
        mem.consolidate(progress=False, train=FAST_TRAIN, consolidation={"adapter_scope": "namespace",
                        "teacher": "served"}, selfedit={"strategies": ["implications"], "samples": 1,
                                                        "max_new_tokens": 8}, gate={"allow_unverified": True})
        la = Lineage(home, ALICE)
        assert seen == [str(la.adapters_dir / first.version)]  # alice's adapter wrote alice's self-edits
