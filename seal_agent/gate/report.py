"""`GateReport`: the gate's verdict, stored with the adapter version it judged.

``report.save(folder)`` writes three files:

- ``gate_report.json`` -- everything (`GateReport.to_dict`), format- and library-versioned;
- ``gate_report.md`` -- a human summary: verdict, reasons, headline metrics, the most
  changed items;
- ``gate_report.png`` -- per-item score changes: current vs candidate scatter (points
  below the diagonal got worse) and the sorted deltas as bars, coloured by kind.
  Needs matplotlib (not a core dependency): without it the PNG is skipped with a
  warning.

`render_report` is what ``seal-agent gate report V`` prints.

JSON has no NaN or Infinity: a score or metric that is not finite is written as
``null`` (the reasons say which measure it was), so that strict JSON readers can read
every report.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal_agent._fs import write_atomic
from seal_agent.errors import ValidationError

__all__ = ["REPORT_FORMAT_VERSION", "GateReport", "render_report"]

logger = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
JSON_NAME, MD_NAME, PNG_NAME = "gate_report.json", "gate_report.md", "gate_report.png"
_COLORS = {"past": "tab:blue", "canary": "tab:orange", "probe": "tab:green", "learned": "tab:purple"}


@dataclass
class GateReport:
    """The gate's verdict on one candidate adapter.

    Attributes:
        passed: Whether the candidate (possibly scaled back) may be committed.
        reasons: Why it failed (naming the regressed items), or why it passed with
            caveats (e.g. no past tasks yet); human-readable.
        metrics: Means, deltas, bootstrap CIs, flips, canary deltas, probe gain,
            per-scorer results (``scorers``), scale-back attempts and ``timings``
            (seconds per phase, ``seconds`` in all).
        rows: One dict per item under the deciding scorer: ``kind``, ``id``,
            ``prompt``, ``expected``, ``current``, ``candidate``, ``delta``, ``flipped``.
        scale: 1.0, or the scale-back factor that passed.
        adapter_dir: The adapter to commit (the candidate's folder, or the scaled copy);
            None when not passed. Its weights are already scaled.
        scorer: The deciding scorer whose numbers are in ``rows`` and the top-level metrics.
        lineage: Adapter lineage of the replay suite.
        created_at: ISO-8601 UTC time of the verdict.
        unverified: Passed with nothing to judge it on (no past tasks, canaries or
            probes; only with ``GateConfig.allow_unverified``).
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    scale: float = 1.0
    adapter_dir: Path | None = None
    scorer: str = "logprob"
    lineage: str = "global"
    created_at: str = ""
    unverified: bool = False

    @property
    def verdict(self) -> str:
        """``"passed"``, ``"passed (scaled to 0.5)"``, ``"passed (unverified)"`` or ``"rejected"``."""
        if not self.passed:
            return "rejected"
        if self.unverified:
            return "passed (unverified)"
        return "passed" if self.scale == 1.0 else f"passed (scaled to {self.scale:g})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what `save` writes and adapter manifests embed)."""
        from seal_agent import __version__

        return {
            "format_version": REPORT_FORMAT_VERSION,
            "library_version": __version__,
            "passed": self.passed,
            "verdict": self.verdict,
            "unverified": self.unverified,
            "reasons": list(self.reasons),
            "scale": self.scale,
            "adapter_dir": str(self.adapter_dir) if self.adapter_dir is not None else None,
            "scorer": self.scorer,
            "lineage": self.lineage,
            "created_at": self.created_at,
            "metrics": _jsonable(self.metrics),
            "rows": _jsonable(self.rows),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateReport:
        """Inverse of `to_dict`.

        Raises:
            ValidationError: Not a gate report of a known format version.
        """
        if not isinstance(data, dict) or data.get("format_version") != REPORT_FORMAT_VERSION:
            version = data.get("format_version") if isinstance(data, dict) else None
            raise ValidationError("gate_report.format_version", version, f"must be {REPORT_FORMAT_VERSION}")
        return cls(
            passed=bool(data["passed"]), reasons=list(data.get("reasons", [])),
            metrics=dict(data.get("metrics", {})), rows=list(data.get("rows", [])),
            scale=float(data.get("scale", 1.0)),
            adapter_dir=Path(data["adapter_dir"]) if data.get("adapter_dir") else None,
            scorer=str(data.get("scorer", "logprob")), lineage=str(data.get("lineage", "global")),
            created_at=str(data.get("created_at", "")), unverified=bool(data.get("unverified", False)),
        )

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``gate_report.json``, ``.md`` and (with matplotlib) ``.png`` into `folder`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / JSON_NAME, json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False))
        (out / MD_NAME).write_text(self.to_markdown(), encoding="utf-8")
        self.plot(out / PNG_NAME)
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> GateReport:
        """Read a report saved by `save` (`folder` or its ``gate_report.json``).

        Raises:
            ValidationError: No report there, or not readable.
        """
        path = Path(folder)
        path = path / JSON_NAME if path.is_dir() else path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValidationError("report", str(path), "no gate report there") from exc
        except (OSError, ValueError) as exc:
            raise ValidationError("report", str(path), f"cannot be read: {exc}") from exc
        return cls.from_dict(data)

    def to_markdown(self, *, top: int = 10, version: str | None = None) -> str:
        """The Markdown summary: verdict, reasons, metrics, most changed items.

        Args:
            top: How many most-changed items to list.
            version: The registry version the adapter was committed as; without it the
                report can only name the run's candidate folder, which is deleted after
                the commit, so the line says "to commit" instead.
        """
        m = self.metrics
        lines = [f"# Gate report: {self.verdict.upper()}", ""]
        lines.append(f"- scorer: `{self.scorer}`, lineage: `{self.lineage}`, at {self.created_at or '-'}")
        if self.adapter_dir is not None:
            lines.append(f"- adapter committed: version `{version}` (scale {self.scale:g})" if version else
                         f"- adapter to commit: `{self.adapter_dir}` (scale {self.scale:g})")
        if self.unverified:
            lines.append("- **UNVERIFIED**: nothing to judge this update on (gate.allow_unverified)")
        lines += ["", "## Reasons", ""]
        lines += [f"- {r}" for r in self.reasons] or ["- all checks passed"]
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        for key in ("n_past", "n_canary", "n_probe", "replay_mean_current", "replay_mean_candidate",
                    "replay_delta", "replay_delta_ci", "flips", "probe_gain", "probe_gain_ci", "seconds"):
            if key in m:
                lines.append(f"| {key} | {_short(m[key])} |")
        for cid, d in (m.get("canary_deltas") or {}).items():
            lines.append(f"| canary `{cid}` delta | {_short(d)} |")
        canaries = m.get("canaries")
        if canaries:
            lines.append(f"| canaries judged ({'/'.join(canaries['checks'])}) | {canaries['n_judged']} of "
                         f"{canaries['n']} |")
            lines.append(f"| canaries flipped (allowed {canaries['allowed_flips']}) | "
                         f"{', '.join(canaries['flipped']) or 'none'} |")
        learned = m.get("learned")
        if learned:
            lines.append(f"| learned facts known under the current adapter | {learned['n_judged']} of {learned['n']} |")
            lines.append(f"| learned facts lost (allowed {learned['allowed']}) | "
                         f"{', '.join(learned['lost']) or 'none'} |")
        bleed = m.get("bleed")
        if bleed:
            lines.append(f"| bleed (allowed {bleed['allowed']}) | "
                         f"{', '.join(f'{k}: {v}' for k, v in bleed['bled'].items()) or 'none'} |")
        for attempt in m.get("scale_back", []):
            lines.append(f"| scale {attempt['scale']:g} | {'passed' if attempt['passed'] else 'failed'} |")
        flipped = [r for r in self.rows if r.get("kind") == "canary" and r.get("flipped")]
        if flipped:
            lines += ["", "## Canaries that went from right to wrong", "",
                      "| id | prompt | expected | before | after |", "|---|---|---|---|---|"]
            for r in flipped:
                before = r.get("answer_current", r.get("margin_current"))
                after = r.get("answer_candidate", r.get("margin_candidate"))
                cells = [str(x).replace("|", "\\|").replace("\n", " ") for x in
                         (r["id"], r.get("prompt", ""), r.get("expected", ""), before, after)]
                lines.append("| " + " | ".join(cells) + " |")
        rows = sorted(self.rows, key=lambda r: _sort_key(r.get("delta", 0.0)))
        if rows:
            lines += ["", f"## Most changed items (of {len(rows)})", "",
                      "| kind | id | prompt | current | candidate | delta | flipped |", "|---|---|---|---|---|---|---|"]
            shown = rows[: top // 2] + [r for r in rows[-(top - top // 2):] if r not in rows[: top // 2]]
            for r in shown:
                prompt = str(r.get("prompt", "")).replace("|", "\\|")
                lines.append(f"| {r['kind']} | {r['id']} | {prompt} | {_num(r['current'], '.3f')} | "
                             f"{_num(r['candidate'], '.3f')} | {_num(r['delta'], '+.3f')} | "
                             f"{'yes' if r.get('flipped') else ''} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | os.PathLike[str]) -> Path | None:
        """Save the per-item PNG; None (and a warning) when matplotlib is missing."""
        try:
            import matplotlib

            matplotlib.use("Agg")  # no display needed; safe in worker threads
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib is not installed: gate report plot skipped")
            return None
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        # Rows with a NaN/inf score (null once saved) cannot be drawn; the reasons name them.
        plotted = [r for r in self.rows if all(_finite(r.get(k)) for k in ("current", "candidate", "delta"))]
        for kind, color in _COLORS.items():
            rows = [r for r in plotted if r["kind"] == kind]
            if rows:
                ax1.scatter([r["current"] for r in rows], [r["candidate"] for r in rows], s=18, c=color,
                            label=kind, alpha=0.8)
        if plotted:
            lo = min(min(r["current"], r["candidate"]) for r in plotted)
            hi = max(max(r["current"], r["candidate"]) for r in plotted)
            ax1.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
            ax1.legend(loc="best", fontsize=8)
        ax1.set_xlabel(f"current ({self.scorer})")
        ax1.set_ylabel(f"candidate ({self.scorer})")
        ax1.set_title("per item: below the diagonal = worse")
        rows = sorted(plotted, key=lambda r: r["delta"])
        ax2.bar(range(len(rows)), [r["delta"] for r in rows], color=[_COLORS[r["kind"]] for r in rows])
        ax2.axhline(0, color="grey", lw=1)
        ax2.set_xlabel("items, sorted")
        ax2.set_ylabel("candidate - current")
        ax2.set_title(f"score changes: {self.verdict}")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out


def render_report(path: str | os.PathLike[str], *, version: str | None = None) -> str:
    """The Markdown summary of the report saved in `path` (a folder or the JSON file).

    `version`: the registry version the adapter was committed as (see `GateReport.to_markdown`).

    Raises:
        ValidationError: No readable gate report there.
    """
    report = GateReport.load(path)
    text = report.to_markdown(version=version)
    png = (Path(path) if Path(path).is_dir() else Path(path).parent) / PNG_NAME
    if png.is_file():
        text += f"\nPlot: {png}\n"
    return text


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: Any, spec: str) -> str:
    """A number formatted, or ``nan`` for a missing (null) or non-finite one."""
    return format(value, spec) if _finite(value) else "nan"


def _sort_key(value: Any) -> float:
    """Most negative first; a missing or non-finite delta before everything (the worst)."""
    return float(value) if _finite(value) else float("-inf")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return str(value)


def _jsonable(value: Any) -> Any:
    """Paths, numpy numbers, tuples and sets as plain JSON types; NaN/inf as None (JSON null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
