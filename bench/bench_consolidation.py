"""Benchmark: where the time of one consolidation goes (issue 4).

100 logged interactions, consolidated end to end on tiny-random (real journal, real
LangGraph graph, real training, real gate), once with the default SEAL-style
strategies written by the served model itself (``implications``, ``self_qa``, ``raw``)
and once with the named baseline ``raw`` only (the exchanges themselves, no generation).
Prints per-stage wall time for both, the ratio, and the self-edit generation rate
(output tokens per second of the served model writing self-edits).

tiny-random has random weights, so what it writes is mostly filtered out as degenerate:
the figures measure the cost of the machinery (generation, parsing, filtering,
training, gating), not the quality of the self-edits.

    python bench/bench_consolidation.py                   # ~2-4 minutes on a 2-core CPU
    python bench/bench_consolidation.py --interactions 50 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402

SUBJECTS = ["Zorbia", "the vorp", "Anna Pell", "the Blue Moon", "Quxville", "the zeb", "Lake Mirr", "Dr. Olen"]
FACTS = ["was founded in {y}", "has {n} legs", "is painted bright green", "lies north of Quxville",
         "was discovered by Dr. Olen", "hosts a festival every {n} years", "is {n} meters tall"]


class TokenCounter(BaseCallbackHandler):
    """Counts the output tokens the served model reports for each generation."""

    def __init__(self) -> None:
        self.tokens = 0
        self.calls = 0

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        for gens in response.generations:
            for g in gens:
                usage = getattr(getattr(g, "message", None), "usage_metadata", None) or {}
                self.tokens += int(usage.get("output_tokens", 0))
                self.calls += 1


def log_interactions(mem: Any, n: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(n):
        subject = rng.choice(SUBJECTS)
        fact = rng.choice(FACTS).format(y=rng.randint(1200, 2000), n=rng.randint(2, 12))
        mem.log([{"role": "user", "content": f"Tell me something about {subject} (#{i})."},
                 {"role": "assistant", "content": f"{subject} {fact}."}],
                namespace=("users", f"u{i % 5}"), thread_id=f"t{i}")


def run(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    from fakes import HashEmbeddings

    from seal_agent import SealMemory

    home = Path(tempfile.mkdtemp(prefix=f"seal-bench-{kind}-"))
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as mem:
        log_interactions(mem, args.interactions, args.seed)
        counter = TokenCounter()
        overrides: dict[str, Any] = {"train": {"epochs": args.epochs, "batch_size": 8, "lora_rank": 8}}
        if kind == "raw":
            overrides.update(selfedit={"strategies": ["raw"]}, consolidation={"teacher": "none"})
        else:
            overrides.update(selfedit={"strategies": ["implications", "self_qa", "raw"],
                                       "max_new_tokens": args.max_new_tokens})
            chat = mem.chat_model()
            chat.callbacks = [counter]
        t0 = time.perf_counter()
        report = mem.consolidate(progress=False, **overrides)
        total = time.perf_counter() - t0
    gen_s = report.timings.get("self_edit", 0.0)
    return {"kind": kind, "verdict": report.verdict, "reason": report.reason, "total": total,
            "timings": report.timings, "counts": report.counts, "train": report.train or {},
            "gen_tokens": counter.tokens, "gen_calls": counter.calls,
            "gen_tok_s": counter.tokens / gen_s if gen_s and counter.tokens else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=64, help="budget of one self-edit generation")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} threads={torch.get_num_threads()}, "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"{args.interactions} interactions, tiny-random, epochs={args.epochs}, "
          f"self-edit max_new_tokens={args.max_new_tokens}\n")
    results = [run("raw", args), run("seal", args)]
    stages = ["collect", "self_edit", "train", "gate", "commit"]
    print(f"{'stage (seconds)':22}{'raw (baseline)':>16}{'SEAL strategies':>18}{'ratio':>9}")
    for st in [*stages, "total"]:
        a = results[0]["total"] if st == "total" else results[0]["timings"].get(st, 0.0)
        b = results[1]["total"] if st == "total" else results[1]["timings"].get(st, 0.0)
        ratio = f"{b / a:8.1f}x" if a > 1e-3 else "       -"
        print(f"{st:22}{a:16.2f}{b:18.2f}{ratio}")
    for r in results:
        c = r["counts"]
        dropped = {k[8:]: v for k, v in c.items() if k.startswith("dropped_")}
        print(f"\n[{r['kind']}] verdict={r['verdict']}" + (f" ({r['reason']})" if r["reason"] else ""))
        print(f"  interactions={c.get('interactions')} self_edits={c.get('self_edits')} probes={c.get('probes')} "
              f"replay={c.get('replay', 0)} dropped={dropped}")
        t = r["train"]
        if t:
            print(f"  train: steps={t.get('steps')} tokens={t.get('tokens_seen')} "
                  f"tokens/s={t.get('tokens_per_second', 0):.0f} loss {t.get('first_loss') or 0:.3f} -> "
                  f"{t.get('final_loss') or 0:.3f}")
        if r["gen_calls"]:
            print(f"  self-edit generation: {r['gen_calls']} calls, {r['gen_tokens']} output tokens, "
                  f"{r['gen_tok_s']:.1f} tokens/s")


if __name__ == "__main__":
    main()
