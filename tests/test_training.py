"""The LoRA trainer's contract: labels, batching, adapter vs base weights, budgets, errors."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from facts import FACT_CONFIG, FACTS, chat

from seal_agent.config import TrainConfig
from seal_agent.errors import TrainingCancelled, ValidationError
from seal_agent.training import TrainResult, answer_logprob, answer_logprobs, train_adapter
from seal_agent.training.data import (
    IGNORE_INDEX,
    collate,
    encode_example,
    plan_batches,
    replay_draws,
    sample_replay,
    validate_examples,
)
from seal_agent.training.trainer import _loss_sum, _shared_weight_copy, _wrap_with_lora

# peft calls a transformers API deprecated in v5; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

TINYSTORIES = Path(__file__).resolve().parents[2] / "shared" / "models" / "tinystories-260k"

FACT_EXAMPLES = chat(FACTS)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """Train once on FACTS; record the base weights before and the LoRA init."""
    model, tok = tiny
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # The LoRA init the trainer will draw: same seed, same construction.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(FACT_CONFIG.seed)
        init = {n: p.detach().clone() for n, p in
                _wrap_with_lora(_shared_weight_copy(model), FACT_CONFIG, None).named_parameters() if "lora_" in n}
    out = tmp_path_factory.mktemp("facts") / "adapter"
    result = train_adapter(model, tok, FACT_EXAMPLES, FACT_CONFIG, output_dir=out, progress=False)
    return result, before, flags, init


def _greedy(model, tok, question: str) -> str:
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- data


def test_labels_cover_exactly_the_assistant_turns(tiny):
    _, tok = tiny
    ex = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Zorbia?"},
        {"role": "assistant", "content": "Quxville."},
        {"role": "user", "content": "And of Plin?"},
        {"role": "assistant", "content": "Norb, on the coast."},
    ]}
    enc = encode_example(tok, ex)
    assert enc.input_ids == tuple(tok.apply_chat_template(ex["messages"], tokenize=True, return_dict=True)["input_ids"])
    # The labelled tokens, in runs, decode to exactly the two assistant turns (content + end of turn).
    runs, cur = [], []
    for t, y in zip(enc.input_ids, enc.labels, strict=True):
        assert y in (t, IGNORE_INDEX)
        if y != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    assert runs == ["Quxville.<|im_end|>\n", "Norb, on the coast.<|im_end|>\n"]


def test_documents_label_every_token_and_end_with_eos(tiny):
    _, tok = tiny
    enc = encode_example(tok, {"text": "Once upon a time."})
    assert enc.labels == enc.input_ids
    assert enc.input_ids[-1] == tok.eos_token_id


def test_plan_batches_groups_by_length_within_the_token_budget():
    lengths = [10 + (i * 37) % 390 for i in range(100)]
    plan = plan_batches(lengths, batch_size=8, micro_batch_tokens=1024, seed=3)
    seen = sorted(i for step in plan for mb in step for i in mb)
    assert seen == list(range(100))  # every example exactly once per epoch
    for step in plan:
        assert sum(len(mb) for mb in step) <= 8
        for mb in step:
            assert len(mb) == 1 or len(mb) * max(lengths[i] for i in mb) <= 1024
    padded = sum(len(mb) * max(lengths[i] for i in mb) for step in plan for mb in step)
    assert sum(lengths) / padded > 0.85  # length grouping: little padding
    assert plan == plan_batches(lengths, batch_size=8, micro_batch_tokens=1024, seed=3)


def test_min_cost_split_keeps_each_steps_examples_and_pads_less():
    import itertools

    lengths = [10 + (i * 37) % 390 for i in range(100)]
    greedy = plan_batches(lengths, batch_size=8, micro_batch_tokens=4096, seed=3)
    split = plan_batches(lengths, batch_size=8, micro_batch_tokens=4096, seed=3, overhead_tokens=24)
    # Same optimizer steps, in the same order (what is learned); only the micro-batches differ.
    assert [sorted(i for mb in step for i in mb) for step in split] == \
        [sorted(i for mb in step for i in mb) for step in greedy]

    def cost(step, k):
        return sum(len(mb) * max(lengths[i] for i in mb) + k for mb in step)

    for g, s in zip(greedy, split, strict=True):
        assert cost(s, 24) <= cost(g, 24)
        for mb in s:
            assert len(mb) == 1 or len(mb) * max(lengths[i] for i in mb) <= 4096
    padded = lambda plan: sum(len(mb) * max(lengths[i] for i in mb) for st in plan for mb in st)  # noqa: E731
    assert padded(split) < padded(greedy)
    # Exact: no contiguous split of a sorted step is cheaper (brute force over all cuts).
    step = sorted([400, 390, 200, 180, 60, 50, 12, 11], reverse=True)
    idx = list(range(len(step)))
    ours = plan_batches(step, batch_size=8, micro_batch_tokens=4096, seed=0, overhead_tokens=24)[0]
    best = min(
        sum(len(p) * step[p[0]] + 24 for p in parts)
        for r in range(len(step))
        for cuts in itertools.combinations(range(1, len(step)), r)
        for parts in [[idx[a:b] for a, b in zip((0, *cuts), (*cuts, len(step)), strict=True)]]
    )
    assert sum(len(mb) * step[mb[0]] + 24 for mb in ours) == best
    # A huge overhead keeps a step whole; none at all gives one example per micro-batch.
    assert plan_batches(step, batch_size=8, micro_batch_tokens=4096, seed=0, overhead_tokens=10**6) == [[idx]]
    assert len(plan_batches(step, batch_size=8, micro_batch_tokens=4096, seed=0, overhead_tokens=0)[0]) == 8


def test_micro_batch_split_does_not_change_what_is_learned(tiny, tmp_path, monkeypatch):
    """Gradient accumulation over micro-batches is a token-mean over the step: same losses either way."""
    from seal_agent.training import trainer

    model, tok = tiny
    docs = [{"text": " ".join(["the cat sat on the mat"] * n)} for n in (1, 2, 6, 9, 14, 3)]
    cfg = TrainConfig(epochs=2, batch_size=6, lora_rank=4, lora_alpha=8, rehearsal_size=0, seed=1)
    monkeypatch.setattr(trainer, "_CPU_PASS_OVERHEAD_TOKENS", 0)  # one example per micro-batch
    split = train_adapter(model, tok, docs, cfg, output_dir=tmp_path / "split", progress=False)
    monkeypatch.setattr(trainer, "_CPU_PASS_OVERHEAD_TOKENS", None)  # the whole step in one pass
    whole = train_adapter(model, tok, docs, cfg, output_dir=tmp_path / "whole", progress=False)
    assert split.tokens_seen == whole.tokens_seen and split.padded_tokens == split.tokens_seen
    assert whole.padded_tokens > whole.tokens_seen
    assert split.losses == pytest.approx(whole.losses, rel=1e-4)


def test_collate_right_pads(tiny):
    _, tok = tiny
    items = [encode_example(tok, {"text": "a b c d e f"}), encode_example(tok, {"text": "a"})]
    ids, labels, n = collate(items, pad_id=0)
    assert ids.shape == labels.shape == (2, len(items[0]))
    assert n == len(items[0]) + len(items[1])
    assert (labels[1, len(items[1]):] == IGNORE_INDEX).all()


def test_fast_loss_equals_full_forward_loss(tiny):
    model, tok = tiny
    items = [encode_example(tok, FACT_EXAMPLES[0]), encode_example(tok, {"text": "hello there, world"})]
    ids, labels, _ = collate(items, pad_id=tok.pad_token_id)
    peft_model = _wrap_with_lora(_shared_weight_copy(model), TrainConfig(), None)
    fast, full = _loss_sum(peft_model, ids, labels, True), _loss_sum(peft_model, ids, labels, False)
    torch.testing.assert_close(fast, full)
    hf = peft_model(input_ids=ids, labels=labels).loss  # HF's own mean over label tokens
    torch.testing.assert_close(full / (labels[:, 1:] != IGNORE_INDEX).sum(), hf)


def test_chunked_head_loss_has_the_full_losss_gradients(tiny, monkeypatch):
    """Training's fast loss runs the head in row chunks (no [N, V] logits): same value, same gradients."""
    from seal_agent.training import trainer

    model, tok = tiny
    items = [encode_example(tok, FACT_EXAMPLES[0]), encode_example(tok, {"text": "hello there, world"})]
    ids, labels, _ = collate(items, pad_id=tok.pad_token_id)
    peft_model = _wrap_with_lora(_shared_weight_copy(model), TrainConfig(), None)
    assert trainer._frozen_linear_head(peft_model) is not None
    lora = [p for p in peft_model.parameters() if p.requires_grad]
    for p in lora:  # LoRA B starts at zero: give it values so every gradient path counts
        torch.nn.init.normal_(p, std=0.05)

    def grads(fast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        peft_model.zero_grad(set_to_none=True)
        loss = _loss_sum(peft_model, ids, labels, fast)
        (loss / 7).backward()
        return loss.detach(), [p.grad.clone() for p in lora]

    monkeypatch.setattr(trainer, "_HEAD_CHUNK_ELEMENTS", 3 * len(tok))  # 3 rows a chunk
    chunked_loss, chunked = grads(True)
    full_loss, full = grads(False)
    torch.testing.assert_close(chunked_loss, full_loss)
    for a, b in zip(chunked, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("examples", "field"), [
    ([], "examples"),
    ("not a list", "examples"),
    ([{"messages": [{"role": "robot", "content": "hi"}]}], "examples[0].messages[0].role"),
    ([FACT_EXAMPLES[0], {"messages": [{"role": "user", "content": "hi"}]}], "examples[1].messages"),
    ([{"text": ""}], "examples[0].text"),
    ([{"text": "x", "messages": []}], "examples[0]"),
    ([{"messages": [{"role": "user", "content": 3}]}], "examples[0].messages[0].content"),
])
def test_bad_examples_are_rejected_naming_the_field(tiny, tmp_path, examples, field):
    model, tok = tiny
    out = tmp_path / "adapter"
    with pytest.raises(ValidationError) as err:
        train_adapter(model, tok, examples, output_dir=out, progress=False)
    assert err.value.field == field
    assert not out.exists()


def test_too_long_example_is_rejected(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "adapter"
    long = {"text": "word " * 400}
    with pytest.raises(ValidationError, match=r"max_seq_len=64") as err:
        train_adapter(model, tok, [FACT_EXAMPLES[0], long], TrainConfig(max_seq_len=64), output_dir=out,
                      progress=False)
    assert err.value.field == "examples[1]"
    assert not out.exists()


def test_a_peft_model_is_refused(tiny):
    model, tok = tiny
    peft_model = _wrap_with_lora(_shared_weight_copy(model), TrainConfig(), None)
    with pytest.raises(ValidationError, match="init_adapter"):
        train_adapter(peft_model, tok, FACT_EXAMPLES, progress=False)


def test_replay_sample_is_deterministic_and_counts_right():
    replay = list(range(10))
    assert len(sample_replay(replay, 4, 0.5, seed=1)) == 2
    assert len(sample_replay(replay, 4, 10.0, seed=1)) == 10  # capped: no repeats
    assert sample_replay(replay, 4, 0.0, seed=1) == []
    assert sample_replay(replay, 8, 0.5, seed=1) == sample_replay(replay, 8, 0.5, seed=1)
    assert len(set(sample_replay(replay, 8, 1.0, seed=1))) == 8


def test_replay_is_drawn_afresh_every_epoch_and_deterministically():
    """Issue 20 item 3: a buffer larger than one draw is rehearsed more widely over an
    update's epochs (the same draw every epoch rehearsed the same few examples only)."""
    pool = list(range(40))
    draws = replay_draws(pool, 4, 0.5, seed=3, epochs=6)
    assert [len(d) for d in draws] == [2] * 6 and all(len(set(d)) == 2 for d in draws)
    assert len({tuple(d) for d in draws}) > 1  # not one draw repeated
    assert len({i for d in draws for i in d}) > 2  # more of the buffer is rehearsed
    assert draws == replay_draws(pool, 4, 0.5, seed=3, epochs=6)  # seeded
    assert replay_draws(pool, 4, 0.5, seed=4, epochs=6) != draws
    assert draws[0] == sample_replay(pool, 4, 0.5, seed=3, epoch=0)
    # a pool no larger than the draw is drawn whole every epoch
    assert all(sorted(d) == [0, 1] for d in replay_draws([0, 1], 4, 1.0, seed=0, epochs=3))


def test_trainer_mixes_a_fresh_replay_draw_into_every_epoch(tiny, tmp_path):
    model, tok = tiny
    pool = chat([(f"What is item {i}?", f"Item {i} is a zeb.") for i in range(30)])
    cfg = TrainConfig(learning_rate=1e-4, epochs=4, batch_size=8, lora_rank=4, replay_ratio=1.0, rehearsal_size=0)
    result = train_adapter(model, tok, FACT_EXAMPLES, cfg, replay=pool, output_dir=tmp_path / "a", progress=False)
    assert result.replay_examples == 4  # per epoch: ratio 1.0 x 4 new
    expected = {i for d in replay_draws(pool, 4, 1.0, cfg.seed, 4) for i in d}
    assert result.replay_distinct == len(expected) > 4
    # every epoch trains on 4 new + 4 replayed examples: one step of 8 each
    assert result.steps == 4


def test_validate_examples_accepts_both_kinds():
    assert len(validate_examples([FACT_EXAMPLES[0], {"text": "doc"}])) == 2


# --------------------------------------------------------------------------- training


def test_training_contract(trained, tiny):
    result, before, flags, init = trained
    model, _ = tiny
    assert isinstance(result, TrainResult)
    assert result.stopped_reason == "completed"
    assert result.steps == len(result.losses) == FACT_CONFIG.epochs  # 4 examples = 1 step per epoch
    assert result.tokens_seen > 0 and result.padded_tokens >= result.tokens_seen
    assert result.tokens_per_second > 0 and result.peak_memory_bytes > 0
    # Saved: a plain LoRA folder.
    assert (result.adapter_path / "adapter_config.json").is_file()
    assert (result.adapter_path / "adapter_model.safetensors").is_file()
    # Every LoRA tensor moved away from its init (A random, B zero).
    saved = _lora_tensors(result.adapter_path)
    assert len(saved) == len(init) > 0
    for name, value in init.items():
        key = next(k for k in saved if k.replace(".weight", "") in name.replace(".default", "").replace(".weight", ""))
        assert not torch.equal(saved[key], value), f"{name} did not change"
    # The caller's model: bit-identical weights, no LoRA modules, flags restored.
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"base weight {k} changed"
    assert not any("lora" in n for n, _ in model.named_modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    # Loss fell. (tiny-random's small random output head caps how low it can go: ~4.4 nats.)
    k = 5
    assert sum(result.losses[-k:]) / k < sum(result.losses[:k]) / k - 1.5


def test_trained_adapter_answers_taught_facts_after_reload(trained, tiny):
    from peft import PeftModel

    result, *_ = trained
    model, tok = tiny
    peft_model = PeftModel.from_pretrained(copy.deepcopy(model), str(result.adapter_path))
    peft_model.eval()
    for question, answer in FACTS:
        assert _greedy(peft_model, tok, question) == answer
    # Scoring: the adapter makes the taught answer far more likely than the base does.
    prompt = [{"role": "user", "content": FACTS[0][0]}]
    tuned, base = answer_logprob(peft_model, tok, prompt, FACTS[0][1]), answer_logprob(model, tok, prompt, FACTS[0][1])
    assert tuned > base + 1.0
    batched = answer_logprobs(peft_model, tok, [([{"role": "user", "content": q}], a) for q, a in FACTS],
                              batch_size=3)
    singles = [answer_logprob(peft_model, tok, [{"role": "user", "content": q}], a) for q, a in FACTS]
    assert batched == pytest.approx(singles, abs=1e-4)


def test_continual_training_starts_from_init_adapter(trained, tiny, tmp_path):
    result, _, _, init = trained
    model, tok = tiny
    cfg = TrainConfig(learning_rate=1e-8, max_steps=1, batch_size=2, lora_rank=4, replay_ratio=0.5)
    new = [{"messages": [{"role": "user", "content": "Where is Plin?"}, {"role": "assistant", "content": "North."}]}]
    cont = train_adapter(model, tok, new * 2, cfg, init_adapter=result.adapter_path, replay=FACT_EXAMPLES,
                         output_dir=tmp_path / "next", progress=False)
    assert cont.steps == 1 and cont.stopped_reason == "max_steps"
    assert cont.replay_examples == 1 and cont.examples == 2
    start, after = _lora_tensors(result.adapter_path), _lora_tensors(cont.adapter_path)
    assert start.keys() == after.keys()  # the init adapter's rank (8) wins over lora_rank=4
    for k in start:
        torch.testing.assert_close(after[k], start[k], atol=1e-5, rtol=0)


def test_max_seconds_stops_after_a_step(tiny, tmp_path):
    model, tok = tiny
    cfg = TrainConfig(max_seconds=1e-9, epochs=5, batch_size=1)
    result = train_adapter(model, tok, FACT_EXAMPLES, cfg, output_dir=tmp_path / "a", progress=False)
    assert result.stopped_reason == "max_seconds" and result.steps == 1
    assert (result.adapter_path / "adapter_model.safetensors").is_file()


class _CancelAfter(threading.Event):
    """An event that reads as set from its n-th check on: a deterministic mid-run cancel."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.checks, self.n = 0, n

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


@pytest.mark.parametrize("after_checks", [1, 3])
def test_cancellation_raises_and_writes_nothing(tiny, tmp_path, after_checks):
    model, tok = tiny
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = tmp_path / "adapter"
    event = _CancelAfter(after_checks)
    with pytest.raises(TrainingCancelled):
        train_adapter(model, tok, FACT_EXAMPLES, TrainConfig(batch_size=1, epochs=2), output_dir=out,
                      cancel_event=event, progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert not any("lora" in n for n, _ in model.named_modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_output_dir_must_be_empty(tiny, tmp_path):
    model, tok = tiny
    (tmp_path / "x").write_text("x")
    with pytest.raises(ValidationError) as err:
        train_adapter(model, tok, FACT_EXAMPLES, output_dir=tmp_path, progress=False)
    assert err.value.field == "output_dir"


@pytest.mark.skipif(not TINYSTORIES.is_dir(), reason="../shared/models/tinystories-260k is absent")
def test_tinystories_training_lowers_loss_and_keeps_base(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TINYSTORIES))
    model = AutoModelForCausalLM.from_pretrained(str(TINYSTORIES), dtype=torch.float32)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    docs = [{"text": f"Zib the {c} robot lived on the moon. Every day Zib ate {f} and sang to the stars."}
            for c, f in [("blue", "cheese"), ("red", "rocks"), ("tiny", "dust"), ("happy", "soup")]]
    cfg = TrainConfig(learning_rate=5e-3, epochs=25, batch_size=4, lora_rank=8)
    result = train_adapter(model, tok, docs, cfg, output_dir=tmp_path / "a", progress=False)
    assert sum(result.losses[-3:]) / 3 < sum(result.losses[:3]) / 3 - 0.3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
