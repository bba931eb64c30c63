"""``implications`` (SEAL): the model lists what follows from the passage.

SEAL's knowledge-incorporation prompt: read the passage, write the implications that
follow from it directly or indirectly. Training on many restatements of a fact (rather
than on the passage once) is what makes it recallable without the passage in context.
Each implication becomes one document, and what was said one more (SEAL trains on both).
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import SelfEditStrategy, register_self_edit_strategy, stated_text

__all__ = ["ImplicationsStrategy", "strip_list_marker"]

# SEAL's instruction, with one worked example given as a previous turn of the chat: small
# models follow an example far better than an instruction, and copy one shown inside the
# instruction. The example's facts are invented and unrelated to any exchange, so an item
# copied from it is unsupported by the passage and the grounding check drops it.
_INSTRUCTION = """Read the text, then list the facts it states and what follows from them. Write \
each one as a short sentence that names everything explicitly, so it is understandable \
without the text. One per line, starting with "- ".

Text: {passage}"""
_EXAMPLE_PASSAGE = ("The Orbin river flows into Lake Tamsu. Fishermen there catch silver eels, "
                    "and the lake freezes every January.")
_EXAMPLE_ANSWER = """- The Orbin river flows into Lake Tamsu.
- Fishermen in Lake Tamsu catch silver eels.
- Silver eels live in Lake Tamsu.
- Lake Tamsu freezes every January."""

# "- x", "* x", "• x", "1. x", "2) x", "(3) x", "a) x".
_MARKER = re.compile(r"^\s*(?:[-*•+]|\(?\d{1,3}[.)]|\(?[a-zA-Z][)])\s+")


def strip_list_marker(line: str) -> str:
    """A line without its bullet or number and without markdown bold, stripped."""
    return _MARKER.sub("", line.replace("**", "")).strip()


@register_self_edit_strategy
class ImplicationsStrategy(SelfEditStrategy):
    """One document per implication the model lists, plus the passage."""

    name = "implications"
    prefill = "-"

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage]:
        return [HumanMessage(_INSTRUCTION.format(passage=_EXAMPLE_PASSAGE)), AIMessage(_EXAMPLE_ANSWER),
                HumanMessage(_INSTRUCTION.format(passage=stated_text(interaction)))]

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
        # SEAL trains on the passage too; here what was said, without role labels or the
        # assistant's acknowledgements (training on "Assistant: Got it." teaches that).
        text = stated_text(interaction)
        return [{"text": text}] if text else []
