"""seal_agent: long-term memory for LangGraph agents that also updates the model's weights, safely.

Episodic memory (every exchange logged to Chroma and recalled into prompts) works from
the first interaction; parametric memory (a LoRA adapter trained on self-edits, gated
against forgetting) absorbs what the episodes taught.

Heavy dependencies (torch, transformers, peft, chromadb) are imported lazily: importing
``seal_agent`` is cheap, and a name is resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AdaptiveChatModel": "seal_agent.model",
    "AdapterRegistry": "seal_agent.registry",
    "ChromaStore": "seal_agent.integrations.store",
    "Interaction": "seal_agent.memory.records",
    "InteractionStatus": "seal_agent.memory.records",
    "Memory": "seal_agent.memory.records",
    "MemoryConfig": "seal_agent.config",
    "ModelConfig": "seal_agent.config",
    "SealConfig": "seal_agent.config",
    "SealMemory": "seal_agent.seal_memory",
    "SealMemoryMiddleware": "seal_agent.integrations.middleware",
    "StorageError": "seal_agent.errors",
    "TrainConfig": "seal_agent.config",
    "load_model": "seal_agent.model",
    "train_adapter": "seal_agent.training",
}

__all__ = [
    "AdapterRegistry",
    "AdaptiveChatModel",
    "ChromaStore",
    "Interaction",
    "InteractionStatus",
    "Memory",
    "MemoryConfig",
    "ModelConfig",
    "SealConfig",
    "SealMemory",
    "SealMemoryMiddleware",
    "StorageError",
    "TrainConfig",
    "__version__",
    "load_model",
    "train_adapter",
]

if TYPE_CHECKING:
    from seal_agent.config import MemoryConfig, ModelConfig, SealConfig, TrainConfig
    from seal_agent.errors import StorageError
    from seal_agent.integrations.middleware import SealMemoryMiddleware
    from seal_agent.integrations.store import ChromaStore
    from seal_agent.memory.records import Interaction, InteractionStatus, Memory
    from seal_agent.model import AdaptiveChatModel, load_model
    from seal_agent.registry import AdapterRegistry
    from seal_agent.seal_memory import SealMemory
    from seal_agent.training import train_adapter


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seal_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return __all__
