"""Learned facts: does the candidate still know what committed consolidations taught?

Every committed consolidation leaves its knowledge probes in the lineage's replay suite
(``learned`` items, `seal_agent.gate.suite.apply_learned`): a closed-book question and
the short answer that shows the fact is known. Every later gate asks each of them under
the current adapter and the candidate -- greedy, stopped as soon as the verdict is
settled, as greedy canaries are (`seal_agent.gate.canary.settled_contains`) -- and judges
two things:

- **Learned facts lost** (`decide_learned`): an item is right when the answer contains
  its expected answer and none of its ``negative`` answers (the old answers of a
  corrected fact: "the Tumbleweed" after the boat was renamed). A fact the *current*
  adapter answers right and the candidate does not is lost; more than
  ``floor(GateConfig.learned_max_flip_share * n_judged)`` lost is forgetting (scaled back,
  or rejected), the reason naming each fact. A fact the current adapter already gets
  wrong judges nothing: the candidate cannot lose what is not known.
- **Bleed** (`decide_bleed`): the answers this update teaches (its new items' expected
  answers) must not turn up where they do not belong. An earlier learned fact or a greedy
  canary whose candidate answer holds one of them, where the current adapter's answer did
  not, has bled (the measured case: after a correction taught "the Saltpetal", six
  unrelated questions were answered "The Saltpetal."). More than ``GateConfig.max_bleed``
  is forgetting. An item whose own expected (or alias) answer holds the new answer is not
  counted, nor new answers shorter than three characters (they match by chance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from seal_agent.config import GateConfig
from seal_agent.gate.canary import CanaryOutcome, answer_contains, settled_contains
from seal_agent.gate.decision import Decision
from seal_agent.gate.scorers import generate_answers, normalize_answer
from seal_agent.gate.suite import SuiteItem

__all__ = ["bleed_answers", "decide_bleed", "decide_learned", "is_right", "learned_outcomes"]

_NAMED = 5
_SHOWN = 80
_MIN_BLEED_CHARS = 3


def is_right(answer: str, item: SuiteItem) -> bool:
    """The answer holds the expected one (or an alias) and none of the item's negative answers."""
    return answer_contains(answer, item.expected, item.aliases) and not any(
        answer_contains(answer, neg) for neg in item.negative)


def learned_outcomes(model: Any, tokenizer: Any, items: Sequence[SuiteItem], *, max_new_tokens: int,
                     batch_size: int = 16) -> list[CanaryOutcome]:
    """Ask each learned item closed-book under `model` (its active adapter), greedy.

    A row stops once its verdict cannot change: the expected answer, or a negative one, is
    settled in it. A stop on the expected answer before a negative one could follow counts
    right, as it would for a reader who stops at the answer.
    """
    if not items:
        return []

    def done(j: int, text: str) -> bool:
        it = items[j]
        return settled_contains(text, it.expected, it.aliases) or any(
            settled_contains(text, neg) for neg in it.negative)

    answers = generate_answers(model, tokenizer, items, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               done=done)
    return [CanaryOutcome(passed=is_right(a, it), answer=a) for it, a in zip(items, answers, strict=True)]


def _shown(answer: str) -> str:
    text = " ".join(answer.split())
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


def allowed_learned_flips(config: GateConfig, n_judged: int) -> int:
    """How many of `n_judged` learned facts may be lost: ``floor(learned_max_flip_share * n)``."""
    return math.floor(config.learned_max_flip_share * n_judged + 1e-9)


def decide_learned(items: Sequence[SuiteItem], current: Sequence[CanaryOutcome],
                   candidate: Sequence[CanaryOutcome], config: GateConfig) -> Decision:
    """Judge the learned facts against the current adapter (see the module docstring).

    Returns:
        A `Decision` named ``"learned"``; ``metrics``: ``n``, ``n_judged`` (known under
        the current adapter), ``known_current``, ``known_candidate``, ``lost`` (ids),
        ``allowed``, ``gained`` (ids).
    """
    dec = Decision(scorer="learned")
    judged = [i for i, c in enumerate(current) if c.passed]
    lost = [i for i in judged if not candidate[i].passed]
    gained = [i for i, c in enumerate(current) if not c.passed and candidate[i].passed]
    allowed = allowed_learned_flips(config, len(judged))
    dec.flipped = {items[i].id for i in lost}
    dec.metrics = {"n": len(items), "n_judged": len(judged), "known_current": len(judged),
                   "known_candidate": sum(c.passed for c in candidate), "lost": [items[i].id for i in lost],
                   "allowed": allowed, "gained": [items[i].id for i in gained]}

    def name(i: int) -> str:
        it = items[i]
        neg = f", not {' / '.join(repr(n) for n in it.negative)}" if it.negative else ""
        return (f"{it.preview!r} -> {it.expected!r}{neg} (answered {_shown(current[i].answer)}, now "
                f"{_shown(candidate[i].answer)})")

    named = "; ".join(name(i) for i in lost[:_NAMED])
    more = f" and {len(lost) - _NAMED} more" if len(lost) > _NAMED else ""
    if len(lost) > allowed:
        dec.forgetting.append(
            f"learned facts: {len(lost)} of the {len(judged)} the current adapter knows are lost, more than the "
            f"{allowed} allowed (gate.learned_max_flip_share {config.learned_max_flip_share:g}): {named}{more}")
    elif lost:
        dec.notes.append(f"learned facts: {len(lost)} of {len(judged)} lost, within the {allowed} allowed: "
                         f"{named}{more}")
    elif judged:
        dec.notes.append(f"learned facts: all {len(judged)} the current adapter knows are kept")
    if len(judged) < len(items):
        dec.notes.append(f"learned facts: {len(items) - len(judged)} of {len(items)} are not known under the "
                         "current adapter and judge nothing" + (f" ({len(gained)} now known)" if gained else ""))
    return dec


def bleed_answers(new_items: Iterable[SuiteItem]) -> list[str]:
    """The normalised new answers of an update that bleed is looked for (long enough not to match by chance)."""
    out: list[str] = []
    for it in new_items:
        a = normalize_answer(it.expected)
        if len(a.replace(" ", "")) >= _MIN_BLEED_CHARS and a not in out:
            out.append(a)
    return out


def decide_bleed(items: Sequence[SuiteItem], current: Sequence[str], candidate: Sequence[str],
                 new_answers: Sequence[str], config: GateConfig) -> Decision:
    """Judge specificity: earlier items answered with one of this update's new answers.

    Args:
        items: Earlier learned facts and greedy canaries.
        current: Their answers under the current adapter.
        candidate: Their answers under the candidate.
        new_answers: `bleed_answers` of this update's new items.
        config: ``max_bleed``.

    Returns:
        A `Decision` named ``"bleed"``; ``metrics``: ``n``, ``n_judged`` (0: bleed alone
        never makes a verdict "judged"), ``bled`` (id -> the new answer found), ``allowed``.
    """
    dec = Decision(scorer="bleed")
    bled: dict[str, str] = {}
    shown: list[str] = []
    for it, cur, cand in zip(items, current, candidate, strict=True):
        for ans in new_answers:
            own = any(answer_contains(x, ans) or answer_contains(ans, x) for x in (it.expected, *it.aliases))
            if own or not answer_contains(cand, ans) or answer_contains(cur, ans):
                continue
            bled[it.id] = ans
            shown.append(f"{it.id} ({it.preview!r}: {_shown(cur)} -> {_shown(cand)}, holds {ans!r})")
            break
    dec.flipped = set(bled)
    dec.metrics = {"n": len(items), "n_judged": 0, "bled": bled, "allowed": config.max_bleed,
                   "new_answers": list(new_answers)}
    more = f" and {len(shown) - _NAMED} more" if len(shown) > _NAMED else ""
    if len(bled) > config.max_bleed:
        dec.forgetting.append(
            f"bleed: {len(bled)} earlier questions are now answered with this update's new answers, more than "
            f"gate.max_bleed {config.max_bleed}: {'; '.join(shown[:_NAMED])}{more}")
    elif bled:
        dec.notes.append(f"bleed: {len(bled)} earlier questions answered with a new answer (allowed "
                         f"{config.max_bleed}): {'; '.join(shown[:_NAMED])}{more}")
    elif new_answers and items:
        dec.notes.append(f"bleed: none of {len(items)} earlier questions answered with this update's "
                         f"{len(new_answers)} new answers")
    return dec
