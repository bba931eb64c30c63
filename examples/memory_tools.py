"""Agent-driven memory: the model decides what to save and what to look up.

Run: python examples/memory_tools.py   (offline; the tool calls are scripted)
"""

from __future__ import annotations

import tempfile

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from seal_agent import SealMemory


class ScriptedToolModel(GenericFakeChatModel):
    """Plays back a fixed list of messages, tool calls included (stand-in LLM)."""

    def bind_tools(self, tools, **kwargs):  # noqa: ANN001, ANN201 - the tools are already known
        return self


def main() -> None:
    script = iter([
        AIMessage("", tool_calls=[{"name": "save_memory", "args": {"content": "Nadia's train is at 7:40"},
                                   "id": "s1"}]),
        AIMessage("Saved it."),
        AIMessage("", tool_calls=[{"name": "recall_memory", "args": {"query": "train time"}, "id": "r1"}]),
        AIMessage("Your train is at 7:40."),
    ])
    with SealMemory(tempfile.mkdtemp(prefix="seal-example-")) as mem:
        agent = create_agent(ScriptedToolModel(messages=script), tools=mem.tools())
        config = {"configurable": {"thread_id": "n1", "user_id": "nadia"}}
        for text in ["Remember my train leaves at 7:40.", "When is my train?"]:
            out = agent.invoke({"messages": [{"role": "user", "content": text}]}, config)
            tool_results = [m.content for m in out["messages"] if m.type == "tool"]
            print(f"> {text}\n  tools: {tool_results[-1]!r}\n  {out['messages'][-1].text}")


if __name__ == "__main__":
    main()
