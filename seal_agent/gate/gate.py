"""`Gate`: judge a candidate adapter against the current one, and scale it back if needed.

One `Gate.evaluate` call:

1. assembles the items: the lineage's persisted replay suite (built from the
   consolidated interactions on first use) minus the items that the interactions
   being consolidated now supersede, the canaries, and this consolidation's probes;
2. loads the candidate (and the current adapter, if any) as named adapters of one
   `PeftModel` around the given base model, and scores every item under both with
   every scorer (the configured one, the judge when given, user scorers);
3. applies the decision rule per scorer (`seal_agent.gate.decision`); a scorer that
   raises is skipped with a reason and the others decide;
4. when the candidate fails *only* for forgetting, writes scaled-back adapters
   (`seal_agent.gate.scale`) for each ``GateConfig.scale_back`` factor, largest first,
   scores each, and keeps the first that passes;
5. returns a `GateReport` (never raises for a bad candidate), and unloads the LoRA
   layers again so the base model is as it came.

`Gate.update_suite` runs after a commit: the newly consolidated interactions enter the
reservoir (and supersede older answers to the same questions).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seal_agent._compat import quiet_peft
from seal_agent.config import GateConfig
from seal_agent.errors import TrainingCancelled, ValidationError
from seal_agent.gate.decision import Decision, decide
from seal_agent.gate.report import GateReport
from seal_agent.gate.scorers import JudgeScorer, Scorer, ScoringContext, make_scorer
from seal_agent.gate.suite import ReplaySuite, SuiteItem, load_canaries, probe_items

if TYPE_CHECKING:
    from seal_agent.memory.records import Interaction
    from seal_agent.seal_memory import SealMemory
    from seal_agent.selfedit.base import Probe

__all__ = ["Gate"]

logger = logging.getLogger(__name__)

_Scores = dict[str, "list[float] | str"]  # scorer -> scores, or the reason it failed


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
    ) -> None:
        if not isinstance(config, GateConfig):
            raise ValidationError("config", config, "must be a GateConfig")
        self.memory = memory
        self.config = config
        self.lineage = lineage
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

    # ------------------------------------------------------------------ the suite

    def suite(self) -> ReplaySuite:
        """The persisted replay suite; built from the consolidated interactions on first use."""
        with self._lock:
            if self.suite_path.is_file():
                return ReplaySuite.load(self.suite_path, capacity=self.config.replay_size)
            suite = ReplaySuite(self.lineage, self.config.replay_size, self.config.seed)
            n = suite.add(self.memory.list(status="consolidated"))
            suite.save(self.suite_path)
            logger.info("gate: built the %s replay suite: %d of %d eligible past tasks",
                        self.lineage, len(suite.items), n)
            return suite

    def update_suite(self, committed_interactions: Iterable[Interaction],
                     report: GateReport | Mapping[str, Any] | None = None) -> int:
        """Add newly consolidated interactions to the persisted suite (reservoir sampling).

        Call after a commit with the interactions the committed adapter learned, and the
        gate report that let it through: its scores raise the past tasks' anchors. Older
        items the interactions answer differently are dropped as superseded.

        Returns:
            How many of them were eligible (accepted outcome, a final answer, not seen).
        """
        suite = self.suite()  # builds (and already includes them) on first use
        with self._lock:
            if report is not None:
                data = report.to_dict() if isinstance(report, GateReport) else report
                suite.record_scores(data.get("rows", []), str(data.get("scorer", self.config.scorer)))
            n = suite.add(list(committed_interactions))
            suite.save(self.suite_path)
        return n

    def canaries(self) -> list[SuiteItem]:
        """The canary items of ``config.canary_file`` (none when unset).

        Raises:
            ValidationError: The file is missing or malformed (naming line and field).
        """
        if self.config.canary_file is None:
            return []
        path = Path(self.config.canary_file).expanduser()
        if not path.is_absolute():
            path = self.memory.home / path
        return load_canaries(path, default_tolerance=self.config.canary_tolerance)

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

        # 1. Items.
        t = time.perf_counter()
        suite = self.suite()
        superseded = suite.superseded_by(self.memory.list(status="new"))
        gone = {item.id for item, _ in superseded}
        past = [it for it in suite.items if it.id not in gone]
        items = past + self.canaries() + probe_items(probes)
        self._anchors = suite.anchors if self.config.anchor_past else None
        timings["suite_seconds"] = time.perf_counter() - t
        notes = [f"past task {item.id} ({item.preview!r}) is superseded by the newer interaction {by}: "
                 "dropped from replay (a knowledge update is not forgetting)" for item, by in superseded]
        base_metrics: dict[str, Any] = {"superseded": [{"id": i.id, "superseded_by": by} for i, by in superseded],
                                        "suite_size": len(suite.items)}
        if not items:
            note = "no past tasks, canaries or new-knowledge probes: nothing to judge; passed"
            return self._report(True, [*notes, note], {**base_metrics, "notes": [note]}, [], 1.0,
                                Path(candidate_dir), t_start, timings)

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

            # 2. Scores under the current adapter and the candidate.
            check_cancel("scoring the current adapter")
            t = time.perf_counter()
            current = self._score(peft, "current" if current_dir is not None else None, tokenizer, items)
            timings["score_current_seconds"] = time.perf_counter() - t
            check_cancel("scoring the candidate")
            t = time.perf_counter()
            full = self._score(peft, "candidate", tokenizer, items)
            timings["score_candidate_seconds"] = time.perf_counter() - t
            decisions = self._decide(items, current, full)
            log("gate: candidate %s", "passes" if _passed(decisions) else "fails")

            # 3. Scale back when the candidate fails only because it forgot.
            final, final_scores, scale, adapter_dir = decisions, full, 1.0, Path(candidate_dir)
            attempts: list[dict[str, Any]] = []
            if _forgot_only(decisions) and self.config.scale_back:
                t = time.perf_counter()
                max_rank = self._max_rank(Path(candidate_dir), current_dir)
                for i, s in enumerate(self.config.scale_back):
                    check_cancel(f"scale-back {s:g}")
                    from seal_agent.gate.scale import write_scaled_adapter

                    out = _fresh_dir(Path(work_dir) / f"candidate-scale-{s:g}")
                    written = write_scaled_adapter(candidate_dir, current_dir, s, out, max_rank=max_rank)
                    name = f"scaled_{i}"
                    with quiet_peft():
                        peft.load_adapter(str(out), adapter_name=name)
                    scores = self._score(peft, name, tokenizer, items)
                    dec = self._decide(items, current, scores)
                    ok = _passed(dec)
                    attempts.append({"scale": s, "passed": ok, "rank": written["rank"],
                                     "truncation_error": written["truncation_error"],
                                     "reasons": [r for d in dec.values() if isinstance(d, Decision) for r in d.reasons],
                                     **_headline(dec)})
                    log("gate: scale-back %g %s", s, "passes" if ok else "fails")
                    if ok:
                        final, final_scores, scale, adapter_dir = dec, scores, s, out
                        break
                    shutil.rmtree(out, ignore_errors=True)  # ours, just written, not committable
                timings["scale_back_seconds"] = time.perf_counter() - t
        finally:
            peft.unload()  # removes the LoRA layers: the caller's base model is as it came

        passed = _passed(final)
        reasons = list(notes)
        full_reasons = [r for d in decisions.values() if isinstance(d, Decision) for r in d.reasons]
        if scale != 1.0:
            reasons += [f"full update rejected: {r}" for r in full_reasons]
            reasons.append(f"scaled back to {scale:g} of the update: passes")
        elif not passed:
            reasons += full_reasons
            reasons += [f"scale-back {a['scale']:g} also fails: {'; '.join(a['reasons'])}" for a in attempts]
        for name, d in final.items():
            if isinstance(d, str):
                reasons.append(f"scorer {name} skipped: {d}")
        if not any(isinstance(d, Decision) for d in final.values()):
            passed = False
            reasons.append("every scorer failed: cannot judge the candidate")
        primary = self._primary(final)
        metrics = dict(base_metrics)
        if primary is not None:
            metrics.update(final[primary].metrics)  # type: ignore[union-attr]
            reasons += [n for n in final[primary].notes if n not in reasons]  # type: ignore[union-attr]
            metrics["notes"] = list(final[primary].notes)  # type: ignore[union-attr]
        metrics["scorers"] = {n: ({"skipped": d} if isinstance(d, str) else
                                  {"passed": d.passed, "reasons": d.reasons, "metrics": d.metrics})
                              for n, d in final.items()}
        if scale != 1.0:
            metrics["candidate_full"] = _headline(decisions)
        metrics["scale_back"] = attempts
        rows = self._rows(items, current, final_scores, final, primary) if primary is not None else []
        return self._report(passed, reasons, metrics, rows, scale, adapter_dir if passed else None,
                            t_start, timings, scorer=primary or self.config.scorer)

    # ------------------------------------------------------------------ helpers

    def _score(self, peft: Any, adapter: str | None, tokenizer: Any, items: list[SuiteItem]) -> _Scores:
        """Every scorer's scores under one adapter (None: the base model)."""
        out: _Scores = {}

        def run() -> None:
            ctx = ScoringContext(peft, tokenizer, items, max_new_tokens=self.config.max_new_tokens)
            for name, scorer in self.scorers.items():
                try:
                    out[name] = scorer.score(ctx)
                except Exception as exc:  # a scorer's failure skips that scorer, never the gate
                    logger.warning("gate: scorer %s failed (skipped): %s", name, exc)
                    out[name] = f"{type(exc).__name__}: {exc}"

        if adapter is None:
            with peft.disable_adapter():
                run()
        else:
            peft.set_adapter(adapter)
            run()
        return out

    def _decide(self, items: list[SuiteItem], current: _Scores, candidate: _Scores) -> dict[str, Decision | str]:
        out: dict[str, Decision | str] = {}
        for name, scorer in self.scorers.items():
            cur, cand = current[name], candidate[name]
            if isinstance(cur, str) or isinstance(cand, str):
                out[name] = cur if isinstance(cur, str) else cand  # type: ignore[assignment]
                continue
            refs = None
            if self._anchors is not None:
                refs = [self._anchors.get(it.id, {}).get(name) if it.kind == "past" else None for it in items]
            out[name] = decide(items, cur, cand, self.config, scorer=name, bounded=scorer.bounded,
                               references=refs)
        return out

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

    def _report(self, passed: bool, reasons: list[str], metrics: dict[str, Any], rows: list[dict[str, Any]],
                scale: float, adapter_dir: Path | None, t_start: float, timings: dict[str, float],
                *, scorer: str | None = None) -> GateReport:
        metrics["timings"] = dict(timings)
        metrics["seconds"] = time.perf_counter() - t_start
        return GateReport(passed=passed, reasons=reasons, metrics=metrics, rows=rows, scale=scale,
                          adapter_dir=adapter_dir, scorer=scorer or self.config.scorer, lineage=self.lineage,
                          created_at=datetime.now(UTC).isoformat(timespec="seconds"))


def _passed(decisions: Mapping[str, Decision | str]) -> bool:
    ran = [d for d in decisions.values() if isinstance(d, Decision)]
    return bool(ran) and all(d.passed for d in ran)


def _forgot_only(decisions: Mapping[str, Decision | str]) -> bool:
    """Failed, and only for forgetting: scaling back can help (it cannot add gain)."""
    ran = [d for d in decisions.values() if isinstance(d, Decision)]
    return any(d.forgetting for d in ran) and not any(d.no_gain for d in ran)


def _headline(decisions: Mapping[str, Decision | str]) -> dict[str, Any]:
    keys = ("replay_delta", "flips", "probe_gain", "canary_failed")
    return {f"{name}.{k}" if i else k: d.metrics.get(k)
            for i, (name, d) in enumerate((n, d) for n, d in decisions.items() if isinstance(d, Decision))
            for k in keys if k in d.metrics}


def _fresh_dir(path: Path) -> Path:
    """`path`, or `path`-2, -3, ... : a folder name not taken yet (we never delete others' files)."""
    for n in itertools.count(1):
        p = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if not p.exists():
            return p
    raise AssertionError("unreachable")
