"""Teacher-forced scoring: how likely a model finds an answer to a prompt.

Used by consolidation (did training teach the fact?) and the validation gate (did the
candidate adapter forget what the current one knew?). The score is the mean
log-probability per token of the answer's content -- the answer text itself, not the
template's end-of-turn markup -- given the rendered prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from seal_agent.errors import ValidationError
from seal_agent.training.data import IGNORE_INDEX, _label_by_offsets, _label_by_prefixes, assistant_spans

__all__ = ["answer_logprob", "answer_logprobs"]


def _encode_answer(
    tokenizer: Any, prompt_messages: Sequence[Mapping[str, Any]], answer: str, where: str
) -> tuple[list[int], list[int]]:
    if not isinstance(answer, str) or not answer.strip():
        raise ValidationError(f"{where}.answer", answer, "must be a non-empty string")
    messages = [dict(m) for m in prompt_messages] + [{"role": "assistant", "content": answer}]
    text, spans = assistant_spans(tokenizer, messages)
    start = text.find(answer, spans[-1][0])  # the content inside the last assistant turn
    content = [(start, start + len(answer))]
    if getattr(tokenizer, "is_fast", False):
        return _label_by_offsets(tokenizer, text, content)
    return _label_by_prefixes(tokenizer, text, content)


@torch.no_grad()
def answer_logprobs(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[Sequence[Mapping[str, Any]], str]],
    *,
    batch_size: int = 16,
) -> list[float]:
    """Mean per-token log-likelihood of each answer given its prompt, batched.

    Args:
        model: A causal LM (a ``PeftModel`` scores with its active adapter).
        tokenizer: Its tokenizer, with a chat template.
        items: ``(prompt_messages, answer)`` pairs; the prompt is a list of
            ``{"role", "content"}`` messages and the answer the assistant's reply.
        batch_size: Pairs per forward pass.

    Returns:
        One float per pair (<= 0; higher is more likely), in order.
    """
    encoded = [_encode_answer(tokenizer, p, a, f"items[{i}]") for i, (p, a) in enumerate(items)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        # Longest first so that each batch pads little.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]), reverse=True)
        by_index: dict[int, float] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = len(encoded[idx[0]][0])
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            labels = torch.full((len(idx), width), IGNORE_INDEX, dtype=torch.long)
            for r, i in enumerate(idx):
                x, y = encoded[i]
                ids[r, : len(x)] = torch.tensor(x)
                labels[r, : len(y)] = torch.tensor(y)
            ids, labels = ids.to(device), labels.to(device)
            # Right padding + causal attention: real tokens never see the padding.
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # [B, T-1, V]
            target = labels[:, 1:]  # [B, T-1]
            mask = target != IGNORE_INDEX
            logp = torch.zeros_like(target, dtype=torch.float32)
            logp[mask] = torch.log_softmax(logits[mask].float(), dim=-1).gather(
                -1, target[mask].unsqueeze(-1)).squeeze(-1)  # [N] log p of each answer token
            per_row = logp.sum(1) / mask.sum(1).clamp(min=1)
            for r, i in enumerate(idx):
                by_index[i] = float(per_row[r])
        scores = [by_index[i] for i in range(len(encoded))]
    finally:
        model.train(was_training)
    return scores


def answer_logprob(
    model: Any, tokenizer: Any, prompt_messages: Sequence[Mapping[str, Any]], answer: str
) -> float:
    """Mean per-token log-likelihood of ``answer`` as the assistant's reply to ``prompt_messages``.

    See `answer_logprobs` for the batched form.
    """
    return answer_logprobs(model, tokenizer, [(prompt_messages, answer)])[0]
