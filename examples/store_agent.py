"""A LangGraph StateGraph whose long-term memory lives in Chroma, through `ChromaStore`.

Run it (offline, a few seconds; data in a temporary directory unless ``--home`` is given):

    python examples/store_agent.py [--home ./.seal]

Any graph compiled with ``store=ChromaStore(...)`` reads and writes memories through
``runtime.store`` (or ``langgraph.config.get_store()``) exactly as with LangGraph's
own stores. Here one node saves what the user asks it to remember, under the user's
own namespace, and another recalls the memories relevant to each question before a
(scripted, offline) chat model answers. Alice's memories never reach Bob.
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.runtime import Runtime

from seal_agent.integrations.store import ChromaStore


@dataclass
class Context:
    """Per-run context: whose memories to use."""

    user_id: str


def remember(state: MessagesState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Save "remember ..." messages as a memory in the user's namespace."""
    text = str(state["messages"][-1].content)
    if text.lower().startswith("remember "):
        namespace = ("memories", runtime.context.user_id)
        runtime.store.put(namespace, uuid.uuid4().hex, {"text": text[len("remember ") :]})
    return {}


def make_answer_node(model: GenericFakeChatModel) -> Any:
    def answer(state: MessagesState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Recall the memories closest to the question, then let the model answer."""
        question = str(state["messages"][-1].content)
        hits = runtime.store.search(("memories", runtime.context.user_id), query=question, limit=2)
        recalled = "\n".join(f"- {hit.value['text']} (score {hit.score:.2f})" for hit in hits) or "- nothing"
        print(
            f"  [{runtime.context.user_id}] recalled for {question!r}:\n  {recalled.replace(chr(10), chr(10) + '  ')}"
        )
        reply = model.invoke(
            [SystemMessage(f"What you remember about the user:\n{recalled}"), *state["messages"]]
        )
        return {"messages": [reply]}

    return answer


def main(home: str | None = None, *, embed: Any = "default", dims: int = 384) -> list[str]:
    """Run the scripted conversation; returns the assistant's replies.

    Args:
        home: Memory home (Chroma under ``home/chroma``); a temporary one if ``None``.
        embed: Embeddings for the store's index; ``"default"`` is the offline MiniLM.
        dims: Width of those embeddings.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = ChromaStore(home=home or tmp, index={"dims": dims, "embed": embed, "fields": ["text"]})
        script = [
            ("alice", "remember I am allergic to peanuts", "Noted."),
            ("alice", "remember my sister lives in Lisbon", "Noted."),
            ("bob", "remember I play the trumpet in a jazz band", "Noted."),
            ("alice", "Can I eat this satay sauce?", "Better not: it usually contains peanuts."),
            ("bob", "Which instrument do I play?", "The trumpet."),
            ("bob", "Am I allergic to anything?", "Nothing you have told me about."),
        ]
        model = GenericFakeChatModel(messages=iter([AIMessage(reply) for *_, reply in script]))
        builder = StateGraph(MessagesState, context_schema=Context)
        builder.add_node("remember", remember)
        builder.add_node("answer", make_answer_node(model))
        builder.add_edge(START, "remember")
        builder.add_edge("remember", "answer")
        builder.add_edge("answer", END)
        graph = builder.compile(store=store)

        replies = []
        for user, text, _ in script:
            print(f"{user}: {text}")
            result = graph.invoke({"messages": [HumanMessage(text)]}, context=Context(user_id=user))
            replies.append(str(result["messages"][-1].content))
            print(f"assistant: {replies[-1]}")
        print("namespaces in Chroma:", store.list_namespaces())
        return replies


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home", default=None, help="keep the Chroma data here (default: a temporary directory)"
    )
    main(parser.parse_args().home)
