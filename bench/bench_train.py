"""Benchmark: seal_agent's LoRA trainer vs a naive transformers.Trainer + PEFT baseline.

Same model (a Llama built from a config with a fixed seed, tiny-random's tokenizer),
same examples of mixed lengths (10-400 tokens), same LoRA settings, epochs, batch size
and learning-rate schedule. The baseline pads every batch to its longest example (the
usual ``DataCollatorForSeq2Seq``-style collator); ours groups examples by length and
only runs the output head on labelled positions.

Reported for both: useful (non-pad) tokens per second of training, wall seconds, the
loss of the trained adapter on the training set (measured the same way for both), and
peak memory (CUDA peak allocated, else the peak RSS of the process that trained -- each
side runs in its own fresh process for that reason).

    python bench/bench_train.py                 # default: ~2-3 minutes on a 2-core CPU
    python bench/bench_train.py --hidden 512 --layers 8 --examples 256 --epochs 2   # bigger
    python bench/bench_train.py --kind chat     # chat examples: loss on answers only
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ("the a little big red blue happy sad cat dog bird fish tree house river moon sun star "
         "runs jumps sings eats sleeps sees finds loves and but then because when after before "
         "Lily Tom Zib Quxville Zorbia garden ocean cake rain snow friend mother father morning night").split()


def _tokenizer() -> Any:
    from seal_agent.model import load_model

    return load_model("tiny-random", seed=0)[1]


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


def build_model(args: argparse.Namespace, vocab: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=1024,
                      tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    if torch.cuda.is_available():
        model = model.to("cuda", dtype=torch.bfloat16)
    return model


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
    """Mean loss per label token over the examples, the same function for both sides."""
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


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)


def run_ours(args: argparse.Namespace) -> dict:
    import tempfile

    from peft import PeftModel

    from seal_agent.config import TrainConfig
    from seal_agent.training import train_adapter

    _set_threads(args)
    tok = _tokenizer()
    examples = make_examples(tok, args.examples, args.kind, args.seed, args.lengths)
    model = build_model(args, len(tok))
    cfg = TrainConfig(learning_rate=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                      lora_rank=args.rank, lora_alpha=2 * args.rank, warmup_ratio=0.1,
                      micro_batch_tokens=args.micro_batch_tokens, max_seq_len=1024, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        c0 = _cpu_seconds()
        res = train_adapter(model, tok, examples, cfg, output_dir=Path(tmp) / "a", progress=False)
        cpu = _cpu_seconds() - c0
        peak = _peak_memory()
        loss = _eval_loss(PeftModel.from_pretrained(model, str(res.adapter_path)), tok, examples)
    return {"useful_tokens": res.tokens_seen, "padded_tokens": res.padded_tokens, "seconds": res.seconds,
            "cpu": cpu, "steps": res.steps, "loss": loss, "peak": peak}


def run_baseline(args: argparse.Namespace) -> dict:
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from seal_agent.training.data import encode_examples

    _set_threads(args)
    tok = _tokenizer()
    examples = make_examples(tok, args.examples, args.kind, args.seed, args.lengths)
    items = encode_examples(tok, examples, max_seq_len=1024)
    dataset = [{"input_ids": list(x.input_ids), "labels": list(x.labels)} for x in items]
    model = get_peft_model(build_model(args, len(tok)), LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules="all-linear", bias="none"))
    counts = {"useful": 0, "padded": 0}

    def pad_to_longest(batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(b["input_ids"]), torch.tensor(b["labels"]), 1
            counts["useful"] += n
        counts["padded"] += ids.numel()
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0,
            max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to=[], seed=args.seed,
            dataloader_num_workers=0, remove_unused_columns=False, use_cpu=not cuda, bf16=cuda,
            disable_tqdm=True)
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=pad_to_longest)
        c0, t0 = _cpu_seconds(), time.perf_counter()
        out = trainer.train()
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    peak = _peak_memory()
    loss = _eval_loss(model, tok, examples)
    return {"useful_tokens": counts["useful"], "padded_tokens": counts["padded"], "seconds": seconds,
            "cpu": cpu, "steps": out.global_step, "loss": loss, "peak": peak}


def _in_fresh_process(fn: Any, args: argparse.Namespace) -> dict:
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, args).result()


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--micro-batch-tokens", type=int, default=4096)
    p.add_argument("--kind", choices=("doc", "chat"), default="doc",
                   help="doc: loss on every token; chat: loss on the answer only (seal_agent's self-edits)")
    p.add_argument("--lengths", choices=("uniform", "loguniform"), default="uniform",
                   help="how example lengths spread over 10-400 tokens")
    p.add_argument("--repeats", type=int, default=1,
                   help="alternate baseline/ours this many times and report medians (for noisy machines)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: ignore a GPU")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads of both sides (default 1: with more threads than idle cores, "
                        "OpenMP barriers make timings swing 10x when anything else runs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # inherited by the spawned workers

    import peft
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores, {args.threads} torch threads)"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} {platform.system()} {platform.processor() or ''}| device: {device} "
          f"| load average {load:.1f}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    print(f"model: Llama hidden={args.hidden} layers={args.layers} (random init), LoRA r={args.rank} all-linear; "
          f"{args.examples} {args.kind} examples of 10-400 tokens ({args.lengths}), {args.epochs} epochs, batch {args.batch_size}")

    runs: dict[str, list[dict]] = {"base": [], "ours": []}
    for _ in range(args.repeats):  # alternate, so that background load hits both sides alike
        runs["base"].append(_in_fresh_process(run_baseline, args))
        runs["ours"].append(_in_fresh_process(run_ours, args))

    def summary(rs: list[dict]) -> dict:
        return {"tps": _median([r["useful_tokens"] / r["seconds"] for r in rs]),
                "tpc": _median([r["useful_tokens"] / r["cpu"] for r in rs]),
                "pad": 1 - rs[0]["useful_tokens"] / rs[0]["padded_tokens"], "steps": rs[0]["steps"],
                "seconds": _median([r["seconds"] for r in rs]), "loss": rs[-1]["loss"],
                "peak": max(r["peak"] for r in rs)}

    base, ours = summary(runs["base"]), summary(runs["ours"])
    print(f"\n{'':38s} {'useful tok/s':>12s} {'tok/CPU-s':>9s} {'pad frac':>8s} {'steps':>5s} "
          f"{'seconds':>8s} {'loss':>7s} {'peak MiB':>9s}")
    for name, r in (("baseline (HF Trainer, pad to longest)", base), ("seal_agent train_adapter", ours)):
        print(f"{name:38s} {r['tps']:12.0f} {r['tpc']:9.0f} {r['pad']:8.1%} {r['steps']:5d} "
              f"{r['seconds']:8.1f} {r['loss']:7.4f} {r['peak'] / 2**20:9.0f}")
    print(f"\nspeed-up, useful tokens/s (ours / baseline): {ours['tps'] / base['tps']:.2f}x "
          f"(per CPU-second: {ours['tpc'] / base['tpc']:.2f}x); "
          f"loss after training, ours - baseline: {ours['loss'] - base['loss']:+.4f}")


if __name__ == "__main__":
    main()
