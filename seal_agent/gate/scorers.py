"""Scorers: how well one model (base + an adapter) does on the suite's items.

Every scorer maps items to floats where higher is better, and the gate runs it on the
current and the candidate adapter over the *same* items (paired comparison).

- ``logprob`` (default): teacher-forced mean log-likelihood per token of the expected
  answer (nats/token, <= 0). Batched, cheap, deterministic, and sensitive to small
  changes long before a greedy answer flips. Unbounded: an item counts as flipped
  right->wrong when its score falls more than ``GateConfig.flip_margin`` below the
  current adapter's.
- ``exact``: greedy generation, then normalised exact match (1.0 or 0.0).
- ``f1``: greedy generation, then SQuAD-style token F1 in [0, 1].
- ``judge``: greedy generation, then a LangChain chat model answers yes/no (as SEAL
  grades): 1.0 or 0.0.
- your own: any `Scorer`, or a callable ``fn(item, generated_text) -> float`` wrapped
  in `CallableScorer` (bounded in [0, 1] unless said otherwise).

Bounded scorers count an item as "right" when its score is >= 0.5, so a flip is
current >= 0.5 and candidate < 0.5.

Generations are made once per model and shared by every generation-based scorer
(`ScoringContext.generations`).
"""

from __future__ import annotations

import logging
import re
import string
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from seal_agent.errors import SealAgentError, ValidationError
from seal_agent.gate.suite import SuiteItem

__all__ = [
    "BUILTIN_SCORERS",
    "CallableScorer",
    "ExactScorer",
    "F1Scorer",
    "JudgeScorer",
    "LogprobScorer",
    "Scorer",
    "ScorerError",
    "ScoringContext",
    "continuation_logprobs",
    "generate_answers",
    "make_scorer",
    "normalize_answer",
    "raw_logprobs",
    "token_f1",
]

logger = logging.getLogger(__name__)

BUILTIN_SCORERS = ("logprob", "exact", "f1", "judge")


class ScorerError(SealAgentError, RuntimeError):
    """A scorer could not produce scores (the gate skips it and says why)."""


class ScoringContext:
    """One model to score, with its generations computed at most once.

    Args:
        model: A causal LM with the adapter to score active.
        tokenizer: Its tokenizer (with a chat template).
        items: The items every scorer of this context scores, in order.
        max_new_tokens: Greedy generation budget.
        batch_size: Items per forward pass or generate call.
    """

    def __init__(self, model: Any, tokenizer: Any, items: Sequence[SuiteItem], *,
                 max_new_tokens: int = 32, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.items = list(items)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._generations: list[str] | None = None

    def generations(self) -> list[str]:
        """Greedy answers to every item (computed on first call)."""
        if self._generations is None:
            self._generations = generate_answers(self.model, self.tokenizer, self.items,
                                                 max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return self._generations


class Scorer(ABC):
    """Scores items under one model; higher is better.

    Attributes:
        name: Name in reports.
        bounded: Scores lie in [0, 1] and >= 0.5 means "right" (flip = crossing 0.5);
            otherwise flips are judged with ``GateConfig.flip_margin``.
    """

    name: str = "scorer"
    bounded: bool = True

    @abstractmethod
    def score(self, ctx: ScoringContext) -> list[float]:
        """One float per ``ctx.items``, in order."""


class LogprobScorer(Scorer):
    """Teacher-forced mean log-likelihood per token of the expected answer."""

    name = "logprob"
    bounded = False

    def score(self, ctx: ScoringContext) -> list[float]:
        from seal_agent.training.scoring import answer_logprobs

        chat = [i for i, it in enumerate(ctx.items) if not it.raw]
        raw = [i for i, it in enumerate(ctx.items) if it.raw]
        out = [0.0] * len(ctx.items)
        if chat:
            pairs = [([dict(m) for m in ctx.items[i].prompt], ctx.items[i].expected) for i in chat]
            for i, s in zip(chat, answer_logprobs(ctx.model, ctx.tokenizer, pairs, batch_size=ctx.batch_size),
                            strict=True):
                out[i] = s
        if raw:
            texts = [(ctx.items[i].prompt[0]["content"], ctx.items[i].expected) for i in raw]
            for i, s in zip(raw, raw_logprobs(ctx.model, ctx.tokenizer, texts, batch_size=ctx.batch_size),
                            strict=True):
                out[i] = s
        return out


class ExactScorer(Scorer):
    """Greedy answer equals the expected one after normalisation: 1.0, else 0.0."""

    name = "exact"

    def score(self, ctx: ScoringContext) -> list[float]:
        return [float(normalize_answer(g) == normalize_answer(it.expected))
                for it, g in zip(ctx.items, ctx.generations(), strict=True)]


class F1Scorer(Scorer):
    """Token F1 between the greedy answer and the expected one (SQuAD normalisation)."""

    name = "f1"

    def score(self, ctx: ScoringContext) -> list[float]:
        return [token_f1(g, it.expected) for it, g in zip(ctx.items, ctx.generations(), strict=True)]


_JUDGE_SYSTEM = (
    "You are a grading assistant. Decide whether the model's answer is correct, judging only "
    "against the reference answer; use no outside knowledge. The answer may add details, but it "
    "must convey the reference answer and must not contradict it. Ignore style and phrasing. "
    "Reply with exactly one word: yes or no."
)


class JudgeScorer(Scorer):
    """An LLM judge (any LangChain chat model) grades each greedy answer yes (1.0) / no (0.0).

    Args:
        judge: A LangChain ``BaseChatModel``.

    Raises (from `score`):
        ScorerError: The judge raised, or more than half its replies were neither yes nor no.
    """

    name = "judge"

    def __init__(self, judge: Any) -> None:
        self.judge = judge
        self.unparseable = 0

    def score(self, ctx: ScoringContext) -> list[float]:
        from langchain_core.messages import HumanMessage, SystemMessage

        prompts = []
        for it, answer in zip(ctx.items, ctx.generations(), strict=True):
            question = "\n".join(f"{m['role']}: {m['content']}" for m in it.prompt)
            prompts.append([SystemMessage(_JUDGE_SYSTEM), HumanMessage(
                f"Question:\n{question}\n\nReference answer:\n{it.expected}\n\nModel answer:\n{answer}\n\n"
                "Is the model answer correct? yes or no")])
        try:
            replies = self.judge.batch(prompts)
        except Exception as exc:  # any failure of an outside model: skip this scorer
            raise ScorerError(f"the judge failed: {type(exc).__name__}: {exc}") from exc
        scores, bad = [], 0
        for r in replies:
            text = (getattr(r, "text", None) if not isinstance(r, str) else r) or str(getattr(r, "content", ""))
            word = re.sub(r"[^a-z]", "", (text.strip().split() or [""])[0].lower())
            if word not in ("yes", "no"):
                bad += 1
            scores.append(1.0 if word == "yes" else 0.0)
        self.unparseable += bad
        if prompts and bad * 2 > len(prompts):
            raise ScorerError(f"the judge answered neither yes nor no to {bad} of {len(prompts)} items")
        return scores


class CallableScorer(Scorer):
    """A user function ``fn(item, generated_text) -> float`` over greedy answers.

    Args:
        fn: The function; higher is better.
        name: Name in reports.
        bounded: Whether its scores lie in [0, 1] with >= 0.5 meaning right.
    """

    def __init__(self, fn: Callable[[SuiteItem, str], float], *, name: str = "callable",
                 bounded: bool = True) -> None:
        self.fn = fn
        self.name = name
        self.bounded = bounded

    def score(self, ctx: ScoringContext) -> list[float]:
        return [float(self.fn(it, g)) for it, g in zip(ctx.items, ctx.generations(), strict=True)]


def make_scorer(spec: str | Scorer | Callable[[SuiteItem, str], float], *, name: str | None = None,
                judge: Any = None) -> Scorer:
    """A `Scorer` from a built-in name, a `Scorer`, or a callable.

    Raises:
        ValidationError: Unknown name, or ``"judge"`` without a judge model.
    """
    if isinstance(spec, Scorer):
        return spec
    if callable(spec) and not isinstance(spec, str):
        return CallableScorer(spec, name=name or getattr(spec, "__name__", "callable"))
    if spec == "logprob":
        return LogprobScorer()
    if spec == "exact":
        return ExactScorer()
    if spec == "f1":
        return F1Scorer()
    if spec == "judge":
        if judge is None:
            raise ValidationError("gate.scorer", spec, "needs a judge model: Gate(..., judge=chat_model)")
        return JudgeScorer(judge)
    raise ValidationError("scorer", spec, f"must be one of {list(BUILTIN_SCORERS)}, a Scorer or a callable")


# --------------------------------------------------------------------------- text metrics


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 of the normalised texts (1.0 when both are empty)."""
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- model calls


def _prompt_ids(tokenizer: Any, item: SuiteItem) -> list[int]:
    if item.raw:
        return list(tokenizer(item.prompt[0]["content"])["input_ids"])
    text = tokenizer.apply_chat_template([dict(m) for m in item.prompt], add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class _RowsDone:
    """A per-row stopping criterion for `generate`: row r stops once ``done(item, text)``
    holds for its text so far (the other rows go on; the batch ends when all have stopped).
    ``lengths[r]``: how many new tokens row r had when it stopped (None: it did not)."""

    def __init__(self, tokenizer: Any, width: int, items: list[int], done: Callable[[int, str], bool]) -> None:
        self.tokenizer, self.width, self.items, self.done = tokenizer, width, items, done
        self.lengths: list[int | None] = [None] * len(items)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        rows = input_ids[:, self.width:].tolist()  # one device-to-host copy per step, not one per row
        for r, i in enumerate(self.items):
            if self.lengths[r] is None and self.done(i, _decode(self.tokenizer, rows[r])):
                self.lengths[r] = len(rows[r])
        return torch.tensor([n is not None for n in self.lengths], dtype=torch.bool, device=input_ids.device)


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    # No clean-up of tokenization spaces: with it, decoding more tokens can change text
    # already decoded ("Paris 's" becomes "Paris's"), and a stop decision must hold.
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, items: Sequence[SuiteItem], *, max_new_tokens: int = 32,
                     batch_size: int = 16, done: Callable[[int, str], bool] | None = None) -> list[str]:
    """Greedy answers, batched with left padding (so every row ends where generation starts).

    `done(i, text)`: item i's answer may stop at `text` (it is then that prefix of the
    full greedy answer, decoded without clean-up of tokenization spaces); a batch ends
    when each of its rows is done, at EOS or at `max_new_tokens`. Greedy decoding makes
    a row's tokens independent of when the others stop.
    """
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_prompt_ids(tokenizer, it) for it in items]
    order = sorted(range(len(items)), key=lambda i: len(encoded[i]))  # similar lengths pad little
    out: dict[int, str] = {}
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # [B, T], left-padded
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]):] = 1
            rows_done = _RowsDone(tokenizer, width, idx, done) if done is not None else None
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 stopping_criteria=StoppingCriteriaList([rows_done]) if rows_done else None)
            for r, i in enumerate(idx):
                if rows_done is None:
                    out[i] = tokenizer.decode(gen[r, width:], skip_special_tokens=True).strip()
                else:  # up to where the row stopped (a model without EOS does not pad a stopped row)
                    new_ids = gen[r, width:].tolist()
                    out[i] = _decode(tokenizer, new_ids[: rows_done.lengths[r] or len(new_ids)]).strip()
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(items))]


def raw_logprobs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *,
                 batch_size: int = 16) -> list[float]:
    """Mean log-likelihood per token of each continuation given its plain-text prompt.

    The prompt is tokenized as the tokenizer does by default (special tokens such as
    BOS included) and the continuation separately without special tokens, then
    concatenated: the same ids under every adapter, whatever the tokenizer.
    """
    rows = []
    for prompt, cont in pairs:
        p = list(tokenizer(prompt)["input_ids"])
        c = list(tokenizer(cont, add_special_tokens=False)["input_ids"])
        if not p:
            raise ValidationError("prompt", prompt, "tokenizes to nothing")
        if not c:
            raise ValidationError("expected", cont, "tokenizes to nothing")
        rows.append((p, c))
    return continuation_logprobs(model, rows, reduce="mean", batch_size=batch_size)


@torch.no_grad()
def continuation_logprobs(model: Any, rows: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                          reduce: str = "mean", batch_size: int = 16) -> list[float]:
    """Log-likelihood of each continuation's ids given its prompt's ids, batched.

    Args:
        model: A causal LM (its active adapter scores).
        rows: ``(prompt_ids, continuation_ids)`` pairs, both non-empty.
        reduce: ``"mean"`` (per token) or ``"sum"`` (the continuation's log-probability).
        batch_size: Rows per forward pass.
    """
    if reduce not in ("mean", "sum"):
        raise ValidationError("reduce", reduce, "must be 'mean' or 'sum'")
    seqs = [(list(p) + list(c), len(p)) for p, c in rows]
    device = next(model.parameters()).device
    scores: dict[int, float] = {}
    was_training = model.training
    model.eval()
    try:
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]), reverse=True)
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = len(seqs[idx[0]][0])
            ids = torch.zeros((len(idx), width), dtype=torch.long)  # [B, T], right-padded
            target_mask = torch.zeros((len(idx), width - 1), dtype=torch.bool)  # [B, T-1]
            for r, i in enumerate(idx):
                seq, n_prompt = seqs[i]
                ids[r, : len(seq)] = torch.tensor(seq)
                target_mask[r, n_prompt - 1 : len(seq) - 1] = True  # position k predicts token k+1
            ids = ids.to(device)
            # Only positions from the shortest prompt's end on predict continuation tokens:
            # project just those onto the vocabulary (the lm_head dominates for short rows).
            lo = min(seqs[i][1] for i in idx) - 1
            logits = _logits_from(model, ids, width - lo)[:, :-1]  # [B, T-1-lo, V]
            mask = target_mask[:, lo:].to(device)  # [B, T-1-lo]
            targets = ids[:, lo + 1 :]  # [B, T-1-lo]
            logp = torch.zeros(mask.shape, dtype=torch.float32, device=device)
            logp[mask] = torch.log_softmax(logits[mask].float(), -1).gather(
                -1, targets[mask].unsqueeze(-1)).squeeze(-1)  # [N] log p of each continuation token
            per_row = logp.sum(1)
            if reduce == "mean":
                per_row = per_row / mask.sum(1).clamp(min=1)
            for r, i in enumerate(idx):
                scores[i] = float(per_row[r])
    finally:
        model.train(was_training)
    return [scores[i] for i in range(len(seqs))]


def _logits_from(model: Any, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions of `ids` ([B, keep, V]); all of them where the
    model takes no ``logits_to_keep`` (older transformers)."""
    try:
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
    except TypeError:
        logits = model(input_ids=ids, use_cache=False).logits
    return logits[:, -keep:]
