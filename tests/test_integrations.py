"""LangGraph integration on real graphs: create_agent middleware, StateGraph nodes, legacy hooks, tools."""

from __future__ import annotations

import asyncio
import time
import warnings
from dataclasses import dataclass

import pytest
from fakes import ScriptedChatModel
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from seal_agent import SealMemory
from seal_agent.errors import ValidationError
from seal_agent.integrations.langgraph import MEMORY_MESSAGE_ID, resolve_scope


def cfg(thread: str, **configurable: str) -> dict:
    return {"configurable": {"thread_id": thread, **configurable}}


def system_text(prompt: list) -> str:
    return "\n".join(m.content for m in prompt if isinstance(m, SystemMessage))


# ------------------------------------------------------------------ scope rules


@dataclass
class Ctx:
    user_id: str


def test_resolve_scope_rules() -> None:
    assert resolve_scope(None) == (("default",), None)
    assert resolve_scope(cfg("t", user_id="bob")) == (("users", "bob"), "t")
    assert resolve_scope(cfg("t", namespace="org/team")) == (("org", "team"), "t")
    assert resolve_scope(cfg("t", user_id="bob"), Ctx("ann")) == (("users", "ann"), "t")  # context wins
    assert resolve_scope(cfg("t"), {"namespace": ("a", "b")}) == (("a", "b"), "t")
    with pytest.raises(ValidationError, match="config.configurable.namespace"):
        resolve_scope(cfg("t", namespace="a//b"))


# ------------------------------------------------------------- create_agent middleware


def test_middleware_logs_turns_and_recalls_per_user(mem: SealMemory) -> None:
    model = ScriptedChatModel(["Rex is a lovely name.", "Noted.", "Your dog is called Rex."])
    agent = create_agent(model, tools=[], system_prompt="You are kind.", middleware=[mem.middleware()])
    agent.invoke({"messages": [HumanMessage("my dog is called Rex")]}, cfg("t1", user_id="alice"))
    agent.invoke({"messages": [HumanMessage("my dog is called Bolt")]}, cfg("t2", user_id="bob"))
    agent.invoke({"messages": [HumanMessage("what is my dog called?")]}, cfg("t3", user_id="alice"))

    # Recall entered the prompt as one system message, after the agent's own prompt,
    # and only alice's memory is in it.
    last_prompt = model.prompts[-1]
    systems = [m for m in last_prompt if isinstance(m, SystemMessage)]
    assert len(systems) == 1
    assert systems[0].content.startswith("You are kind.")
    assert "my dog is called Rex" in systems[0].content
    assert "Bolt" not in systems[0].content

    logged = mem.list(namespace=("users", "alice"))
    assert [(i.thread_id, i.task, i.outcome) for i in logged] == [
        ("t1", "my dog is called Rex", "Rex is a lovely name."),
        ("t3", "what is my dog called?", "Your dog is called Rex."),
    ]
    assert [i.task for i in mem.list(namespace=("users", "bob"))] == ["my dog is called Bolt"]


def test_middleware_logs_tool_calls_and_recalls_once_per_turn(mem: SealMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.tools import tool

    @tool
    def weather(city: str) -> str:
        """Weather in a city."""
        return f"sunny in {city}"

    model = ScriptedChatModel([
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Oslo"}, "id": "c1"}]),
        AIMessage("It is sunny in Oslo."),
    ])
    calls = []
    real = mem.recall
    monkeypatch.setattr(mem, "recall", lambda *a, **k: calls.append(a) or real(*a, **k))
    agent = create_agent(model, tools=[weather], middleware=[mem.middleware()])
    agent.invoke({"messages": [HumanMessage("weather in Oslo?")]}, cfg("t1"))
    assert len(model.prompts) == 2 and len(calls) == 1  # two model calls, one recall
    (it,) = mem.list()
    assert [m["role"] for m in it.messages] == ["user", "assistant", "tool", "assistant"]
    assert it.messages[2]["content"] == "sunny in Oslo"


def test_middleware_async(mem: SealMemory) -> None:
    model = ScriptedChatModel(["First answer.", "Second answer."])
    agent = create_agent(model, tools=[], middleware=[mem.middleware(namespace=("app",))])

    async def main() -> None:
        await agent.ainvoke({"messages": [HumanMessage("the launch code is 4242")]}, cfg("a"))
        await agent.ainvoke({"messages": [HumanMessage("what is the launch code?")]}, cfg("b"))

    asyncio.run(main())
    assert "4242" in system_text(model.prompts[-1])
    assert len(mem.list(namespace=("app",))) == 2


def test_middleware_with_checkpointer_logs_only_the_new_turn(mem: SealMemory) -> None:
    model = ScriptedChatModel(["A1", "A2"])
    agent = create_agent(model, tools=[], middleware=[mem.middleware()], checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("first question about apples")]}, cfg("same"))
    agent.invoke({"messages": [HumanMessage("second question about pears")]}, cfg("same"))
    assert [(i.task, i.outcome) for i in mem.list()] == [
        ("first question about apples", "A1"),
        ("second question about pears", "A2"),
    ]


# ------------------------------------------------------------- StateGraph nodes


def test_state_graph_nodes(mem: SealMemory) -> None:
    mem.log([{"role": "user", "content": "I am allergic to peanuts"},
             {"role": "assistant", "content": "I'll remember."}], namespace=("users", "kim"))
    model = ScriptedChatModel(["No peanuts then.", "Still no peanuts."])

    def chat(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    g = StateGraph(MessagesState)
    g.add_node("recall", mem.recall_node())
    g.add_node("chat", chat)
    g.add_node("log", mem.log_node())
    g.add_edge(START, "recall")
    g.add_edge("recall", "chat")
    g.add_edge("chat", "log")
    graph = g.compile(checkpointer=InMemorySaver())

    out = graph.invoke({"messages": [HumanMessage("what snack can I eat with peanuts?")]}, cfg("k1", user_id="kim"))
    assert "allergic to peanuts" in system_text(model.prompts[0])
    out = graph.invoke({"messages": [HumanMessage("and a peanut cookie?")]}, cfg("k1", user_id="kim"))
    # The memory message is replaced each turn (fixed id), not piled up.
    assert sum(getattr(m, "id", None) == MEMORY_MESSAGE_ID for m in out["messages"]) == 1
    tasks = [i.task for i in mem.list(namespace=("users", "kim"))]
    assert tasks == ["I am allergic to peanuts", "what snack can I eat with peanuts?", "and a peanut cookie?"]
    # The logged turn does not contain our injected memory message.
    assert all(m["role"] != "system" for i in mem.list() for m in i.messages)


def test_recall_node_into_custom_key(mem: SealMemory) -> None:
    mem.log([{"role": "user", "content": "blue whales are big"}, {"role": "assistant", "content": "yes"}])
    node = mem.recall_node(key="memories")
    out = node({"messages": [HumanMessage("tell me about whales")]}, cfg("x"))
    assert out["memories"][0].text.startswith("User: blue whales")


# ---------------------------------------------------------- legacy react agent


def test_legacy_create_react_agent_hooks(mem: SealMemory) -> None:
    from langgraph.prebuilt import create_react_agent

    mem.log([{"role": "user", "content": "my name is Ines"}, {"role": "assistant", "content": "Hi Ines"}])
    model = ScriptedChatModel(["You are Ines."])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_react_agent is deprecated upstream in favour of create_agent
        agent = create_react_agent(model, tools=[], pre_model_hook=mem.pre_model_hook(),
                                   post_model_hook=mem.post_model_hook())
    out = agent.invoke({"messages": [HumanMessage("what is my name?")]}, cfg("r1"))
    assert "my name is Ines" in system_text(model.prompts[0])
    assert not any(isinstance(m, SystemMessage) for m in out["messages"])  # not stored in state
    assert [i.outcome for i in mem.list()][-1] == "You are Ines."


# ------------------------------------------------------------------------ tools


def test_memory_tools(mem: SealMemory) -> None:
    save, recall = mem.tools()
    assert {save.name, recall.name} == {"save_memory", "recall_memory"}
    assert "config" not in save.args  # injected, not asked of the model
    conf = cfg("t9", user_id="zoe")
    assert save.invoke({"content": "Zoe's birthday is 3 May"}, conf).startswith("saved memory")
    assert "3 May" in recall.invoke({"query": "when is the birthday"}, conf)
    assert recall.invoke({"query": "when is the birthday"}, cfg("t9", user_id="max")) == "No relevant memories."
    (it,) = mem.list(namespace=("users", "zoe"))
    assert it.metadata == {"kind": "note"} and it.thread_id == "t9"


def test_agent_driven_memory_through_create_agent(mem: SealMemory) -> None:
    model = ScriptedChatModel([
        AIMessage("", tool_calls=[{"name": "save_memory", "args": {"content": "prefers green tea"}, "id": "s1"}]),
        AIMessage("Saved."),
    ])
    agent = create_agent(model, tools=mem.tools())
    agent.invoke({"messages": [HumanMessage("remember that I prefer green tea")]}, cfg("t", user_id="lee"))
    assert mem.recall("tea", namespace=("users", "lee"))[0].text == "Assistant: prefers green tea"


def test_middleware_without_logging_never_serves_an_expired_memory(tmp_path) -> None:
    """Issue 22, item 6: a ``log=False`` middleware commits nothing, so the journal's
    revision stays put across turns; its cached block must still not outlive the TTL
    of a memory in it. Real journal, real Chroma; no sweep runs (it would commit)."""
    from fakes import HashEmbeddings

    from seal_agent.config import SealConfig
    from seal_agent.errors import NotFoundError

    config = SealConfig().with_overrides(memory={"ttl_sweep_s": 86_400.0})
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), config=config, model="tiny-random") as mem:
        model = ScriptedChatModel(["Noted."] * 40)
        agent = create_agent(model, tools=[], middleware=[mem.middleware(log=False)])
        ttl = 3.0
        # The scenario needs the memory to outlive one turn, and no unrelated commit (the
        # index worker's bookkeeping) between the turns: else it is retried, longer TTL.
        for attempt in range(6):
            secret = f"the door code is {4711 + attempt}"
            question = f"what is the door code? (attempt {attempt})"
            i = mem.log([{"role": "user", "content": secret}, {"role": "assistant", "content": "ok"}], ttl_s=ttl)
            mem.flush()  # indexed now: the turns below commit nothing
            ttl *= 4
            agent.invoke({"messages": [HumanMessage(question)]}, cfg("t1"))
            if secret not in system_text(model.prompts[-1]):
                continue
            revision = mem._journal.revision()
            deadline = time.monotonic() + 10 * ttl + 60
            while True:  # until reads say it expired
                try:
                    mem.get(i)
                except NotFoundError:
                    break
                assert time.monotonic() < deadline, "the interaction never expired"
                time.sleep(0.05)
            if mem._journal.revision() == revision:
                break
        else:
            pytest.fail("the scenario never happened: the memory did not outlive a turn, or commits intervened")
        agent.invoke({"messages": [HumanMessage(question)]}, cfg("t2"))
        assert secret not in system_text(model.prompts[-1])
        assert not mem._journal.forgotten_ids()  # expiry alone did it: the sweep never ran
