"""One frozen base per process (seal_agent.model.shared): serving, training and the gate
share the base tensors (same storage), never the module tree, and nothing writes them.

Each test uses its own tiny-random seed: the registry is process-wide, so a seed no other
test loads keeps the load counts and owner counts of these tests their own.
"""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path

import pytest
import torch
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.config import SealConfig
from seal_agent.model import loader
from seal_agent.model.shared import load_shared, shared_bases, shared_key

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

RAW = {"selfedit": {"strategies": ["raw"]}, "consolidation": {"teacher": "none"},
       "gate": {"allow_unverified": True},
       "train": {"epochs": 1, "batch_size": 4, "lora_rank": 4, "rehearsal_size": 0}}


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _entry(seed: int) -> dict | None:
    key = shared_key("tiny-random", seed=seed)
    return next((e for e in shared_bases() if e["key"] == key), None)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every real load_model call made through the registry."""
    calls: list[str] = []
    real = loader.load_model

    def counting(name, **kw):  # type: ignore[no-untyped-def]
        calls.append(str(name))
        return real(name, **kw)

    monkeypatch.setattr(loader, "load_model", counting)
    return calls


def _memory(home: Path, seed: int) -> SealMemory:
    config = SealConfig.from_dict({"model": {"name_or_path": "tiny-random", "seed": seed}})
    return SealMemory(home, embeddings=HashEmbeddings(), config=config)


def test_a_twin_shares_every_tensor_but_not_the_module_tree(loads: list[str]) -> None:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    served, tok = load_shared("tiny-random", seed=101)
    twin, twin_tok = load_shared("tiny-random", seed=101)
    assert loads == ["tiny-random"]  # the second call built a twin, it did not load
    assert twin is not served and twin_tok is not tok
    a, b = served.state_dict(), twin.state_dict()
    assert a.keys() == b.keys()
    assert all(a[k].data_ptr() == b[k].data_ptr() for k in a)  # the same storage, not copies
    buffers = dict(served.named_buffers())
    assert all(t.data_ptr() == buffers[n].data_ptr() for n, t in twin.named_buffers())  # rotary inv_freq too
    assert not any(p.requires_grad for p in [*served.parameters(), *twin.parameters()])  # frozen
    ids = torch.tensor([tok("the cat sat on the mat")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(served(ids).logits, twin(ids).logits)
    # LoRA goes into the twin's modules only: the served tree never sees a LoRA layer.
    peft = get_peft_model(twin, LoraConfig(r=4, target_modules="all-linear"))
    assert any(isinstance(m, BaseTunerLayer) for m in peft.modules())
    assert not any(isinstance(m, BaseTunerLayer) for m in served.modules())
    del peft, twin
    gc.collect()
    entry = _entry(101)
    assert entry is not None and entry["owners"] == 1  # the served model keeps it
    del served, a, b, buffers
    gc.collect()
    assert _entry(101) is None  # the last owner gone: the weights are freed


def test_tied_embeddings_stay_tied_in_a_twin() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from seal_agent.model import shared

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    key = ("tied-test", "cpu", "torch.float32", 0, None)
    with shared._lock:
        entry = shared._register(key, model, tokenizer=None)
        shared._own(entry, model)
        twin, _ = shared._twin(entry)
        shared._own(entry, twin)
    assert twin.lm_head.weight is twin.model.embed_tokens.weight
    assert twin.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()


def test_consolidation_trains_and_gates_on_the_served_base_without_loading_or_changing_it(
        tmp_path: Path, loads: list[str]) -> None:
    with _memory(tmp_path / "home", seed=102) as mem:
        chat = mem.chat_model()
        base = dict(chat.model.state_dict())
        before = _checksum(base)
        for i in range(6):
            mem.log([{"role": "user", "content": f"Where does Ana{i} live?"},
                     {"role": "assistant", "content": f"Ana{i} lives in Tromso{i}."}])
        report = mem.consolidate(progress=False, **RAW)
        assert report.verdict == "committed", report.reason
        assert loads == ["tiny-random"]  # serving loaded it; training and the gate did not
        assert chat.invoke("Where does Ana1 live?").response_metadata["adapter"] == report.version
        served_base = {n.replace(".base_layer", ""): t for n, t in chat.model.state_dict().items() if "lora_" not in n}
        assert served_base.keys() == base.keys()
        assert all(served_base[k].data_ptr() == base[k].data_ptr() for k in base)
        assert _checksum(base) == before  # training and the gate never wrote the shared tensors
        assert not any(p.requires_grad for n, p in chat.model.named_parameters() if "lora_" not in n)


def test_a_consolidation_before_any_request_loads_the_base_once_for_both(tmp_path: Path, loads: list[str]) -> None:
    with _memory(tmp_path / "home", seed=103) as mem:
        mem.log([{"role": "user", "content": "Where does Bo live?"}, {"role": "assistant", "content": "Bo lives in Oslo."}])
        assert mem.consolidate(progress=False, **RAW).verdict == "committed"
        assert loads == ["tiny-random"]
        chat = mem.chat_model()  # served afterwards: the run's base, not a second load
        assert loads == ["tiny-random"]
        mem.log([{"role": "user", "content": "Where does Cy live?"}, {"role": "assistant", "content": "Cy lives in Rome."}])
        assert mem.consolidate(progress=False, **RAW).verdict == "committed"
        assert loads == ["tiny-random"]
        assert chat.invoke("hi").response_metadata["adapter"] is not None
