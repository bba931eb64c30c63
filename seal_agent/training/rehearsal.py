"""Rehearsal: the base model's own answers to general prompts, trained on beside new facts.

A LoRA update that learns a handful of facts drifts the whole model: the issue that
brought the real default model measured "The capital of France is London" after an
update that taught invented facts. Replay of earlier self-edits protects what earlier
consolidations taught, but nothing protects what the model knew before its first one.
Rehearsal does: a fixed set of general prompts, answered once by the **base** model
(greedy, no adapter), mixed into every update as chat examples. Fitting them is free
for an update that left general behaviour alone and costly for one that did not, so
the update learns the facts with the smallest change to everything else -- a cheap
form of self-distillation toward the base model (what SEAL's and SELF's authors call
keeping the model's prior; the loss is cross-entropy on the base's greedy text rather
than a KL to its full distribution, which needs no second model in memory).

The prompts never overlap the gate's canaries (a test checks it): otherwise the gate
would measure what rehearsal memorised, not what the model kept.

The answers are cached per base model in ``<home>/rehearsal/<hash>.json`` (with a format
version): the base is frozen, so they are computed once per home.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seal_agent._fs import write_atomic

__all__ = ["FORMAT_VERSION", "REHEARSAL_PROMPTS", "rehearsal_examples"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the cached rehearsal file's layout."""

_COUNTRIES = ("Italy", "Spain", "Canada", "Australia", "China", "India", "Mexico", "Argentina", "Kenya",
              "Sweden", "Norway", "Poland", "Greece", "Turkey", "Peru", "Chile", "Portugal", "Ireland",
              "Thailand", "Vietnam")
_OPPOSITES = ("big", "happy", "open", "light", "old", "full", "early", "wet", "loud", "strong")
_OPEN_ENDED = (
    "Which continent is Kenya in?",
    "What is the longest river in Africa?",
    "What is the chemical symbol for oxygen?",
    "How many planets are in our solar system?",
    "What do bees make?",
    "What is the tallest animal in the world?",
    "What gas do humans breathe out?",
    "What is the closest planet to the Sun?",
    "Who painted the Mona Lisa?",
    "Who wrote Hamlet?",
    "How many hours are in a day?",
    "How many months are in a year?",
    "What is 3 plus 4?",
    "What is 10 minus 6?",
    "What is 5 times 2?",
    "What color do you get when you mix blue and yellow?",
    "What season comes after summer?",
    "What is the largest mammal?",
    "What is the hardest natural substance?",
    "How many legs does a spider have?",
    "What is the freezing point of water in Fahrenheit?",
    "Which animal is known as the king of the jungle?",
    "What do caterpillars turn into?",
    "Name three fruits.",
    "Name a mammal that lives in the sea.",
    "Give me a tip for better sleep.",
    "How do I boil an egg?",
    "What is photosynthesis?",
    "Explain what a noun is.",
    "What is gravity?",
    "Why is the sky blue?",
    "Write a short greeting for a friend's birthday.",
    "Suggest a name for a pet goldfish.",
    "Translate 'thank you' into French.",
    "What is the plural of mouse?",
    "Summarize in one sentence: The cat sat on the mat and fell asleep in the sun.",
    "Is a tomato a fruit or a vegetable?",
    "What should I do if I feel tired in the afternoon?",
    "What is a good way to start learning to cook?",
    "Tell me a fun fact about octopuses.",
    "Hello! How are you today?",
    "What is your name?",
)

# The model's general knowledge and manners, in the shapes agents are asked things:
# short factual questions (the shape that new facts are taught and asked in, so the one
# most at risk of being overwritten) and open requests.
REHEARSAL_PROMPTS: tuple[str, ...] = (
    *(f"What is the capital of {c}?" for c in _COUNTRIES),
    *(f"What language is spoken in {c}?" for c in _COUNTRIES[:10]),
    *(f"What is the opposite of {w}?" for w in _OPPOSITES),
    *_OPEN_ENDED,
)
"""General prompts the base model answers once; disjoint from every shipped canary."""


def _cache_file(home: Path, base_hash: str, prompts: Sequence[str], max_new_tokens: int) -> Path:
    import hashlib

    key = hashlib.sha256(json.dumps([base_hash, list(prompts), max_new_tokens]).encode()).hexdigest()[:16]
    return home / "rehearsal" / f"{key}.json"


def rehearsal_examples(
    model: Any,
    tokenizer: Any,
    *,
    prompts: Sequence[str] = REHEARSAL_PROMPTS,
    max_new_tokens: int = 48,
    cache_home: str | os.PathLike[str] | None = None,
    base_hash: str | None = None,
    cancel_event: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """The base model's greedy answers to `prompts`, as chat training examples.

    Args:
        model: The base model (no adapter: its answers are what rehearsal preserves).
        tokenizer: Its tokenizer, with a chat template.
        prompts: General prompts (default: `REHEARSAL_PROMPTS`).
        max_new_tokens: Answer budget; an answer cut at the budget is kept as it is
            (it is the base model's behaviour up to there).
        cache_home: A memory home to cache the answers in (None: no cache).
        base_hash: `base_model_hash` of `model`, the cache key (required with `cache_home`).
        cancel_event: Stops generation between chunks (raises `TrainingCancelled`).

    Returns:
        ``[{"messages": [user prompt, assistant answer]}, ...]``; prompts the model
        answered with nothing are left out.
    """
    from seal_agent.model.chat import AdaptiveChatModel

    cache = None
    if cache_home is not None and base_hash is not None:
        cache = _cache_file(Path(cache_home), base_hash, prompts, max_new_tokens)
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("format_version") == FORMAT_VERSION:
                return data["examples"]
        except (OSError, ValueError, KeyError):
            pass
    # A wrapper with no adapter and no `follow`: it generates with the base weights and
    # never injects LoRA layers into `model`.
    chat = AdaptiveChatModel(model=model, tokenizer=tokenizer, temperature=0.0)
    answers = [row[0] for row in chat.generate_batch(list(prompts), max_new_tokens=max_new_tokens,
                                                    cancel_event=cancel_event)]
    examples = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a.strip()}]}
                for p, a in zip(prompts, answers, strict=True) if a.strip()]
    if cache is not None:
        write_atomic(cache, json.dumps({"format_version": FORMAT_VERSION, "examples": examples}, indent=1))
        logger.info("cached %d rehearsal answers of the base model in %s", len(examples), cache)
    return examples
