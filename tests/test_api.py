"""The public surface: every exported name resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import seal_agent


def test_every_exported_name_resolves() -> None:
    assert seal_agent.__all__ == sorted(seal_agent.__all__)
    for name in seal_agent.__all__:
        assert getattr(seal_agent, name) is not None, name


def test_import_does_not_load_torch() -> None:
    code = "import sys, seal_agent; print('torch' in sys.modules, 'chromadb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
