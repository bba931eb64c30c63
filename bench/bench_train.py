"""Benchmark: seal_agent's LoRA trainer vs `transformers.Trainer` + PEFT, naive and tuned.

Three sides train the same model on the same examples with the same LoRA settings
(rank 16, alpha 32, all linear layers, no dropout), epochs, batch size, gradient
clipping, and the same optimizer and schedule (AdamW, no weight decay, linear warmup
over 10% of the steps then cosine to 10% of the peak -- ours, handed to the Trainer as
its ``optimizers``, so the equal-loss check does not compare two schedules):

* ``naive``: `transformers.Trainer`, random batches padded to their longest example
  (the usual ``DataCollatorForSeq2Seq``-style collator);
* ``grouped``: the same, with the length-grouped sampler -- what a user who cares would
  set. transformers 5 spells it ``TrainingArguments(train_sampling_strategy="group_by_length")``
  (4.x: ``group_by_length=True``; both are handled);
* ``ours``: `seal_agent.training.train_adapter` (length-grouped micro-batches, causal
  attention without a mask, the output head and cross-entropy only on labelled
  positions, computed in row chunks).

Models (``--model``, several allowed): ``llama`` -- a Llama built from a config with a
fixed seed and tiny-random's tokenizer (hidden 256, 4 layers by default); and
``smollm2-135m`` -- the real default model, loaded through `seal_agent.model.load_model`
with its own tokenizer. Length distributions (``--lengths``, several allowed):
``uniform`` (10-400 tokens) and ``loguniform`` (many short examples, a long tail).

Reported for each side of each (model, lengths) case: useful (non-pad) tokens per second
of wall time and per CPU-second, padding share, optimizer steps, seconds, the loss of
the trained adapter on the training examples (one evaluation function for every side:
the equal-loss check) and peak memory (CUDA peak allocated, else the peak RSS of the
process that trained -- each side trains in its own fresh process for that reason, so
the figure includes the model's own weights).

Goals (issue 13), judged per case: ours >= 1.3x the grouped Trainer's useful tokens/s
at equal loss (ours <= grouped's loss + 2 %), and ours >= 2x the naive Trainer's. On a
CPU they are judged on useful tokens per CPU-second (``--judge cpu``, the default
there): each side runs one torch thread, so its CPU time is its compute, while its wall
time also counts the time other processes on the shared cores took (measured at load
3-6: one side's wall rate was 0.47-1.0x its CPU rate, varying side to side within a run). Both
ratios are printed and recorded; ``--judge wall`` judges on wall time (the default on a
GPU). Writes the record (rows, goals, data) and a PNG chart under
``bench/results/`` through ``bench/_results.py``.

    python bench/bench_train.py                       # both models x both distributions, ~8-12 min on 2 cores
    python bench/bench_train.py --model llama --lengths uniform              # ~1 min
    python bench/bench_train.py --model smollm2-135m --lengths loguniform    # ~2-3 min
    python bench/bench_train.py --repeats 3           # medians of 3 alternated runs of each side
    python bench/bench_train.py --kind chat           # chat examples: loss on answers only

Default sizes (2 cores): llama 64 examples x 2 epochs; smollm2-135m 16 examples x 1
epoch (2 optimizer steps of 8: about 1-2 minutes per side at ~80 tokens/s); batch 8,
one torch thread per side.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import random
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_header  # noqa: E402  (bench/, on the path when run as a script)
from _results import Goal, Row, print_goals, save  # noqa: E402

WORDS = ("the a little big red blue happy sad cat dog bird fish tree house river moon sun star "
         "runs jumps sings eats sleeps sees finds loves and but then because when after before "
         "Lily Tom Zib Quxville Zorbia garden ocean cake rain snow friend mother father morning night").split()

MODELS = ("llama", "smollm2-135m")
LENGTHS = ("uniform", "loguniform")
SIDES = ("naive", "grouped", "ours")
SIDE_NAMES = {"naive": "Trainer, random batches, pad to longest",
              "grouped": "Trainer(group_by_length), pad to longest",
              "ours": "seal_agent train_adapter"}
# Per-model defaults: the 135M model trains at ~80 tokens/s on one core, so it gets fewer
# examples and one epoch to keep a full invocation within minutes.
DEFAULT_EXAMPLES = {"llama": 64, "smollm2-135m": 16}
DEFAULT_EPOCHS = {"llama": 2, "smollm2-135m": 1}
SPEED_VS_GROUPED, SPEED_VS_NAIVE, LOSS_TOLERANCE = 1.3, 2.0, 0.02


def _load(model_name: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """The model to train and its tokenizer, built or loaded the same way for every side."""
    import torch

    from seal_agent.model import load_model

    if model_name == "smollm2-135m":
        return load_model("smollm2-135m", device="cpu" if args.device == "cpu" else "auto")
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_model("tiny-random", seed=0)[1]
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=1024,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    if torch.cuda.is_available():
        model = model.to("cuda", dtype=torch.bfloat16)
    return model, tok


def pad_to_longest_collator(pad_id: int, counts: dict[str, int]) -> Any:
    """The usual Trainer collator: pad every batch to its longest example (labels -100 on
    padding). It adds the real and the padded token counts of each batch to `counts`, so
    a benchmark can report useful tokens/s. Shared by bench_train and bench_consolidation."""
    import torch

    def pad_to_longest(batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
            counts["useful"] += n
        counts["padded"] += ids.numel()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return pad_to_longest


def make_examples(tok: Any, n: int, kind: str, seed: int, lengths: str = "uniform") -> list[dict]:
    """Examples of 10-400 tokens: spread uniformly, or log-uniformly (many short, a long tail)."""
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        target = rng.randint(10, 400) if lengths == "uniform" else round(math.exp(rng.uniform(math.log(10), math.log(400))))
        # Simple grammar-ish text so that the loss can fall.
        words = []
        while len(words) < target:
            words += [rng.choice(WORDS[:8]), rng.choice(WORDS[8:20]), rng.choice(WORDS[20:26]), "."]
        ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
        text = tok.decode(ids[: max(4, target - 12 if kind == "chat" else target - 1)])
        if kind == "doc":
            out.append({"text": text})
        else:
            cut = rng.randint(1, max(1, len(text) // 3))  # the answer is the longer part
            out.append({"messages": [{"role": "user", "content": "Continue: " + text[:cut]},
                                     {"role": "assistant", "content": text[cut:]}]})
    return out


def _peak_memory() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _cpu_seconds() -> float:
    """User + system CPU time of this process: less disturbed than wall time by other load."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _eval_loss(model: Any, tok: Any, examples: list[dict]) -> float:
    """Mean loss per label token over the examples: one function (full forward) for every side."""
    import torch

    from seal_agent.training.data import collate, encode_examples
    from seal_agent.training.trainer import _loss_sum

    items = encode_examples(tok, examples, max_seq_len=1024)
    model.eval()
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(items), 8):
            ids, labels, _ = collate(items[i : i + 8], tok.pad_token_id)
            device = next(model.parameters()).device
            total += float(_loss_sum(model, ids.to(device), labels.to(device), False))
            n += int((labels[:, 1:] != -100).sum())
    return total / n


def _setup(args: argparse.Namespace) -> None:
    import logging

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # peft calls a transformers API deprecated in v5: not ours, and it clutters the report.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def run_ours(model_name: str, lengths: str, args: argparse.Namespace) -> dict:
    """Train with seal_agent's trainer (in a fresh process)."""
    import tempfile

    from peft import PeftModel

    from seal_agent.config import TrainConfig
    from seal_agent.training import train_adapter

    _setup(args)
    model, tok = _load(model_name, args)
    examples = make_examples(tok, args.n_examples[model_name], args.kind, args.seed, lengths)
    cfg = TrainConfig(learning_rate=args.lr, epochs=args.n_epochs[model_name], batch_size=args.batch_size,
                      lora_rank=args.rank, lora_alpha=2 * args.rank, warmup_ratio=0.1,
                      micro_batch_tokens=args.micro_batch_tokens, max_seq_len=1024, seed=args.seed)
    # CPU time over the same span as the wall time (res.seconds): the training loop only,
    # as trainer.train() is for the Trainer sides -- not tokenizing, LoRA wrapping, saving.
    from seal_agent.training import trainer as trainer_module

    loop = trainer_module._train_loop
    spans: list[float] = []

    def timed_loop(*a: Any, **kw: Any) -> Any:
        c0 = _cpu_seconds()
        try:
            return loop(*a, **kw)
        finally:
            spans.append(_cpu_seconds() - c0)

    trainer_module._train_loop = timed_loop
    with tempfile.TemporaryDirectory() as tmp:
        res = train_adapter(model, tok, examples, cfg, output_dir=Path(tmp) / "a", progress=False)
        cpu = sum(spans)
        peak = _peak_memory()
        loss = _eval_loss(PeftModel.from_pretrained(model, str(res.adapter_path)), tok, examples)
    return {"useful_tokens": res.tokens_seen, "padded_tokens": res.padded_tokens, "seconds": res.seconds,
            "cpu": cpu, "steps": res.steps, "loss": loss, "peak": peak}


def _grouping_args() -> dict:
    """How this transformers version spells "batches of similar length"."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:  # transformers >= 5
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def run_trainer(model_name: str, lengths: str, args: argparse.Namespace, grouped: bool) -> dict:
    """Train with transformers.Trainer + PEFT (in a fresh process), pad to longest in the batch."""
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from seal_agent.training.data import encode_examples
    from seal_agent.training.trainer import _lr_factor

    _setup(args)
    base, tok = _load(model_name, args)
    examples = make_examples(tok, args.n_examples[model_name], args.kind, args.seed, lengths)
    items = encode_examples(tok, examples, max_seq_len=1024)
    dataset = [{"input_ids": list(x.input_ids), "labels": list(x.labels)} for x in items]
    model = get_peft_model(base, LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear", bias="none"))
    counts = {"useful": 0, "padded": 0}
    pad_to_longest = pad_to_longest_collator(tok.pad_token_id, counts)

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=args.n_epochs[model_name],
            learning_rate=args.lr, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to=[], seed=args.seed,
            dataloader_num_workers=0, remove_unused_columns=False, use_cpu=not cuda, bf16=cuda,
            disable_tqdm=True, **(_grouping_args() if grouped else {}))
        # The exact optimizer and schedule of ours (AdamW without weight decay; linear warmup
        # over 10% of the steps, then cosine to 10% of the peak), so the equal-loss check
        # compares batching and arithmetic, not two schedules: at a few steps HF's "cosine"
        # (first step at lr 0, decay to 0) learns visibly less.
        total = math.ceil(len(dataset) / args.batch_size) * args.n_epochs[model_name]
        warmup = math.ceil(0.1 * total)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, warmup, total))
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=pad_to_longest,
                          optimizers=(optimizer, schedule))
        trainer.remove_callback(PrinterCallback)  # it prints every log dict (disable_tqdm=True)
        c0, t0 = _cpu_seconds(), time.perf_counter()
        out = trainer.train()
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    peak = _peak_memory()
    loss = _eval_loss(model, tok, examples)
    return {"useful_tokens": counts["useful"], "padded_tokens": counts["padded"], "seconds": seconds,
            "cpu": cpu, "steps": out.global_step, "loss": loss, "peak": peak}


def run_side(side: str, model_name: str, lengths: str, args: argparse.Namespace) -> dict:
    if side == "ours":
        return run_ours(model_name, lengths, args)
    return run_trainer(model_name, lengths, args, grouped=side == "grouped")


def _in_fresh_process(side: str, model_name: str, lengths: str, args: argparse.Namespace) -> dict:
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_side, side, model_name, lengths, args).result()


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def summary(rs: list[dict]) -> dict:
    return {"tps": _median([r["useful_tokens"] / r["seconds"] for r in rs]),
            "tpc": _median([r["useful_tokens"] / r["cpu"] for r in rs]),
            "pad": 1 - rs[0]["useful_tokens"] / rs[0]["padded_tokens"], "steps": rs[0]["steps"],
            "useful_tokens": rs[0]["useful_tokens"], "seconds": _median([r["seconds"] for r in rs]),
            "loss": _median([r["loss"] for r in rs]), "peak": max(r["peak"] for r in rs), "runs": rs}


def write_chart(path: Path, cases: dict[str, dict[str, dict]], title: str, judge: str = "cpu") -> bool:
    """Left: each side's useful tokens/s relative to the naive Trainer (the judged measure);
    right: peak memory. Relative, because the two models' rates differ ~30x."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(cases)
    key = "tpc" if judge == "cpu" else "tps"
    colors = {"naive": "#bbbbbb", "grouped": "#777777", "ours": "#2a7ab0"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.27
    for k, side in enumerate(SIDES):
        xs = [i + (k - 1) * width for i in range(len(names))]
        rel = [cases[n][side][key] / cases[n]["naive"][key] for n in names]
        bars = axes[0].bar(xs, rel, width, label=SIDE_NAMES[side], color=colors[side])
        axes[0].bar_label(bars, labels=[f"{r:.2f}x\n{cases[n][side][key]:.0f}" for r, n in zip(rel, names, strict=True)],
                          fontsize=6)
        peaks = [cases[n][side]["peak"] / 2**20 for n in names]
        bars = axes[1].bar(xs, peaks, width, label=SIDE_NAMES[side], color=colors[side])
        axes[1].bar_label(bars, fmt="%.0f", fontsize=7)
    axes[0].axhline(SPEED_VS_NAIVE, color="#2a7ab0", lw=0.6, ls="--")
    unit = "CPU-second" if judge == "cpu" else "second (wall)"
    axes[0].set_title(f"useful tokens per {unit}, x naive Trainer (label: x, tokens)", fontsize=9)
    axes[1].set_title("peak memory, MiB (training process)", fontsize=9)
    for ax in axes:
        ax.set_xticks(range(len(names)), [n.replace(" / ", "\n") for n in names], fontsize=8)
    axes[0].set_ylim(0, max(cases[n]["ours"][key] / cases[n]["naive"][key] for n in names) * 1.25)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def redraw(record: Path) -> None:
    """Draw a saved record's chart again (beside it), e.g. after changing `write_chart`."""
    import json

    rec = json.loads(record.read_text())
    cases = {name: c["sides"] for name, c in rec["data"]["cases"].items()}
    write_chart(record.with_suffix(".png"), cases, rec["title"], rec["data"].get("judged_on", "cpu"))
    print(f"chart written to {record.with_suffix('.png')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", nargs="+", choices=MODELS, default=list(MODELS),
                   help="llama: built from a config (random init); smollm2-135m: the real default model")
    p.add_argument("--lengths", nargs="+", choices=LENGTHS, default=list(LENGTHS),
                   help="how example lengths spread over 10-400 tokens")
    p.add_argument("--examples", type=int, default=None,
                   help=f"examples per case (default per model: {DEFAULT_EXAMPLES})")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs (default per model: {DEFAULT_EPOCHS})")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="llama only")
    p.add_argument("--layers", type=int, default=4, help="llama only")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--micro-batch-tokens", type=int, default=4096)
    p.add_argument("--kind", choices=("doc", "chat"), default="doc",
                   help="doc: loss on every token; chat: loss on the answer only (seal_agent's self-edits)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--repeats", type=int, default=1,
                   help="run every side this many times, alternating, and report medians (for noisy machines)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: ignore a GPU")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of every side (default 1: with more threads than idle cores, "
                        "OpenMP barriers make timings swing 10x when anything else runs)")
    p.add_argument("--judge", choices=("auto", "cpu", "wall"), default="auto",
                   help="judge the goals on useful tokens per CPU-second (auto: on a CPU) or per wall second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/train-<time>.json)")
    p.add_argument("--redraw", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.redraw is not None:
        redraw(args.redraw)
        return
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by the spawned workers
    args.n_examples = {m: args.examples or DEFAULT_EXAMPLES[m] for m in MODELS}
    args.n_epochs = {m: args.epochs or DEFAULT_EPOCHS[m] for m in MODELS}

    import peft

    machine, device, load_before = machine_header(threads=0, extra=f"peft {peft.__version__}, ")
    if device.startswith("CPU"):  # the sides run in their own processes with --threads each
        device = f"CPU ({os.cpu_count()} cores, {args.threads} torch thread{'s' if args.threads != 1 else ''} per side)"
    print(f"LoRA r={args.rank} all-linear, {args.kind} examples of 10-400 tokens, batch {args.batch_size}, "
          f"lr {args.lr}, warmup 10% then cosine to 10% (every side); grouped Trainer uses {_grouping_args()}")

    judge = args.judge if args.judge != "auto" else ("cpu" if device.startswith("CPU") else "wall")
    print(f"goals judged on useful tokens per {'CPU-second' if judge == 'cpu' else 'wall second'}")
    cases: dict[str, dict[str, dict]] = {}
    loads: dict[str, list[float]] = {}
    for model_name in args.model:
        for lengths in args.lengths:
            name = f"{model_name} / {lengths}"
            print(f"\n== {name}: {args.n_examples[model_name]} examples x {args.n_epochs[model_name]} epochs",
                  flush=True)
            runs: dict[str, list[dict]] = {s: [] for s in args.sides}
            for rep in range(args.repeats):  # alternate (and rotate) so background load hits every side alike
                order = args.sides[rep % len(args.sides):] + args.sides[: rep % len(args.sides)]
                for side in order:
                    r = _in_fresh_process(side, model_name, lengths, args)
                    r["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                    runs[side].append(r)
                    print(f"  {side:8s} {r['useful_tokens'] / r['seconds']:8.0f} useful tok/s "
                          f"({r['useful_tokens'] / r['cpu']:.0f} per CPU-s), {r['seconds']:.1f} s, "
                          f"loss {r['loss']:.4f}, peak {r['peak'] / 2**20:.0f} MiB, load {r['load']:.2f}", flush=True)
            cases[name] = {s: summary(rs) for s, rs in runs.items()}
            loads[name] = [r["load"] for rs in runs.values() for r in rs]
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3

    rows: list[Row] = []
    goals: list[Goal] = []
    results: dict[str, Any] = {}
    for name, c in cases.items():
        print(f"\n{name} (load average during: {min(loads[name]):.2f}-{max(loads[name]):.2f})")
        print(f"  {'':42s} {'useful tok/s':>12s} {'tok/CPU-s':>9s} {'pad frac':>8s} {'steps':>5s} "
              f"{'seconds':>8s} {'loss':>7s} {'peak MiB':>9s}")
        for side in args.sides:
            r = c[side]
            print(f"  {SIDE_NAMES[side]:42s} {r['tps']:12.0f} {r['tpc']:9.0f} {r['pad']:8.1%} {r['steps']:5d} "
                  f"{r['seconds']:8.1f} {r['loss']:7.4f} {r['peak'] / 2**20:9.0f}")
        if not all(s in c for s in SIDES):
            continue
        ours, grouped, naive = c["ours"], c["grouped"], c["naive"]
        vs_g, vs_n = ours["tps"] / grouped["tps"], ours["tps"] / naive["tps"]
        vs_g_cpu, vs_n_cpu = ours["tpc"] / grouped["tpc"], ours["tpc"] / naive["tpc"]
        judged_g, judged_n = (vs_g_cpu, vs_n_cpu) if judge == "cpu" else (vs_g, vs_n)
        dloss = ours["loss"] - grouped["loss"]
        rel = dloss / grouped["loss"]
        equal = rel <= LOSS_TOLERANCE
        print(f"  ours / grouped: {vs_g:.2f}x ({vs_g_cpu:.2f}x per CPU-s); ours / naive: {vs_n:.2f}x "
              f"({vs_n_cpu:.2f}x per CPU-s); loss ours - grouped {dloss:+.4f} ({rel:+.1%}), "
              f"ours - naive {ours['loss'] - naive['loss']:+.4f}")
        label = f"{name}, {args.n_examples[name.split(' / ')[0]]} {args.kind} examples"
        mib = lambda r: f"{r['peak'] / 2**20:.0f} MiB"  # noqa: E731
        rows.append(Row(f"training useful tokens/s, wall / per CPU-s ({label})",
                        f"{ours['tps']:.0f} / {ours['tpc']:.0f} (loss {ours['loss']:.3f}, peak {mib(ours)})",
                        f"Trainer(group_by_length) {grouped['tps']:.0f} / {grouped['tpc']:.0f} "
                        f"(loss {grouped['loss']:.3f}, peak {mib(grouped)}); naive {naive['tps']:.0f} / "
                        f"{naive['tpc']:.0f} (loss {naive['loss']:.3f}, peak {mib(naive)})",
                        f"vs grouped {vs_g:.2f}x / {vs_g_cpu:.2f}x; vs naive {vs_n:.2f}x / {vs_n_cpu:.2f}x"))
        unit = "per CPU-s" if judge == "cpu" else "wall"
        other = "wall" if judge == "cpu" else "per CPU-s"
        goals.append(Goal(f"training >= {SPEED_VS_GROUPED}x Trainer(group_by_length) useful tok/s at equal loss ({name})",
                          f"{judged_g:.2f}x {unit} ({vs_g if judge == 'cpu' else vs_g_cpu:.2f}x {other}), "
                          f"loss {rel:+.1%}", judged_g >= SPEED_VS_GROUPED and equal))
        goals.append(Goal(f"training >= {SPEED_VS_NAIVE}x naive Trainer useful tok/s ({name})",
                          f"{judged_n:.2f}x {unit} ({vs_n if judge == 'cpu' else vs_n_cpu:.2f}x {other})",
                          judged_n >= SPEED_VS_NAIVE))
        results[name] = {"sides": c, "ours_vs_grouped": vs_g, "ours_vs_naive": vs_n,
                         "ours_vs_grouped_per_cpu_s": vs_g_cpu, "ours_vs_naive_per_cpu_s": vs_n_cpu,
                         "loss_ours_minus_grouped": dloss, "loss_relative": rel, "equal_loss": equal,
                         "load_during": loads[name]}
    print(f"\nload average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print_goals(goals)
    if not goals:
        return
    import torch
    import transformers

    title = (f"bench_train: {', '.join(cases)}; {args.kind}, batch {args.batch_size}, r {args.rank}, "
             f"{args.threads} thread(s), load {load_before[0]:.1f}")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    data = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "settings": settings, "grouping_args": _grouping_args(), "cases": results, "judged_on": judge,
            "loss_tolerance": LOSS_TOLERANCE}
    save("train", title=title, data=data, rows=rows, goals=goals, load_before=load_before, machine=machine,
         device=device, chart=lambda path: write_chart(path, cases, title, judge), out=args.out)


if __name__ == "__main__":
    main()
