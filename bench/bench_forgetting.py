"""Benchmark: SEAL's continual-learning experiment, small -- retention with and without the gate.

Eight sequential consolidations on tiny-random, each teaching a new batch of synthetic
facts ("What does Mira keep?" -> "A red kite."), every one continuing from the previous
adapter. Three arms, side by side in one run, same data, same hyperparameters:

- **ungated** (the baseline, SEAL's setting): train on the new batch only, always commit;
- **replay, ungated** (an ablation): mix earlier batches' examples into training
  (``replay_ratio``), always commit -- to show what replay alone does;
- **gated**: replay as above, then `seal_agent.gate.Gate` judges the candidate against
  the current adapter on its persisted replay suite (the consolidated fact
  interactions in a `SealMemory`) and the new batch as probes; scale-back on
  forgetting; a rejected batch is retried at the next step with the next batch.

Accuracy = greedy exact match (normalised) of the answer to the taught question
(tiny-random is a random model: it cannot answer paraphrases, so the questions are
the taught ones; what is measured is retention, not generalisation). Reported after
each step: accuracy on batch 1 (retention) and on the batch just taught (learning).
Goal lines (issue 5): gated retention of batch 1 after the last step >= 90% of its
peak while each new batch is learned, and gate time <= 25% of training time.

Finding (2 CPU cores, tiny-random): with full replay (the default, ``--replay-ratio 7``)
the gated and the replay-only arms both keep batch 1 at 100% -- replay does the work and
the gate passes every candidate. With partial replay (``--replay-ratio 1``) replay alone
forgets batch 1 entirely; the gate, which judges past tasks against their best committed
scores (anchors), keeps part of it by scaling back or rejecting updates -- and the new
batches are then learned only partly or not at all: this small model cannot learn
without forgetting unless old facts are replayed.

    python bench/bench_forgetting.py                     # default: ~4-5 minutes on 2 CPU cores
    python bench/bench_forgetting.py --replay-ratio 1    # partial replay: the gate's limits show

Writes its record (`bench/_results.py`: rows, goals with PASS/FAIL, the curves) as JSON
and the retention curves as PNG under ``bench/results/`` (``--out`` to choose the path).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_header  # noqa: E402
from _results import Goal, Row, print_goals, save  # noqa: E402

NAMES = ("Mira Tovo Ivo Kel Ansa Bruno Cato Dima Elin Faro Gus Hana Iris Jorn Kira Lev Mako Nia Odo Pia "
         "Quin Rolf Sami Tess Ulla Vik Wren Xan Yara Zed Alma Bo").split()
VERBS = ("keep", "paint", "carry", "want", "hide", "bake", "sell", "find")
ADJ = ("red", "blue", "tiny", "old", "green", "loud", "soft", "cold")
NOUNS = ("kite", "lamp", "drum", "boat", "cake", "sock", "bell", "rope")


class _WordHashEmbeddings:
    """Deterministic bag-of-words vectors: the memory's recall is not what is measured here."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_query(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        v = [0.0] * 32
        for w in re.findall(r"[a-z0-9]+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 32] += 1.0
        n = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / n for x in v]


def make_batches(steps: int, per_batch: int, seed: int) -> list[list[tuple[str, str]]]:
    """Distinct (question, answer) facts; a name is never asked twice (no knowledge updates)."""
    rng = random.Random(seed)
    subjects = [(n, v) for n in NAMES for v in VERBS]
    rng.shuffle(subjects)
    facts = [(f"What does {n} {v}?", f"A {rng.choice(ADJ)} {rng.choice(NOUNS)}.") for n, v in
             subjects[: steps * per_batch]]
    return [facts[i * per_batch:(i + 1) * per_batch] for i in range(steps)]


def chat(facts: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in facts]


def accuracy(model: Any, tok: Any, adapter: Path | None, facts: list[tuple[str, str]]) -> float:
    """Greedy exact match (normalised) under ``adapter`` (None: the base model)."""
    from peft import PeftModel

    from seal_agent.gate.scorers import generate_answers, normalize_answer
    from seal_agent.gate.suite import SuiteItem

    items = [SuiteItem("probe", str(i), ({"role": "user", "content": q},), a) for i, (q, a) in enumerate(facts)]
    if adapter is None:
        answers = generate_answers(model, tok, items, max_new_tokens=10)
    else:
        peft = PeftModel.from_pretrained(model, str(adapter))
        try:
            answers = generate_answers(peft, tok, items, max_new_tokens=10)
        finally:
            peft.unload()  # back to the bare base model for the next call
    return sum(normalize_answer(g) == normalize_answer(a) for g, (_, a) in zip(answers, facts, strict=True)) / len(facts)


def run(args: argparse.Namespace) -> None:
    import torch

    from seal_agent import SealMemory
    from seal_agent.config import GateConfig, TrainConfig
    from seal_agent.gate import Gate
    from seal_agent.model import load_model
    from seal_agent.selfedit.base import Probe
    from seal_agent.training import train_adapter

    machine, device, load_before = machine_header(threads=0)
    root = Path(tempfile.mkdtemp(prefix="bench-forgetting-"))
    model, tok = load_model("tiny-random", seed=0, device="cpu")
    batches = make_batches(args.steps, args.facts, args.seed)
    cfg = TrainConfig(learning_rate=args.lr, epochs=args.epochs, batch_size=args.facts, lora_rank=8, lora_alpha=16,
                      warmup_ratio=0.05, replay_ratio=args.replay_ratio, seed=args.seed)
    mem = SealMemory(root / "home", embeddings=_WordHashEmbeddings(), model="tiny-random")  # type: ignore[arg-type]
    gate = Gate(mem, GateConfig(seed=args.seed))

    cur = {"ungated": None, "replay": None, "gated": None}  # adapter folder per arm
    curves: dict[str, list[float]] = {k: [] for k in cur}
    learned: dict[str, list[float]] = {k: [] for k in cur}
    verdicts: list[str] = []
    train_s = {k: 0.0 for k in cur}
    gate_s = 0.0
    pending: list[tuple[str, tuple[str, str]]] = []  # gated arm: (interaction id, fact) not yet committed
    seen: list[tuple[str, str]] = []
    for step, batch in enumerate(batches, start=1):
        ids = [mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in batch]
        for arm in cur:
            new = batch if arm != "gated" else [f for _, f in pending] + batch
            replay = None if arm == "ungated" else chat(seen if arm == "replay" else
                                                        [f for f in seen if f not in new])
            t = time.perf_counter()
            result = train_adapter(model, tok, chat(new), cfg, init_adapter=cur[arm], replay=replay,
                                   output_dir=root / arm / f"step{step}", progress=False)
            train_s[arm] += time.perf_counter() - t
            if arm != "gated":
                cur[arm] = result.adapter_path
                continue
            probes = [Probe(q, a, i, ("default",), f"h{step}-{i}") for i, (q, a) in
                      zip([i for i, _ in pending] + ids, new, strict=True)]
            t = time.perf_counter()
            report = gate.evaluate(model, tok, result.adapter_path, cur[arm], probes, root / "gate-work" / f"step{step}",
                                   progress=False)
            gate_s += time.perf_counter() - t
            verdicts.append(report.verdict)
            report.save(root / "reports" / f"step{step}")
            all_ids = [i for i, _ in pending] + ids
            if report.passed:
                cur[arm] = report.adapter_dir
                mem.mark(all_ids, "consolidated", version=f"v{step:04d}")
                gate.update_suite([mem.get(i) for i in all_ids], report=report)
                pending = []
            else:
                pending = list(zip(all_ids, new, strict=True))
        seen += batch
        for arm in cur:
            curves[arm].append(accuracy(model, tok, cur[arm], batches[0]))
            learned[arm].append(accuracy(model, tok, cur[arm], batch))
    mem.close()

    threads = torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}, "
          f"CPU only; tiny-random seed 0; {args.steps} steps x {args.facts} facts, lr {args.lr}, "
          f"{args.epochs} epochs, replay_ratio {args.replay_ratio}")
    print("accuracy = greedy exact match on the taught questions\n")
    print(f"{'step':>4} | {'batch-1 accuracy (retention)':^32} | {'new-batch accuracy (learning)':^32} | gate verdict")
    print(f"{'':>4} | {'ungated':>9} {'replay':>9} {'gated':>9}  | {'ungated':>9} {'replay':>9} {'gated':>9}  |")
    for s in range(args.steps):
        print(f"{s + 1:>4} | " + " ".join(f"{curves[a][s]:>9.2f}" for a in cur) + "  | "
              + " ".join(f"{learned[a][s]:>9.2f}" for a in cur) + f"  | {verdicts[s]}")
    print()
    for arm in cur:
        peak = max(curves[arm])
        ratio = curves[arm][-1] / peak if peak else 0.0
        print(f"{arm:>8}: batch-1 accuracy peak {peak:.2f}, final {curves[arm][-1]:.2f}, retention "
              f"{ratio:.0%} of peak; mean new-batch accuracy {sum(learned[arm]) / len(learned[arm]):.2f}; "
              f"training {train_s[arm]:.1f} s")
    g_ratio = curves["gated"][-1] / max(curves["gated"]) if max(curves["gated"]) else 0.0
    u_ratio = curves["ungated"][-1] / max(curves["ungated"]) if max(curves["ungated"]) else 0.0
    cost = gate_s / train_s["gated"]
    print(f"\ngated vs ungated retention of batch 1: {g_ratio:.0%} vs {u_ratio:.0%} of peak")
    print(f"gate time {gate_s:.1f} s vs gated training time {train_s['gated']:.1f} s: {cost:.0%} of training")
    learned_ok = min(learned["gated"]) >= 0.5
    print(f"goal retention >= 90% of peak while each batch is learned: "
          f"{'MET' if g_ratio >= 0.9 and learned_ok else 'NOT MET'} "
          f"(retention {g_ratio:.0%}, worst new-batch accuracy {min(learned['gated']):.2f})")
    print(f"goal gate time <= 25% of training time: {'MET' if cost <= 0.25 else 'NOT MET'} ({cost:.0%})")
    r_ratio = curves["replay"][-1] / max(curves["replay"]) if max(curves["replay"]) else 0.0
    print(f"note: replay without the gate retains {r_ratio:.0%} of peak; the gate's own contribution is the "
          f"difference to the gated arm ({g_ratio - r_ratio:+.0%}). Past tasks are anchored to their best "
          "committed scores, so regressions cannot accumulate across steps; when an update cannot learn "
          "without forgetting, the gate scales it back or rejects it, and learning waits.")
    print(f"(artifacts, gate reports included: {root})")

    worst = min(learned["gated"])
    label = f"{args.steps} steps x {args.facts} facts, replay_ratio {args.replay_ratio:g}"
    rows = [Row(f"forgetting ({label}, tiny-random): batch-1 retention after the last step, % of peak",
                f"gated {g_ratio:.0%} (worst new-batch accuracy {worst:.2f})",
                f"ungated {u_ratio:.0%}, replay only {r_ratio:.0%}"),
            Row(f"forgetting ({label}): gate time / gated training time",
                f"{cost:.0%} ({gate_s:.1f} s / {train_s['gated']:.1f} s)", "")]
    goals = [Goal(f"gated retention >= 90% of peak while each batch is learned ({label})",
                  f"{g_ratio:.0%}, worst new-batch accuracy {worst:.2f}", g_ratio >= 0.9 and learned_ok),
             Goal(f"gate time <= 25% of training time ({label})", f"{cost:.0%}", cost <= 0.25)]
    data = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "retention_curves": curves, "new_batch_accuracy": learned, "verdicts": verdicts,
            "train_seconds": train_s, "gate_seconds": gate_s, "retention": {"gated": g_ratio, "ungated": u_ratio,
                                                                            "replay": r_ratio},
            "torch": torch.__version__, "torch_threads": threads, "artifacts": str(root)}
    print_goals(goals)
    save("forgetting", title=f"bench_forgetting, tiny-random, {label}, lr {args.lr}, {args.epochs} epochs, "
         f"seed {args.seed}", data=data, rows=rows, goals=goals, load_before=load_before, machine=machine,
         device=device, chart=lambda path: write_chart(path, curves, learned, label), out=args.out)


def write_chart(path: Path, curves: dict[str, list[float]], learned: dict[str, list[float]], label: str) -> bool:
    """Batch-1 accuracy (retention) and new-batch accuracy (learning) per step, per arm."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    colors = {"ungated": "#999999", "replay": "#e08a2c", "gated": "#2a7ab0"}
    for ax, series, name in ((axes[0], curves, "batch-1 accuracy (retention)"),
                             (axes[1], learned, "new-batch accuracy (learning)")):
        for arm, ys in series.items():
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=arm, color=colors.get(arm))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(-0.05, 1.05)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"forgetting, tiny-random: {label}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="sequential consolidations")
    p.add_argument("--facts", type=int, default=4, help="facts per batch")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--replay-ratio", type=float, default=7.0,
                   help="replay examples per new example (7: every earlier fact is replayed at step 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/forgetting-<time>.json)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    run(args)


if __name__ == "__main__":
    main()
