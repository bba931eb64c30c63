"""load_model: the built-in tiny-random model, real checkpoints, and load errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seal_agent.errors import ModelLoadError, ValidationError
from seal_agent.model import PLAIN_TEMPLATE, base_model_hash, load_model

TINYSTORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "tinystories-260k"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_tiny_random_is_deterministic_for_a_seed() -> None:
    m1, t1 = load_model("tiny-random", seed=0)
    m2, t2 = load_model("tiny-random", seed=0)
    assert m1 is not m2  # fresh objects: callers may train them
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    text = "Remember: my favorite color is blue!"
    assert t1(text).input_ids == t2(text).input_ids
    assert base_model_hash(m1) == base_model_hash(m2)

    m3, _ = load_model("tiny-random", seed=1)
    assert base_model_hash(m3) != base_model_hash(m1)


def test_tiny_random_is_identical_across_processes() -> None:
    code = (
        "from seal_agent.model import load_model, base_model_hash\n"
        "m, t = load_model('tiny-random', seed=3)\n"
        "print(base_model_hash(m), t('hello world').input_ids)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    model, tokenizer = load_model("tiny-random", seed=3)
    assert out.strip() == f"{base_model_hash(model)} {tokenizer('hello world').input_ids}"


def test_tiny_random_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("tiny-random", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_random_tokenizer_and_chat_template() -> None:
    model, tok = load_model("tiny-random")
    assert 900 <= len(tok) <= 2048 and model.config.vocab_size == len(tok)
    for text in ["Hello, world!", "Héllo wörld 😀\n\ttabs", '<tool_call>{"name": "f"}</tool_call>']:
        assert tok.decode(tok(text).input_ids) == text
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id

    prompt = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    with_tools = tok.apply_chat_template(MESSAGES, tools=tools, tokenize=False, add_generation_prompt=True)
    assert with_tools.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "lookup"' in with_tools and with_tools.count("Be brief.") == 1


def test_tiny_random_generates_on_cpu() -> None:
    model, tok = load_model("tiny-random", device="cpu")
    assert model.device.type == "cpu" and model.dtype == torch.float32 and not model.training
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= ids["input_ids"].shape[1] + 5


def test_base_hash_ignores_lora_weights() -> None:
    from peft import LoraConfig, get_peft_model

    model, _ = load_model("tiny-random")
    before = base_model_hash(model)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert base_model_hash(peft_model) == before
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "lora_" not in n).add_(1.0)
    assert base_model_hash(peft_model) != before


def test_base_hash_is_the_same_in_bf16() -> None:
    model, _ = load_model("tiny-random")
    assert base_model_hash(model.to(torch.bfloat16)) == base_model_hash(load_model("tiny-random")[0])


def test_missing_path_is_a_model_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model(missing)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(missing))


def test_folder_without_a_model_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model(tmp_path)


def test_non_causal_model_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(tmp_path)


def test_bad_device_and_dtype_name_the_field() -> None:
    with pytest.raises(ValidationError, match="dtype"):
        load_model("tiny-random", dtype="float8")
    with pytest.raises(ValidationError, match="device"):
        load_model("tiny-random", device="toaster")


@pytest.mark.skipif(not TINYSTORIES.is_dir(), reason="../shared/models/tinystories-260k is absent")
def test_tinystories_loads_with_the_plain_template_and_generates() -> None:
    model, tok = load_model(TINYSTORIES)
    assert tok.chat_template == PLAIN_TEMPLATE and tok.pad_token is not None
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell a story."}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<s><|user|>\nTell a story.</s>\n<|assistant|>\n"
    ids = tok("Once upon a time", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    assert len(base_model_hash(model)) == 64
