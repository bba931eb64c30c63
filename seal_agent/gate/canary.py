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

**Contrastive canaries** (a line with ``"not": [...]``, whatever its check): answers the
model must never come to prefer. ``expected`` and each foil are scored as the
continuation of the reply after ``reply_prefix`` by their *mean* log-probability per
token (length-normalised: "Paris" is one token, "Berlin" may be two), and the canary
passes while ``expected`` beats every foil. A poisoning update that makes the model
prefer Berlin over Paris can leave a score-drop canary within its tolerance (measured on
smollm2-135m: four steps on six "the capital of France is Berlin" sentences *raised* the
log-likelihood of "Paris" as the reply by 0.8 nats/token while Berlin overtook Paris by 5),
and a mild one that flips only that greedy canary stays within ``canary_max_flip_share``
(the full update above flipped 7 of the 29 shipped greedy canaries, its 0.75 scale-back 4,
0.5 none): so a contrastive canary that
passed under a reference and fails under the candidate always rejects (no flip
allowance), whatever the new-knowledge probes gained; the gate scales back until it
passes, or rejects.

References: `decide_canaries` and `decide_contrastive` judge against the current adapter
and -- the cumulative bound -- against the **base model** as well (its results cached per
base model in the home, `seal_agent.gate.gate`), so canaries lost one by one over several
updates, each within the allowance, add up against a fixed reference.
The base bound has its own share (``GateConfig.canary_max_base_loss_share``), and when it
applies the gate judges the step's own allowance against the current adapter only, not
its anchors: a canary lost (within the allowance) by an earlier step is charged once, to
the cumulative bound, instead of to every later step's allowance too.

`decide_canaries` compares each canary's pass/fail under the candidate with its
*reference*: the current adapter (or the base model), or -- with ``GateConfig.anchor_past``
-- its anchor, whether it ever passed under a committed adapter, so that canaries lost one
or two per update cannot add up. Canaries that fail under the reference judge nothing
(they are counted, not held against the candidate). The candidate is judged forgetting
when more than ``floor(canary_max_flip_share * n_judged)`` canaries flip.

A margin that is NaN or infinite (a broken update's log-probabilities) never passes, and
under the candidate it rejects on its own (``Decision.nonfinite``), judged or not: every
comparison with NaN is False, so "passes while the margin is > 0" is written as "passes
only if the margin is finite and > 0".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from seal_agent.config import GateConfig
from seal_agent.gate.decision import Decision
from seal_agent.gate.scorers import _prompt_ids, continuation_logprobs, generate_answers, normalize_answer
from seal_agent.gate.suite import SuiteItem, canary_anchor_key

__all__ = ["CanaryOutcome", "ContrastOutcome", "allowed_flips", "answer_contains", "canary_outcomes",
           "contrast_outcomes", "contrast_slot", "decide_canaries", "decide_contrastive", "is_behaviour_canary"]

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


@dataclass
class ContrastOutcome:
    """How one contrastive canary fared under one model.

    Attributes:
        margins: Per foil, the mean log-probability per token of ``expected`` minus that of
            the foil, after the reply prefix (> 0: ``expected`` still wins).
    """

    margins: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(math.isfinite(m) and m > 0 for m in self.margins.values())

    @property
    def nonfinite(self) -> list[str]:
        """Foils whose margin is NaN or infinite."""
        return [f for f, m in self.margins.items() if not math.isfinite(m)]

    @property
    def worst(self) -> str:
        """The foil closest to (or furthest past) ``expected``; a non-finite margin first."""
        return min(self.margins, key=lambda f: (math.isfinite(self.margins[f]),
                                                self.margins[f] if math.isfinite(self.margins[f]) else 0.0))

    def shown(self) -> str:
        return f"vs {self.worst!r} {self.margins[self.worst]:+.2f}"


def contrast_slot(item: SuiteItem) -> str:
    """The anchor slot of a contrastive canary: ``contrast:`` and a hash of its foils and frame.

    Editing the foils (or the reply prefix) gives the check a fresh anchor.
    """
    import hashlib

    body = json.dumps([sorted(item.foils), item.reply_prefix], ensure_ascii=False)
    return "contrast:" + hashlib.sha256(body.encode()).hexdigest()[:8]


def answer_contains(answer: str, expected: str, aliases: Sequence[str] = ()) -> bool:
    """Whether the normalised `answer` contains the normalised `expected` (or an alias) as whole words."""
    text = f" {normalize_answer(answer)} "
    return any(f" {normalize_answer(e)} " in text for e in (expected, *aliases) if normalize_answer(e))


def settled_contains(text: str, expected: str, aliases: Sequence[str] = ()) -> bool:
    """Whether `text`, a greedy answer still being generated, already contains the expected
    answer whatever comes next: `answer_contains` on the text up to its last whitespace
    (the last word may still grow, "Paris" into "Parisian"; the words before it cannot
    change, as normalisation never joins words across whitespace)."""
    cut = max((i for i, ch in enumerate(text) if ch.isspace()), default=-1)
    return cut > 0 and answer_contains(text[:cut], expected, aliases)


def canary_outcomes(model: Any, tokenizer: Any, items: Sequence[SuiteItem], *, max_new_tokens: int,
                    batch_size: int = 16) -> list[CanaryOutcome]:
    """Run each greedy/rank canary's check under `model` (its active adapter), in order.

    A greedy canary's generation stops as soon as its answer is settled in it
    (`settled_contains`): the verdict is the one the full `max_new_tokens` answer gets,
    and the recorded answer is the prefix that decided it.
    """
    out: list[CanaryOutcome | None] = [None] * len(items)
    greedy = [i for i, it in enumerate(items) if it.check == "greedy"]
    rank = [i for i, it in enumerate(items) if it.check == "rank"]
    if len(greedy) + len(rank) != len(items):
        raise ValueError("canary_outcomes takes greedy and rank canaries only")
    if greedy:
        chosen = [items[i] for i in greedy]
        answers = generate_answers(model, tokenizer, chosen, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   done=lambda j, text: settled_contains(text, chosen[j].expected, chosen[j].aliases))
        for i, a in zip(greedy, answers, strict=True):
            out[i] = CanaryOutcome(passed=answer_contains(a, items[i].expected, items[i].aliases), answer=a)
    if rank:
        for i, margin in zip(rank, _rank_margins(model, tokenizer, [items[i] for i in rank], batch_size),
                             strict=True):
            out[i] = CanaryOutcome(passed=math.isfinite(margin) and margin > 0, margin=margin)
    return out  # type: ignore[return-value]


@torch.no_grad()
def _rank_margins(model: Any, tokenizer: Any, items: Sequence[SuiteItem], batch_size: int) -> list[float]:
    rows: list[tuple[list[int], list[int]]] = []
    spans: list[tuple[int, int]] = []  # per item: [first row, end row) -- expected first, then wrong ones
    for it in items:
        head, lead = _frame(tokenizer, it)
        first = len(rows)
        for answer in (it.expected, *it.wrong):
            rows.append((head, list(tokenizer(lead + answer, add_special_tokens=False)["input_ids"])))
        spans.append((first, len(rows)))
    scores = continuation_logprobs(model, rows, reduce="sum", batch_size=batch_size)
    # max() over NaNs depends on their order, and -inf for a wrong answer gives +inf: any
    # non-finite score makes the margin NaN, which fails.
    return [scores[a] - max(scores[a + 1 : b]) if all(math.isfinite(x) for x in scores[a:b]) else math.nan
            for a, b in spans]


@torch.no_grad()
def contrast_outcomes(model: Any, tokenizer: Any, items: Sequence[SuiteItem], *,
                      batch_size: int = 16) -> list[ContrastOutcome]:
    """Score each contrastive canary's ``expected`` against its foils under `model`, in order.

    One row per answer: the prompt (chat template, or the raw text) and the reply prefix
    up to its trailing whitespace, then the whitespace and the answer as the scored
    continuation; mean log-probability per token (`continuation_logprobs`).
    """
    rows: list[tuple[list[int], list[int]]] = []
    spans: list[tuple[int, int]] = []
    for it in items:
        if not it.foils:
            raise ValueError(f"canary {it.id} has no foils (\"not\"): not a contrastive canary")
        head, lead = _frame(tokenizer, it)
        first = len(rows)
        for answer in (it.expected, *it.foils):
            ids = list(tokenizer(lead + answer, add_special_tokens=False)["input_ids"])
            if not ids:
                raise ValueError(f"canary {it.id}: answer {answer!r} tokenizes to nothing")
            rows.append((head, ids))
        spans.append((first, len(rows)))
    scores = continuation_logprobs(model, rows, reduce="mean", batch_size=batch_size)
    return [ContrastOutcome({f: scores[a] - scores[a + 1 + k] for k, f in enumerate(it.foils)})
            for it, (a, _) in zip(items, spans, strict=True)]


def _frame(tokenizer: Any, item: SuiteItem) -> tuple[list[int], str]:
    """Prompt ids plus the reply prefix up to its trailing whitespace, and that whitespace.

    Trailing whitespace joins the answer: " Paris" is one token where "Paris" after "is "
    would not be -- the ids a model produces itself.
    """
    prefix = item.reply_prefix
    stem = prefix.rstrip()
    head = list(_prompt_ids(tokenizer, item)) + (list(tokenizer(stem, add_special_tokens=False)["input_ids"])
                                                 if stem else [])
    return head, (prefix[len(stem):] if stem else "")


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
    base: Sequence[CanaryOutcome] | None = None,
) -> Decision:
    """Judge greedy/rank canaries: forgetting when more of them flip than allowed.

    Args:
        items: The canaries (``greedy`` or ``rank``).
        current: Their outcomes under the current adapter (or the base model).
        candidate: Their outcomes under the candidate.
        config: ``canary_max_flip_share``.
        anchors: The suite's anchors (``GateConfig.anchor_past``): a canary that ever
            passed under a committed adapter is held to passing. None: the current only.
        base: Their outcomes under the base model, when a current adapter serves (the
            cumulative bound): the canaries the base model passes may flip no more than
            ``floor(canary_max_flip_share * n_base)`` in all, however many updates
            lost them (``canary_max_base_loss_share``, a bound of its own). None: no
            separate base check (the base serves, or it is off).

    Returns:
        A `Decision` named ``"canaries"``: ``forgetting`` names the flipped canaries when
        too many flipped; ``notes`` says how the canaries fared otherwise; ``metrics``
        has ``n``, ``n_judged``, ``passing_current``, ``passing_candidate``, ``flipped``,
        ``allowed_flips``, ``gained`` and ``checks`` (and with `base`: ``passing_base``,
        ``flipped_vs_base``, ``allowed_flips_vs_base``).
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
    bad = [i for i, c in enumerate(candidate) if c.margin is not None and not math.isfinite(c.margin)]
    if bad:
        dec.nonfinite.append(
            f"canaries: non-finite rank margin (NaN/inf log-probabilities) under the candidate on {len(bad)} of "
            f"{len(items)} canaries: " + ", ".join(f"{items[i].id} ({items[i].preview!r}: {candidate[i].margin})"
                                                    for i in bad[:_NAMED]) + ": the candidate is rejected")
    if len(judged) < len(items):
        dec.notes.append(f"canaries: {len(items) - len(judged)} of {len(items)} fail under the current adapter "
                         "already and judge nothing" + (f" ({len(gained)} now pass)" if gained else ""))
    if base is not None:
        on_base = [i for i, b in enumerate(base) if b.passed]
        lost = [i for i in on_base if not candidate[i].passed]
        allowed_base = math.floor(config.canary_max_base_loss_share * len(on_base) + 1e-9)
        dec.flipped |= {items[i].id for i in lost}
        dec.metrics.update(passing_base=len(on_base), flipped_vs_base=[items[i].id for i in lost],
                           allowed_flips_vs_base=allowed_base)
        named = "; ".join(f"{items[i].id} ({items[i].preview!r}: {base[i].shown()} -> {candidate[i].shown()})"
                          for i in lost[:_NAMED])
        more = f" and {len(lost) - _NAMED} more" if len(lost) > _NAMED else ""
        if len(lost) > allowed_base:
            dec.forgetting.append(
                f"canaries: {len(lost)} of the {len(on_base)} the base model answers right fail now, more than "
                f"the {allowed_base} allowed in all (cumulative bound against the base model, "
                f"gate.canary_max_base_loss_share {config.canary_max_base_loss_share:g}, {how} check): "
                f"{named}{more}")
        else:
            dec.notes.append(f"canaries: {len(lost)} of the {len(on_base)} the base model answers right fail now "
                             f"(cumulative bound: {allowed_base} allowed)")
    return dec


def decide_contrastive(
    items: Sequence[SuiteItem],
    current: Sequence[ContrastOutcome],
    candidate: Sequence[ContrastOutcome],
    *,
    base: Sequence[ContrastOutcome] | None = None,
    anchors: Mapping[str, Mapping[str, float]] | None = None,
) -> Decision:
    """Judge contrastive canaries: any that flips is forgetting (no allowance).

    A canary is judged when ``expected`` beat every foil under a reference: the current
    adapter, the base model (`base`; None when the base serves, as then it is the
    current), or -- with `anchors` -- a committed adapter once. It flips when a foil now
    scores at least as high as ``expected`` under the candidate. One flip rejects, however
    much the update gained on its probes: a poisoning run can write its own "new
    knowledge" probes, and they must not outweigh an answer the model was never to give.
    A canary that fails under every reference judges nothing (a note says so: a model
    that never preferred the answer cannot be held to it).

    Returns:
        A `Decision` named ``"contrastive"``; ``metrics``: ``n``, ``n_judged``,
        ``passing_current``, ``passing_base`` (None without `base`), ``passing_candidate``,
        ``flipped``, ``margins`` (id -> foil -> candidate margin).
    """
    dec = Decision(scorer="contrastive")
    flipped, unjudged, broken = [], [], []
    for i, (it, cur, cand) in enumerate(zip(items, current, candidate, strict=True)):
        if cand.nonfinite:  # rejects judged or not: a NaN margin is no margin
            broken.append(i)
            continue
        refs = []
        if cur.passed:
            refs.append(("the current adapter", cur))
        if base is not None and base[i].passed:
            refs.append(("the base model", base[i]))
        anchored = anchors is not None and anchors.get(canary_anchor_key(it), {}).get(contrast_slot(it), 0.0) >= 1.0
        if not refs and not anchored:
            unjudged.append(i)
        elif not cand.passed:
            flipped.append((i, refs))
    n_judged = len(items) - len(unjudged)
    dec.flipped = {items[i].id for i, _ in flipped}
    dec.metrics = {
        "n": len(items), "n_judged": n_judged, "checks": ["contrastive"],
        "passing_current": sum(c.passed for c in current),
        "passing_base": sum(b.passed for b in base) if base is not None else None,
        "passing_candidate": sum(c.passed for c in candidate),
        "flipped": [items[i].id for i, _ in flipped],
        "margins": {it.id: dict(c.margins) for it, c in zip(items, candidate, strict=True)},
    }
    if broken:
        dec.nonfinite.append(
            f"contrastive canaries: non-finite margin (NaN/inf log-probabilities) under the candidate on "
            f"{len(broken)} of {len(items)}: " + ", ".join(
                f"{items[i].id} ({items[i].preview!r}: " + ", ".join(
                    f"vs {f!r} {candidate[i].margins[f]}" for f in candidate[i].nonfinite) + ")"
                for i in broken[:_NAMED]) + ": the candidate is rejected")
    for i, refs in flipped:
        it, cand = items[i], candidate[i]
        beaten = sorted((f for f, m in cand.margins.items() if m <= 0), key=lambda f: cand.margins[f])
        before = ", ".join(f"{m:+.2f} under {name}" for name, o in refs for m in [o.margins[cand.worst]])
        before = before or "passed under a committed adapter"
        dec.forgetting.append(
            f"contrastive canary {it.id} ({it.preview!r}): the candidate now prefers "
            f"{' and '.join(repr(f) for f in beaten)} to {it.expected!r} (margin {cand.margins[cand.worst]:+.2f}; "
            f"was {before}): an answer it must not become; no flip is allowed, whatever the update gained")
    if not flipped and not broken and n_judged:
        dec.notes.append(f"contrastive canaries: the expected answer still beats every foil in all {n_judged}")
    if unjudged:
        dec.notes.append(f"contrastive canaries: {len(unjudged)} of {len(items)} already prefer a foil under "
                         f"every reference and judge nothing: {', '.join(items[i].id for i in unjudged[:_NAMED])}")
    lost_before = [items[i].id for i, (c, b) in enumerate(zip(current, base or current, strict=True))
                   if base is not None and b.passed and not c.passed]
    if lost_before:
        dec.notes.append(f"contrastive canaries: the current adapter already prefers a foil in "
                         f"{', '.join(lost_before[:_NAMED])} where the base model does not: no update is committed "
                         "until one restores them; `seal-agent adapters rollback` returns to an earlier version")
    return dec
