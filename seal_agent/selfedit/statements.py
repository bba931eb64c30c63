"""``statements``: what the exchange stated, as one document (no model involved).

Users teach agents by telling them things ("My cat is called Pim."); the assistant's
reply is then an acknowledgement that carries nothing to learn. ``raw`` trains on the
assistant's turn only, so it would learn the acknowledgement; this strategy trains on
what was *stated* instead: user turns, tool results and assistant answers as plain
text, with role labels and pure acknowledgements left out (see `stated_text`), loss on
every token. It is the floor under the model-written strategies: facts a user states
are learnable even when the model writes no usable self-edit.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import BaseMessage

from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import SelfEditStrategy, register_self_edit_strategy, stated_text

__all__ = ["StatementsStrategy"]


@register_self_edit_strategy
class StatementsStrategy(SelfEditStrategy):
    """One document: the exchange's statements without labels or acknowledgements."""

    name = "statements"
    check_length = False  # logged text was size-checked by the memory when it was logged
    grounded = False  # it is the exchange itself

    def applies_to(self, interaction: Interaction) -> bool:
        # A rejected answer must not be learned as a statement either (critique handles it).
        return interaction.feedback is None or interaction.feedback >= 0

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage] | None:
        return None

    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        stated = stated_text(interaction)
        return [stated] if stated else []

    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        return {"text": item}
