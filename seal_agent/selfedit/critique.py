"""``critique`` (SELF): for a badly rated answer, the model says what was wrong and answers again.

SELF (self-evolution with language feedback) has the model critique its own answer in
natural language and write a refinement; the refinement is the training target. Here
the critique is informed by the user's feedback (score and comment). The example is the
original exchange up to its final answer, followed by the refined answer as the
assistant turn, so the model learns what it should have said in that context.

Note the trainer puts loss on every assistant turn, so earlier assistant turns of the
exchange (e.g. its tool calls) are trained on too; only the final answer is replaced.
"""

from __future__ import annotations

import re
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import (
    SelfEditStrategy,
    chat_messages,
    final_answer_index,
    passage_text,
    register_self_edit_strategy,
)

__all__ = ["CritiqueStrategy", "parse_refined_answer"]

_PROMPT = """Below is an exchange between a user and an assistant. The user rated the \
assistant's final answer {score} on a scale from -1 (bad) to 1 (good).{comment}

{passage}

First explain briefly what was wrong with the assistant's final answer. Then write the \
answer the assistant should have given. Use exactly this format:
Critique: <what was wrong>
Refined answer: <the better answer>"""

# "Refined answer:" (or improved/better/revised/corrected), **bold** or not, anywhere.
_REFINED = re.compile(r"\b(?:refined|improved|better|revised|corrected)\s+answer\s*\**\s*:\s*\**",
                      re.IGNORECASE)
# A critique written after the answer is not part of it.
_CRITIQUE = re.compile(r"^\s*\**\s*critique\s*\**\s*:", re.IGNORECASE | re.MULTILINE)


def parse_refined_answer(text: str) -> str | None:
    """The text after the last ``Refined answer:`` label (up to a later ``Critique:``
    line), or None when there is none."""
    matches = list(_REFINED.finditer(text))
    if not matches:
        return None
    answer = _CRITIQUE.split(text[matches[-1].end():], maxsplit=1)[0].strip()
    return answer or None


@register_self_edit_strategy
class CritiqueStrategy(SelfEditStrategy):
    """A chat example: the original context, then the refined answer as the target."""

    name = "critique"
    grounded = False  # the refined answer is meant to say what the exchange did not

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage]:
        score = "(no score)" if interaction.feedback is None else f"{interaction.feedback:+.2f}"
        comment = f'\nTheir comment: "{interaction.feedback_comment}"' if interaction.feedback_comment else ""
        return [HumanMessage(_PROMPT.format(score=score, comment=comment, passage=passage_text(interaction)))]

    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        answer = parse_refined_answer(text)
        return [] if answer is None else [answer]

    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        end = final_answer_index(interaction.messages)
        context = interaction.messages if end is None else interaction.messages[:end]
        return {"messages": [*chat_messages(context), {"role": "assistant", "content": item}]}
