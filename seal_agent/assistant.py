"""An example assistant people can talk to: ``seal-agent chat``.

A terminal chat on the served model (SmolLM2-135M-Instruct by default), built the way
an application would build it: ``langchain.agents.create_agent`` over
`SealMemory.chat_model` with `SealMemory.middleware`. Each turn:

1. the memories recalled for the message are shown (the middleware puts the same ones
   into the system prompt: same query, namespace, k and min_score);
2. the answer streams to the terminal token by token;
3. the middleware logs the exchange in ``("users", NAME)``; its id is shown.

Slash commands (``/help``) consolidate, forget, list adapters and switch retrieval off
so that, after a consolidation, one can ask closed-book: what the model answers then
comes from its weights. Ctrl-C during an answer or a consolidation cancels it, not the
app; Ctrl-D or ``/quit`` leaves.

`ChatApp` holds the logic (``handle(line)`` for one input line, output written to a
stream), `run_repl` the input loop, `run_chat` what the CLI calls.
"""

from __future__ import annotations

import getpass
import logging
import queue
import re
import sys
import threading
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from seal_agent.errors import SealAgentError, ValidationError
from seal_agent.memory.records import Memory, Namespace, utc_now, validate_namespace

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from seal_agent.consolidation import ConsolidationReport
    from seal_agent.seal_memory import SealMemory

__all__ = ["DEFAULT_CHAT_MODEL", "DEFAULT_SYSTEM_PROMPT", "ChatApp", "Reply", "run_chat", "run_repl"]

logger = logging.getLogger(__name__)

DEFAULT_CHAT_MODEL = "smollm2-135m"
"""Served when neither ``--model`` nor ``[model] name_or_path`` in config.toml names one."""

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."

DEFAULT_K = 3
"""Memories per message: a 135M model is easily led astray by a long context."""

DEFAULT_MIN_SCORE = 0.2
"""Memories less similar than this (cosine; the demo's threshold) stay out of the prompt."""

HISTORY_TURNS = 6
"""Exchanges of the current conversation kept in the prompt (older ones are dropped;
they are in the episodic memory anyway)."""

HELP = """\
commands:
  /consolidate        learn from new interactions now (self-edits, LoRA, gate); Ctrl-C cancels
  /retrieval on|off   recall memories into the prompt, or not (off also starts a new
                      conversation: answers then come from the weights alone, and
                      those turns are not logged, so nothing learns from them)
  /forget [ID...]     forget all of this user's memories (asks first), or the given ones
  /adapters           adapter versions; * marks CURRENT
  /new                start a new conversation (the chat history is dropped; memories stay)
  /help               this text
  /quit               leave (also Ctrl-D)
Ctrl-C during an answer cancels that answer (it is not logged)."""

ReplyKind = Literal["answer", "cancelled", "command", "empty", "error", "quit"]


@dataclass
class Reply:
    """What `ChatApp.handle` did with one input line.

    Attributes:
        kind: ``answer``, ``cancelled`` (an answer or consolidation stopped by Ctrl-C),
            ``command``, ``empty`` (a blank line), ``error`` (printed as one line) or
            ``quit``.
        text: The answer, or a command's output.
        chunks: The answer as streamed, one delta per item.
        recalled: The memories shown (and put into the prompt) for this message.
        logged: Ids of the interactions logged for this turn.
        report: The consolidation report, for ``/consolidate``.
        error: The error message, for ``error``.
    """

    kind: ReplyKind
    text: str = ""
    chunks: list[str] = field(default_factory=list)
    recalled: list[Memory] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    report: ConsolidationReport | None = None
    error: str | None = None


class _Cancelled(BaseException):
    """Raised inside generation to stop it. A BaseException so that LangChain's callback
    manager neither logs it as a failing callback nor swallows it."""


def _cancel_handler(event: threading.Event) -> Any:
    """A callback handler that stops generation at the next token once `event` is set."""
    from langchain_core.callbacks import BaseCallbackHandler

    class _CancelOnRequest(BaseCallbackHandler):
        raise_error = True

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            if event.is_set():
                raise _Cancelled

    return _CancelOnRequest()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _printable(text: str) -> str:
    """Text safe for a terminal: control characters (escape sequences included) shown as '?'."""
    return _CONTROL.sub("?", text)


def _single_line(text: str) -> str:
    """An error message on one line: a driver's may span several (psycopg's "connection
    refused" adds "\n\tIs the server running...?")."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _one_line(text: str, limit: int = 110) -> str:
    text = _printable(" | ".join(part.strip() for part in text.splitlines() if part.strip()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_utf8(text: str) -> None:
    """Raise ValidationError for a line holding bytes that were not UTF-8.

    `run_chat` reads stdin with ``errors="surrogateescape"``, so such a byte arrives as a
    lone surrogate instead of killing the input loop with a UnicodeDecodeError; the
    journal would refuse it anyway, after the model had answered. Named here, at once.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes as they were typed
        bad = text[exc.start].encode("utf-8", "surrogateescape")
        raise ValidationError("input", raw, f"is not UTF-8 text (byte 0x{bad.hex()} at character {exc.start}); "
                                            "the line was ignored, nothing was answered or logged") from None


def _reading_undecodable_bytes() -> None:
    """Let stdin pass bytes that are not UTF-8 through as lone surrogates (see `_check_utf8`).

    With the default ``errors="strict"``, one such byte (a pasted Latin-1 line, a binary
    file piped in) raised UnicodeDecodeError out of `input` and ended the chat with a
    traceback. `input` decodes a terminal's line with these same settings.
    """
    stdin = sys.stdin
    if stdin is not None and hasattr(stdin, "reconfigure") and stdin.errors == "strict":
        try:
            stdin.reconfigure(errors="surrogateescape")
        except (OSError, ValueError):  # a detached or closed stream: nothing to read anyway
            logger.debug("cannot reconfigure stdin", exc_info=True)


def _user_namespace(user: str) -> Namespace:
    try:
        return validate_namespace(("users", user))
    except ValidationError as exc:
        raise ValidationError("--user", user, exc.reason) from None


def default_user() -> str:
    """The OS user name, or ``"me"`` when there is none."""
    try:
        return getpass.getuser() or "me"
    except Exception:  # no passwd entry, no $USER: getuser raises OSError or KeyError
        return "me"


class ChatApp:
    """The assistant behind ``seal-agent chat``: one input line at a time, output to a stream.

    Args:
        memory: The memory home; its served model answers (``memory.chat_model()``).
        user: Whose memories: turns are logged in and recalled from ``("users", user)``.
            Default: the OS user name, else ``"me"``.
        retrieval: Recall memories into the prompt (``/retrieval`` switches it).
        system_prompt: The agent's system prompt ("" for none).
        k: Memories per message (None: ``memory.recall_k``).
        min_score: Memories less similar than this are not recalled.
        max_new_tokens: Longest answer in tokens; default ``model.max_new_tokens``
            (applies when this app is the first to load the chat model).
        out: Where output goes (default: stdout); answers are written as they stream.
        confirm: Asks a yes/no question (``/forget``); default: `input`, "y" means yes.
        scheduler: A running `ConsolidationScheduler`; its runs are announced.

    Raises:
        ValidationError: `user` is not a valid namespace label (empty, or contains "/").
    """

    def __init__(
        self,
        memory: SealMemory,
        *,
        user: str | None = None,
        retrieval: bool = True,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        k: int | None = DEFAULT_K,
        min_score: float | None = DEFAULT_MIN_SCORE,
        max_new_tokens: int | None = None,
        out: TextIO | None = None,
        confirm: Callable[[str], bool] | None = None,
        scheduler: Any = None,
    ) -> None:
        self.memory = memory
        self.user = user if user is not None else default_user()
        self.namespace: Namespace = _user_namespace(self.user)
        self.retrieval = retrieval
        self.system_prompt = system_prompt
        self.k = k
        self.min_score = min_score
        self.out = out if out is not None else sys.stdout
        self.confirm = confirm or _ask_yes_no
        self.scheduler = scheduler
        self.cancel = threading.Event()  # set (Ctrl-C) to stop the running answer or consolidation
        self._fields = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        self._history: list[BaseMessage] = []
        self._thread_id = self._new_thread_id()
        self._seen_until: Any = None  # finished_at of the last scheduler run announced
        self._commands: dict[str, Callable[[list[str]], Reply]] = {
            "/consolidate": self._cmd_consolidate, "/retrieval": self._cmd_retrieval,
            "/forget": self._cmd_forget, "/adapters": self._cmd_adapters, "/new": self._cmd_new,
            "/help": self._cmd_help, "/quit": self._cmd_quit, "/exit": self._cmd_quit,
        }

    # ------------------------------------------------------------------ output

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _say(self, text: str = "") -> None:
        self._write(text + "\n")

    # ------------------------------------------------------------------ public

    @property
    def chat(self) -> Any:
        """The served `AdaptiveChatModel` (loaded on first use)."""
        return self.memory.chat_model(**self._fields)

    @property
    def thread_id(self) -> str:
        """The current conversation's thread id (logged with each turn)."""
        return self._thread_id

    def banner(self) -> str:
        """The greeting: model, adapter, whose memories, retrieval state."""
        chat = self.chat
        count = len(self.memory.list(namespace=self.namespace))
        return (f"seal-agent chat: model {chat.model_id} (adapter: {chat.adapter or 'none, base weights'}), "
                f"memories of {'/'.join(self.namespace)}: {count}, retrieval {'on' if self.retrieval else 'off'}.\n"
                "Type a message; /help lists commands; Ctrl-D quits.")

    def handle(self, line: str) -> Reply:
        """Act on one input line: a slash command or a message to answer.

        Errors of seal_agent (bad commands, bad input) are printed as one line and
        returned as ``Reply(kind="error")``; anything else propagates.
        """
        text = line.strip()
        if not text:
            return Reply("empty")
        try:
            _check_utf8(text)
            if text.startswith("/"):
                name, *args = text.split()
                command = self._commands.get(name.lower())
                if command is None:
                    raise ValidationError("command", name, "unknown command; /help lists them")
                return command(args)
            return self.ask(text)
        except SealAgentError as exc:
            message = _single_line(str(exc))
            self._say(f"error: {message}")
            return Reply("error", error=message)

    def notices(self) -> list[str]:
        """Lines about scheduled consolidations that finished since the last call (printed too)."""
        if self.scheduler is None:
            return []
        # The history is bounded (the oldest records drop out): go by time, not by count.
        new = [r for r in self.scheduler.history if self._seen_until is None or r.finished_at > self._seen_until]
        if new:
            self._seen_until = new[-1].finished_at
        lines = []
        for record in new:
            report = record.report
            if record.outcome == "completed" and report is not None:
                lines.append(f"[scheduler] consolidation ({record.trigger}): {_verdict_line(report)}")
            elif record.outcome == "error":
                lines.append(f"[scheduler] consolidation ({record.trigger}) failed: {record.error}")
        for line in lines:
            self._say(line)
        return lines

    # ------------------------------------------------------------------ answers

    def ask(self, text: str) -> Reply:
        """Answer `text`: show recalled memories, stream the answer, report the logged id.

        Ctrl-C (KeyboardInterrupt in the calling thread) or setting `cancel` stops the
        answer at the next token; a cancelled turn is neither logged nor kept in the
        conversation.
        """
        from langchain.agents import create_agent
        from langchain_core.messages import AIMessageChunk, HumanMessage

        text = text.strip()
        if not text:
            return Reply("empty")
        recalled: list[Memory] = []
        if self.retrieval:
            recalled = self.memory.recall(text, namespace=self.namespace, k=self.k, min_score=self.min_score)
            self._show_recalled(recalled)
        # A fresh middleware (and agent: compiling one takes about a millisecond) per turn:
        # the middleware caches its recall per (namespace, message) for the tool loop of a
        # turn, and that cache must not outlive the turn (a repeated question after
        # /forget or after new memories must recall afresh, as shown above).
        # Retrieval off is closed-book probing of what the weights know: those turns are
        # not logged, or the next consolidation would learn the model's own guesses.
        middleware = self.memory.middleware(namespace=self.namespace, k=self.k, min_score=self.min_score,
                                            recall=self.retrieval, log=self.retrieval,
                                            metadata={"channel": "seal-agent chat"})
        agent = create_agent(self.chat, tools=[], system_prompt=self.system_prompt or None,
                             middleware=[middleware])
        messages = [*self._history, HumanMessage(text)]
        config = {"configurable": {"thread_id": self._thread_id, "user_id": self.user},
                  "callbacks": [_cancel_handler(self.cancel)]}
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        started = utc_now()

        def work() -> None:  # generation runs here; the calling thread only prints
            try:
                for mode, event in agent.stream({"messages": messages}, config, stream_mode=["messages", "values"]):
                    events.put((mode, event))
            except BaseException as exc:  # handed to the calling thread
                events.put(("error", exc))
            finally:
                events.put(("end", None))

        self.cancel.clear()
        worker = threading.Thread(target=work, name="seal-chat-answer", daemon=True)
        chunks: list[str] = []
        final: dict[str, Any] | None = None
        failure: BaseException | None = None
        self._write("assistant> ")
        try:
            worker.start()
            while (item := events.get())[0] != "end":
                mode, event = item
                if mode == "messages":
                    chunk, meta = event
                    if isinstance(chunk, AIMessageChunk) and meta.get("langgraph_node") == "model" and chunk.text:
                        chunks.append(chunk.text)
                        self._write(_printable(chunk.text))
                elif mode == "values":
                    final = event
                else:
                    failure = event
        except KeyboardInterrupt:
            self.cancel.set()
        if self.cancel.is_set() or isinstance(failure, _Cancelled):
            self.cancel.set()
            _join(worker)
            self._say(" [cancelled]")
            return Reply("cancelled", text="".join(chunks), chunks=chunks, recalled=recalled)
        worker.join()
        self._say()
        if failure is not None:
            raise failure
        answer = "".join(chunks)
        if final is not None:
            out = list(final["messages"])
            answer = out[-1].text if out else answer
            self._history = _last_turns(out, HISTORY_TURNS)
        logged = [it.id for it in self.memory.list(namespace=self.namespace, since=started)
                  if it.thread_id == self._thread_id]
        if logged:
            self._say(f"  (logged {', '.join(logged)})")
        return Reply("answer", text=answer, chunks=chunks, recalled=recalled, logged=logged)

    def _show_recalled(self, memories: list[Memory]) -> None:
        if not memories:
            self._say("  recalled: nothing")
            return
        self._say(f"  recalled {len(memories)}:")
        for m in memories:
            self._say(f"    {m.score:.2f}  {m.id}  {_one_line(m.text)}")

    # ------------------------------------------------------------------ commands

    def _no_args(self, name: str, args: list[str]) -> None:
        if args:
            raise ValidationError(name, " ".join(args), "takes no arguments")

    def _cmd_help(self, args: list[str]) -> Reply:
        self._say(HELP)
        return Reply("command", text=HELP)

    def _cmd_quit(self, args: list[str]) -> Reply:
        return Reply("quit")

    def _cmd_new(self, args: list[str]) -> Reply:
        self._no_args("/new", args)
        self.new_conversation()
        return self._done("new conversation")

    def new_conversation(self) -> None:
        """Drop the chat history and start a new thread (memories are untouched)."""
        self._history = []
        self._thread_id = self._new_thread_id()

    def _new_thread_id(self) -> str:
        return f"chat-{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"

    def _done(self, text: str) -> Reply:
        self._say(text)
        return Reply("command", text=text)

    def _cmd_retrieval(self, args: list[str]) -> Reply:
        if not args:
            return self._done(f"retrieval is {'on' if self.retrieval else 'off'}")
        if len(args) != 1 or args[0].lower() not in ("on", "off"):
            raise ValidationError("/retrieval", " ".join(args), "must be 'on' or 'off'")
        self.retrieval = args[0].lower() == "on"
        if self.retrieval:
            return self._done("retrieval on: recalled memories go into the prompt")
        self.new_conversation()  # closed-book means nothing if the chat history holds the answer
        return self._done("retrieval off, new conversation: answers now come from the model's weights alone "
                          "(these turns are not logged)")

    def _cmd_adapters(self, args: list[str]) -> Reply:
        self._no_args("/adapters", args)
        versions = self.memory.adapters.list()
        if not versions:
            return self._done("no adapters yet (the base model serves); /consolidate makes one")
        lines = [f"{'*' if v.is_current else ' '} {v.version}  {v.verdict:9}  parent={v.parent}  scale={v.scale:g}"
                 + ("  UNVERIFIED" if getattr(v, "unverified", False) else "")
                 + ("  (CURRENT)" if v.is_current else "") for v in versions]
        if self.memory.adapters.current is None:
            lines.append("(no CURRENT: the base model serves)")
        return self._done("\n".join(lines))

    def _cmd_forget(self, args: list[str]) -> Reply:
        ns = "/".join(self.namespace)
        if args:
            consolidated = self._consolidated(args)
            n = self.memory.forget(namespace=self.namespace, ids=args).forgotten
            text = f"forgot {n} of {len(args)}" + ("" if n == len(args) else f" (the others are not memories of {ns})")
        else:
            items = self.memory.list(namespace=self.namespace)
            if not items:
                return self._done(f"{ns} has no memories")
            if not self.confirm(f"forget all {len(items)} memories of {ns}? [y/N] "):
                return self._done("nothing forgotten")
            consolidated = sum(1 for it in items if it.status.value == "consolidated")
            n = self.memory.forget(namespace=self.namespace).forgotten
            self.new_conversation()  # the history holds the forgotten exchanges too
            text = f"forgot {n} memories of {ns}; new conversation"
        if consolidated:
            text += (f"\nnote: {consolidated} of them had been consolidated: the adapter versions that learned them "
                     "were deleted and an earlier one (or the base model) serves now (README: Privacy model)")
        return self._done(text)

    def _consolidated(self, ids: list[str]) -> int:
        count = 0
        for id_ in ids:
            try:
                it = self.memory.get(id_)
            except SealAgentError:
                continue
            count += it.namespace == self.namespace and it.status.value == "consolidated"
        return count

    def _cmd_consolidate(self, args: list[str]) -> Reply:
        self._no_args("/consolidate", args)
        waiting = len(self.memory.list(status="new"))
        self._say(f"consolidating {waiting} new interactions (Ctrl-C cancels; nothing is committed then)...")
        result: list[Any] = []

        def work() -> None:
            try:
                result.append(self.memory.consolidate(progress=True, cancel_event=self.cancel))
            except BaseException as exc:
                result.append(exc)

        self.cancel.clear()
        worker = threading.Thread(target=work, name="seal-chat-consolidate", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
        except KeyboardInterrupt:
            self.cancel.set()
            self._say("\ncancelling at the next step...")
            _join(worker)
        if isinstance(result[0], BaseException):
            raise result[0]
        report = result[0]
        lines = [f"consolidation: {_verdict_line(report)}"]
        gate = report.gate or {}
        for reason in gate.get("reasons", []) or []:
            lines.append(f"  gate: {reason}")
        if report.counts:
            lines.append("  counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
        text = "\n".join(lines)
        self._say(text)
        kind: ReplyKind = "cancelled" if report.reason == "cancelled" else "command"
        return Reply(kind, text=text, report=report)


def _verdict_line(report: Any) -> str:
    line = str(report.verdict)
    if report.version:
        line += f" -> {report.version}" + (" (now CURRENT)" if report.verdict == "committed" else "")
    if report.reason:
        line += f" ({report.reason})"
    return line


def _join(worker: threading.Thread) -> None:
    """Wait for a cancelled worker; further Ctrl-Cs while it winds down are ignored."""
    while worker.is_alive():
        try:
            worker.join(0.1)
        except KeyboardInterrupt:
            pass


def _last_turns(messages: list[BaseMessage], turns: int) -> list[BaseMessage]:
    """The messages from the `turns`-th last human message on."""
    from langchain_core.messages import HumanMessage

    starts = [i for i, m in enumerate(messages) if isinstance(m, HumanMessage)]
    return messages[starts[-turns]:] if len(starts) > turns else messages


def _ask_yes_no(prompt: str) -> bool:
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        print()
        return False


# ----------------------------------------------------------------------- the loop


def run_repl(app: ChatApp, *, read: Callable[[str], str] = input) -> int:
    """Read lines until ``/quit`` or EOF; returns the exit code (0).

    Ctrl-C at the prompt clears the line; during an answer or a consolidation it
    cancels that (see `ChatApp.ask`). Errors are printed as one line, never a traceback.
    """
    app._say(app.banner())
    while True:
        app.notices()
        try:
            line = read("you> ")
        except EOFError:
            app._say()
            return 0
        except KeyboardInterrupt:  # the terminal has echoed ^C
            app._say()
            continue
        try:
            reply = app.handle(line)
        except KeyboardInterrupt:  # between the steps that handle it themselves
            app._say(" [cancelled]")
            continue
        except Exception as exc:  # a bug or a library failure: one line; the traceback with -vv
            logger.debug("while handling %r", line, exc_info=True)
            app._say(f"error: {type(exc).__name__}: {_single_line(str(exc))}")
            continue
        if reply.kind == "quit":
            return 0


def _configured_model(home: Path) -> str | None:
    """``[model] name_or_path`` when the home's config.toml sets it."""
    path = home / "config.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None  # missing; a broken file is reported by SealMemory with the field
    value = data.get("model", {}).get("name_or_path") if isinstance(data.get("model"), dict) else None
    return value if isinstance(value, str) and value.strip() else None


def run_chat(args: Any) -> int:
    """``seal-agent chat``: the arguments come from the CLI's parser."""
    from seal_agent.seal_memory import SealMemory

    home = Path(args.home).expanduser()
    model = args.model or _configured_model(home) or DEFAULT_CHAT_MODEL
    try:  # transformers' weight-loading bar is noise in a chat
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    if args.user is not None:
        _user_namespace(args.user)  # fail before loading anything
    _reading_undecodable_bytes()
    print(f"loading {model}...", flush=True)
    with SealMemory(home, chroma_url=args.chroma_url, model=model) as mem:
        scheduler = None
        if args.schedule_every is not None:
            # An in-memory job store: this scheduler lives as long as the chat, and must
            # not share a persistent store with a `seal-agent schedule` daemon.
            scheduler = mem.start_scheduler(interval_minutes=args.schedule_every, jobstore_url=None)
            print(f"scheduler: consolidating every {args.schedule_every:g} minutes while the chat runs", flush=True)
        try:
            app = ChatApp(mem, user=args.user, retrieval=not args.no_retrieval,
                          system_prompt=args.system if args.system is not None else DEFAULT_SYSTEM_PROMPT,
                          k=args.k or DEFAULT_K, max_new_tokens=args.max_new_tokens, scheduler=scheduler)
            return run_repl(app)
        finally:
            if scheduler is not None:
                scheduler.cancel()  # a running consolidation stops at its next step
                mem.stop_scheduler()
