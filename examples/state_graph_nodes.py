"""A hand-built StateGraph with memory nodes: recall -> model -> log.

Run: python examples/state_graph_nodes.py   (offline; a scripted stand-in LLM)
"""

from __future__ import annotations

import tempfile

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from seal_agent import SealMemory
from seal_agent.stand_in import RecallingScriptModel


def main() -> None:
    model = RecallingScriptModel()
    with SealMemory(tempfile.mkdtemp(prefix="seal-example-")) as mem:

        def chat(state: MessagesState) -> dict:
            return {"messages": [model.invoke(state["messages"])]}

        g = StateGraph(MessagesState)
        g.add_node("recall", mem.recall_node(k=3))  # one system message, replaced every turn
        g.add_node("chat", chat)
        g.add_node("log", mem.log_node())  # logs the turn: last user message to the answer
        g.add_edge(START, "recall")
        g.add_edge("recall", "chat")
        g.add_edge("chat", "log")
        g.add_edge("log", END)
        graph = g.compile(checkpointer=InMemorySaver())

        config = {"configurable": {"thread_id": "t1", "user_id": "sam"}}
        for text in ["I keep my spare key under the blue pot.", "Where is my spare key?"]:
            out = graph.invoke({"messages": [HumanMessage(text)]}, config)
            print(f"> {text}\n  {out['messages'][-1].text}")


if __name__ == "__main__":
    main()
