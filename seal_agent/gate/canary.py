"""Canaries judged by behaviour: does the model still get them right?

A canary is a general ability (``What is the capital of France?`` -> ``Paris``) an update
must keep. The log-likelihood of a short expected answer as the whole reply turned out to
be a poor judge of that on a real model (smollm2-135m): it moves with the *style* of the
reply, so updates that left every greedy answer unchanged lowered it (judged forgetting)
and an update that only taught acknowledgements raised it (measured: +0.25 nats/token
on average, single canaries from -1.5 to +1.3, no greedy answer turned wrong). So greedy
and rank canaries
are judged pass/fail, and forgetting is a canary that *passed* and now fails:

- ``greedy`` (default): greedy decoding through the chat template (``max_new_tokens`` of
  the gate); the canary passes when the normalised answer (lowercase, no punctuation or
  articles) contains ``expected`` -- or one of ``aliases`` -- as whole words. A reworded
  right answer still passes; a changed, wrong one fails.
- ``rank``: no generation. ``expected`` and every ``wrong`` answer are scored as the
  continuation of the reply after ``reply_prefix`` (summed log-probability of their
  tokens); the canary passes when ``expected`` scores highest. Deterministic and
  style-proof, but it checks the knowledge *inside a fixed frame*, not what the model
  says: on smollm2-135m an over-trained update turned 5 of the 29 shipped canaries'
  greedy answers wrong while all their ranks held. Not cheaper on a CPU either: one
  forward pass over prompt + prefix per answer (1 + len(wrong) per canary).
- ``logprob`` lines (and raw continuations by default) are not judged here: they go
  through the configured scorer with a per-line ``tolerance`` (`seal_agent.gate.decision`).

`decide_canaries` compares each canary's pass/fail under the candidate with its
*reference*: the current adapter (or the base model), or -- with ``GateConfig.anchor_past``
-- its anchor, whether it ever passed under a committed adapter, so that canaries lost one
or two per update cannot add up. Canaries that fail under the reference judge nothing
(they are counted, not held against the candidate). The candidate is judged forgetting
when more than ``floor(canary_max_flip_share * n_judged)`` canaries flip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from seal_agent.config import GateConfig
from seal_agent.gate.decision import Decision
from seal_agent.gate.scorers import _prompt_ids, continuation_logprobs, generate_answers, normalize_answer
from seal_agent.gate.suite import SuiteItem, canary_anchor_key

__all__ = ["CanaryOutcome", "allowed_flips", "answer_contains", "canary_outcomes", "decide_canaries",
           "is_behaviour_canary"]

_NAMED = 5  # flipped canaries named in a reason
_SHOWN = 80  # characters of an answer shown in a reason


def is_behaviour_canary(item: SuiteItem) -> bool:
    """A canary judged pass/fail here (``greedy`` or ``rank``), not by the scorers."""
    return item.kind == "canary" and item.check in ("greedy", "rank")


@dataclass
class CanaryOutcome:
    """How one canary fared under one model.

    Attributes:
        passed: The check passed.
        answer: The greedy answer (``greedy``), or "" (``rank``).
        margin: ``rank``: log-probability of ``expected`` minus that of the best wrong
            answer (> 0 passes); ``greedy``: None.
    """

    passed: bool
    answer: str = ""
    margin: float | None = None

    def shown(self) -> str:
        if self.margin is not None:
            return f"margin {self.margin:+.2f}"
        text = " ".join(self.answer.split())
        return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


def answer_contains(answer: str, expected: str, aliases: Sequence[str] = ()) -> bool:
    """Whether the normalised `answer` contains the normalised `expected` (or an alias) as whole words."""
    text = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(e)} " in text for e in (expected, *aliases) if normalize_answer(e))


def canary_outcomes(model: Any, tokenizer: Any, items: Sequence[SuiteItem], *, max_new_tokens: int,
                    batch_size: int = 16) -> list[CanaryOutcome]:
    """Run each greedy/rank canary's check under `model` (its active adapter), in order."""
    out: list[CanaryOutcome | None] = [None] * len(items)
    greedy = [i for i, it in enumerate(items) if it.check == "greedy"]
    rank = [i for i, it in enumerate(items) if it.check == "rank"]
    if len(greedy) + len(rank) != len(items):
        raise ValueError("canary_outcomes takes greedy and rank canaries only")
    if greedy:
        answers = generate_answers(model, tokenizer, [items[i] for i in greedy], max_new_tokens=max_new_tokens,
                                   batch_size=batch_size)
        for i, a in zip(greedy, answers, strict=True):
            out[i] = CanaryOutcome(passed=answer_contains(a, items[i].expected, items[i].aliases), answer=a)
    if rank:
        for i, margin in zip(rank, _rank_margins(model, tokenizer, [items[i] for i in rank], batch_size),
                             strict=True):
            out[i] = CanaryOutcome(passed=margin > 0, margin=margin)
    return out  # type: ignore[return-value]


@torch.no_grad()
def _rank_margins(model: Any, tokenizer: Any, items: Sequence[SuiteItem], batch_size: int) -> list[float]:
    rows: list[tuple[list[int], list[int]]] = []
    spans: list[tuple[int, int]] = []  # per item: [first row, end row) -- expected first, then wrong ones
    for it in items:
        prefix = it.reply_prefix
        stem = prefix.rstrip()
        # Trailing whitespace joins the answer: " Paris" is one token where "Paris" after
        # "is " would not be -- the ids a model produces itself.
        head = list(_prompt_ids(tokenizer, it)) + (list(tokenizer(stem, add_special_tokens=False)["input_ids"])
                                                   if stem else [])
        lead = prefix[len(stem):] if stem else ""
        first = len(rows)
        for answer in (it.expected, *it.wrong):
            rows.append((head, list(tokenizer(lead + answer, add_special_tokens=False)["input_ids"])))
        spans.append((first, len(rows)))
    scores = continuation_logprobs(model, rows, reduce="sum", batch_size=batch_size)
    return [scores[a] - max(scores[a + 1 : b]) for a, b in spans]


def allowed_flips(config: GateConfig, n_judged: int) -> int:
    """How many of `n_judged` canaries may flip: ``floor(canary_max_flip_share * n_judged)``."""
    return math.floor(config.canary_max_flip_share * n_judged + 1e-9)


def decide_canaries(
    items: Sequence[SuiteItem],
    current: Sequence[CanaryOutcome],
    candidate: Sequence[CanaryOutcome],
    config: GateConfig,
    *,
    anchors: Mapping[str, Mapping[str, float]] | None = None,
) -> Decision:
    """Judge greedy/rank canaries: forgetting when more of them flip than allowed.

    Args:
        items: The canaries (``greedy`` or ``rank``).
        current: Their outcomes under the current adapter (or the base model).
        candidate: Their outcomes under the candidate.
        config: ``canary_max_flip_share``.
        anchors: The suite's anchors (``GateConfig.anchor_past``): a canary that ever
            passed under a committed adapter is held to passing. None: the current only.

    Returns:
        A `Decision` named ``"canaries"``: ``forgetting`` names the flipped canaries when
        too many flipped; ``notes`` says how the canaries fared otherwise; ``metrics``
        has ``n``, ``n_judged``, ``passing_current``, ``passing_candidate``, ``flipped``,
        ``allowed_flips``, ``gained`` and ``checks``.
    """
    dec = Decision(scorer="canaries")
    ref = []
    for it, cur in zip(items, current, strict=True):
        anchored = anchors is not None and anchors.get(canary_anchor_key(it), {}).get(it.check, 0.0) >= 1.0
        ref.append(cur.passed or anchored)
    judged = [i for i, r in enumerate(ref) if r]
    flipped = [i for i in judged if not candidate[i].passed]
    gained = [i for i, r in enumerate(ref) if not r and candidate[i].passed]
    allowed = allowed_flips(config, len(judged))
    dec.flipped = {items[i].id for i in flipped}
    checks = sorted({it.check for it in items})
    dec.metrics = {
        "n": len(items), "n_judged": len(judged), "checks": checks,
        "passing_current": sum(c.passed for c in current), "passing_candidate": sum(c.passed for c in candidate),
        "flipped": [items[i].id for i in flipped], "allowed_flips": allowed,
        "gained": [items[i].id for i in gained], "anchored": anchors is not None,
    }
    how = "/".join(checks)
    named = "; ".join(f"{items[i].id} ({items[i].preview!r}: {current[i].shown()} -> {candidate[i].shown()})"
                      for i in flipped[:_NAMED])
    more = f" and {len(flipped) - _NAMED} more" if len(flipped) > _NAMED else ""
    against = " (against the best committed result)" if anchors is not None else ""
    if len(flipped) > allowed:
        dec.forgetting.append(
            f"canaries: {len(flipped)} of {len(judged)} went from right to wrong{against}, more than the "
            f"{allowed} allowed (gate.canary_max_flip_share {config.canary_max_flip_share:g}, {how} check): "
            f"{named}{more}")
    elif flipped:
        dec.notes.append(f"canaries: {len(flipped)} of {len(judged)} went from right to wrong{against}, within "
                         f"the {allowed} allowed ({how} check): {named}{more}")
    elif judged:
        dec.notes.append(f"canaries: none of {len(judged)} went from right to wrong ({how} check)")
    if len(judged) < len(items):
        dec.notes.append(f"canaries: {len(items) - len(judged)} of {len(items)} fail under the current adapter "
                         "already and judge nothing" + (f" ({len(gained)} now pass)" if gained else ""))
    return dec
