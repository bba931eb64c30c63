"""Benchmark: does a correction supersede the fact it corrects, and nothing else?

Labelled statement pairs (``bench/data/same_fact_pairs*.jsonl``): ``a`` was stored
first, ``b`` came later; ``same`` says whether ``b`` corrects ``a`` (the same subject and
relation, another value) or both can be true (another owner, another attribute, a
refinement, a description). Three deciders, side by side on the same pairs:

- **prefix key** (the baseline, key format 1 of `seal_agent.memory.facts`): the sentence
  up to its first verb must match exactly, the rest must differ;
- **embedding** (an alternative the issue names): cosine similarity of the two
  sentences with their values masked, all-MiniLM-L6-v2, at the threshold that does best
  on the first set (chosen on it, then applied to the held-out set);
- **claims** (ours, `seal_agent.memory.claims`): slot + owner rule.

The first set was written together with the rule; the held-out set was written after
it and never tuned on: its figures are the honest ones.

    python bench/bench_supersession.py            # ~30 s (most of it loading MiniLM)
    python bench/bench_supersession.py --no-embedding

Writes its record (`bench/_results.py`) as JSON and a bar chart as PNG under
``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_header  # noqa: E402
from _results import Goal, Row, print_goals, save  # noqa: E402

from seal_agent.memory.claims import contradicts, parse_claim  # noqa: E402
from seal_agent.memory.facts import fact_key, supersedes  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SETS = ("same_fact_pairs.jsonl", "same_fact_pairs_heldout.jsonl")
log = logging.getLogger("bench.supersession")


def load_pairs(name: str) -> list[dict[str, Any]]:
    """The labelled pairs of one file (``a``, ``b``, ``same``, ``why``)."""
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def prefix_key(a: str, b: str) -> bool:
    """Key format 1: the decision facts made before claims."""
    ka, aa = fact_key(a)
    kb, ab = fact_key(b)
    return supersedes(kb, "ns", ab, ka, "ns", aa)


def claims(a: str, b: str) -> bool:
    ca, cb = parse_claim(a), parse_claim(b)
    return ca is not None and cb is not None and contradicts(cb, ca)


def score(pairs: Sequence[dict[str, Any]], decide: Callable[[str, str], bool]) -> dict[str, Any]:
    """Precision, recall and the pairs decided wrongly."""
    tp = fp = fn = 0
    wrong = []
    for p in pairs:
        got = decide(p["a"], p["b"])
        tp += got and p["same"]
        fp += got and not p["same"]
        fn += (not got) and p["same"]
        if got != p["same"]:
            wrong.append({"a": p["a"], "b": p["b"], "expected": p["same"]})
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else 1.0,
            "recall": tp / (tp + fn) if tp + fn else 1.0, "wrong": wrong}


def embedding_decider(pairs_for_threshold: Sequence[dict[str, Any]]) -> tuple[Callable[[str, str], bool], float]:
    """Masked-sentence cosine >= t, values differing; t chosen for F1 on the given pairs."""
    import numpy as np

    from seal_agent.memory.embeddings import default_embeddings

    emb = default_embeddings()
    cache: dict[str, Any] = {}

    def masked(text: str) -> str:
        c = parse_claim(text)
        key, answer = fact_key(text)
        value = c.value if c is not None else answer
        return text.lower().replace(value, "something") if value and value in text.lower() else key

    def vec(text: str) -> Any:
        if text not in cache:
            cache[text] = np.asarray(emb.embed_query(masked(text)))
        return cache[text]

    def cos(a: str, b: str) -> float:
        va, vb = vec(a), vec(b)
        return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))

    def differ(a: str, b: str) -> bool:
        return fact_key(a)[1] != fact_key(b)[1]

    best_t, best_f1 = 0.9, -1.0
    for t in [x / 100 for x in range(50, 100)]:
        s = score(pairs_for_threshold, lambda a, b, t=t: cos(a, b) >= t and differ(a, b))
        f1 = 2 * s["precision"] * s["recall"] / (s["precision"] + s["recall"] or 1)
        if f1 > best_f1:
            best_t, best_f1 = t, f1
    return (lambda a, b: cos(a, b) >= best_t and differ(a, b)), best_t


def chart(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETS), figsize=(10, 3.6), sharey=True)
    for ax, name in zip(axes, SETS, strict=True):
        deciders = list(results)
        xs = range(len(deciders))
        ax.bar([x - 0.2 for x in xs], [results[d][name]["precision"] for d in deciders], 0.4, label="precision")
        ax.bar([x + 0.2 for x in xs], [results[d][name]["recall"] for d in deciders], 0.4, label="recall")
        ax.set_xticks(list(xs), deciders)
        ax.set_title(name.replace(".jsonl", ""))
        ax.set_ylim(0, 1.05)
    axes[0].legend(loc="lower left")
    fig.suptitle("Does b supersede a? (labelled statement pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-embedding", action="store_true", help="skip the embedding decider (no model load)")
    parser.add_argument("--out", type=Path, help="the JSON record's path (default bench/results/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    machine, device, load_before = machine_header(threads=0)
    sets = {name: load_pairs(name) for name in SETS}
    deciders: dict[str, Callable[[str, str], bool]] = {"prefix key": prefix_key, "claims": claims}
    threshold = None
    if not args.no_embedding:
        deciders["embedding"], threshold = embedding_decider(sets[SETS[0]])
    results = {d: {name: score(pairs, f) for name, pairs in sets.items()} for d, f in deciders.items()}
    for name, pairs in sets.items():
        print(f"\n{name}: {len(pairs)} pairs, {sum(p['same'] for p in pairs)} corrections")
        for d in deciders:
            r = results[d][name]
            print(f"  {d:<11} precision {r['precision']:.2f} ({r['tp']}/{r['tp'] + r['fp']})  "
                  f"recall {r['recall']:.2f} ({r['tp']}/{r['tp'] + r['fn']})")
    if threshold is not None:
        print(f"\nembedding threshold chosen on {SETS[0]}: {threshold:.2f}")
    ours, base = results["claims"], results["prefix key"]
    held = SETS[1]
    goals = [
        Goal("claims: no false supersession on either set", f"{ours[SETS[0]]['fp']} + {ours[held]['fp']} wrong",
             ours[SETS[0]]["fp"] + ours[held]["fp"] == 0),
        Goal("claims: held-out recall >= 0.75", f"{ours[held]['recall']:.2f}", ours[held]["recall"] >= 0.75),
        Goal("claims: held-out recall > prefix key's", f"{ours[held]['recall']:.2f} vs {base[held]['recall']:.2f}",
             ours[held]["recall"] > base[held]["recall"]),
    ]
    rows = [Row(f"supersession precision / recall, {name.replace('.jsonl', '')} ({len(sets[name])} pairs)",
                f"claims {ours[name]['precision']:.2f} / {ours[name]['recall']:.2f}",
                f"prefix key {base[name]['precision']:.2f} / {base[name]['recall']:.2f}"
                + (f"; embedding {results['embedding'][name]['precision']:.2f} / "
                   f"{results['embedding'][name]['recall']:.2f}" if "embedding" in results else ""))
            for name in SETS]
    print_goals(goals)
    save("supersession", title="supersession of facts by meaning, labelled statement pairs",
         data={"results": results, "embedding_threshold": threshold}, rows=rows, goals=goals,
         load_before=load_before, machine=machine, device=device, chart=lambda p: chart(results, p), out=args.out)
    return 0 if all(g.passed for g in goals) else 1


if __name__ == "__main__":
    raise SystemExit(main())
