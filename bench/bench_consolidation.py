"""Benchmark: consolidation throughput and memory against a naive pipeline (issue 13, goals 4 and 5).

100 logged interactions are consolidated end to end (real journal, real Chroma, real
LangGraph graph, real training, real gate, real registry commit) on the real default model
(SmolLM2-135M) by two pipelines, each in a fresh process of its own (clean peak RSS):

* **ours**: `SealMemory.consolidate` as shipped: self-edits written by the served model
  in padded batches (`AdaptiveChatModel.generate_batch`), `train_adapter` and the gate on a
  weight-sharing twin of the served base (`seal_agent.model.shared`: no second load);
* **naive**: the same graph and the same nodes (collect, gate, commit, mark are the same
  code), with the two steps the issue names done the naive way: one ``model.generate`` per
  prompt (the same prompts, prefills, sampling and ``max_new_tokens``, the same parsing),
  and ``transformers.Trainer`` + PEFT (pad to longest, same hyperparameters) on a freshly
  loaded second copy of the base -- which is also what training and the gate ran on before
  the shared base. To train and gate on identical data, the naive run trains on the
  self-edits and probes *our* run produced (its own generation is timed and parsed, then
  replaced); the naive train stage's time includes its fresh base load, reported beside.

A third process, **bare**, is the memory baseline of goal 5: a bare transformers + PEFT
training (`Trainer`) of the same examples, nothing else loaded. Goal 5 compares our
consolidation process's peak RSS (served model, memory, Chroma, generation, training,
gate, all in one process) with it.

Sizing (2 CPU cores): self-edits are written with ``--samples 1`` reply per prompt and
``--max-new-tokens 48`` (the library defaults are 4 and 160: 13x the tokens, hours for the
naive side on 2 cores); training runs ``--epochs 1`` without rehearsal; the gate evaluates
one candidate (``scale_back=[]``) so both sides gate the same amount of work. Both sides
use the same settings; the ratio is what is judged.

    python bench/bench_consolidation.py                      # smollm2-135m, 100 interactions, 1 run
    python bench/bench_consolidation.py --runs 3             # three runs (the issue's figures)
    python bench/bench_consolidation.py --tiny               # tiny-random: a quick check (~2 min)
    python bench/bench_consolidation.py --interactions 20 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import pad_to_longest_collator  # noqa: E402  (the same naive collator as bench_train)

SUBJECTS = ["Zorbia", "the vorp", "Anna Pell", "the Blue Moon", "Quxville", "the zeb", "Lake Mirr", "Dr. Olen"]
FACTS = ["was founded in {y}", "has {n} legs", "is painted bright green", "lies north of Quxville",
         "was discovered by Dr. Olen", "hosts a festival every {n} years", "is {n} meters tall"]
# The last stage is "commit", or "reject" (staging the candidate) when the gate said no.
STAGES = ["collect", "self_edit", "train", "gate", "commit", "reject"]
SIDE_TIMEOUT_S = 3 * 3600


def log_interactions(mem: Any, n: int, seed: int) -> list[str]:
    """`n` short factual exchanges over 5 users (deterministic for a seed); their ids in order."""
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        subject = rng.choice(SUBJECTS)
        fact = rng.choice(FACTS).format(y=rng.randint(1200, 2000), n=rng.randint(2, 12))
        ids.append(mem.log([{"role": "user", "content": f"Tell me something about {subject} (#{i})."},
                            {"role": "assistant", "content": f"{subject} {fact}."}],
                           namespace=("users", f"u{i % 5}"), thread_id=f"t{i}"))
    return ids


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides both pipelines run with."""
    strategies = list(args.strategies) + (["raw"] if args.tiny and "raw" not in args.strategies else [])
    gate: dict[str, Any] = {"scale_back": []}
    if args.tiny:  # random weights: no canaries, and what it writes is mostly filtered out
        gate["allow_unverified"] = True
    return {
        "selfedit": {"strategies": strategies, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                     "temperature": 0.5, "seed": args.seed},
        "train": {"epochs": args.epochs, "batch_size": 8, "lora_rank": 8, "lora_alpha": 16, "rehearsal_size": 0,
                  "learning_rate": 1e-3, "warmup_ratio": 0.1, "seed": args.seed},
        "consolidation": {"teacher": "served"},
        "gate": gate,
    }


def _peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _rss_now() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _count_loads() -> list[float]:
    """Patch `load_model` to record the seconds of every real load (the registry calls it)."""
    from seal_agent.model import loader

    loads: list[float] = []
    real = loader.load_model

    def counting(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = real(*a, **kw)
        loads.append(time.perf_counter() - t0)
        return out

    loader.load_model = counting  # type: ignore[assignment]
    return loads


def _dump_state(path: Path, state: dict[str, Any], order: dict[str, int]) -> None:
    """Our run's self-edits and probes, by interaction position (ids differ per process)."""
    edits = [{**e, "index": order[e["interaction_id"]]} for e in state["edits"]]
    probes = [{**p, "index": order[p["interaction_id"]]} for p in state.get("probes", [])]
    path.write_text(json.dumps({"edits": edits, "probes": probes}))


# ------------------------------------------------------------------------ sides


def side_ours(args: argparse.Namespace) -> dict[str, Any]:
    from fakes import HashEmbeddings

    from seal_agent import SealMemory
    from seal_agent import consolidation as c
    from seal_agent.model.chat import AdaptiveChatModel
    from seal_agent.model.shared import shared_bases

    loads = _count_loads()
    gen = {"rows": 0, "tokens": 0}
    real_samples = AdaptiveChatModel._generate_samples

    def counted(self: Any, *a: Any, **kw: Any) -> Any:
        out = real_samples(self, *a, **kw)
        gen["rows"] += sum(len(r) for r in out)
        gen["tokens"] += sum(s.output_tokens for r in out for s in r)
        return out

    AdaptiveChatModel._generate_samples = counted  # type: ignore[method-assign]
    home = Path(tempfile.mkdtemp(prefix="seal-bench-ours-"))
    with SealMemory(home, embeddings=HashEmbeddings(), model=args.model) as mem:
        ids = log_interactions(mem, args.interactions, args.seed)
        order = {i: k for k, i in enumerate(ids)}
        t0 = time.perf_counter()
        mem.chat_model()  # the served model, as in a serving process
        load_s = time.perf_counter() - t0
        rss_served = _rss_now()
        real_train = c._Run.train

        def train(run: Any, state: dict[str, Any]) -> dict[str, Any]:
            _dump_state(Path(args.state), state, order)  # what the naive and bare sides train on
            return real_train(run, state)

        c._Run.train = train  # type: ignore[method-assign]
        t0 = time.perf_counter()
        report = mem.consolidate(progress=False, **settings(args))
        total = time.perf_counter() - t0
        bases = shared_bases()
    return {"side": "ours", "total": total, "timings": report.timings, "verdict": report.verdict,
            "reason": report.reason, "counts": report.counts, "train": report.train or {},
            "gate_passed": (report.gate or {}).get("passed"), "gen_rows": gen["rows"], "gen_tokens": gen["tokens"],
            "serving_load_s": load_s, "model_loads": len(loads), "load_seconds": loads,
            "shared_bases": [{**b, "key": list(b["key"])} for b in bases],
            "rss_served": rss_served, "peak_rss": _peak_rss(), "load_average": list(os.getloadavg())}


def _trainer_args(tmp: str, tc: Any) -> Any:
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=tmp, per_device_train_batch_size=tc.batch_size, num_train_epochs=tc.epochs,
        learning_rate=tc.learning_rate, lr_scheduler_type="cosine", warmup_steps=tc.warmup_ratio,
        weight_decay=tc.weight_decay, max_grad_norm=tc.max_grad_norm, logging_steps=10, save_strategy="no",
        report_to=[], seed=tc.seed, dataloader_num_workers=0, remove_unused_columns=False, use_cpu=not cuda,
        bf16=cuda, disable_tqdm=True)


def _hf_train(model: Any, tok: Any, examples: list[dict[str, Any]], tc: Any) -> tuple[Any, dict[str, Any]]:
    """transformers.Trainer + PEFT LoRA on `examples` (pad to longest); the PeftModel and metrics."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer

    from seal_agent.training.data import encode_examples

    items = encode_examples(tok, examples, max_seq_len=tc.max_seq_len)
    dataset = [{"input_ids": list(x.input_ids), "labels": list(x.labels)} for x in items]
    peft = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=tc.lora_rank, lora_alpha=tc.lora_alpha,
                                            lora_dropout=tc.lora_dropout, target_modules=tc.target_modules,
                                            bias="none"))
    counts = {"useful": 0, "padded": 0}
    pad_to_longest = pad_to_longest_collator(tok.pad_token_id, counts)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=peft, args=_trainer_args(tmp, tc), train_dataset=dataset, data_collator=pad_to_longest)
        t0 = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - t0
    return peft, {"steps": out.global_step, "final_loss": out.training_loss, "seconds": seconds,
                  "tokens_seen": counts["useful"], "padded_tokens": counts["padded"],
                  "tokens_per_second": counts["useful"] / max(seconds, 1e-9), "examples": len(items)}


def side_naive(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from fakes import HashEmbeddings
    from tqdm.auto import tqdm

    from seal_agent import SealMemory
    from seal_agent import consolidation as c
    from seal_agent.model import loader
    from seal_agent.selfedit.base import SelfEditBatch, _jobs, _merge_jobs, _Reply

    loads = _count_loads()
    gen = {"rows": 0, "tokens": 0}
    extra = {"fresh_load_s": 0.0}
    ours = json.loads(Path(args.state).read_text()) if args.state and Path(args.state).is_file() else None

    class NaiveRun(c._Run):
        """The same graph; self-edits one `generate` per prompt, Trainer on a fresh base copy."""

        def base_model(self) -> tuple[Any, Any]:  # what consolidation did before the shared base
            if self._base is None:
                mc = self.config.model
                t0 = time.perf_counter()
                self._base = loader.load_model(mc.name_or_path, device=mc.device, dtype=mc.dtype, seed=mc.seed)
                extra["fresh_load_s"] += time.perf_counter() - t0
            return self._base

        def self_edit(self, state: dict[str, Any]) -> dict[str, Any]:
            t0 = time.perf_counter()
            cfg = self.config.selfedit
            interactions = [self.memory.get(i) for i in state["interaction_ids"]]
            chat = self.memory.chat_model()
            model, tok = chat.served_model, chat.tokenizer
            result = SelfEditBatch()
            jobs = _jobs(interactions, chat, cfg, result)
            asked = [j for j in jobs if j.prompt is not None]
            replies: list[Any] = []
            torch.manual_seed(cfg.seed)
            for job in tqdm(asked, desc="naive generate", unit="prompt", leave=False, disable=not args.progress):
                prefill = job.strategy.prefill or ""
                # The exact text generate_batch encodes: chat template, generation prompt, prefill.
                text = chat._render(chat._convert_input(job.prompt).to_messages(), None) + prefill
                enc = tok(text, return_tensors="pt", add_special_tokens=False)
                with torch.inference_mode():
                    out = model.generate(**enc, do_sample=cfg.temperature > 0, temperature=cfg.temperature,
                                         top_p=1.0, max_new_tokens=cfg.max_new_tokens,
                                         num_return_sequences=cfg.samples, eos_token_id=chat._eos_ids,
                                         pad_token_id=tok.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                gen["rows"] += new.shape[0]
                for row in new.tolist():  # as generate_batch counts: up to and with the first EOS
                    ends = [k for k, t in enumerate(row) if t in chat._eos_ids]
                    gen["tokens"] += ends[0] + 1 if ends else len(row)
                replies.append([_Reply(prefill + tok.decode(row, skip_special_tokens=True), False) for row in new])
            batch = _merge_jobs(jobs, asked, replies, cfg, result, None)
            if self.config.memory.facts:
                from seal_agent.memory.facts import record_facts

                record_facts(self.memory, batch.edits, interactions)
            edits = [{"example": e.example, "hash": e.hash, "strategy": e.strategy, "interaction_id": e.interaction_id}
                     for e in batch.edits]
            probes = [{"question": p.question, "answer": p.answer, "interaction_id": p.interaction_id,
                       "namespace": list(p.namespace), "hash": p.hash} for p in batch.probes]
            own = {"self_edits": len(edits), "probes": len(probes)}
            if ours is not None:  # train and gate on the data our run trained and gated on
                ids = state["interaction_ids"]
                edits = [{k: v for k, v in {**e, "interaction_id": ids[e["index"]]}.items() if k != "index"}
                         for e in ours["edits"]]
                probes = [{k: v for k, v in {**p, "interaction_id": ids[p["index"]]}.items() if k != "index"}
                          for p in ours["probes"]]
            return {"edits": edits, "probes": probes,
                    "counts": c._merge(state, "counts", {"self_edits": len(edits), "probes": len(probes),
                                                         "own_self_edits": own["self_edits"],
                                                         "own_probes": own["probes"]}),
                    "timings": c._merge(state, "timings", {"self_edit": time.perf_counter() - t0})}

        def train(self, state: dict[str, Any]) -> dict[str, Any]:
            import shutil

            t0 = time.perf_counter()
            model, tok = self.base_model()
            fitted = self._fit(tok, state)
            if not fitted["edits"]:
                return fitted
            tc = self.config.train
            peft, metrics = _hf_train(model, tok, [e["example"] for e in fitted["edits"]], tc)
            out_dir = c._run_dir(self.memory, state["run_id"]) / "candidate"
            shutil.rmtree(out_dir, ignore_errors=True)
            peft.save_pretrained(str(out_dir))
            self._base = (peft.unload(), tok)  # the bare base again, for the gate
            return {**fitted, "candidate_dir": str(out_dir), "parent": self.registry(state).current,
                    "train": metrics, "counts": {**fitted["counts"], "replay": 0},
                    "timings": c._merge(state, "timings", {"train": time.perf_counter() - t0})}

    home = Path(tempfile.mkdtemp(prefix="seal-bench-naive-"))
    with SealMemory(home, embeddings=HashEmbeddings(), model=args.model) as mem:
        log_interactions(mem, args.interactions, args.seed)
        t0 = time.perf_counter()
        mem.chat_model()
        load_s = time.perf_counter() - t0
        rss_served = _rss_now()
        c._Run = NaiveRun  # type: ignore[misc]
        t0 = time.perf_counter()
        report = mem.consolidate(progress=False, **settings(args))
        total = time.perf_counter() - t0
    return {"side": "naive", "total": total, "timings": report.timings, "verdict": report.verdict,
            "reason": report.reason, "counts": report.counts, "train": report.train or {},
            "gate_passed": (report.gate or {}).get("passed"), "gen_rows": gen["rows"], "gen_tokens": gen["tokens"],
            "serving_load_s": load_s, "fresh_load_s": extra["fresh_load_s"], "model_loads": len(loads),
            "load_seconds": loads, "rss_served": rss_served, "peak_rss": _peak_rss(),
            "load_average": list(os.getloadavg())}


def side_bare(args: argparse.Namespace) -> dict[str, Any]:
    """Goal 5's baseline: load the base, train LoRA with Trainer + PEFT on the same examples."""
    from seal_agent.config import SealConfig
    from seal_agent.model import load_model
    from seal_agent.training.data import fit_examples

    ours = json.loads(Path(args.state).read_text())
    tc = SealConfig.from_dict({"train": settings(args)["train"]}).train
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_now()
    examples = fit_examples(tok, [e["example"] for e in ours["edits"]], max_seq_len=tc.max_seq_len).examples
    _, metrics = _hf_train(model, tok, examples, tc)
    return {"side": "bare", "load_s": load_s, "train": metrics, "rss_loaded": rss_loaded, "peak_rss": _peak_rss(),
            "load_average": list(os.getloadavg())}


# ------------------------------------------------------------------------ driver


def _run_side(side: str, args: argparse.Namespace, state: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--state", str(state), "--out", str(out),
           "--model", args.model, "--interactions", str(args.interactions), "--max-new-tokens",
           str(args.max_new_tokens), "--samples", str(args.samples), "--epochs", str(args.epochs),
           "--seed", str(args.seed), "--strategies", *args.strategies]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--progress"] if args.progress else []
    load = os.getloadavg()
    print(f"  [{side}] starting (load average {load[0]:.2f})", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, timeout=SIDE_TIMEOUT_S, env=os.environ.copy(), check=False)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"side {side} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - t0
    result["load_average_before"] = list(load)
    return result


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def _chart(runs: list[dict[str, Any]], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    labels, lefts = [], []
    colors = dict(zip(STAGES, ["#999999", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"], strict=True))
    rows = []
    for i, r in enumerate(runs):
        rows += [(f"run {i + 1} naive", r["naive"]), (f"run {i + 1} ours", r["ours"])]
    for y, (label, side) in enumerate(rows):
        labels.append(label)
        left = 0.0
        for st in STAGES:
            w = side["timings"].get(st, 0.0)
            ax1.barh(y, w, left=left, color=colors[st], label=st if y == 0 else None)
            left += w
        lefts.append(left)
    ax1.set_yticks(range(len(labels)), labels)
    ax1.set_xlabel("seconds (stacked by stage)")
    ax1.set_title("consolidation of the same interactions, per stage")
    ax1.legend(loc="upper right", fontsize=8)
    names = ["ours (consolidation)", "naive pipeline", "bare Trainer+PEFT"]
    peaks = [_median([r[k]["peak_rss"] for r in runs]) / 2**30 for k in ("ours", "naive", "bare")]
    ax2.bar(range(3), peaks, color=["#2ca02c", "#d62728", "#7f7f7f"])
    ax2.set_xticks(range(3), names, rotation=15, fontsize=8)
    ax2.set_ylabel("peak RSS (GB), median of runs")
    ax2.set_title("peak RSS, each in a fresh process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=48, help="budget of one self-edit reply (default 48)")
    p.add_argument("--samples", type=int, default=1, help="replies sampled per prompt (library default 4)")
    p.add_argument("--strategies", nargs="+", default=["implications", "self_qa", "statements"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=1, help="repetitions (each: ours, naive, bare)")
    p.add_argument("--model", default=None, help="default smollm2-135m (tiny-random with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny-random (random weights): a quick check of the machinery")
    p.add_argument("--progress", action="store_true", help="progress bars in the sides")
    p.add_argument("--keep", metavar="DIR", help="keep each side's result in DIR and reuse the ones already there "
                   "(resumes an interrupted benchmark; the settings must be the same)")
    p.add_argument("--side", choices=["ours", "naive", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.model = args.model or ("tiny-random" if args.tiny else "smollm2-135m")
    for name in ("interactions", "max_new_tokens", "samples", "epochs", "runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    if args.side:  # one side, in this fresh process
        import logging

        logging.basicConfig(level=logging.WARNING)
        fn = {"ours": side_ours, "naive": side_naive, "bare": side_bare}[args.side]
        Path(args.out).write_text(json.dumps(fn(args), default=str))
        return

    from _machine import machine_header
    from _results import Goal, Row, print_goals, save

    machine, device, load_before = machine_header(threads=0)
    print(f"{args.interactions} interactions, {args.model}, strategies={args.strategies}, samples={args.samples}, "
          f"max_new_tokens={args.max_new_tokens}, epochs={args.epochs}, runs={args.runs}\n")
    runs: list[dict[str, Any]] = []
    keep = Path(args.keep) if args.keep else None
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with contextlib.nullcontext(keep) if keep else tempfile.TemporaryDirectory(prefix="seal-bench-consolidation-") as tmp:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            state = Path(tmp) / f"state-{i}.json"
            run = {}
            for side in ("ours", "naive", "bare"):
                out = Path(tmp) / f"{side}-{i}.json"
                if keep is not None and out.is_file() and (side != "ours" or state.is_file()):
                    print(f"  [{side}] reusing {out}", flush=True)
                    run[side] = json.loads(out.read_text())
                else:
                    run[side] = _run_side(side, args, state, out)
            runs.append(run)
            _print_run(run, args)

    ratios = [r["naive"]["total"] / r["ours"]["total"] for r in runs]
    gen_ratios = [r["naive"]["timings"].get("self_edit", 0) / max(r["ours"]["timings"].get("self_edit", 0), 1e-9)
                  for r in runs]
    train_ratios = [r["naive"]["timings"].get("train", 0) / max(r["ours"]["timings"].get("train", 0), 1e-9)
                    for r in runs]
    rss_ratios = [r["ours"]["peak_rss"] / r["bare"]["peak_rss"] for r in runs]
    per_min = [60 * args.interactions / r["ours"]["total"] for r in runs]
    naive_per_min = [60 * args.interactions / r["naive"]["total"] for r in runs]
    loads = [r["ours"]["model_loads"] for r in runs]
    fmt = ", ".join
    print(f"\nend to end: ours {fmt(f'{x:.1f}' for x in per_min)} interactions/min, naive "
          f"{fmt(f'{x:.1f}' for x in naive_per_min)}; ratio {fmt(f'{x:.2f}x' for x in ratios)} "
          f"(median {_median(ratios):.2f}x)")
    print(f"peak RSS ours / bare Trainer+PEFT: {fmt(f'{x:.2f}x' for x in rss_ratios)} (median {_median(rss_ratios):.2f}x)")
    n = len(runs)
    tag = f"{args.model}, {args.interactions} interactions" + (f", median of {n}" if n > 1 else "")
    med = {side: {st: _median([r[side]["timings"].get(st, 0.0) for r in runs]) for st in STAGES}
           for side in ("ours", "naive")}
    rows = [
        Row(f"consolidation throughput ({tag})", f"{_median(per_min):.1f} interactions/min",
            f"naive pipeline {_median(naive_per_min):.1f} interactions/min", f"{_median(ratios):.2f}x"),
        Row(f"self-edit generation ({tag})", f"{med['ours']['self_edit']:.1f} s",
            f"one generate per prompt {med['naive']['self_edit']:.1f} s", f"{_median(gen_ratios):.2f}x"),
        Row(f"consolidation train stage ({tag})", f"{med['ours']['train']:.1f} s",
            f"Trainer + PEFT on a fresh base copy {med['naive']['train']:.1f} s", f"{_median(train_ratios):.2f}x"),
        Row(f"peak RSS of a consolidation ({tag})", _gb(_median([r['ours']['peak_rss'] for r in runs])),
            f"bare Trainer + PEFT training {_gb(_median([r['bare']['peak_rss'] for r in runs]))}",
            f"{_median(rss_ratios):.2f}x of bare"),
    ]
    real = not args.tiny and args.interactions >= 100
    scope = "" if real else f" [{args.model}, {args.interactions} interactions: not the goal's setting]"
    goals = [
        Goal("consolidation throughput >= 3x the naive pipeline (100 interactions, real model)" + scope,
             f"{_median(ratios):.2f}x median ({fmt(f'{x:.2f}x' for x in ratios)})",
             real and _median(ratios) >= 3.0),
        Goal("peak RSS of a consolidation <= 1.2x a bare transformers + PEFT training" + scope,
             f"{_median(rss_ratios):.2f}x median ({fmt(f'{x:.2f}x' for x in rss_ratios)})",
             real and _median(rss_ratios) <= 1.2),
        Goal("one frozen base in the process (serving, training and the gate: 1 load)",
             f"{fmt(str(x) for x in loads)} model load(s) per consolidation process", all(x == 1 for x in loads)),
    ]
    data = {"settings": {k: v for k, v in vars(args).items() if k not in ("side", "state", "out")},
            "overrides": settings(args), "runs": runs, "ratios": ratios, "self_edit_ratios": gen_ratios,
            "train_ratios": train_ratios, "rss_ratios": rss_ratios, "interactions_per_minute": per_min,
            "naive_interactions_per_minute": naive_per_min, "median_stage_seconds": med}
    save("consolidation", title=f"consolidation throughput and peak RSS vs a naive pipeline ({tag}, "
         f"samples={args.samples}, max_new_tokens={args.max_new_tokens}, epochs={args.epochs})",
         data=data, rows=rows, goals=goals, load_before=load_before, machine=machine, device=device,
         chart=lambda path: _chart(runs, path))
    print_goals(goals)


def _print_run(run: dict[str, Any], args: argparse.Namespace) -> None:
    ours, naive, bare = run["ours"], run["naive"], run["bare"]
    print(f"  {'stage (seconds)':18}{'naive':>10}{'ours':>10}{'ratio':>9}")
    for st in [*STAGES, "total"]:
        a = naive["total"] if st == "total" else naive["timings"].get(st, 0.0)
        b = ours["total"] if st == "total" else ours["timings"].get(st, 0.0)
        ratio = f"{a / b:8.2f}x" if b > 1e-3 else "       -"
        print(f"  {st:18}{a:10.2f}{b:10.2f}{ratio}")
    print(f"  naive train includes a fresh base load of {naive.get('fresh_load_s', 0):.1f} s "
          f"(serving loads: ours {ours['serving_load_s']:.1f} s, naive {naive['serving_load_s']:.1f} s, not counted)")
    for r in (ours, naive):
        c, t = r["counts"], r["train"]
        why = f" ({r['reason'][:100]}...)" if r["reason"] and len(r["reason"]) > 100 else f" ({r['reason']})"
        print(f"  [{r['side']}] verdict={r['verdict']}" + (why if r["reason"] else "")
              + f"; self-edits {c.get('self_edits')} probes {c.get('probes')}; generation {r['gen_rows']} rows "
              f"{r['gen_tokens']} tokens = {r['gen_tokens'] / max(r['timings'].get('self_edit', 0), 1e-9):.1f} tok/s; "
              f"train {t.get('steps')} steps {t.get('tokens_per_second', 0):.0f} tok/s; model loads {r['model_loads']}; "
              f"peak RSS {_gb(r['peak_rss'])} (after the served model loaded {_gb(r['rss_served'])}); "
              f"load average {r['load_average'][0]:.2f}")
    print(f"  [bare] Trainer+PEFT {bare['train']['seconds']:.1f} s, peak RSS {_gb(bare['peak_rss'])} "
          f"(after load {_gb(bare['rss_loaded'])})\n", flush=True)


if __name__ == "__main__":
    main()
