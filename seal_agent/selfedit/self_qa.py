"""``self_qa``: the model quizzes itself on the passage; each pair is a chat example.

The model writes question-answer pairs in ``Q: ... / A: ...`` blocks. Each pair becomes
``[user: question, assistant: answer]``, which is the shape the knowledge is later
asked for in. A ``heldout_fraction`` of the pairs is kept out of training as `Probe`s:
questions the validation gate asks the candidate adapter to check that it learned
something new. Which pairs are held out is drawn from ``config.seed`` and the
interaction id, so a rerun holds out the same ones; one pair alone always trains.
"""

from __future__ import annotations

import random
import re
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from seal_agent.config import SelfEditConfig
from seal_agent.memory.records import Interaction
from seal_agent.selfedit.base import (
    Candidate,
    Probe,
    SelfEditStrategy,
    register_self_edit_strategy,
    stated_text,
)

__all__ = ["SelfQAStrategy", "parse_qa_pairs"]

# Small models follow a worked example far better than an instruction, and copy an
# example shown inside the instruction: so the example is a previous turn of the chat
# (instruction -> answer), and the passage comes as a new turn. Its facts are invented
# and unrelated to any exchange: an item copied from it is unsupported by the passage,
# and the grounding check drops it.
_INSTRUCTION = """Write questions and answers about the facts in the text. Every question names \
what it asks about (never "it" or "the text"); every answer is one full sentence that repeats \
the names, so it makes sense on its own.

Text: {passage}"""
_EXAMPLE_PASSAGE = ("The Orbin river flows into Lake Tamsu. Fishermen there catch silver eels, "
                    "and the lake freezes every January.")
_EXAMPLE_ANSWER = """Q: Where does the Orbin river flow?
A: The Orbin river flows into Lake Tamsu.
Q: What do fishermen catch in Lake Tamsu?
A: Fishermen in Lake Tamsu catch silver eels.
Q: When does Lake Tamsu freeze?
A: Lake Tamsu freezes every January."""

# "Q:", "Q1:", "Question 2:", "A:", "Answer:", with an optional bullet/number and **bold**.
# A colon is required: "A" alone starts many ordinary sentences.
_LABEL = re.compile(
    r"^\s*(?:[-*•]|\d{1,3}[.)])?\s*\**\s*(q|question|a|answer)\s*\d*\s*\**\s*:\s*\**\s*(.*)$",
    re.IGNORECASE,
)


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Question-answer pairs from ``Q: ... / A: ...`` blocks.

    A field continues on following non-blank lines; a blank line ends it. A question
    with no answer yields ``(question, "")`` (the filters drop it as ``empty``); an
    answer with no question before it is ignored.
    """
    pairs: list[tuple[str, str]] = []
    question: list[str] | None = None
    answer: list[str] | None = None
    current: list[str] | None = None  # the field continuation lines go to

    def close() -> None:
        if question is not None:
            pairs.append((" ".join(question).strip(), " ".join(answer or []).strip()))

    for line in text.splitlines():
        match = _LABEL.match(line)
        if match is None:
            if line.strip() and current is not None:
                current.append(line.strip())
            elif not line.strip():
                current = None
            continue
        label, rest = match.group(1).lower(), match.group(2).replace("**", "").strip()
        if label.startswith("q"):
            close()
            question, answer = [rest], None
            current = question
        elif question is not None and answer is None:
            answer = [rest]
            current = answer
        else:  # an answer without its question, or a second answer: nothing to pair it with
            current = None
    close()
    return pairs


@register_self_edit_strategy
class SelfQAStrategy(SelfEditStrategy):
    """Chat examples ``[user: Q, assistant: A]``; a held-out share become probes."""

    name = "self_qa"
    prefill = "Q:"

    def build_prompt(self, interaction: Interaction) -> list[BaseMessage]:
        return [HumanMessage(_INSTRUCTION.format(passage=_EXAMPLE_PASSAGE)), AIMessage(_EXAMPLE_ANSWER),
                HumanMessage(_INSTRUCTION.format(passage=stated_text(interaction)))]

    def parse(self, text: str, interaction: Interaction) -> list[Any]:
        return parse_qa_pairs(text)

    def item_text(self, item: Any) -> str:
        question, answer = item
        # Both halves are needed; "" makes the filters count the pair as empty.
        return f"{question}\n{answer}" if question and answer else ""

    def grounding_text(self, item: Any) -> str:
        # The answer carries the knowledge; a question may paraphrase freely ("Who leads
        # ...?" for "its lead engineer is ..."), which is what makes it useful.
        return item[1]

    def to_example(self, item: Any, interaction: Interaction) -> dict[str, Any]:
        question, answer = item
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    def split_probes(self, candidates: list[Candidate], interaction: Interaction,
                     config: SelfEditConfig) -> tuple[list[Candidate], list[Probe]]:
        n = len(candidates)
        n_probes = min(n - 1, int(n * config.heldout_fraction + 0.5)) if n > 1 else 0
        # A string seed is hashed with sha512 by `random`, so this is stable across runs
        # and processes (unlike hash(), which is salted per process).
        rng = random.Random(f"{config.seed}:{interaction.id}")
        held = set(rng.sample(range(n), n_probes))
        train = [c for i, c in enumerate(candidates) if i not in held]
        probes = [Probe(question=c.item[0], answer=c.item[1], interaction_id=interaction.id,
                        namespace=interaction.namespace, hash=c.hash)
                  for i, c in enumerate(candidates) if i in held]
        return train, probes
