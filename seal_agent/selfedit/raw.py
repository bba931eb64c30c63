"""``raw``: the exchange itself as one chat example (the baseline; no model involved).

Messages are converted by `chat_messages`: tool calls become Hermes-style
``<tool_call>{...}</tool_call>`` text in the assistant turn (what the served model
writes), tool results stay ``tool`` turns. Never used for an interaction with
negative feedback: it would teach the very answer the user rejected.

``raw`` is the opt-in baseline "train on the exchange as it was": unlike the default
strategies (which learn from `stated_text`), it does not filter the model's replies by
provenance (`seal_agent.memory.provenance`), so it also teaches the model to repeat
guesses nobody confirmed. Use it for data you vouch for (imported, curated exchanges).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage

from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import SelfEditStrategy, chat_messages, register_self_edit_strategy

__all__ = ["RawStrategy"]


@register_self_edit_strategy
class RawStrategy(SelfEditStrategy):
    """The logged messages as a chat example; loss on the assistant turns."""

    name = "raw"
    check_length = False  # logged text was size-checked by the memory when it was logged
    grounded = False  # it is the exchange itself

    def applies_to(self, interaction: Interaction) -> bool:
        return interaction.feedback is None or interaction.feedback >= 0

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage] | None:
        return None

    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        return [chat_messages(interaction.messages)]

    def item_text(self, item: Any) -> str:
        # What the filters judge is what the model would learn to say: the assistant turns.
        return "\n".join(m["content"] for m in item if m["role"] == "assistant")

    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        return {"messages": item}
