"""One writer for a home's embedded Chroma: the process that holds ``home/chroma.lock``.

Embedded Chroma keeps its vector index in the memory of the process that opened it, so
two processes writing one ``home/chroma`` lose records (36 of 3,000 in a test) and a
process never sees what another wrote. The journal, on the other hand, is safe for any
number of processes (SQLite's own locking). So on a home with embedded Chroma:

* the first process to open it becomes the *index owner*: it opens Chroma and runs the
  indexing worker, which also polls the journal for rows other processes logged;
* every other process is a *journal client*: `log`, `feedback`, `forget`, `list`,
  `get`, `status` and consolidation work (they only touch the journal and the adapter
  registry) and the owner indexes what they write within a second; `recall` takes over
  the index if the owner has gone, and otherwise raises `BackendUnavailableError`
  pointing to server mode (``chroma run`` + ``chroma_url``), where every process reads
  and writes the same server.

The lock is an ``flock`` on an open file: the kernel drops it when the owner exits,
``kill -9`` included, so a crashed owner never blocks the home. Several `SealMemory`
objects of one process share the ownership (they share one Chroma client too).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

__all__ = ["IndexOwnership"]

logger = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per home is then the user's job
    fcntl = None  # type: ignore[assignment]

# path -> (fd, users in this process)
_held: dict[str, tuple[int, int]] = {}
_held_lock = threading.Lock()


def _forget_inherited() -> None:
    # A forked child shares the parent's lock (same open file description) but is not the
    # owner: the parent's Chroma state is not its own. Make it ask again (and fail).
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited)


class IndexOwnership:
    """The ``chroma.lock`` of one home.

    Args:
        path: The lock file, e.g. ``home/chroma.lock``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._key = str(self.path.resolve())
        self.owned = False
        self.problem: str | None = None  # why the lock file could not even be opened

    def try_acquire(self) -> bool:
        """Become (or stay) the owner if no other process is; True if this object owns it."""
        if self.owned:
            return True
        with _held_lock:
            held = _held.get(self._key)
            if held is not None:
                _held[self._key] = (held[0], held[1] + 1)
                self.owned = True
                return True
            if fcntl is None:
                self.owned = True
                return True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # e.g. a read-only home: nobody here can write the index
                self.problem = f"cannot open {self.path}: {exc.strerror or exc}"
                return False
            self.problem = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            _held[self._key] = (fd, 1)
            self.owned = True
            return True

    def release(self) -> None:
        """Stop owning (the lock is dropped when the last user in this process releases)."""
        if not self.owned:
            return
        self.owned = False
        if fcntl is None:
            return
        with _held_lock:
            fd, users = _held.get(self._key, (-1, 0))
            if users > 1:
                _held[self._key] = (fd, users - 1)
                return
            _held.pop(self._key, None)
        if fd >= 0:
            os.close(fd)  # closing the descriptor drops the flock

    def holder(self) -> str:
        """Who owns the index, for messages: ``"pid 1234"`` or ``"another process"``."""
        if self.problem:
            return f"nobody ({self.problem})"
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return f"pid {pid}" if pid.isdigit() else "another process"
