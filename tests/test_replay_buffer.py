"""The replay buffer keeps what is still true (issue 20 item 3): a superseded fact's
self-edits and a forgotten interaction's leave it, before the next run trains.

Real parts: SealMemory on tiny-random, embedded Chroma, the facts store's supersession,
peft training, the gate (``allow_unverified``: tiny-random ships no canaries and the
``statements`` strategy writes no probes, so a first run has nothing to be judged on).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.consolidation import _without_stale, load_replay

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

RUN = {"selfedit": {"strategies": ["statements"]}, "consolidation": {"teacher": "none"},
       "gate": {"allow_unverified": True},
       "train": {"max_steps": 2, "lora_rank": 4, "learning_rate": 5e-3, "rehearsal_size": 0}}
ACK = "Got it, thanks. I'll remember that."
FIRST = "My brother's sailboat is called the Tumbleweed. He keeps it in Brighton harbour."
CORRECTION = "My brother's sailboat is now called the Saltpetal."


def tell(mem: SealMemory, text: str) -> str:
    return mem.log([{"role": "user", "content": text}, {"role": "assistant", "content": ACK}],
                   namespace=("users", "bob"))


def buffer(home: Path) -> list[dict[str, Any]]:
    return json.loads((home / "consolidation" / "replay.json").read_text(encoding="utf-8"))["items"]


def test_superseded_and_forgotten_self_edits_leave_the_replay_buffer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as mem:
        first = tell(mem, FIRST)
        v1 = mem.consolidate(progress=False, **RUN)
        assert v1.verdict == "committed", v1.reason
        (item,) = buffer(home)
        assert item["interaction_id"] == first and "Tumbleweed" in item["example"]["text"]

        fix = tell(mem, CORRECTION)
        v2 = mem.consolidate(progress=False, **RUN)
        assert v2.verdict == "committed", v2.reason
        # the correction's run already trained without the old value: it left the buffer first
        assert v2.counts["replay_superseded"] == 1
        assert v2.train is not None and v2.train["replay_distinct"] == 1
        items = {i["interaction_id"]: i for i in buffer(home)}
        assert set(items) == {first, fix}
        old = items[first]["example"]["text"]
        assert "Tumbleweed" not in old and "Brighton harbour" in old  # the rest of what it taught stays
        assert "Saltpetal" in items[fix]["example"]["text"]
        assert not any("Tumbleweed" in json.dumps(e) for e in load_replay(mem))
        facts = {f.text: f.status for f in mem._facts.list(include_superseded=True)}
        assert facts["My brother's sailboat is called the Tumbleweed."] == "superseded"

        # A third run with nothing superseded since leaves the buffer's items alone.
        tell(mem, "Our wifi password is Bramble-42.")
        v3 = mem.consolidate(progress=False, **RUN)
        assert v3.verdict == "committed", v3.reason
        assert "replay_superseded" not in v3.counts
        assert {i["interaction_id"] for i in buffer(home)} >= {first, fix}

        # Forget the correction: its self-edits leave the buffer (and so do the runs that
        # replayed them, learned again later); what the first exchange taught stays.
        report = mem.forget(ids=[fix])
        assert report.replay_items >= 1
        left = buffer(home)
        assert not any("Saltpetal" in json.dumps(i) for i in left)
        assert not any(i["interaction_id"] == fix for i in left)
        assert any(i["interaction_id"] == first and "Brighton" in i["example"]["text"] for i in left)


def test_stale_sentences_leave_documents_and_chat_examples_leave_whole() -> None:
    doc = {"text": "My brother's sailboat is called the Tumbleweed. He keeps it in Brighton.\nIt is blue."}
    assert _without_stale(doc, ["tumbleweed"]) == {"text": "He keeps it in Brighton.\nIt is blue."}
    assert _without_stale(doc, ["saltpetal"]) is doc  # says nothing stale: the same object
    assert _without_stale({"text": "The Tumbleweed."}, ["tumbleweed"]) is None  # nothing left
    assert _without_stale(doc, ["tumble"]) is doc  # whole words only
    chat = {"messages": [{"role": "user", "content": "What is his boat called?"},
                         {"role": "assistant", "content": "The Tumbleweed."}]}
    assert _without_stale(chat, ["tumbleweed"]) is None
