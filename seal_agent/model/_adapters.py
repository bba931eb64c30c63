"""LoRA adapters on a served model, swappable while other threads generate.

One `AdapterHost` owns the model. Every adapter it loads becomes a separately
named PEFT adapter on one `PeftModel`; a swap loads the new one beside the old,
points `current` at it, then deletes the old one.

Why a lock and not per-request adapter selection: PEFT's active adapter is global
module state, and its per-request ``adapter_names=`` mechanism works by installing
forward hooks on shared modules -- two threads doing that at once would see each
other's hooks. So generation and the structural part of a swap take the same lock:
a request pins its adapter for its whole duration (it sees the old or the new one,
never a mix), and a swap waits for the running request to finish. Reading and
checking the adapter files happens *before* taking the lock, so generation stalls
only for the in-memory injection. On a CPU, torch already uses every core for one
request, so serialising requests costs little; for many concurrent users on a GPU,
serve through vLLM's multi-LoRA instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from seal_agent._compat import quiet_peft
from seal_agent.errors import AdapterError

__all__ = ["AdapterHost"]

logger = logging.getLogger(__name__)


class AdapterHost:
    """Holds a model, its loaded LoRA adapters, and the lock that orders them.

    Args:
        model: A transformers causal LM, or a `PeftModel` (its own adapters stay
            loaded; the active one is served until `swap` is called).
    """

    def __init__(self, model: Any) -> None:
        from peft import PeftModel

        self.model = model
        self._lock = threading.Lock()
        self._counter = 0
        self._owned: set[str] = set()  # adapters this host loaded, and may delete
        self._base_hash: str | None = None
        self._current: str | None = None  # PEFT adapter name serving; None = base model
        self.label: str | None = None  # what the user asked for: a version or a path
        if isinstance(model, PeftModel):
            self._current = model.active_adapter
            self.label = self._current

    @property
    def base_hash(self) -> str:
        """`base_model_hash` of the served base model (computed once)."""
        if self._base_hash is None:
            from seal_agent.model.loader import base_model_hash

            self._base_hash = base_model_hash(self.model)
        return self._base_hash

    @contextmanager
    def pinned(self) -> Iterator[Any]:
        """Hold the lock with the current adapter active; yields the model to run."""
        with self._lock:
            model = self.model
            if self._current is None:
                if hasattr(model, "disable_adapter"):  # a PeftModel serving the base
                    with model.disable_adapter():
                        yield model
                    return
            else:
                model.set_adapter(self._current)
            yield model

    def swap(self, path: Path | None, label: str | None) -> None:
        """Serve the adapter in `path` (None: the base model) from now on.

        Args:
            path: A PEFT LoRA adapter folder, or None for the base model.
            label: The name reported by `label` (a registry version or the path).

        Raises:
            AdapterError: The folder is missing, corrupt, not LoRA, or made for
                another base model. The previously served adapter keeps serving.
        """
        if path is None:
            with self._lock:
                # Keep the old adapter loaded: a PeftModel with no adapter at all is
                # not a state PEFT supports well, and disable_adapter serves the base.
                self._current, self.label = None, None
            return
        config, weights = self._read(path)
        with self._lock:
            self._counter += 1
            name = f"seal_{self._counter}"
            self._inject(name, config, weights, path)
            stale = self._owned - {name}
            self._owned.add(name)
            self._current, self.label = name, label
            self.model.set_adapter(name)
            for old in stale:  # no request runs (we hold the lock): safe to delete
                self.model.delete_adapter(old)
                self._owned.discard(old)
        logger.info("serving adapter %s from %s", label, path)

    def _read(self, path: Path) -> tuple[Any, dict[str, Any]]:
        """Read and check an adapter folder without touching the model."""
        from peft import LoraConfig, PeftConfig
        from peft.utils import load_peft_weights

        if not path.is_dir():
            raise AdapterError(f"adapter folder does not exist: {path}")
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"not a PEFT adapter folder (no adapter_config.json): {path}")
        try:
            config = PeftConfig.from_pretrained(str(path))
        except Exception as exc:  # PEFT raises many types for a bad config file
            raise AdapterError(f"corrupt adapter_config.json in {path}: {exc}") from exc
        if not isinstance(config, LoraConfig):
            raise AdapterError(f"only LoRA adapters are supported, {path} holds {config.peft_type}")
        self._check_manifest(path)
        try:
            weights = load_peft_weights(str(path), device=str(_device_of(self.model)))
        except Exception as exc:  # missing file, truncated safetensors, bad pickle
            raise AdapterError(f"cannot read adapter weights in {path}: {exc}") from exc
        if not weights:
            raise AdapterError(f"adapter weights in {path} are empty")
        config.inference_mode = True
        return config, weights

    def _check_manifest(self, path: Path) -> None:
        """Refuse an adapter whose registry manifest names another base model, or whose
        weights are not the ones the manifest recorded."""
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            return
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise AdapterError(f"corrupt manifest.json in {path}: {exc}") from exc
        expected = _manifest_base_hash(manifest)
        if expected is not None and expected != self.base_hash:
            raise AdapterError(
                f"adapter {path} was trained on another base model "
                f"(base hash {expected[:12]}..., serving {self.base_hash[:12]}...)"
            )
        # A registry version: its weights must be the ones committed (size and sha256), so
        # a deleted, cut-short or altered file is refused by name before PEFT reads it.
        from seal_agent.registry import check_weights

        problem = check_weights(path, manifest if isinstance(manifest, dict) else None)
        if problem is not None:
            raise AdapterError(f"adapter {path} is damaged: {problem}")

    def _inject(self, name: str, config: Any, weights: dict[str, Any], path: Path) -> None:
        """Add adapter `name` to the model and load its weights; undo on failure."""
        from peft import PeftModel, get_peft_model, set_peft_model_state_dict

        try:
            if isinstance(self.model, PeftModel):
                self.model.add_adapter(name, config)
            else:
                with quiet_peft():
                    self.model = get_peft_model(self.model, config, adapter_name=name)
                self.model.eval()
            result = set_peft_model_state_dict(self.model, weights, adapter_name=name)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
            if missing or result.unexpected_keys:
                raise AdapterError(
                    f"adapter {path} does not fit this model: missing {missing[:3]}, "
                    f"unexpected {list(result.unexpected_keys)[:3]}"
                )
        except Exception as exc:
            if isinstance(self.model, PeftModel) and name in self.model.peft_config:
                if self._owned or self._current is not None:
                    self.model.delete_adapter(name)
                else:  # the model's only adapter: PEFT cannot delete it; keep it unused
                    self._owned.add(name)  # (`_current` is None) and drop it next swap
            if isinstance(exc, AdapterError):
                raise
            raise AdapterError(f"cannot load adapter {path} into this model: {exc}") from exc


def _manifest_base_hash(manifest: dict[str, Any]) -> str | None:
    # seal_agent.registry writes a flat "base_model_hash" (and "base_model" as the name);
    # a nested {"base_model": {"hash": ...}} is accepted for hand-written manifests.
    if isinstance(manifest.get("base_model_hash"), str):
        return manifest["base_model_hash"]
    base = manifest.get("base_model")
    if isinstance(base, dict) and isinstance(base.get("hash"), str):
        return base["hash"]
    return None


def _device_of(model: Any) -> Any:
    return next(model.parameters()).device
