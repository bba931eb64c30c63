"""Serving per tenant: each run is served its own namespace's adapter lineage.

Real parts throughout: tiny-random, real PEFT adapters committed to real lineage
registries, the real `AdaptiveChatModel`, LangGraph's `create_agent`, and (for the
wiring) a real `SealMemory` with `SealMemoryMiddleware`. What generated each answer is
checked twice: the adapter the host had active on every forward pass (a hook on the
base model), and the greedy output, which differs per adapter (random LoRA B weights).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from seal_agent.config import ConsolidationConfig, ModelConfig, SealConfig
from seal_agent.errors import AdapterError, ValidationError
from seal_agent.lineage import Lineage, lineage_for
from seal_agent.model import AdaptiveChatModel, load_model
from seal_agent.model.loader import base_model_hash
from seal_agent.model.routing import LineageRouter

PROMPT = "Tell me about my dog."
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SCOPE = ConsolidationConfig(adapter_scope="namespace", lineage_depth=2)
TENANTS = ("alice", "bob", "carol")


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return "sunny"


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
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapter folders (not yet committed anywhere): one per tenant, a second for alice,
    one for the shared lineage."""
    root = tmp_path_factory.mktemp("weights")
    names = [*TENANTS, "alice2", "shared"]
    return {name: _make_adapter(root / name, seed=i + 1) for i, name in enumerate(names)}


@pytest.fixture(scope="module")
def base_hash() -> str:
    model, _ = load_model("tiny-random")
    return base_model_hash(model)


def _commit(home: Path, namespace: tuple[str, ...] | None, folder: Path, base_hash: str) -> Path:
    """Commit `folder` to the lineage of `namespace` (None: global); its served folder."""
    lineage = Lineage(home) if namespace is None else lineage_for(home, namespace, SCOPE)
    lineage.write_marker()
    registry = lineage.registry()
    version = registry.commit(folder, {"base_model": "tiny-random", "base_model_hash": base_hash})
    return registry.root / version


def _answers(weights: dict[str, Path], tools: bool) -> dict[str | None, str]:
    chat = AdaptiveChatModel(**_model(), max_new_tokens=12)
    model = chat.bind_tools([get_weather]) if tools else chat
    out: dict[str | None, str] = {None: model.invoke(PROMPT).content}
    for name, folder in weights.items():
        chat.use_adapter(folder)
        out[name] = model.invoke(PROMPT).content
    assert len(set(out.values())) == len(out), "the adapters must answer differently"
    return out


@pytest.fixture(scope="module")
def expected(weights: dict[str, Path]) -> dict[str | None, str]:
    """Greedy answer of the agent (its tools bound) per adapter (None: base), from a chat
    serving only that adapter."""
    return _answers(weights, tools=True)


@pytest.fixture(scope="module")
def plain(weights: dict[str, Path]) -> dict[str | None, str]:
    """Greedy answer to PROMPT alone (no tools) per adapter."""
    return _answers(weights, tools=False)


def _model() -> dict[str, Any]:
    model, tokenizer = load_model("tiny-random")
    return {"model": model, "tokenizer": tokenizer, "model_id": "tiny-random"}


class ActiveRecorder:
    """Records which adapter the host had active on each forward pass of the base model,
    checked against PEFT's own state (the active adapter, or adapters disabled)."""

    def __init__(self, chat: AdaptiveChatModel) -> None:
        self.chat = chat
        self.seen: list[str | None] = []
        self.mismatches: list[str] = []
        base = chat.model.get_input_embeddings()
        self.handle = base.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        host = self.chat._host
        label = host.active
        self.seen.append(label)
        served = self.chat.served_model
        layers = [m for m in served.modules() if hasattr(m, "lora_A") and hasattr(m, "disable_adapters")]
        if label is None:
            if layers and not all(m.disable_adapters for m in layers):
                self.mismatches.append("base requested but an adapter is enabled")
            return
        name = next((n for k, n in host._loaded.items() if k == str(Path(label).resolve())), None)
        active = {a for m in layers for a in m.active_adapters}
        if name is None or active != {name} or any(m.disable_adapters for m in layers):
            self.mismatches.append(f"{label}: PEFT has {active}, expected {name}")

    def take(self) -> set[str | None]:
        seen, self.seen = set(self.seen), []
        return seen


@pytest.fixture
def home(tmp_path: Path, weights: dict[str, Path], base_hash: str) -> dict[str, Any]:
    """A home where alice and bob have their own lineage; carol has none."""
    root = tmp_path / "home"
    served = {name: _commit(root, ("users", name), weights[name], base_hash) for name in ("alice", "bob")}
    return {"root": root, "served": served}


def _agent(chat: AdaptiveChatModel, **kwargs: Any) -> Any:
    return create_agent(chat, tools=[get_weather], **kwargs)


def _ask(agent: Any, user: str, how: str = "context") -> AIMessage:
    inputs = {"messages": [("user", PROMPT)]}
    if how == "context":
        result = agent.invoke(inputs, context={"user_id": user})
    else:
        result = agent.invoke(inputs, config={"configurable": {"user_id": user}})
    return result["messages"][-1]


def _routed(home: dict[str, Any], **fields: Any) -> AdaptiveChatModel:
    return AdaptiveChatModel(**_model(), max_new_tokens=12,
                             route=LineageRouter(home["root"], SCOPE), **fields)


# ------------------------------------------------------------------ routing


def test_each_tenant_is_served_its_own_lineage(home: dict[str, Any], expected: dict[str | None, str]) -> None:
    chat = _routed(home)
    recorder = ActiveRecorder(chat)
    agent = _agent(chat, context_schema=dict)
    for user in ("alice", "bob", "alice"):
        for how in ("context", "configurable"):
            answer = _ask(agent, user, how)
            served = str(home["served"][user])
            assert recorder.take() == {served}, (user, how)
            assert answer.content == expected[user]
            assert answer.response_metadata["adapter"] == served
    # A namespace with no lineage of its own, and nothing shared committed: the base model.
    answer = _ask(agent, "carol")
    assert recorder.take() == {None} and answer.content == expected[None]
    assert answer.response_metadata["adapter"] is None
    # A run that names no namespace gets the default namespace's (none here): the base.
    assert agent.invoke({"messages": [("user", PROMPT)]})["messages"][-1].content == expected[None]
    assert recorder.mismatches == []
    # Routing never wrote into the home: carol and ("default",) got no lineage folder.
    assert sorted(p.name for p in (home["root"] / "lineages").iterdir()) == sorted(
        lineage_for(home["root"], ("users", u), SCOPE).name for u in ("alice", "bob"))


def test_a_namespace_without_a_lineage_gets_the_shared_one(home: dict[str, Any], weights: dict[str, Path],
                                                           base_hash: str, expected: dict[str | None, str]) -> None:
    shared = _commit(home["root"], None, weights["shared"], base_hash)
    chat = _routed(home)
    recorder = ActiveRecorder(chat)
    agent = _agent(chat, context_schema=dict)
    assert _ask(agent, "carol").content == expected["shared"] and recorder.take() == {str(shared)}
    assert _ask(agent, "alice").content == expected["alice"]  # her own wins over the shared one
    # A namespace path in the context, as the middleware reads it.
    result = agent.invoke({"messages": [("user", PROMPT)]}, context={"namespace": "users/bob/chat-9"})
    assert result["messages"][-1].content == expected["bob"]  # lineage_depth=2: bob's lineage
    assert recorder.mismatches == []


def test_streaming_batches_and_tools_route_the_same_way(home: dict[str, Any], expected: dict[str | None, str],
                                                        plain: dict[str | None, str]) -> None:
    chat = _routed(home)
    agent = _agent(chat, context_schema=dict)
    streamed = "".join(
        chunk.content for chunk, _ in agent.stream({"messages": [("user", PROMPT)]}, context={"user_id": "bob"},
                                                   stream_mode="messages") if isinstance(chunk.content, str))
    assert streamed == expected["bob"]

    # generate_batch inside a run (here a RunnableLambda carrying the run's config).
    batch = RunnableLambda(lambda prompts: chat.generate_batch(prompts))
    out = batch.invoke([PROMPT, PROMPT], config={"configurable": {"user_id": "alice"}})
    assert out == [[plain["alice"]], [plain["alice"]]]

    async def abatch(prompts: list[str]) -> list[list[str]]:
        return await chat.agenerate_batch(prompts)

    import asyncio

    out = asyncio.run(RunnableLambda(abatch).ainvoke([PROMPT], config={"configurable": {"user_id": "bob"}}))
    assert out == [[plain["bob"]]]
    # Outside any run: the default namespace, which has no adapter.
    assert chat.generate_batch([PROMPT]) == [[plain[None]]]


def test_a_pinned_adapter_overrides_the_route(home: dict[str, Any], weights: dict[str, Path],
                                              expected: dict[str | None, str], plain: dict[str | None, str]) -> None:
    chat = _routed(home)
    alice = home["served"]["alice"]
    assert chat.generate_batch([PROMPT], adapter=alice) == [[plain["alice"]]]
    assert chat.generate_batch([PROMPT], adapter=None) == [[plain[None]]]
    agent = _agent(chat, context_schema=dict)
    with chat.pinned(alice):
        assert _ask(agent, "bob").content == expected["alice"]  # the pin wins over bob's route
        assert chat.generate_batch([PROMPT]) == [[plain["alice"]]]
    assert _ask(agent, "bob").content == expected["bob"]  # and ends with the block
    with chat.active_model(alice) as model:  # for direct forward passes (log-likelihoods)
        assert chat._host.active == str(alice) and model is chat.served_model
    with pytest.raises(AdapterError, match="missing"), chat.pinned(weights["alice"].parent / "missing"):
        chat.invoke(PROMPT)


def test_a_bad_namespace_fails_the_request_a_broken_adapter_serves_the_base(
        home: dict[str, Any], plain: dict[str | None, str], caplog: pytest.LogCaptureFixture) -> None:
    chat = _routed(home)
    agent = _agent(chat, context_schema=dict)
    with pytest.raises(ValidationError, match="namespace"):
        agent.invoke({"messages": [("user", PROMPT)]}, context={"namespace": "users//x"})
    # Bob's served weights are damaged after the registry checked them: his request is
    # served the base model (logged), never another tenant's adapter.
    broken = AdaptiveChatModel(**_model(), max_new_tokens=12,
                               route=lambda config, context: str(home["served"]["bob"]) + "-gone")
    assert broken.invoke(PROMPT).content == plain[None]
    assert "cannot serve adapter" in caplog.text


# ------------------------------------------------------------------ several adapters on one base


def test_least_recently_used_adapter_is_evicted(home: dict[str, Any], weights: dict[str, Path], base_hash: str,
                                                expected: dict[str | None, str]) -> None:
    carol = _commit(home["root"], ("users", "carol"), weights["carol"], base_hash)
    served = {**home["served"], "carol": carol}
    chat = _routed(home, max_loaded_adapters=2)
    recorder = ActiveRecorder(chat)
    agent = _agent(chat, context_schema=dict)
    key = {u: str(served[u].resolve()) for u in TENANTS}

    assert _ask(agent, "alice").content == expected["alice"]
    assert _ask(agent, "bob").content == expected["bob"]
    assert chat.loaded_adapters == [key["alice"], key["bob"]]
    assert _ask(agent, "alice").content == expected["alice"]  # alice is now the most recent
    assert _ask(agent, "carol").content == expected["carol"]  # evicts bob, not alice
    assert chat.loaded_adapters == [key["alice"], key["carol"]]
    assert len(chat.served_model.peft_config) == 2  # deleted from the model, not just forgotten
    assert _ask(agent, "bob").content == expected["bob"]  # read again from disk
    assert chat.loaded_adapters == [key["carol"], key["bob"]]
    assert recorder.mismatches == []


def test_a_commit_reaches_that_tenants_next_request_only(home: dict[str, Any], weights: dict[str, Path],
                                                        base_hash: str, expected: dict[str | None, str]) -> None:
    chat = _routed(home)
    agent = _agent(chat, context_schema=dict)
    assert _ask(agent, "alice").content == expected["alice"]
    assert _ask(agent, "bob").content == expected["bob"]
    bob_name = chat._host._loaded[str(home["served"]["bob"].resolve())]

    newer = _commit(home["root"], ("users", "alice"), weights["alice2"], base_hash)
    answer = _ask(agent, "alice")
    assert answer.content == expected["alice2"] and answer.response_metadata["adapter"] == str(newer)
    answer = _ask(agent, "bob")
    assert answer.content == expected["bob"] and answer.response_metadata["adapter"] == str(home["served"]["bob"])
    assert chat._host._loaded[str(home["served"]["bob"].resolve())] == bob_name  # bob's never reloaded


def test_concurrent_tenants_never_mix_adapters(home: dict[str, Any], expected: dict[str | None, str]) -> None:
    chat = _routed(home, max_loaded_adapters=1)  # every switch also evicts and reloads
    agent = _agent(chat, context_schema=dict)
    results: list[tuple[str, AIMessage]] = []
    errors: list[BaseException] = []
    # Every forward pass of one generation must see that generation's adapter: the hook
    # records the adapter active on each forward pass, in order.
    spans: list[str | None] = []
    lock = threading.Lock()
    base = chat.model.get_input_embeddings()
    handle = base.register_forward_pre_hook(lambda m, a: spans.append(chat._host.active))

    def tenant(user: str) -> None:
        try:
            for i in range(4):
                how = "context" if i % 2 else "configurable"
                message = _ask(agent, user, how)
                with lock:
                    results.append((user, message))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=tenant, args=(u,)) for u in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handle.remove()
    assert errors == []
    assert len(results) == 8
    for user, message in results:
        assert message.content == expected[user], user
        assert message.response_metadata["adapter"] == str(home["served"][user])
    # 8 generations of 12 tokens or fewer: the active adapter changes at most 7 times
    # (between generations), never inside one.
    switches = sum(1 for a, b in zip(spans, spans[1:], strict=False) if a != b)
    assert set(spans) == {str(home["served"]["alice"]), str(home["served"]["bob"])}
    assert switches <= 7


# ------------------------------------------------------------------ SealMemory wiring


@pytest.fixture
def memory(home: dict[str, Any]) -> Iterator[Any]:
    from fakes import HashEmbeddings

    from seal_agent.seal_memory import SealMemory

    config = SealConfig(model=ModelConfig(name_or_path="tiny-random", max_new_tokens=12, max_loaded_adapters=3),
                        consolidation=SCOPE)
    with SealMemory(home["root"], embeddings=HashEmbeddings(), config=config) as mem:
        yield mem


def test_seal_memory_routes_like_its_middleware(memory: Any, home: dict[str, Any],
                                                plain: dict[str | None, str]) -> None:
    from seal_agent.integrations.middleware import SealMemoryMiddleware

    chat = memory.chat_model()
    assert isinstance(chat.route, LineageRouter) and chat.follow is None and chat.max_loaded_adapters == 3
    agent = create_agent(chat, tools=[], middleware=[SealMemoryMiddleware(memory)], context_schema=dict)
    for user in ("alice", "bob"):
        result = agent.invoke({"messages": [("user", PROMPT)]}, context={"user_id": user})
        assert result["messages"][-1].content == plain[user]
    memory.flush()
    logged = {i.namespace for i in memory.list()}
    assert logged == {("users", "alice"), ("users", "bob")}  # logged where it was served from


def test_global_scope_is_unchanged(tmp_path: Path) -> None:
    from fakes import HashEmbeddings

    from seal_agent.seal_memory import SealMemory

    with SealMemory(tmp_path / "h", embeddings=HashEmbeddings(), model="tiny-random") as mem:
        chat = mem.chat_model()
        assert chat.route is None and chat.follow is not None


def test_max_loaded_adapters_is_validated() -> None:
    from seal_agent.errors import ConfigError

    with pytest.raises((ConfigError, ValidationError), match="max_loaded_adapters"):
        ModelConfig(max_loaded_adapters=0)
    with pytest.raises(ValidationError, match="max_loaded_adapters"):
        AdaptiveChatModel(**_model(), max_loaded_adapters=0)


def test_router_reads_a_damaged_lineage_through_serving(home: dict[str, Any]) -> None:
    router = LineageRouter(home["root"], SCOPE)
    alice = home["served"]["alice"]
    assert router(None, {"user_id": "alice"}) == str(alice)
    assert router({"configurable": {"user_id": "alice"}}) == str(alice)
    assert router({}, None) is None  # ("default",): no lineage, nothing shared
    (alice / "adapter_model.safetensors").write_bytes(b"\x00cut")  # CURRENT damaged, no parent
    assert router(None, {"user_id": "alice"}) is None
    shutil.rmtree(lineage_for(home["root"], ("users", "alice"), SCOPE).root)  # forgotten
    assert router(None, {"user_id": "alice"}) is None
