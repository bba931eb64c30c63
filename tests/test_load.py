"""Under load (issue 22, item 11): waits that end on a stall, not on a clock.

On a busy machine (load 3-10 on 2 cores) indexing a backlog may take minutes while never
stopping; ``flush()`` failed there on a fixed 60 s ("313 interactions not indexed after
60.0s"). It now waits as long as rows are being indexed and fails only after `timeout`
seconds in which none was. The embedding model is a deliberately slow stand-in (sleeps
per batch: an embedding model starved of CPU), in a real SealMemory: real SQLite journal,
real embedded Chroma, the real index worker.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fakes import HashEmbeddings

from seal_agent import SealMemory
from seal_agent.errors import BackendUnavailableError


class SlowEmbeddings(HashEmbeddings):
    """Each batch of documents takes `delay` seconds; after `fail_after` batches, every
    batch fails (an embedding service that went down). Queries are instant."""

    def __init__(self, delay: float, fail_after: int | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.fail_after = fail_after
        self.batches = 0
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            self.batches += 1
            failing = self.fail_after is not None and self.batches > self.fail_after
        if failing:
            raise RuntimeError("embedding service down")
        time.sleep(self.delay)
        return super().embed_documents(texts)


def _memory(home: Path, embeddings: SlowEmbeddings) -> SealMemory:
    home.mkdir(parents=True)
    # Two rows a batch: many batches, each one a visible step of progress.
    (home / "config.toml").write_text("[memory]\nembed_batch_size = 2\nclose_timeout_s = 0\n")
    return SealMemory(home, embeddings=embeddings, model="tiny-random")


def _log(m: SealMemory, n: int) -> list[str]:
    return [m.log([{"role": "user", "content": f"slow note {i}"}, {"role": "assistant", "content": "ok"}],
                  namespace=("users", "ana")) for i in range(n)]


STALL_S = 6.0
DELAY_S = 0.5  # one batch: well inside the stall window, even on a loaded machine (load 10)


def test_flush_waits_while_indexing_progresses(tmp_path: Path) -> None:
    """96 rows, 2 a batch, 0.5 s a batch, at most two threads embedding (the worker and
    flush's own): at least 12 s of indexing, twice the stall window. A fixed 6 s clock
    gave up half way; waiting on progress, flush returns with everything indexed."""
    emb = SlowEmbeddings(DELAY_S)
    with _memory(tmp_path / "home", emb) as m:
        ids = _log(m, 96)
        m.flush(timeout=STALL_S)
        assert m.status()["backlog"] == 0 and set(m._index.all_ids()) == set(ids)
        assert emb.batches * DELAY_S / 2 >= 2 * STALL_S  # the work really outlasted the window


def test_flush_fails_after_a_stall_naming_what_is_left(tmp_path: Path) -> None:
    """Indexing goes on for a while (longer than the stall window), then stops (every
    batch fails): flush gives up only once nothing was indexed for `timeout` seconds, with
    our error naming how many interactions are left and for how long nothing moved."""
    emb = SlowEmbeddings(DELAY_S, fail_after=28)  # 28 batches: >= 7 s of progress first
    with _memory(tmp_path / "home", emb) as m:
        _log(m, 100)
        with pytest.raises(BackendUnavailableError) as caught:
            m.flush(timeout=STALL_S)
        left = m.status()["backlog"]
        message = str(caught.value)
        assert 0 < left < 100 and emb.batches > 28  # some progress, then the stall
        assert message.startswith(f"{left} interactions not indexed: none was indexed for {STALL_S}s"), message
        assert "embedding service down" in message  # and why


def test_flush_returns_while_another_thread_keeps_logging(tmp_path: Path) -> None:
    """Review finding 3: a thread logs all along, at least one row between any two batches
    flush indexes: flush returns once the rows logged before the call are indexed (each
    batch used to count as progress toward a backlog that never emptied, so it returned
    only when the writer stopped), and every one of them is in Chroma."""
    cap = 3000  # the writer's last row: flush must return long before it
    with SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random") as m:
        m._worker.stop(timeout=30)  # flush alone indexes: no other thread empties the backlog
        before = [id_ for id_, _ in m.log_many([{"messages": [{"role": "user", "content": f"early note {i}"},
                                           {"role": "assistant", "content": "ok"}],
                              "namespace": ["users", "ana"]} for i in range(150)])]
        written = [0]
        done = threading.Event()
        stop = threading.Event()
        moved = threading.Condition()
        asked = threading.Semaphore(1)  # one row before the call; then one after each batch

        def writer() -> None:  # in lockstep with flush's batches: deterministic on any machine
            try:
                for i in range(cap):
                    while not asked.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    m.log([{"role": "user", "content": f"late note {i}"}, {"role": "assistant", "content": "ok"}],
                          namespace=("users", "bob"))
                    with moved:
                        written[0] += 1
                        moved.notify_all()
            finally:
                done.set()
                with moved:
                    moved.notify_all()

        index_batch = m._worker._index

        def batch_then_a_new_row(rows, embeddings):  # noqa: ANN001, ANN202
            """Index a batch, then let the writer log another row first: the backlog is never empty."""
            with moved:
                start = written[0]
            index_batch(rows, embeddings)
            asked.release()
            with moved:
                moved.wait_for(lambda: written[0] > start or done.is_set(), timeout=60)

        m._worker._index = batch_then_a_new_row
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            with moved:  # the writer is under way before the call
                moved.wait_for(lambda: written[0] > 0 or done.is_set(), timeout=60)
            m.flush(timeout=60)
            returned_while_writing = not done.is_set()
        finally:
            stop.set()
            thread.join(120)
            del m._worker._index
        assert returned_while_writing, f"flush returned only after the writer's last row ({written[0]} rows)"
        held = set(m._index.present(before, dict.fromkeys(before, ("users", "ana"))))
        assert held == set(before) and m._journal.unindexed_in(("users", "ana")) == 0


def test_stall_clock_moves_on_with_progress() -> None:
    from seal_agent.memory.index import StallClock

    clock = StallClock(None)
    assert not clock.expired() and clock.left() is None  # None: never
    clock = StallClock(0.0)
    assert clock.expired() and clock.left() == 0.0
    clock = StallClock(3600.0)
    clock.observe(10)
    clock._since -= 3599.5  # as if nothing moved for almost the whole window
    clock.observe(12)  # more rows (new writes): not progress
    assert clock.stalled_s >= 3599.5
    clock.observe(11)  # fewer than at the last look: progress, the window starts again
    assert clock.stalled_s < 3599.5 and not clock.expired()
    clock._since -= 3600.0
    assert clock.expired()
    clock.progress()
    assert not clock.expired()
