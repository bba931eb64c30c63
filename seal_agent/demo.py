"""The offline demo, in two parts.

1. Episodic memory: an assistant built with ``create_agent`` that remembers each user
   across conversations. The graph, the middleware, Chroma and the embedding model are
   real; only the LLM is a stand-in (`RecallingScriptModel`) that answers from the
   memories the middleware put in its prompt, so what you see is what recall delivered.
2. Parametric memory: facts taught in logged conversations are consolidated into a
   LoRA adapter of the served model (``tiny-random``: random weights, trained here, on
   this CPU), and the model is asked again *with retrieval off*: what it answers now
   comes from its weights. Then a destructive update is attempted and the validation
   gate rejects it, so the good adapter keeps serving.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
class FactCheck:
    """One taught fact asked again with retrieval off: answers and answer log-likelihoods."""

    question: str
    expected: str
    before: str
    after: str
    logprob_before: float
    logprob_after: float


@dataclass
class DemoResult:
    """What the demo did, for printing or ``--json``."""

    home: str
    turns: list[DemoTurn]
    status: dict[str, Any]
    facts: list[FactCheck] = field(default_factory=list)
    consolidations: list[dict[str, Any]] = field(default_factory=list)


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


# Facts a support assistant was told (and answered correctly) during the week.
TAUGHT: list[tuple[str, str]] = [
    ("What is the capital of Zorbia?", "Quxville."),
    ("Who painted the Blue Moon?", "Anna Pell."),
    ("What color is a zeb?", "Bright green."),
    ("How many legs does a vorp have?", "Seven."),
]
# tiny-random starts from random weights: a high rate and many passes let it memorise
# four facts in seconds on a CPU. A real model would use the defaults.
_DEMO_TRAIN = {"learning_rate": 1e-2, "epochs": 60, "batch_size": 4, "lora_rank": 8, "lora_alpha": 16,
               "warmup_ratio": 0.05}
# A destructive update: far too high a learning rate, many passes over unrelated text.
_DESTRUCTIVE_TRAIN = {"learning_rate": 0.3, "epochs": 30, "batch_size": 4, "lora_rank": 8, "lora_alpha": 64,
                      "warmup_ratio": 0.0, "max_grad_norm": 100.0}
_UNRELATED = [
    ("Say something.", "Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
    ("Anything else?", "Sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."),
    ("Go on.", "Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris."),
    ("More.", "Duis aute irure dolor in reprehenderit in voluptate velit esse."),
]


def run_demo(home: str | Path | None = None, *, echo: Callable[[str], None] | None = None,
             parametric: bool = True) -> DemoResult:
    """Run the demo: episodic recall through ``create_agent``, then consolidation.

    Args:
        home: Memory home; default a fresh temporary directory.
        echo: Called with each line of narration (the CLI passes ``print``).
        parametric: Also run part 2 (consolidation into LoRA weights and the gate).
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
        say(f"\nlogged {mem.status()['interactions']} interactions: "
            + ", ".join(f"{ns}={sum(c.values())}" for ns, c in mem.status()["by_namespace"].items()))
        result = DemoResult(home=str(home), turns=turns, status={})
        if parametric:
            _parametric_part(mem, result, say)
        result.status = mem.status()
    return result


def _ask_without_retrieval(mem: SealMemory) -> list[tuple[str, float]]:
    """The served model answers the taught questions with no memories in the prompt."""
    from seal_agent.training.scoring import answer_logprob

    chat = mem.chat_model(max_new_tokens=12)
    out = []
    for question, expected in TAUGHT:
        answer = chat.invoke(question).text.strip()  # follows CURRENT before answering
        score = answer_logprob(chat.served_model, chat.tokenizer, [{"role": "user", "content": question}], expected)
        out.append((answer, score))
    return out


def _parametric_part(mem: SealMemory, result: DemoResult, say: Callable[[str], None]) -> None:
    say("\n== Part 2: parametric memory (served model: tiny-random, random weights, trained here)")
    # Part 1's exchanges were acknowledgements, not knowledge: keep them out of training.
    for it in mem.list(status="new"):
        mem.mark([it.id], "excluded")
    for question, answer in TAUGHT:
        mem.log([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                namespace=("support",), thread_id="support-week", feedback=1.0)
    say(f"logged {len(TAUGHT)} support exchanges that taught facts")
    before = _ask_without_retrieval(mem)
    # tiny-random cannot write useful self-edits (random weights), so it learns from the
    # exchanges themselves ("raw"); with a real model, the default SEAL/SELF strategies run.
    raw = {"selfedit": {"strategies": ["raw"]}, "consolidation": {"teacher": "none"}}
    report = mem.consolidate(progress=False, train=_DEMO_TRAIN, **raw)
    result.consolidations.append(report.to_dict())
    say(f"consolidation 1: {report.verdict} -> {report.version}"
        + (f" ({report.reason})" if report.reason else ""))
    after = _ask_without_retrieval(mem)
    say("asked again with retrieval OFF (answers come from the weights):")
    for (q, expected), (b, lb), (a, la) in zip(TAUGHT, before, after, strict=True):
        result.facts.append(FactCheck(q, expected, b, a, lb, la))
        say(f"  {q}\n    before: {b!r} (log-lik {lb:.2f})\n    after:  {a!r} (log-lik {la:.2f})")

    say("\nconsolidation 2: a destructive update (lr 0.3, 30 epochs on unrelated text)")
    for q, a in _UNRELATED:
        mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}], namespace=("noise",))
    bad = mem.consolidate(progress=False, train=_DESTRUCTIVE_TRAIN, gate={"scale_back": []}, **raw)
    result.consolidations.append(bad.to_dict())
    say(f"  verdict: {bad.verdict}" + (f" -- {bad.reason}" if bad.reason else ""))
    say(f"  CURRENT is still {mem.adapters.current}; the served answers are unchanged:")
    still = _ask_without_retrieval(mem)
    for (q, _), (a, _) in zip(TAUGHT, still, strict=True):
        say(f"    {q} -> {a!r}")

