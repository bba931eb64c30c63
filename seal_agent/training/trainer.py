"""The LoRA trainer: a thin, readable loop over `seal_agent.training.data`.

What happens in `train_adapter`, in order:

1. validate and tokenize the examples (and the replay examples), nothing written yet;
2. sample every epoch's replay mix (``round(replay_ratio * len(examples))`` older
   examples, a fresh draw each epoch, deterministic from the seed) and plan every
   epoch's length-grouped steps;
3. make a *weight-sharing structural copy* of the caller's model and wrap that copy
   with LoRA (or load ``init_adapter`` into it to continue training). The copy's
   modules are new objects but its parameters and buffers are the caller's tensors, so
   it costs almost no memory; LoRA layers are injected into the copy's module tree
   only, so the caller's model never sees them -- a server may keep generating with
   it while we train. The base weights are frozen (and never written); their
   ``requires_grad`` flags are restored afterwards;
4. train: AdamW on the LoRA weights, linear warmup then cosine decay to 10% of the
   peak, gradient accumulation over micro-batches, clipping, a step and time budget,
   cancellation between micro-batches;
5. save the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) to a
   temporary sibling folder and rename it into place, so ``output_dir`` is either
   complete or absent.

Nothing non-finite is ever saved: a NaN/inf loss or gradient norm stops training before
the optimizer applies it, the LoRA weights are checked once more before saving, and an
``init_adapter`` whose weights hold NaN/inf is refused up front (`TrainingError` /
`ValidationError`, nothing written). An all-NaN adapter answers nothing; the gate refuses
one too, but it must never be produced.

The loss is computed only where it is needed: the decoder's hidden states at the
labelled positions go through the output head (``[N, H] @ [H, V]`` instead of
``[B, T, H] @ [H, V]``), which for chat data (loss on the answers only) and large
vocabularies saves most of the head's compute and memory. With a frozen head (LoRA
not on it, the default) the head and the cross-entropy run in row chunks that compute
the gradient as they go (`_HeadCrossEntropy`), so the ``[N, V]`` float logits, their
log-softmax and its gradient are never held whole. Models whose forward does more than
``lm_head(decoder(x))`` (logit soft-capping or scaling) use the full forward.

On a CPU each step is split into micro-batches where that saves more padding than a
forward/backward pass's fixed cost (`seal_agent.training.data.plan_batches` with
``overhead_tokens``); on a GPU a step fills micro-batches up to
``micro_batch_tokens``. Either way the gradients of a step's micro-batches are
accumulated into one token-mean step, so the split changes the speed, not what is
learned (bench/bench_train.py measures both against ``transformers.Trainer``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seal_agent._compat import quiet_peft
from seal_agent._finite import adapter_nonfinite, describe_nonfinite
from seal_agent._fs import staged_dir
from seal_agent.config import TrainConfig
from seal_agent.errors import TrainingCancelled, TrainingError, ValidationError
from seal_agent.training.data import (
    IGNORE_INDEX,
    TokenizedExample,
    collate,
    encode_examples,
    plan_batches,
    replay_draws,
    sample_replay,
    validate_examples,
)

__all__ = ["TrainResult", "train_adapter"]

logger = logging.getLogger(__name__)

StoppedReason = Literal["completed", "max_steps", "max_seconds"]

_MIN_LR_RATIO = 0.1  # cosine decays to 10% of the peak: the last steps still learn
# The fixed cost of one forward/backward pass on a CPU, in tokens' worth of compute:
# measured ~25 tokens for a 4-layer Llama (hidden 256) and ~19 for SmolLM2-135M (one
# thread, LoRA r=16 on all linear layers; bench/bench_train.py). A step is split into
# micro-batches where that saves more padding than it costs (data.plan_batches).
_CPU_PASS_OVERHEAD_TOKENS = 24


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    Attributes:
        adapter_path: The saved PEFT adapter folder (``adapter_config.json`` +
            ``adapter_model.safetensors``), loadable by ``PeftModel.from_pretrained``.
        losses: Mean loss per label token of each optimizer step, in order.
        steps: Optimizer steps taken.
        tokens_seen: Real (non-pad) tokens that went through the model.
        padded_tokens: Tokens that went through the model including padding
            (``tokens_seen / padded_tokens`` is the useful fraction of the compute).
        tokens_per_second: ``tokens_seen / seconds``.
        peak_memory_bytes: On CUDA the peak allocated memory during training; elsewhere
            the process's peak resident set size (the whole process's lifetime peak).
        seconds: Wall-clock seconds of the training loop (tokenization and saving excluded).
        stopped_reason: ``"completed"`` (all epochs), ``"max_steps"`` or ``"max_seconds"``.
        examples: New examples trained on.
        replay_examples: Replay examples mixed into each epoch (a fresh draw each epoch).
        rehearsal_examples: Rehearsal examples mixed into each epoch (see
            `seal_agent.training.rehearsal`).
        epoch_losses: Mean loss per label token of each epoch, over every example: unlike
            the first and last step's loss (single batches of different lengths), the
            first and last of these compare like with like.
        replay_distinct: Distinct replay examples drawn over all epochs.
    """

    adapter_path: Path
    losses: tuple[float, ...]
    steps: int
    tokens_seen: int
    padded_tokens: int
    tokens_per_second: float
    peak_memory_bytes: int
    seconds: float
    stopped_reason: StoppedReason
    examples: int
    replay_examples: int
    rehearsal_examples: int = 0
    epoch_losses: tuple[float, ...] = ()
    replay_distinct: int = 0


def train_adapter(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    config: TrainConfig | None = None,
    *,
    init_adapter: str | os.PathLike[str] | None = None,
    replay: Sequence[Mapping[str, Any]] | None = None,
    rehearsal: Sequence[Mapping[str, Any]] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    cancel_event: threading.Event | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a LoRA adapter on chat or document examples.

    The caller's model is not modified: LoRA is injected into a structural copy that
    shares the (frozen) base weights, so the base stays bit-identical and usable by
    other threads while training runs.

    Args:
        model: A transformers causal LM (the base model, not a ``PeftModel``).
        tokenizer: Its tokenizer; chat examples need a chat template.
        examples: Chat examples ``{"messages": [{"role", "content"}, ...]}`` (loss on
            assistant turns) or documents ``{"text": ...}`` (loss on every token).
        config: Hyperparameters and budgets; defaults to ``TrainConfig()``.
        init_adapter: A PEFT LoRA adapter folder to continue training from (its rank,
            alpha and target modules win over ``config``'s).
        replay: Older examples; each epoch mixes in a different draw of
            ``round(config.replay_ratio * len(examples))`` of them (at most all),
            deterministic from ``config.seed`` and the epoch.
        rehearsal: The base model's own answers to general prompts (see
            `seal_agent.training.rehearsal`); each epoch mixes in a different draw of
            ``config.rehearsal_size`` of them (at most all), deterministic from ``config.seed``.
        output_dir: Where to save the adapter; must be absent or empty. Default: a new
            temporary folder.
        cancel_event: When set, training stops at the next micro-batch and raises
            `TrainingCancelled`; nothing is saved.
        progress: Show a tqdm progress bar.

    Returns:
        A `TrainResult`.

    Raises:
        ValidationError: Bad examples (empty, wrong shape, unknown role, longer than
            ``config.max_seq_len``), a ``PeftModel`` as ``model``, or an unusable
            ``init_adapter`` (e.g. NaN/inf weights) or ``output_dir``. Nothing is written.
        TrainingError: The loss or the gradient norm diverged (NaN/inf), or the trained
            weights are not finite. Nothing is saved.
        TrainingCancelled: ``cancel_event`` was set.
    """
    from peft import PeftModel

    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ValidationError("config", config, "must be a TrainConfig")
    if isinstance(model, PeftModel):
        raise ValidationError("model", type(model).__name__,
                              "pass the base model; continue from an adapter with init_adapter=")
    new = validate_examples(examples, field="examples")
    old = validate_examples(list(replay or []), field="replay", allow_empty=True)
    rehearse = validate_examples(list(rehearsal or []), field="rehearsal", allow_empty=True)
    init_path = _check_init_adapter(init_adapter)
    out_path = _check_output_dir(output_dir)

    # 1-2. Tokenize and plan. Everything that can reject the input happens before any write.
    new_tok = encode_examples(tokenizer, new, max_seq_len=config.max_seq_len, field="examples")
    # A fresh replay draw every epoch (see `sample_replay`); only the drawn examples are
    # tokenized (the buffer may hold thousands), each once however often it is drawn.
    draws = replay_draws(old, len(new), config.replay_ratio, config.seed, config.epochs)
    replay_idx = sorted({i for d in draws for i in d})
    slot = {i: k for k, i in enumerate(replay_idx)}
    old_tok = encode_examples(tokenizer, [old[i] for i in replay_idx], max_seq_len=config.max_seq_len,
                              field="replay") if replay_idx else []
    rehearse_tok = encode_examples(tokenizer, rehearse, max_seq_len=config.max_seq_len,
                                   field="rehearsal") if rehearse and config.rehearsal_size else []
    data: list[TokenizedExample] = new_tok + old_tok + rehearse_tok
    lengths = [len(x) for x in data]
    # Targets of the shifted loss: label k is predicted from position k-1, so labels[0] never counts.
    n_targets = [sum(1 for t in x.labels[1:] if t != IGNORE_INDEX) for x in data]
    device = next(model.parameters()).device
    # CPU: split steps into micro-batches where the padding saved outweighs a pass's fixed
    # cost; elsewhere (GPU) a pass's fixed cost dwarfs padding: fill to the token budget.
    overhead = _CPU_PASS_OVERHEAD_TOKENS if device.type == "cpu" else None
    plan, epoch_of_step = [], []
    fixed = len(new_tok) + len(old_tok)
    for epoch in range(config.epochs):
        # Each epoch rehearses a different draw of `rehearsal_size` from the pool: the
        # update is held to more of what the base model knew at the same cost.
        draw = sample_replay(rehearse_tok, config.rehearsal_size, 1.0, config.seed * 7919 + epoch)
        active = (list(range(len(new_tok))) + [len(new_tok) + slot[i] for i in draws[epoch]]
                  + [fixed + i for i in draw])
        steps = plan_batches([lengths[i] for i in active], batch_size=config.batch_size,
                             micro_batch_tokens=config.micro_batch_tokens, seed=config.seed * 1_000_003 + epoch,
                             overhead_tokens=overhead)
        plan.extend([[[active[i] for i in mb] for mb in step] for step in steps])
        epoch_of_step.extend([epoch] * len(steps))
    total_steps = min(len(plan), config.max_steps) if config.max_steps else len(plan)
    pad_id = _pad_id(tokenizer)

    on_cuda = device.type == "cuda"
    fork_devices = [device.index if device.index is not None else torch.cuda.current_device()] if on_cuda else []
    flags = {p: p.requires_grad for p in model.parameters()}
    with torch.random.fork_rng(devices=fork_devices):  # don't disturb the caller's RNG state
        torch.random.default_generator.manual_seed(config.seed)
        if on_cuda:
            torch.cuda.manual_seed(config.seed)
            torch.cuda.reset_peak_memory_stats(device)
        try:
            peft_model = _wrap_with_lora(_shared_weight_copy(model), config, init_path)
            if config.gradient_checkpointing:
                if on_cuda:
                    peft_model.get_base_model().gradient_checkpointing_enable(
                        gradient_checkpointing_kwargs={"use_reentrant": False})
                else:
                    logger.info("gradient_checkpointing is applied on CUDA only; ignored on %s", device)
            result = _train_loop(
                peft_model, data, n_targets, plan[:total_steps], config,
                pad_id=pad_id, device=device, cancel_event=cancel_event, progress=progress,
                planned_steps=len(plan), epoch_of_step=epoch_of_step,
                distill=frozenset(range(fixed, len(data))) if config.rehearsal_loss == "kl" else frozenset(),
            )
            losses, epoch_losses, stopped, tokens, padded, seconds = result
            _check_finite_weights(peft_model)
            adapter_path = _save_adapter(peft_model, out_path)
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else _peak_rss_bytes()
    logger.info("trained %d steps on %d examples (+%d replay an epoch, %d distinct; +%d rehearsal an epoch): "
                "epoch loss %s, %.0f tok/s, %s", len(losses), len(new_tok), len(draws[0]) if draws else 0, len(old_tok), min(len(rehearse_tok), config.rehearsal_size),
                " -> ".join(f"{x:.3f}" for x in epoch_losses), tokens / max(seconds, 1e-9), stopped)
    return TrainResult(
        adapter_path=adapter_path,
        losses=tuple(losses),
        steps=len(losses),
        tokens_seen=tokens,
        padded_tokens=padded,
        tokens_per_second=tokens / max(seconds, 1e-9),
        peak_memory_bytes=int(peak),
        seconds=seconds,
        stopped_reason=stopped,
        examples=len(new_tok),
        replay_examples=len(draws[0]) if draws else 0,
        replay_distinct=len(old_tok),
        rehearsal_examples=min(len(rehearse_tok), config.rehearsal_size),
        epoch_losses=tuple(epoch_losses),
    )


# --------------------------------------------------------------------------- the loop


def _train_loop(
    model: Any,
    data: list[TokenizedExample],
    n_targets: list[int],
    plan: list[list[list[int]]],
    config: TrainConfig,
    *,
    pad_id: int,
    device: torch.device,
    cancel_event: threading.Event | None,
    progress: bool,
    planned_steps: int,
    epoch_of_step: list[int],
    distill: frozenset[int] = frozenset(),
) -> tuple[list[float], list[float], StoppedReason, int, int, float]:
    """Run the optimizer steps of ``plan``.

    Returns:
        (step losses, epoch losses, stopped_reason, tokens, padded, seconds).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("LoRA left no trainable parameters; check train.target_modules")
    on_cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  **({"fused": True} if on_cuda else {}))
    total = len(plan)
    warmup = math.ceil(config.warmup_ratio * total)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda and torch.cuda.is_bf16_supported()
                else contextlib.nullcontext())
    fast = _fast_loss_supported(model)
    model.train()

    losses: list[float] = []
    epoch_sums: dict[int, list[float]] = {}  # epoch -> [loss sum, target tokens]
    tokens = padded = 0
    stopped: StoppedReason = "max_steps" if total < planned_steps else "completed"
    bar = tqdm(total=total, disable=not progress, desc="train", unit="step", leave=False)
    start = time.perf_counter()
    try:
        for step, micro_batches in enumerate(plan):
            if step and config.max_seconds is not None and time.perf_counter() - start >= config.max_seconds:
                stopped = "max_seconds"
                break
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * _lr_factor(step, warmup, total)
            step_targets = sum(n_targets[i] for mb in micro_batches for i in mb)
            step_loss = 0.0
            for mb in micro_batches:
                if cancel_event is not None and cancel_event.is_set():
                    raise TrainingCancelled(f"training cancelled at step {step + 1}/{total}; nothing was saved")
                # Rehearsal rows under "kl" are distilled from the base model; the rest
                # (and every row under "ce") get cross-entropy on their labels.
                groups = ([i for i in mb if i not in distill], [i for i in mb if i in distill])
                for rows, kl in zip(groups, (False, True), strict=True):
                    if not rows:
                        continue
                    input_ids, labels, n_real = collate([data[i] for i in rows], pad_id)
                    input_ids, labels = input_ids.to(device), labels.to(device)
                    with autocast:
                        loss_sum = (_distill_sum if kl else _loss_sum)(model, input_ids, labels, fast)
                    # Dividing by the step's target count (not the micro-batch's) makes the
                    # accumulated gradient the token-mean over the whole step.
                    (loss_sum / step_targets).backward()
                    step_loss += loss_sum.item()
                    tokens += n_real
                    padded += input_ids.numel()
            loss = step_loss / step_targets
            # Checked before the optimizer applies the step: a NaN/inf loss or gradient would
            # make every LoRA weight NaN (clipping by a NaN norm multiplies by NaN), and a
            # last step's NaN weights were saved with no later loss to notice them.
            if not math.isfinite(loss):
                raise TrainingError(f"loss diverged at step {step + 1}: {loss}; try a lower train.learning_rate; "
                                    "nothing was saved")
            norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
            if not math.isfinite(norm):
                raise TrainingError(f"gradient norm diverged at step {step + 1}: {norm} (loss {loss:.4f}); try a "
                                    "lower train.learning_rate; nothing was saved")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            totals = epoch_sums.setdefault(epoch_of_step[step], [0.0, 0.0])
            totals[0] += step_loss
            totals[1] += step_targets
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            logger.debug("step %d/%d loss %.4f lr %.2e", step + 1, total, loss, optimizer.param_groups[0]["lr"])
    finally:
        bar.close()
    if on_cuda:
        torch.cuda.synchronize(device)
    epoch_losses = [total / max(n, 1) for _, (total, n) in sorted(epoch_sums.items())]
    return losses, epoch_losses, stopped, tokens, padded, time.perf_counter() - start


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from 1 to `_MIN_LR_RATIO`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup - 1)
    return _MIN_LR_RATIO + (1 - _MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _fast_loss_supported(peft_model: Any) -> bool:
    """Whether ``logits == lm_head(decoder(x).last_hidden_state)`` holds for this model."""
    base = peft_model.get_base_model()
    cfg = getattr(base, "config", None)
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        return False
    if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):
        return False
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    return decoder is not None and decoder is not base and isinstance(head, torch.nn.Module)


def _labelled_logits(model: Any, input_ids: torch.Tensor, mask: torch.Tensor, fast: bool) -> torch.Tensor:
    """Logits ``[N, V]`` at the N labelled positions (``mask`` is ``[B, T-1]``).

    No attention mask is passed: with right padding and causal attention a real token
    never attends to the padding after it, and leaving the mask out lets SDPA take its
    fast causal path.
    """
    if fast:
        base = model.get_base_model()
        hidden = base.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state  # [B, T, H]
        return base.get_output_embeddings()(hidden[:, :-1][mask])  # [N, V]
    return model(input_ids=input_ids, use_cache=False).logits[:, :-1][mask]  # [N, V]


def _loss_sum(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, fast: bool) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled positions of a micro-batch.

    ``input_ids`` and ``labels`` are ``[B, T]``, right-padded. When training through the
    fast path with a frozen, plain linear head, the head and the loss run in row chunks
    (`_HeadCrossEntropy`): same value and gradients, without the ``[N, V]`` logits.
    """
    target = labels[:, 1:]  # [B, T-1]: position k predicts token k+1
    mask = target != IGNORE_INDEX  # [B, T-1]
    head = _frozen_linear_head(model) if fast and torch.is_grad_enabled() else None
    if head is not None:
        hidden = model.get_base_model().get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state
        chunk = max(1, _HEAD_CHUNK_ELEMENTS // head.out_features)
        return _HeadCrossEntropy.apply(hidden[:, :-1][mask], head.weight, head.bias, target[mask], chunk)
    logits = _labelled_logits(model, input_ids, mask, fast)
    return F.cross_entropy(logits.float(), target[mask], reduction="sum")


# Float logits held at once by `_HeadCrossEntropy`: 16M values (64 MB), e.g. 341 rows of
# SmolLM2's 49,152-token vocabulary -- big enough for an efficient matmul.
_HEAD_CHUNK_ELEMENTS = 1 << 24


def _frozen_linear_head(peft_model: Any) -> torch.nn.Linear | None:
    """The output head when it is a plain ``nn.Linear`` with frozen weights (LoRA not on it)."""
    head = peft_model.get_base_model().get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.weight.requires_grad:
        return None
    if head.bias is not None and head.bias.requires_grad:
        return None
    return head


class _HeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``head(hidden)`` against ``target``, in row chunks.

    The ``[N, V]`` logits are never held whole: each chunk's logits, softmax and the
    gradient for ``hidden`` (``(softmax - onehot) @ W``) are computed in the forward
    pass and only the ``[N, H]`` gradient is kept for backward. Same arithmetic as
    ``cross_entropy(head(hidden).float(), target)``, a fraction of the memory: for
    SmolLM2 (V = 49,152) 4,096 labelled tokens would hold ~0.8 GB of float logits,
    their log-softmax and its gradient. The head's weights must be frozen.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                target: torch.Tensor, chunk: int) -> torch.Tensor:
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s : s + chunk], target[s : s + chunk]
            logits = F.linear(h, weight, bias).float()  # [c, V]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[torch.arange(len(t), device=t.device), t] -= 1.0
                grad[s : s + chunk] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None, None


def _distill_sum(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, fast: bool) -> torch.Tensor:
    """Summed KL(base || adapted) of the next-token distributions at the labelled positions.

    For rehearsal rows (the base model's own answers): cross-entropy on the base's greedy
    text only holds the top token in place, while the KL holds the whole distribution,
    runner-up tokens included -- the ones whose rise flips a greedy answer elsewhere.
    The base distribution comes from the same model with its LoRA layers bypassed.
    """
    mask = labels[:, 1:] != IGNORE_INDEX  # [B, T-1]
    with torch.no_grad(), model.disable_adapter():
        reference = F.log_softmax(_labelled_logits(model, input_ids, mask, fast).float(), dim=-1)  # [N, V]
    adapted = F.log_softmax(_labelled_logits(model, input_ids, mask, fast).float(), dim=-1)
    return F.kl_div(adapted, reference, log_target=True, reduction="sum")


# --------------------------------------------------------------------------- model plumbing


def _shared_weight_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree whose parameters and buffers ARE the original's tensors.

    ``deepcopy`` with a memo pre-filled with every parameter and buffer copies modules,
    configs and hooks but reuses the tensors: LoRA injection then rewires the copy's
    modules only, and the caller's model is untouched.
    """
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


def _lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        # "all-linear" in peft = every nn.Linear except the output head.
        target_modules=config.target_modules,
        bias="none",
        modules_to_save=None,  # vLLM's LoRA loader accepts no full-module copies
    )


def _wrap_with_lora(model: torch.nn.Module, config: TrainConfig, init_adapter: Path | None) -> Any:
    from peft import PeftModel, get_peft_model

    with quiet_peft():
        if init_adapter is None:
            return get_peft_model(model, _lora_config(config))
        try:
            peft_model = PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
        except Exception as exc:  # peft raises many types for a bad folder
            raise ValidationError("init_adapter", str(init_adapter), f"could not be loaded: {exc}") from exc
    cfg = peft_model.peft_config["default"]
    if getattr(cfg, "r", config.lora_rank) != config.lora_rank:
        logger.info("continuing from %s: its rank %s wins over train.lora_rank=%s",
                    init_adapter, cfg.r, config.lora_rank)
    return peft_model


def _check_init_adapter(init_adapter: str | os.PathLike[str] | None) -> Path | None:
    if init_adapter is None:
        return None
    path = Path(init_adapter)
    if not (path / "adapter_config.json").is_file():
        raise ValidationError("init_adapter", str(path), "must be a PEFT adapter folder with adapter_config.json")
    try:
        bad = adapter_nonfinite(path)
    except Exception:  # missing or unreadable weights: loading it names the problem
        bad = []
    if bad:  # training from NaN weights gives NaN weights: refuse before anything runs
        raise ValidationError("init_adapter", str(path), f"its weights hold NaN/inf values in "
                              f"{describe_nonfinite(bad)}; continue from an intact adapter (roll back)")
    return path


def _check_finite_weights(peft_model: Any) -> None:
    """Raise `TrainingError` if a trainable (LoRA) weight is NaN/inf: such an adapter is never saved."""
    bad = [name for name, p in peft_model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise TrainingError(f"training left NaN/inf values in {len(bad)} LoRA weights ({shown}); try a lower "
                            "train.learning_rate; nothing was saved")


def _check_output_dir(output_dir: str | os.PathLike[str] | None) -> Path | None:
    if output_dir is None:
        return None
    path = Path(output_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValidationError("output_dir", str(path), "must not exist or be an empty folder")
    return path


def _save_adapter(peft_model: Any, out: Path | None) -> Path:
    """Save into a temporary sibling, then rename: ``out`` ends up complete or absent."""
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="seal-adapter-"))
    with staged_dir(out) as tmp:  # `out` is empty or absent (checked before training)
        # save_embedding_layers=False: an adapter is LoRA weights only, never a copy of
        # the (possibly tied) embeddings.
        peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
    return out


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0  # any id works: padded positions are never attended to by real tokens, nor scored


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
