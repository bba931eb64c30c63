"""Test doubles: a deterministic embedding and a scripted chat model that records its prompts.

Real parts everywhere else: these stand in only for an outside LLM and, in unit tests
that are not about relevance, for the embedding model (the real one takes seconds to load).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage


class HashEmbeddings(Embeddings):
    """Bag-of-words vectors: each lowercased word hashes to one of `dim` buckets.

    Texts sharing words are similar, so relevance tests have a meaning, and results
    are identical on every machine.
    """

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * self.dim
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            h = int(hashlib.md5(word.encode()).hexdigest(), 16)
            v[h % self.dim] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


class ScriptedChatModel(GenericFakeChatModel):
    """Answers from a script and keeps every prompt it was given (``.prompts``)."""

    prompts: list[list[BaseMessage]] = []

    def __init__(self, responses: Sequence[str | AIMessage], **kwargs: Any) -> None:
        msgs = [r if isinstance(r, AIMessage) else AIMessage(content=r) for r in responses]
        super().__init__(messages=iter(msgs), prompts=[], **kwargs)

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        self.prompts.append(list(messages))
        return super()._generate(messages, *args, **kwargs)

    def _stream(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Iterator[Any]:
        self.prompts.append(list(messages))
        yield from super()._stream(messages, *args, **kwargs)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self
