"""Regenerate the "Last measured" section of ``bench/README.md`` from the results on disk.

Every benchmark writes one JSON record per run through `bench/_results.py` (``save``):
``bench/results/<kind>-<YYYYmmdd-HHMMSS>.json`` with ``format_version``, ``kind``,
``when``, ``title``, the load averages before and after, ``rows`` (the table lines) and
``goals`` (each with the measured value and PASS/FAIL). This script reads them all and
rewrites the part of the README between the markers

    <!-- last-measured:begin -->
    <!-- last-measured:end -->

with, for each kind (benchmark): the newest record's rows as a table under its date,
title, machine and load averages, and a goal table giving, for every goal, the measured
value and PASS/FAIL of the last three runs of that kind (the issues ask for three runs:
one lucky run on a shared 2-core machine proves little). So no figure in that section is
typed by hand, and a figure in it can always be traced to its record.

Records without ``format_version`` (written before `_results.py` existed) or with another
version are skipped and listed on stderr: their shapes differ per benchmark.

    python bench/report.py            # rewrite bench/README.md's section
    python bench/report.py --check    # exit 1 if the section differs from what the records give
    python bench/report.py --results DIR --readme PATH --print

The output depends only on the records (no clock, no machine state), so ``--check`` is
stable. ``bench/results/`` is not committed: the committed README shows what the last
person who ran the benchmarks and this script measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import FORMAT_VERSION, RESULTS  # noqa: E402

log = logging.getLogger("bench.report")

README = Path(__file__).resolve().parent / "README.md"
BEGIN = "<!-- last-measured:begin -->"
END = "<!-- last-measured:end -->"
RUNS_PER_GOAL = 3  # the issues judge a goal on three runs
# Benchmarks in the order the README describes them; other kinds follow alphabetically.
ORDER = ("memory", "train", "consolidation", "generation", "knowledge", "forgetting", "writer")

__all__ = ["BEGIN", "END", "Record", "load_records", "main", "render", "replace_section"]


@dataclass
class Record:
    """One run's record as `_results.save` wrote it (only what the report shows)."""

    path: Path
    kind: str
    when: str
    title: str
    machine: str = ""
    device: str = ""
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def date(self) -> str:
        """``when`` (``YYYYmmdd-HHMMSS``, the machine's local time) as ``YYYY-mm-dd HH:MM``."""
        w = self.when
        if len(w) == 15 and w[8] == "-" and w.replace("-", "").isdigit():
            return f"{w[:4]}-{w[4:6]}-{w[6:8]} {w[9:11]}:{w[11:13]}"
        return w


def _loads(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out


def load_records(results: Path) -> tuple[list[Record], list[str]]:
    """Read every ``*.json`` under `results`.

    Returns:
        (the records of format version `FORMAT_VERSION`, oldest first by ``when``; the
        names of the files skipped, each with why).
    """
    records: list[Record] = []
    skipped: list[str] = []
    for path in sorted(results.glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            skipped.append(f"{path.name} (unreadable: {exc})")
            continue
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            version = raw.get("format_version") if isinstance(raw, dict) else None
            skipped.append(f"{path.name} ({'no format_version' if version is None else f'format_version {version!r}'})")
            continue
        missing = [k for k in ("kind", "when", "rows", "goals") if k not in raw]
        if missing:
            skipped.append(f"{path.name} (format_version {FORMAT_VERSION} but no {', '.join(missing)})")
            continue
        records.append(Record(path=path, kind=str(raw["kind"]), when=str(raw["when"]), title=str(raw.get("title", "")),
                              machine=str(raw.get("machine", "")), device=str(raw.get("device", "")),
                              load_before=_loads(raw.get("load_average_before")),
                              load_after=_loads(raw.get("load_average_after")),
                              rows=[r for r in raw["rows"] if isinstance(r, dict)],
                              goals=[g for g in raw["goals"] if isinstance(g, dict)]))
    records.sort(key=lambda r: (r.when, r.path.name))
    return records, skipped


def _cell(value: Any) -> str:
    """A Markdown table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _load_text(values: Sequence[float]) -> str:
    if not values:
        return "?"
    return " / ".join("?" if math.isnan(v) else f"{v:.2f}" for v in values)


def _kinds(records: Sequence[Record]) -> list[str]:
    present = {r.kind for r in records}
    return [k for k in ORDER if k in present] + sorted(present - set(ORDER))


def render_kind(kind: str, runs: Sequence[Record]) -> list[str]:
    """The README lines for one benchmark: newest rows, then its goals over the last runs."""
    newest = runs[-1]
    lines = [f"### {kind}", ""]
    where = ", ".join(x for x in (newest.machine, newest.device) if x)
    lines.append(f"Newest run {newest.date}: {newest.title}" + (f" ({where})" if where else "") + ".")
    lines.append(f"Load average (1 / 5 / 15 min) before {_load_text(newest.load_before)}, "
                 f"after {_load_text(newest.load_after)}. Record: `results/{newest.path.name}`.")
    lines.append("")
    if newest.rows:
        lines += ["| measured | ours | named baseline | ratio |", "|---|---|---|---|"]
        for row in newest.rows:
            lines.append("| " + " | ".join(_cell(row.get(k, "")) for k in ("measure", "ours", "baseline", "ratio"))
                         + " |")
    else:
        lines.append("(this run recorded no rows)")
    lines.append("")
    last = list(reversed(runs[-RUNS_PER_GOAL:]))  # newest first
    names: list[str] = []
    for run in last:
        for g in run.goals:
            name = str(g.get("name", ""))
            if name and name not in names:
                names.append(name)
    if not names:
        lines += ["(no goals judged)", ""]
        return lines
    lines.append(f"Goals, last {len(last)} run{'s' if len(last) > 1 else ''} (newest first; "
                 "load = 1-minute average before the run):")
    lines.append("")
    header = ["goal"] + [f"{r.date} (load {_load_text(r.load_before[:1])})" for r in last]
    lines += ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = [name]
        for run in last:
            g = next((g for g in run.goals if g.get("name") == name), None)
            if g is None:
                cells.append("-")
            else:
                verdict = "PASS" if g.get("passed") else "**FAIL**"
                cells.append(f"{g.get('measured', '')} {verdict}".strip())
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    return lines


def render(records: Sequence[Record]) -> str:
    """The text between the markers (without them), ending with a newline.

    Skipped records are not mentioned: they would make the README change with whatever
    old files lie in one person's results folder (`main` logs them).
    """
    lines = ["<!-- generated by `python bench/report.py` from bench/results/*.json: do not edit by hand -->", ""]
    if not records:
        lines += ["No results recorded in the current format yet: run the benchmarks, then "
                  "`python bench/report.py`.", ""]
    for kind in _kinds(records):
        lines += render_kind(kind, [r for r in records if r.kind == kind])
    return "\n".join(lines)


def replace_section(readme_text: str, body: str) -> str:
    """`readme_text` with what lies between the markers replaced by `body`.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    if readme_text.count(BEGIN) != 1 or readme_text.count(END) != 1:
        raise ValueError(f"README must hold exactly one {BEGIN!r} and one {END!r}")
    head, rest = readme_text.split(BEGIN, 1)
    if END not in rest:
        raise ValueError(f"{END!r} comes before {BEGIN!r} in the README")
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}{END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON records (default: bench/results)")
    p.add_argument("--readme", type=Path, default=README, help="the README to rewrite (default: bench/README.md)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README's section is stale")
    p.add_argument("--print", action="store_true", help="print the generated section instead of writing it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    records, skipped = load_records(args.results) if args.results.is_dir() else ([], [])
    if not args.results.is_dir():
        log.warning("no results folder %s: the section will say that nothing was measured", args.results)
    for name in skipped:
        log.info("skipped %s", name)
    body = render(records)
    if args.print:
        sys.stdout.write(body)
        return 0
    old = args.readme.read_text(encoding="utf-8")
    try:
        new = replace_section(old, body)
    except ValueError as exc:
        log.error("%s: %s", args.readme, exc)
        return 2
    kinds = _kinds(records)
    if args.check:
        if new != old:
            log.error("%s is stale: run `python bench/report.py`", args.readme)
            return 1
        log.info("%s is up to date (%d records, kinds: %s)", args.readme, len(records), ", ".join(kinds) or "none")
        return 0
    if new != old:
        args.readme.write_text(new, encoding="utf-8")
    log.info("%s %s from %d records (kinds: %s); %d skipped (not format_version %d)", args.readme,
             "rewritten" if new != old else "unchanged", len(records), ", ".join(kinds) or "none", len(skipped),
             FORMAT_VERSION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
