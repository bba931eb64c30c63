"""all-MiniLM-L6-v2's query encoder through ONNX Runtime: the same vectors, about half the time.

Why: recall embeds one short query per call, on the hot path. torch's eager forward
pass of the 6-layer encoder costs ~9 ms here for a one-sentence query (mostly per-op
dispatch); ONNX Runtime runs the same graph, with the mean pooling and normalisation
inside it, in ~4 ms on one thread of a 2-core CPU. Documents (the index worker's batches)
stay on sentence-transformers, where batching already amortises that overhead.

The graph is exported from the very weights sentence-transformers loaded (nothing is
downloaded), once, into ``<seal cache>/onnx/<model>-<digest>/model.onnx`` (written to a
temporary name and renamed, so a killed export leaves nothing half-written). An export is
accepted only if it gives the torch vector of a probe sentence to 1e-4; any failure
(``onnx`` missing, unwritable cache, a mismatch) is logged once and the caller keeps the
torch path.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["OnnxQueryEncoder", "load_onnx_query_encoder"]

logger = logging.getLogger(__name__)

ONNX_FORMAT_VERSION = 1  # bump when the exported graph's inputs/outputs change
_PROBE = "What did I tell you about the trip to Lisbon, and which hotel did we book?"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxQueryEncoder:
    """One ONNX Runtime session and the model's own tokenizer; thread-safe (ORT sessions are)."""

    def __init__(self, path: Path, tokenizer: Any, max_length: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One thread: a single short query cannot feed more, and a second thread only
        # competes with the index worker and the caller for a small machine's cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # A copy: a fast tokenizer's padding/truncation settings are state of its Rust
        # object, switched on every call, and sentence-transformers' `encode` (the
        # document path, other threads) calls the original with other settings.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_length = max_length
        self.path = path

    def encode(self, text: str) -> list[float]:
        import numpy as np

        batch = self.tokenizer([text], return_tensors="np", truncation=True, max_length=self.max_length)
        feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in _INPUTS if name in batch}
        if "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run(None, feeds)[0][0].tolist()


def _export(encoder: Any, tokenizer: Any, target: Path) -> None:
    import torch

    class Pooled(torch.nn.Module):  # encoder -> mean pooling -> L2 norm, as sentence-transformers does
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    batch = tokenizer([_PROBE], return_tensors="pt")
    args = tuple(batch.get(name, torch.zeros_like(batch["input_ids"])) for name in _INPUTS)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(Pooled(encoder).eval(), args, str(tmp), input_names=list(_INPUTS),
                              output_names=["embedding"], opset_version=17, dynamo=False,
                              dynamic_axes={name: {0: "batch", 1: "tokens"} for name in _INPUTS})
        with open(tmp, "rb") as f:  # durable before it takes the real name
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_onnx_query_encoder(name: str, model_dir: Path, encoder: Any, tokenizer: Any, max_length: int,
                            torch_encode: Any) -> OnnxQueryEncoder | None:
    """The cached (or freshly exported) ONNX encoder of `encoder`, or None (logged) if
    it cannot be had or does not reproduce `torch_encode`'s vector of a probe to 1e-4."""
    try:
        import onnxruntime  # noqa: F401  (chromadb depends on it; checked before exporting)

        from seal_agent.model.gguf import cache_dir

        weights = next((p for p in (model_dir / "model.safetensors", model_dir / "pytorch_model.bin")
                        if p.is_file()), None)
        stamp = f"{ONNX_FORMAT_VERSION}:{model_dir}:"
        stamp += f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights else str(model_dir)
        folder = cache_dir() / "onnx" / f"{name}-{hashlib.sha256(stamp.encode()).hexdigest()[:16]}"
        target = folder / "model.onnx"
        if not target.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            logger.info("exporting the query encoder of %s to ONNX at %s (once)", name, target)
            _export(encoder, tokenizer, target)
        try:
            ours = OnnxQueryEncoder(target, tokenizer, max_length)
            got = ours.encode(_PROBE)
        except Exception:  # a damaged file (e.g. cut by a crash): export once more, then give up
            logger.warning("the cached ONNX query encoder %s cannot be used; exporting it again", target)
            target.unlink(missing_ok=True)
            _export(encoder, tokenizer, target)
            ours = OnnxQueryEncoder(target, tokenizer, max_length)
            got = ours.encode(_PROBE)
        want = torch_encode(_PROBE)
        diff = max(abs(a - b) for a, b in zip(got, want, strict=True))
        if diff > 1e-4:
            logger.warning("ONNX query encoder %s differs from torch by %.2g: not used", target, diff)
            return None
        return ours
    except Exception as exc:  # any failure keeps the (slower, equal) torch path
        logger.warning("ONNX Runtime query encoder unavailable (%s: %s); embedding queries with torch",
                       type(exc).__name__, exc)
        return None
