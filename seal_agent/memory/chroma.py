"""Chroma clients: embedded (`PersistentClient` under the memory home) or a server (`HttpClient`).

Both give the same `ClientAPI`, so everything above this module has one code path.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from seal_agent.errors import BackendUnavailableError, StorageError, ValidationError

__all__ = [
    "check_embedded",
    "embedded_record_count",
    "is_storage_fault",
    "make_client",
    "parse_chroma_url",
    "snapshot_embedded",
]

logger = logging.getLogger(__name__)

_SQLITE_MAGIC = b"SQLite format 3\x00"
# "(code: N)" in the errors Chroma's Rust core passes on from SQLite
_SQLITE_CODE = re.compile(r"\(code: (\d+)\)")


def _damaged(path: Path, what: str) -> StorageError:
    folder = path.parent if path.name == "chroma.sqlite3" else path
    return StorageError(
        f"the Chroma index {path} is damaged: {what}. The index holds nothing the journal lacks and "
        f"can be rebuilt from it: move {folder} away (e.g. `mv {folder} {folder}.damaged`) and open the "
        "home again; every interaction is then re-indexed", path=path)


def _storage_error(exc: BaseException, path: Path) -> StorageError | None:
    """The `StorageError` an error of Chroma's embedded store stands for, or None."""
    text = str(exc)
    match = _SQLITE_CODE.search(text)
    code = int(match.group(1)) & 0xFF if match else None
    if code in (11, 26) or "malformed" in text or "not a database" in text:
        return _damaged(path, text)
    if code == 13 or "disk is full" in text or "No space left" in text:
        return StorageError(f"cannot write the Chroma index {path}: disk full ({text}); free some space. "
                            "Nothing acknowledged is lost: the journal keeps every interaction", path=path)
    if code in (8, 14) or "readonly database" in text:
        return StorageError(f"cannot open the Chroma index {path} for writing: it is read-only ({text}). "
                            "To recall only, open the home with SealMemory(home, read_only=True)", path=path)
    return None


def is_storage_fault(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is a fault of the disk or of a file -- full, read-only,
    damaged -- which no retry within seconds can cure (unlike a Chroma server restarting)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, StorageError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO):
            return True
        if _storage_error(exc, Path("chroma")) is not None:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def check_embedded(home: str | os.PathLike[str]) -> None:
    """Refuse an embedded Chroma whose database file is not an SQLite database.

    Cheap (reads 16 bytes), so `SealMemory` runs it at open: Chroma itself would only
    fail later, in the background worker, with an error that names no file.

    Raises:
        StorageError: ``home/chroma/chroma.sqlite3`` is a folder or has a garbage header;
            the message says how to rebuild the index from the journal.
    """
    path = Path(home) / "chroma" / "chroma.sqlite3"
    if path.is_dir():
        raise _damaged(path, "it is a folder, not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot read the Chroma index {path}: {exc.strerror or exc}", path=path) from exc
    if head and head != _SQLITE_MAGIC:
        raise _damaged(path, "it is not an SQLite database (its header is garbage)")


def embedded_record_count(home: str | os.PathLike[str], collection: str) -> int:
    """Records the index named `collection` holds in the embedded Chroma under `home`: its
    per-namespace collections (``seal_index`` metadata), and a single collection of that
    name as older homes have it (0 when there is none)."""
    if not (Path(home) / "chroma" / "chroma.sqlite3").is_file():
        return 0
    client = make_client(home)
    try:
        total = 0
        for coll in client.list_collections():
            md = dict(coll.metadata or {})
            if coll.name == collection or md.get("seal_index") == collection:
                total += int(coll.count())
        return total
    except Exception as exc:  # an unreadable index is reported by whoever opens it next
        logger.debug("counting the records of %s failed: %s", home, exc)
        return 0
    finally:
        if hasattr(client, "close"):  # release it: the index opens its own when it needs one
            try:
                client.close()
            except Exception as exc:
                logger.debug("closing the Chroma client of %s failed: %s", home, exc)


def snapshot_embedded(home: str | os.PathLike[str]) -> Path:
    """Copy ``home/chroma`` into a new temporary folder and return that folder.

    Chroma cannot open its files on a read-only disk (it writes on open), so a
    read-only `SealMemory` recalls from a private copy, deleted at `close`.
    """
    src = Path(home) / "chroma"
    tmp = Path(tempfile.mkdtemp(prefix="seal-readonly-"))
    try:
        if src.is_dir():
            shutil.copytree(src, tmp / "chroma")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"cannot copy the Chroma index {src} for read-only use to {tmp}: "
                           f"{exc.strerror or exc}", path=src) from exc
    logger.info("read-only home: recalling from a copy of %s in %s", src, tmp)
    return tmp


def parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """Split ``http(s)://host:port`` into host, port and ssl; errors name the value."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError("chroma_url", url, "must look like http://host:port or https://host:port")
    ssl = parsed.scheme == "https"
    return parsed.hostname, parsed.port or (443 if ssl else 8000), ssl


def make_client(home: str | os.PathLike[str] | None = None, *, chroma_url: str | None = None) -> Any:
    """A Chroma client: a server when `chroma_url` is set, else embedded under ``home/chroma``.

    Anonymous telemetry is switched off: it would try to reach the network.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False, allow_reset=False)
    if chroma_url:
        host, port, ssl = parse_chroma_url(chroma_url)
        try:
            return chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings)
        except Exception as exc:  # chromadb raises ValueError/ConnectionError on a dead server
            raise BackendUnavailableError(f"Chroma server at {chroma_url} is unreachable: {exc}") from exc
    if home is None:
        raise ValidationError("home", home, "an embedded Chroma needs a directory")
    path = Path(home) / "chroma"
    check_embedded(home)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the Chroma index folder {path}: {exc.strerror or exc}",
                           path=path) from exc
    try:
        return chromadb.PersistentClient(path=str(path), settings=settings)
    except Exception as exc:
        err = _storage_error(exc, path / "chroma.sqlite3")
        if err is None:
            raise
        raise err from exc
