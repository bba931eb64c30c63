"""Chroma clients: embedded (`PersistentClient` under the memory home) or a server (`HttpClient`).

Both give the same `ClientAPI`, so everything above this module has one code path.

An embedded Chroma keeps the four HNSW files of every collection it has loaded open (twice
when it has written it), in
a cache sized from the soft ``RLIMIT_NOFILE`` (a fifth of it: 80 % of the process's files),
and that cache does not even bound them (measured: ~0.5 more open files per collection
past its size). With one collection per namespace that exhausted ``ulimit -n 1024`` at
~250 tenants. Closing the client is the one way to release them: `ChromaIndex` does so
after `open_collections_cap` namespaces, and `open_files_fault` turns the errors Chroma
gives at the limit ("Nothing found on disk", "unable to open database file") into one
that names it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from seal_agent._fs import held_by_this_process
from seal_agent.errors import BackendUnavailableError, StorageError, ValidationError

__all__ = [
    "check_embedded",
    "client_location",
    "connection_fault",
    "embedded_record_count",
    "is_storage_fault",
    "make_client",
    "open_collections_cap",
    "open_files_fault",
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
    if held_by_this_process(path):
        return  # a client of this process has it open (checked then); a close here drops its locks
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


def _soft_nofile() -> tuple[int | None, int | None]:
    """The process's (soft, hard) limit of open files; None for unlimited or unknown."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None, None
    return (None if soft == resource.RLIM_INFINITY else soft), (None if hard == resource.RLIM_INFINITY else hard)


def open_collections_cap(max_open_collections: int) -> int:
    """How many collections an embedded Chroma may keep loaded: `max_open_collections`, and
    at most a sixteenth of the soft open-files limit. Each keeps up to 8 files open (the
    4 HNSW files, read and written through separate handles; measured): that is half the
    limit, the rest for the journal, the model, sockets ..."""
    soft, _ = _soft_nofile()
    return max(1, max_open_collections if soft is None else min(max_open_collections, soft // 16))


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < 8 and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


# What Chroma and SQLite say when a file cannot be opened; with the process at its limit
# of open files that is the cause, whatever the text.
_OPEN_FAILED = ("nothing found on disk", "unable to open database file", "error creating hnsw segment",
                "failed to open", "(code: 14)")


def _fds_in_use() -> int | None:
    """Open files of this process; the soft limit when even listing them fails for lack of one."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            soft, _ = _soft_nofile()
            return soft
        return None  # no /proc (not Linux): only an explicit EMFILE is recognised


def open_files_fault(exc: BaseException, where: str | os.PathLike[str], max_open_collections: int | None = None
                     ) -> StorageError | None:
    """The `StorageError` naming the open-files limit when `exc` comes from the process
    having run out of file descriptors (else None).

    Args:
        where: The Chroma folder, for the message.
        max_open_collections: The `memory.max_open_collections` in force, for the message.
    """
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    explicit = (any(isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE) for e in chain)
                or "too many open files" in text or "os error 24" in text)
    if not explicit and not any(sign in text for sign in _OPEN_FAILED):
        return None
    soft, hard = _soft_nofile()
    used = _fds_in_use()
    # The files a failed open had taken are closed again by the time we look: half the
    # limit in use already says where the process is going.
    if not explicit and (soft is None or used is None or used < soft // 2):
        return None  # far from the limit: the file is missing or damaged, not unopenable
    setting = ("" if max_open_collections is None else
               f" (memory.max_open_collections = {max_open_collections}; used: "
               f"{open_collections_cap(max_open_collections)})")
    detail = str(exc)
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    return StorageError(
        f"too many open files: this process has {used if used is not None else '?'} files open and its soft limit "
        f"(`ulimit -n`) is {soft if soft is not None else 'unlimited'}, so Chroma could not open the index "
        f"{where} ({detail}). The embedded index keeps up to 8 files open per recently used namespace{setting}: "
        "lower memory.max_open_collections in config.toml, or raise the limit (`ulimit -n 4096` in the shell "
        f"that starts the process{'' if hard is None else f'; {hard} is the most it can be without root'}), "
        "or close files this process keeps open. Nothing acknowledged is lost: the journal keeps every "
        "interaction", path=where)


def connection_fault(exc: BaseException, location: str) -> BackendUnavailableError | None:
    """The `BackendUnavailableError` naming `location` when `exc` says a Chroma server could
    not be reached or dropped the connection (else None)."""
    try:
        import httpx

        transport: tuple[type[BaseException], ...] = (httpx.TransportError, ConnectionError, TimeoutError)
    except ImportError:  # pragma: no cover - chromadb depends on httpx
        transport = (ConnectionError, TimeoutError)
    if not any(isinstance(e, transport) for e in _chain(exc)):
        return None
    return BackendUnavailableError(
        f"the Chroma server at {location} cannot be reached ({type(exc).__name__}: {exc}). Nothing acknowledged "
        "is lost: the journal keeps every interaction and the indexing worker retries with back-off")


def client_location(client: Any) -> str:
    """The URL of a Chroma server client, or the folder of an embedded one (for messages)."""
    try:
        settings = client.get_settings()
    except Exception:  # any client without settings: say what it is
        return type(client).__name__
    if getattr(settings, "chroma_server_host", None):
        scheme = "https" if getattr(settings, "chroma_server_ssl_enabled", False) else "http"
        return f"{scheme}://{settings.chroma_server_host}:{settings.chroma_server_http_port}"
    return str(getattr(settings, "persist_directory", "") or "an in-memory Chroma")


def make_client(home: str | os.PathLike[str] | None = None, *, chroma_url: str | None = None,
                max_open_collections: int | None = None) -> Any:
    """A Chroma client: a server when `chroma_url` is set, else embedded under ``home/chroma``.

    Anonymous telemetry is switched off: it would try to reach the network.

    Args:
        max_open_collections: The `memory.max_open_collections` in force, for the message
            of an open-files error (the bound itself is `ChromaIndex`'s).
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
        err = open_files_fault(exc, path, max_open_collections) or _storage_error(exc, path / "chroma.sqlite3")
        if err is None:
            raise
        raise err from exc
