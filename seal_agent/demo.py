"""The offline demo: an assistant built with ``create_agent`` that remembers across conversations.

The graph, the middleware, Chroma and the embedding model are all real. Only the LLM
is a stand-in (`RecallingScriptModel`): it answers from the memories the middleware
put in its prompt, so what you see is exactly what recall delivered.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from seal_agent.integrations.langgraph import DEFAULT_HEADER
from seal_agent.seal_memory import SealMemory

__all__ = ["DemoResult", "RecallingScriptModel", "run_demo"]


class RecallingScriptModel(BaseChatModel):
    """A stand-in LLM for the offline demo (not a language model).

    Statements get an acknowledgement. Questions are answered by quoting the most
    relevant memory the prompt carries, or "I don't know yet." when it carries none.
    """

    last_memories: list[str] = []  # pydantic copies mutable defaults per instance

    @property
    def _llm_type(self) -> str:
        return "seal-demo-script"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        memories: list[str] = []
        for m in messages:
            if isinstance(m, SystemMessage) and DEFAULT_HEADER in m.text:
                block = m.text.split(DEFAULT_HEADER, 1)[1]
                memories = [line[2:] for line in block.strip().splitlines() if line.startswith("- ")]
        self.last_memories = memories
        question = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        if not question.rstrip().endswith("?"):
            answer = "Got it, I'll remember that."
        elif memories:
            said = re.sub(r"^\[[^\]]*\] User: ", "", memories[0]).split(" | Assistant:")[0]
            answer = f'You told me: "{said}".'
        else:
            answer = "I don't know yet."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=answer))])

    def bind_tools(self, tools: Any, **kwargs: Any) -> RecallingScriptModel:
        return self


@dataclass
class DemoTurn:
    """One exchange of the demo: who, what was asked, what was recalled, what was answered."""

    user: str
    thread: str
    message: str
    recalled: list[str]
    answer: str


@dataclass
class DemoResult:
    """What the demo did, for printing or ``--json``."""

    home: str
    turns: list[DemoTurn]
    status: dict[str, Any]


SCRIPT: list[tuple[str, str, str]] = [
    # (user, thread, message)
    ("alice", "alice-monday", "My dog is called Rex."),
    ("alice", "alice-monday", "I live in Lyon and I cycle to work."),
    ("alice", "alice-monday", "I am allergic to peanuts."),
    ("bob", "bob-monday", "My dog is called Bolt."),
    ("alice", "alice-friday", "What is the name of my dog?"),
    ("alice", "alice-friday", "Can I have a peanut butter cookie?"),
    ("bob", "bob-friday", "What is my dog called?"),
    ("carol", "carol-friday", "What is my dog called?"),
]


def run_demo(home: str | Path | None = None, *, echo: Callable[[str], None] | None = None) -> DemoResult:
    """Run the scripted conversations through a real ``create_agent`` graph.

    Args:
        home: Memory home; default a fresh temporary directory.
        echo: Called with each line of narration (the CLI passes ``print``).
    """
    from langchain.agents import create_agent

    say = echo or (lambda _line: None)
    home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="seal-demo-"))
    model = RecallingScriptModel()
    turns: list[DemoTurn] = []
    with SealMemory(home) as mem:
        agent = create_agent(model, tools=[], system_prompt="You are a helpful assistant.",
                             middleware=[mem.middleware(k=3, min_score=0.2)])
        say(f"memory home: {mem.home} ({mem.backend})")
        for user, thread, message in SCRIPT:
            out = agent.invoke(
                {"messages": [HumanMessage(message)]},
                config={"configurable": {"thread_id": thread, "user_id": user}},
            )
            answer = out["messages"][-1].text
            turn = DemoTurn(user, thread, message, list(model.last_memories), answer)
            turns.append(turn)
            say(f"\n[{user} / {thread}] {message}")
            for line in turn.recalled:
                say(f"    recalled: {line}")
            say(f"    assistant: {answer}")
        mem.flush()
        status = mem.status()
    say(f"\nlogged {status['interactions']} interactions: "
        + ", ".join(f"{ns}={sum(c.values())}" for ns, c in status["by_namespace"].items()))
    return DemoResult(home=str(home), turns=turns, status=status)

