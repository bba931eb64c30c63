"""Issue 9, items 8-12: stale memory blocks, re-logged duplicates, non-text content,
unencodable or non-JSON input, and recall thresholds.

Agents here are real `langchain.agents.create_agent` / LangGraph graphs over a real
`SealMemory` (journal + embedded Chroma); only the chat model is scripted.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fakes import ScriptedChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import START, MessagesState, StateGraph

from seal_agent import SealMemory
from seal_agent.errors import ValidationError
from seal_agent.memory.journal import Journal
from seal_agent.memory.records import (
    Interaction,
    content_hash,
    new_interaction_id,
    normalize_messages,
    utc_now,
)

EXCHANGE = [
    {"role": "user", "content": "My dog is called Rex and he loves the beach"},
    {"role": "assistant", "content": "Rex sounds like a happy dog!"},
]


def cfg(thread: str, **configurable: str) -> dict:
    return {"configurable": {"thread_id": thread, **configurable}}


def system_text(prompt: list) -> str:
    return "\n".join(m.content for m in prompt if isinstance(m, SystemMessage))


def journal_rows(mem: SealMemory) -> int:
    return mem._journal.count()


# ------------------------------------------------- item 8: the middleware's cache


def test_item8_middleware_shows_a_correction_to_the_same_question(mem: SealMemory) -> None:
    model = ScriptedChatModel(["Lovely name.", "I remember.", "Noted.", "I remember."])
    agent = create_agent(model, tools=[], middleware=[mem.middleware()])
    ask = "what is my dog called?"
    agent.invoke({"messages": [HumanMessage("my dog is called Rex")]}, cfg("t1", user_id="al"))
    agent.invoke({"messages": [HumanMessage(ask)]}, cfg("t2", user_id="al"))
    assert "Rex" in system_text(model.prompts[-1])
    agent.invoke({"messages": [HumanMessage("Correction: my dog is called Max now.")]}, cfg("t3", user_id="al"))
    agent.invoke({"messages": [HumanMessage(ask)]}, cfg("t4", user_id="al"))
    assert "Max" in system_text(model.prompts[-1])  # the old cache still showed only Rex


def test_item8_middleware_never_shows_a_forgotten_memory(mem: SealMemory) -> None:
    rex = mem.log([{"role": "user", "content": "my dog is called Rex"}, {"role": "assistant", "content": "Nice."}],
                  namespace=("users", "al"))
    mem.log([{"role": "user", "content": "my cat is called Tom"}, {"role": "assistant", "content": "Nice."}],
            namespace=("users", "al"))
    model = ScriptedChatModel(["I remember.", "I remember."])
    agent = create_agent(model, tools=[], middleware=[mem.middleware()])
    ask = "what are my pets called?"
    agent.invoke({"messages": [HumanMessage(ask)]}, cfg("t1", user_id="al"))
    assert "Rex" in system_text(model.prompts[-1])
    assert mem.forget(ids=[rex]).forgotten == 1
    agent.invoke({"messages": [HumanMessage(ask)]}, cfg("t2", user_id="al"))
    shown = system_text(model.prompts[-1])
    assert "Tom" in shown and "Rex" not in shown  # the old cache showed the forgotten memory


def test_item8_cache_revision_changes_on_every_write_by_anyone(mem: SealMemory) -> None:
    journal = mem._journal
    seen = [journal.revision()]

    def changed() -> bool:
        seen.append(journal.revision())
        return seen[-1] != seen[-2]

    assert not changed()  # nothing written: the cache may be used
    id_ = mem.log(EXCHANGE)  # a write on this very thread's connection
    assert changed()
    mem.feedback(id_, 0.5)
    assert changed()
    other = Journal(journal.path)  # another connection: what another process does
    try:
        msgs = normalize_messages([{"role": "user", "content": "from elsewhere"}], max_messages=5,
                                  max_message_chars=100)
        other.insert(Interaction(id=new_interaction_id(), namespace=("default",), thread_id=None,
                                 created_at=utc_now(), messages=tuple(msgs), task="from elsewhere", outcome="",
                                 content_hash=content_hash(msgs)))
    finally:
        other.close()
    assert changed()
    mem.forget(ids=[id_])
    assert changed()
    assert not changed()


# --------------------------------------------- item 9: re-logging merges, not drops


def test_item9_relogging_merges_metadata_and_feedback(mem: SealMemory) -> None:
    first = mem.log(EXCHANGE, thread_id="t", metadata={"channel": "web", "rating": 1})
    again = mem.log(EXCHANGE, thread_id="t", metadata={"rating": 2, "lang": "en"}, feedback=0.5)
    assert again == first and len(mem.list()) == 1
    it = mem.get(first)
    assert it.metadata == {"channel": "web", "rating": 2, "lang": "en"}
    assert it.feedback == 0.5

    mem.feedback(first, 0.1, "so-so")
    mem.log(EXCHANGE, thread_id="t", feedback=-1.0)  # new feedback replaces the old one and its comment
    it = mem.get(first)
    assert (it.feedback, it.feedback_comment) == (-1.0, None)
    mem.log(EXCHANGE, thread_id="t")  # nothing new: nothing changes
    it = mem.get(first)
    assert it.feedback == -1.0 and it.metadata == {"channel": "web", "rating": 2, "lang": "en"}
    assert [m.metadata["rating"] for m in mem.recall("dog Rex")] == [2]


# ---------------------------------------------------- item 10: non-text content


IMAGE_TURN = [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
]


def test_item10_image_turn_through_create_agent_is_logged_with_a_placeholder(mem: SealMemory) -> None:
    model = ScriptedChatModel(["A cat on a sofa."])
    agent = create_agent(model, tools=[], middleware=[mem.middleware()])
    out = agent.invoke({"messages": [HumanMessage(content=IMAGE_TURN)]}, cfg("img"))
    assert out["messages"][-1].content == "A cat on a sofa."
    (it,) = mem.list()
    assert it.task == "What is in this picture? [image]" and it.outcome == "A cat on a sofa."
    assert it.messages[0]["attachments"] == [
        {"index": 1, "type": "image_url", "url": "https://example.com/cat.png"}
    ]


def test_item10_state_graph_log_node_logs_image_turns(mem: SealMemory) -> None:
    model = ScriptedChatModel(["It is a chart."])
    g = StateGraph(MessagesState)
    g.add_node("chat", lambda state: {"messages": [model.invoke(state["messages"])]})
    g.add_node("log", mem.log_node())
    g.add_edge(START, "chat")
    g.add_edge("chat", "log")
    g.compile().invoke({"messages": [HumanMessage(content=[
        {"type": "image", "base64": "iVBORw0KGgo" * 1000, "mime_type": "image/png"},
        {"type": "text", "text": "explain this"},
    ])]}, cfg("g"))
    (it,) = mem.list()
    assert it.task == "[image] explain this"
    (att,) = it.messages[0]["attachments"]
    assert att == {"index": 0, "type": "image", "mime_type": "image/png", "inline_chars": 11000}
    assert "iVBORw0KGgo" not in json.dumps(it.to_dict())  # inline bytes are not copied into the log


@pytest.mark.parametrize(
    ("block", "text"),
    [
        ({"type": "image_url", "image_url": "https://x/y.png"}, "[image]"),
        ({"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}, "[image]"),
        ({"type": "image", "url": "https://x/y.png"}, "[image]"),
        ({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}, "[image]"),
        ({"type": "file", "file": {"filename": "report.pdf", "file_data": "JVBERi0x"}}, "[file: report.pdf]"),
        ({"type": "file", "url": "https://x/a.pdf", "mime_type": "application/pdf"}, "[file]"),
        ({"type": "document", "source": {"type": "url", "url": "https://x/b.pdf"}, "title": "Q3"}, "[file: Q3]"),
        ({"type": "audio", "base64": "UklGR", "mime_type": "audio/wav"}, "[audio]"),
        ({"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}}, "[audio]"),
        ({"type": "video", "url": "https://x/v.mp4"}, "[video]"),
        ({"type": "reasoning", "reasoning": "let me think"}, ""),
        ({"type": "tool_use", "id": "c1", "name": "f", "input": {}}, ""),
    ],
)
def test_item10_direct_log_accepts_standard_content_blocks(mem: SealMemory, block: dict, text: str) -> None:
    id_ = mem.log([HumanMessage(content=["look:", block]), AIMessage("ok")])
    it = mem.get(id_)
    assert it.task == f"look: {text}".strip()
    if text:
        assert it.messages[0]["attachments"][0]["type"] == block["type"]
    else:  # tool-call and reasoning blocks are left out entirely
        assert "attachments" not in it.messages[0]


def test_item10_log_failure_warns_and_the_agent_run_goes_on(mem: SealMemory, caplog: pytest.LogCaptureFixture) -> None:
    model = ScriptedChatModel(["Answer one.", "Answer two."])
    agent = create_agent(model, tools=[], middleware=[mem.middleware(recall=False)])
    with caplog.at_level(logging.WARNING, logger="seal_agent.integrations.langgraph"):
        out = agent.invoke({"messages": [HumanMessage(content=["hi", {"no": "type"}])]}, cfg("w"))
    assert out["messages"][-1].content == "Answer one."
    assert mem.list() == []
    (rec,) = [r for r in caplog.records if "turn not logged" in r.getMessage()]
    assert rec.levelno == logging.WARNING and "messages[0].content[1]" in rec.getMessage()

    # and a namespace the log refuses (a lone surrogate) does not end the run either
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seal_agent.integrations.langgraph"):
        out = agent.invoke({"messages": [HumanMessage("fine")]}, cfg("\ud800"))
    assert out["messages"][-1].content == "Answer two."
    assert any("thread_id" in r.getMessage() for r in caplog.records)
    assert mem.list() == []


def test_item10_save_memory_tool_reports_a_refused_note_to_the_model(mem: SealMemory) -> None:
    model = ScriptedChatModel([
        AIMessage("", tool_calls=[{"name": "save_memory", "args": {"content": "bad \ud800"}, "id": "s1"}]),
        AIMessage("Could not save."),
    ])
    agent = create_agent(model, tools=mem.tools())
    out = agent.invoke({"messages": [HumanMessage("remember this")]}, cfg("t", user_id="lee"))
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert tool_msg.content.startswith("could not save the memory: messages[0].content=")
    assert out["messages"][-1].content == "Could not save."
    assert mem.list(namespace=("users", "lee")) == []


# ------------------------------------- item 11: our own errors, naming the field


def _tool_turn(args: Any) -> list[Any]:
    return [HumanMessage("weather?"),
            {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "args": args, "id": "c1"}]},
            ToolMessage("sunny", tool_call_id="c1"), AIMessage("Sunny.")]


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"messages": [{"role": "user", "content": "bad \ud800 text"}]}, "messages[0].content", "bad \ud800 text"),
        ({"messages": [HumanMessage(content=["ok", {"type": "text", "text": "\udfff"}])]}, "messages[0].content",
         "ok\udfff"),
        ({"messages": EXCHANGE, "metadata": {"note": "\ud800"}}, "metadata.note", "\ud800"),
        ({"messages": EXCHANGE, "metadata": {"nested": [{"x": "a\udc80"}]}}, "metadata.nested[0].x", "a\udc80"),
        ({"messages": EXCHANGE, "metadata": {"k\ud800": 1}}, "metadata key 'k\\ud800'", "k\ud800"),
        ({"messages": EXCHANGE, "namespace": ("users", "\ud800")}, "namespace[1]", "\ud800"),
        ({"messages": EXCHANGE, "thread_id": "t\ud800"}, "thread_id", "t\ud800"),
        ({"messages": EXCHANGE, "metadata": {"f": object}}, "metadata.f", object),
        ({"messages": EXCHANGE, "metadata": {"tags": {1, 2}}}, "metadata.tags", {1, 2}),
        ({"messages": _tool_turn({"when": datetime(2026, 1, 1)})}, "messages[1].tool_calls[0].args.when",
         datetime(2026, 1, 1)),
        ({"messages": _tool_turn({"x": float("nan")})}, "messages[1].tool_calls[0].args.x", None),
        ({"messages": _tool_turn('{"x": NaN}')}, "messages[1].tool_calls[0].args.x", None),
        ({"messages": _tool_turn({"q": "\ud800"})}, "messages[1].tool_calls[0].args.q", "\ud800"),
    ],
)
def test_item11_unencodable_or_non_json_input_is_named_and_writes_nothing(
    mem: SealMemory, kwargs: dict, field: str, value: Any
) -> None:
    with pytest.raises(ValidationError) as err:
        mem.log(**kwargs)
    assert err.value.field == field
    if value is None:
        assert math.isnan(err.value.value)
    else:
        assert err.value.value == value
    str(err.value).encode("utf-8")  # the message itself can be printed and logged
    assert journal_rows(mem) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_item11_non_finite_metadata_is_refused(mem: SealMemory, bad: float) -> None:
    with pytest.raises(ValidationError) as err:
        mem.log(EXCHANGE, metadata={"score": bad})
    assert err.value.field == "metadata.score" and "finite" in str(err.value)
    assert journal_rows(mem) == 0


def test_item11_stored_metadata_is_valid_json(mem: SealMemory) -> None:
    id_ = mem.log(EXCHANGE, metadata={"score": 0.25, "tags": ("a", "b"), "n": None})
    raw = mem._journal._db().execute("SELECT metadata FROM interactions WHERE id=?", (id_,)).fetchone()[0]
    assert json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in stored JSON")) == {
        "score": 0.25, "tags": ["a", "b"], "n": None}


def test_item11_recall_names_a_bad_namespace_or_query(mem: SealMemory) -> None:
    with pytest.raises(ValidationError) as err:
        mem.recall("dog", namespace=("users", "\ud800"))
    assert err.value.field == "namespace[1]"
    with pytest.raises(ValidationError) as err:
        mem.recall("dog \ud800")
    assert err.value.field == "query"


# ------------------------------------------------------ item 12: min_score range


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 5, 1.0001, -2, "0.5", True])
def test_item12_recall_min_score_must_be_finite_in_cosine_range(mem: SealMemory, bad: Any) -> None:
    mem.log(EXCHANGE)
    with pytest.raises(ValidationError) as err:
        mem.recall("dog", min_score=bad)
    assert err.value.field == "min_score"
    assert "[-1, 1]" in str(err.value)


def test_item12_min_score_bounds_are_accepted(mem: SealMemory) -> None:
    mem.log(EXCHANGE)
    assert len(mem.recall("dog Rex", min_score=-1)) == 1
    assert all(m.score >= 1.0 for m in mem.recall("dog Rex", min_score=1))


@pytest.mark.parametrize("make", ["middleware", "recall_node", "pre_model_hook"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 5])
def test_item12_integrations_check_min_score_when_built(mem: SealMemory, make: str, bad: float) -> None:
    with pytest.raises(ValidationError) as err:
        getattr(mem, make)(min_score=bad)
    assert err.value.field == "min_score"
    getattr(mem, make)(min_score=0.3)  # a good one is accepted


def test_item8_journal_revision_connection_is_closed_with_the_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.revision()
    journal.close()
    assert journal._all == []


def test_item11_ids_and_comments_with_lone_surrogates_are_named(mem: SealMemory) -> None:
    id_ = mem.log([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}])
    cases = [
        (lambda: mem.feedback(id_, 0.5, "bad \ud800"), "comment"),
        (lambda: mem.feedback("\ud800", 0.5), "interaction_id"),
        (lambda: mem.forget(ids=[id_, "\ud800"]), "ids[1]"),
        (lambda: mem.get("\ud800"), "interaction_id"),
    ]
    for call, field in cases:
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.field == field
    assert mem.get(id_).feedback is None  # nothing written
