"""Benchmark: ReST-EM, SEAL's outer loop -- does the writer learn to write better self-edits?

SEAL (Zweiger et al., 2025), knowledge incorporation: two rounds of ReST-EM took their
model from 39.7 % to 47.0 % closed-book. Here, small, on the default served model
(smollm2-135m) with `bench/knowledge_data.py`'s invented passages, split in a training
half and a held-out half (``--split`` of `bench_knowledge.py`):

* the writer is improved on the **training** passages: round r samples ``--candidates``
  implications per passage from the current writer, rewards each by what a throwaway
  LoRA update trained on it does to the passage's questions (closed-book, from the base
  model), keeps the best per passage whose update keeps the canaries (checked best
  first), fine-tunes the writer
  and commits it (`SealMemory.improve_writer`);
* after each round r = 0 (the base model writing), 1, 2, ...: on a fresh home, the
  **held-out** passages are logged and consolidated with the ``implications`` strategy,
  written by that round's writer (consolidation pins the committed writer); then the
  held-out questions are asked closed-book, and the shipped canaries are checked;
* ``raw`` (the exchange itself, no writer) on the held-out passages, for comparison.

Reported per round: held-out closed-book accuracy and answer log-likelihood, canaries vs
the base model, the gate's verdict, and the writer round's mean reward, kept/total,
seconds per candidate evaluation and per round; mean and min-max over ``--seeds``. Goals
(issue 11): the last round >= round 0 + 5 points and >= raw on the held-out passages, the
canaries >= 90% of the base model's in every evaluation. JSON (`bench/_results.py`'s
record, rewritten after every step) and a PNG chart under ``bench/results/``.

    python bench/bench_writer.py                               # 4+4 passages, K=3, 2 rounds, seed 0
    python bench/bench_writer.py --train 5 --heldout 5 --candidates 4 --seeds 0 1 2
    python bench/bench_writer.py --train 5 --heldout 5 --seeds 0 1 2 --raw-once   # raw on seed 0 only
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
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

import bench_knowledge as bk  # noqa: E402

MODEL = bk.MODEL


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def _mem(home: Path) -> Any:
    from fakes import HashEmbeddings

    from seal_agent import SealMemory

    return SealMemory(home, model=MODEL, embeddings=HashEmbeddings())


def evaluate_heldout(ctx: bk.Context, home: Path, strategy: str, seed: int, writer_from: Path | None,
                     progress: bool) -> dict[str, Any]:
    """Consolidate the held-out passages on a fresh home (with the writer copied from
    `writer_from`), then ask their questions closed-book and check the canaries."""
    if writer_from is not None and (writer_from / "writer" / "adapters").is_dir():
        shutil.copytree(writer_from / "writer" / "adapters", home / "writer" / "adapters",
                        ignore=shutil.ignore_patterns(".lock"))
    t0 = time.perf_counter()
    mem = _mem(home)
    try:
        chat = mem.chat_model()
        ctx.base_canary(chat)
        bk._log_all(mem, ctx.passages)
        report = mem.consolidate(progress=progress, selfedit={"strategies": [strategy], "seed": seed},
                                 train={"seed": seed})
        gate = report.gate or {}
        out = {"verdict": report.verdict, "reason": report.reason, "scale": gate.get("scale"),
               "counts": report.counts, "timings": report.timings,
               "selfedits": bk._selfedit_stats(home, report)}
        out["eval"] = bk.closed_book(chat, ctx.questions)
        out["canaries"] = bk.canary_accuracy(chat, ctx.canaries)
        if report.verdict == "rejected" and report.version:  # what it learned although the gate refused it
            chat.use_adapter(mem.adapters.get(report.version).path)
            out["staged"] = {"eval": bk.closed_book(chat, ctx.questions)}
    finally:
        mem.close()
    out["seconds"] = time.perf_counter() - t0
    return out


def improve_round(train_home: Path, train_passages: list[dict], args: argparse.Namespace, seed: int,
                  r: int) -> dict[str, Any]:
    """One ReST-EM round on the training passages (their questions reward the candidates)."""
    from seal_agent.selfedit.writer import Question, WriterConfig

    mem = _mem(train_home)
    try:
        if not mem.list():
            bk._log_all(mem, train_passages)
        by_thread = {it.thread_id: it.id for it in mem.list()}
        questions = {by_thread[p["id"]]: [Question(q, acc[0], tuple(acc)) for q, acc in p["questions"]]
                     for p in train_passages}
        cfg = WriterConfig(candidates=args.candidates, seed=seed + 100 * r, inner_steps=args.inner_steps,
                           max_interactions=len(train_passages))
        t0 = time.perf_counter()
        report = mem.improve_writer(rounds=1, config=cfg, questions=questions, progress=args.progress)
        out = {"verdict": report.verdict, "reason": report.reason, "versions": report.versions,
               "rounds": report.rounds, "seconds": time.perf_counter() - t0}
    finally:
        mem.close()
    return out


def _spread(xs: list[float]) -> dict[str, float] | None:
    return {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs)} if xs else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    out = {}
    for arm, rs in arms.items():
        evals = [r for r in rs if "eval" in r]
        writer = [r["writer"]["rounds"][0] for r in rs if r.get("writer", {}).get("rounds")]
        out[arm] = {
            "accuracy": _spread([r["eval"]["accuracy"] for r in evals]),
            "loglik": _spread([r["eval"]["loglik"] for r in evals]),
            "canaries": _spread([r["canaries"]["accuracy"] for r in evals]),
            "mean_reward": _spread([w["mean_reward"] for w in writer if w.get("mean_reward") is not None]),
            "kept": [f"{w['kept']}/{w['total']}" for w in writer],
            "seconds_per_candidate": _spread([w["seconds_per_candidate"] for w in writer
                                              if w.get("seconds_per_candidate")]),
            "round_seconds": _spread([w["seconds"] for w in writer if w.get("seconds")]),
            "verdicts": [r.get("verdict") for r in evals],
        }
    return out


def _pct(s: dict[str, float] | None) -> str:
    if not s:
        return "-"
    if s["min"] == s["max"]:
        return f"{100 * s['mean']:.0f}%"
    return f"{100 * s['mean']:.0f}% ({100 * s['min']:.0f}-{100 * s['max']:.0f})"


def _num(s: dict[str, float] | None, fmt: str = "{:+.3f}") -> str:
    return "-" if not s else fmt.format(s["mean"]) + ("" if s["min"] == s["max"] else
                                                     " (" + fmt.format(s["min"]) + ".." + fmt.format(s["max"]) + ")")


def writer_goals(summary: dict[str, Any], runs: list[dict[str, Any]], base_canaries: dict[str, Any] | None,
                 rounds: int) -> list[Goal]:
    """Issue 11's goals, judged on the mean over seeds (none when the arms they need did not run)."""
    out: list[Goal] = []
    first, last, raw = (summary.get("round0", {}).get("accuracy"), summary.get(f"round{rounds}", {}).get("accuracy"),
                        summary.get("raw", {}).get("accuracy"))
    if first and last and rounds > 0:
        gain = last["mean"] - first["mean"]
        out.append(Goal(f"round {rounds} >= round 0 + 5 points (held-out closed-book)",
                        f"{100 * gain:+.0f} points ({100 * first['mean']:.0f}% -> {100 * last['mean']:.0f}%)",
                        gain >= 0.05 - 1e-9))
    if last and raw:
        out.append(Goal(f"round {rounds} >= raw (held-out closed-book)",
                        f"{100 * last['mean']:.0f}% vs {100 * raw['mean']:.0f}%", last["mean"] >= raw["mean"] - 1e-9))
    base = base_canaries["accuracy"] if base_canaries else None
    evals = [r["canaries"]["accuracy"] for r in runs if r.get("arm", "").startswith("round") and "canaries" in r]
    if base and evals:
        worst = min(evals) / base
        out.append(Goal("canaries >= 90% of base throughout (every round, every seed)", f"worst {100 * worst:.0f}%",
                        worst >= 0.9 - 1e-9))
    return out


def writer_rows(summary: dict[str, Any], base_canaries: dict[str, Any] | None, label: str) -> list[Row]:
    """One README line per arm: held-out accuracy against raw, the writer round's figures."""
    base = base_canaries["accuracy"] if base_canaries else None
    raw = summary.get("raw", {}).get("accuracy")
    first = summary.get("round0", {}).get("accuracy")
    rows = []
    for arm, s in summary.items():
        if not s["accuracy"]:
            continue
        parts = [f"held-out {_pct(s['accuracy'])}"]
        if s["canaries"] and base:
            parts.append(f"canaries {100 * s['canaries']['mean'] / base:.0f}% of base")
        if s["mean_reward"]:
            parts.append(f"mean reward {_num(s['mean_reward'])}, kept {','.join(s['kept'])}, "
                         f"{_num(s['seconds_per_candidate'], '{:.1f}')} s/candidate")
        name = {"raw": "raw (the exchange itself)", "round0": "round 0 (the base model writes)"}.get(
            arm, arm.replace("round", "round ", 1))
        delta = (f"{100 * (s['accuracy']['mean'] - first['mean']):+.0f} points vs round 0"
                 if first and arm.startswith("round") and arm != "round0" else "")
        rows.append(Row(f"writer (ReST-EM), {label}: {name}", "; ".join(parts),
                        f"raw {_pct(raw)}" if raw and arm != "raw" else "", delta))
    return rows


def print_table(summary: dict[str, Any], base_canaries: dict[str, Any] | None) -> None:
    base = base_canaries["accuracy"] if base_canaries else None
    print(f"\n{'arm':10} {'held-out acc':>14} {'loglik':>16} {'canaries':>10} {'vs base':>8} "
          f"{'writer reward (train)':>22} {'kept':>10} {'s/cand':>7} {'s/round':>8}  verdicts")
    for arm, s in summary.items():
        vs = f"{100 * s['canaries']['mean'] / base:.0f}%" if s["canaries"] and base else "-"
        print(f"{arm:10} {_pct(s['accuracy']):>14} {_num(s['loglik'], '{:.2f}'):>16} {_pct(s['canaries']):>10} "
              f"{vs:>8} {_num(s['mean_reward']):>22} {','.join(s['kept']) or '-':>10} "
              f"{_num(s['seconds_per_candidate'], '{:.1f}'):>7} {_num(s['round_seconds'], '{:.0f}'):>8}  "
              f"{','.join(str(v) for v in s['verdicts'])}")


def write_chart(path: Path, summary: dict[str, Any], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    arms = [a for a in summary if summary[a]["accuracy"]]
    means = [100 * summary[a]["accuracy"]["mean"] for a in arms]
    lo = [m - 100 * summary[a]["accuracy"]["min"] for a, m in zip(arms, means, strict=True)]
    hi = [100 * summary[a]["accuracy"]["max"] - m for a, m in zip(arms, means, strict=True)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(arms, means, yerr=[lo, hi], capsize=4, color=["#999"] + ["#3a7"] * (len(arms) - 1))
    ax.set_ylabel("held-out closed-book accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=4, help="training passages (first N of the train half)")
    p.add_argument("--heldout", type=int, default=4, help="held-out passages (first N of the held-out half)")
    p.add_argument("--rounds", type=int, default=2, help="ReST-EM rounds (rounds 0..N are evaluated)")
    p.add_argument("--candidates", type=int, default=3, help="self-edits sampled per passage (K)")
    p.add_argument("--inner-steps", type=int, default=4, help="steps of each throwaway update")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--no-raw", action="store_true", help="skip the raw arm")
    p.add_argument("--raw-once", action="store_true", help="the raw arm on the first seed only (it has no writer)")
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    train = bk.select_passages("train", args.train)
    heldout = bk.select_passages("heldout", args.heldout)
    bk_args = argparse.Namespace(homes=None, progress=args.progress)
    ctx = bk.Context(bk_args, heldout)
    import seal_agent

    machine, device, load_before = machine_header(threads=0, extra=f"seal_agent {seal_agent.__version__}, ")
    print(f"model {MODEL}; writer trained on {[x['id'] for x in train]}, evaluated on {[x['id'] for x in heldout]} "
          f"({len(ctx.questions)} questions); K={args.candidates}, rounds 0..{args.rounds}, seeds {args.seeds}; "
          f"load {_load()}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_json = RESULTS / f"writer-{stamp}.json"  # one file, rewritten after every step
    runs: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    label = (f"{len(train)} train / {len(heldout)} held-out passages, K={args.candidates}, "
             f"seed{'s' if len(args.seeds) > 1 else ''} {' '.join(map(str, args.seeds))}")
    chart_title = (f"ReST-EM writer, {MODEL}: {len(train)} train / {len(heldout)} held-out passages, "
                   f"K={args.candidates}, seeds {args.seeds}")

    def record(done: bool) -> list[Goal]:
        summary = summarize(runs)
        data = {"settings": {**vars(args), "model": MODEL, "train": [x["id"] for x in train],
                             "heldout": [x["id"] for x in heldout]},
                "done": done, "seconds": time.perf_counter() - t_start,
                "base_canaries": ctx.base_canaries, "runs": runs, "summary": summary}
        met = writer_goals(summary, runs, ctx.base_canaries, args.rounds)
        save("writer", title=f"bench_writer, {MODEL}, {label}, rounds 0-{args.rounds}, {args.inner_steps} inner steps"
             + ("" if done else " (incomplete)"), data=data, rows=writer_rows(summary, ctx.base_canaries, label),
             goals=met, load_before=load_before, machine=machine, device=device,
             chart=(lambda path: write_chart(path, summary, chart_title)) if done else None, out=out_json)
        return met

    with tempfile.TemporaryDirectory(prefix="seal-writer-bench-") as tmp:
        root = Path(tmp)
        for seed in args.seeds:
            if not args.no_raw and not (args.raw_once and seed != args.seeds[0]):
                t = time.perf_counter()
                res = evaluate_heldout(ctx, root / f"raw-s{seed}", "raw", seed, None, args.progress)
                runs.append({"arm": "raw", "seed": seed, **res})
                print(f"seed {seed} raw: {100 * res['eval']['accuracy']:.0f}% held-out, canaries "
                      f"{res['canaries']['correct']}/{res['canaries']['n']}, {res['verdict']}, "
                      f"{time.perf_counter() - t:.0f} s, load {_load()}", flush=True)
                record(False)
            train_home = root / f"train-s{seed}"
            writer_run: dict[str, Any] = {}
            for r in range(args.rounds + 1):
                if r > 0:
                    writer_run = improve_round(train_home, train, args, seed, r)
                    w = writer_run["rounds"][0] if writer_run["rounds"] else {}
                    print(f"seed {seed} writer round {r}: {writer_run['verdict']} {writer_run['versions']}; mean reward "
                          f"{w.get('mean_reward')}, kept {w.get('kept')}/{w.get('total')}, hurt canaries "
                          f"{w.get('hurt_canaries')} of {w.get('canary_checks')} checked, "
                          f"{w.get('seconds_per_candidate') or 0:.1f} s/candidate, "
                          f"{w.get('seconds') or 0:.0f} s/round, load {_load()}", flush=True)
                t = time.perf_counter()
                res = evaluate_heldout(ctx, root / f"eval-r{r}-s{seed}", "implications", seed,
                                       train_home if r > 0 else None, args.progress)
                runs.append({"arm": f"round{r}", "seed": seed, "writer": writer_run, **res})
                print(f"seed {seed} round {r}: {100 * res['eval']['accuracy']:.0f}% held-out "
                      f"(loglik {res['eval']['loglik']:.2f}), canaries {res['canaries']['correct']}/"
                      f"{res['canaries']['n']}, {res['verdict']} (scale {res.get('scale')}), "
                      f"{time.perf_counter() - t:.0f} s, load {_load()}", flush=True)
                record(False)
    summary = summarize(runs)
    print_table(summary, ctx.base_canaries)
    base = ctx.base_canaries
    print(f"\nbase canaries {base['correct']}/{base['n']}; total {time.perf_counter() - t_start:.0f} s; "
          f"load {_load()}")
    accs = [summary.get(f"round{r}", {}).get("accuracy") for r in range(args.rounds + 1)]
    shape = all(a is not None for a in accs) and all(accs[i]["mean"] < accs[i + 1]["mean"] for i in range(len(accs) - 1))
    print(f"SEAL's shape (round 0 < 1 < ... < {args.rounds} on held-out): {'yes' if shape else 'no'}")
    print_goals(writer_goals(summary, runs, ctx.base_canaries, args.rounds))
    record(True)


if __name__ == "__main__":
    main()
