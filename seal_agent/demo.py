"""The demo, on the real default model (smollm2-135m), in three parts.

1. Episodic memory: what users told the assistant on Monday is in the log; on Friday,
   in new conversations, an assistant built with ``create_agent`` and the memory
   middleware answers from what it recalls, per user. Everything is real: the graph,
   Chroma, the embedding model and the LLM (SmolLM2-135M-Instruct on this CPU), which
   answers from the memories the middleware put in its prompt.
2. Parametric memory, per tenant: facts a user told the assistant are consolidated
   into a LoRA adapter of the served model from the model's *own* self-edits (default
   settings, ``adapter_scope = "namespace"``: the user's own adapter lineage), and the
   model is asked again *with retrieval off*: what it answers now comes from its
   weights. Asked as another user, the model does not know (that user is served the
   base model: their log-likelihoods are the base model's).
3. The guard: a destructive update of the same user's adapter is attempted, the
   validation gate rejects it on the canaries shipped with the model, and the good
   adapter keeps serving.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import HumanMessage

from seal_agent.config import SealConfig
from seal_agent.integrations.langgraph import DEFAULT_HEADER
from seal_agent.seal_memory import SealMemory

__all__ = ["DemoResult", "PromptRecorder", "run_demo"]

DEMO_MODEL = "smollm2-135m"


class PromptRecorder(AgentMiddleware):
    """Records the memories the model was shown (placed after the memory middleware).

    Middleware wraps the model call in list order, so this one sees the request with
    the memory block already in the system prompt: what it records is exactly what the
    model read.
    """

    def __init__(self) -> None:
        super().__init__()
        self.memories: list[str] = []

    def _record(self, request: ModelRequest) -> None:
        text = request.system_prompt or ""
        block = text.split(DEFAULT_HEADER, 1)[1] if DEFAULT_HEADER in text else ""
        self.memories = [line[2:] for line in block.strip().splitlines() if line.startswith("- ")]

    def wrap_model_call(self, request: ModelRequest,
                        handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        self._record(request)
        return handler(request)

    async def awrap_model_call(self, request: ModelRequest,
                               handler: Callable[[ModelRequest], Awaitable[ModelResponse]]) -> ModelResponse:
        self._record(request)
        return await handler(request)


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
    other: str = ""  # asked as another user after the consolidation (isolation)
    logprob_other: float = 0.0


@dataclass
class DemoResult:
    """What the demo did, for printing or ``--json``."""

    home: str
    turns: list[DemoTurn]
    status: dict[str, Any]
    facts: list[FactCheck] = field(default_factory=list)
    consolidations: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# Monday: what users told the assistant, logged as their conversations were (the user's
# words and a short acknowledgement). A 135M model's own replies to such statements are
# unreliable ("Rex is a friendly dog named Max", "I can't remember personal details"),
# and recalling those would show off the model's guesses, not the memory.
TOLD_MONDAY: list[tuple[str, str, str]] = [
    # (user, thread, message)
    ("alice", "alice-monday", "My dog is called Rex."),
    ("alice", "alice-monday", "I live in Lyon and I cycle to work."),
    ("bob", "bob-monday", "My dog is called Bolt."),
]
# Friday: new conversations; the real LLM answers through create_agent + the middleware.
SCRIPT: list[tuple[str, str, str]] = [
    ("alice", "alice-friday", "What is the name of my dog?"),
    ("bob", "bob-friday", "What is my dog called?"),
    ("carol", "carol-friday", "What is my dog called?"),
]

SYSTEM_PROMPT = ("You are a helpful assistant with a memory. When the user tells you something about "
                 "themselves, reply only with: Noted. When memories from earlier conversations are given, "
                 "answer the user's question from them, in one short sentence.")

# What a user tells the assistant in part 2 (invented, so the base model cannot know it),
# and questions asked afterwards in other words, with the expected short answer.
TOLD: list[str] = [
    "Please remember this. Our office coffee machine is called Orlo, and it only makes espresso.",
    "Please remember this. My sister Tamsin is a pilot for Aurora Air, and she lives in Reykjavik.",
]
TAUGHT: list[tuple[str, str]] = [
    ("What is our office coffee machine called?", "Orlo"),
    ("What kind of coffee does Orlo make?", "espresso"),
    ("Which airline does my sister Tamsin fly for?", "Aurora"),
    ("Which city does my sister Tamsin live in?", "Reykjavik"),
]
_ACK = "Got it, thanks. I'll remember that."

# A destructive update: a high learning rate, many passes over unrelated text, and no
# rehearsal -- the kind of update that overwrites what the model knew.
_DESTRUCTIVE = {
    "train": {"learning_rate": 5e-3, "epochs": 12, "batch_size": 4, "lora_rank": 16, "lora_alpha": 64,
              "warmup_ratio": 0.0, "rehearsal_size": 0, "replay_ratio": 0.0},
    "selfedit": {"strategies": ["raw"]},
    "consolidation": {"teacher": "none"},
    "gate": {"scale_back": []},
}
_UNRELATED = [
    ("Say something.", "Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
    ("Anything else?", "Sed do eiusmod tempor incididunt ut labore et dolore magna aliqua."),
    ("Go on.", "Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris."),
    ("More.", "Duis aute irure dolor in reprehenderit in voluptate velit esse."),
]


def run_demo(home: str | Path | None = None, *, echo: Callable[[str], None] | None = None,
             parametric: bool = True, model: str = DEMO_MODEL) -> DemoResult:
    """Run the demo: episodic recall through ``create_agent``, then consolidation and the gate.

    Args:
        home: Memory home; default a fresh temporary directory.
        echo: Called with each line of narration (the CLI passes ``print``).
        parametric: Also run parts 2 and 3 (consolidation into LoRA weights, the gate).
        model: The served model (the real default; ``tiny-random`` only for smoke tests,
            whose answers are gibberish).
    """
    from langchain.agents import create_agent

    say = echo or (lambda _line: None)
    home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="seal-demo-"))
    turns: list[DemoTurn] = []
    started = time.perf_counter()
    # Per-tenant weights: each user's facts train only that user's adapter lineage.
    config = SealConfig.load(home).with_overrides(model={"name_or_path": model},
                                                  consolidation={"adapter_scope": "namespace", "lineage_depth": 2})
    if not (home / "config.toml").exists():  # so that `seal-agent --home` sees the home as the demo used it
        home.mkdir(parents=True, exist_ok=True)
        config.save(home)
    with SealMemory(home, config=config) as mem:
        say(f"memory home: {mem.home} ({mem.backend}); model: {model}")
        say("\n== Part 1: episodic memory (create_agent + SealMemory middleware, the real LLM)")
        chat = mem.chat_model(max_new_tokens=40)
        recorder = PromptRecorder()
        agent = create_agent(chat, tools=[], system_prompt=SYSTEM_PROMPT,
                             middleware=[mem.middleware(k=2, min_score=0.35), recorder])
        for user, thread, message in TOLD_MONDAY:
            mem.log([{"role": "user", "content": message}, {"role": "assistant", "content": "Noted."}],
                    namespace=("users", user), thread_id=thread)
            say(f"[{user} / {thread}, logged] {message}")
        for user, thread, message in SCRIPT:
            out = agent.invoke(
                {"messages": [HumanMessage(message)]},
                config={"configurable": {"thread_id": thread, "user_id": user}},
            )
            answer = out["messages"][-1].text.strip()
            turn = DemoTurn(user, thread, message, list(recorder.memories), answer)
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
    result.seconds = time.perf_counter() - started
    say(f"\ndemo finished in {result.seconds:.0f} s")
    return result


TEACHER, OTHER = ("users", "dana"), ("users", "erin")


def _ask_without_retrieval(mem: SealMemory, user: tuple[str, ...] = TEACHER) -> list[tuple[str, float]]:
    """The model served to `user` answers the taught questions with no memories in the prompt."""
    from seal_agent.training.scoring import answer_logprob

    chat = mem.chat_model(max_new_tokens=24)
    # What an agent run of this user is served (outside a run, the adapter is named explicitly).
    adapter = chat.route.adapter_for(user) if chat.route is not None else chat.adapter
    answers = [row[0].strip() for row in chat.generate_batch([q for q, _ in TAUGHT], adapter=adapter)]
    with chat.active_model(adapter=adapter) as model:
        return [(a, answer_logprob(model, chat.tokenizer, [{"role": "user", "content": q}], expected))
                for a, (q, expected) in zip(answers, TAUGHT, strict=True)]


def _served_version(mem: SealMemory, user: tuple[str, ...]) -> str | None:
    return mem.lineage(user).registry().current


def _parametric_part(mem: SealMemory, result: DemoResult, say: Callable[[str], None]) -> None:
    say("\n== Part 2: parametric memory (the model writes its own training data; retrieval off)")
    for i, text in enumerate(TOLD):
        mem.log([{"role": "user", "content": text}, {"role": "assistant", "content": _ACK}],
                namespace=TEACHER, thread_id=f"dana-{i}")
        say(f"dana told the assistant: {text!r}")
    before = _ask_without_retrieval(mem)
    say("consolidating dana's adapter lineage with default settings (self-edits -> LoRA -> gate) ...")
    report = mem.consolidate(progress=False, namespace=TEACHER)
    result.consolidations.append(report.to_dict())
    kept, dropped = report.counts.get("self_edits", 0), sum(
        v for k, v in report.counts.items() if k.startswith("dropped_"))
    say(f"consolidation 1: {report.verdict} -> {report.version}"
        + (f" ({report.reason})" if report.reason else "")
        + f"; {kept} self-edits kept, {dropped} dropped; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report.timings.items() if v >= 0.5))
    after = _ask_without_retrieval(mem)
    other = _ask_without_retrieval(mem, OTHER)
    say("asked again with retrieval OFF (answers come from the weights); and as erin, another user:")
    for (q, expected), (b, lb), (a, la), (o, lo) in zip(TAUGHT, before, after, other, strict=True):
        result.facts.append(FactCheck(q, expected, b, a, lb, la, o, lo))
        say(f"  {q}\n    before: {b!r} (log-lik {lb:.2f})\n    after:  {a!r} (log-lik {la:.2f})"
            f"\n    erin:   {o!r} (log-lik {lo:.2f})")

    say("\n== Part 3: a destructive update of dana's adapter (high learning rate, many passes over "
        "unrelated text)")
    for q, a in _UNRELATED:
        mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}], namespace=TEACHER,
                thread_id="dana-noise")
    bad = mem.consolidate(progress=False, namespace=TEACHER, **_DESTRUCTIVE)
    result.consolidations.append(bad.to_dict())
    say(f"  verdict: {bad.verdict}" + (f" -- {bad.reason}" if bad.reason else ""))
    say(f"  dana's CURRENT is still {_served_version(mem, TEACHER)}; the served answers are unchanged:")
    still = _ask_without_retrieval(mem)
    for (q, _), (a, _) in zip(TAUGHT, still, strict=True):
        say(f"    {q} -> {a!r}")
