"""Benchmark: memories that last -- K sequential consolidations in one home (issue 20).

After SEAL's continual-learning experiment (Zweiger et al., 2025: Qwen2.5-7B keeps 49 %
of the first passage's accuracy after 8 sequential edits), on the default served model:
one memory home and one namespace, ``SealMemory(home, model="smollm2-135m")``, and K
steps. Each step tells the agent 1-2 new invented passages the way a person would
(`bench/continual_data.py`; a user turn and an acknowledgement, logged with `mem.log`
like bench_knowledge), then runs ``mem.consolidate()`` (self-edits written by the served
model, a LoRA update, the gate, commit). At the correction step (5; the last step when
there are fewer) a later conversation also renames the first passage's boat (A -> B).

After every step every question taught so far is asked closed-book through
``mem.chat_model()`` (greedy, 24 new tokens; right when the normalized answer contains
an accepted answer, as in bench_knowledge; the boat's name question accepts B only after
the correction). Bleed and the old name A are looked for as whole words.

Per arm and seed, every step: the retention matrix row (accuracy on the passages taught
at each earlier step; heatmap PNG), new-fact accuracy (the passages of this step), bleed
(answers to other questions, and canaries, that contain a newer passage's invented names
or B), the correction outcome (B answered; A in no answer), canaries vs the base model,
the gate's verdict and scale, the replay figures, seconds per step.

Arms: ``replay`` (the defaults: the replay buffer), ``replay-r<ratio>`` (another
``train.replay_ratio``), ``noreplay`` (ratio 0: each update continues the last adapter
on the new self-edits alone), ``retrain`` (``consolidation.accumulate = "retrain"``:
from the base on the cumulative set every step).

The JSON record is rewritten after every step (a run that dies keeps what it measured).

    python bench/bench_continual.py --quick                   # 3 steps, seed 0, arm replay
    python bench/bench_continual.py --steps 8 --seeds 0 1 2   # the issue's run (hours on 2 cores)
    python bench/bench_continual.py --arms replay,retrain,noreplay --steps 4 --seeds 0
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
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

from continual_data import CORRECTION, PASSAGES, contains_any, conversation, is_correct  # noqa: E402

MODEL = "smollm2-135m"
NAMESPACE = ("users", "bench")
MAX_NEW_TOKENS = 24
CORRECTION_STEP = 5

GOALS = {
    "retention": "first step's facts after the last step >= 90% of their accuracy after step 1",
    "new_facts": "new facts per step >= 60% closed-book on average, no seed below 50%",
    "correction": "correction: B answered, A never after it, on every seed",
    "bleed": "bleed <= 1 question per step",
    "canaries": "canaries >= 90% of base after every step",
    "second_case": "the correction's bleed case is rejected or scaled back by the gate, or does not happen",
}


def arm_overrides(arm: str) -> dict[str, Any]:
    """`mem.consolidate` overrides of an arm (see the module's docstring)."""
    if arm == "replay":
        return {}
    if arm == "noreplay":
        return {"train": {"replay_ratio": 0.0}}
    if arm == "retrain":
        return {"consolidation": {"accumulate": "retrain"}}
    if arm.startswith("replay-r"):
        return {"train": {"replay_ratio": float(arm[len("replay-r"):])}}
    raise ValueError(f"unknown arm {arm!r}: replay, replay-r<ratio>, noreplay or retrain")


def schedule(steps: int, per_step: int, correction_step: int) -> list[dict[str, Any]]:
    """What each step tells: ``{"step", "passages", "correction"}`` (steps from 1)."""
    if steps * per_step > len(PASSAGES):
        raise SystemExit(f"{steps} steps x {per_step} passages need {steps * per_step}; "
                         f"continual_data has {len(PASSAGES)}")
    return [{"step": s, "passages": PASSAGES[(s - 1) * per_step: s * per_step],
             "correction": s == correction_step} for s in range(1, steps + 1)]


def _canaries(model: str) -> list[Any]:
    from seal_agent.config import GateConfig
    from seal_agent.gate.suite import load_canaries, shipped_canary_file

    path = shipped_canary_file(model)
    if path is None:
        return []
    items = load_canaries(path, default_tolerance=GateConfig().canary_tolerance, default_check="greedy")
    return [it for it in items if not it.raw]  # judged greedily, like bench_knowledge


def _greedy(chat: Any, prompts: list[list[dict[str, str]]]) -> list[str]:
    from langchain_core.messages import convert_to_messages

    if not prompts:
        return []
    return [row[0] for row in chat.generate_batch([convert_to_messages(p) for p in prompts],
                                                  max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)]


# ------------------------------------------------------------------- one step's figures


def questions_so_far(plan: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """Every question taught up to `step`, with what it accepts now (the correction applied)."""
    corrected = any(p["correction"] for p in plan[:step])
    out = []
    for s in plan[:step]:
        for p in s["passages"]:
            for q, accepted in p["questions"]:
                renamed = corrected and p["id"] == CORRECTION["passage"] and q == CORRECTION["question"]
                out.append({"passage": p["id"], "taught": s["step"], "question": q,
                            "accepted": list(CORRECTION["new"] if renamed else accepted), "corrected": renamed})
    return out


def canary_score(items: list[Any], answers: list[str]) -> dict[str, Any]:
    """Canaries right (greedy answer contains ``expected`` or an alias), and the failed ones."""
    from seal_agent.gate.canary import answer_contains

    ok = [answer_contains(a, it.expected, it.aliases) for it, a in zip(items, answers, strict=True)]
    return {"correct": sum(ok), "n": len(ok), "accuracy": sum(ok) / len(ok),
            "failed": [{"id": it.id, "answer": a} for it, a, r in zip(items, answers, ok, strict=True) if not r]}


def _own_markers(passage_id: str) -> list[str]:
    own = next((p["markers"] for p in PASSAGES if p["id"] == passage_id), [])
    return own + (CORRECTION["new"] + CORRECTION["old"] if passage_id == CORRECTION["passage"] else [])


def judge_step(plan: list[dict[str, Any]], step: int, qs: list[dict[str, Any]], answers: list[str],
               canary_items: list[Any], canary_answers: list[str]) -> dict[str, Any]:
    """The figures of one step from the answers (pure: the unit the smoke test checks)."""
    right = [is_correct(a, q["accepted"]) for q, a in zip(qs, answers, strict=True)]
    by_step: dict[int, list[bool]] = {}
    for q, r in zip(qs, right, strict=True):
        by_step.setdefault(q["taught"], []).append(r)
    retention = {s: sum(v) / len(v) for s, v in sorted(by_step.items())}
    # Bleed: an answer to a question (or a canary) that names what a *newer* passage taught
    # (or the correction's B, newer than everything taught before it).
    taught_at = {p["id"]: s["step"] for s in plan[:step] for p in s["passages"]}
    markers = [(taught_at[p["id"]], m) for s in plan[:step] for p in s["passages"] for m in p["markers"]]
    c_step = next((s["step"] for s in plan[:step] if s["correction"]), None)
    if c_step is not None:
        markers += [(c_step, m) for m in CORRECTION["new"]]
    bleed = []
    for q, a in zip(qs, answers, strict=True):
        newer = [m for t, m in markers if t > q["taught"] or (t == q["taught"] and m in CORRECTION["new"]
                                                             and not q["corrected"])]
        newer = [m for m in newer if not contains_any(m, q["accepted"])]
        if newer and contains_any(a, newer):
            bleed.append({"question": q["question"], "answer": a})
    every = [m for _, m in markers]
    # Confusions, either direction (an older passage's name in a newer answer too): not a
    # goal of the issue, kept to show interference the bleed count does not.
    confusions = [{"question": q["question"], "answer": a} for q, a in zip(qs, answers, strict=True)
                  if contains_any(a, [m for m in every if not contains_any(m, q["accepted"])
                                      and m not in _own_markers(q["passage"])])]
    canary_bleed = [{"canary": it.id, "answer": a} for it, a in zip(canary_items, canary_answers, strict=True)
                    if contains_any(a, every)]
    out: dict[str, Any] = {
        "step": step, "accuracy": sum(right) / len(qs), "correct": sum(right), "n": len(qs),
        "retention": retention, "new_accuracy": retention.get(step),
        "bleed": len(bleed) + len(canary_bleed), "bleed_items": bleed + canary_bleed,
        "confusions": len(confusions), "confusion_items": confusions,
        "answers": [{"passage": q["passage"], "taught": q["taught"], "question": q["question"], "answer": a,
                     "correct": r} for q, a, r in zip(qs, answers, right, strict=True)],
    }
    if canary_items:
        out["canaries"] = canary_score(canary_items, canary_answers)
    if c_step is not None:
        named = [a for q, a in zip(qs, answers, strict=True) if q["corrected"]]
        out["correction"] = {
            "b_answered": bool(named) and all(is_correct(a, CORRECTION["new"]) for a in named),
            "a_answers": [a for a in answers + canary_answers if contains_any(a, CORRECTION["old"])],
        }
    return out


# --------------------------------------------------------------------- one sequence


def _superseded(mem: Any) -> bool:
    """Whether the facts store superseded the boat's old name (the correction reached it)."""
    return any(f.status == "superseded" and contains_any(f.text, CORRECTION["old"])
               for f in mem._facts.list(include_superseded=True))


def _correction_trace(mem: Any) -> dict[str, Any]:
    """Where the old name A still is after the correction: the facts that say A or B
    (status, what superseded them, sources) and the replay buffer's items that say A."""
    from seal_agent.consolidation import load_replay

    facts = mem._facts.list(include_superseded=True)
    by_id = {f.id: f for f in facts}
    names = CORRECTION["old"] + CORRECTION["new"]
    return {
        "facts": [{"text": f.text, "status": f.status, "sources": list(f.sources),
                   "superseded_by": by_id[f.superseded_by].text if f.superseded_by in by_id else f.superseded_by}
                  for f in facts if contains_any(f.text, names)],
        "replay_items_saying_a": [e for e in load_replay(mem) if contains_any(json.dumps(e), CORRECTION["old"])],
    }


def run_sequence(args: argparse.Namespace, arm: str, seed: int, plan: list[dict[str, Any]], shared: dict[str, Any],
                 out: dict[str, Any], on_step: Any = None) -> dict[str, Any]:
    """Teach `plan` step by step in one home, judging after every step: fills `out`
    (``steps`` grows a row per step; `on_step(out, row)` is called after each)."""
    from fakes import HashEmbeddings

    from seal_agent import SealMemory

    overrides = json.loads(json.dumps(arm_overrides(arm)))
    for section, values in (args.extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    overrides.setdefault("selfedit", {})["seed"] = seed
    overrides.setdefault("train", {})["seed"] = seed
    out.update(arm=arm, seed=seed, overrides=overrides, steps=[])
    tmp = None
    if args.homes:
        home = Path(args.homes) / f"{arm}-s{seed}-{time.strftime('%H%M%S')}"
        home.mkdir(parents=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix=f"seal-continual-{arm}-s{seed}-")
        home = Path(tmp.name)
    try:
        mem = SealMemory(home, model=args.model, embeddings=HashEmbeddings())  # no recall: closed-book only
        try:
            chat = mem.chat_model()
            canaries = shared["canary_items"]
            if shared.get("base_canaries") is None and canaries:
                assert chat.adapter is None, "base canaries must be measured on the base model"
                shared["base_canaries"] = canary_score(canaries, _greedy(chat, [[dict(m) for m in it.prompt]
                                                                                for it in canaries]))
            for s in plan:
                t0 = time.perf_counter()
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                for p in s["passages"]:
                    mem.log(conversation(p["text"]), namespace=NAMESPACE, thread_id=p["id"])
                if s["correction"]:
                    mem.log(conversation(CORRECTION["text"]), namespace=NAMESPACE, thread_id="correction")
                tc = time.perf_counter()
                report = mem.consolidate(progress=args.progress, **overrides)
                consolidate_s = time.perf_counter() - tc
                te = time.perf_counter()
                qs = questions_so_far(plan, s["step"])
                answers = _greedy(chat, [[{"role": "user", "content": q["question"]}] for q in qs])
                c_answers = _greedy(chat, [[dict(m) for m in it.prompt] for it in canaries])
                row = judge_step(plan, s["step"], qs, answers, canaries, c_answers)
                gate = report.gate or {}
                base = shared.get("base_canaries")
                row.update(
                    verdict=report.verdict, reason=report.reason, version=report.version,
                    gate_verdict=gate.get("verdict"), scale=gate.get("scale"), gate_reasons=gate.get("reasons", []),
                    served_adapter=chat.adapter, counts=report.counts, train=report.train,
                    timings={**report.timings, "consolidate": consolidate_s, "eval": time.perf_counter() - te},
                    seconds=time.perf_counter() - t0, load_average_start=load,
                    canary_vs_base=(row["canaries"]["accuracy"] / base["accuracy"]
                                    if base and base["accuracy"] > 0 and "canaries" in row else None),
                )
                if s["correction"]:
                    row["fact_superseded"] = _superseded(mem)
                if any(x["correction"] for x in plan[:s["step"]]):
                    row["correction_trace"] = _correction_trace(mem)
                out["steps"].append(row)
                if on_step is not None:
                    on_step(out, row)
                gc.collect()
        finally:
            mem.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


# ------------------------------------------------------------------------- summary


def retention_matrix(run: dict[str, Any]) -> list[list[float | None]]:
    """rows: after step i; columns: the passages taught at step j (None above the diagonal)."""
    n = len(run["steps"])
    return [[row["retention"].get(j, row["retention"].get(str(j))) if j <= i else None
             for j in range(1, n + 1)] for i, row in enumerate((r for r in run["steps"]), start=1)]


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(runs: list[dict[str, Any]], correction_step: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs if r.get("arm")):
        rs = [r for r in runs if r.get("arm") == arm and r["steps"]]
        if not rs:
            continue
        k = min(len(r["steps"]) for r in rs)
        mats = [retention_matrix(r) for r in rs]
        mean_mat = [[_mean([m[i][j] for m in mats]) if j <= i else None for j in range(k)] for i in range(k)]
        new_by_seed = {r["seed"]: _mean([st["new_accuracy"] for st in r["steps"]]) for r in rs}
        first = [(m[0][0], m[k - 1][0]) for m in mats]
        kept = [after / start for start, after in first if start]
        corr = [r["steps"][-1].get("correction") for r in rs if len(r["steps"]) >= correction_step]
        a_after = [any(st.get("correction", {}).get("a_answers") for st in r["steps"][correction_step - 1:])
                   for r in rs if len(r["steps"]) >= correction_step]
        cvb = [st["canary_vs_base"] for r in rs for st in r["steps"] if st.get("canary_vs_base") is not None]
        second = []
        for r in rs:
            if len(r["steps"]) < correction_step:
                continue
            st = r["steps"][correction_step - 1]
            prev = r["steps"][correction_step - 2] if correction_step >= 2 else None
            saltpetal = sum(1 for b in st["bleed_items"] if contains_any(b["answer"], CORRECTION["new"]))
            others = [a["correct"] for a in st["answers"] if a["taught"] < correction_step
                      and a["passage"] != CORRECTION["passage"]]
            before = [a["correct"] for a in (prev or {}).get("answers", []) if a["passage"] != CORRECTION["passage"]]
            fell = bool(before) and sum(before) > 0 and sum(others) < 0.5 * sum(before)
            happened = saltpetal > 1 or fell
            guarded = st.get("verdict") == "rejected" or (st.get("scale") is not None and st["scale"] < 1.0)
            second.append({"seed": r["seed"], "b_bleed": saltpetal, "earlier_fell_by_half": fell,
                           "happened": happened, "guarded": guarded, "ok": (not happened) or guarded})
        out[arm] = {
            "runs": len(rs), "steps": k, "retention_mean": mean_mat,
            "new_accuracy_by_seed": new_by_seed, "new_accuracy_mean": _mean(list(new_by_seed.values())),
            "first_step_kept": _mean(kept) if kept else None, "first_step": first,
            "bleed_max": max(st["bleed"] for r in rs for st in r["steps"]),
            "bleed_mean": _mean([st["bleed"] for r in rs for st in r["steps"]]),
            "correction_b": [c["b_answered"] for c in corr if c], "correction_a_seen": a_after,
            "canary_vs_base_min": min(cvb) if cvb else None, "canary_vs_base_mean": _mean(cvb),
            "verdicts": [[(st.get("gate_verdict") or st["verdict"], st.get("scale")) for st in r["steps"]] for r in rs],
            "seconds_per_step": _mean([st["seconds"] for r in rs for st in r["steps"]]),
            "consolidate_seconds_per_step": _mean([st["timings"]["consolidate"] for r in rs for st in r["steps"]]),
            "second_case": second,
        }
    return out


def goals(s: dict[str, Any] | None, correction_step: int) -> list[Goal]:
    """The issue's goals, judged on one arm's summary (what it could judge)."""
    if not s:
        return []
    out = []
    if s["first_step_kept"] is not None and s["steps"] > 1:
        out.append(Goal(GOALS["retention"], f"{100 * s['first_step_kept']:.0f}% kept after step {s['steps']}",
                        s["first_step_kept"] >= 0.9 - 1e-9))
    elif s["steps"] > 1:  # nothing right after step 1: nothing was kept, the goal is not met
        out.append(Goal(GOALS["retention"], "0% right after step 1: nothing to keep", False))
    by_seed = [v for v in s["new_accuracy_by_seed"].values() if v is not None]
    if by_seed:
        out.append(Goal(GOALS["new_facts"], f"mean {100 * statistics.fmean(by_seed):.0f}%, min seed "
                        f"{100 * min(by_seed):.0f}%", statistics.fmean(by_seed) >= 0.6 - 1e-9 and min(by_seed) >= 0.5))
    if s["correction_b"]:
        ok = all(s["correction_b"]) and not any(s["correction_a_seen"])
        out.append(Goal(GOALS["correction"], f"B answered on {sum(s['correction_b'])}/{len(s['correction_b'])} "
                        f"seeds, A seen on {sum(s['correction_a_seen'])}", ok))
    out.append(Goal(GOALS["bleed"], f"max {s['bleed_max']} per step", s["bleed_max"] <= 1))
    if s["canary_vs_base_min"] is not None:
        out.append(Goal(GOALS["canaries"], f"min {100 * s['canary_vs_base_min']:.1f}% of base",
                        s["canary_vs_base_min"] >= 0.9 - 1e-9))
    if s["second_case"]:
        out.append(Goal(GOALS["second_case"], "; ".join(
            f"seed {c['seed']}: {'happened' if c['happened'] else 'did not happen'}"
            + (", guarded" if c["guarded"] else "") for c in s["second_case"]), all(c["ok"] for c in s["second_case"])))
    return out


def result_rows(summary: dict[str, dict[str, Any]], label: str) -> list[Row]:
    rows = []
    for arm, s in summary.items():
        kept = f"{100 * s['first_step_kept']:.0f}%" if s["first_step_kept"] is not None else "-"
        new = f"{100 * s['new_accuracy_mean']:.0f}%" if s["new_accuracy_mean"] is not None else "-"
        rows.append(Row(f"continual ({arm}), {label}: first step's facts kept after step {s['steps']} / "
                        f"new facts per step", f"{kept} / {new}", "SEAL (Qwen2.5-7B, 8 edits) 49% kept"))
    return rows


def print_run(run: dict[str, Any]) -> None:
    print(f"\n{run['arm']} seed {run['seed']}: retention (rows: after step i; columns: taught at step j)")
    for i, row in enumerate(retention_matrix(run), start=1):
        cells = " ".join(f"{100 * x:4.0f}" if x is not None else "   ." for x in row)
        st = run["steps"][i - 1]
        cv = f"{100 * st['canary_vs_base']:.0f}%" if st.get("canary_vs_base") is not None else "-"
        corr = st.get("correction")
        c = (f" B {'yes' if corr['b_answered'] else 'no'}, A x{len(corr['a_answers'])}" if corr else "")
        print(f"  step {i}: {cells} | new {100 * (st['new_accuracy'] or 0):.0f}% bleed {st['bleed']} "
              f"canaries {cv} {st.get('gate_verdict') or st['verdict']} scale {st.get('scale')}{c} "
              f"{st['seconds']:.0f} s")


def write_chart(path: Path, summary: dict[str, dict[str, Any]], title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    fig, axes = plt.subplots(1, len(arms), figsize=(4.2 * len(arms) + 1, 4), squeeze=False)
    for ax, arm in zip(axes[0], arms, strict=True):
        mat = summary[arm]["retention_mean"]
        k = len(mat)
        grid = [[100 * x if x is not None else float("nan") for x in row] for row in mat]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
        for i in range(k):
            for j in range(i + 1):
                if mat[i][j] is not None:
                    ax.text(j, i, f"{100 * mat[i][j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if mat[i][j] < 0.6 else "black")
        ax.set_xticks(range(k), [str(j + 1) for j in range(k)])
        ax.set_yticks(range(k), [str(i + 1) for i in range(k)])
        ax.set_xlabel("passages taught at step")
        ax.set_ylabel("after step")
        ax.set_title(f"{arm} ({summary[arm]['runs']} seed{'s' if summary[arm]['runs'] > 1 else ''})", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="% right (closed-book)")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=None, help="sequential consolidations (default 8; --quick: 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    p.add_argument("--arms", default="replay", help="comma-separated: replay, replay-r<ratio>, noreplay, retrain")
    p.add_argument("--per-step", type=int, default=2, help="passages told per step (1-2)")
    p.add_argument("--correction-step", type=int, default=CORRECTION_STEP,
                   help="step of the boat's rename (default 5; the last step when there are fewer)")
    p.add_argument("--quick", action="store_true", help="3 steps, seed 0: a check that everything runs")
    p.add_argument("--model", default=MODEL, help=argparse.SUPPRESS)  # tiny-random in the smoke test
    p.add_argument("--extra", type=json.loads, default=None,
                   help='JSON config overrides added to every arm, e.g. \'{"train": {"epochs": 4}}\'')
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action="store_true", help="show consolidation's progress bars")
    p.add_argument("--homes", type=Path, default=None, help="keep the memory homes under this folder")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/continual-<time>.json)")
    p.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    p.add_argument("--omp-wait-policy", default="PASSIVE",
                   help="OMP_WAIT_POLICY for torch's OpenMP threads (default PASSIVE; '' keeps the environment's)")
    args = p.parse_args(argv)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    steps = args.steps if args.steps is not None else (3 if args.quick else 8)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    arms = args.arms.split(",")
    for a in arms:
        try:
            arm_overrides(a)
        except ValueError as exc:
            p.error(str(exc))
    if not 1 <= args.per_step <= 2:
        p.error("--per-step must be 1 or 2")
    c_step = min(args.correction_step, steps)
    plan = schedule(steps, args.per_step, c_step)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch
    import transformers

    import seal_agent

    transformers.utils.logging.disable_progress_bar()
    machine, device, load_before = machine_header(threads=args.threads, extra=f"seal_agent {seal_agent.__version__}, ")
    shared: dict[str, Any] = {"canary_items": _canaries(args.model), "base_canaries": None}
    print(f"model {args.model}; {steps} steps x {args.per_step} passages, correction at step {c_step}; "
          f"{len(shared['canary_items'])} canaries; arms {','.join(arms)}; seeds {' '.join(map(str, seeds))}")
    out = args.out or RESULTS / f"continual-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    label = f"{steps} steps x {args.per_step} passages, seed{'s' if len(seeds) > 1 else ''} {' '.join(map(str, seeds))}"

    def record(done: bool) -> dict[str, Any]:
        summary = summarize(runs, c_step)
        judged = goals(summary.get(arms[0]), c_step)
        rec = {"complete": done, "torch": torch.__version__, "transformers": transformers.__version__,
               "seal_agent": seal_agent.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
               "settings": {"model": args.model, "steps": steps, "per_step": args.per_step, "correction_step": c_step,
                            "arms": arms, "seeds": seeds, "max_new_tokens": MAX_NEW_TOKENS, "threads": args.threads,
                            "extra": args.extra,
                            "plan": [[x["id"] for x in s["passages"]] + (["correction"] if s["correction"] else [])
                                     for s in plan]},
               "base_canaries": shared["base_canaries"], "summary": summary, "runs": runs}
        chart_title = f"{args.model}, {label} (load {load_before[0]:.1f})"
        save("continual", title=f"bench_continual, {args.model}, {label}, arms {','.join(arms)}"
             + ("" if done else " (incomplete)"), data=rec, rows=result_rows(summary, label), goals=judged,
             load_before=load_before, machine=machine, device=device,
             chart=(lambda path: write_chart(path, summary, chart_title)) if done else None, out=out)
        return rec

    def on_step(run: dict[str, Any], row: dict[str, Any]) -> None:
        cv = f"{100 * row['canary_vs_base']:.0f}% of base" if row.get("canary_vs_base") is not None else "-"
        print(f"[{time.strftime('%H:%M:%S')}] {run['arm']} seed {run['seed']} step {row['step']}: "
              f"{row['correct']}/{row['n']} right, new {100 * (row['new_accuracy'] or 0):.0f}%, bleed {row['bleed']}, "
              f"canaries {cv}, {row.get('gate_verdict') or row['verdict']} (scale {row.get('scale')}), "
              f"{row['seconds']:.0f} s (load {row['load_average_start']:.1f})", flush=True)
        record(done=False)

    for seed in seeds:  # seeds outermost: background load drifts, every arm sees a bit of each period
        for arm in arms:
            run: dict[str, Any] = {}
            runs.append(run)
            run_sequence(args, arm, seed, plan, shared, run, on_step=on_step)
    rec = record(done=True)
    for r in runs:
        print_run(r)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    judged = goals(rec["summary"].get(arms[0]), c_step)
    print(f"\ngoals judged on arm {arms[0]}:")
    print_goals(judged)
    print(f"\nload average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; after: "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if args.check and any(not g.passed for g in judged):
        sys.exit(1)
    return rec


if __name__ == "__main__":
    main()
