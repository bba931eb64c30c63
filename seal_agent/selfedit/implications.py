"""``implications`` (SEAL): the model lists what follows from the passage.

SEAL's knowledge-incorporation prompt: read the passage, write the implications that
follow from it directly or indirectly. Training on many restatements of a fact (rather
than on the passage once) is what makes it recallable without the passage in context.
Each implication becomes one document, and the passage itself one more (SEAL trains on both).
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import SelfEditStrategy, passage_text, register_self_edit_strategy

__all__ = ["ImplicationsStrategy", "strip_list_marker"]

_PROMPT = """Read the passage below, then list the implications that can be drawn from it, \
directly or indirectly: the facts it states, what those facts entail, and how they relate \
to each other. Write each implication as one complete sentence that is understandable \
without the passage. One implication per line; write nothing else.

Passage:
{passage}"""

# "- x", "* x", "• x", "1. x", "2) x", "(3) x", "a) x".
_MARKER = re.compile(r"^\s*(?:[-*•+]|\(?\d{1,3}[.)]|\(?[a-zA-Z][)])\s+")


def strip_list_marker(line: str) -> str:
    """A line without its bullet or number and without markdown bold, stripped."""
    return _MARKER.sub("", line.replace("**", "")).strip()


@register_self_edit_strategy
class ImplicationsStrategy(SelfEditStrategy):
    """One document per implication the model lists, plus the passage."""

    name = "implications"

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage]:
        return [HumanMessage(_PROMPT.format(passage=passage_text(interaction)))]

    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        items = []
        for line in text.splitlines():
            item = strip_list_marker(line)
            # Headers such as "Implications:" or "Here are some implications:" are not items.
            if not item or item.endswith(":"):
                continue
            items.append(item)
        return items

    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        return {"text": item}

    def extra_examples(self, interaction: Interaction) -> list[dict[str, Any]]:
        return [{"text": passage_text(interaction)}]
