"""bench/report.py: the README's "Last measured" section is generated from the result records.

Runs the real script (in-process, through its ``main``) on a temporary results folder
holding records written by the real `bench/_results.save`, plus one in an older format.
Fast: no model, no benchmark.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module(name: str) -> ModuleType:
    """Import a bench/ script by path (bench/ is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _module("report")


@pytest.fixture(scope="module")
def results_mod() -> ModuleType:
    return _module("_results")


README = """# Benchmarks

## Last measured

<!-- last-measured:begin -->
hand-typed, stale
<!-- last-measured:end -->

### Earlier measurements (hand-written)

kept as it is
"""


def _write(results_mod: ModuleType, folder: Path, stamp: str, p95: float, passed: bool, load: float) -> None:
    R, G = results_mod.Row, results_mod.Goal
    results_mod.save(
        "memory", title=f"bench_memory --quick ({stamp})", data={"p95": p95},
        rows=[R("recall p50 / p95 @ 10k", f"5.0 / {p95} ms", "InMemoryStore 30 / 40 ms", "4.3x"),
              R("a | pipe", "1", "2")],
        goals=[G("recall p95 at 10k <= 10 ms", f"{p95} ms", passed), G("top-5 agreement >= 95%", "99%", True)],
        load_before=(load, 1.0, 0.5), machine="x86_64 Linux", device="CPU (2 cores)",
        out=folder / f"memory-{stamp}.json")


def test_report_tables_three_runs_and_skips_other_formats(tmp_path: Path, report: ModuleType,
                                                          results_mod: ModuleType, capsys: pytest.CaptureFixture,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    results = tmp_path / "results"
    results.mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(README)
    # Two runs of one kind, written out of order: the newest is chosen by `when`, not by file order.
    _write(results_mod, results, "20261201-120000", 12.5, False, 3.25)
    _write(results_mod, results, "20261201-100000", 9.5, True, 0.5)
    for path, stamp in ((results / "memory-20261201-120000.json", "20261201-120000"),
                        (results / "memory-20261201-100000.json", "20261201-100000")):
        rec = json.loads(path.read_text())
        rec["when"] = stamp  # save stamps the clock; the test fixes the dates
        path.write_text(json.dumps(rec))
    # Older formats: no format_version, another version; both newer than the real ones.
    (results / "memory-20261202-000000.json").write_text(json.dumps(
        {"benchmark": "bench_memory", "when": "20261202-000000", "recall": {"p95": 1.0}}))
    (results / "memory-20261203-000000.json").write_text(json.dumps(
        {"format_version": 99, "kind": "memory", "when": "20261203-000000", "rows": [], "goals": []}))
    caplog.set_level("INFO", logger="bench.report")

    assert report.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1  # stale
    assert readme.read_text() == README  # --check writes nothing
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert report.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0

    section = text.split(report.BEGIN)[1].split(report.END)[0]
    assert "hand-typed" not in section and "kept as it is" in text.split(report.END)[1]
    assert text.startswith("# Benchmarks\n\n## Last measured\n\n")
    assert "### memory" in section
    assert "Newest run 2026-12-01 12:00: bench_memory --quick (20261201-120000)" in section
    assert "before 3.25 / 1.00 / 0.50" in section
    # The newest record's rows, pipes escaped.
    assert "| recall p50 / p95 @ 10k | 5.0 / 12.5 ms | InMemoryStore 30 / 40 ms | 4.3x |" in section
    assert "| a \\| pipe | 1 | 2 |  |" in section
    assert "9.5 ms" not in section.split("Goals")[0]  # the older run's rows are not shown
    # Goals: one column per run, newest first, with the measured value and the verdict.
    assert "| goal | 2026-12-01 12:00 (load 3.25) | 2026-12-01 10:00 (load 0.50) |" in section
    assert "| recall p95 at 10k <= 10 ms | 12.5 ms **FAIL** | 9.5 ms PASS |" in section
    assert "| top-5 agreement >= 95% | 99% PASS | 99% PASS |" in section
    # Records in other formats are skipped, and the output says so.
    assert "20261202" not in section and "20261203" not in section
    logged = caplog.text
    assert "skipped memory-20261202-000000.json (no format_version)" in logged
    assert "skipped memory-20261203-000000.json (format_version 99)" in logged


def test_report_keeps_the_last_three_runs(tmp_path: Path, report: ModuleType, results_mod: ModuleType) -> None:
    results = tmp_path / "results"
    results.mkdir()
    for i, stamp in enumerate(("20261201-010000", "20261201-020000", "20261201-030000", "20261201-040000")):
        _write(results_mod, results, stamp, 8.0 + i, True, 1.0)
        path = results / f"memory-{stamp}.json"
        rec = json.loads(path.read_text())
        rec["when"] = stamp
        path.write_text(json.dumps(rec))
    records, skipped = report.load_records(results)
    assert len(records) == 4 and not skipped
    body = report.render(records)
    assert "Goals, last 3 runs" in body
    assert "| recall p95 at 10k <= 10 ms | 11.0 ms PASS | 10.0 ms PASS | 9.0 ms PASS |" in body
    assert "8.0 ms" not in body  # the fourth-newest run is not shown


def test_report_refuses_a_readme_without_markers(tmp_path: Path, report: ModuleType) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert report.main(["--results", str(tmp_path / "none"), "--readme", str(readme)]) == 2
    assert readme.read_text() == "# no markers\n"


def test_the_committed_readme_matches_the_committed_records() -> None:
    """bench/README.md's "Last measured" is what bench/report.py makes of bench/results/:
    a figure typed by hand, or a run whose record was not committed, fails here."""
    report = _module("report")
    assert report.main(["--check"]) == 0, "run `python bench/report.py` and commit bench/results/ with the README"
