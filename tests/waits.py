"""Waiting on a child process's progress, not on a clock (issue 22, item 11).

On a busy 2-core machine (load 3-10) the demo took 18 minutes instead of 5 and fixed
timeouts killed tests that were working. Here a wait ends when the child ends, and fails
only after `stall_s` seconds in which neither the child nor any of its descendants used
any CPU time and, where there is output to watch, nothing was written: a hang, not a
slow machine. The global ``--timeout`` of scripts/test.sh stays as a last guard against
a test that hangs while spinning.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from typing import Any

import psutil

__all__ = ["STALL_S", "TreeProgress", "communicate", "run", "wait"]

STALL_S = 300.0
"""Seconds of no CPU use at all by a child and its descendants before it counts as hung."""


class TreeProgress:
    """Whether a process tree used CPU since the last look (`moved`), and for how long it has not."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._cpu = -1.0
        self._since = time.monotonic()

    def cpu_seconds(self) -> float:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:  # gone: its exit is what the caller waits for
            return self._cpu
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        return total

    def moved(self) -> bool:
        """True (and the stall clock restarts) if the tree used CPU since the last call."""
        cpu = self.cpu_seconds()
        if cpu > self._cpu:
            self._cpu = cpu
            self.touch()
            return True
        return False

    def touch(self) -> None:
        """Progress seen some other way (output written)."""
        self._since = time.monotonic()

    def stalled_s(self) -> float:
        self.moved()
        return time.monotonic() - self._since


def _fail(proc: subprocess.Popen[Any], what: str, stalled: float) -> None:
    import pytest

    proc.kill()
    proc.wait()
    pytest.fail(f"{what or proc.args!r}: no progress (no CPU time used, no output) for {stalled:.0f}s; killed")


def wait(proc: subprocess.Popen[Any], *, stall_s: float = STALL_S, what: str = "") -> int:
    """`proc.wait()` for as long as the process tree keeps working; its exit status."""
    progress = TreeProgress(proc.pid)
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            stalled = progress.stalled_s()
            if stalled >= stall_s:
                _fail(proc, what, stalled)


def communicate(proc: subprocess.Popen[Any], *, input: Any = None, stall_s: float = STALL_S,
                what: str = "") -> tuple[Any, Any]:
    """`proc.communicate()` for as long as the process tree keeps working."""
    progress = TreeProgress(proc.pid)
    while True:
        try:
            return proc.communicate(input=input, timeout=1.0)
        except subprocess.TimeoutExpired:
            input = None  # communicate keeps feeding what it was given: not again
            stalled = progress.stalled_s()
            if stalled >= stall_s:
                _fail(proc, what, stalled)


def run(argv: list[str], *, input: Any = None, text: bool = False, stall_s: float = STALL_S,
        **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(argv, capture_output=True)` that waits on progress instead of a timeout.

    Output goes to temporary files, not pipes: a long, chatty child (the demo) never blocks
    on a full pipe while nobody reads it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else None, stdout=out,
                                stderr=err, **kwargs)
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input.encode() if isinstance(input, str) else input)
            proc.stdin.close()
        code = wait(proc, stall_s=stall_s, what=" ".join(map(str, argv))[:200])
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if text:
        return subprocess.CompletedProcess(argv, code, stdout.decode(), stderr.decode())
    return subprocess.CompletedProcess(argv, code, stdout, stderr)
