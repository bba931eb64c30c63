#!/usr/bin/env python
"""Performance of `SealMemory` against named baselines, measured in the same run.

Run (from the repository root, in the project's virtualenv)::

    python bench/bench_memory.py                 # default: 1000 logs, sizes 1k,10k,100k (~10 min)
    python bench/bench_memory.py --quick         # sizes 1k,10k, fewer logs/queries (~2 min)
    python bench/bench_memory.py --sizes 1000,10000 --json out.json

What is measured (issue 2, "Performance"):

1. Hot path -- `SealMemory.log()` latency p50/p99 for a burst of realistic two-message
   exchanges (100-400 characters per message), while the background worker embeds them
   with the real all-MiniLM-L6-v2 model and writes them into embedded Chroma. Baseline:
   the naive synchronous design, i.e. embed the exchange with the same MiniLM model and
   ``collection.add`` it into Chroma inside the call, timed per call.
   Goals: p99 <= 2 ms, and >= 5x faster than the baseline (p50 and p99).
2. Ingest throughput -- interactions/s from the first `log()` of the burst until `flush()`
   returns (i.e. until everything is embedded, in batches, and in Chroma), against the
   baseline's interactions/s over the same exchanges.
3. Recall latency p50/p95 at each size (default 1k, 10k, 100k stored interactions, spread
   over 10 user namespaces; every query is scoped to one user) against LangGraph's
   ``InMemoryStore(index={"dims": 384, "embed": <the same MiniLM>})``'s
   ``search(("users", "uN"), query=..., limit=5)``, with the same data and the same queries.
   Goals: p95 <= 25 ms at 10k, and faster than `InMemoryStore` at 100k.

How the recall data are made (and why it is fair):
  * Embedding 100k texts with MiniLM on 2 CPU cores takes far longer than the whole
    benchmark may (~40 texts/s here), so every stored vector is *precomputed once* and
    loaded identically into both systems. The pool of real MiniLM vectors is the one the
    synchronous baseline of benchmark 1 computed anyway; every further item is a variant
    of a pool exchange (its text gets a distinct ticket number, so no duplicate is
    dropped) whose vector is the pool vector plus small Gaussian noise (cosine ~0.94 to
    it), renormalised.
  * Both systems get the vectors through the same `Embeddings` wrapper
    (`PrecomputedEmbeddings`): a lookup for stored texts, the real MiniLM for anything else.
    Up to 10k interactions SealMemory is populated through its public ``log()`` + ``flush()``
    (its worker calls ``embed_documents`` -> the lookup). Beyond 10k, one fsync'd journal
    transaction per interaction would make the *setup* take minutes, so the rest is
    bulk-loaded through SealMemory's own objects (`bulk_fill`): the journal's own
    ``insert`` with ``synchronous=OFF`` on the loading connection only, the index's own
    ``ChromaIndex.upsert`` in chunks of 5000 (same ids, documents and namespace metadata
    as the worker writes), then ``mark_indexed``. The stored result is the same as with
    ``log()``; only the setup is faster. `InMemoryStore` is filled through ``batch(PutOp)``.
  * Queries are *not* precomputed: both systems embed each query with the real MiniLM
    (``embed_query``), so the query-embedding cost (same model, same cost) is included in
    both systems' recall latency. The bench also prints that cost alone, so the search
    part of each figure can be read off.
  * Each query is timed on both systems back to back, alternating which goes first, so
    that drift in machine load (other processes) hits both equally.
  * "top-5 agreement" is the share of SealMemory's top 5 that score at least as high as
    the 5th result of `InMemoryStore`'s exact (brute-force) cosine search, i.e. the recall
    of Chroma's approximate HNSW index (by score, because near-duplicate variants tie).

Every timing uses `time.perf_counter`, after a warm-up; every figure states its n.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings

# Runnable as a plain script from anywhere: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seal_agent.memory.chroma import make_client  # noqa: E402
from seal_agent.memory.embeddings import MiniLMEmbeddings  # noqa: E402
from seal_agent.memory.records import (  # noqa: E402
    Interaction,
    content_hash,
    interaction_text,
    new_interaction_id,
    normalize_messages,
    task_and_outcome,
    utc_now,
)
from seal_agent.seal_memory import SealMemory  # noqa: E402

DIMS = 384
N_USERS = 10  # namespaces ("users", "u0") .. ("users", "u9")
K = 5  # memories per recall / search

# Goals from the issues (2, 13), printed next to the figures.
GOAL_LOG_P99_MS = 1.0
GOAL_LOG_SPEEDUP = 5.0
GOAL_INGEST_RATIO = 1.0
GOAL_RECALL_P95_MS = {10_000: 10.0, 100_000: 20.0}
GOAL_AGREEMENT = 0.95


# ============================================================================ data


_PROJECTS = ["atlas", "borealis", "cobalt", "delta-web", "ember", "fjord", "granite", "helios",
             "ion-gateway", "juniper", "kestrel", "lumen"]
_OBJECTS = ["deploy pipeline", "staging cluster", "billing service", "API keys", "nightly backup",
            "Postgres replica", "search index", "feature flags", "login page", "rate limiter",
            "CI cache", "Kafka consumer", "TLS certificates", "mobile release", "invoice export",
            "onboarding email", "GPU quota", "data retention policy", "SLO dashboard", "Helm chart"]
_ACTIONS = ["configure", "debug", "migrate", "speed up", "roll back", "document", "monitor",
            "scale", "secure", "clean up", "automate", "test"]
_DETAILS = [
    "It started failing after the upgrade last Tuesday.",
    "The team in Berlin depends on it for the quarterly report.",
    "We tried restarting it twice but the error comes back within an hour.",
    "My manager wants a plan before the Friday review.",
    "The logs show timeouts around 3 am UTC.",
    "I prefer solutions that do not need a maintenance window.",
    "Budget is tight, so no new managed services please.",
    "We run everything on Kubernetes 1.29 with ArgoCD.",
    "Last time we changed it, latency doubled for a day.",
    "The customer is a hospital, so audit logging matters.",
    "I am vegetarian, by the way, if you book the offsite lunch.",
    "Please keep answers short, I read them on my phone.",
]
_QUESTIONS = [
    "What would you do first?", "Can you give me the exact steps?", "Is there a safer way?",
    "How long should that take?", "What are the risks?", "Which config file is involved?",
]
_ANSWERS = [
    "Start by checking the recent changes to {obj} in {proj}; most regressions come from there.",
    "Pin the previous version of {obj}, then {act} it behind a feature flag.",
    "Add an alert on the error rate of {obj} so the next failure pages someone early.",
    "Run the change on the staging copy of {proj} first and compare the metrics.",
    "Keep the old {obj} running in parallel until the new one has been stable for a week.",
    "Write the steps into the {proj} runbook so the on-call engineer can repeat them.",
    "The setting lives in values.yaml under the {obj} section; bump it and redeploy.",
    "Expect about an hour of work, most of it waiting for the pipeline.",
    "The main risk is data loss during the switch, so take a snapshot beforehand.",
    "Use a canary: five percent of traffic for an hour, then the rest.",
]
_QUERY_TEMPLATES = [
    "what did I ask about the {obj}?", "how do we {act} the {obj} in {proj}?",
    "problems with {obj} after an upgrade", "steps to {act} {obj}",
    "what was the advice on {obj} risks?", "{proj} {obj} runbook",
    "anything about timeouts in {proj}?", "which config controls the {obj}?",
]


def _grow(rng: random.Random, first: str, more: Callable[[], str], lo: int = 100, hi: int = 400) -> str:
    """Sentences appended until a length drawn from [lo, hi] is reached, cut at a word."""
    target = rng.randint(lo, hi)
    text = first
    while len(text) < target:
        text += " " + more()
    if len(text) > hi:
        text = text[:hi].rsplit(" ", 1)[0]
    return text


def make_exchange(rng: random.Random) -> tuple[str, str]:
    """One realistic (user, assistant) exchange, each 100-400 characters."""
    proj, obj, act = rng.choice(_PROJECTS), rng.choice(_OBJECTS), rng.choice(_ACTIONS)
    user = _grow(rng, f"I need to {act} the {obj} for {proj}.",
                 lambda: rng.choice(_DETAILS + _QUESTIONS))
    assistant = _grow(rng, rng.choice(_ANSWERS).format(obj=obj, proj=proj, act=act),
                      lambda: rng.choice(_ANSWERS).format(obj=rng.choice(_OBJECTS), proj=proj, act=act))
    return user, assistant


def make_exchanges(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` distinct exchanges (SealMemory drops duplicates, so all must differ)."""
    rng = random.Random(seed)
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        ex = make_exchange(rng)
        if ex not in seen:
            seen.add(ex)
            out.append(ex)
    return out


def make_queries(n: int, seed: int) -> list[tuple[str, tuple[str, str]]]:
    """`n` distinct (query, namespace) pairs, cycling over the user namespaces."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[str, tuple[str, str]]] = []
    while len(out) < n:
        q = rng.choice(_QUERY_TEMPLATES).format(
            obj=rng.choice(_OBJECTS), proj=rng.choice(_PROJECTS), act=rng.choice(_ACTIONS))
        if q not in seen:
            seen.add(q)
            out.append((q, ("users", f"u{len(out) % N_USERS}")))
    return out


def as_messages(ex: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": ex[0]}, {"role": "assistant", "content": ex[1]}]


# ====================================================================== helpers


@dataclass
class Stats:
    """Latency summary in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        a = np.asarray(seconds, dtype=np.float64) * 1000.0
        return cls(n=len(a), p50=float(np.percentile(a, 50)), p95=float(np.percentile(a, 95)),
                   p99=float(np.percentile(a, 99)), mean=float(a.mean()), max=float(a.max()))


@dataclass
class Results:
    """Everything the run measured (dumped by ``--json``)."""

    machine: dict[str, Any] = field(default_factory=dict)
    hot_path: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    recall: dict[str, dict[str, Any]] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)


def fmt_ms(x: float) -> str:
    return f"{x:9.2f} ms" if x < 100 else f"{x:9.1f} ms"


def ratio(base: float, ours: float) -> float:
    return base / ours if ours > 0 else float("inf")


def loadavg() -> str:
    """1-minute load average: other processes on this small machine skew figures; say so."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settle() -> None:
    """Collect garbage before a timed phase so a collection of the last phase's objects
    does not land inside it."""
    gc.collect()


class PrecomputedEmbeddings(Embeddings):
    """Stored texts -> their precomputed vectors; anything else -> the real model.

    Used for the recall benchmark so that both systems index exactly the same vectors
    without embedding 100k texts; queries go to the real MiniLM in both systems.
    """

    def __init__(self, model: Embeddings) -> None:
        self.model = model
        self.vectors: np.ndarray = np.zeros((0, DIMS), dtype=np.float32)
        self.row: dict[str, int] = {}
        self.misses = 0  # documents that were not precomputed (should stay 0)

    def load(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.row = {t: i for i, t in enumerate(texts)}

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for t in texts:
            i = self.row.get(t)
            if i is None:
                self.misses += 1
                out.extend(self.model.embed_documents([t]))
            else:
                out.append(self.vectors[i].tolist())
        return out

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)


# ==================================================== 1 + 2: hot path, throughput


def bench_hot_path(model: MiniLMEmbeddings, n_logs: int, workdir: Path, res: Results,
                   ) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Log latency and ingest throughput, SealMemory vs synchronous embed-and-add.

    Returns the exchanges and the MiniLM vectors the baseline computed for them: they
    are the real-vector pool of the recall benchmark (no second embedding pass).
    """
    n_warm = 32
    exchanges = make_exchanges(n_logs + 2 * n_warm, seed=1)
    warm_seal, warm_base, timed = exchanges[:n_warm], exchanges[n_warm:2 * n_warm], exchanges[2 * n_warm:]
    threads = [f"t{i // 5}" for i in range(len(timed))]  # 5 exchanges per conversation thread

    print(f"\n== 1+2. Hot path and ingest: {n_logs} logs, burst (back to back), "
          f"real MiniLM  [load {loadavg()}]")

    # -- SealMemory: log() returns after the fsync'd journal write; the worker embeds.
    home = workdir / "hot_seal"
    # The defaults, as a user gets them: MiniLM, with the worker's batches embedded in a
    # child process (memory.embed_in_subprocess) so the model never holds the GIL log() needs.
    mem = SealMemory(home)
    try:
        for i, ex in enumerate(warm_seal):  # warm: SQLite connection, Chroma collection, worker
            mem.log(as_messages(ex), namespace=("users", f"u{i % N_USERS}"))
        mem.flush(timeout=None)
        settle()
        lat: list[float] = []
        t_first = time.perf_counter()
        for i, ex in enumerate(timed):
            msgs, ns = as_messages(ex), ("users", f"u{i % N_USERS}")
            t0 = time.perf_counter()
            mem.log(msgs, namespace=ns, thread_id=threads[i])
            lat.append(time.perf_counter() - t0)
        t_logged = time.perf_counter()
        mem.flush(timeout=None)
        t_flushed = time.perf_counter()
        n_indexed = mem._index.count()  # sanity: everything (warm-up included) reached Chroma
    finally:
        mem.close()
    seal = Stats.of(lat)
    seal_ips = len(timed) / (t_flushed - t_first)
    print(f"   SealMemory: logged in {t_logged - t_first:.2f} s, flushed after {t_flushed - t_first:.2f} s "
          f"({n_indexed} in Chroma)  [load {loadavg()}]")

    # -- Baseline: embed with the same model and collection.add inside the call.
    client = make_client(workdir / "hot_base")
    coll = client.get_or_create_collection(
        "baseline", embedding_function=None, metadata={"hnsw:space": "cosine"})

    def sync_log(j: int, ex: tuple[str, str], ns: tuple[str, str], thread: str) -> list[float]:
        text = interaction_text(ex[0], ex[1])
        vec = model.embed_documents([text])[0]
        coll.add(ids=[f"b{j}"], embeddings=[vec], documents=[text],
                 metadatas=[{"ns": "/".join(ns), "thread_id": thread, "created_at": time.time()}])
        return vec

    for i, ex in enumerate(warm_base):
        sync_log(-i - 1, ex, ("users", f"u{i % N_USERS}"), "warm")
    settle()
    base_lat: list[float] = []
    vectors = np.empty((len(timed), DIMS), dtype=np.float32)
    t_first = time.perf_counter()
    for i, ex in enumerate(timed):
        t0 = time.perf_counter()
        vectors[i] = sync_log(i, ex, ("users", f"u{i % N_USERS}"), threads[i])
        base_lat.append(time.perf_counter() - t0)
    base_ips = len(timed) / (time.perf_counter() - t_first)
    base = Stats.of(base_lat)

    r50, r99 = ratio(base.p50, seal.p50), ratio(base.p99, seal.p99)
    print(f"   {'':28}{'p50':>12}{'p99':>12}{'mean':>12}{'max':>12}     n")
    for name, s in (("SealMemory.log()", seal), ("sync embed + collection.add", base)):
        print(f"   {name:28}{fmt_ms(s.p50)}{fmt_ms(s.p99)}{fmt_ms(s.mean)}{fmt_ms(s.max)}  {s.n:5d}")
    print(f"   {'speed-up (baseline / Seal)':28}{r50:11.1f}x{r99:11.1f}x")
    print(f"   goal p99 <= {GOAL_LOG_P99_MS} ms: {'PASS' if seal.p99 <= GOAL_LOG_P99_MS else 'FAIL'}"
          f"   goal >= {GOAL_LOG_SPEEDUP:.0f}x (p50 and p99): "
          f"{'PASS' if min(r50, r99) >= GOAL_LOG_SPEEDUP else 'FAIL'}")
    print(f"   Ingest: SealMemory {seal_ips:.1f} interactions/s (first log -> flush returned, batched "
          f"embedding) vs baseline {base_ips:.1f}/s -> {seal_ips / base_ips:.2f}x")

    res.hot_path = {"n": len(timed), "seal_ms": seal.__dict__, "baseline_ms": base.__dict__,
                    "speedup_p50": r50, "speedup_p99": r99}
    res.throughput = {"n": len(timed), "seal_per_s": seal_ips, "baseline_per_s": base_ips,
                      "ratio": seal_ips / base_ips, "seal_log_phase_s": t_logged - t_first}
    res.goals += [
        {"goal": f"log() p99 <= {GOAL_LOG_P99_MS} ms", "value": f"{seal.p99:.2f} ms",
         "pass": seal.p99 <= GOAL_LOG_P99_MS},
        {"goal": f"log() >= {GOAL_LOG_SPEEDUP:.0f}x faster than sync (p50, p99)",
         "value": f"{r50:.1f}x, {r99:.1f}x", "pass": min(r50, r99) >= GOAL_LOG_SPEEDUP},
        {"goal": f"ingest >= {GOAL_INGEST_RATIO:.1f}x the synchronous baseline",
         "value": f"{seal_ips / base_ips:.2f}x", "pass": seal_ips / base_ips >= GOAL_INGEST_RATIO},
    ]
    return timed, vectors


# ============================================================================ 3: recall


@dataclass
class Dataset:
    exchanges: list[tuple[str, str]]
    texts: list[str]
    vectors: np.ndarray  # (n, DIMS) float32, unit norm
    n_real: int  # the first n_real vectors are real MiniLM vectors

    def namespace(self, i: int) -> tuple[str, str]:
        return ("users", f"u{i % N_USERS}")


def build_dataset(pool: list[tuple[str, str]], pool_vecs: np.ndarray, n: int, seed: int = 7) -> Dataset:
    """`n` items: the real pool first, then noisy variants of it (see module docstring)."""
    rng = np.random.default_rng(seed)
    n_real = min(n, len(pool))
    exchanges = list(pool[:n_real])
    vectors = np.empty((n, DIMS), dtype=np.float32)
    vectors[:n_real] = pool_vecs[:n_real]
    if n > n_real:
        src = np.arange(n_real, n) % n_real
        for i, s in zip(range(n_real, n), src, strict=True):
            u, a = pool[s]
            exchanges.append((f"{u} (ticket {i})", a))
        # noise of norm ~0.35 -> cosine ~0.94 to the source vector
        noise = rng.standard_normal((n - n_real, DIMS)).astype(np.float32) * (0.35 / np.sqrt(DIMS))
        v = pool_vecs[src] + noise
        vectors[n_real:] = v / np.linalg.norm(v, axis=1, keepdims=True)
    texts = [interaction_text(u, a) for u, a in exchanges]
    return Dataset(exchanges, texts, vectors, n_real)


LOG_FILL_MAX = 10_000  # beyond this many interactions, the recall store is bulk-filled


def bulk_fill(mem: SealMemory, data: Dataset, items: range, id_to_item: dict[str, int]) -> None:
    """Store `items` as `log()` would, without one fsync per item (setup only, not timed).

    Uses SealMemory's own journal ``insert`` and ``ChromaIndex.upsert``, so rows and
    Chroma records are exactly what ``log()`` + the worker produce. The worker is not
    woken (``insert`` does not notify it) and finds nothing to do: rows are marked
    indexed right after their Chroma upsert.
    """
    mc = mem.config.memory
    db = mem._journal._db()  # this thread's connection; the worker has its own
    db.execute("PRAGMA synchronous=OFF")  # a crash during setup does not matter here
    try:
        for lo in range(items.start, items.stop, 5000):
            chunk: list[Interaction] = []
            for i in range(lo, min(items.stop, lo + 5000)):
                msgs = normalize_messages(as_messages(data.exchanges[i]), max_messages=mc.max_messages,
                                          max_message_chars=mc.max_message_chars)
                task, outcome = task_and_outcome(msgs)
                it = Interaction(id=new_interaction_id(), namespace=data.namespace(i), thread_id=None,
                                 created_at=utc_now(), messages=tuple(msgs), task=task, outcome=outcome,
                                 metadata={}, content_hash=content_hash(msgs))
                id_, inserted = mem._journal.insert(it)
                assert inserted, "bulk_fill: unexpected duplicate"
                id_to_item[id_] = i
                chunk.append(it)
            mem._index.upsert(chunk)
            mem._journal.mark_indexed([it.id for it in chunk])
    finally:
        db.execute("PRAGMA synchronous=FULL")


class Mem0Server:
    """Mem0's `Memory.search` on the same data, in its own virtualenv (`bench/_mem0_runner.py
    --serve`), asked one query at a time so that its queries alternate with ours."""

    def __init__(self, python: str, data: Dataset, size: int, queries: list[tuple[str, tuple[str, str]]],
                 workdir: Path) -> None:
        import subprocess

        folder = workdir / f"mem0-{size}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", data.vectors[:size])
        with open(folder / "records.jsonl", "w") as f:
            for i in range(size):
                f.write(json.dumps({"id": str(i), "text": data.texts[i], "user": data.namespace(i)[1]}) + "\n")
        with open(folder / "queries.jsonl", "w") as f:  # its warm-up queries
            for q, ns in queries:
                f.write(json.dumps({"text": q, "user": ns[1]}) + "\n")
        self.out = folder / "result.json"
        self.error: str | None = None
        self.meta: dict[str, Any] = {}
        runner = Path(__file__).resolve().parent / "_mem0_runner.py"
        self.log = folder / "runner.log"  # a file, not a pipe: its progress bars would fill a pipe and block it
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([python, str(runner), "--data", str(folder), "--out", str(self.out),
                                          "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # after it loaded everything (minutes at 100k)
        try:
            self.meta = json.loads(line)
            assert self.meta.get("ready")
        except (ValueError, AssertionError):
            self.error = self._failure(line)

    def _failure(self, line: str) -> str:
        self.proc.kill()
        self.proc.wait(60)
        try:
            return str(json.loads(self.out.read_text()).get("error"))
        except (OSError, ValueError):
            err = self.log.read_text(errors="replace") if self.log.is_file() else ""
            return f"runner said {line.strip()[:200]!r}; its log ends: {err.strip()[-400:]}"

    def ask(self, q: str, user: str) -> tuple[float, list[str]] | None:
        """(milliseconds of `Memory.search`, timed in the child; the ids of its top 5)."""
        if self.error is not None:
            return None
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"text": q, "user": user}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        try:
            reply = json.loads(line)
            return float(reply["ms"]), list(reply["ids"])
        except (ValueError, KeyError):
            self.error = self._failure(line)
            return None

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(120)
            except Exception:
                self.proc.kill()


def bench_recall(model: MiniLMEmbeddings, pool: list[tuple[str, str]], pool_vecs: np.ndarray,
                 sizes: list[int], n_queries: int, workdir: Path, res: Results,
                 mem0_python: str | None = None) -> None:
    from langgraph.store.base import PutOp
    from langgraph.store.memory import InMemoryStore

    data = build_dataset(pool, pool_vecs, max(sizes))
    emb = PrecomputedEmbeddings(model)
    emb.load(data.texts, data.vectors)
    # InMemoryStore embeds its queries the way a LangChain user's MiniLM does: torch (our own
    # lean torch path, already faster than sentence-transformers' encode). SealMemory's
    # recall uses its default, ONNX Runtime (same vectors to 1e-4); both are printed alone.
    torch_model = MiniLMEmbeddings(query_backend="torch")
    store_emb = PrecomputedEmbeddings(torch_model)
    store_emb.load(data.texts, data.vectors)
    queries = make_queries(n_queries, seed=3)
    warm_queries = make_queries(n_queries + 10, seed=3)[n_queries:]  # distinct from the timed ones
    print(f"\n== 3. Recall: top-{K} within one of {N_USERS} user namespaces, {n_queries} queries per size; "
          f"{data.n_real} real MiniLM vectors, the rest noisy variants; query embedding (real MiniLM) "
          f"included in both")

    mem = SealMemory(workdir / "recall_seal", embeddings=emb)
    store = InMemoryStore(index={"dims": DIMS, "embed": store_emb, "fields": ["text"]})
    id_to_item: dict[str, int] = {}
    loaded = 0
    try:
        for size in sorted(sizes):
            # -- grow both systems to `size` with the same items
            t0 = time.perf_counter()
            via_log = range(loaded, max(loaded, min(size, LOG_FILL_MAX)))
            for i in via_log:
                id_ = mem.log(as_messages(data.exchanges[i]), namespace=data.namespace(i))
                id_to_item[id_] = i
            mem.flush(timeout=None)
            if size > via_log.stop:
                bulk_fill(mem, data, range(via_log.stop, size), id_to_item)
            how = "log()+flush()" if size <= LOG_FILL_MAX else (
                f"log()+flush() up to {LOG_FILL_MAX:,}, bulk_fill beyond")
            t_seal = time.perf_counter() - t0
            t0 = time.perf_counter()
            for lo in range(loaded, size, 1000):
                store.batch([PutOp(data.namespace(i), str(i), {"text": data.texts[i]})
                             for i in range(lo, min(size, lo + 1000))])
            t_store = time.perf_counter() - t0
            loaded = size
            print(f"\n   {size:,} interactions (SealMemory filled via {how} in {t_seal:.1f} s, "
                  f"InMemoryStore via batch(PutOp) in {t_store:.1f} s; {mem._index.count():,} in Chroma, "
                  f"lookup misses {emb.misses})  [load {loadavg()}]")

            def seal_recall(q: str, ns: tuple[str, str]) -> list[tuple[int, float]]:
                return [(id_to_item[m.id], m.score) for m in mem.recall(q, namespace=ns, k=K)]

            def store_search(q: str, ns: tuple[str, str]) -> list[tuple[int, float]]:
                return [(int(it.key), float(it.score or 0.0)) for it in store.search(ns, query=q, limit=K)]

            mem0_srv = Mem0Server(mem0_python, data, size, warm_queries, workdir) if mem0_python else None
            mem0_ms: list[float] = []
            mem0_top: list[list[str]] = []
            for q, ns in warm_queries:
                seal_recall(q, ns)
                store_search(q, ns)
                model.embed_query(q)
                torch_model.embed_query(q)
            settle()
            t_seal_l: list[float] = []
            t_store_l: list[float] = []
            t_embed_l: list[float] = []
            t_embed_torch_l: list[float] = []
            agree = 0
            exact_kth: list[float] = []  # the exact search's K-th best score per query (for Mem0)
            for j, (q, ns) in enumerate(queries):
                # alternate the order so that load drift and cache effects hit both alike
                order = (0, 1, 2, 3, 4) if j % 2 == 0 else (4, 3, 2, 1, 0)
                got: dict[int, list[tuple[int, float]]] = {}
                for which in order:
                    t1 = time.perf_counter()
                    if which == 0:
                        got[0] = seal_recall(q, ns)
                        t_seal_l.append(time.perf_counter() - t1)
                    elif which == 1:
                        model.embed_query(q)
                        t_embed_l.append(time.perf_counter() - t1)
                    elif which == 2:
                        got[2] = store_search(q, ns)
                        t_store_l.append(time.perf_counter() - t1)
                    elif which == 3:
                        torch_model.embed_query(q)
                        t_embed_torch_l.append(time.perf_counter() - t1)
                    elif mem0_srv is not None and (answer := mem0_srv.ask(q, ns[1])) is not None:
                        mem0_ms.append(answer[0])
                        mem0_top.append(answer[1])
                assert all(data.namespace(i) == ns for i, _ in got[0]), "namespace leak"
                # Near-duplicate variants tie, so compare by score, not by id: a SealMemory hit
                # counts when it is as close as the exact search's K-th best (float32 slack).
                kth = min(score for _, score in got[2])
                exact_kth.append(kth)
                agree += sum(score >= kth - 1e-4 for _, score in got[0])
            s_seal, s_store, s_emb = Stats.of(t_seal_l), Stats.of(t_store_l), Stats.of(t_embed_l)
            s_emb_torch = Stats.of(t_embed_torch_l)
            agreement = agree / (K * len(queries))
            r50, r95 = ratio(s_store.p50, s_seal.p50), ratio(s_store.p95, s_seal.p95)
            mem0: dict[str, Any] = {}
            if mem0_srv is not None:
                mem0_srv.close()
                mem0 = {"mem0_version": mem0_srv.meta.get("mem0_version"), "load_s": mem0_srv.meta.get("load_s"),
                        "offline": mem0_srv.meta.get("offline")}
                if mem0_srv.error is not None or len(mem0_ms) != len(queries):
                    mem0["error"] = mem0_srv.error or f"answered {len(mem0_ms)} of {len(queries)} queries"
                else:
                    mem0["ms"] = Stats.of([x / 1000 for x in mem0_ms]).__dict__
                    # its hits scored exactly, against the same K-th best
                    qv = [np.asarray(model.embed_query(q), dtype=np.float32) for q, _ in queries]
                    hits = [sum(float(data.vectors[int(i)] @ v) >= kth - 1e-4 for i in top)
                            for top, v, kth in zip(mem0_top, qv, exact_kth, strict=True)]
                    mem0["top_k_agreement"] = sum(hits) / (K * len(queries))
            print(f"   {'':40}{'p50':>12}{'p95':>12}{'mean':>12}{'max':>12}     n")
            lines = [("SealMemory.recall()", s_seal), ("InMemoryStore.search()", s_store)]
            if mem0.get("ms"):
                lines.append((f"Mem0 {mem0.get('mem0_version', '')} Memory.search()", Stats(**mem0["ms"])))
            lines += [("embed_query alone, ONNX (SealMemory's)", s_emb),
                      ("embed_query alone, torch (InMemoryStore's)", s_emb_torch)]
            for name, s in lines:
                print(f"   {name:40}{fmt_ms(s.p50)}{fmt_ms(s.p95)}{fmt_ms(s.mean)}{fmt_ms(s.max)}  {s.n:5d}")
            print(f"   {'speed-up (InMemoryStore / Seal)':40}{r50:11.2f}x{r95:11.2f}x")
            print(f"   top-{K} agreement with InMemoryStore's exact search (by score): {agreement:.1%}"
                  + (f"; Mem0's: {mem0['top_k_agreement']:.1%}" if "top_k_agreement" in mem0 else ""))
            if mem0.get("error"):
                print(f"   Mem0 did not run: {mem0['error']}")
            n = f"{size // 1000}k" if size >= 1000 else str(size)
            if size in GOAL_RECALL_P95_MS:
                goal = GOAL_RECALL_P95_MS[size]
                res.goals.append({"goal": f"recall p95 <= {goal:.0f} ms at {n}", "value": f"{s_seal.p95:.2f} ms",
                                  "pass": s_seal.p95 <= goal})
            res.goals.append({"goal": f"recall top-{K} agreement >= {GOAL_AGREEMENT:.0%} at {n}",
                              "value": f"{agreement:.1%}", "pass": agreement >= GOAL_AGREEMENT})
            res.goals.append({"goal": f"recall faster than InMemoryStore at {n} (p50, p95)",
                              "value": f"{r50:.2f}x, {r95:.2f}x", "pass": s_seal.p50 < s_store.p50
                              and s_seal.p95 < s_store.p95})
            if mem0_python:
                m0 = mem0.get("ms")
                res.goals.append({"goal": f"recall faster than Mem0 Memory.search at {n} (p50, p95)",
                                  "value": (f"{m0['p50'] / s_seal.p50:.2f}x, {m0['p95'] / s_seal.p95:.2f}x" if m0
                                            else f"Mem0 did not run: {mem0.get('error', '?')[:120]}"),
                                  "pass": bool(m0) and s_seal.p50 < m0["p50"] and s_seal.p95 < m0["p95"]})
            res.recall[str(size)] = {
                "n_queries": len(queries), "seal_ms": s_seal.__dict__, "inmemorystore_ms": s_store.__dict__,
                "embed_query_ms": s_emb.__dict__, "embed_query_torch_ms": s_emb_torch.__dict__,
                "speedup_p50": r50, "speedup_p95": r95,
                "top_k_agreement": agreement, "seal_fill_s": t_seal, "store_fill_s": t_store,
                "mem0": {k: v for k, v in mem0.items() if k not in ("latencies_ms", "top_ids", "top_scores")},
            }
    finally:
        mem.close()


# ============================================================================== main


def machine_info(model: MiniLMEmbeddings) -> dict[str, Any]:
    import chromadb
    import langgraph
    import torch

    try:
        from importlib.metadata import version
        lg = version("langgraph")
    except Exception:
        lg = getattr(langgraph, "__version__", "?")
    st = model._model()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_device": str(st.device),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "chromadb": chromadb.__version__, "langgraph": lg,
        "platform": platform.platform(), "loadavg_1m_at_start": loadavg(),
    }


def print_summary(res: Results) -> None:
    print("\n== Summary")
    rows: list[tuple[str, str, str, str]] = []
    if res.hot_path:
        h = res.hot_path
        s, b = h["seal_ms"], h["baseline_ms"]
        rows += [
            (f"log() p50 (n={h['n']})", f"{s['p50']:.2f} ms", f"{b['p50']:.2f} ms", f"{h['speedup_p50']:.1f}x"),
            (f"log() p99 (n={h['n']})", f"{s['p99']:.2f} ms", f"{b['p99']:.2f} ms", f"{h['speedup_p99']:.1f}x"),
        ]
        t = res.throughput
        rows.append(("ingest, interactions/s", f"{t['seal_per_s']:.1f}", f"{t['baseline_per_s']:.1f}",
                     f"{t['ratio']:.2f}x"))
    for size, r in res.recall.items():
        s, b = r["seal_ms"], r["inmemorystore_ms"]
        n = f"{int(size):,}"
        rows += [
            (f"recall p50 @ {n} (n={r['n_queries']})", f"{s['p50']:.2f} ms", f"{b['p50']:.2f} ms",
             f"{r['speedup_p50']:.2f}x"),
            (f"recall p95 @ {n} (n={r['n_queries']})", f"{s['p95']:.2f} ms", f"{b['p95']:.2f} ms",
             f"{r['speedup_p95']:.2f}x"),
        ]
    print(f"   {'metric':34}{'SealMemory':>14}{'baseline':>14}{'ratio':>10}")
    for m, a, b2, r2 in rows:
        print(f"   {m:34}{a:>14}{b2:>14}{r2:>10}")
    print("   (baseline: sync embed+add into Chroma for log()/ingest; LangGraph InMemoryStore for recall;"
          " ratio: how many times better SealMemory is)")


def save_record(res: Results, *, n_logs: int, sizes: list[int], n_queries: int) -> Path:
    """The run as a `bench/_results.py` record (rows, goals with PASS/FAIL) and a chart."""
    from _results import Goal, Row, print_goals, save

    rows: list[Row] = []
    if res.hot_path:
        h, t = res.hot_path, res.throughput
        s, b = h["seal_ms"], h["baseline_ms"]
        rows += [Row(f"`log()` p50 / p99 (n={h['n']})", f"{s['p50']:.2f} / {s['p99']:.2f} ms",
                     f"sync embed+add {b['p50']:.1f} / {b['p99']:.1f} ms",
                     f"{h['speedup_p50']:.0f}x / {h['speedup_p99']:.0f}x"),
                 Row("ingest (first log until flush returns)", f"{t['seal_per_s']:.1f} interactions/s",
                     f"sync embed+add {t['baseline_per_s']:.1f}/s", f"{t['ratio']:.2f}x")]
    for size, r in res.recall.items():
        s, b, m0 = r["seal_ms"], r["inmemorystore_ms"], r.get("mem0", {}).get("ms")
        n = f"{int(size):,}"
        rows.append(Row(f"recall p50 / p95 @ {n} (top-5 agreement)",
                        f"{s['p50']:.1f} / {s['p95']:.1f} ms ({r['top_k_agreement']:.1%})",
                        f"InMemoryStore {b['p50']:.1f} / {b['p95']:.1f} ms",
                        f"{r['speedup_p50']:.2f}x / {r['speedup_p95']:.2f}x"))
        if m0:
            rows.append(Row(f"recall p50 / p95 @ {n} vs Mem0",
                            f"{s['p50']:.1f} / {s['p95']:.1f} ms",
                            f"Mem0 {r['mem0'].get('mem0_version', '')} {m0['p50']:.1f} / {m0['p95']:.1f} ms "
                            f"({r['mem0'].get('top_k_agreement', float('nan')):.1%})",
                            f"{m0['p50'] / s['p50']:.2f}x / {m0['p95'] / s['p95']:.2f}x"))
    goals = [Goal(g["goal"], g["value"], bool(g["pass"])) for g in res.goals]
    print_goals(goals)

    def chart(path: Path) -> bool:
        try:
            import matplotlib
        except ImportError:
            return False
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6))
        sizes_s = list(res.recall)
        series = [("SealMemory", "seal_ms", "#2a7ab0"), ("InMemoryStore", "inmemorystore_ms", "#999999")]
        width = 0.27
        for k, (name, key, color) in enumerate(series):
            vals = [res.recall[z][key]["p95"] for z in sizes_s]
            bars = ax.bar([i + k * width for i in range(len(sizes_s))], vals, width, label=name, color=color)
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        m0 = [res.recall[z].get("mem0", {}).get("ms", {}).get("p95") for z in sizes_s]
        if any(v is not None for v in m0):
            bars = ax.bar([i + 2 * width for i in range(len(sizes_s))], [v or 0 for v in m0], width,
                          label="Mem0", color="#d08c2a")
            ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks([i + width for i in range(len(sizes_s))], [f"{int(z):,}" for z in sizes_s])
        ax.set_xlabel("stored interactions (10 user namespaces)")
        ax.set_ylabel("recall p95, ms (lower is better)")
        ax.legend(fontsize=8)
        ax.set_title(f"recall p95 incl. query embedding; load {res.machine.get('loadavg_1m_at_start')}",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return True

    return save("memory", title=f"bench_memory: {n_logs} logs, recall sizes {sizes}, {n_queries} queries",
                data=res.__dict__, rows=rows, goals=goals,
                load_before=[float(res.machine.get("loadavg_1m_at_start") or "nan")],
                machine=f"{res.machine.get('cpu')} ({res.machine.get('cores')} cores)",
                device=f"CPU, torch {res.machine.get('torch_threads')} threads", chart=chart)


# ====================================================================== journals (issue 12)


class CheapEmbeddings(Embeddings):
    """A 64-dim hash of the text: keeps the embedding model's cost out of the journal
    comparison (both backends get the same worker load; the figure is the journal's)."""

    def _one(self, text: str) -> list[float]:
        rng = np.random.default_rng(abs(hash(text)) % (2**32))
        v = rng.standard_normal(64)
        return (v / np.linalg.norm(v)).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


def _journal_writer(home: str, url: str | None, n: int, seed: int, start_at: float) -> dict[str, Any]:
    """One writer process: `n` timed `log()` calls from `start_at` (wall clock) on."""
    mem = SealMemory(home, embeddings=CheapEmbeddings(), journal_url=url, model="tiny-random")
    exchanges = make_exchanges(n + 20, seed)
    for ex in exchanges[:20]:  # warm-up, untimed
        mem.log(as_messages(ex), namespace=("users", "warm"))
    time.sleep(max(0.0, start_at - time.time()))
    lat = []
    for i, ex in enumerate(exchanges[20:]):
        t = time.perf_counter()
        mem.log(as_messages(ex), namespace=("users", f"u{i % N_USERS}"))
        lat.append(time.perf_counter() - t)
    end = time.time()
    mem.close()
    return {"lat": lat, "end": end}


class _PlainInsert:
    """The baseline: one INSERT + commit per call on the same engine, same durability
    (SQLite WAL + synchronous=FULL; Postgres synchronous_commit=on)."""

    def __init__(self, url: str | None, path: Path) -> None:
        self.body = json.dumps(as_messages(make_exchanges(1, 5)[0]))
        self.i = 0
        self.url = url
        if url is None:
            import sqlite3

            self.db: Any = sqlite3.connect(path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        else:
            import psycopg

            self.db = psycopg.connect(url, autocommit=True, options="-c synchronous_commit=on")
        self.db.execute("CREATE TABLE IF NOT EXISTS plain (id TEXT PRIMARY KEY, body TEXT)")

    def __call__(self) -> float:
        self.i += 1
        t = time.perf_counter()
        if self.url is None:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO plain VALUES (?, ?)", (f"id{self.i}", self.body))
            self.db.execute("COMMIT")
        else:
            self.db.execute("INSERT INTO plain VALUES (%s, %s)", (f"id{self.i}", self.body))
        return time.perf_counter() - t

    def close(self) -> None:
        self.db.close()


def bench_journals(n_logs: int, writers: Sequence[int], workdir: Path) -> dict[str, Any]:
    """`log()` p50/p99 and ingest on the SQLite and the Postgres journal (a throwaway
    cluster on loopback, made like the tests make it), with 1, 2, 4... writer processes,
    and the ratio to a plain INSERT + commit per call on the same engine."""
    import multiprocessing

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pgcluster import start_cluster

    cluster = start_cluster()
    if cluster is None:
        raise SystemExit("PostgreSQL (initdb, pg_ctl) is not installed")
    out: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    try:
        for backend in ("sqlite", "postgres"):
            row: dict[str, Any] = {}
            url = cluster.create_database("bench") if backend == "postgres" else None
            # One process: a plain INSERT and a log() timed back to back, alternating, so
            # that drift in machine load hits both equally.
            plain = _PlainInsert(url, workdir / f"plain-{backend}.sqlite3")
            home = workdir / f"one-{backend}"
            mem = SealMemory(home, embeddings=CheapEmbeddings(), journal_url=url, model="tiny-random")
            exchanges = make_exchanges(n_logs + 20, 11)
            for ex in exchanges[:20]:
                mem.log(as_messages(ex), namespace=("users", "warm"))
                plain()
            mem.flush(timeout=600)
            settle()
            base_lat, log_lat = [], []
            t0 = time.perf_counter()
            for i, ex in enumerate(exchanges[20:]):
                if i % 2:
                    base_lat.append(plain())
                t = time.perf_counter()
                mem.log(as_messages(ex), namespace=("users", f"u{i % N_USERS}"))
                log_lat.append(time.perf_counter() - t)
                if not i % 2:
                    base_lat.append(plain())
            mem.flush(timeout=600)  # ingest: until the worker has indexed every one of them
            row["ingest_per_s"] = n_logs / (time.perf_counter() - t0)
            mem.close()
            plain.close()
            base, one = Stats.of(base_lat), Stats.of(log_lat)
            row["plain_insert"] = base.__dict__
            row["log_1_process"] = {**one.__dict__, "p50_vs_plain": one.p50 / base.p50,
                                    "p99_vs_plain": one.p99 / base.p99}
            for w in writers:
                url_w = cluster.create_database("benchw") if backend == "postgres" else None
                home_w = str(workdir / f"w{w}-{backend}")
                start_at = time.time() + 10 + 2 * w  # after every child has imported and warmed up
                with ctx.Pool(w) as pool:
                    parts = pool.starmap(_journal_writer, [(home_w, url_w, n_logs, 100 + k, start_at)
                                                           for k in range(w)])
                lat = [x for part in parts for x in part["lat"]]
                st = Stats.of(lat)
                row[f"writers_{w}"] = {**st.__dict__, "calls_per_s": len(lat) / (max(p["end"] for p in parts)
                                                                                 - start_at),
                                       "p50_vs_plain": st.p50 / base.p50, "p99_vs_plain": st.p99 / base.p99}
            out[backend] = row
    finally:
        cluster.destroy()
    return out


def print_journals(res: dict[str, Any], writers: Sequence[int]) -> None:
    print("\n== journals: log() on SQLite vs Postgres (loopback), vs a plain INSERT + commit per call ==")
    for backend, row in res.items():
        b = row["plain_insert"]
        print(f"   {backend:8s} plain INSERT+commit: p50 {fmt_ms(b['p50'])}  p99 {fmt_ms(b['p99'])}   "
              f"ingest (1 process, log until flush() returns): {row['ingest_per_s']:.0f}/s")
        r = row["log_1_process"]
        print(f"   {backend:8s} log() interleaved with it: p50 {fmt_ms(r['p50'])} ({r['p50_vs_plain']:.1f}x plain)  "
              f"p99 {fmt_ms(r['p99'])} ({r['p99_vs_plain']:.1f}x plain)")
        for w in writers:
            r = row[f"writers_{w}"]
            print(f"   {backend:8s} {w} writer(s): log() p50 {fmt_ms(r['p50'])} ({r['p50_vs_plain']:.1f}x plain)  "
                  f"p99 {fmt_ms(r['p99'])} ({r['p99_vs_plain']:.1f}x plain)  {r['calls_per_s']:.0f} calls/s in all")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="sizes 1k,10k and fewer logs/queries (~2 min)")
    p.add_argument("--sizes", help="comma-separated store sizes for the recall benchmark "
                                   "(default 1000,10000,100000; --quick: 1000,10000)")
    p.add_argument("--logs", type=int, help="timed log() calls (default 1000; --quick: 300)")
    p.add_argument("--queries", type=int, help="timed queries per size (default 200; --quick: 100)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a goal is missed")
    p.add_argument("--torch-threads", type=int, metavar="N",
                   help="torch.set_num_threads(N) before anything runs (default: torch's default, "
                        "i.e. what a SealMemory user gets)")
    p.add_argument("--journals", action="store_true",
                   help="only the journal comparison: log() and ingest on SQLite vs Postgres, 1/2/4 writers")
    p.add_argument("--writers", default="1,2,4", help="writer processes for --journals (default 1,2,4)")
    p.add_argument("--mem0-python", metavar="PYTHON", default=os.environ.get("SEAL_BENCH_MEM0_PYTHON"),
                   help="python of a virtualenv with mem0ai installed (see bench/README.md): also time "
                        "Mem0's Memory.search on the same data (default: $SEAL_BENCH_MEM0_PYTHON; unset: skipped)")
    args = p.parse_args(argv)
    if args.journals:
        writers = [int(w) for w in args.writers.split(",")]
        n = args.logs or (300 if args.quick else 1000)
        print(f"seal_agent journal benchmark: {n} timed log() per writer; load average (1 min) at start: {loadavg()}")
        workdir = Path(tempfile.mkdtemp(prefix="seal-bench-journals-"))
        try:
            res_j = bench_journals(n, writers, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print_journals(res_j, writers)
        print(f"\n   load average (1 min) at end: {loadavg()}")
        if args.json:
            Path(args.json).write_text(json.dumps(res_j, indent=2))
        return 0
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")] if args.sizes else (
        [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000])
    n_logs = args.logs or (300 if args.quick else 1000)
    n_queries = args.queries or (100 if args.quick else 200)

    t_start = time.perf_counter()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    model = MiniLMEmbeddings()
    # Load the model and let torch settle its kernels for the shapes we will use: the
    # first calls are 10-50x slower than steady state.
    for i, ex in enumerate(make_exchanges(24, seed=99)):
        model.embed_documents([interaction_text(*ex)])
        model.embed_query(ex[0][: 20 + 5 * i])
    res = Results(machine=machine_info(model))
    m = res.machine
    print("seal_agent memory benchmark")
    print(f"   machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']} on {m['torch_device']} "
          f"({m['torch_threads']} threads); python {m['python']}, chromadb {m['chromadb']}, "
          f"langgraph {m['langgraph']}")
    print(f"   load average (1 min) at start: {m['loadavg_1m_at_start']} -- other processes skew figures")
    print(f"   settings: {n_logs} timed logs, recall sizes {sizes}, {n_queries} queries per size")

    workdir = Path(tempfile.mkdtemp(prefix="seal-bench-"))
    try:
        pool, pool_vecs = bench_hot_path(model, n_logs, workdir, res)
        bench_recall(model, pool, pool_vecs, sizes, n_queries, workdir, res, mem0_python=args.mem0_python)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res.machine["loadavg_1m_at_end"] = loadavg()
    res.machine["total_s"] = time.perf_counter() - t_start
    print_summary(res)
    print(f"\n   total {res.machine['total_s']:.0f} s; load average (1 min) at end: {loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(res.__dict__, indent=2, default=str))
        print(f"   results written to {args.json}")
    save_record(res, n_logs=n_logs, sizes=sizes, n_queries=n_queries)
    return 1 if args.check and not all(g["pass"] for g in res.goals) else 0


if __name__ == "__main__":
    sys.exit(main())
