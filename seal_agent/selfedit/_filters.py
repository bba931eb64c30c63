"""Quality filters for self-edits: why an item is dropped, and the hash that dedups it.

Every rule returns a *reason* (a key of `SelfEditBatch.dropped`) rather than raising,
because a bad self-edit is an expected outcome of sampling a model, not an error.

The degeneracy rule (small models sampled at a temperature loop and stutter):
an item is degenerate when any of these holds

- it contains a control character (other than tab and newlines) or U+FFFD, the
  replacement character: bytes decoded from a model emitting broken tokens, not language;
- a single non-space character repeats 20 or more times in a row (``"!!!!..."``,
  ``"aaaa..."``);
- it has at least 12 words and fewer than 30% of them are distinct
  (``"the the the cat the the ..."``);
- one word trigram occurs 4 or more times (``"I think so. I think so. I think so. ..."``).

The thresholds are deliberately loose: a legitimate sentence or short paragraph
(at most ``max_item_chars``, 1,000 characters by default) almost never repeats a
three-word phrase four times, while a looping model does so within a few lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any

from seal_agent.memory.provenance import content_words, unsupported_words

__all__ = ["DROP_REASONS", "content_words", "example_hash", "is_degenerate", "rejection", "unsupported_words"]

DROP_REASONS = (
    "empty",
    "degenerate",
    "duplicate",
    "too_long",
    "too_short",
    "over_cap",
    "unparseable",
    "truncated",
    "teacher_error",
    "excluded",
    "unsupported",
)
"""Every reason an item (or a whole model response) can be dropped for."""

_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_CHAR_RUN = re.compile(r"(\S)\1{19,}")
_WORD = re.compile(r"\w+")
_MIN_WORDS_FOR_RATIO = 12
_MIN_UNIQUE_RATIO = 0.3
_MAX_TRIGRAM_REPEATS = 3


def is_degenerate(text: str) -> bool:
    """Whether `text` looks like a looping model or broken tokens (see the module docstring)."""
    if _NOT_TEXT.search(text) or _CHAR_RUN.search(text):
        return True
    words = _WORD.findall(text.lower())
    if len(words) >= _MIN_WORDS_FOR_RATIO and len(set(words)) / len(words) < _MIN_UNIQUE_RATIO:
        return True
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and max(trigrams.values()) > _MAX_TRIGRAM_REPEATS


def rejection(text: str, *, min_chars: int, max_chars: int | None) -> str | None:
    """Why `text` must be dropped, or None to keep it.

    Args:
        text: The part of an item the model wrote (or the logged text, for ``raw``).
        min_chars: Shorter (after stripping) is ``"too_short"``.
        max_chars: Longer is ``"too_long"``; None skips both length checks (logged
            text was size-checked when it was logged).

    Returns:
        ``"empty"``, ``"too_short"``, ``"too_long"``, ``"degenerate"`` or None.
    """
    stripped = text.strip()
    if not stripped:
        return "empty"
    if max_chars is not None:
        if len(stripped) < min_chars:
            return "too_short"
        if len(stripped) > max_chars:
            return "too_long"
    if is_degenerate(stripped):
        return "degenerate"
    return None


def example_hash(example: dict[str, Any]) -> str:
    """sha256 of a training example's canonical JSON: equal examples, equal hashes."""
    blob = json.dumps(example, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


