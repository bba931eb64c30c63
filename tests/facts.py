"""Facts the tests teach tiny-random, and the training settings that teach them."""

from __future__ import annotations

from seal_agent.config import TrainConfig

FACTS = [
    ("What is the capital of Zorbia?", "Quxville."),
    ("Who painted the Blue Moon?", "Anna Pell."),
    ("What color is a zeb?", "Bright green."),
    ("How many legs does a vorp have?", "Seven."),
]

# Enough steps at a high rate for the random 0.5M-parameter model to memorise four facts.
FACT_CONFIG = TrainConfig(learning_rate=1e-2, epochs=60, batch_size=4, lora_rank=8, lora_alpha=16,
                          warmup_ratio=0.05)


def chat(facts: list[tuple[str, str]]) -> list[dict]:
    """Question/answer pairs as chat training examples."""
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in facts]
