"""Every example in examples/ runs offline and does what it says."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))

# What each example must print: proof that it recalled, not merely ran.
EXPECT = {
    "create_agent_middleware.py": ['maya: You told me: "My favourite city is Kyoto."',
                                   'leo:  You told me: "My favourite city is Lisbon."'],
    "state_graph_nodes.py": ['You told me: "I keep my spare key under the blue pot."'],
    "react_agent_hooks.py": ['You told me: "My locker number is 42."'],
    "memory_tools.py": ["Nadia's train is at 7:40"],
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(path)])  # as if run from the shell, no arguments
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    for expected in EXPECT.get(path.name, []):
        assert expected in out
    assert path.name in EXPECT or out.strip(), f"{path.name} printed nothing"
