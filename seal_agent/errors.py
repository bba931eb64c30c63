"""Every error seal_agent raises on purpose.

`SealAgentError` is the root, so ``except SealAgentError`` catches everything the
library raises deliberately. Each subclass also inherits the nearest builtin
(``ValueError``, ``KeyError``, ...) so code written against the builtins keeps working.

Errors about bad input name the offending field and value: ``ValidationError("score",
1.5, "must be in [-1, 1]")`` reads ``score=1.5: must be in [-1, 1]``.
"""

from __future__ import annotations

import os
import reprlib
from typing import Any

__all__ = [
    "AdapterError",
    "BackendUnavailableError",
    "ConfigError",
    "ConsolidationError",
    "ModelLoadError",
    "NotFoundError",
    "RegistryError",
    "SealAgentError",
    "StorageError",
    "TrainingCancelled",
    "TrainingError",
    "ValidationError",
]


class _BoundedRepr(reprlib.Repr):
    """A repr that cannot crash or blow up: the rejected value may be exactly what a
    plain ``repr`` chokes on (metadata nested 10,000 deep recurses past the interpreter's
    limit; ``10**5000`` exceeds Python's int-to-str digit limit and raises ValueError)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = limit

    def repr_str(self, x: str, level: int) -> str:
        # The head, not reprlib's head...tail: a message shows where the text starts.
        return repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # formatting a huge int is slow, and refused past 4300 digits
            return f"<int of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return int.__repr__(x)


def _short(value: Any, limit: int = 80) -> str:
    """A repr of `value` at most `limit` characters long, whatever the value."""
    try:
        text = _BoundedRepr(limit).repr(value)
    except Exception:  # a broken __repr__ of a caller's object must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clip(text: str, limit: int = 200) -> str:
    """`text` cut in the middle to `limit` characters (a field path 64 levels deep)."""
    return text if len(text) <= limit else text[: limit // 2 - 2] + " ... " + text[-(limit // 2 - 3):]


class SealAgentError(Exception):
    """Root of every error seal_agent raises deliberately."""


class ValidationError(SealAgentError, ValueError):
    """Bad input: names the field, the value, and what was expected.

    Attributes:
        field: Dotted path of the offending field, e.g. ``"messages[2].role"``.
        value: The value that was rejected.
        reason: What a valid value looks like.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{_clip(str(field))}={_short(value)}: {reason}")


class ConfigError(ValidationError):
    """A configuration field is invalid (raised from a config's ``__post_init__``)."""


class NotFoundError(SealAgentError, KeyError):
    """An id, version or name that does not exist."""

    def __init__(self, kind: str, key: Any) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} not found: {_short(key)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class BackendUnavailableError(SealAgentError, ConnectionError):
    """The vector store (Chroma) cannot be reached or failed."""


class StorageError(SealAgentError, OSError):
    """A file of the memory home is damaged, unreadable, read-only, or its disk is full.

    The message names the file, what is wrong with it, and what to do (restore from a
    backup, rebuild the index, free space, open read-only). Nothing acknowledged is lost
    when it is raised: a write that fails this way leaves the journal as it was.

    Attributes:
        path: The file or folder concerned (None when unknown).
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        # OSError's own constructor would read (errno, strerror, filename) from several
        # arguments; one argument keeps ``str(exc)`` our message.
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class ModelLoadError(SealAgentError, OSError):
    """A model or tokenizer could not be loaded from the given name or path."""


class AdapterError(SealAgentError, ValueError):
    """An adapter is corrupt, incomplete, or was trained on another base model."""


class RegistryError(SealAgentError, RuntimeError):
    """The adapter registry is in a state that forbids the requested operation."""


class TrainingError(SealAgentError, RuntimeError):
    """Training could not run (e.g. no usable examples, diverged loss)."""


class TrainingCancelled(SealAgentError):
    """Training was cancelled through its cancel event; nothing was committed."""


class ConsolidationError(SealAgentError, RuntimeError):
    """A consolidation run could not proceed (e.g. the home is locked)."""
