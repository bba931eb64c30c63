"""The validation gate: replay past tasks, catch forgetting, commit, scale back or reject.

``Gate(memory, config).evaluate(...)`` scores a candidate LoRA adapter against the
current one on a persisted replay suite of past tasks, user canaries and this
consolidation's new-knowledge probes, and returns a `GateReport`. See `gate.py` for
the flow, `suite.py` for what is replayed, `scorers.py` for how answers are scored,
`decision.py` for the rule, `canary.py` for how canaries are judged (pass/fail, by
behaviour; contrastive canaries by the expected answer's margin over the answers it must
not become), `scale.py` for scale-back, `report.py` for the reports. Canaries for the
built-in model ship in ``canaries/`` (package data).

torch and peft load with this package; import it only where gating happens.
"""

from __future__ import annotations

from seal_agent.gate.canary import (
    CanaryOutcome,
    ContrastOutcome,
    answer_contains,
    canary_outcomes,
    contrast_outcomes,
    decide_canaries,
    decide_contrastive,
)
from seal_agent.gate.decision import Decision, decide, paired_bootstrap_ci
from seal_agent.gate.gate import Gate
from seal_agent.gate.report import GateReport, render_report
from seal_agent.gate.scale import lora_deltas, write_scaled_adapter
from seal_agent.gate.scorers import (
    CallableScorer,
    ExactScorer,
    F1Scorer,
    JudgeScorer,
    LogprobScorer,
    Scorer,
    ScorerError,
    ScoringContext,
)
from seal_agent.gate.suite import ReplaySuite, SuiteItem, load_canaries, shipped_canary_file

__all__ = [
    "CallableScorer",
    "CanaryOutcome",
    "ContrastOutcome",
    "Decision",
    "ExactScorer",
    "F1Scorer",
    "Gate",
    "GateReport",
    "JudgeScorer",
    "LogprobScorer",
    "ReplaySuite",
    "Scorer",
    "ScorerError",
    "ScoringContext",
    "SuiteItem",
    "answer_contains",
    "canary_outcomes",
    "contrast_outcomes",
    "decide",
    "decide_canaries",
    "decide_contrastive",
    "load_canaries",
    "lora_deltas",
    "paired_bootstrap_ci",
    "render_report",
    "shipped_canary_file",
    "write_scaled_adapter",
]
