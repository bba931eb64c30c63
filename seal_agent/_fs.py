"""Crash-safe file writes, shared by everything that persists state in the memory home.

A reader (or the process after a ``kill -9``) sees either the old file or the new one,
never half of one: content goes to a temporary sibling, is fsync'd, and is renamed over
the target; the folder is fsync'd so that the rename itself is durable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["fsync_dir", "held_by_this_process", "remove_dir", "staged_dir", "write_atomic", "write_synced"]


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: Path, text: str) -> None:
    """Write `text` and fsync it (not atomic on its own: see `write_atomic`)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` atomically and durably."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.tmp-", dir=p.parent)
    os.close(fd)
    try:
        write_synced(Path(tmp), text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)
    return p


@contextmanager
def staged_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a temporary sibling; on success it becomes `out` in one rename.

    `out` must not exist or be empty. On an error the temporary folder is removed and
    `out` is untouched, so `out` is always complete or absent.
    """
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            target.rmdir()  # empty by the contract above; rmdir refuses otherwise
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)


def remove_dir(path: str | os.PathLike[str], *, missing_ok: bool = False) -> None:
    """Delete a folder, renamed out of the way first (``.tmp-trash-<name>-<random>``): a
    crash midway leaves a temporary folder, never a half-deleted one under its name."""
    path = Path(path)
    trash = path.with_name(f".tmp-trash-{path.name}-{uuid.uuid4().hex[:6]}")
    try:
        os.replace(path, trash)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    shutil.rmtree(trash, ignore_errors=True)


def held_by_this_process(path: str | os.PathLike[str]) -> bool:
    """Whether this process already has `path` open (Linux: /proc/self/fd; elsewhere False).

    SQLite's locks are POSIX record locks, owned by the process: closing *any* descriptor
    of a database file drops them all, so reading a live database's header with plain
    file I/O while a connection of this process holds it lets another process write
    concurrently (issue 22: a second `SealMemory` on one home did that). Check this
    before opening a database file outside SQLite, and skip the read when it is held.
    """
    try:
        st = os.stat(path)
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            other = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False
