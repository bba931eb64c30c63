"""A throwaway PostgreSQL cluster on loopback for the tests and the benchmark.

Why not a container or a shared server: CI installs PostgreSQL from the distribution's
packages (``.ci/run``) and every test session gets its own cluster in a temporary folder,
so nothing outlives the run and nothing is shared between runs. ``postgres`` refuses to
run as root, so as root the cluster runs as ``nobody`` with a data folder it owns.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["PgCluster", "find_pg_bin", "start_cluster"]


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian's packages keep them off PATH)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One cluster: `url` for a database on it, `stop`/`start` to simulate an outage."""

    def __init__(self, bindir: Path, datadir: Path, port: int) -> None:
        self.bindir, self.datadir, self.port = bindir, datadir, port
        self._as = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 600) -> None:
        # `timeout`: seconds without progress (no CPU used by the command and its children,
        # tests/waits.py), not a clock: initdb and a start take many times longer under load.
        from waits import run

        proc = run([*self._as, *args], text=True, stall_s=timeout)
        if proc.returncode:
            log = (self.datadir / "server.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr or proc.stdout}\n{tail}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.datadir} "
                "-c max_connections=200 -c synchronous_commit=on -c fsync=on")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.datadir / "server.log"),
                  "-o", opts, "-w", "-t", "600", "start")  # pg_ctl's wait: only a hang guard

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_cluster() -> PgCluster | None:
    """initdb + start a cluster on a free loopback port; None when PostgreSQL is not installed."""
    bindir = find_pg_bin()
    if bindir is None:
        return None
    base = Path(tempfile.mkdtemp(prefix="seal-pg-"))
    datadir = base / "data"
    datadir.mkdir()
    if os.geteuid() == 0:
        os.chmod(base, 0o755)
        shutil.chown(datadir, "nobody", "nogroup" if _has_group("nogroup") else None)
    os.chmod(datadir, 0o700)
    cluster = PgCluster(bindir, datadir, _free_port())
    cluster._run(str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--no-sync")
    for attempt in range(3):
        try:
            cluster.start()
            return cluster
        except RuntimeError:  # the port was taken in between: try another
            if attempt == 2:
                raise
            cluster.port = _free_port()
            time.sleep(0.2)
    return cluster


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
