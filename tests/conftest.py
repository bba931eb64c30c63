"""Shared fixtures: a memory home with fast deterministic embeddings, and a real Chroma server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakes import HashEmbeddings  # noqa: E402
from waits import TreeProgress  # noqa: E402

from seal_agent import SealMemory  # noqa: E402

TINYSTORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "tinystories-260k"


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer) of tiny-random, built once per test module; training never mutates it."""
    from seal_agent.model import load_model

    return load_model("tiny-random", seed=0)


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[SealMemory]:
    m = SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random")
    yield m
    m.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chroma_server(path: Path, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")
    if not os.path.exists(exe):
        pytest.skip("the `chroma` CLI is not installed")
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False")
    proc = subprocess.Popen(
        [exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    # Until it answers, as long as it is starting (using CPU): under load the interpreter
    # and chromadb's imports take many times their idle 5 s (tests/waits.py).
    progress = TreeProgress(proc.pid)
    while progress.stalled_s() < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma run exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                pass
        except OSError:
            time.sleep(0.2)
            continue
        time.sleep(0.5)  # an answer from another process's server on this port: ours then exits on bind
        if proc.poll() is not None:
            raise RuntimeError(f"chroma run exited with {proc.returncode} (port {port} taken?)")
        return proc
    proc.kill()
    proc.wait()
    raise RuntimeError("chroma run did not answer, and used no CPU for 60 s")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `chroma run` on loopback for the whole session; yields its URL."""
    for attempt in range(3):  # another test process may take the free port first
        port = _free_port()
        try:
            proc = start_chroma_server(tmp_path_factory.mktemp("chroma-server"), port)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A throwaway PostgreSQL cluster on loopback (tests/pgcluster.py) for the session.

    Skipped when PostgreSQL is not installed, unless SEAL_REQUIRE_POSTGRES=1 (CI sets it:
    there a missing server is a failure, not a skip)."""
    from pgcluster import start_cluster

    cluster = start_cluster()
    if cluster is None:
        if os.environ.get("SEAL_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed; .ci/run installs it with apt-get")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    yield cluster
    cluster.destroy()


@pytest.fixture(autouse=True)
def _journal_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """SEAL_TEST_JOURNAL=postgres: every SealMemory a test opens without a journal_url
    gets a fresh Postgres database (through SEAL_JOURNAL_URL), to run SealMemory-level
    test files on the Postgres journal, e.g.
    ``SEAL_TEST_JOURNAL=postgres scripts/test.sh tests/test_memory.py``."""
    if os.environ.get("SEAL_TEST_JOURNAL") == "postgres":
        monkeypatch.setenv("SEAL_JOURNAL_URL", request.getfixturevalue("postgres").create_database("suite"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The demo's file first. Its module fixture runs the real model for minutes, the
    longest piece of the suite: started first, the other test worker (scripts/test.sh
    runs two, whole files each) takes everything else meanwhile. Stable: the rest keep
    their order."""
    items.sort(key=lambda item: 0 if item.path.name == "test_demo.py" else 1)
