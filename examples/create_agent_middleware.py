"""An assistant built with `create_agent` that remembers each user across conversations.

Run: python examples/create_agent_middleware.py   (offline; a scripted stand-in LLM)

Swap `RecallingScriptModel()` for any LangChain chat model (ChatOpenAI, ChatOllama,
seal_agent's AdaptiveChatModel, ...) and nothing else changes.
"""

from __future__ import annotations

import tempfile

from langchain.agents import create_agent

from seal_agent import SealMemory
from seal_agent.stand_in import RecallingScriptModel


def main() -> None:
    with SealMemory(tempfile.mkdtemp(prefix="seal-example-")) as mem:
        agent = create_agent(
            RecallingScriptModel(),
            tools=[],
            system_prompt="You are a helpful assistant.",
            middleware=[mem.middleware(k=3)],
        )

        def ask(user: str, thread: str, text: str) -> str:
            # user_id -> namespace ("users", user_id); thread_id is stored with the exchange.
            config = {"configurable": {"thread_id": thread, "user_id": user}}
            return agent.invoke({"messages": [{"role": "user", "content": text}]}, config)["messages"][-1].text

        ask("maya", "monday", "My favourite city is Kyoto.")
        ask("leo", "monday", "My favourite city is Lisbon.")
        print("maya:", ask("maya", "friday", "Which city do I like most?"))
        print("leo: ", ask("leo", "friday", "Which city do I like most?"))
        print("logged:", [(i.namespace, i.task) for i in mem.list()])


if __name__ == "__main__":
    main()
