"""Benchmark: batched self-edit generation vs one request per prompt.

The served model (SmolLM2-135M-Instruct by default) writes self-edits for 16 passages
with the ``self_qa`` strategy's prompt ("write question-answer pairs"), sampled at
temperature 0.7 with a fixed seed, up to 128 new tokens each:

* ours: `AdaptiveChatModel.generate_batch` -- prompts left-padded, sorted by length,
  several per forward pass on the KV cache;
* named baseline: one `AdaptiveChatModel.invoke` per prompt (what consolidation did).

Reported for both: generated tokens per second of wall time and per CPU-second,
seconds, tokens and how many completions ended at EOS. Tokens are counted honestly:
a completion's tokens end at its EOS (included), padding is never counted; the
baseline's count is the usage each `invoke` reports. The two sides sample different
texts (different RNG streams), so their token counts differ a little: compare rates.

Writes the figures as JSON (`bench/_results.py`'s record: rows, goals, data) and a bar chart
as PNG under ``bench/results/``.

    python bench/bench_generation.py                  # ~3-5 minutes on 2 busy cores
    python bench/bench_generation.py --quick          # 6 prompts
    python bench/bench_generation.py --repeats 3      # medians of 3 alternated runs
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

from _machine import machine_header  # bench/, on the path when run as a script
from _results import Goal, Row, print_goals, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Passages are built from fictional facts, so the model cannot answer from pretraining
# and their lengths spread (2-9 sentences, ~40-200 tokens) as logged exchanges do.
PLACES = ["Zorbia", "Quxville", "Lake Mirr", "the Ostrel valley", "Port Anvel", "the Kessa islands"]
PEOPLE = ["Dr. Olen Varga", "Anna Pell", "Captain Idris Moro", "the engineer Lusa Tam", "Mayor Fenwick"]
FACTS = [
    "{place} was founded in {year} by {person}.",
    "The main export of {place} is {thing}, shipped every {n} weeks.",
    "{person} discovered a blue mineral near {place} and named it {word}ite.",
    "Every {n} years {place} hosts a festival where people paint their doors green.",
    "The tallest tower in {place} is {n}0 meters high and was built from {thing}.",
    "{person} wrote a book about {place} called The {word} Chronicles.",
    "In {place} the school day starts at {n} o'clock and ends with a song.",
    "The river that crosses {place} freezes only once every {n} winters.",
    "{person} keeps {n} tame foxes and a parrot named {word}.",
]
THINGS = ["salt", "copper wire", "glass beads", "dried plums", "wool", "cedar wood"]
WORDS = ["Tarn", "Velo", "Quill", "Mossa", "Brindle", "Orrin"]


# The self_qa strategy's instruction (seal_agent/selfedit/self_qa.py), copied so that the
# benchmark measures the same prompts whatever that module becomes.
SELF_QA_PROMPT = """Read the passage below and write question-answer pairs about what it says. \
Each question must be answerable by someone who remembers the passage but cannot see it, \
so name things explicitly (no "the passage" or "it"). Keep answers short and correct \
according to the passage. Use exactly this format, with a blank line between pairs:

Q: <question>
A: <answer>

Passage:
{passage}"""


def make_prompts(count: int, seed: int) -> list[str]:
    """`count` self-QA prompts: the self_qa instruction around a fresh passage each."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(2, 9)):
            sentences.append(rng.choice(FACTS).format(
                place=rng.choice(PLACES), person=rng.choice(PEOPLE), year=rng.randint(1200, 1990),
                n=rng.randint(2, 9), thing=rng.choice(THINGS), word=rng.choice(WORDS)))
        prompts.append(SELF_QA_PROMPT.format(passage=" ".join(sentences)))
    return prompts


def _cpu_seconds() -> float:
    """User + system CPU time of this process: less disturbed than wall time by other load."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_baseline(chat: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One `invoke` per prompt, each sampled with its own seed."""
    tokens = eos = 0
    c0, t0 = _cpu_seconds(), time.perf_counter()
    for i, prompt in enumerate(prompts):
        message = chat.invoke(prompt, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                              seed=args.seed + i)
        tokens += message.usage_metadata["output_tokens"]
        eos += message.response_metadata["finish_reason"] == "stop"
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return {"tokens": tokens, "seconds": seconds, "cpu": cpu, "eos": eos, "completions": len(prompts)}


def run_batched(chat: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One `generate_batch` call; token counts come from its per-completion `Sample`s."""
    from seal_agent.model._batch import CancelFlags

    c0, t0 = _cpu_seconds(), time.perf_counter()
    # The private twin of generate_batch: the same work, plus each completion's token count.
    samples = chat._generate_samples(
        prompts, n=1, temperature=args.temperature, max_new_tokens=args.max_new_tokens, top_p=None,
        seed=args.seed, stop=None, max_batch_tokens=args.max_batch_tokens, prefill=None,
        cancel=CancelFlags(), progress=False)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    flat = [s for row in samples for s in row]
    return {"tokens": sum(s.output_tokens for s in flat), "seconds": seconds, "cpu": cpu,
            "eos": sum(s.finish_reason == "stop" for s in flat), "completions": len(flat)}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tokens_per_s": _median([r["tokens"] / r["seconds"] for r in runs]),
            "tokens_per_cpu_s": _median([r["tokens"] / r["cpu"] for r in runs]),
            "seconds": _median([r["seconds"] for r in runs]),
            "tokens": _median([r["tokens"] for r in runs]),
            "eos_share": _median([r["eos"] / r["completions"] for r in runs]),
            "runs": runs}


def write_chart(path: Path, base: dict[str, Any], ours: dict[str, Any], title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    names = ["one invoke\nper prompt", "generate_batch"]
    for ax, key, label in ((axes[0], "tokens_per_s", "generated tokens / s (wall)"),
                           (axes[1], "tokens_per_cpu_s", "generated tokens / CPU-s")):
        values = [base[key], ours[key]]
        bars = ax.bar(names, values, color=["#999999", "#2a7ab0"])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(0, max(values) * 1.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a load_model name or folder")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="6 prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-batch-tokens", type=int, default=None, help="generate_batch's budget (default: its own)")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate baseline/ours this many times and report medians (for noisy machines)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/generation-<time>.json)")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads (default PASSIVE; '' keeps the environment's). "
                        "With the default spin-waiting, threads that wait for a busy core burn the CPU the "
                        "others need: under load, a batched run took 10x longer than with PASSIVE")
    args = p.parse_args()
    count = 6 if args.quick else args.prompts
    if args.omp_wait_policy:  # read once, when torch loads OpenMP: set it before the import
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy

    import torch
    import transformers

    from seal_agent.model import AdaptiveChatModel
    from seal_agent.model._batch import DEFAULT_MAX_BATCH_TOKENS

    if args.max_batch_tokens is None:
        args.max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS
    machine, device, load_before = machine_header(threads=args.threads, extra="")

    chat = AdaptiveChatModel.load(args.model)
    prompts = make_prompts(count, args.seed)
    lengths = [len(chat._encode_batch([q], [""])[0]) for q in prompts]
    print(f"model: {args.model}; {count} self-QA prompts of {min(lengths)}-{max(lengths)} tokens; "
          f"up to {args.max_new_tokens} new tokens, temperature {args.temperature}, seed {args.seed}; "
          f"max_batch_tokens {args.max_batch_tokens}")

    # Warm-up (first-call allocations, lazy imports), the same for both sides.
    chat.invoke(prompts[0], max_new_tokens=4)
    chat.generate_batch(prompts[:2], max_new_tokens=4)

    runs: dict[str, list[dict[str, Any]]] = {"base": [], "ours": []}
    for _ in range(args.repeats):  # alternate, so that background load hits both sides alike
        runs["base"].append(run_baseline(chat, prompts, args))
        runs["ours"].append(run_batched(chat, prompts, args))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    base, ours = summary(runs["base"]), summary(runs["ours"])

    print(f"\n{'':28s} {'tokens/s':>9s} {'tok/CPU-s':>9s} {'seconds':>8s} {'tokens':>7s} {'ended at EOS':>12s}")
    for name, r in (("baseline (invoke x prompts)", base), ("generate_batch", ours)):
        print(f"{name:28s} {r['tokens_per_s']:9.1f} {r['tokens_per_cpu_s']:9.1f} {r['seconds']:8.1f} "
              f"{r['tokens']:7.0f} {r['eos_share']:12.0%}")
    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    cpu_ratio = ours["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
    verdict = "PASS" if ratio >= 3 else "FAIL"
    print(f"\nspeed-up, generated tokens/s (batched / one at a time): {ratio:.2f}x "
          f"(per CPU-second: {cpu_ratio:.2f}x); goal >= 3x: {verdict}")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
          f" (median of {args.repeats} run{'s' if args.repeats > 1 else ''})")

    chart_title = (f"{args.model}, {count} prompts x {args.max_new_tokens} tokens, T={args.temperature}: "
                   f"{ratio:.2f}x (load {load_before[0]:.1f})")
    title = (f"bench_generation, {args.model}, {count} prompts x {args.max_new_tokens} tokens, T {args.temperature}, "
             f"seed {args.seed}, {args.repeats} repeat{'s' if args.repeats > 1 else ''}")
    rows = [Row(f"self-edit generation, {count} prompts x {args.max_new_tokens} tokens, T {args.temperature}, "
                f"{args.model}" + (f", median of {args.repeats}" if args.repeats > 1 else ""),
                f"generate_batch {ours['tokens_per_s']:.1f} tokens/s ({ours['tokens_per_cpu_s']:.1f} per CPU-s)",
                f"one invoke per prompt {base['tokens_per_s']:.1f} tokens/s ({base['tokens_per_cpu_s']:.1f} per CPU-s)",
                f"{ratio:.2f}x ({cpu_ratio:.2f}x per CPU-s)")]
    goals = [Goal("self-edit generation >= 3x one invoke per prompt (tokens/s)", f"{ratio:.2f}x", ratio >= 3)]
    data = {"torch": torch.__version__, "transformers": transformers.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "prompt_tokens": lengths},
            "baseline": base, "ours": ours, "speedup": ratio, "speedup_per_cpu_s": cpu_ratio,
            "goal": ">= 3x tokens/s", "goal_met": ratio >= 3}
    print_goals(goals)
    save("generation", title=title, data=data, rows=rows, goals=goals, load_before=load_before, machine=machine,
         device=device, chart=lambda path: write_chart(path, base, ours, chart_title), out=args.out)


if __name__ == "__main__":
    main()
