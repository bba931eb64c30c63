"""Small shims over third-party behaviour we cannot change."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_peft"]


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence peft 0.21's use of a transformers v5 API that warns of its own deprecation
    on every wrap; the warning is about peft's code, not the caller's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield
