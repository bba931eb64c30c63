"""A stand-in LLM for the runnable examples: not a language model.

The examples show how memory plugs into LangGraph agents, and must run anywhere in a
second; `RecallingScriptModel` stands in for "your chat model" (ChatOpenAI, ChatOllama,
or `SealMemory.chat_model()` for the real local model, as `seal-agent demo` and
`seal-agent chat` use). Statements get an acknowledgement; questions are answered by
quoting the most relevant memory the prompt carries, or "I don't know yet." when it
carries none -- so what an example prints is exactly what recall delivered.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from seal_agent.integrations.langgraph import DEFAULT_HEADER

__all__ = ["RecallingScriptModel"]


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
