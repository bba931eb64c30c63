"""`seal-agent chat`: the example assistant, driven through a real pseudo-terminal and directly.

The pty sessions run the installed ``seal-agent`` command with ``--model tiny-random``
(random weights): it cannot answer anything before training, so the facts it learns
are imported as logged exchanges first, and the chat consolidates them and is asked
closed-book. `ChatApp.handle` tests cover the rest in-process with fast embeddings.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import waits
from facts import FACT_CONFIG, FACTS
from fakes import HashEmbeddings, ScriptedChatModel

from seal_agent import SealMemory
from seal_agent.assistant import ChatApp, _configured_model
from seal_agent.cli import main as cli_main

EXE = Path(sys.executable).parent / "seal-agent"

# tiny-random learns the taught exchanges themselves ("raw"): see seal_agent/demo.py.
# It has no canaries and raw self-edits make no probes, so the gate has nothing to judge
# on: allow that (flagged unverified) where the gate asks; no rehearsal (its random
# answers teach nothing and cost time).
LEARNING = {
    "train": {"learning_rate": FACT_CONFIG.learning_rate, "epochs": FACT_CONFIG.epochs,
              "batch_size": FACT_CONFIG.batch_size, "lora_rank": FACT_CONFIG.lora_rank,
              "lora_alpha": FACT_CONFIG.lora_alpha, "warmup_ratio": FACT_CONFIG.warmup_ratio,
              "rehearsal_size": 0},
    "selfedit": {"strategies": ["raw"]},
    "consolidation": {"teacher": "none"},
    "gate": {"allow_unverified": True},
}
LEARNING_CONFIG = "\n".join(f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                            for section, values in LEARNING.items())


# ------------------------------------------------------------------ a pty driver


class Pty:
    """A child process on a pseudo-terminal, with pexpect-style `expect` (stdlib only).

    The pty is the child's controlling terminal, so Ctrl-C typed into it (``\\x03``)
    reaches the child as SIGINT through the terminal, as it would from a person.
    """

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))

        def become_terminal_owner() -> None:  # runs in the child, after setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     start_new_session=True, preexec_fn=become_terminal_owner)
        os.close(slave)
        self.buffer = ""
        self.pos = 0  # where the next expect starts looking

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        if not data:
            return False
        self.buffer += data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return True

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """Wait for `pattern` in the output. `timeout` bounds a stall, not the wait: the
        child writing output or using CPU (it, or the embedding child it started) is
        progress, so a loaded machine only makes this slower (tests/waits.py)."""
        regex = re.compile(pattern)
        progress = waits.TreeProgress(self.proc.pid)
        while True:
            m = regex.search(self.buffer, self.pos)
            if m:
                self.pos = m.end()
                return m
            before = len(self.buffer)
            alive = self._read(0.5)
            if len(self.buffer) > before:
                progress.touch()
            if not alive or progress.stalled_s() >= timeout:
                if not regex.search(self.buffer, self.pos):
                    alive = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
                    pytest.fail(f"no {pattern!r}, and no progress for {timeout}s (child {alive}); "
                                f"transcript:\n{self.buffer}")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def control(self, char: str) -> None:
        os.write(self.master, bytes([ord(char.upper()) - 64]))  # "c" -> \x03, "d" -> \x04

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status; fails after `timeout` seconds without output or CPU use."""
        progress = waits.TreeProgress(self.proc.pid)
        while self.proc.poll() is None and progress.stalled_s() < timeout:
            before = len(self.buffer)
            self._read(0.2)
            if len(self.buffer) > before:
                progress.touch()
        while self._read(0.05) and self.proc.poll() is not None and select.select([self.master], [], [], 0)[0]:
            pass
        if self.proc.poll() is None:
            pytest.fail(f"the chat did not exit, and made no progress for {timeout}s; transcript:\n{self.buffer}")
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def _env() -> dict[str, str]:
    # One thread per child: the machine is shared; offline: nothing is downloaded.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                TOKENIZERS_PARALLELISM="false", TERM="xterm")


@pytest.fixture
def chat_session(tmp_path: Path) -> Iterator[callable]:
    sessions: list[Pty] = []

    def start(home: Path, *args: str) -> Pty:
        s = Pty([str(EXE), "--home", str(home), "chat", *args], env=_env())
        sessions.append(s)
        return s

    yield start
    for s in sessions:
        s.close()


def _logged(home: Path, namespace: str) -> list[dict]:
    """The interactions of a namespace, through the CLI (as JSON)."""
    out = io.StringIO()
    old, sys.stdout = sys.stdout, out
    try:
        assert cli_main(["--home", str(home), "--json", "memories", "list", "--namespace", namespace]) == 0
    finally:
        sys.stdout = old
    return json.loads(out.getvalue())


# ------------------------------------------------------------------ through a pty


def test_pty_session_teach_consolidate_closed_book_forget(tmp_path: Path, chat_session) -> None:
    """The scripted session: taught facts consolidated, then answered with retrieval off."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(LEARNING_CONFIG, encoding="utf-8")
    facts = FACTS[:2]
    teach = tmp_path / "teach.jsonl"
    teach.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                      {"role": "assistant", "content": a}],
                                         "namespace": "users/ann", "thread_id": "lesson"}) + "\n"
                             for q, a in facts), encoding="utf-8")
    assert cli_main(["--home", str(home), "memories", "import", str(teach)]) == 0

    s = chat_session(home, "--user", "ann", "--model", "tiny-random", "--max-new-tokens", "1800")
    s.expect(r"memories of users/ann: 2, retrieval on")
    s.expect(r"you> ")

    # Ctrl-C during generation cancels that answer, not the app (tiny-random rambles
    # for 1800 tokens, seconds on a CPU).
    s.send("Tell me a very long story.")
    s.expect(r"assistant> \S")
    s.control("c")
    s.expect(r"\[cancelled\]")
    s.expect(r"you> ")

    s.send("/adapters")
    s.expect(r"no adapters yet")
    s.send("/consolidate")
    version = s.expect(r"consolidation: committed -> (v0001\S*) \(now CURRENT\)", timeout=300).group(1)
    s.expect(r"gate: ")
    s.expect(r"you> ")
    s.send("/adapters")
    s.expect(rf"\* {re.escape(version)}\s+committed .*\(CURRENT\)")

    s.send("/retrieval off")
    s.expect(r"retrieval off, new conversation")
    s.send(facts[0][0])
    answer = s.expect(r"assistant> (.*)\n").group(1)
    assert answer.startswith(facts[0][1]), s.buffer  # from the weights: nothing was recalled
    start = s.pos
    s.expect(r"you> ")
    assert "(logged" not in s.buffer[start:s.pos]  # closed-book probing teaches nothing

    s.send("/retrieval on")
    s.expect(r"retrieval on")
    s.send("/new")
    s.send("Please note that the harbour opens at dawn.")  # forgotten below
    s.expect(r"assistant> ")
    forgotten_id = s.expect(r"\(logged (\w+)\)").group(1)
    s.send(facts[1][0])
    s.expect(r"recalled \d+:")
    s.expect(re.escape(f"User: {facts[1][0]} | Assistant: {facts[1][1]}"))
    s.expect(r"assistant> ")
    s.expect(r"\(logged \w+\)")

    s.send("/bogus")
    s.expect(r"error: command='/bogus': unknown command; /help lists them\n")
    s.send("/retrieval sideways")
    s.expect(r"error: /retrieval='sideways': must be 'on' or 'off'\n")
    s.send(f"/forget {forgotten_id}")
    s.expect(r"forgot 1 of 1")
    s.expect(r"you> ")
    s.control("d")
    assert s.wait() == 0
    assert "Traceback" not in s.buffer, s.buffer

    # Every answered turn was logged in users/ann with the chat's thread; the cancelled
    # one was not, and the forgotten one is gone.
    logged = _logged(home, "users/ann")
    assert len(logged) == 3
    chat_turns = [it for it in logged if (it["thread_id"] or "").startswith("chat-")]
    assert [it["task"] for it in chat_turns] == [facts[1][0]]
    assert chat_turns[0]["metadata"].get("channel") == "seal-agent chat"
    assert not any("very long story" in it["task"] for it in logged)
    assert forgotten_id not in {it["id"] for it in logged}
    assert not any(it["task"] == facts[0][0] for it in chat_turns)  # the closed-book turn

    # Forgetting everything asks first (a second session on the same home).
    s = chat_session(home, "--user", "ann", "--model", "tiny-random")
    s.expect(rf"model tiny-random \(adapter: {re.escape(version)}\), memories of users/ann: 3")
    s.send("/forget")
    s.expect(r"forget all 3 memories of users/ann\? \[y/N\] ")
    s.send("n")
    s.expect(r"nothing forgotten")
    s.send("/forget")
    s.expect(r"\[y/N\] ")
    s.send("y")
    s.expect(r"forgot 3 memories of users/ann; new conversation")
    s.expect(r"note: 2 of them had been consolidated: the adapter versions that learned them were deleted")
    s.send("/quit")
    assert s.wait() == 0
    assert "Traceback" not in s.buffer, s.buffer
    assert _logged(home, "users/ann") == []


def test_pty_bad_user_ctrl_c_scheduler_quit(tmp_path: Path, chat_session) -> None:
    home = tmp_path / "home"
    s = chat_session(home, "--user", "a/b", "--model", "tiny-random")
    s.expect(r"error: --user='a/b': must not contain '/'")
    assert s.wait() == 1
    assert "Traceback" not in s.buffer

    # Ctrl-C at the prompt and during an answer, once the embedding child process runs
    # (the first logged turn starts it): the chat goes on, and nothing dies noisily.
    s = chat_session(home, "--user", "ann", "--model", "tiny-random", "--schedule-every", "60",
                     "--max-new-tokens", "1800")
    s.expect(r"scheduler: consolidating every 60 minutes")
    s.expect(r"you> ")
    s.send("Hello.")
    s.expect(r"\(logged \w+\)", timeout=60)
    s.expect(r"you> ")
    # At the prompt: a fresh prompt, not an exit. (A pause first, as a person would make:
    # a SIGINT that lands between the prompt's write and the read() after it is only
    # seen once a line is entered, in any Python REPL.)
    time.sleep(1.0)
    s.control("c")
    s.expect(r"you> ")
    s.send("Tell me a very long story.")
    s.expect(r"assistant> \S")
    s.control("c")
    s.expect(r"\[cancelled\]")
    s.expect(r"you> ")
    s.send("/help")
    s.expect(r"/consolidate .*\n(.*\n)*.*/quit")
    s.send("/new")  # (tiny-random's 1800-token answers would overflow its 2048-token context)
    s.send("Hello again.")  # logged and indexed after the Ctrl-Cs: a killed embedder would say so
    s.expect(r"\(logged \w+\)", timeout=60)
    s.send("/quit")
    assert s.wait() == 0
    assert "Traceback" not in s.buffer and "died" not in s.buffer, s.buffer


@pytest.mark.skipif(os.environ.get("SEAL_SKIP_SMOLLM") == "1", reason="SEAL_SKIP_SMOLLM=1")
def test_pty_smoke_on_smollm2(tmp_path: Path, chat_session) -> None:
    """The default model: start, one streamed answer, /quit."""
    s = chat_session(tmp_path / "home", "--user", "ann", "--max-new-tokens", "24")
    s.expect(r"seal-agent chat: model smollm2-135m", timeout=180)
    s.expect(r"you> ")
    s.send("What is the capital of France?")
    s.expect(r"recalled: nothing")
    answer = s.expect(r"assistant> (.*)\n", timeout=180).group(1)
    assert "Paris" in answer, s.buffer
    s.expect(r"\(logged \w+\)")
    s.send("/quit")
    assert s.wait() == 0
    assert "Traceback" not in s.buffer


# ------------------------------------------------------------------ ChatApp directly


@pytest.fixture
def app_mem(tmp_path: Path) -> Iterator[SealMemory]:
    m = SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random")
    yield m
    m.close()


def _app(mem: SealMemory, **kwargs) -> tuple[ChatApp, io.StringIO]:
    out = io.StringIO()
    options = {"user": "ann", "max_new_tokens": 16, "min_score": None, **kwargs}
    return ChatApp(mem, out=out, **options), out


def test_answer_streams_and_turn_is_logged_in_the_user_namespace(app_mem: SealMemory) -> None:
    app, out = _app(app_mem)
    reply = app.handle("My dog is called Rex.")
    assert reply.kind == "answer"
    assert len(reply.chunks) > 1  # streamed: several deltas, printed as they came
    assert "".join(reply.chunks) == reply.text
    assert f"assistant> {reply.chunks[0]}" in out.getvalue()
    assert len(reply.logged) == 1
    it = app_mem.get(reply.logged[0])
    assert it.namespace == ("users", "ann")
    assert it.thread_id == app.thread_id
    assert it.task == "My dog is called Rex."
    assert it.outcome == reply.text
    assert f"(logged {it.id})" in out.getvalue()
    assert app_mem.list(namespace=("users", "bob")) == []


def test_recalled_memories_are_shown_and_put_into_the_prompt(app_mem: SealMemory) -> None:
    app_mem.log([{"role": "user", "content": "My dog is called Rex."},
                 {"role": "assistant", "content": "Noted."}], namespace=("users", "ann"))
    app_mem.log([{"role": "user", "content": "My dog is called Bolt."},
                 {"role": "assistant", "content": "Noted."}], namespace=("users", "bob"))
    fake = ScriptedChatModel(["Your dog is called Rex.", "I do not know."])
    app, out = _app(app_mem, k=3)
    app.memory = _WithChat(app_mem, fake)
    reply = app.handle("What is my dog called?")
    assert [m.namespace for m in reply.recalled] == [("users", "ann")]  # never bob's
    shown = out.getvalue()
    assert "recalled 1:" in shown
    assert f"{reply.recalled[0].id}  User: My dog is called Rex. | Assistant: Noted." in shown
    system = fake.prompts[-1][0].text  # what the middleware put into the prompt: the same memory
    assert "My dog is called Rex." in system and "Bolt" not in system
    assert reply.chunks == ["Your", " ", "dog", " ", "is", " ", "called", " ", "Rex."]

    app.handle("/retrieval off")
    reply = app.handle("What is my dog called?")
    assert reply.recalled == []
    assert "Rex" not in fake.prompts[-1][0].text
    assert "recalled" not in out.getvalue().split("retrieval off")[-1]


class _WithChat:
    """A SealMemory whose served model is a scripted stand-in (to see the prompts)."""

    def __init__(self, mem: SealMemory, chat) -> None:
        self._mem, self._chat = mem, chat

    def chat_model(self, **fields):
        return self._chat

    def __getattr__(self, name: str):
        return getattr(self._mem, name)


def test_forget_all_asks_first_and_forget_ids_stays_in_namespace(app_mem: SealMemory) -> None:
    other = app_mem.log([{"role": "user", "content": "hi"}], namespace=("users", "bob"))
    answers: list[bool] = []
    app, out = _app(app_mem, confirm=lambda prompt: answers.pop(0))
    first = app.handle("Hello there.").logged[0]
    app.handle("How are you?")

    reply = app.handle(f"/forget {first} {other}")
    assert "forgot 1 of 2 (the others are not memories of users/ann)" in reply.text
    assert app_mem.get(other)  # bob's memory is untouched

    answers.append(False)
    assert app.handle("/forget").text == "nothing forgotten"
    assert len(app_mem.list(namespace=("users", "ann"))) == 1
    answers.append(True)
    thread = app.thread_id
    assert app.handle("/forget").text.startswith("forgot 1 memories of users/ann")
    assert app_mem.list(namespace=("users", "ann")) == []
    assert app.thread_id != thread  # the chat history went too
    assert "users/ann has no memories" in app.handle("/forget").text


def test_commands_errors_and_quit(app_mem: SealMemory) -> None:
    app, out = _app(app_mem)
    assert app.handle("   ").kind == "empty"
    for line, message in [("/bogus", "command='/bogus': unknown command; /help lists them"),
                          ("/retrieval maybe", "/retrieval='maybe': must be 'on' or 'off'"),
                          ("/adapters now", "/adapters='now': takes no arguments")]:
        reply = app.handle(line)
        assert (reply.kind, reply.error) == ("error", message)
        assert f"error: {message}\n" in out.getvalue()
    assert "no adapters yet" in app.handle("/adapters").text
    assert "/consolidate" in app.handle("/help").text
    assert app.handle("/retrieval").text == "retrieval is on"
    assert app.handle("/quit").kind == "quit"
    assert app.handle("/EXIT").kind == "quit"
    assert "Traceback" not in out.getvalue()


def test_consolidate_then_closed_book_answer_comes_from_the_weights(app_mem: SealMemory) -> None:
    for q, a in FACTS[:2]:
        app_mem.log([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    namespace=("users", "ann"))
    app_mem.config = app_mem.config.with_overrides(**LEARNING)
    app, out = _app(app_mem, retrieval=False)
    before = app.handle(FACTS[0][0])
    assert not before.text.startswith(FACTS[0][1])
    assert before.logged == [] and not [it for it in app_mem.list() if it.thread_id == app.thread_id]

    reply = app.handle("/consolidate")
    assert reply.report.verdict == "committed"
    assert f"consolidation: committed -> {reply.report.version} (now CURRENT)" in reply.text
    assert "gate: " in reply.text
    listing = app.handle("/adapters").text
    assert listing.startswith(f"* {reply.report.version}") and "(CURRENT)" in listing

    app.handle("/new")
    after = app.handle(FACTS[0][0])
    assert after.recalled == []
    assert after.text.startswith(FACTS[0][1])
    assert app.chat.adapter == reply.report.version


def test_cancel_stops_the_answer_and_nothing_is_logged(app_mem: SealMemory) -> None:
    class CancelAfter(io.StringIO):
        """Output that 'presses Ctrl-C' once three deltas of the answer were printed."""

        app: ChatApp | None = None
        deltas = -1  # counting starts at "assistant> "

        def write(self, text: str) -> int:
            if text == "assistant> " or self.deltas >= 0:
                self.deltas += 1
            if self.app is not None and self.deltas == 3:
                self.app.cancel.set()
            return super().write(text)

    out = CancelAfter()
    app = ChatApp(app_mem, user="ann", out=out, max_new_tokens=1500, min_score=None)
    out.app = app
    reply = app.handle("Tell me a story.")
    assert reply.kind == "cancelled"
    assert 3 <= len(reply.chunks) < 200  # stopped within a few tokens, far from 1500
    assert "[cancelled]" in out.getvalue()
    assert app_mem.list(namespace=("users", "ann")) == []
    out.app = None
    app.cancel.clear()
    assert app.handle("Hello.").kind == "answer"  # the app goes on


def test_model_choice_reads_config(tmp_path: Path) -> None:
    assert _configured_model(tmp_path) is None
    (tmp_path / "config.toml").write_text('[model]\nname_or_path = "tiny-random"\n', encoding="utf-8")
    assert _configured_model(tmp_path) == "tiny-random"


# ------------------------------------------------------------------ issue 22, item 10 (chat)


def test_issue22_non_utf8_byte_on_stdin_is_one_line_and_the_chat_goes_on(tmp_path: Path) -> None:
    """One byte that is not UTF-8 (a Latin-1 'é') on stdin ended the chat with a
    UnicodeDecodeError traceback. Now the line is named as bad input, nothing is answered
    or logged for it, and the next line is answered and logged."""
    home = tmp_path / "home"
    proc = waits.run(
        [sys.executable, "-m", "seal_agent.cli", "--home", str(home), "chat", "--user", "ann",
         "--model", "tiny-random", "--max-new-tokens", "4"],
        input=b"caf\xe9 au lait?\nHello.\n/quit\n", env={**_env(), "PYTHONPATH": str(Path(__file__).parents[1])})
    out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0 and "Traceback" not in out + err, out + err
    bad = [line for line in out.splitlines() if "error:" in line]
    assert len(bad) == 1 and "input=b'caf\\xe9 au lait?': is not UTF-8 text (byte 0xe9" in bad[0], out
    assert out.count("assistant> ") == 1 and re.search(r"\(logged \w+\)", out), out  # "Hello." only
    logged = _logged(home, "users/ann")
    assert [m["messages"][0]["content"] for m in logged] == ["Hello."]


def test_issue22_handle_refuses_text_that_is_not_utf8(app_mem: SealMemory) -> None:
    app, out = _app(app_mem)
    reply = app.handle("caf\udce9")  # how stdin (errors="surrogateescape") hands over the byte 0xe9
    assert reply.kind == "error" and "is not UTF-8 text (byte 0xe9 at character 3)" in reply.error
    assert out.getvalue().count("\n") == 1 and app_mem.list() == []
    assert app.handle("/new").kind == "command"


def test_issue22_an_error_spanning_lines_is_printed_on_one(app_mem: SealMemory, monkeypatch) -> None:
    """A journal on a Postgres server that went away: psycopg's message has a second line
    ("\tIs the server running...?"); the chat prints one line and goes on."""
    from seal_agent.errors import BackendUnavailableError

    def down(*args, **kwargs):
        raise BackendUnavailableError('connection refused\n\tIs the server running on that host?')

    app, out = _app(app_mem)
    monkeypatch.setattr(app_mem, "recall", down)
    reply = app.handle("Where is my dog?")
    assert reply.kind == "error" and out.getvalue() == (
        "error: connection refused Is the server running on that host?\n")
