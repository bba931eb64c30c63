"""The one shape every benchmark's results take on disk, so `bench/report.py` can read them all.

Each benchmark run writes ``bench/results/<kind>-<YYYYmmdd-HHMMSS>.json`` (and a PNG chart
with the same stem) through `save`. Besides the benchmark's own figures (``data``), the
record carries:

* ``rows``: the lines it contributes to the "Last measured" table of ``bench/README.md``
  (what was measured, our figure, the named baseline's figure, the ratio);
* ``goals``: every goal the benchmark judges, each with the measured value and PASS/FAIL.

`bench/report.py` regenerates the README table from the newest records of each kind, so
no figure in it is typed by hand.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FORMAT_VERSION = 1

__all__ = ["FORMAT_VERSION", "Goal", "RESULTS", "Row", "load_average", "print_goals", "save"]


@dataclass(frozen=True)
class Goal:
    """One goal of an issue, judged on one run.

    Args:
        name: The goal as the issue states it, e.g. ``"recall p95 at 10k <= 10 ms"``.
        measured: The figure it was judged on, with its unit, e.g. ``"8.4 ms"``.
        passed: Whether the goal was met in this run.
    """

    name: str
    measured: str
    passed: bool


@dataclass(frozen=True)
class Row:
    """One line of the README's "Last measured" table.

    Args:
        measure: What was measured (and on what), e.g. ``"recall p50 / p95 @ 10k"``.
        ours: Our figure(s), with units.
        baseline: The named baseline and its figure(s), e.g. ``"InMemoryStore 29.2 / 36.9 ms"``.
        ratio: How many times better we are (``"1.38x / 1.29x"``), or ``""``.
    """

    measure: str
    ours: str
    baseline: str
    ratio: str = ""


def load_average() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages (NaN where the platform has none)."""
    if hasattr(os, "getloadavg"):
        return tuple(os.getloadavg())  # type: ignore[return-value]
    return (float("nan"),) * 3


def print_goals(goals: Sequence[Goal]) -> None:
    """Print each goal with PASS/FAIL (the benchmarks' last lines)."""
    if not goals:
        return
    width = max(len(g.name) for g in goals)
    print("\ngoals:")
    for g in goals:
        print(f"  {'PASS' if g.passed else 'FAIL'}  {g.name:<{width}}  measured: {g.measured}")


def save(kind: str, *, title: str, data: dict[str, Any], rows: Sequence[Row], goals: Sequence[Goal],
         load_before: Sequence[float], machine: str = "", device: str = "",
         chart: Callable[[Path], bool] | None = None, out: Path | None = None) -> Path:
    """Write one run's record (JSON) and chart (PNG beside it); return the JSON's path.

    Args:
        kind: The benchmark's short name (``"memory"``, ``"train"``, ...): the file prefix
            and the section `bench/report.py` files the rows under.
        title: One line saying what ran, with the settings that matter (model, sizes).
        data: Everything else the benchmark measured (must be JSON-serialisable; Paths and
            other objects are written as strings).
        chart: Called with the PNG path; returns whether it drew (False: matplotlib missing).
        out: JSON path (default ``bench/results/<kind>-<time>.json``).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out or RESULTS / f"{kind}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "when": stamp,
        "title": title,
        "machine": machine,
        "device": device,
        "load_average_before": list(load_before),
        "load_average_after": list(load_average()),
        "rows": [asdict(r) for r in rows],
        "goals": [asdict(g) for g in goals],
        "data": data,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, out)
    drew = False
    if chart is not None:
        try:
            drew = chart(out.with_suffix(".png"))
        except ImportError:
            drew = False
    print(f"results written to {out}" + (f" and {out.with_suffix('.png')}" if drew else ""))
    return out
