"""LoRA adapters on a served model: several loaded on one base, one active per request.

One `AdapterHost` owns the model. Every adapter it loads becomes a separately named
PEFT adapter on one `PeftModel`, keyed by its folder, so adapters of different lineages
(whose version names repeat: every lineage has a ``v0001``) never collide. A request
names the adapter it wants (`pinned`): the host loads it beside the others if it is not
loaded yet, activates it, and runs the request on it. At most ``max_loaded`` adapters
stay loaded; when a new one is needed the least recently used is deleted -- never the
*default* adapter (the one `swap` set: `use_adapter`, or the registry's CURRENT under
``follow``), which must keep serving even if its files are gone by then.

Why a lock and not per-request adapter selection inside one forward pass: PEFT's active
adapter is global module state, and its per-request ``adapter_names=`` mechanism works
by installing forward hooks on shared modules -- two threads doing that at once would
see each other's hooks. So generation, activation and the structural part of a load
or a swap take the same lock: a request pins its adapter for its whole duration (it
sees one adapter from its first token to its last, never a mix), and a load waits for
the running request to finish. Because nothing runs while a load holds the lock, the
adapter it evicts is never in use. Reading and checking the adapter files happens
*before* taking the lock, so generation stalls only for the in-memory injection. On a
CPU, torch already uses every core for one request, so serialising requests costs
little; for many concurrent users on a GPU, serve through vLLM's multi-LoRA instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seal_agent._compat import quiet_peft
from seal_agent.errors import AdapterError, ValidationError

__all__ = ["DEFAULT", "AdapterHost", "AdapterTarget"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_LOADED = 4


@dataclass(frozen=True)
class AdapterTarget:
    """The adapter one request asks for.

    Attributes:
        path: The PEFT adapter folder; None for the base model.
        label: What is reported as serving it (a registry version, or the path).
    """

    path: Path | None
    label: str | None

    @property
    def key(self) -> str | None:
        """Identity of the loaded adapter: the absolute folder (None: the base model)."""
        return None if self.path is None else str(self.path.expanduser().resolve())


BASE = AdapterTarget(None, None)


class _Default:
    """Sentinel of `pinned`: serve the default adapter (the one `swap` set)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


class AdapterHost:
    """Holds a model, its loaded LoRA adapters, and the lock that orders them.

    Args:
        model: A transformers causal LM, or a `PeftModel` (its own adapters stay
            loaded, are never evicted, and the active one is the default until
            `swap` is called).
        max_loaded: Most adapters this host keeps loaded at once (the default one
            included, adapters of a `PeftModel` passed in not counted).
    """

    def __init__(self, model: Any, max_loaded: int = DEFAULT_MAX_LOADED) -> None:
        from peft import PeftModel

        if not isinstance(max_loaded, int) or isinstance(max_loaded, bool) or max_loaded < 1:
            raise ValidationError("max_loaded_adapters", max_loaded, "must be a positive integer")
        self.model = model
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._counter = 0
        # key -> PEFT adapter name, least recently used first. Only adapters we loaded.
        self._loaded: OrderedDict[str, str] = OrderedDict()
        self._orphans: set[str] = set()  # names PEFT would not let us delete yet
        self._failed: dict[str, str] = {}  # key -> why it cannot load (logged once)
        self._base_hash: str | None = None
        self._default: AdapterTarget = BASE
        self._foreign: str | None = None  # a PEFT adapter of the model passed in, as default
        self.label: str | None = None  # the default's label (what `use_adapter` was given)
        self.active: str | None = None  # label of the adapter the running request uses
        if isinstance(model, PeftModel):
            self._foreign = model.active_adapter
            self.label = self._foreign

    @property
    def base_hash(self) -> str:
        """`base_model_hash` of the served base model (computed once)."""
        if self._base_hash is None:
            from seal_agent.model.loader import base_model_hash

            self._base_hash = base_model_hash(self.model)
        return self._base_hash

    @property
    def loaded(self) -> list[str]:
        """Folders of the adapters loaded now, least recently used first."""
        with self._lock:
            return list(self._loaded)

    @contextmanager
    def pinned(self, target: AdapterTarget | _Default = DEFAULT, *, strict: bool = False) -> Iterator[Any]:
        """Hold the lock with `target` active; yields the model to run.

        An adapter that is not loaded is read here and loaded (evicting the least
        recently used one beyond `max_loaded`). One that cannot be loaded -- its folder
        is gone, damaged, or for another base model -- is logged once and the request
        runs on the base model: a request is never served another adapter than the
        one it asked for.

        Args:
            target: The adapter to serve (`BASE` for the base model), or `DEFAULT`:
                the one `swap` set.
            strict: Raise instead of serving the base model (an explicit pin).

        Raises:
            AdapterError: With `strict`, `target` cannot be loaded.
        """
        default = isinstance(target, _Default)
        foreign = self._foreign if default else None
        if default:
            target = self._default
        assert isinstance(target, AdapterTarget)
        key = target.key
        if strict and key is not None:
            self._failed.pop(key, None)  # asked for explicitly: try again
        prepared = None
        if foreign is None and key is not None and key not in self._loaded and key not in self._failed:
            prepared = self._try_read(target, strict)  # outside the lock: other requests keep running
        with self._lock:
            name = foreign
            if name is None and key is not None:
                name = self._loaded.get(key)
                if name is None and key not in self._failed:
                    if prepared is None:  # evicted since we looked (rare): read it now
                        prepared = self._try_read(target, strict)
                    if prepared is not None:
                        assert target.path is not None
                        try:
                            name = self._load(key, *prepared, target.path)
                        except AdapterError as exc:
                            if strict:
                                raise
                            self._remember_failure(key, str(exc))
                if name is not None:
                    self._loaded.move_to_end(key)
            self.active = target.label if name is not None else None
            try:
                if name is None:
                    if hasattr(self.model, "disable_adapter"):  # a PeftModel serving the base
                        with self.model.disable_adapter():
                            yield self.model
                        return
                    yield self.model
                    return
                self.model.set_adapter(name)
                yield self.model
            finally:
                self.active = None

    def swap(self, path: Path | None, label: str | None) -> None:
        """Make the adapter in `path` (None: the base model) the default from now on.

        The previous default is unloaded (unless it is the model's last adapter: PEFT
        keeps one; it is then evicted like any other).

        Args:
            path: A PEFT LoRA adapter folder, or None for the base model.
            label: The name reported by `label` (a registry version or the path).

        Raises:
            AdapterError: The folder is missing, corrupt, not LoRA, or made for
                another base model. The previous default keeps serving.
        """
        target = AdapterTarget(path, label)
        key = target.key
        prepared = None if path is None else self._read(path)  # always fresh: the folder may be rewritten
        with self._lock:
            old = self._default.key
            if key is not None:
                assert prepared is not None and path is not None
                stale = self._loaded.get(key)  # the same folder loaded before: replaced
                self._load(key, *prepared, path)  # also activates it
                if stale is not None:
                    self._delete(stale)
                self._failed.pop(key, None)
            self._default, self._foreign, self.label = target, None, label
            if old is not None and old != key and old in self._loaded:
                self._delete(self._loaded.pop(old))  # kept by PEFT if it is the last one
        if path is not None:
            logger.info("serving adapter %s from %s", label, path)

    # ----------------------------------------------------------------- internals

    def _try_read(self, target: AdapterTarget, strict: bool) -> tuple[Any, dict[str, Any]] | None:
        assert target.path is not None and target.key is not None
        try:
            return self._read(target.path)
        except AdapterError as exc:
            if strict:
                raise
            self._remember_failure(target.key, str(exc))
            return None

    def _remember_failure(self, key: str, why: str) -> None:
        if len(self._failed) >= 256:  # many broken folders: forget the oldest failures
            self._failed.pop(next(iter(self._failed)))
        if key not in self._failed:
            logger.error("cannot serve adapter %s, serving the base model for it: %s", key, why)
        self._failed[key] = why

    def _peft_names(self) -> list[str]:
        config = getattr(self.model, "peft_config", None)
        return list(config) if isinstance(config, dict) else []

    def _load(self, key: str, config: Any, weights: dict[str, Any], path: Path) -> str:
        """Inject an adapter and activate it (lock held); evict beyond `max_loaded`.

        Raises:
            AdapterError: It does not fit the model; nothing else changed.
        """
        self._counter += 1
        name = f"seal_{self._counter}"
        self._inject(name, config, weights, path)
        self._loaded[key] = name
        self.model.set_adapter(name)  # before deleting: never delete the active adapter
        for orphan in list(self._orphans):
            self._delete(orphan)
        keep = {key, self._default.key}
        for old in list(self._loaded):
            if len(self._loaded) <= self.max_loaded:
                break
            if old not in keep:
                logger.debug("evicting adapter %s (least recently used)", old)
                self._delete(self._loaded.pop(old))
        return name

    def _delete(self, name: str) -> None:
        """Delete one of our PEFT adapters (lock held; it is not the active one)."""
        if len(self._peft_names()) <= 1:  # PEFT cannot remove a model's last adapter
            self._orphans.add(name)
            return
        self.model.delete_adapter(name)
        self._orphans.discard(name)

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
                # Unused from now on; deleted now, or (the model's only adapter, which
                # PEFT cannot delete) with the next successful load.
                self._delete(name)
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
