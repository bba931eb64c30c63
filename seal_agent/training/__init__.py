"""The LoRA trainer: completion-only loss, length-grouped batches, replay mixing.

``train_adapter`` trains and saves a PEFT LoRA adapter; ``answer_logprob(s)`` scores
answers under a model (for consolidation and the validation gate). torch, transformers
and peft load with this package, so import it only where training or scoring happens.
"""

from __future__ import annotations

from seal_agent.training.data import TokenizedExample, encode_example, validate_examples
from seal_agent.training.scoring import answer_logprob, answer_logprobs
from seal_agent.training.trainer import TrainResult, train_adapter

__all__ = [
    "TokenizedExample",
    "TrainResult",
    "answer_logprob",
    "answer_logprobs",
    "encode_example",
    "train_adapter",
    "validate_examples",
]
