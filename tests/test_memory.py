"""The episodic log: durability, validation, recall isolation, concurrency, server mode."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import waits
from conftest import _free_port, start_chroma_server
from fakes import HashEmbeddings
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from seal_agent import MemoryConfig, SealConfig, SealMemory
from seal_agent.errors import (
    BackendUnavailableError,
    ConfigError,
    NotFoundError,
    SealAgentError,
    ValidationError,
)

EXCHANGE = [
    {"role": "user", "content": "My dog is called Rex and he loves the beach"},
    {"role": "assistant", "content": "Rex sounds like a happy dog!"},
]


def ex(user: str, answer: str = "ok") -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


# ------------------------------------------------------------------ write path


def test_log_roundtrip_with_tool_calls(mem: SealMemory) -> None:
    msgs = [
        HumanMessage("What's the weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("18C and sunny", tool_call_id="c1"),
        AIMessage("It is 18C and sunny in Paris."),
    ]
    id_ = mem.log(msgs, namespace=("users", "ana"), thread_id="t1", metadata={"channel": "web"})
    it = mem.get(id_)
    assert it.namespace == ("users", "ana") and it.thread_id == "t1"
    assert [m["role"] for m in it.messages] == ["user", "assistant", "tool", "assistant"]
    assert it.messages[1]["tool_calls"] == [{"name": "weather", "args": {"city": "Paris"}, "id": "c1"}]
    assert it.messages[2]["tool_call_id"] == "c1"
    assert it.task == "What's the weather in Paris?"
    assert it.outcome == "It is 18C and sunny in Paris."
    assert it.metadata == {"channel": "web"} and it.status.value == "new"


def test_ids_sort_in_logging_order(mem: SealMemory) -> None:
    ids = [mem.log(ex(f"message number {i}")) for i in range(20)]
    assert ids == sorted(ids)
    assert [it.id for it in mem.list()] == ids


def test_duplicates_are_stored_once_per_thread(mem: SealMemory) -> None:
    a = mem.log(EXCHANGE, thread_id="t1")
    assert mem.log(EXCHANGE, thread_id="t1") == a
    b = mem.log(EXCHANGE, thread_id="t2")  # same words, another conversation: kept
    assert b != a
    assert len(mem.list()) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": EXCHANGE, "namespace": ("users", "")}, "namespace[1]"),
        ({"messages": EXCHANGE, "namespace": ("users/alice",)}, "namespace[0]"),
        ({"messages": EXCHANGE, "namespace": ()}, "namespace"),
        ({"messages": EXCHANGE, "metadata": {"f": object()}}, "metadata.f"),
        ({"messages": EXCHANGE, "feedback": 2.0}, "feedback"),
        ({"messages": EXCHANGE, "thread_id": ""}, "thread_id"),
    ],
)
def test_bad_input_names_field_and_writes_nothing(mem: SealMemory, kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        mem.log(**kwargs)
    assert err.value.field == field
    assert field in str(err.value)
    assert mem.list() == []


def test_oversized_messages_rejected_at_the_configured_limit(tmp_path: Path) -> None:
    cfg = SealConfig(memory=MemoryConfig(max_message_chars=100))
    with SealMemory(tmp_path, embeddings=HashEmbeddings(), config=cfg) as m:
        m.log(ex("x" * 100))  # at the limit: accepted
        with pytest.raises(ValidationError, match="max_message_chars=100"):
            m.log(ex("x" * 101))
        assert len(m.list()) == 1


def test_feedback(mem: SealMemory) -> None:
    id_ = mem.log(EXCHANGE)
    mem.feedback(id_, -0.5, "too short")
    it = mem.get(id_)
    assert it.feedback == -0.5 and it.feedback_comment == "too short"
    for bad in (1.5, -1.01, float("nan"), True, "0.5"):
        with pytest.raises(ValidationError, match="score"):
            mem.feedback(id_, bad)  # type: ignore[arg-type]
    assert mem.get(id_).feedback == -0.5
    with pytest.raises(NotFoundError):
        mem.feedback("nope", 0.5)
    with pytest.raises(KeyError):  # NotFoundError is also a KeyError
        mem.get("nope")


def test_list_filters(mem: SealMemory) -> None:
    a = mem.log(ex("one"), namespace=("a",))
    mem.log(ex("two"), namespace=("b",))
    later = mem.get(a).created_at
    c = mem.log(ex("three"), namespace=("a",))
    assert [i.id for i in mem.list(namespace=("a",))] == [a, c]
    assert [i.id for i in mem.list(namespace="a", since=later)] == [a, c]
    assert mem.mark([c], "consolidated", version="v0001") == 1
    assert [i.id for i in mem.list(status="consolidated")] == [c]
    assert mem.get(c).consolidated_version == "v0001"
    with pytest.raises(ValidationError, match="status"):
        mem.list(status="bogus")


def test_closed_memory_refuses_work(tmp_path: Path) -> None:
    m = SealMemory(tmp_path, embeddings=HashEmbeddings())
    m.close()
    m.close()  # idempotent
    with pytest.raises(SealAgentError, match="closed"):
        m.log(EXCHANGE)


# ----------------------------------------------------------------------- recall


def test_recall_ranks_by_relevance(mem: SealMemory) -> None:
    mem.log(ex("my favourite colour is teal"))
    mem.log(EXCHANGE)
    mem.log(ex("I work as a nurse in Oslo"))
    got = mem.recall("what is my dog called")
    assert got[0].text.startswith("User: My dog is called Rex")
    assert got[0].score > got[-1].score
    assert got[0].namespace == ("default",)
    assert got[0].metadata["status"] == "new"


def test_recall_never_crosses_namespaces(mem: SealMemory) -> None:
    # The other user's memory is the perfect match; it must still never come back.
    mem.log(EXCHANGE, namespace=("users", "bob"))
    mem.log(ex("I like jazz"), namespace=("users", "alice"))
    got = mem.recall("My dog is called Rex and he loves the beach", namespace=("users", "alice"), k=10)
    assert [m.namespace for m in got] == [("users", "alice")]
    assert mem.recall("dog Rex", namespace=("users", "carol")) == []
    both = mem.recall("dog Rex", namespace=("users",), include_descendants=True, k=10)
    assert {m.namespace for m in both} == {("users", "alice"), ("users", "bob")}


def test_recall_min_score_and_k(mem: SealMemory) -> None:
    for i in range(8):
        mem.log(ex(f"fact {i} about dogs"))
    mem.log(ex("unrelated banana smoothie"))
    assert len(mem.recall("dogs", k=3)) == 3
    high = mem.recall("fact about dogs", k=20, min_score=0.5)
    assert high and all(m.score >= 0.5 for m in high)
    assert all("banana" not in m.text for m in high)
    with pytest.raises(ValidationError, match="k="):
        mem.recall("x", k=0)
    with pytest.raises(ValidationError, match="query"):
        mem.recall("   ")


def test_forget(mem: SealMemory) -> None:
    a = mem.log(EXCHANGE, namespace=("users", "bob"))
    b = mem.log(ex("bob likes tea"), namespace=("users", "bob"))
    keep = mem.log(EXCHANGE, namespace=("users", "ann"))
    mem.flush()
    assert mem.forget(ids=[a]).forgotten == 1
    assert mem.forget(namespace=("users", "bob")).forgotten == 1
    assert {i.id for i in mem.list()} == {keep}
    assert mem.recall("dog", namespace=("users", "bob")) == []
    mem.flush()
    assert set(mem._index.all_ids()) == {keep}  # deleted from Chroma too
    with pytest.raises(ValidationError):
        mem.forget()
    assert mem.forget(ids=[b]).forgotten == 0


def test_async_pairs(mem: SealMemory) -> None:
    async def main() -> None:
        id_ = await mem.alog(EXCHANGE, namespace=("x",))
        got = await mem.arecall("dog", namespace=("x",))
        assert [m.id for m in got] == [id_]

    asyncio.run(main())


def test_real_minilm_embeddings_find_paraphrases(tmp_path: Path) -> None:
    """The offline default embedding model: a paraphrase, no shared keyword."""
    with SealMemory(tmp_path) as m:
        m.log(ex("I adopted a puppy last week", "Congratulations on the new dog!"))
        m.log(ex("The quarterly tax report is due Friday", "I'll remind you."))
        m.log(ex("I'm learning to play the violin", "Great instrument."))
        got = m.recall("Tell me about my pet", k=1)
        assert "puppy" in got[0].text
    # recall's fast query path gives the vector the document path gives (truncation included)
    from seal_agent.memory._onnx_query import OnnxQueryEncoder
    from seal_agent.memory.embeddings import MiniLMEmbeddings

    emb, torch_only = MiniLMEmbeddings(), MiniLMEmbeddings(query_backend="torch")
    for text in ("Tell me about my pet", "word " * 400):
        q, d = emb.embed_query(text), emb.embed_documents([text])[0]
        assert max(abs(a - b) for a, b in zip(q, d, strict=True)) < 1e-5
        assert max(abs(a - b) for a, b in zip(q, torch_only.embed_query(text), strict=True)) < 1e-5
    assert isinstance(MiniLMEmbeddings._onnx.get(None), OnnxQueryEncoder)  # queries ran on ONNX Runtime


def test_onnx_query_encoder_that_cannot_load_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A damaged cached export (or no onnxruntime) costs speed, never a recall."""
    from seal_agent.memory import _onnx_query
    from seal_agent.memory.embeddings import MiniLMEmbeddings

    monkeypatch.setenv("SEAL_CACHE", str(tmp_path))
    monkeypatch.setattr(MiniLMEmbeddings, "_onnx", {})
    with pytest.raises(ValidationError, match="query_backend"):
        MiniLMEmbeddings(query_backend="tensorrt")

    def damaged_export(encoder: object, tokenizer: object, target: Path) -> None:
        target.write_bytes(b"not an onnx graph")

    monkeypatch.setattr(_onnx_query, "_export", damaged_export)
    emb = MiniLMEmbeddings(query_backend="onnx")
    with caplog.at_level("WARNING"):
        q = emb.embed_query("Tell me about my pet")
    assert MiniLMEmbeddings._onnx[None] is None and "embedding queries with torch" in caplog.text
    want = MiniLMEmbeddings(query_backend="torch").embed_query("Tell me about my pet")
    assert max(abs(a - b) for a, b in zip(q, want, strict=True)) < 1e-6


# --------------------------------------------------------------- durability


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from fakes import HashEmbeddings
    from seal_agent import SealConfig, MemoryConfig, SealMemory
    # A worker that waits long before indexing: the kill lands before Chroma has anything.
    cfg = SealConfig(memory=MemoryConfig(flush_interval_s=30.0))
    m = SealMemory({home!r}, embeddings=HashEmbeddings(), config=cfg)
    m._worker.stop(timeout=0)  # nothing reaches Chroma in this process
    for i in range(25):
        id_ = m.log([{{"role": "user", "content": f"durable fact number {{i}}"}},
                    {{"role": "assistant", "content": "noted"}}])
        print(id_, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_kill_9_after_log_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), home=str(home))
    proc = waits.run([sys.executable, "-c", script], text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked = proc.stdout.split()
    assert len(acked) == 25
    with SealMemory(home, embeddings=HashEmbeddings()) as m:
        assert {it.id for it in m.list()} == set(acked)
        m.flush()  # startup replay puts what Chroma lacks into Chroma
        assert m._index.all_ids() == set(acked)
        assert m.recall("durable fact number 7", k=1)[0].id == acked[7]


def test_reopen_reindexes_what_chroma_lost(tmp_path: Path) -> None:
    with SealMemory(tmp_path, embeddings=HashEmbeddings()) as m:
        ids = [m.log(ex(f"persisted {i}")) for i in range(5)]
        m.flush()
        m._index.delete(ids[:2])  # e.g. a Chroma directory restored from an older backup
    with SealMemory(tmp_path, embeddings=HashEmbeddings()) as m:
        m.flush()
        assert m._index.all_ids() == set(ids)


def test_concurrent_logging_and_recall(mem: SealMemory) -> None:
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            for i in range(50):
                id_ = mem.log(ex(f"writer {w} item {i}"), thread_id=f"w{w}")
                with lock:
                    ids.append(id_)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                mem.recall("writer item", k=5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    r.join(60)
    assert not errors
    assert not any(t.is_alive() for t in [*threads, r]), "deadlock"
    assert len(ids) == len(set(ids)) == 200
    mem.flush()
    assert {it.id for it in mem.list()} == set(ids)
    assert mem._index.count() == 200


# ------------------------------------------------------------------ server mode


def test_server_mode_same_behaviour(chroma_server: str, tmp_path: Path) -> None:
    cfg = SealConfig(memory=MemoryConfig(collection="server_mode_test"))
    with SealMemory(tmp_path, embeddings=HashEmbeddings(), chroma_url=chroma_server, config=cfg) as m:
        assert m.backend == f"chroma-server {chroma_server}"
        a = m.log(EXCHANGE, namespace=("users", "bob"))
        m.log(ex("jazz"), namespace=("users", "alice"))
        assert [x.id for x in m.recall("dog Rex", namespace=("users", "bob"))] == [a]
        assert all(x.namespace == ("users", "alice") for x in m.recall("dog Rex", namespace=("users", "alice")))
        assert not (tmp_path / "chroma").exists()  # nothing embedded when a server is used


def test_unreachable_server_log_succeeds_then_catches_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cfg = SealConfig(memory=MemoryConfig(retry_initial_s=0.1, retry_max_s=0.5))
    caplog.set_level(logging.WARNING, logger="seal_agent")
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), chroma_url=url, config=cfg) as m:
        id_ = m.log(EXCHANGE)  # the journal acknowledges it even with Chroma down
        assert m.get(id_).task.startswith("My dog")
        with pytest.raises(BackendUnavailableError):
            m.recall("dog")
        with pytest.raises(BackendUnavailableError, match="not indexed"):
            m.flush(timeout=0.5)
        assert any("retrying in" in r.getMessage() for r in caplog.records)
        server = start_chroma_server(tmp_path / "server", port)
        try:
            m.flush(timeout=60)  # the worker's retry reaches the server once it is up
            assert [x.id for x in m.recall("dog")] == [id_]
        finally:
            server.terminate()
            server.wait(10)
        m.config.memory.close_timeout_s = 0.1  # the server is gone again; don't wait on close


def test_bad_chroma_url(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="chroma_url"):
        SealMemory(tmp_path / "home", chroma_url="localhost:8000", embeddings=HashEmbeddings())
    assert not (tmp_path / "home").exists()  # nothing half-made


# ------------------------------------------------------------------------ config


def test_config_loads_from_home_and_rejects_unknown_keys(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[memory]\nrecall_k = 2\n")
    with SealMemory(tmp_path, embeddings=HashEmbeddings()) as m:
        assert m.config.memory.recall_k == 2
        for i in range(5):
            m.log(ex(f"dog fact {i}"))
        assert len(m.recall("dog")) == 2
    (tmp_path / "config.toml").write_text("[memory]\nrecal_k = 2\n")
    with pytest.raises(ConfigError, match="memory.recal_k"):
        SealConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="memory.recall_k=0"):
        MemoryConfig(recall_k=0)


def test_embedding_process_is_restarted_after_a_crash() -> None:
    import os
    import signal as sig

    from seal_agent.memory.embeddings import MiniLMEmbeddings, SubprocessEmbeddings

    emb = SubprocessEmbeddings()
    try:
        first = emb.embed_documents(["a sentence to embed"])
        pid = emb._proc.pid
        os.kill(pid, sig.SIGKILL)
        emb._proc.wait(10)
        again = emb.embed_documents(["a sentence to embed"])  # a new child, same vectors
        assert emb._proc.pid != pid and emb._fallback is None
        assert max(abs(a - b) for a, b in zip(first[0], again[0], strict=True)) < 1e-5
        local = MiniLMEmbeddings().embed_documents(["a sentence to embed"])[0]
        assert max(abs(a - b) for a, b in zip(first[0], local, strict=True)) < 1e-5
    finally:
        emb.close()
    assert emb._proc is None


def test_embedding_falls_back_in_process_when_no_child_can_run(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from seal_agent.memory.embeddings import SubprocessEmbeddings

    def refuse(self: SubprocessEmbeddings) -> None:
        raise OSError("spawning is not allowed here")

    monkeypatch.setattr(SubprocessEmbeddings, "_start", refuse)
    emb = SubprocessEmbeddings()
    caplog.set_level(logging.WARNING, logger="seal_agent")
    vecs = emb.embed_documents(["one text", "another text"])
    assert len(vecs) == 2 and len(vecs[0]) == 384
    assert emb._fallback is not None
    assert any("in this process" in r.getMessage() for r in caplog.records)


def test_onnx_queries_and_document_batches_in_parallel_threads_do_not_disturb_each_other() -> None:
    """A fast tokenizer's padding settings are state: the ONNX query path has its own copy,
    so a recall's query and another thread's document batch (catch_up, facts) both work."""
    import threading

    from seal_agent.memory.embeddings import MiniLMEmbeddings

    emb = MiniLMEmbeddings()
    emb.embed_query("warm up")
    errors: list[BaseException] = []
    stop = threading.Event()

    def documents() -> None:
        try:
            while not stop.is_set():
                emb.embed_documents(["a short one", "a somewhat longer sentence about the sea and ships"])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    worker = threading.Thread(target=documents)
    worker.start()
    try:
        for i in range(150):
            assert len(emb.embed_query(f"query number {i} " * (1 + i % 5))) == 384
    finally:
        stop.set()
        worker.join()
    assert errors == []


# ------------------------------------------------ metadata names from before escaping


def _unescaped_flat_metadata(metadata: Any, prefix: str = "") -> dict[str, Any]:
    """`flat_metadata` as it was before keys were escaped: ``{"http.status": 1}`` and
    ``{"http": {"status": 1}}`` both became ``http.status``."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, dict):
            out.update(_unescaped_flat_metadata(value, f"{prefix}{key}."))
        elif isinstance(value, (str, bool, int, float)):
            out[f"{prefix}{key}"] = value
    return out


def test_records_indexed_before_keys_were_escaped_are_found_after_reopening(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding 4: a home whose index holds ``md_http.status`` for the key
    ``"http.status"`` (written before the escaping, simulated with the old naming) is
    re-indexed once at the next open: recall's filter on the escaped key finds the record
    (it missed it), the nested key's filter no longer matches it, and Chroma keeps only
    the new name."""
    from seal_agent.memory import index as index_mod

    home = tmp_path / "home"
    monkeypatch.setattr(index_mod, "flat_metadata", _unescaped_flat_metadata)
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as m:
        dotted = m.log(ex("the parcel answer with a dotted key"), metadata={"http.status": 200, "$kind": "web"})
        nested = m.log(ex("the parcel answer with a nested key"), metadata={"http": {"status": 404}})
        plain = m.log(ex("the parcel answer with a plain key"), metadata={"code": 7})
        m.flush()
        # a journal from before the upgrade: no mark that its rows were indexed with escaped names
        with m._journal._tx() as db:
            db.execute("DELETE FROM meta WHERE key='index_metadata_keys'")
        held = m._index.shard(("default",)).get(ids=[dotted], include=["metadatas"])["metadatas"][0]
        assert "md_http.status" in held and "md_$kind" in held  # the old names
    monkeypatch.undo()

    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as m:
        def ids(flt: dict[str, Any]) -> list[str]:
            return sorted(x.id for x in m.recall("parcel answer", k=10, filter=flt))

        assert ids({"http\\.status": 200}) == [dotted]
        assert ids({"\\$kind": "web"}) == [dotted]
        assert ids({"http.status": 200}) == []  # the old name would have matched the nested path
        assert ids({"http.status": 404}) == [nested] and ids({"code": 7}) == [plain]
        m.flush()
        held = m._index.shard(("default",)).get(ids=[dotted], include=["metadatas"])["metadatas"][0]
        assert "md_http\\.status" in held and "md_http.status" not in held and "md_$kind" not in held
        assert m._journal.requeue_escaped_keys() == 0  # once: the mark is set
