"""Helpers of `AdaptiveChatModel.generate_batch`: chunk planning, padding, the decode loop.

Batched decoding on a causal LM with a KV cache works on a rectangle: every row of a
chunk has the same width, so shorter prompts are padded on the left (the newest token
of every row then sits in the last column, where ``generate`` appends) and the
attention mask hides the padding; transformers derives position ids from that mask,
so a padded row computes what the unpadded prompt would.

Cost grows with the rectangle, not with the useful tokens: rows are sorted by prompt
length before chunking so that rows of a chunk have similar widths (little padding),
and a chunk holds as many rows as fit ``rows x (widest prompt + max_new_tokens)``
under a token budget -- the size of the KV cache the chunk needs at its end.

Batching only speeds up decoding (one step reads the weights once for all rows);
prefill is compute-bound either way. So `generate_chunk` also prefills the prefix the
rows share only once, and drops rows that ended from the batch as it goes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "MIN_SHARED_PREFIX",
    "SEGMENT_TOKENS",
    "CancelFlags",
    "RowEnds",
    "Sample",
    "find_stop",
    "generate_chunk",
    "layout",
    "plan_chunks",
    "shared_prefix_length",
]

# 16k cache positions per chunk. Memory: the KV cache costs ``2 x layers x kv_heads x
# head_dim x bytes`` per position -- 46 KB for SmolLM2-135M in fp32, so ~0.75 GB at the
# budget; ~2 GB for a 1B model with grouped-query attention in bf16. Speed: a decode
# step of one row is bound by reading the weights, which the rows of a chunk share.
# Measured on SmolLM2-135M, one CPU thread, 300 cached positions: 39 ms a step for
# 1 row, 78 ms for 8, 115 ms for 16 (7 ms a row): gains flatten past ~16-32 rows, and
# a typical self-edit chunk (16 rows x ~250 prompt + 128 new tokens) fits 2-3 times.
DEFAULT_MAX_BATCH_TOKENS = 16_384

# Prefixes shorter than this are prefilled with the rest of the prompt: a separate
# forward pass of a few tokens costs more than it saves.
MIN_SHARED_PREFIX = 16

# Tokens per generate() call. Between calls, rows that ended leave the batch; shorter
# segments drop them sooner but pay generate()'s setup more often.
SEGMENT_TOKENS = 16

# A stop string of c characters spans at most 4c byte-level tokens (UTF-8 has at most
# 4 bytes a character); a few more cover a decoder that drops a leading space.
_STOP_WINDOW_SLACK = 8


@dataclass(frozen=True)
class Sample:
    """One completion of `generate_batch`, with what it cost.

    Attributes:
        text: The completion: the prefill, then the generated text without special
            tokens, cut before the first stop string.
        output_tokens: Tokens the model generated for it (an ending EOS included;
            padding never).
        finish_reason: ``"stop"`` (EOS or a stop string) or ``"length"``.
    """

    text: str
    output_tokens: int
    finish_reason: str


def plan_chunks(lengths: Sequence[int], max_new_tokens: int, max_batch_tokens: int) -> list[list[int]]:
    """Group row indices into chunks whose padded rectangle stays under the budget.

    Rows are taken longest first (ties in index order, so a plan is deterministic): a
    chunk's first row sets its width, and the following rows are as long or shorter.
    A row too wide for the budget on its own still gets a chunk of one.

    Args:
        lengths: Prompt length in tokens of each row.
        max_new_tokens: Tokens each row may generate.
        max_batch_tokens: Budget of ``rows x (widest prompt + max_new_tokens)``.

    Returns:
        Lists of row indices, in the order to run them.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    chunks: list[list[int]] = []
    for i in order:
        if chunks:
            chunk = chunks[-1]
            width = lengths[chunk[0]] + max_new_tokens  # the chunk's widest row came first
            if (len(chunk) + 1) * width <= max_batch_tokens:
                chunk.append(i)
                continue
        chunks.append([i])
    return chunks


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own.

    ``generate`` needs one uncached token per row to produce that row's first logits.
    """
    limit = min(len(r) for r in rows) - 1
    k = 0
    while k < limit and all(r[k] == rows[0][k] for r in rows):
        k += 1
    return k


def layout(rows: Sequence[Sequence[int]], shared: int, pad_id: int) -> tuple[Any, Any]:
    """Pad rows into ``(input_ids, attention_mask)``, both ``[rows, width]``.

    Each row is ``shared prefix | padding | rest``: with ``shared=0`` that is plain
    left padding. Padding after the prefix lets every row reuse one KV cache of the
    prefix (at positions 0..shared-1 in every row); transformers derives position ids
    from the mask's running sum, so the rest keeps its true positions.
    """
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = width - (len(row) - shared)  # where the row's own tokens begin
        ids[r, :shared] = torch.tensor(row[:shared], dtype=torch.long)
        ids[r, start:] = torch.tensor(row[shared:], dtype=torch.long)
        mask[r, :shared] = 1
        mask[r, start:] = 1
    return ids, mask


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text`, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class CancelFlags:
    """Any of several events, read as one (the caller's, and one of our own)."""

    def __init__(self, *events: threading.Event | None) -> None:
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


class RowEnds:
    """A transformers stopping criterion that records where each row of a chunk ended.

    Called by ``generate`` after every new token with ids ``[live rows, prompt width +
    generated]``; `live` maps those rows to the chunk's. A row ends at its first EOS,
    or when its generated text (never the prompt's) contains a stop string -- then it
    returns True for the row so that ``generate`` pads it from there on and stops once
    every row ended. When `cancel` is set every row stops at once.

    Attributes:
        live: The chunk rows ``generate`` is running now, in its row order.
        ends: Per chunk row, the number of generated tokens up to and including the
            one that ended it; None while it runs (and for rows that hit the limit).
    """

    def __init__(self, rows: int, width: int, eos_ids: Sequence[int], stops: Sequence[str],
                 tokenizer: Any, cancel: CancelFlags) -> None:
        self.width = width
        self.eos_ids = set(eos_ids)
        self.stops = list(stops)
        self.window = 4 * max((len(s) for s in self.stops), default=0) + _STOP_WINDOW_SLACK
        self.tokenizer = tokenizer
        self.cancel = cancel
        self.live = list(range(rows))
        self.ends: list[int | None] = [None] * rows

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        running = [i for i, r in enumerate(self.live) if self.ends[r] is None]
        for i in running:
            if last[i] in self.eos_ids:
                self.ends[self.live[i]] = generated
        if self.stops:
            # Decode only a window of the newest tokens: a stop string that appears now
            # ends in the last token, so it lies inside the window. O(rows x window) a
            # step instead of decoding every row from its start.
            check = [i for i in running if self.ends[self.live[i]] is None]
            if check:
                start = max(self.width, input_ids.shape[1] - self.window)
                tails = self.tokenizer.batch_decode(input_ids[check, start:].tolist(), skip_special_tokens=True)
                for i, tail in zip(check, tails, strict=True):
                    if find_stop(tail, self.stops) is not None:
                        self.ends[self.live[i]] = generated
        if self.cancel.is_set():
            return torch.ones(len(self.live), dtype=torch.bool, device=input_ids.device)
        done = [self.ends[r] is not None for r in self.live]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def generate_chunk(model: Any, rows: Sequence[Sequence[int]], config: Any, *, pad_id: int,
                   eos_ids: Sequence[int], stops: Sequence[str], tokenizer: Any,
                   cancel: CancelFlags) -> list[list[int]]:
    """Generate for every row of one chunk; return each row's generated token ids.

    A row's ids end with the token that ended it (EOS, or the one completing a stop
    string), or run to ``config.max_new_tokens``; padding is never included.

    Two savings over one ``generate`` call on the left-padded rows:

    * the prefix all rows share (chat template, system prompt, a self-edit
      instruction: often half the prompt) is prefilled once and its KV cache copied
      to every row, instead of computed once per row;
    * generation runs in segments of `SEGMENT_TOKENS`, and rows that ended are dropped
      from the batch (and the cache) between segments: ``generate`` would otherwise
      keep computing padding for them until the longest row ends.

    Args:
        model: The model to run (already pinned to its adapter).
        rows: Prompt token ids, one list per row.
        config: The `GenerationConfig` (not modified).
        pad_id: Token that fills padding.
        eos_ids: Tokens that end a row.
        stops: Stop strings that end a row (searched in its generated text).
        tokenizer: Decodes tails for the stop-string search.
        cancel: Stops every row within a token when set (the caller raises).
    """
    import copy

    import torch
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    shared = shared_prefix_length(rows)
    if shared < MIN_SHARED_PREFIX:  # not worth a separate forward pass
        shared = 0
    ids, mask = layout(rows, shared, pad_id)  # [rows, width]
    ids, mask = ids.to(device), mask.to(device)
    width = ids.shape[1]
    names = _ModelKwargs(model)
    cache = names.new_cache(model)
    if shared:
        model(input_ids=ids[:1, :shared], use_cache=True, **names.cache(cache), **names.last_logits_only())
        cache.batch_repeat_interleave(len(rows))  # [1, shared] -> [rows, shared] in every layer

    limit = config.max_new_tokens
    config = copy.deepcopy(config)
    ends = RowEnds(len(rows), width, eos_ids, stops, tokenizer, cancel)
    out: list[list[int]] = [[] for _ in rows]
    generated = 0
    while ends.live and generated < limit and not cancel.is_set():
        config.max_new_tokens = min(SEGMENT_TOKENS, limit - generated)
        # The cache holds every position but the last: generate() feeds that one first.
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                              stopping_criteria=StoppingCriteriaList([ends]), **names.cache(cache))
        new = seqs.shape[1] - ids.shape[1]
        generated += new
        keep = [i for i, r in enumerate(ends.live) if ends.ends[r] is None and generated < limit]
        for i in sorted(set(range(len(ends.live))) - set(keep)):
            r = ends.live[i]  # ended, or at the limit: take its ids, cut where it ended
            out[r] = seqs[i, width:].tolist()[: ends.ends[r]]
        if keep and len(keep) < len(ends.live):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            seqs, mask = seqs[index], mask[index]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], new))], dim=1)
        ids = seqs
        ends.live = [ends.live[i] for i in keep]
    return out


class _ModelKwargs:
    """Keyword names that changed across transformers versions, found on the model.

    transformers 5 renamed ``past_key_values`` to ``cache`` (the old name warns) and
    4.50 renamed ``num_logits_to_keep`` to ``logits_to_keep``.
    """

    def __init__(self, model: Any) -> None:
        import inspect

        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through PEFT
        params = inspect.signature(base.forward).parameters
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        self.keep_name = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)

    def cache(self, cache: Any) -> dict[str, Any]:
        return {self.cache_name: cache}

    def last_logits_only(self) -> dict[str, Any]:
        # The prefix pass only fills the cache: skip the vocabulary projection of
        # every position (for SmolLM2 about a tenth of the prefill's work).
        return {self.keep_name: 1} if self.keep_name else {}

    @staticmethod
    def new_cache(model: Any) -> Any:
        from transformers import DynamicCache

        try:  # the config tells sliding-window layers apart (transformers >= 4.56)
            return DynamicCache(config=model.config)
        except TypeError:
            return DynamicCache()
