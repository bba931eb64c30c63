"""The embedding child process: texts in, vectors out, over one socket.

Started by `SubprocessEmbeddings` as ``python -c`` running `main` (never through
`multiprocessing`): the ``spawn`` start method re-imports the caller's ``__main__``
module in the child, so a user's script without ``if __name__ == "__main__"`` ran its
top level twice. This module imports nothing of the caller's.

Protocol (a `multiprocessing.connection.Connection` over the socket): the parent sends
a list of texts, the child answers ``("ok", float32 array)`` or ``("error", message)``;
``None`` or a closed socket ends the child.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

logger = logging.getLogger("seal_agent.memory.embed_child")


def serve(conn: Connection, device: str | None, batch_size: int) -> None:
    """Answer embedding requests until the parent closes the socket."""
    # The child shares the terminal's process group: a Ctrl-C meant for the app (a chat
    # answer, `seal-agent schedule`) must not kill it. It still ends when its socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import numpy as np
    import torch

    from seal_agent.memory.embeddings import MiniLMEmbeddings

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    model = MiniLMEmbeddings(device=device, batch_size=batch_size)
    # Load the model at normal priority (it is most of the child's CPU work, and a
    # reniced load under a busy machine took minutes), then step back: steady-state
    # batches are background work and the serving process (log(), recall) goes first.
    model.embed_documents(["warm-up"])
    os.nice(10)
    while True:
        try:
            texts = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if texts is None:
            return
        try:
            conn.send(("ok", np.asarray(model.embed_documents(texts), dtype=np.float32)))
        except Exception as exc:  # report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``argv = [socket_fd, device or "", batch_size]``."""
    args = sys.argv[1:] if argv is None else argv
    fd, device, batch_size = int(args[0]), args[1] or None, int(args[2])
    logging.basicConfig(level=logging.WARNING, format="seal-embedder: %(levelname)s %(message)s")
    serve(Connection(fd), device, batch_size)
