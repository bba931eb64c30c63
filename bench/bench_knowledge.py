"""Benchmark: SEAL's knowledge-incorporation experiment on the default served model.

After SEAL (Zweiger et al., 2025), section "knowledge incorporation", small: the agent is
told passages of invented facts (`bench/knowledge_data.py`: 10 passages, each a user turn
+ an assistant acknowledgement; 3 questions each, asked in other words than the passage
used). Then, for each arm, in one run, on a fresh memory home with
``SealMemory(home, model="smollm2-135m")``:

* ``base``: closed-book (the question alone), no training -- the floor;
* ``in_context``: the passage pasted before the question -- the upper bound;
* ``recall``: episodic memory: the conversations are logged, each question recalls the
  top 3 (``mem.recall(question, k=3)``, real all-MiniLM embeddings) and they go into the
  system prompt in the middleware's format (`format_memories`);
* consolidation arms: the conversations are logged, ``mem.consolidate(**overrides)``
  writes self-edits, trains a LoRA adapter, gates and commits it; the questions are then
  asked closed-book through ``mem.chat_model()`` (which serves the committed adapter):
  ``raw`` (the named baseline: the exchange itself), ``statements``, ``implications``,
  ``self_qa``, ``rewrite`` (each strategy alone) and ``defaults`` (no overrides).

Per arm: closed-book accuracy (the greedy answer, 32 new tokens, contains an accepted
answer), the mean log-likelihood per token of the first accepted answer as the whole
reply (`answer_logprobs`, under the arm's prompt), accuracy on the canaries shipped for
the model (greedy answer contains ``expected`` or an alias) against the base model's,
the gate's verdict and scale, self-edits kept / dropped by reason and the yield, and
seconds per stage. ``--seeds`` sets ``selfedit.seed`` and ``train.seed`` of the
consolidation arms; ``base``, ``in_context`` and ``recall`` are deterministic (greedy, no
training) and run once. A rejected update leaves the base model serving; for those runs
the staged candidate's accuracy is measured too (``staged`` in the JSON).

``--split train|heldout`` takes the first / second half of the passages (for ReST-EM
style outer loops: tune on one half, report on the other). Writes JSON (rewritten after
every arm, so a long run that dies keeps what it measured) and a PNG chart under
``bench/results/``.

    python bench/bench_knowledge.py --quick        # 4 passages; base,in_context,raw,defaults; 1 seed
    python bench/bench_knowledge.py                # 10 passages, every arm, seeds 0 1 2 (hours on 2 cores)
    python bench/bench_knowledge.py --arms base,recall,defaults --seeds 0 --passages 6
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_header  # bench/, on the path when run as a script
from _results import RESULTS, Goal, Row, print_goals, save

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from knowledge_data import PASSAGES, conversation, is_correct  # noqa: E402

MODEL = "smollm2-135m"
NAMESPACE = ("users", "bench")
MAX_NEW_TOKENS = 32
RECALL_K = 3

# Arm -> config overrides of mem.consolidate (None: no consolidation).
CONSOLIDATION_ARMS: dict[str, dict[str, Any]] = {
    "raw": {"selfedit": {"strategies": ["raw"]}},
    "statements": {"selfedit": {"strategies": ["statements"]}},
    "implications": {"selfedit": {"strategies": ["implications"]}},
    "self_qa": {"selfedit": {"strategies": ["self_qa"]}},
    "rewrite": {"selfedit": {"strategies": ["rewrite"]}},
    "defaults": {},
}
FIXED_ARMS = ("base", "in_context", "recall")  # deterministic: run once whatever the seeds
ALL_ARMS = (*FIXED_ARMS, *CONSOLIDATION_ARMS)
QUICK_ARMS = ("base", "in_context", "raw", "defaults")

GOALS = {
    "defaults_accuracy": "defaults closed-book accuracy >= 50%",
    "defaults_vs_raw": "defaults >= raw + 15 points",
    "defaults_canaries": "defaults canary accuracy >= 90% of base",
    "defaults_yield": "defaults self-edit yield >= 80%",
}


# ----------------------------------------------------------------------------- data


def select_passages(split: str, count: int | None) -> list[dict]:
    """The passages of `split` (first half / second half / all), the first `count` of them."""
    half = len(PASSAGES) // 2
    chosen = {"train": PASSAGES[:half], "heldout": PASSAGES[half:], "all": PASSAGES}[split]
    return list(chosen[:count] if count else chosen)


def questions_of(passages: list[dict]) -> list[dict]:
    return [{"passage": p["id"], "text": p["text"], "question": q, "accepted": list(acc)}
            for p in passages for q, acc in p["questions"]]


def _canaries() -> list[Any]:
    from seal_agent.config import GateConfig
    from seal_agent.gate.suite import load_canaries, shipped_canary_file

    path = shipped_canary_file(MODEL)
    if path is None:
        raise SystemExit(f"no canary file is shipped for {MODEL}")
    items = load_canaries(path, default_tolerance=GateConfig().canary_tolerance, default_check="greedy")
    # Judged greedily here whatever their check: the canaries' own promise is that the base
    # model's greedy answer contains `expected` (or an alias).
    return [it for it in items if not it.raw]


# ---------------------------------------------------------------------- evaluation


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def ask(chat: Any, prompts: list[list[dict[str, str]]], answers: list[str]) -> tuple[list[str], list[float]]:
    """Greedy answers to `prompts` (message lists) and the mean log-likelihood of `answers`."""
    from langchain_core.messages import convert_to_messages

    from seal_agent.training.scoring import answer_logprobs

    texts = [row[0] for row in chat.generate_batch([convert_to_messages(p) for p in prompts],
                                                    max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)]
    # generate_batch followed CURRENT first, so served_model is the adapter now served.
    scores = answer_logprobs(chat.served_model, chat.tokenizer, list(zip(prompts, answers, strict=True)))
    return texts, scores


def closed_book(chat: Any, qs: list[dict]) -> dict[str, Any]:
    prompts = [[{"role": "user", "content": q["question"]}] for q in qs]
    return score_answers(chat, qs, prompts)


def score_answers(chat: Any, qs: list[dict], prompts: list[list[dict[str, str]]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    texts, lls = ask(chat, prompts, [q["accepted"][0] for q in qs])
    right = [is_correct(t, q["accepted"]) for t, q in zip(texts, qs, strict=True)]
    return {"accuracy": sum(right) / len(qs), "correct": sum(right), "n": len(qs),
            "loglik": statistics.fmean(lls), "seconds": time.perf_counter() - t0,
            "answers": [{"passage": q["passage"], "question": q["question"], "answer": t, "correct": r,
                         "loglik": ll} for q, t, r, ll in zip(qs, texts, right, lls, strict=True)]}


def canary_accuracy(chat: Any, items: list[Any]) -> dict[str, Any]:
    from langchain_core.messages import convert_to_messages

    from seal_agent.gate.canary import answer_contains

    t0 = time.perf_counter()
    texts = [row[0] for row in chat.generate_batch([convert_to_messages([dict(m) for m in it.prompt]) for it in items],
                                                    max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)]
    right = [answer_contains(t, it.expected, it.aliases) for t, it in zip(texts, items, strict=True)]
    return {"accuracy": sum(right) / len(items), "correct": sum(right), "n": len(items),
            "seconds": time.perf_counter() - t0,
            "failed": [{"id": it.id, "answer": t} for it, t, r in zip(items, texts, right, strict=True) if not r]}


# ---------------------------------------------------------------------------- arms


class Context:
    """What every arm of one run shares: settings, data, the base model's canary figure."""

    def __init__(self, args: argparse.Namespace, passages: list[dict]) -> None:
        self.args = args
        self.passages = passages
        self.questions = questions_of(passages)
        self.canaries = _canaries()
        self.base_canaries: dict[str, Any] | None = None

    def home(self, name: str) -> tuple[Path, Any]:
        """A fresh memory home (kept under --homes when given, else a temporary folder)."""
        if self.args.homes:
            path = Path(self.args.homes) / f"{name}-{time.strftime('%H%M%S')}"
            path.mkdir(parents=True, exist_ok=False)
            return path, None
        tmp = tempfile.TemporaryDirectory(prefix=f"seal-knowledge-{name}-")
        return Path(tmp.name), tmp

    def base_canary(self, chat: Any) -> dict[str, Any]:
        """Canary accuracy of the base model (computed once, on a chat serving no adapter)."""
        if self.base_canaries is None:
            assert chat.adapter is None, "base canaries must be measured on the base model"
            self.base_canaries = canary_accuracy(chat, self.canaries)
        return self.base_canaries


def _log_all(mem: Any, passages: list[dict]) -> None:
    for p in passages:
        mem.log(conversation(p), namespace=NAMESPACE, thread_id=p["id"])


def run_fixed(ctx: Context, arm: str) -> dict[str, Any]:
    """base / in_context / recall: no training."""
    from fakes import HashEmbeddings

    from seal_agent import SealMemory
    from seal_agent.integrations.langgraph import format_memories

    home, tmp = ctx.home(arm)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"arm": arm}
    try:
        embeddings = None if arm == "recall" else HashEmbeddings()  # recall needs the real default
        mem = SealMemory(home, model=MODEL, embeddings=embeddings)
        try:
            chat = mem.chat_model()
            qs = ctx.questions
            if arm == "base":
                out["eval"] = closed_book(chat, qs)
            elif arm == "in_context":
                prompts = [[{"role": "user", "content": f"{q['text']}\n\n{q['question']}"}] for q in qs]
                out["eval"] = score_answers(chat, qs, prompts)
            else:
                tl = time.perf_counter()
                _log_all(mem, ctx.passages)
                mem.flush(timeout=600)
                log_s = time.perf_counter() - tl
                tr = time.perf_counter()
                prompts, hits = [], 0
                for q in qs:
                    memories = mem.recall(q["question"], namespace=NAMESPACE, k=RECALL_K)
                    hits += any(q["text"] in m.text for m in memories)
                    prompts.append([{"role": "system", "content": format_memories(memories)},
                                    {"role": "user", "content": q["question"]}])
                recall_s = time.perf_counter() - tr
                out["eval"] = score_answers(chat, qs, prompts)
                out["recall_hit_rate"] = hits / len(qs)
                out["timings"] = {"log+index": log_s, "recall": recall_s}
            out["canaries"] = ctx.base_canary(chat)
            out["verdict"] = "-"
        finally:
            mem.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    out["timings"] = {**out.get("timings", {}), "eval": out["eval"]["seconds"]}
    out["seconds"] = time.perf_counter() - t0
    return out


def _selfedit_stats(home: Path, report: Any) -> dict[str, Any]:
    path = home / "consolidation" / "runs" / report.run_id / "selfedits.json"
    stats: dict[str, Any] = {"kept": report.counts.get("self_edits", 0), "probes": report.counts.get("probes", 0),
                             "dropped": {k[len("dropped_"):]: v for k, v in report.counts.items()
                                         if k.startswith("dropped_")}}
    stats["generated"] = stats["kept"] + stats["probes"] + sum(stats["dropped"].values())
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        stats["yield"] = data.get("yield")
        by_reason: dict[str, int] = {}
        for r in data.get("rejected", []):
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        stats["rejected_by_reason"] = by_reason
        by_strategy: dict[str, int] = {}
        for e in data.get("edits", []):
            by_strategy[e["strategy"]] = by_strategy.get(e["strategy"], 0) + 1
        stats["kept_by_strategy"] = by_strategy
        stats["model_written"] = sum(1 for e in data.get("edits", []) if e.get("model_written"))
    else:
        stats["yield"] = None
    return stats


def run_consolidation(ctx: Context, arm: str, seed: int) -> dict[str, Any]:
    """Log every passage, consolidate with the arm's overrides, ask closed-book."""
    from fakes import HashEmbeddings

    from seal_agent import SealMemory

    overrides = json.loads(json.dumps(CONSOLIDATION_ARMS[arm]))  # deep copy
    overrides.setdefault("selfedit", {})["seed"] = seed
    overrides.setdefault("train", {})["seed"] = seed
    home, tmp = ctx.home(f"{arm}-s{seed}")
    t0 = time.perf_counter()
    out: dict[str, Any] = {"arm": arm, "seed": seed, "overrides": overrides}
    try:
        mem = SealMemory(home, model=MODEL, embeddings=HashEmbeddings())  # no recall in these arms
        try:
            chat = mem.chat_model()  # the served model: writes the self-edits, answers afterwards
            ctx.base_canary(chat)
            _log_all(mem, ctx.passages)
            tc = time.perf_counter()
            report = mem.consolidate(progress=ctx.args.progress, **overrides)
            out["consolidate_seconds"] = time.perf_counter() - tc
            gate = report.gate or {}
            out.update(verdict=report.verdict, reason=report.reason, version=report.version,
                       gate_verdict=gate.get("verdict"), scale=gate.get("scale"),
                       gate_reasons=gate.get("reasons", []), counts=report.counts, train=report.train,
                       timings=dict(report.timings), selfedits=_selfedit_stats(home, report))
            out["eval"] = closed_book(chat, ctx.questions)
            out["served_adapter"] = chat.adapter
            out["canaries"] = canary_accuracy(chat, ctx.canaries)
            out["timings"]["eval"] = out["eval"]["seconds"] + out["canaries"]["seconds"]
            if report.verdict == "rejected" and report.version:
                # What the update learned, although the gate kept it from serving.
                chat.use_adapter(mem.adapters.get(report.version).path)
                staged = closed_book(chat, ctx.questions)
                out["staged"] = {"eval": staged, "canaries": canary_accuracy(chat, ctx.canaries)}
        finally:
            mem.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    out["seconds"] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------- summary


def _spread(xs: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)}


def summarize(runs: list[dict[str, Any]], base_canaries: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for arm in ALL_ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        s: dict[str, Any] = {
            "runs": len(rs),
            "accuracy": _spread([r["eval"]["accuracy"] for r in rs]),
            "loglik": _spread([r["eval"]["loglik"] for r in rs]),
            "canary_accuracy": _spread([r["canaries"]["accuracy"] for r in rs]),
            "seconds": _spread([r["seconds"] for r in rs]),
        }
        if base_canaries and base_canaries["accuracy"] > 0:
            s["canary_vs_base"] = _spread([r["canaries"]["accuracy"] / base_canaries["accuracy"] for r in rs])
        verdicts: dict[str, int] = {}
        for r in rs:
            v = r.get("gate_verdict") or r.get("verdict", "-")
            if r.get("verdict") in ("skipped",):
                v = "skipped"
            verdicts[v] = verdicts.get(v, 0) + 1
        s["verdicts"] = verdicts
        yields = [r["selfedits"]["yield"] for r in rs if r.get("selfedits", {}).get("yield") is not None]
        s["yield"] = _spread(yields) if yields else None
        if "recall_hit_rate" in rs[0]:
            s["recall_hit_rate"] = rs[0]["recall_hit_rate"]
        stages: dict[str, list[float]] = {}
        for r in rs:
            for k, v in r.get("timings", {}).items():
                stages.setdefault(k, []).append(v)
        s["stage_seconds"] = {k: statistics.fmean(v) for k, v in stages.items()}
        staged = [r["staged"] for r in rs if "staged" in r]
        if staged:
            s["staged_accuracy"] = _spread([x["eval"]["accuracy"] for x in staged])
            s["staged_canary_accuracy"] = _spread([x["canaries"]["accuracy"] for x in staged])
        out[arm] = s
    return out


def goals(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    d, raw = summary.get("defaults"), summary.get("raw")

    def goal(key: str, value: float | None, met: bool | None) -> dict[str, Any]:
        return {"goal": GOALS[key], "value": value, "met": met}

    out = {}
    out["defaults_accuracy"] = goal("defaults_accuracy", d["accuracy"]["mean"] if d else None,
                                    d["accuracy"]["mean"] >= 0.5 if d else None)
    gap = d["accuracy"]["mean"] - raw["accuracy"]["mean"] if d and raw else None
    out["defaults_vs_raw"] = goal("defaults_vs_raw", gap, gap >= 0.15 - 1e-9 if gap is not None else None)
    cv = d.get("canary_vs_base", {}).get("mean") if d else None
    out["defaults_canaries"] = goal("defaults_canaries", cv, cv >= 0.9 - 1e-9 if cv is not None else None)
    y = d["yield"]["mean"] if d and d.get("yield") else None
    out["defaults_yield"] = goal("defaults_yield", y, y >= 0.8 if y is not None else None)
    return out


def judged_goals(met: dict[str, dict[str, Any]]) -> list[Goal]:
    """The goals this run could judge (an arm not run judges nothing), as `_results.Goal`s."""
    out = []
    for g in met.values():
        if g["met"] is None:
            continue
        value = f"{100 * g['value']:+.0f} points" if "points" in g["goal"] else f"{100 * g['value']:.0f}%"
        out.append(Goal(g["goal"], value, bool(g["met"])))
    return out


def result_rows(summary: dict[str, dict[str, Any]], label: str) -> list[Row]:
    """The README table's lines: defaults against the named baseline raw, then the other arms."""
    d, raw = summary.get("defaults"), summary.get("raw")
    others = ", ".join(f"{arm.replace('_', ' ')} {_pct(summary[arm]['accuracy'])}"
                       for arm in ("base", "in_context", "recall") if arm in summary)
    rows = []
    if d or raw:
        gap = (f"{100 * (d['accuracy']['mean'] - raw['accuracy']['mean']):+.0f} points" if d and raw else "")
        rows.append(Row(f"knowledge incorporation, {label}: closed-book accuracy",
                        f"defaults {_pct(d['accuracy'])}" if d else "-",
                        (f"raw {_pct(raw['accuracy'])}" if raw else "raw not run") + (f" ({others})" if others else ""),
                        gap))
        cv = lambda s: _pct(s.get("canary_vs_base")) if s else "-"  # noqa: E731
        rows.append(Row("knowledge: canary accuracy, % of the base model's", f"defaults {cv(d)}", f"raw {cv(raw)}"))
        if d and d.get("yield"):
            rows.append(Row("knowledge: self-edit yield (kept / generated)", f"defaults {_pct(d['yield'])}", ""))
    elif others:
        rows.append(Row(f"knowledge incorporation, {label}: closed-book accuracy", others, ""))
    for arm in ("statements", "implications", "self_qa", "rewrite"):
        if arm in summary:
            s = summary[arm]
            rows.append(Row(f"knowledge: {arm} alone, closed-book accuracy", _pct(s["accuracy"]),
                            f"raw {_pct(raw['accuracy'])}" if raw else ""))
    return rows


def _pct(s: dict[str, float] | None, points: bool = False) -> str:
    if not s:
        return "-"
    if s["min"] == s["max"]:
        return f"{100 * s['mean']:.0f}%"
    return f"{100 * s['mean']:.0f}% [{100 * s['min']:.0f}-{100 * s['max']:.0f}]"


def print_table(summary: dict[str, dict[str, Any]], base_canaries: dict[str, Any] | None) -> None:
    raw = summary.get("raw")
    print(f"\n{'arm':12s} {'runs':>4s} {'accuracy':>16s} {'Δ vs raw':>9s} {'log-lik':>8s} "
          f"{'canaries (vs base)':>22s} {'verdict':28s} {'yield':>12s} {'seconds':>8s}")
    for arm, s in summary.items():
        delta = f"{100 * (s['accuracy']['mean'] - raw['accuracy']['mean']):+.0f} pt" if raw else "-"
        cv = s.get("canary_vs_base")
        canaries = _pct(s["canary_accuracy"]) + (f" ({100 * cv['mean']:.0f}%)" if cv else "")
        verdict = ", ".join(f"{v} x{n}" if n > 1 else v for v, n in s["verdicts"].items())
        print(f"{arm:12s} {s['runs']:4d} {_pct(s['accuracy']):>16s} {delta:>9s} {s['loglik']['mean']:8.2f} "
              f"{canaries:>22s} {verdict[:28]:28s} {_pct(s['yield']):>12s} {s['seconds']['mean']:8.0f}")
    if base_canaries:
        print(f"(base model canaries: {base_canaries['correct']}/{base_canaries['n']}; "
              "bracketed: min-max over seeds)")
    for arm, s in summary.items():
        extra = []
        if "recall_hit_rate" in s:
            extra.append(f"gold passage in top {RECALL_K}: {100 * s['recall_hit_rate']:.0f}%")
        if "staged_accuracy" in s:
            extra.append(f"rejected candidates (not served): accuracy {_pct(s['staged_accuracy'])}, "
                         f"canaries {_pct(s['staged_canary_accuracy'])}")
        stages = ", ".join(f"{k} {v:.0f}" for k, v in s["stage_seconds"].items())
        print(f"  {arm}: seconds by stage: {stages}" + ("; " + "; ".join(extra) if extra else ""))


def print_runs(runs: list[dict[str, Any]]) -> None:
    for r in runs:
        if "selfedits" not in r:
            continue
        se = r["selfedits"]
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(se["dropped"].items())) or "none"
        print(f"  {r['arm']} seed {r['seed']}: self-edits generated {se['generated']}, kept {se['kept']} "
              f"(+{se['probes']} probes), dropped: {dropped}; verdict {r['verdict']}"
              + (f" ({r['gate_verdict']})" if r.get("gate_verdict") not in (None, r["verdict"]) else "")
              + (f" -- {_short(r['reason'])}" if r.get("reason") else ""))


def _short(text: str, limit: int = 240) -> str:
    """A long gate reason, cut (the JSON keeps it whole)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_chart(path: Path, summary: dict[str, dict[str, Any]], title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    xs = range(len(arms))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(arms) + 2), 4))
    for offset, key, label, color in ((-width / 2, "accuracy", "accuracy on the questions", "#2a7ab0"),
                                      (width / 2, "canary_accuracy", "canary accuracy", "#e08a2c")):
        means = [100 * summary[a][key]["mean"] for a in arms]
        lo = [100 * (summary[a][key]["mean"] - summary[a][key]["min"]) for a in arms]
        hi = [100 * (summary[a][key]["max"] - summary[a][key]["mean"]) for a in arms]
        bars = ax.bar([x + offset for x in xs], means, width, yerr=[lo, hi], capsize=3, label=label, color=color)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(list(xs), arms)
    ax.set_ylabel("% right")
    ax.set_ylim(0, 125)
    ax.axhline(50, color="#999999", lw=0.8, ls="--")
    ax.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", default=None,
                   help=f"comma-separated subset of {','.join(ALL_ARMS)} (default: all; --quick: {','.join(QUICK_ARMS)})")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="selfedit.seed and train.seed of the consolidation arms (default 0 1 2; --quick: 0)")
    p.add_argument("--passages", type=int, default=None, help="use the first N passages of the split "
                                                               "(default: all; --quick: 4)")
    p.add_argument("--split", choices=("train", "heldout", "all"), default="all",
                   help="first half (train), second half (heldout) or all passages")
    p.add_argument("--quick", action="store_true", help="4 passages, arms base,in_context,raw,defaults, seed 0")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action="store_true", help="show consolidation's progress bars")
    p.add_argument("--homes", type=Path, default=None,
                   help="keep every arm's memory home under this folder (default: temporary, deleted)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/knowledge-<time>.json)")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads (default PASSIVE; '' keeps the environment's)")
    args = p.parse_args()
    if args.omp_wait_policy:  # read once, when torch loads OpenMP: set it before the import
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    arms = (args.arms.split(",") if args.arms else list(QUICK_ARMS if args.quick else ALL_ARMS))
    unknown = [a for a in arms if a not in ALL_ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {','.join(ALL_ARMS)}")
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    count = args.passages if args.passages is not None else (4 if args.quick else None)
    passages = select_passages(args.split, count)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch
    import transformers

    import seal_agent

    transformers.utils.logging.disable_progress_bar()  # a weight-loading bar per arm is noise
    machine, device, load_before = machine_header(threads=args.threads, extra=f"seal_agent {seal_agent.__version__}, ")
    ctx = Context(args, passages)
    print(f"model {MODEL}; split {args.split}: {len(passages)} passages ({', '.join(x['id'] for x in passages)}), "
          f"{len(ctx.questions)} questions; {len(ctx.canaries)} canaries; arms {','.join(arms)}; "
          f"seeds {' '.join(map(str, seeds))} (consolidation arms only)")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"knowledge-{stamp}.json"  # one file, rewritten after every arm
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    c0 = _cpu_seconds()
    run_label = (f"{len(passages)} passages / {len(ctx.questions)} questions ({args.split}), "
                 f"seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}")
    chart_title = (f"{MODEL}, {len(passages)} passages / {len(ctx.questions)} questions ({args.split}), "
                   f"seeds {' '.join(map(str, seeds))} (load {load_before[0]:.1f})")

    def record(done: bool) -> dict[str, Any]:
        summary = summarize(runs, ctx.base_canaries)
        met = goals(summary)
        rec = {"complete": done, "torch": torch.__version__, "transformers": transformers.__version__,
               "seal_agent": seal_agent.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "settings": {"model": MODEL, "arms": arms, "seeds": seeds, "split": args.split,
                            "passages": [x["id"] for x in passages], "questions": len(ctx.questions),
                            "max_new_tokens": MAX_NEW_TOKENS, "recall_k": RECALL_K, "threads": args.threads},
               "base_canaries": ctx.base_canaries, "summary": summary, "goals": met, "runs": runs}
        save("knowledge", title=f"bench_knowledge, {MODEL}, {run_label}, arms {','.join(arms)}"
             + ("" if done else f" (incomplete: {len(runs)} of {len(order)} arm runs)"),
             data=rec, rows=result_rows(summary, run_label), goals=judged_goals(met), load_before=load_before,
             machine=machine, device=device,
             chart=(lambda path: write_chart(path, summary, chart_title)) if done else None, out=out)
        return rec

    # Seeds outermost: background load drifts, and every arm then sees a bit of each period.
    order = [(a, None) for a in arms if a in FIXED_ARMS]
    order += [(a, s) for s in seeds for a in arms if a in CONSOLIDATION_ARMS]
    for arm, seed in order:
        label = arm if seed is None else f"{arm} (seed {seed})"
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\n[{time.strftime('%H:%M:%S')}] {label}: running (load {load:.1f})", flush=True)
        r = run_fixed(ctx, arm) if seed is None else run_consolidation(ctx, arm, seed)
        r["load_average_start"] = load
        runs.append(r)
        e = r["eval"]
        print(f"[{time.strftime('%H:%M:%S')}] {label}: {e['correct']}/{e['n']} right, log-lik {e['loglik']:.2f}, "
              f"canaries {r['canaries']['correct']}/{r['canaries']['n']}, verdict {r.get('gate_verdict') or r['verdict']}"
              f", {r['seconds']:.0f} s", flush=True)
        record(done=False)
        gc.collect()

    summary = summarize(runs, ctx.base_canaries)
    met = goals(summary)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print_table(summary, ctx.base_canaries)
    print_runs(runs)
    print_goals(judged_goals(met))
    for g in met.values():
        if g["met"] is None:
            print(f"  n/a   {g['goal']}  (arm not run)")
    print(f"\nload average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; after: "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; CPU time {_cpu_seconds() - c0:.0f} s "
          "(this process; the embedding child of the recall arm excluded)")
    record(done=True)
    if args.check and any(g["met"] is False for g in met.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
