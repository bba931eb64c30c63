"""``rewrite``: the passage restated in the model's own words (SEAL's best prompt without RL).

One document for the rewrite and one for the passage itself, as for ``implications``.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import SelfEditStrategy, register_self_edit_strategy, stated_text

__all__ = ["RewriteStrategy"]

_PROMPT = """Restate the passage below in your own words. Keep every fact, name and number \
it contains, and leave out nothing that matters, but do not copy its sentences. Write \
only the restated passage.

Passage:
{passage}"""

# A label line models like to start with: "Rewrite:", "Rewritten passage:", "Here is ...:".
_LABEL = re.compile(r"^\s*\**\s*(?:rewrite|rewritten(?: passage)?|restated(?: passage)?|here is[^:\n]*)"
                    r"\s*\**\s*:\s*\**", re.IGNORECASE)


@register_self_edit_strategy
class RewriteStrategy(SelfEditStrategy):
    """One document with the model's restatement, plus the passage."""

    name = "rewrite"

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage]:
        return [HumanMessage(_PROMPT.format(passage=stated_text(interaction)))]

    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        body = _LABEL.sub("", text, count=1).strip()
        return [body] if body else []

    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        return {"text": item}

    def extra_examples(self, interaction: Interaction) -> list[dict[str, Any]]:
        text = stated_text(interaction)  # no role labels, no acknowledgements (see implications)
        return [{"text": text}] if text else []
