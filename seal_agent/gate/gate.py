"""`Gate`: judge a candidate adapter against the current one, and scale it back if needed.

One `Gate.evaluate` call:

1. assembles the items: the lineage's persisted replay suite (built from the
   consolidated interactions on first use) minus the items that the interactions
   being consolidated now supersede, the canaries (``GateConfig.canary_file``, else the
   set shipped for the served model), and this consolidation's probes;
2. refuses a candidate whose weights hold NaN or +-inf values before anything is scored
   (and any candidate while the serving adapter's weights do: roll back first);
   with nothing at all to judge on, refuses the candidate -- or, with
   ``GateConfig.allow_unverified``, passes it flagged ``unverified`` -- without loading it;
3. loads the candidate (and the current adapter, if any) as named adapters of one
   `PeftModel` around the given base model, and scores every item under both: past
   tasks, probes and ``logprob`` canaries with every scorer (the configured one, the
   judge when given, user scorers), greedy/rank canaries pass/fail, contrastive canaries
   (a line's ``"not"`` answers) by their margins (`seal_agent.gate.canary`); with a
   current adapter and ``GateConfig.canary_against_base``, the canaries under the base
   model too (the cumulative bound) -- cached per base model in
   ``home/gate/base-canaries/<fingerprint>.json``, so the base is scored once, not every run;
   The lineage's learned facts (what committed consolidations taught, minus those this
   update corrects) are asked closed-book under both (`seal_agent.gate.learned`): one
   the current adapter knows and the candidate does not is lost; this update's new
   answers turning up in earlier answers is bleed. Both take part in scale-back.
4. applies the decision rule per scorer (`seal_agent.gate.decision`) and the canary
   rules; a scorer that raises is skipped with a reason and the others decide. A
   contrastive canary that flips rejects whatever else passed, and so does any NaN or
   infinite score (the reason names the measure, the items and the model);
5. when the candidate fails *only* for forgetting, writes scaled-back adapters
   (`seal_agent.gate.scale`) for each ``GateConfig.scale_back`` factor, largest first,
   scores each, and keeps the first that passes;
6. returns a `GateReport` (never raises for a bad candidate) whose reasons say what
   decided -- how many past tasks, canaries and probes, which ones flipped -- and unloads
   the LoRA layers again so the base model is as it came.

`Gate.update_suite` runs after a commit: the newly consolidated interactions enter the
reservoir (and supersede older answers to the same questions), and the committed
report's scores raise the past tasks' and canaries' anchors.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seal_agent._compat import quiet_peft
from seal_agent._finite import adapter_nonfinite, describe_nonfinite, is_finite_number
from seal_agent._fs import write_atomic
from seal_agent.config import GateConfig
from seal_agent.errors import TrainingCancelled, ValidationError
from seal_agent.gate.canary import (
    CanaryOutcome,
    ContrastOutcome,
    canary_outcomes,
    contrast_outcomes,
    contrast_slot,
    decide_canaries,
    decide_contrastive,
    is_behaviour_canary,
)
from seal_agent.gate.decision import NO_PAST_NOTE, Decision, decide
from seal_agent.gate.learned import bleed_answers, decide_bleed, decide_learned, learned_outcomes
from seal_agent.gate.report import GateReport
from seal_agent.gate.scorers import (
    ExactScorer,
    F1Scorer,
    JudgeScorer,
    LogprobScorer,
    Scorer,
    ScoringContext,
    make_scorer,
)
from seal_agent.gate.suite import (
    ReplaySuite,
    SuiteItem,
    apply_learned,
    canary_anchor_key,
    load_canaries,
    probe_items,
    shipped_canary_file,
    taught_items,
)

if TYPE_CHECKING:
    from seal_agent.memory.records import Interaction
    from seal_agent.seal_memory import SealMemory
    from seal_agent.selfedit.base import Probe

__all__ = ["Gate"]

logger = logging.getLogger(__name__)

_Scores = dict[str, "list[float] | str"]  # scorer -> scores, or the reason it failed
_Decisions = dict[str, "Decision | str"]  # scorer -> decision, or the reason it was skipped
NOTHING_TO_JUDGE = "nothing to judge the update on: no past tasks, no canaries and no new-knowledge probes"
BASE_CACHE_VERSION = 1
"""Layout version of the base-model canary cache (``home/gate/base-canaries/*.json``)."""


@dataclass
class _Scored:
    """Everything scored under one model: scorer scores of the items, canary outcomes."""

    scores: _Scores = field(default_factory=dict)
    outcomes: list[CanaryOutcome] = field(default_factory=list)  # greedy/rank canaries
    contrasts: list[ContrastOutcome] = field(default_factory=list)  # contrastive canaries
    learned: list[CanaryOutcome] = field(default_factory=list)  # learned facts, asked closed-book


@dataclass
class _Base:
    """The canaries under the base model: outcomes, contrasts, and per scorer the items' scores
    (None for items that are not ``logprob`` canaries, or a scorer that failed)."""

    outcomes: list[CanaryOutcome]
    contrasts: list[ContrastOutcome]
    scores: dict[str, list[float | None]]


class Gate:
    """The validation gate of one adapter lineage.

    Args:
        memory: The memory whose consolidated interactions feed the replay suite
            (persisted in ``memory.home / "gate" / f"suite-{lineage}.json"``).
        config: Thresholds, scorer, replay size, canaries, scale-back factors.
        judge: A LangChain chat model grading answers yes/no; with ``config.scorer
            == "judge"`` it decides alone, otherwise it decides alongside the scorer.
        scorers: Extra deciding scorers by name: `Scorer` objects or callables
            ``fn(item, generated_text) -> float`` in [0, 1].
        lineage: Adapter lineage (``"global"``); names the suite file.
        model_name: The served model's name, which picks the shipped canaries when
            ``config.canary_file`` is None. Default: the evaluated model's
            ``config.name_or_path``, else ``memory.config.model.name_or_path``.

    Raises:
        ValidationError: Bad config type, lineage, ``scorer="judge"`` without a judge,
            or an unusable scorer.
    """

    def __init__(
        self,
        memory: SealMemory,
        config: GateConfig,
        *,
        judge: Any = None,
        scorers: Mapping[str, Scorer | Callable[[SuiteItem, str], float]] | None = None,
        lineage: str = "global",
        model_name: str | None = None,
        member: Callable[[tuple[str, ...]], bool] | None = None,
    ) -> None:
        if not isinstance(config, GateConfig):
            raise ValidationError("config", config, "must be a GateConfig")
        self.memory = memory
        self.config = config
        self.lineage = lineage
        self.model_name = model_name
        self.member = member  # which namespaces' past tasks belong to this lineage (None: all)
        self.suite_path = ReplaySuite.path_for(memory.home, lineage)
        ReplaySuite(lineage, config.replay_size)  # validates the lineage name
        self.scorers: dict[str, Scorer] = {config.scorer: make_scorer(config.scorer, judge=judge)}
        if judge is not None and "judge" not in self.scorers:
            self.scorers["judge"] = JudgeScorer(judge)
        for name, spec in (scorers or {}).items():
            if not isinstance(name, str) or not name or name in self.scorers:
                raise ValidationError("scorers", name, "must be unique non-empty names (not the built-in in use)")
            self.scorers[name] = make_scorer(spec, name=name)
        self._lock = threading.Lock()  # the suite file: one writer at a time
        self._anchors: dict[str, dict[str, float]] | None = None  # of the evaluation under way
        self._base_stats: dict[str, Any] = {}  # of the evaluation under way: base canary cache use
        self._new_answers: list[str] = []  # of the evaluation under way: what bleed is looked for

    # ------------------------------------------------------------------ the suite

    def suite(self) -> ReplaySuite:
        """The persisted replay suite; built from the consolidated interactions on first use."""
        with self._lock:
            if self.suite_path.is_file():
                return ReplaySuite.load(self.suite_path, capacity=self.config.replay_size)
            suite = ReplaySuite(self.lineage, self.config.replay_size, self.config.seed)
            past = self.memory.list(status="consolidated")
            if self.member is not None:  # a namespace lineage is judged on its own past only
                past = [it for it in past if self.member(it.namespace)]
            n = suite.add(past)
            suite.save(self.suite_path)
            logger.info("gate: built the %s replay suite: %d of %d eligible past tasks",
                        self.lineage, len(suite.items), n)
            return suite

    def update_suite(self, committed_interactions: Iterable[Interaction],
                     report: GateReport | Mapping[str, Any] | None = None,
                     taught: Iterable[SuiteItem] = ()) -> int:
        """Add newly consolidated interactions to the persisted suite (reservoir sampling).

        Call after a commit with the interactions the committed adapter learned, and the
        gate report that let it through: its scores raise the past tasks' anchors. Older
        items the interactions answer differently are dropped as superseded. `taught`:
        the committed run's learned items (`seal_agent.gate.suite.taught_items`): they
        join the suite's learned facts for good, retiring the ones they correct.

        Returns:
            How many of them were eligible (accepted outcome, a final answer, not seen).
        """
        suite = self.suite()  # builds (and already includes them) on first use
        with self._lock:
            if report is not None:
                data = report.to_dict() if isinstance(report, GateReport) else report
                suite.record_scores(data.get("rows", []), str(data.get("scorer", self.config.scorer)))
            n = suite.add(list(committed_interactions))
            suite.learn(list(taught))
            suite.save(self.suite_path)
        return n

    def canary_source(self, model_name: str | None = None) -> Path | None:
        """The canary file in use: ``config.canary_file``, else the one shipped for the model.

        Args:
            model_name: The served model (default: ``model_name`` given to the gate, else
                ``memory.config.model.name_or_path``).

        Returns:
            None with ``canary_file = "none"``, or when no file is set and none ships for the model.
        """
        spec = self.config.canary_file
        if spec == "none":
            return None
        if spec is None:
            return shipped_canary_file(model_name or self.model_name or self._memory_model_name())
        path = Path(spec).expanduser()
        return path if path.is_absolute() else self.memory.home / path

    def canaries(self, model_name: str | None = None) -> list[SuiteItem]:
        """The canary items of `canary_source` (none when there is no canary file).

        Raises:
            ValidationError: The file is missing or malformed (naming line and field).
        """
        path = self.canary_source(model_name)
        if path is None:
            return []
        return load_canaries(path, default_tolerance=self.config.canary_tolerance,
                             default_check=self.config.canary_check)

    def _memory_model_name(self) -> str | None:
        config = getattr(self.memory, "config", None)
        return getattr(getattr(config, "model", None), "name_or_path", None)

    def _served_name(self, model: Any) -> str | None:
        if self.model_name is not None:
            return self.model_name
        name = getattr(getattr(model, "config", None), "name_or_path", None)
        return str(name) if name else self._memory_model_name()

    # ------------------------------------------------------------------ evaluate

    def evaluate(
        self,
        model: Any,
        tokenizer: Any,
        candidate_dir: Path,
        current_dir: Path | None,
        probes: Sequence[Probe],
        work_dir: Path,
        *,
        cancel_event: threading.Event | None = None,
        progress: bool = True,
        taught: Sequence[SuiteItem] = (),
    ) -> GateReport:
        """Judge the candidate adapter against the current one (or the base model).

        Args:
            model: A base model without adapters; the gate wraps it in a `PeftModel`
                and unloads the LoRA layers again before returning.
            tokenizer: Its tokenizer.
            candidate_dir: The candidate's PEFT adapter folder.
            current_dir: The serving adapter's folder; None when the base model serves.
            probes: New-knowledge probes of this consolidation (may be empty).
            work_dir: Where scaled-back adapters are written.
            cancel_event: When set, evaluation stops at the next phase and raises
                `TrainingCancelled` (the consolidation's cancellation error).
            progress: Log each phase at INFO level (else DEBUG).
            taught: This consolidation's learned items besides its probes (its ``self_qa``
                pairs and fact claims, `seal_agent.gate.suite.taught_items`): the earlier
                learned facts they correct are not held against it, and their answers are
                what bleed is looked for.

        Returns:
            A `GateReport`; a rejected candidate is a result, not an exception.

        Raises:
            ValidationError: A malformed canary file.
            AdapterError: An adapter folder cannot be read or does not fit the model.
            TrainingCancelled: `cancel_event` was set.
        """
        from peft import PeftModel

        log = logger.info if progress else logger.debug
        t_start = time.perf_counter()
        timings: dict[str, float] = {}

        def check_cancel(phase: str) -> None:
            if cancel_event is not None and cancel_event.is_set():
                raise TrainingCancelled(f"gate cancelled before {phase}; nothing was decided")

        # 0. Weights that hold NaN/inf: rejected unscored (cheap: one read of the LoRA tensors).
        broken = self._nonfinite_weights(Path(candidate_dir), current_dir)
        if broken is not None:
            logger.warning("gate: %s", broken)
            return self._report(False, [broken], {"nonfinite": [broken], "notes": []}, [], 1.0, None,
                                t_start, timings)

        # 1. Items.
        t = time.perf_counter()
        suite = self.suite()
        superseded = suite.superseded_by(self.memory.list(status="new"))
        gone = {item.id for item, _ in superseded}
        past = [it for it in suite.items if it.id not in gone]
        served = self._served_name(model)
        canary_path = self.canary_source(served)
        canaries = self.canaries(served)
        behaviour = [c for c in canaries if is_behaviour_canary(c)]  # judged pass/fail
        contrastive = [c for c in canaries if c.foils]  # judged by their margins over the foils
        items = past + [c for c in canaries if not is_behaviour_canary(c)] + probe_items(probes)  # by the scorers
        # Learned facts: the earlier ones this update does not correct are re-asked; the
        # answers of its new ones are what bleed is looked for.
        known = {x.id for x in suite.learned}
        new_learned = [x for x in taught_items(probes, [], {}) + list(taught) if x.id not in known]
        after, retired = apply_learned(suite.learned, new_learned)
        learned = [x for x in after if x.id in known]
        self._new_answers = bleed_answers(new_learned)
        self._anchors = suite.anchors if self.config.anchor_past else None
        timings["suite_seconds"] = time.perf_counter() - t
        notes = [f"past task {item.id} ({item.preview!r}) is superseded by the newer interaction {by}: "
                 "dropped from replay (a knowledge update is not forgetting)" for item, by in superseded]
        base_metrics: dict[str, Any] = {"superseded": [{"id": i.id, "superseded_by": by} for i, by in superseded],
                                        "suite_size": len(suite.items),
                                        "learned_size": len(suite.learned),
                                        "learned_retired": [{"id": o.id, "question": o.preview, "answer": o.expected,
                                                             "retired_by": by} for o, by in retired],
                                        "canary_file": str(canary_path) if canary_path is not None else None}
        notes += [f"learned fact {o.id} ({o.preview!r} -> {o.expected!r}) is corrected by this update ({by}): "
                  "re-asked with the new answer, the old one now wrong" for o, by in retired]
        if not items and not behaviour and not contrastive and not learned:
            return self._unjudged(notes, base_metrics, Path(candidate_dir), t_start, timings)
        fingerprint = model_fingerprint(model, tokenizer) if canaries else ""  # before LoRA layers go in

        check_cancel("loading adapters")
        t = time.perf_counter()
        with quiet_peft():
            peft = PeftModel.from_pretrained(model, str(candidate_dir), adapter_name="candidate")
        peft.eval()
        try:
            if current_dir is not None:
                with quiet_peft():
                    peft.load_adapter(str(current_dir), adapter_name="current")
            timings["load_seconds"] = time.perf_counter() - t

            # 2. Scores under the current adapter (or the base model) and the candidate.
            check_cancel("scoring the current adapter")
            t = time.perf_counter()
            cur = self._score(peft, "current" if current_dir is not None else None, tokenizer, items, behaviour,
                              contrastive, learned)
            timings["score_current_seconds"] = time.perf_counter() - t
            # The base model's canary results: the cumulative bound. With no current adapter
            # the base *is* the reference already (and its results fill the cache for later).
            base: _Base | None = None
            if canaries and self.config.canary_against_base:
                check_cancel("scoring the base model's canaries")
                t = time.perf_counter()
                cached = self._base_canaries(peft, tokenizer, fingerprint, items, behaviour, contrastive,
                                             cur if current_dir is None else None)
                base = cached if current_dir is not None else None
                base_metrics["base_canaries"] = {"fingerprint": fingerprint, "applied": base is not None,
                                                 **self._base_stats}
                timings["score_base_seconds"] = time.perf_counter() - t
            check_cancel("scoring the candidate")
            t = time.perf_counter()
            full = self._score(peft, "candidate", tokenizer, items, behaviour, contrastive, learned)
            timings["score_candidate_seconds"] = time.perf_counter() - t
            decisions = self._decide(items, cur.scores, full.scores, base)
            checks = self._decide_canaries(behaviour, contrastive, cur, full, base, learned)
            if not self._judges_anything(items, checks):
                metrics = {**base_metrics, **_check_metrics(checks)}
                check_notes = [n for c in checks for n in c.notes]
                return self._unjudged([*notes, *check_notes], metrics, Path(candidate_dir), t_start, timings)
            log("gate: candidate %s", "passes" if _passed(decisions, checks) else "fails")

            # 3. Scale back when the candidate fails only because it forgot.
            final, final_scored, scale, adapter_dir = decisions, full, 1.0, Path(candidate_dir)
            final_checks = checks
            attempts: list[dict[str, Any]] = []
            if _forgot_only(decisions, checks) and self.config.scale_back:
                t = time.perf_counter()
                max_rank = self._max_rank(Path(candidate_dir), current_dir)
                for i, s in enumerate(self.config.scale_back):
                    check_cancel(f"scale-back {s:g}")
                    from seal_agent.gate.scale import write_scaled_adapter

                    out = _fresh_dir(Path(work_dir) / f"candidate-scale-{s:g}")
                    written = write_scaled_adapter(candidate_dir, current_dir, s, out, max_rank=max_rank)
                    bad = _nonfinite_in(out)
                    if bad:  # e.g. an overflow where the factors were cast back: never scored or kept
                        why = f"the scaled-back adapter's weights hold NaN/inf values in {describe_nonfinite(bad)}"
                        attempts.append({"scale": s, "passed": False, "rank": written["rank"],
                                         "truncation_error": written["truncation_error"], "reasons": [why]})
                        log("gate: scale-back %g fails: %s", s, why)
                        shutil.rmtree(out, ignore_errors=True)
                        continue
                    name = f"scaled_{i}"
                    with quiet_peft():
                        peft.load_adapter(str(out), adapter_name=name)
                    scored = self._score(peft, name, tokenizer, items, behaviour, contrastive, learned)
                    dec = self._decide(items, cur.scores, scored.scores, base)
                    cdecs = self._decide_canaries(behaviour, contrastive, cur, scored, base, learned)
                    ok = _passed(dec, cdecs)
                    attempts.append({"scale": s, "passed": ok, "rank": written["rank"],
                                     "truncation_error": written["truncation_error"],
                                     "reasons": _reasons(dec, cdecs), **_headline(dec, cdecs)})
                    log("gate: scale-back %g %s", s, "passes" if ok else "fails")
                    if ok:
                        final, final_scored, scale, adapter_dir, final_checks = dec, scored, s, out, cdecs
                        break
                    shutil.rmtree(out, ignore_errors=True)  # ours, just written, not committable
                timings["scale_back_seconds"] = time.perf_counter() - t
        finally:
            peft.unload()  # removes the LoRA layers: the caller's base model is as it came

        passed = _passed(final, final_checks)
        reasons = list(notes)
        full_reasons = _reasons(decisions, checks)
        if scale != 1.0:
            reasons += [f"full update rejected: {r}" for r in full_reasons]
            reasons.append(f"scaled back to {scale:g} of the update: passes (a consolidation keeps the full "
                           "candidate as a staged version, for inspection)")
        elif not passed:
            reasons += full_reasons
            reasons += [f"scale-back {a['scale']:g} also fails: {'; '.join(a['reasons'])}" for a in attempts]
        for name, d in final.items():
            if isinstance(d, str):
                reasons.append(f"scorer {name} skipped: {d}")
        if items and not any(isinstance(d, Decision) for d in final.values()):
            passed = False
            reasons.append("every scorer failed: cannot judge the candidate")
        primary = self._primary(final)
        canary_dec = _find(final_checks, "canaries")
        contrast_dec = _find(final_checks, "contrastive")
        judged = self._judged_on(items, canary_dec, contrast_dec, _find(final_checks, "learned"))
        reasons.append(judged["text"])
        final_notes = ([*final[primary].notes] if primary is not None else []) + [  # type: ignore[union-attr]
            n for c in final_checks for n in c.notes]
        reasons += [n for n in final_notes if n not in reasons]
        metrics = dict(base_metrics)
        if primary is not None:
            metrics.update(final[primary].metrics)  # type: ignore[union-attr]
        metrics["notes"] = [judged["text"], *final_notes]
        metrics["judged_on"] = {k: v for k, v in judged.items() if k != "text"}
        metrics.update(_check_metrics(final_checks))
        metrics["scorers"] = {n: ({"skipped": d} if isinstance(d, str) else
                                  {"passed": d.passed, "reasons": d.reasons, "metrics": d.metrics})
                              for n, d in final.items()}
        if scale != 1.0:
            metrics["candidate_full"] = _headline(decisions, checks)
        metrics["scale_back"] = attempts
        metrics["nonfinite"] = [r for d in (*final.values(), *final_checks) if isinstance(d, Decision)
                                for r in d.nonfinite]
        rows = self._rows(items, cur.scores, final_scored.scores, final, primary) if primary is not None else []
        rows += self._canary_rows(behaviour, cur.outcomes, final_scored.outcomes, canary_dec)
        rows += self._contrast_rows(contrastive, cur.contrasts, final_scored.contrasts, contrast_dec,
                                    base.contrasts if base is not None else None)
        rows += self._learned_rows(learned, cur.learned, final_scored.learned, _find(final_checks, "learned"),
                                   _find(final_checks, "bleed"))
        return self._report(passed, reasons, metrics, rows, scale, adapter_dir if passed else None,
                            t_start, timings, scorer=primary or self.config.scorer)

    # ------------------------------------------------------------------ helpers

    def _score(self, peft: Any, adapter: str | None, tokenizer: Any, items: list[SuiteItem],
               canaries: list[SuiteItem], contrastive: list[SuiteItem], learned: list[SuiteItem]) -> _Scored:
        """Every scorer's scores of `items`, the canaries' outcomes and the learned facts' answers,
        under one adapter (None: base)."""
        out = _Scored()

        def run() -> None:
            if items:
                out.scores = self._scorer_scores(peft, tokenizer, items, self.scorers)
            if canaries:
                out.outcomes = canary_outcomes(peft, tokenizer, canaries, max_new_tokens=self.config.max_new_tokens)
            if contrastive:
                out.contrasts = contrast_outcomes(peft, tokenizer, contrastive)
            if learned:
                out.learned = learned_outcomes(peft, tokenizer, learned, max_new_tokens=self.config.max_new_tokens)

        if adapter is None:
            with peft.disable_adapter():
                run()
        else:
            peft.set_adapter(adapter)
            run()
        return out

    def _scorer_scores(self, model: Any, tokenizer: Any, items: list[SuiteItem],
                       scorers: Mapping[str, Scorer]) -> _Scores:
        out: _Scores = {}
        ctx = ScoringContext(model, tokenizer, items, max_new_tokens=self.config.max_new_tokens)
        for name, scorer in scorers.items():
            try:
                out[name] = scorer.score(ctx)
            except Exception as exc:  # a scorer's failure skips that scorer, never the gate
                logger.warning("gate: scorer %s failed (skipped): %s", name, exc)
                out[name] = f"{type(exc).__name__}: {exc}"
        return out

    # ------------------------------------------------------------------ the base model's canaries

    def base_cache_path(self, fingerprint: str) -> Path:
        """Where the canary results of the base model with `fingerprint` are cached."""
        return Path(self.memory.home) / "gate" / "base-canaries" / f"{fingerprint}.json"

    def _base_canaries(self, peft: Any, tokenizer: Any, fingerprint: str, items: list[SuiteItem],
                       behaviour: list[SuiteItem], contrastive: list[SuiteItem],
                       known: _Scored | None) -> _Base:
        """The canaries under the base model: from the cache, else scored (and cached).

        `known`: the results just scored under the base model (no current adapter): they
        are cached, nothing is scored. Entries are keyed by everything that decides a
        result (the canary line, the check, the generation budget), so an edited canary is
        scored afresh; scorers that may not be deterministic (a judge, user scorers) are
        never cached. A cache that cannot be read is rebuilt (with a warning).
        """
        path = self.base_cache_path(fingerprint)
        entries: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("format_version") == BASE_CACHE_VERSION and data.get("fingerprint") == fingerprint:
                    entries = {str(k): v for k, v in dict(data["entries"]).items() if _valid_entry(v)}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning("gate: base-model canary cache %s unreadable (%s): scoring the base again", path, exc)
        cacheable = {n for n, s in self.scorers.items() if type(s) in (LogprobScorer, ExactScorer, F1Scorer)}
        canary_idx = [i for i, it in enumerate(items) if it.kind == "canary"]
        okey = {it.id: self._entry_key(it, "outcome") for it in behaviour}
        ckey = {it.id: self._entry_key(it, "contrast") for it in contrastive}
        skey = {(i, n): self._entry_key(items[i], f"score:{n}") for i in canary_idx for n in self.scorers}
        todo_b = [it for it in behaviour if okey[it.id] not in entries]
        todo_c = [it for it in contrastive if ckey[it.id] not in entries]
        todo_s = sorted({i for (i, n), k in skey.items() if k not in entries or n not in cacheable})
        n_todo = len(todo_b) + len(todo_c) + sum(1 for (i, _) in skey if i in todo_s)
        self._base_stats = {"cached": len(okey) + len(ckey) + len(skey) - n_todo, "scored": n_todo,
                            "cache_file": str(path)}
        fresh: dict[str, Any] = {}
        live: dict[tuple[int, str], float | None] = {}
        live_outcomes: dict[str, Any] = {}  # scored now, cached or not
        if known is not None:  # the base served: what was just scored is the base's
            self._base_stats["scored"] = 0
            for it, o in zip(behaviour, known.outcomes, strict=True):
                fresh[okey[it.id]] = {"passed": o.passed, "answer": o.answer, "margin": o.margin}
            for it, c in zip(contrastive, known.contrasts, strict=True):
                fresh[ckey[it.id]] = {"margins": c.margins}
            for (i, n), k in skey.items():
                if n in cacheable and isinstance(known.scores.get(n), list):
                    fresh[k] = {"score": known.scores[n][i]}  # type: ignore[index]
            live_outcomes.update({k: v for k, v in fresh.items() if "score" not in v})
            # A NaN/inf result is not cached (JSON has no NaN; it is scored again next time).
            fresh = {k: v for k, v in fresh.items() if entries.get(k) != v and _valid_entry(v)}
            entries.update(fresh)
        elif todo_b or todo_c or todo_s:
            with peft.disable_adapter():
                if todo_b:
                    for it, o in zip(todo_b, canary_outcomes(peft, tokenizer, todo_b,
                                                             max_new_tokens=self.config.max_new_tokens), strict=True):
                        fresh[okey[it.id]] = {"passed": o.passed, "answer": o.answer, "margin": o.margin}
                        live_outcomes[okey[it.id]] = fresh[okey[it.id]]
                if todo_c:
                    for it, c in zip(todo_c, contrast_outcomes(peft, tokenizer, todo_c), strict=True):
                        fresh[ckey[it.id]] = {"margins": c.margins}
                        live_outcomes[ckey[it.id]] = fresh[ckey[it.id]]
                if todo_s:
                    got = self._scorer_scores(peft, tokenizer, [items[i] for i in todo_s], self.scorers)
                    for n, scores in got.items():
                        for j, i in enumerate(todo_s):
                            value = None if isinstance(scores, str) else float(scores[j])
                            live[(i, n)] = value
                            if n in cacheable and value is not None:
                                fresh[skey[(i, n)]] = {"score": value}
            logger.info("gate: scored %d canary results under the base model (cached in %s)", n_todo, path)
            # A NaN/inf result is used this time but not cached (JSON has no NaN).
            fresh = {k: v for k, v in fresh.items() if _valid_entry(v)}
            entries.update(fresh)
        if fresh:
            with self._lock:
                write_atomic(path, json.dumps({"format_version": BASE_CACHE_VERSION, "fingerprint": fingerprint,
                                               "model": self._memory_model_name(), "entries": entries},
                                              ensure_ascii=False, indent=1))
        scores: dict[str, list[float | None]] = {n: [None] * len(items) for n in self.scorers}
        for (i, n), k in skey.items():
            scores[n][i] = live[(i, n)] if (i, n) in live else entries.get(k, {}).get("score")
        entries = {**entries, **live_outcomes}
        return _Base(
            outcomes=[CanaryOutcome(passed=bool(e["passed"]), answer=str(e.get("answer") or ""), margin=e.get("margin"))
                      for e in (entries[okey[it.id]] for it in behaviour)],
            contrasts=[ContrastOutcome({str(f): float(m) for f, m in entries[ckey[it.id]]["margins"].items()})
                       for it in contrastive],
            scores=scores,
        )

    def _entry_key(self, item: SuiteItem, what: str) -> str:
        """A cache entry's key: a hash of the canary line (minus its tolerance) and what was measured."""
        body = {**item.to_dict(), "tolerance": None, "what": what}
        if what == "outcome" and item.check == "greedy":
            body["max_new_tokens"] = self.config.max_new_tokens
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:20]

    # ------------------------------------------------------------------ decisions

    def _decide(self, items: list[SuiteItem], current: _Scores, candidate: _Scores,
                base: _Base | None = None) -> _Decisions:
        out: _Decisions = {}
        if not items:
            return out
        ran = [n for n in self.scorers if not isinstance(current[n], str) and not isinstance(candidate[n], str)]
        # The gain is required of the deciding scorer only (min_gain is in its units): a judge or
        # a user scorer alongside it guards against forgetting and reports its gain.
        gainer = self.config.scorer if self.config.scorer in ran else next(iter(ran), None)
        for name, scorer in self.scorers.items():
            cur, cand = current[name], candidate[name]
            if isinstance(cur, str) or isinstance(cand, str):
                out[name] = cur if isinstance(cur, str) else cand  # type: ignore[assignment]
                continue
            refs = None
            if self._anchors is not None:
                refs = [self._anchors.get(it.id, {}).get(name) if it.kind == "past" else None for it in items]
            out[name] = decide(items, cur, cand, self.config, scorer=name, bounded=scorer.bounded,
                               references=refs, require_gain=name == gainer,
                               base=base.scores.get(name) if base is not None else None)
        return out

    def _decide_canaries(self, behaviour: list[SuiteItem], contrastive: list[SuiteItem], current: _Scored,
                         candidate: _Scored, base: _Base | None, learned: list[SuiteItem] = ()) -> list[Decision]:
        """The greedy/rank canaries' decision, the contrastive canaries', the learned facts' and
        the bleed check's (each when there is anything to judge)."""
        out = []
        if behaviour:
            # With the base model's results the cumulative bound is judged there, once: the
            # anchors would charge a canary lost (within the allowance) by an earlier step to
            # every later step's own allowance as well, so that one early step could stall all
            # later learning (measured: steps 2 and 4 of a four-step run rejected that way).
            anchors = self._anchors if base is None else None
            out.append(decide_canaries(behaviour, current.outcomes, candidate.outcomes, self.config,
                                       anchors=anchors, base=base.outcomes if base is not None else None))
        if contrastive:
            out.append(decide_contrastive(contrastive, current.contrasts, candidate.contrasts,
                                          base=base.contrasts if base is not None else None, anchors=self._anchors))
        if learned:
            out.append(decide_learned(learned, current.learned, candidate.learned, self.config))
        greedy = [i for i, c in enumerate(behaviour) if c.check == "greedy"]
        if self._new_answers and (learned or greedy):
            asked = [*learned, *(behaviour[i] for i in greedy)]
            cur = [o.answer for o in current.learned] + [current.outcomes[i].answer for i in greedy]
            cand = [o.answer for o in candidate.learned] + [candidate.outcomes[i].answer for i in greedy]
            out.append(decide_bleed(asked, cur, cand, self._new_answers, self.config))
        return out

    @staticmethod
    def _judges_anything(items: list[SuiteItem], checks: Sequence[Decision]) -> bool:
        """Past tasks, probes, logprob canaries, or canaries that pass under a reference."""
        return bool(items) or any(c.metrics["n_judged"] > 0 for c in checks)

    def _judged_on(self, items: list[SuiteItem], canary: Decision | None,
                   contrast: Decision | None = None, learned: Decision | None = None) -> dict[str, Any]:
        """What the verdict rests on: counts, and a sentence saying so."""
        n_past = sum(it.kind == "past" for it in items)
        n_probe = sum(it.kind == "probe" for it in items)
        n_logprob = sum(it.kind == "canary" for it in items)
        n_canary = canary.metrics["n_judged"] if canary is not None else 0
        n_contrast = contrast.metrics["n_judged"] if contrast is not None else 0
        parts = [f"{n_past} past tasks"] if n_past else []
        if canary is not None:
            how = "/".join(canary.metrics["checks"])
            of = f" of {canary.metrics['n']}" if n_canary != canary.metrics["n"] else ""
            parts.append(f"{n_canary}{of} canaries ({how} check)")
        if contrast is not None:
            of = f" of {contrast.metrics['n']}" if n_contrast != contrast.metrics["n"] else ""
            parts.append(f"{n_contrast}{of} contrastive canaries")
        if n_logprob:
            parts.append(f"{n_logprob} logprob canaries")
        n_learned = learned.metrics["n_judged"] if learned is not None else 0
        if learned is not None:
            of = f" of {learned.metrics['n']}" if n_learned != learned.metrics["n"] else ""
            parts.append(f"{n_learned}{of} learned facts")
        parts.append(f"{n_probe} new-knowledge probes" if n_probe else "no new-knowledge probes (no gain measured)")
        text = ("judged on " if n_past else f"{NO_PAST_NOTE}: judged on ") + ", ".join(parts[:-1]) + \
            (" and " if len(parts) > 1 else "") + parts[-1]
        out = {"text": text, "past": n_past, "canaries": n_canary,
               "canaries_total": canary.metrics["n"] if canary is not None else 0,
               "logprob_canaries": n_logprob, "probes": n_probe}
        if contrast is not None:
            out.update(contrastive=n_contrast, contrastive_total=contrast.metrics["n"])
        if learned is not None:
            out.update(learned=n_learned, learned_total=learned.metrics["n"])
        return out

    @staticmethod
    def _nonfinite_weights(candidate_dir: Path, current_dir: Path | None) -> str | None:
        """Why the weights forbid judging (NaN/inf in the candidate's, or the serving adapter's), or None."""
        bad = _nonfinite_in(candidate_dir)
        if bad:
            return (f"candidate adapter {candidate_dir}: its weights hold NaN/inf values in "
                    f"{describe_nonfinite(bad)}: rejected before evaluation (a non-finite adapter answers "
                    "nothing; training diverged or the file was damaged)")
        if current_dir is not None:
            bad = _nonfinite_in(Path(current_dir))
            if bad:
                return (f"the serving adapter {current_dir}: its weights hold NaN/inf values in "
                        f"{describe_nonfinite(bad)}: no candidate can be judged against it; roll back to an "
                        "intact version (`seal-agent adapters rollback V`)")
        return None

    def _unjudged(self, notes: list[str], metrics: dict[str, Any], candidate_dir: Path, t_start: float,
                  timings: dict[str, float]) -> GateReport:
        """No past task, probe or judging canary: refuse, or pass flagged unverified -- never silently."""
        metrics = {**metrics, "judged_on": {"past": 0, "canaries": 0, "logprob_canaries": 0, "probes": 0}}
        if self.config.allow_unverified:
            note = (f"{NOTHING_TO_JUDGE}: passed UNVERIFIED (gate.allow_unverified = true); nothing shows "
                    "that this update learned anything or kept what the model knew")
            logger.warning("gate: %s", note)
            return self._report(True, [*notes, note], {**metrics, "notes": [note]}, [], 1.0, candidate_dir,
                                t_start, timings, unverified=True)
        note = (f"{NOTHING_TO_JUDGE}: refused (gate.allow_unverified = false). Give the gate something to "
                "judge: canaries (gate.canary_file), a self-edit strategy that writes probes (self_qa), or "
                "set gate.allow_unverified = true to commit such updates flagged unverified")
        logger.warning("gate: %s", note)
        return self._report(False, [*notes, note], {**metrics, "notes": [note]}, [], 1.0, None, t_start, timings)

    def _primary(self, decisions: Mapping[str, Decision | str]) -> str | None:
        """The configured scorer if it ran, else the first that did."""
        if isinstance(decisions.get(self.config.scorer), Decision):
            return self.config.scorer
        return next((n for n, d in decisions.items() if isinstance(d, Decision)), None)

    def _max_rank(self, candidate_dir: Path, current_dir: Path | None) -> int | None:
        """``config.scale_back_max_rank``, or max(r_cur, r_cand): the lineage's rank stays."""
        import json

        if current_dir is None:
            return None
        if self.config.scale_back_max_rank is not None:
            return self.config.scale_back_max_rank
        ranks = [int(json.loads((Path(d) / "adapter_config.json").read_text(encoding="utf-8"))["r"])
                 for d in (candidate_dir, current_dir)]
        return max(ranks)

    def _rows(self, items: list[SuiteItem], current: _Scores, candidate: _Scores,
              decisions: Mapping[str, Decision | str], primary: str) -> list[dict[str, Any]]:
        cur, cand = current[primary], candidate[primary]
        flipped = decisions[primary].flipped  # type: ignore[union-attr]
        rows = []
        for it, c, n in zip(items, cur, cand, strict=True):  # type: ignore[arg-type]
            expected = " ".join(it.expected.split())
            rows.append({"kind": it.kind, "id": it.id, "prompt": it.preview,
                         "expected": expected if len(expected) <= 200 else expected[:197] + "...",
                         "current": float(c), "candidate": float(n), "delta": float(n) - float(c),
                         "flipped": it.id in flipped})
        return rows

    @staticmethod
    def _canary_rows(canaries: list[SuiteItem], current: list[CanaryOutcome], candidate: list[CanaryOutcome],
                     decision: Decision | None) -> list[dict[str, Any]]:
        """One row per greedy/rank canary: pass (1.0) / fail (0.0), and the answers or margins."""
        flipped = decision.flipped if decision is not None else set()
        rows = []
        for it, c, n in zip(canaries, current, candidate, strict=True):
            row = {"kind": "canary", "id": it.id, "prompt": it.preview, "expected": it.expected,
                   "current": float(c.passed), "candidate": float(n.passed),
                   "delta": float(n.passed) - float(c.passed), "flipped": it.id in flipped,
                   "check": it.check, "anchor_key": canary_anchor_key(it)}
            if it.check == "rank":
                row.update(margin_current=c.margin, margin_candidate=n.margin)
            else:
                row.update(answer_current=c.answer, answer_candidate=n.answer)
            rows.append(row)
        return rows

    @staticmethod
    def _learned_rows(items: list[SuiteItem], current: list[CanaryOutcome], candidate: list[CanaryOutcome],
                      decision: Decision | None, bleed: Decision | None) -> list[dict[str, Any]]:
        """One row per learned fact: known (1.0) / not (0.0) under each adapter, the answers, any bleed."""
        lost = decision.flipped if decision is not None else set()
        bled = bleed.metrics["bled"] if bleed is not None else {}
        return [{"kind": "learned", "id": it.id, "prompt": it.preview, "expected": it.expected,
                 "negative": list(it.negative), "current": float(c.passed), "candidate": float(n.passed),
                 "delta": float(n.passed) - float(c.passed), "flipped": it.id in lost, "bled": bled.get(it.id),
                 "answer_current": c.answer, "answer_candidate": n.answer}
                for it, c, n in zip(items, current, candidate, strict=True)]

    @staticmethod
    def _contrast_rows(items: list[SuiteItem], current: list[ContrastOutcome], candidate: list[ContrastOutcome],
                       decision: Decision | None, base: list[ContrastOutcome] | None) -> list[dict[str, Any]]:
        """One row per contrastive canary: pass / fail, and the margins over each foil."""
        flipped = decision.flipped if decision is not None else set()
        rows = []
        for i, (it, c, n) in enumerate(zip(items, current, candidate, strict=True)):
            row = {"kind": "canary", "id": it.id, "prompt": it.preview,
                   "expected": f"{it.expected} (not {', '.join(it.foils)})",
                   "current": float(c.passed), "candidate": float(n.passed),
                   "delta": float(n.passed) - float(c.passed), "flipped": it.id in flipped,
                   "check": "contrast", "anchor_key": canary_anchor_key(it), "anchor_slot": contrast_slot(it),
                   "margin_current": c.margins[n.worst], "margin_candidate": n.margins[n.worst],
                   "margins_current": dict(c.margins), "margins_candidate": dict(n.margins)}
            if base is not None:
                row["margins_base"] = dict(base[i].margins)
            rows.append(row)
        return rows

    def _report(self, passed: bool, reasons: list[str], metrics: dict[str, Any], rows: list[dict[str, Any]],
                scale: float, adapter_dir: Path | None, t_start: float, timings: dict[str, float],
                *, scorer: str | None = None, unverified: bool = False) -> GateReport:
        metrics["timings"] = dict(timings)
        metrics["seconds"] = time.perf_counter() - t_start
        return GateReport(passed=passed, reasons=reasons, metrics=metrics, rows=rows, scale=scale,
                          adapter_dir=adapter_dir, scorer=scorer or self.config.scorer, lineage=self.lineage,
                          created_at=datetime.now(UTC).isoformat(timespec="seconds"), unverified=unverified)


def _passed(decisions: Mapping[str, Decision | str], checks: Sequence[Decision]) -> bool:
    """Every scorer that ran passed (at least one ran, when there were items to score), and the canaries."""
    ran = [d for d in decisions.values() if isinstance(d, Decision)]
    if decisions and not ran:
        return False
    return all(d.passed for d in ran) and all(c.passed for c in checks)


def _forgot_only(decisions: Mapping[str, Decision | str], checks: Sequence[Decision]) -> bool:
    """Failed, and only for forgetting: scaling back can help (it cannot add gain, nor
    repair an update whose scores are NaN/inf)."""
    ran = [d for d in decisions.values() if isinstance(d, Decision)] + list(checks)
    return any(d.forgetting for d in ran) and not any(d.no_gain or d.nonfinite for d in ran)


def _reasons(decisions: Mapping[str, Decision | str], checks: Sequence[Decision]) -> list[str]:
    out = [r for d in decisions.values() if isinstance(d, Decision) for r in d.reasons]
    return out + [r for c in checks for r in c.reasons]


def _headline(decisions: Mapping[str, Decision | str], checks: Sequence[Decision]) -> dict[str, Any]:
    keys = ("replay_delta", "flips", "probe_gain", "canary_failed")
    out = {f"{name}.{k}" if i else k: d.metrics.get(k)
           for i, (name, d) in enumerate((n, d) for n, d in decisions.items() if isinstance(d, Decision))
           for k in keys if k in d.metrics}
    canary, contrast = _find(checks, "canaries"), _find(checks, "contrastive")
    if canary is not None:
        out["canary_flips"] = canary.metrics["flipped"]
    if contrast is not None:
        out["contrastive_flips"] = contrast.metrics["flipped"]
    learned, bleed = _find(checks, "learned"), _find(checks, "bleed")
    if learned is not None:
        out["learned_lost"] = learned.metrics["lost"]
    if bleed is not None:
        out["bleed"] = sorted(bleed.metrics["bled"])
    return out


def _valid_entry(entry: Any) -> bool:
    """A base-cache entry of a known shape (others are dropped and scored again)."""
    if not isinstance(entry, dict):
        return False
    if "passed" in entry:
        return isinstance(entry["passed"], bool) and (entry.get("margin") is None or _is_number(entry["margin"]))
    if "margins" in entry:
        m = entry["margins"]
        return isinstance(m, dict) and bool(m) and all(_is_number(v) for v in m.values())
    return "score" in entry and _is_number(entry["score"])


def _is_number(value: Any) -> bool:
    """A finite number: a NaN/inf in the cache (written before they were refused) is scored again."""
    return isinstance(value, (int, float)) and is_finite_number(value)


def _nonfinite_in(folder: Path) -> list[tuple[str, int, int]]:
    """`adapter_nonfinite`, or [] when the weights cannot be read (loading them names that)."""
    try:
        return adapter_nonfinite(folder)
    except Exception:  # safetensors raises its own types; PeftModel's load reports the damage
        return []


def _find(checks: Sequence[Decision], name: str) -> Decision | None:
    return next((c for c in checks if c.scorer == name), None)


def _check_metrics(checks: Sequence[Decision]) -> dict[str, Any]:
    """``canaries`` / ``contrastive`` metrics of the canary decisions, as the report keeps them."""
    return {c.scorer: c.metrics for c in checks}


def model_fingerprint(model: Any, tokenizer: Any = None) -> str:
    """A short id of a base model's weights (and tokenizer): what the base canary cache is keyed by.

    Hashes the model's name, the names, shapes and dtypes of its parameters, and the
    first values of its first and last parameters (cheap: no pass over all weights), and
    the tokenizer's name, size and chat template: two models that differ there never
    share cached results.
    """
    h = hashlib.sha256()
    h.update(str(getattr(getattr(model, "config", None), "name_or_path", "")).encode())
    params = list(model.named_parameters())
    for name, p in params:
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
    for _, p in (params[:1] + params[-1:]):
        h.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    if tokenizer is not None:
        h.update(f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}".encode())
        h.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    return h.hexdigest()[:16]


def _fresh_dir(path: Path) -> Path:
    """`path`, or `path`-2, -3, ... : a folder name not taken yet (we never delete others' files)."""
    for n in itertools.count(1):
        p = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if not p.exists():
            return p
    raise AssertionError("unreachable")
