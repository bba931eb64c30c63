"""Non-finite numbers (NaN, +-inf): find them in adapter weights and in JSON-bound records.

Every comparison with NaN is False, so a rule written as "reject when x < limit" passes a
NaN; an all-NaN adapter was committed and served that way. The gate, the trainer, the
writer and the registry check with these helpers instead, and write checks as "passes
only if finite and within the limit".

JSON has no NaN or Infinity: ``json.dumps`` writes the tokens ``NaN``/``Infinity``
unless told not to, and strict readers (other languages, ``jq``) refuse the file.
`json_safe` turns them into ``null`` for the records we write; `nonfinite_paths` names
them where a caller's input must be refused instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["adapter_nonfinite", "describe_nonfinite", "is_finite_number", "json_safe", "nonfinite_paths"]

_WEIGHTS = "adapter_model.safetensors"


def is_finite_number(value: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    if isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except TypeError:
        return False


def _is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def json_safe(value: Any) -> Any:
    """A copy of `value` where every non-finite float is None (JSON ``null``).

    Dicts, lists, tuples and sets are copied recursively (tuples and sets become lists),
    numpy/torch scalars become Python numbers; everything else is returned as is.
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "item") and callable(value.item):
        try:  # numpy / torch scalars
            value = value.item()
        except (TypeError, ValueError):
            return value
    return None if _is_nonfinite(value) else value


def nonfinite_paths(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    """``(dotted path, value)`` of every non-finite float inside dicts and lists."""
    out: list[tuple[str, float]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += nonfinite_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out += nonfinite_paths(v, f"{prefix}[{i}]")
    elif _is_nonfinite(value):
        out.append((prefix, value))
    return out


def adapter_nonfinite(folder: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
    """Tensors of an adapter folder's safetensors weights holding NaN or +-inf values.

    Reads each tensor once (a LoRA adapter is small: milliseconds). A missing or
    unreadable file is not reported here: the callers' own checks name that.

    Returns:
        ``(tensor name, NaN count, inf count)`` per tensor with any, in file order.
    """
    import torch
    from safetensors import safe_open

    path = Path(folder) / _WEIGHTS
    out: list[tuple[str, int, int]] = []
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 -- safe_open is not a mapping
            t = f.get_tensor(key)
            if not (t.is_floating_point() or t.is_complex()):
                continue
            finite = torch.isfinite(t)
            if bool(finite.all()):
                continue
            nan = int(torch.isnan(t).sum())
            out.append((key, nan, int((~finite).sum()) - nan))
    return out


def describe_nonfinite(bad: list[tuple[str, int, int]], *, shown: int = 3) -> str:
    """``"3 tensors, e.g. x.lora_B.weight (12 NaN, 0 inf), ..."`` for a reason text."""
    named = ", ".join(f"{k} ({n} NaN, {i} inf)" for k, n, i in bad[:shown])
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    return f"{len(bad)} tensor{'s' if len(bad) != 1 else ''}: {named}{more}"
