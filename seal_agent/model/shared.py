"""One frozen base model per process, shared by serving, training and the gate.

Serving (`AdaptiveChatModel`), training (`seal_agent.training.train_adapter`) and the
gate all need the same base weights, but they must not share a *module tree*: serving
injects its LoRA adapters into its model, the trainer and the gate inject theirs, and
PEFT's active adapter is module state. Loading a second copy of the base for training
(what consolidation did before) costs a full load (8-27 s for SmolLM2-135M on a loaded
2-core box) and a second set of weights (2.2-3.8 GB peak while training a 135M model).

So the weights are shared and the module trees are not:

* `load_shared` loads a model once per key -- ``(name_or_path, device, dtype, seed,
  files' mtime)`` -- freezes it (``requires_grad=False`` on every parameter: nothing in
  seal_agent trains base weights) and registers its *pristine* tensors (parameters and
  buffers, by reference, captured before anyone injects LoRA layers) in a process-wide
  registry. The first caller gets the loaded model itself.
* A later `load_shared` with the same key gets a *twin*: a new module tree built with
  its parameters on the meta device (accelerate's ``init_empty_weights``, no memory),
  whose parameters and buffers are then set to the registered tensors -- the same
  storage (``data_ptr`` equal), not copies. Tied weights stay tied (one tensor
  registered once, one Parameter in the twin for every name that shares it). PEFT then
  wraps only the twin's modules: the served model's `PeftModel`, its adapters and its
  active adapter are untouched, and no lock is needed between the two.
* The tensors are read-only for everyone: LoRA never writes them, and `peft.unload()`
  (the gate, the writer) removes layers without merging. A checksum test guards it.

Lifetime: an entry lives while any model it handed out is alive (the registry holds
the tensors only on their behalf; weak references to the owners). `SealMemory` keeps its
served model for its whole life, so a consolidation and the served model share one base
however many runs there are; when the last owner is collected, the weights are freed.

Tokenizers are not shared: each twin gets its own copy (a fast tokenizer's Rust state
is not safe to use from two threads at once, and copying it takes milliseconds).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seal_agent.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["SharedKey", "load_shared", "shared_bases", "shared_key"]

logger = logging.getLogger(__name__)

SharedKey = tuple[str, str, str, int, float | None]
"""``(name_or_path, device, dtype, seed, mtime of the files or None)``: what makes two
loads the same base. Device and dtype are resolved (``"auto"`` -> ``"cpu"``, ...)."""


@dataclass
class _Entry:
    """A registered base: its tensors by reference and what is needed to build a twin."""

    key: SharedKey
    model_class: type
    config: Any  # a private copy of the model's config
    generation_config: Any
    tokenizer: Any  # a private copy; twins get copies of it
    name_or_path: Any  # the model's own attribute (PEFT records it in adapter configs)
    params: dict[str, torch.Tensor]  # every name (tied ones too) -> the frozen tensor
    buffers: dict[str, torch.Tensor]  # persistent and non-persistent (rotary inv_freq, ...)
    owners: set[int] = field(default_factory=set)
    twins_built: int = 0

    @property
    def nbytes(self) -> int:
        seen: dict[int, int] = {}
        for t in [*self.params.values(), *self.buffers.values()]:
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return sum(seen.values())


_lock = threading.RLock()  # reentrant: an owner's finalizer may run (GC) while we hold it
_registry: dict[SharedKey, _Entry] = {}
_next_owner = 0


def shared_key(name_or_path: str | os.PathLike[str], *, device: str = "auto", dtype: str = "auto",
               seed: int = 0) -> SharedKey:
    """The registry key of a load (see `SharedKey`).

    Raises:
        ValidationError: `device` or `dtype` is invalid.
    """
    from seal_agent.model.loader import TINY_RANDOM, resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    name = os.fspath(name_or_path)
    if torch_device.type == "cuda" and torch_device.index is None:
        import torch

        torch_device = torch.device("cuda", torch.cuda.current_device())
    # Seed only shapes tiny-random; for any other model two seeds are the same weights.
    return (name, str(torch_device), str(torch_dtype), seed if name == TINY_RANDOM else 0, _files_stamp(name))


def _files_stamp(name: str) -> float | None:
    """Latest mtime of a local model's files: a folder rewritten in place is another base."""
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            return max((f.stat().st_mtime for f in path.iterdir() if f.is_file()), default=None)
        if path.is_file():
            return path.stat().st_mtime
    except OSError:
        return None
    return None


def load_shared(
    name_or_path: str | os.PathLike[str],
    *,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`load_model`, loading each base at most once per process (see the module docstring).

    Args:
        name_or_path, device, dtype, seed: As for `seal_agent.model.load_model`.

    Returns:
        ``(model, tokenizer)``: the model in eval mode with every base parameter frozen,
        its own module tree (inject LoRA into it freely) over the process's one copy of
        the base tensors (never write them), and its own tokenizer.

    Raises:
        ModelLoadError: As for `load_model`, or a twin could not be built.
        ValidationError: `device` or `dtype` is invalid.
    """
    key = shared_key(name_or_path, device=device, dtype=dtype, seed=seed)
    with _lock:
        entry = _registry.get(key)
        if entry is not None:
            model, tokenizer = _twin(entry)
            _own(entry, model)
            logger.info("%s: sharing the loaded base weights (twin %d, %.0f MB not loaded again)",
                        key[0], entry.twins_built, entry.nbytes / 2**20)
            return model, tokenizer
        # Loading under the lock: a second thread asking for the same base waits for
        # this load instead of doing its own (the point of the registry).
        from seal_agent.model.loader import load_model

        model, tokenizer = load_model(name_or_path, device=device, dtype=dtype, seed=seed)
        entry = _register(key, model, tokenizer)
        _own(entry, model)
        return model, tokenizer


def shared_bases() -> list[dict[str, Any]]:
    """The registered bases: ``key``, ``owners`` (live models over them), ``twins_built``,
    ``bytes`` (of the one copy of their tensors). For diagnostics and tests."""
    with _lock:
        return [{"key": e.key, "owners": len(e.owners), "twins_built": e.twins_built, "bytes": e.nbytes}
                for e in _registry.values()]


# ------------------------------------------------------------------ internals


def _register(key: SharedKey, model: Any, tokenizer: Any) -> _Entry:
    """Freeze `model` and record its tensors (lock held)."""
    for p in model.parameters():
        p.requires_grad_(False)
    detached: dict[int, Any] = {}  # one detached view per Parameter: tied names share it
    params = {name: detached.setdefault(id(p), p.detach())
              for name, p in model.named_parameters(remove_duplicate=False)}
    buffers = {name: b for name, b in model.named_buffers(remove_duplicate=False)}
    entry = _Entry(key=key, model_class=type(model), config=copy.deepcopy(model.config),
                   generation_config=copy.deepcopy(model.generation_config), tokenizer=copy.deepcopy(tokenizer),
                   name_or_path=getattr(model, "name_or_path", None), params=params, buffers=buffers)
    _registry[key] = entry
    logger.debug("registered shared base %s (%.0f MB)", key[0], entry.nbytes / 2**20)
    return entry


def _own(entry: _Entry, model: Any) -> None:
    """Keep `entry` registered while `model` lives (lock held)."""
    global _next_owner
    _next_owner += 1
    token = _next_owner
    entry.owners.add(token)
    weakref.finalize(model, _release, entry.key, token)


def _release(key: SharedKey, token: int) -> None:
    with _lock:
        entry = _registry.get(key)
        if entry is None or token not in entry.owners:
            return
        entry.owners.discard(token)
        if not entry.owners:
            del _registry[key]
            logger.debug("released shared base %s (no model uses it any more)", key[0])


def _twin(entry: _Entry) -> tuple[Any, Any]:
    """A new module tree over `entry`'s tensors (lock held)."""
    import torch
    from accelerate import init_empty_weights

    config = copy.deepcopy(entry.config)
    try:
        # Parameters on the meta device (no memory, no init); buffers are built for real
        # but replaced below by the registered ones, which also keeps them on the device.
        with init_empty_weights(include_buffers=False):
            twin = entry.model_class(config)
    except Exception as exc:  # a model class that cannot be built from its config
        raise ModelLoadError(f"cannot build a weight-sharing twin of {entry.key[0]}: {exc}") from exc
    made: dict[int, torch.nn.Parameter] = {}  # one Parameter per tensor: tied names stay tied
    for name, tensor in entry.params.items():
        module, leaf = _owner_of(twin, name)
        if leaf not in module._parameters:
            raise ModelLoadError(f"twin of {entry.key[0]} has no parameter {name}")
        param = made.get(id(tensor))
        if param is None:
            param = made[id(tensor)] = torch.nn.Parameter(tensor, requires_grad=False)
        module._parameters[leaf] = param
    for name, tensor in entry.buffers.items():
        module, leaf = _owner_of(twin, name)
        module._buffers[leaf] = tensor
    left = [n for n, t in [*twin.named_parameters(), *twin.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"twin of {entry.key[0]} left tensors without weights: {left[:5]}")
    twin.generation_config = copy.deepcopy(entry.generation_config)
    twin.name_or_path = entry.name_or_path  # what the loaded model says: adapters record the same
    twin.eval()
    entry.twins_built += 1
    return twin, copy.deepcopy(entry.tokenizer)


def _owner_of(model: Any, name: str) -> tuple[Any, str]:
    prefix, _, leaf = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), leaf
