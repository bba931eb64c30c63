"""Training data: validate examples, tokenize them with completion-only labels, batch them.

Two kinds of example are accepted:

- chat: ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}``
  -- the loss is on the assistant turns only (their content plus the template's
  end-of-turn markup, so the model also learns to stop);
- document: ``{"text": "..."}`` -- the loss is on every token.

How assistant tokens are found: the chat template is rendered for growing prefixes of
the conversation. ``render(messages[:i], add_generation_prompt=True)`` ends where the
assistant's turn i begins and ``render(messages[:i + 1])`` ends where it ends, so the
character span in between is what the model must produce. The full conversation is
tokenized once and each token is labelled when its character offsets overlap such a
span. Working in characters (not by tokenizing each prefix separately) is what keeps
the labels exact when a BPE merge would otherwise straddle a prefix boundary.

Batching (why not packing): examples are grouped by length so a micro-batch holds
examples of similar length and little compute goes to padding. True packing (several
examples in one row, position ids reset per example) needs a block-diagonal attention
mask to avoid cross-example attention; only flash-attention's varlen kernels (CUDA) do
that without computing the full ``row_len**2`` score matrix, while with SDPA/eager on
CPU a 4D mask materialises and the attention cost grows with the packed row, not the
example. Length grouping is correct for every attention implementation and is as fast
as packing when lengths within a group are close.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from seal_agent.errors import ValidationError

__all__ = [
    "ALLOWED_ROLES",
    "IGNORE_INDEX",
    "TokenizedExample",
    "assistant_spans",
    "collate",
    "encode_example",
    "encode_examples",
    "FitResult",
    "fit_examples",
    "plan_batches",
    "replay_draws",
    "sample_replay",
    "validate_examples",
]

IGNORE_INDEX = -100
"""Label value that cross-entropy ignores (positions that carry no loss)."""

ALLOWED_ROLES = frozenset({"system", "user", "assistant", "tool"})
"""Roles a chat example may use; the loss falls on ``assistant`` turns."""


@dataclass(frozen=True)
class TokenizedExample:
    """One example as token ids.

    Attributes:
        input_ids: Token ids of the whole example, shape ``[T]``.
        labels: Same length; the token id where the loss applies, else ``IGNORE_INDEX``.
    """

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_label_tokens(self) -> int:
        """Tokens that carry loss."""
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


# --------------------------------------------------------------------------- validation


def validate_examples(examples: Any, *, field: str = "examples", allow_empty: bool = False) -> list[dict]:
    """Check the shape of training examples; return them as a list.

    Args:
        examples: A sequence of chat (``{"messages": [...]}``) or document
            (``{"text": "..."}``) examples.
        field: Name used in error messages (``"examples"`` or ``"replay"``).
        allow_empty: Whether an empty sequence is acceptable.

    Returns:
        The examples as a list (the dicts themselves, not copies).

    Raises:
        ValidationError: Naming the offending index and field, e.g.
            ``examples[3].messages[1].role='robot': must be one of [...]``.
    """
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Sequence):
        raise ValidationError(field, examples, "must be a list of examples")
    if not examples and not allow_empty:
        raise ValidationError(field, examples, "must contain at least one example")
    for i, ex in enumerate(examples):
        where = f"{field}[{i}]"
        if not isinstance(ex, Mapping):
            raise ValidationError(where, ex, "must be a dict with 'messages' or 'text'")
        has_messages, has_text = "messages" in ex, "text" in ex
        if has_messages == has_text:
            raise ValidationError(where, sorted(ex), "must have exactly one of the keys 'messages' or 'text'")
        if has_text:
            text = ex["text"]
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(f"{where}.text", text, "must be a non-empty string")
            continue
        messages = ex["messages"]
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise ValidationError(f"{where}.messages", messages, "must be a non-empty list of messages")
        n_assistant = 0
        for j, msg in enumerate(messages):
            mwhere = f"{where}.messages[{j}]"
            if not isinstance(msg, Mapping):
                raise ValidationError(mwhere, msg, "must be a dict with 'role' and 'content'")
            role = msg.get("role")
            if role not in ALLOWED_ROLES:
                raise ValidationError(f"{mwhere}.role", role, f"must be one of {sorted(ALLOWED_ROLES)}")
            content = msg.get("content")
            if not isinstance(content, str):
                raise ValidationError(f"{mwhere}.content", content, "must be a string")
            if role == "assistant":
                if not content.strip():
                    raise ValidationError(f"{mwhere}.content", content, "an assistant turn must not be empty")
                n_assistant += 1
        if n_assistant == 0:
            raise ValidationError(f"{where}.messages", [m.get("role") for m in messages],
                                  "needs at least one assistant turn to learn from")
    return list(examples)


# --------------------------------------------------------------------------- tokenization


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):  # some tokenizers return a list for batched input
        raise ValidationError("tokenizer.chat_template", type(text).__name__, "must render a conversation to a string")
    return text


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character span of each assistant turn.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The conversation (already validated).

    Returns:
        ``(text, spans)``: the rendered conversation and, for each assistant turn, the
        ``[start, end)`` character range the model has to produce (content plus the
        template's end-of-turn markup).

    Raises:
        ValidationError: The tokenizer has no chat template, or the template does not
            render a conversation as a prefix-extension of its beginning (required to
            locate the assistant turns).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValidationError("tokenizer.chat_template", None,
                              "chat examples need a tokenizer with a chat template (or use {'text': ...})")
    full = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        end_text = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            # Templates that rewrite earlier turns (e.g. drop reasoning from past
            # assistant turns) break the prefix property; say so rather than mislabel.
            raise ValidationError("tokenizer.chat_template", f"turn {i}",
                                  "rendering a prefix of the conversation must give a prefix of the full "
                                  "rendering; this template does not, so assistant tokens cannot be located")
        start = len(start_text)
        content_at = full.find(msg["content"], start)
        # The generation prompt may already contain the start of the turn; the content
        # itself must lie inside [start, end).
        if content_at < 0 or content_at + len(msg["content"]) > len(end_text):
            raise ValidationError("tokenizer.chat_template", f"turn {i}",
                                  "the assistant content was not found where the template renders it")
        spans.append((start, len(end_text)))
    return full, spans


def _label_by_offsets(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Tokenize ``text`` once; label the tokens whose characters overlap ``spans``."""
    # Chat templates already write BOS/special tokens into the text.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (a, b) in enumerate(enc["offset_mapping"]):
        if b <= a:  # zero-width (some special tokens): decide by position
            b = a + 1
        if any(a < end and b > start for start, end in spans):
            labels[k] = ids[k]
    return ids, labels


def _label_by_prefixes(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Fallback for slow tokenizers (no offsets): tokenize the text in span pieces."""
    ids: list[int] = []
    labels: list[int] = []
    cut = 0
    for start, end in spans:
        for piece, learn in ((text[cut:start], False), (text[start:end], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids.extend(piece_ids)
                labels.extend(piece_ids if learn else [IGNORE_INDEX] * len(piece_ids))
        cut = end
    if cut < len(text):
        tail = tokenizer(text[cut:], add_special_tokens=False)["input_ids"]
        ids.extend(tail)
        labels.extend([IGNORE_INDEX] * len(tail))
    return ids, labels


def encode_example(tokenizer: Any, example: Mapping[str, Any]) -> TokenizedExample:
    """Tokenize one validated example with its labels.

    Chat examples are labelled on assistant turns only; documents on every token
    (BOS if the tokenizer adds one, and EOS appended so the model learns to stop).

    Args:
        tokenizer: A Hugging Face tokenizer (fast tokenizers give exact labels via
            offsets; slow ones fall back to tokenizing the pieces separately).
        example: A chat or document example (see `validate_examples`).

    Returns:
        The `TokenizedExample`.
    """
    if "text" in example:
        ids = list(tokenizer(example["text"], add_special_tokens=True)["input_ids"])
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        return TokenizedExample(tuple(ids), tuple(ids))
    text, spans = assistant_spans(tokenizer, example["messages"])
    if getattr(tokenizer, "is_fast", False):
        ids, labels = _label_by_offsets(tokenizer, text, spans)
    else:
        ids, labels = _label_by_prefixes(tokenizer, text, spans)
    return TokenizedExample(tuple(ids), tuple(labels))


def encode_examples(
    tokenizer: Any, examples: Sequence[Mapping[str, Any]], *, max_seq_len: int, field: str = "examples"
) -> list[TokenizedExample]:
    """Tokenize validated examples; reject any longer than ``max_seq_len`` or without loss tokens.

    Raises:
        ValidationError: ``examples[i]`` is too long or has nothing to learn.
    """
    out: list[TokenizedExample] = []
    for i, ex in enumerate(examples):
        tok = encode_example(tokenizer, ex)
        if len(tok) > max_seq_len:
            raise ValidationError(f"{field}[{i}]", f"{len(tok)} tokens",
                                  f"is longer than train.max_seq_len={max_seq_len}")
        if len(tok) < 2 or tok.n_label_tokens == 0 or all(t == IGNORE_INDEX for t in tok.labels[1:]):
            raise ValidationError(f"{field}[{i}]", f"{len(tok)} tokens", "has no tokens to learn from")
        out.append(tok)
    return out


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class FitResult:
    """Examples made to fit ``max_seq_len`` (see `fit_examples`).

    Attributes:
        examples: The usable examples, in input order (truncated ones replaced by their
            shortened copy).
        kept: For each of `examples`, its index in the input.
        truncated: ``(index, tokens before)`` of each document that was shortened.
        dropped: ``(index, tokens, reason)`` of each example left out; ``reason`` is
            ``too_long`` (a chat example longer than the limit), ``no_loss_tokens`` or
            ``invalid: ...`` (what `validate_examples` said).
    """

    examples: list[dict]
    kept: list[int]
    truncated: list[tuple[int, int]]
    dropped: list[tuple[int, int, str]]


def _truncate_document(tokenizer: Any, text: str, max_seq_len: int, n_tokens: int) -> str | None:
    """The longest prefix of `text` whose document encoding fits `max_seq_len` (None: none does).

    The cut is made on a token boundary (offsets when the tokenizer is fast, else a
    decode of the first tokens) and checked by encoding the result again, since BPE
    may merge differently at the new end.
    """
    overhead = n_tokens - len(tokenizer(text, add_special_tokens=False)["input_ids"])  # BOS/EOS
    budget = max_seq_len - max(overhead, 0)
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=fast)
    ids = list(enc["input_ids"])
    while budget > 0:
        if fast:
            cut = text[: enc["offset_mapping"][budget - 1][1]]
        else:
            cut = tokenizer.decode(ids[:budget], skip_special_tokens=True)
        cut = cut.rstrip()
        if not cut.strip():
            return None
        n = len(encode_example(tokenizer, {"text": cut}))
        if n <= max_seq_len:
            return cut
        budget -= max(1, n - max_seq_len)
    return None


def fit_examples(tokenizer: Any, examples: Sequence[Any], *, max_seq_len: int) -> FitResult:
    """Make examples trainable within ``max_seq_len`` instead of failing on the first bad one.

    `encode_examples` rejects the whole set when one example is too long, which is right
    for a caller's own data set but wrong for data derived from logged interactions: one
    long exchange would then block every later training run. Here each example is judged
    on its own: documents (``{"text": ...}``) longer than the limit are cut to their
    longest prefix that fits (the start of a document still teaches what it states);
    chat examples that are too long are dropped (cutting a conversation would train an
    answer to a question it no longer contains); examples that are malformed or have no
    token to learn from are dropped too. The caller reports what was cut or dropped.

    Args:
        tokenizer: The tokenizer training will use.
        examples: Chat or document examples (not necessarily validated).
        max_seq_len: The longest example, in tokens (``train.max_seq_len``).

    Returns:
        A `FitResult`; every example in it passes `encode_examples`.
    """
    out: list[dict] = []
    kept: list[int] = []
    truncated: list[tuple[int, int]] = []
    dropped: list[tuple[int, int, str]] = []
    for i, ex in enumerate(examples):
        try:
            validate_examples([ex])
        except ValidationError as exc:
            dropped.append((i, 0, f"invalid: {exc}"))
            continue
        tok = encode_example(tokenizer, ex)
        if len(tok) > max_seq_len:
            cut = _truncate_document(tokenizer, ex["text"], max_seq_len, len(tok)) if "text" in ex else None
            if cut is None:
                dropped.append((i, len(tok), "too_long"))
                continue
            truncated.append((i, len(tok)))
            ex = {**ex, "text": cut}
            tok = encode_example(tokenizer, ex)
        if len(tok) < 2 or all(t == IGNORE_INDEX for t in tok.labels[1:]):
            dropped.append((i, len(tok), "no_loss_tokens"))
            continue
        out.append(dict(ex))
        kept.append(i)
    return FitResult(out, kept, truncated, dropped)


# --------------------------------------------------------------------------- batching


def plan_batches(
    lengths: Sequence[int], *, batch_size: int, micro_batch_tokens: int, seed: int,
    overhead_tokens: int | None = None,
) -> list[list[list[int]]]:
    """Plan one epoch: optimizer steps, each a list of micro-batches of example indices.

    Indices are shuffled, cut into "mega-batches" of ``50 * batch_size``, each sorted
    by length and cut into steps of ``batch_size`` (the last step may be smaller); the
    steps are shuffled again, so the order is random but every step holds examples of
    similar length. A step is then split into micro-batches whose padded size
    (``rows * longest``) stays within ``micro_batch_tokens``; an example longer than
    the budget gets a micro-batch of its own.

    How a step is split does not change what is learned: the trainer accumulates the
    micro-batches' gradients into one token-mean step. It only changes the cost:

    * ``overhead_tokens=None``: greedy -- fill each micro-batch up to the budget;
    * ``overhead_tokens=K``: the split of the step's length-sorted examples into
      contiguous micro-batches that minimises ``sum(rows * longest) + K * micro_batches``
      (exact, by dynamic programming), i.e. padded tokens against the fixed cost of a
      forward/backward pass, expressed in tokens. On a CPU that fixed cost is small
      (~20-25 tokens measured for a 4-layer Llama and for SmolLM2-135M), so a step of
      mixed lengths is split where the padding saved exceeds it; on a GPU it is large
      and steps stay whole.

    Args:
        lengths: Token count of each example.
        batch_size: Examples per optimizer step.
        micro_batch_tokens: Padded-token budget of one forward pass.
        seed: Seed of the shuffles (use a different one per epoch).
        overhead_tokens: Fixed cost of one micro-batch in tokens (None: greedy split).

    Returns:
        ``steps[s][m]`` = indices of micro-batch ``m`` of step ``s``.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = 50 * batch_size
    steps: list[list[int]] = []
    for m in range(0, len(order), mega):
        chunk = sorted(order[m : m + mega], key=lambda i: lengths[i], reverse=True)
        steps.extend(chunk[s : s + batch_size] for s in range(0, len(chunk), batch_size))
    rng.shuffle(steps)
    plan: list[list[list[int]]] = []
    for step in steps:
        step = sorted(step, key=lambda i: lengths[i], reverse=True)
        if overhead_tokens is None:
            plan.append(_split_greedy(step, lengths, micro_batch_tokens))
        else:
            plan.append(_split_min_cost(step, lengths, micro_batch_tokens, overhead_tokens))
    return plan


def _split_greedy(step: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Fill micro-batches in order (``step`` sorted longest first) up to ``budget`` padded tokens."""
    micro: list[list[int]] = []
    cur: list[int] = []
    for i in step:
        longest = lengths[cur[0]] if cur else lengths[i]  # sorted: the first is the longest
        if cur and (len(cur) + 1) * longest > budget:
            micro.append(cur)
            cur = []
        cur.append(i)
    if cur:
        micro.append(cur)
    return micro


def _split_min_cost(step: list[int], lengths: Sequence[int], budget: int, overhead: int) -> list[list[int]]:
    """Contiguous split of ``step`` (sorted longest first) minimising padded tokens + ``overhead`` per part.

    ``best[j]`` is the cheapest split of ``step[:j]``; a part ``step[i:j]`` costs
    ``(j - i) * lengths[step[i]] + overhead`` and must fit ``budget`` unless it is a
    single example. Contiguity loses nothing: with rows sorted by length, any split
    can be rearranged into a contiguous one that is no more expensive.
    """
    n = len(step)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, -1, -1):
            rows, longest = j - i, lengths[step[i]]
            if rows > 1 and rows * longest > budget:
                break  # longer parts (smaller i) only have longer rows
            cost = best[i] + rows * longest + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    parts: list[list[int]] = []
    j = n
    while j > 0:
        parts.append(step[cut[j] : j])
        j = cut[j]
    return parts[::-1]


def collate(items: Sequence[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Right-pad a micro-batch.

    Returns:
        ``(input_ids, labels, n_tokens)``: two ``[B, T]`` long tensors (``T`` = longest
        example; padding is ``pad_id`` in inputs and ``IGNORE_INDEX`` in labels) and the
        number of real (non-pad) tokens.
    """
    width = max(len(x) for x in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for r, x in enumerate(items):
        input_ids[r, : len(x)] = torch.tensor(x.input_ids, dtype=torch.long)
        labels[r, : len(x)] = torch.tensor(x.labels, dtype=torch.long)
    return input_ids, labels, sum(len(x) for x in items)


def sample_replay(replay: Sequence[Any], n_new: int, ratio: float, seed: int, *, epoch: int | None = None) -> list[int]:
    """Pick which replay examples to mix in: ``round(ratio * n_new)`` of them, capped at
    ``len(replay)``, without repetition, deterministically from ``seed`` (and ``epoch``).

    Args:
        epoch: The epoch the draw is for: each epoch gets its own draw, so over an
            update's epochs a buffer larger than one draw is rehearsed more widely
            (the same draw every epoch would rehearse the same few old examples
            ``epochs`` times and never the rest). None: one draw for the whole update.

    Returns:
        Indices into ``replay``, in sampled order.
    """
    want = min(len(replay), int(math.floor(ratio * n_new + 0.5)))
    rng = random.Random(f"replay-{seed}" if epoch is None else f"replay-{seed}-epoch-{epoch}")
    return rng.sample(range(len(replay)), want)


def replay_draws(replay: Sequence[Any], n_new: int, ratio: float, seed: int, epochs: int) -> list[list[int]]:
    """The replay draw of every epoch of an update (`sample_replay` with ``epoch=e``)."""
    return [sample_replay(replay, n_new, ratio, seed, epoch=e) for e in range(epochs)]
