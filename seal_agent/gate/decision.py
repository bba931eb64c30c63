"""The decision rule: paired score changes in, a verdict with reasons and metrics out.

For one scorer, given each item's score under the current adapter and the candidate
(delta = candidate - current, so negative is worse):

- **forgetting** -- reject when
  - the mean delta over past tasks is below ``-max_regression``;
  - more than ``max_flips`` past tasks go from right to wrong (bounded scorers:
    current >= 0.5 and candidate < 0.5; unbounded ``logprob``: delta < -``flip_margin``);
  - any ``logprob`` canary's delta is below minus its tolerance (per line, default
    ``canary_tolerance``), against the current adapter and -- with `base` scores (the
    cumulative bound, ``GateConfig.canary_against_base``) -- against the base model
    too, so that drops each within the tolerance cannot add up over updates. Greedy,
    rank and contrastive canaries are judged pass/fail by `seal_agent.gate.canary`, not here.
- **no gain** -- reject when there are probes and their mean delta does not exceed
  ``min_gain``: an update must show a gain on what it was meant to teach.
- **non-finite** -- reject when any score the rule reads is NaN or infinite (under the
  candidate, the current adapter, an anchor or the base model), naming the measure and
  the items: every comparison with NaN is False, so "reject when the mean falls below
  the limit" would pass a NaN mean (an all-NaN adapter was committed that way). A
  non-finite score is never compared; each check passes only if its value is finite
  and within its limit. Scaling back does not repair such a candidate, so it is not tried.

Anchors: with `references` given (``GateConfig.anchor_past``), a past task is compared
with max(current score, its anchor) -- the best score it ever had under a committed
adapter -- so that small regressions, each within the limits, cannot add up across
updates. An adapter that passed leaves room for a candidate equal to itself, so
scale-back (which moves toward the current adapter) can always find a passing update.

With no past tasks the candidate is judged on the probes and canaries alone
(`seal_agent.gate.Gate` says what decided, and refuses -- or flags ``unverified`` -- a
candidate with nothing at all to judge it on). Paired bootstrap 95% confidence
intervals of the mean deltas are reported (resampling items, keeping each item's
current/candidate pair together); they inform the report, the rule itself uses the
point estimates so that it stays predictable with the handful of items a young memory
has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seal_agent.config import GateConfig
from seal_agent.gate.suite import SuiteItem

__all__ = ["Decision", "decide", "paired_bootstrap_ci"]

NO_PAST_NOTE = "no past tasks yet"
"""How the note that begins a report judged without past tasks starts."""
_NAMED = 5  # regressed items named in a reason


@dataclass
class Decision:
    """One scorer's verdict.

    Attributes:
        scorer: Scorer name.
        forgetting: Reasons the candidate forgot something (empty: it did not).
        no_gain: Reasons the candidate did not learn enough (empty: it did, or no probes).
        nonfinite: Reasons a measure was NaN or infinite (empty: every score was finite).
        notes: Remarks that are not failures (e.g. no past tasks).
        metrics: Means, deltas, CIs, flips, canary deltas.
        flipped: Ids of past items that went right -> wrong.
    """

    scorer: str
    forgetting: list[str] = field(default_factory=list)
    no_gain: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    flipped: set[str] = field(default_factory=set)

    @property
    def passed(self) -> bool:
        return not self.forgetting and not self.no_gain and not self.nonfinite

    @property
    def reasons(self) -> list[str]:
        return self.nonfinite + self.forgetting + self.no_gain


def paired_bootstrap_ci(
    deltas: Sequence[float], *, samples: int, seed: int, level: float = 0.95
) -> list[float] | None:
    """Percentile bootstrap CI of the mean of paired deltas; None without data or samples, or
    with a non-finite delta (no interval says anything about a NaN)."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.size == 0 or samples <= 0 or not np.isfinite(d).all():
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(samples, d.size))  # [samples, n] resampled item indices
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def _fmt(item: SuiteItem, delta: float) -> str:
    return f"{item.preview!r} ({item.kind} {item.id}, {delta:+.3f})"


def decide(
    items: Sequence[SuiteItem],
    current: Sequence[float],
    candidate: Sequence[float],
    config: GateConfig,
    *,
    scorer: str,
    bounded: bool,
    references: Sequence[float | None] | None = None,
    require_gain: bool = True,
    base: Sequence[float | None] | None = None,
) -> Decision:
    """Apply the rule to one scorer's paired scores (see the module docstring).

    Args:
        items: The scored items (past, canary and probe, any order).
        current: Each item's score under the current adapter (or the base model).
        candidate: Each item's score under the candidate.
        config: Thresholds and bootstrap settings.
        scorer: Scorer name (prefixes the reasons).
        bounded: Scores in [0, 1] with >= 0.5 meaning right (else margin-based flips).
        references: Per item, the anchor of a past task (None: no anchor yet).
        require_gain: Apply ``min_gain`` to the probes (the deciding scorer, whose units
            ``min_gain`` is in); otherwise the gain is only reported.
        base: Per item, a ``logprob`` canary's score under the base model (None
            elsewhere, or no base bound): its drop below that is held to the tolerance too.
    """
    dec = Decision(scorer=scorer)
    m = dec.metrics
    cur, cand = np.asarray(current, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: NaN, reported below
        delta = cand - cur
    by_kind = {k: [i for i, it in enumerate(items) if it.kind == k and (k != "canary" or it.check == "logprob")]
               for k in ("past", "canary", "probe")}
    for kind, idx in by_kind.items():
        m[f"n_{kind}"] = len(idx)

    past = by_kind["past"]
    # What forgetting is measured against: the current score, or the anchor when higher.
    # A non-finite anchor (from a report written before NaN was refused) is no anchor.
    ref = cur.copy()
    if references is not None:
        for i in past:
            r = references[i]
            if r is not None and math.isfinite(r) and math.isfinite(cur[i]):
                ref[i] = max(cur[i], float(r))
    with np.errstate(invalid="ignore", over="ignore"):
        drift = cand - ref
    if past:
        d = drift[past]
        mean = float(d.mean())
        m["replay_drift"] = mean
        m["anchored"] = references is not None
        m["replay_mean_current"] = float(cur[past].mean())
        m["replay_mean_candidate"] = float(cand[past].mean())
        m["replay_delta"] = mean
        m["replay_delta_ci"] = paired_bootstrap_ci(d, samples=config.bootstrap_samples, seed=config.seed)
        bad = _nonfinite_reason(scorer, f"mean replay change ({mean})", items, past, cur, cand)
        if bad is not None:
            dec.nonfinite.append(bad)
        judged = [i for i in past if math.isfinite(drift[i])]  # the others are named as non-finite
        worst = sorted(judged, key=lambda i: drift[i])
        if math.isfinite(mean) and not mean >= -config.max_regression:
            named = ", ".join(_fmt(items[i], drift[i]) for i in worst[:_NAMED] if drift[i] < 0)
            against = "their best committed scores" if references is not None else "the current adapter"
            dec.forgetting.append(
                f"{scorer}: mean replay score fell by {-mean:.3f} against {against} "
                f"(limit {config.max_regression:g}) over {len(past)} past tasks; most regressed: {named}")
        if bounded:
            flipped = [i for i in judged if ref[i] >= 0.5 and cand[i] < 0.5]
        else:
            flipped = [i for i in judged if drift[i] < -config.flip_margin]
        dec.flipped = {items[i].id for i in flipped}
        m["flips"] = len(flipped)
        m["flipped_ids"] = [items[i].id for i in flipped]
        if len(flipped) > config.max_flips:
            flipped.sort(key=lambda i: drift[i])
            named = ", ".join(_fmt(items[i], drift[i]) for i in flipped[:_NAMED])
            more = f" and {len(flipped) - _NAMED} more" if len(flipped) > _NAMED else ""
            dec.forgetting.append(
                f"{scorer}: {len(flipped)} past tasks went from right to wrong (limit {config.max_flips}): "
                f"{named}{more}")
        if not dec.forgetting and not dec.nonfinite:
            dec.notes.append(f"{scorer}: {len(past)} past tasks: mean change {mean:+.3f} (limit "
                             f"-{config.max_regression:g}), {len(flipped)} went from right to wrong "
                             f"(limit {config.max_flips})")
    else:
        m["flips"] = 0

    canaries = by_kind["canary"]
    m["canary_deltas"] = {items[i].id: float(delta[i]) for i in canaries}
    base_delta = {i: float(cand[i]) - float(base[i]) for i in canaries  # type: ignore[arg-type]
                  if base is not None and base[i] is not None}
    if base is not None:
        m["canary_base_deltas"] = {items[i].id: d for i, d in base_delta.items()}
    failed = []
    for i in canaries:
        tol = items[i].tolerance if items[i].tolerance is not None else config.canary_tolerance
        if not math.isfinite(delta[i]) or (i in base_delta and not math.isfinite(base_delta[i])):
            failed.append(items[i].id)  # named in the non-finite reason below
        elif not delta[i] >= -tol:
            failed.append(items[i].id)
            dec.forgetting.append(f"{scorer}: canary {_fmt(items[i], delta[i])} regressed beyond its "
                                  f"tolerance {tol:g}")
        elif i in base_delta and not base_delta[i] >= -tol:
            failed.append(items[i].id)
            dec.forgetting.append(f"{scorer}: canary {_fmt(items[i], base_delta[i])} fell below its score under "
                                  f"the base model by more than its tolerance {tol:g} (cumulative bound: each "
                                  "update stayed within it against the one before)")
    m["canary_failed"] = failed
    bad = _nonfinite_reason(scorer, "logprob canary change", items, canaries, cur, cand, base)
    if bad is not None:
        dec.nonfinite.append(bad)

    probes = by_kind["probe"]
    if probes:
        d = delta[probes]
        gain = float(d.mean())
        m["probe_mean_current"] = float(cur[probes].mean())
        m["probe_mean_candidate"] = float(cand[probes].mean())
        m["probe_gain"] = gain
        m["probe_gain_ci"] = paired_bootstrap_ci(d, samples=config.bootstrap_samples, seed=config.seed + 1)
        bad = _nonfinite_reason(scorer, f"new-knowledge gain ({gain})", items, probes, cur, cand)
        if bad is not None:  # whichever scorer: a NaN gain is never "reported only"
            dec.nonfinite.append(bad)
        elif not require_gain:
            dec.notes.append(f"{scorer}: new-knowledge gain {gain:+.3f} on {len(probes)} probes "
                             "(reported; min_gain applies to the deciding scorer)")
        elif not gain > config.min_gain:
            dec.no_gain.append(f"{scorer}: new-knowledge gain {gain:+.3f} on {len(probes)} probes does not "
                               f"exceed min_gain {config.min_gain:g}: the update did not learn what it was "
                               "meant to teach")
        else:
            dec.notes.append(f"{scorer}: new-knowledge gain {gain:+.3f} on {len(probes)} probes "
                             f"(required > {config.min_gain:g})")
    return dec


def _nonfinite_reason(scorer: str, measure: str, items: Sequence[SuiteItem], idx: Sequence[int],
                      cur: np.ndarray, cand: np.ndarray, base: Sequence[float | None] | None = None) -> str | None:
    """Which of `idx` scored NaN/inf under which model, as a reason naming `measure`; None if none did."""
    parts = []
    for who, values in (("the candidate", cand), ("the current adapter", cur), ("the base model", base)):
        if values is None:
            continue
        bad = [i for i in idx if values[i] is not None and not math.isfinite(values[i])]
        if bad:
            named = ", ".join(f"{items[i].preview!r} ({items[i].kind} {items[i].id}: {float(values[i])})"
                              for i in bad[:_NAMED])
            more = f" and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
            parts.append(f"{len(bad)} of {len(idx)} {items[bad[0]].kind} items under {who} ({named}{more})")
    if not parts:
        return None
    return (f"{scorer}: non-finite {measure}: NaN/inf scores on {'; '.join(parts)}. A non-finite score is "
            "never compared with a limit: the candidate is rejected")
