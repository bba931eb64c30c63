"""Chroma clients: embedded (`PersistentClient` under the memory home) or a server (`HttpClient`).

Both give the same `ClientAPI`, so everything above this module has one code path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from seal_agent.errors import BackendUnavailableError, ValidationError

__all__ = ["make_client", "parse_chroma_url"]


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
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=settings)
