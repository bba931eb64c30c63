"""AdaptiveChatModel: a LangChain chat model over a local causal LM with a swappable LoRA adapter.

    chat = AdaptiveChatModel.load("tiny-random", max_new_tokens=64)
    chat.invoke("hello")                    # base model
    chat.use_adapter("home/adapters/v0003") # a PEFT adapter folder (or a version, with `resolver`)
    chat.bind_tools([get_weather]).invoke("weather in Paris?")

Every request -- invoke, ainvoke, stream, astream -- runs through one generator
(`_run`): the prompt is rendered with the tokenizer's chat template, generation runs
in a worker thread under the adapter lock (see `_adapters`), and text comes back as
deltas that never include a partial stop sequence or tool-call tag. `invoke` joins
the same deltas `stream` yields, so the two agree exactly.

Many prompts at once (self-edits, sampled n times each) go through `generate_batch`
instead: several prompts per forward pass, on one adapter for the whole batch.

Which adapter serves a request, first match wins: an explicit ``adapter=`` of
`generate_batch`; an enclosing ``with chat.pinned(adapter):``; ``route`` (per request,
from the run's LangGraph config and runtime context: one adapter per tenant, several
loaded on one base, the least recently used evicted -- see `_adapters`); else the
default adapter (`use_adapter`, or ``follow``'s version).

Tools use the Hermes convention: the model writes
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; `parse_tool_calls` turns
that into ``AIMessage.tool_calls``, and anything malformed into
``invalid_tool_calls`` (never an exception).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr

from seal_agent.errors import TrainingCancelled, ValidationError
from seal_agent.model._adapters import BASE, DEFAULT, AdapterHost, AdapterTarget
from seal_agent.model._adapters import DEFAULT_MAX_LOADED as _DEFAULT_MAX_LOADED
from seal_agent.model._batch import (
    DEFAULT_MAX_BATCH_TOKENS,
    CancelFlags,
    Sample,
    generate_chunk,
    plan_chunks,
)
from seal_agent.model._batch import find_stop as _find_stop
from seal_agent.model._hermes import (
    TOOL_CALL_OPEN,
    ParsedOutput,
    parse_tool_calls,
    to_chat_dicts,
    with_tool_preamble,
)
from seal_agent.model._template import ensure_chat_template, template_supports_tools

__all__ = ["AdaptiveChatModel", "ParsedOutput", "parse_tool_calls"]

logger = logging.getLogger(__name__)

_NOT_FOLLOWED = object()  # `_followed` before the first look at `follow()`
_UNSET: Any = object()  # no explicit adapter: pin, route or default decide

AdapterChoice = str | os.PathLike[str] | None
"""An adapter folder, a version for ``resolver``, or None for the base model."""


@dataclass
class _Request:
    """One generation's settings, merged from the model's fields and call kwargs."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    tools: list[dict[str, Any]] | None


@dataclass
class _Final:
    """What the generator knows once generation has ended."""

    delta: str  # text not yet yielded
    parsed: ParsedOutput | None  # None when no tools are bound
    finish_reason: str  # "stop" | "length" | "tool_calls"
    input_tokens: int
    output_tokens: int
    adapter: str | None = None  # label of the adapter that generated it; None = base


class AdaptiveChatModel(BaseChatModel):
    """A LangChain chat model over a local causal LM whose LoRA adapter can be hot-swapped.

    Build with `load` (a name or folder, like `load_model`) or from an already
    loaded ``model`` and ``tokenizer``. The model is owned from then on: swapping
    in an adapter injects LoRA layers into it, so do not train the same object.

    Adapters: `use_adapter` takes a PEFT adapter folder, a version (looked up with
    `resolver`), or None for the base model. With `follow` set (a callable returning
    the registry's CURRENT version), each request first checks it and swaps when it
    changed; an adapter that fails to load is logged and the old one keeps serving.

    Per-request adapters: with `route` set, every request (invoke, stream, tools,
    `generate_batch`) asks ``route(config, context)`` -- the run's LangGraph config and
    its runtime context, ``({}, None)`` outside a graph -- which adapter serves it;
    `follow` is then not consulted. Up to `max_loaded_adapters` adapters stay loaded on
    the one base model; a request keeps its adapter from first token to last, and a
    routed adapter that cannot be loaded is logged and that request gets the base
    model (never someone else's adapter). `pinned` and ``generate_batch(adapter=...)``
    override the route explicitly.

    Attributes:
        model: The base transformers model (LoRA layers are injected into it on the
            first adapter).
        tokenizer: Its tokenizer; given a plain chat template and a pad token if it
            has none.
        model_id: Name reported in response metadata.
        temperature: 0 is greedy decoding; above 0 samples.
        top_p: Nucleus sampling mass when sampling.
        max_new_tokens: Most tokens generated per request.
        stop: Default stop sequences (a call's ``stop=`` adds to them); output ends
            before the first one.
        seed: When set, seeds torch's RNG before each sampled generation.
        resolver: Maps an adapter version to its folder (e.g.
            ``lambda v: registry.get(v).path``).
        follow: Returns the version to serve (None: the base model), checked before
            every request.
        route: ``route(config, context)`` returns the adapter of the current request
            (a folder, a version for `resolver`, or None for the base model); takes
            precedence over `follow`. `SealMemory.chat_model` sets it with
            ``consolidation.adapter_scope = "namespace"``. It may raise
            `seal_agent.errors.ValidationError` (a bad namespace in the run), which
            fails the request; any other error is logged and the base model serves.
        max_loaded_adapters: Most adapters kept loaded at once (least recently used
            evicted beyond it; the default adapter is never evicted).
    """

    model: Any = Field(exclude=True)
    tokenizer: Any = Field(exclude=True)
    model_id: str = "local"
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: list[str] | None = None
    seed: int | None = None
    resolver: Callable[[str], Path | str] | None = Field(default=None, exclude=True)
    follow: Callable[[], str | None] | None = Field(default=None, exclude=True)
    route: Callable[[dict[str, Any], Any], AdapterChoice] | None = Field(default=None, exclude=True)
    max_loaded_adapters: int = _DEFAULT_MAX_LOADED

    _host: AdapterHost = PrivateAttr()
    _pin: contextvars.ContextVar[Any] = PrivateAttr()
    _swap_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _followed: Any = PrivateAttr(default=_NOT_FOLLOWED)
    _native_tools: bool = PrivateAttr(default=False)
    _eos_ids: list[int] = PrivateAttr(default_factory=list)
    # A fast tokenizer mutates its Rust state when truncation/padding settings change,
    # and concurrent calls then fail with "Already borrowed": encode one at a time.
    _tokenizer_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Checked here, not in a pydantic validator, so the caller gets seal_agent's
        # ValidationError naming the field rather than pydantic's wrapper.
        _check_request(self.max_new_tokens, self.temperature, self.top_p)
        ensure_chat_template(self.tokenizer)
        self._native_tools = template_supports_tools(self.tokenizer)
        self._eos_ids = _eos_ids(self.model, self.tokenizer)
        self._host = AdapterHost(self.model, self.max_loaded_adapters)
        self._pin = contextvars.ContextVar(f"seal_adapter_pin_{id(self)}", default=_UNSET)
        if self.route is None:
            self._maybe_follow()  # serve CURRENT from the first request on

    # ----------------------------------------------------------------- construction

    @classmethod
    def load(
        cls,
        name_or_path: str | os.PathLike[str] = "tiny-random",
        *,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        adapter: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> AdaptiveChatModel:
        """Load a model with `load_model` and wrap it.

        The base weights are loaded once per process (`seal_agent.model.shared`): a later
        `load` of the same model, and consolidation's training and gate, share them.

        Args:
            name_or_path: As for `load_model` (a folder, a hub id, or ``"tiny-random"``).
            device: As for `load_model`.
            dtype: As for `load_model`.
            seed: Seed of ``tiny-random``'s weights.
            adapter: An adapter folder or version to serve from the start.
            **kwargs: Fields of this class (``temperature``, ``max_new_tokens``,
                ``resolver``, ``follow``, ...).

        Raises:
            ModelLoadError: The model cannot be loaded.
            AdapterError: `adapter` cannot be loaded.
        """
        from seal_agent.model.shared import load_shared

        # One base per process: a second chat model, training and the gate get twins
        # over the same frozen tensors instead of another copy (see `seal_agent.model.shared`).
        model, tokenizer = load_shared(name_or_path, device=device, dtype=dtype, seed=seed)
        chat = cls(model=model, tokenizer=tokenizer, model_id=os.fspath(name_or_path), **kwargs)
        if adapter is not None:
            chat.use_adapter(adapter)
        return chat

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> AdaptiveChatModel:
        """Load from a `seal_agent.config.ModelConfig`; `kwargs` as for `load`."""
        options = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
                   "max_loaded_adapters": config.max_loaded_adapters, **kwargs}
        return cls.load(config.name_or_path, device=config.device, dtype=config.dtype, seed=config.seed,
                        **options)

    # ----------------------------------------------------------------- adapters

    @property
    def adapter(self) -> str | None:
        """The default adapter: the version or path given to `use_adapter` (or `follow`'s);
        None = base. With `route` set, each response's ``response_metadata["adapter"]``
        names the adapter that actually generated it."""
        return self._host.label

    @property
    def loaded_adapters(self) -> list[str]:
        """Folders of the adapters loaded on the base model now, least recently used first."""
        return self._host.loaded

    @property
    def base_hash(self) -> str:
        """`base_model_hash` of the base model (computed once, on first use)."""
        return self._host.base_hash

    @property
    def served_model(self) -> Any:
        """The module generation runs on (a `PeftModel` once an adapter was loaded)."""
        return self._host.model

    def use_adapter(self, adapter: str | os.PathLike[str] | None) -> None:
        """Serve another LoRA adapter; safe while other threads generate.

        Requests already running finish on the old adapter; later ones use the new
        one; none sees a mix. With `follow` set, the swap holds until `follow()`
        returns a new version.

        Args:
            adapter: A PEFT adapter folder, a version for `resolver`, or None for
                the base model.

        Raises:
            AdapterError: The adapter is missing, corrupt, or for another base
                model; the previous adapter keeps serving.
            NotFoundError: `resolver` does not know the version (raised by it).
        """
        with self._swap_lock:
            self._swap(adapter)

    def _swap(self, adapter: str | os.PathLike[str] | None) -> None:
        if adapter is None:
            self._host.swap(None, None)
            return
        path, label = self._resolve(adapter)
        self._host.swap(path, label)

    def _resolve(self, adapter: str | os.PathLike[str]) -> tuple[Path, str]:
        if isinstance(adapter, os.PathLike):
            return Path(adapter), os.fspath(adapter)
        if not isinstance(adapter, str) or not adapter:
            raise ValidationError("adapter", adapter, "must be an adapter folder, a version, or None")
        path = Path(adapter).expanduser()
        if path.is_dir() or self.resolver is None:
            return path, adapter
        return Path(self.resolver(adapter)), adapter  # a version: ask the registry

    @contextlib.contextmanager
    def pinned(self, adapter: AdapterChoice) -> Iterator[None]:
        """Serve `adapter` to every request made inside this block (this thread or task).

        Overrides `route` and `follow` -- e.g. a consolidation of lineage L lets L's
        adapter write L's self-edits. Requests made in threads started inside the
        block do not inherit it (asyncio tasks and `asyncio.to_thread` do).

        Args:
            adapter: A PEFT adapter folder, a version for `resolver`, or None for the
                base model.

        Raises:
            AdapterError: (at the first request) the adapter cannot be loaded.
        """
        token = self._pin.set(adapter)
        try:
            yield
        finally:
            self._pin.reset(token)

    @contextlib.contextmanager
    def active_model(self, adapter: AdapterChoice = _UNSET) -> Iterator[Any]:
        """Hold the model with a request's adapter active, for direct forward passes
        (e.g. answer log-likelihoods); other requests wait until the block ends.

        Args:
            adapter: As for `pinned`; by default the adapter a request made here would
                get (pin, route, or the default).
        """
        target, strict = self._target(adapter)
        with self._host.pinned(target, strict=strict) as model:
            yield model

    def _target(self, explicit: Any = _UNSET) -> tuple[AdapterTarget | Any, bool]:
        """The adapter of the request being made -- explicit, pinned, routed or the
        default -- and whether it was asked for explicitly (then a failure to load it
        raises instead of serving the base model)."""
        choice, strict = explicit, True
        if choice is _UNSET:
            choice = self._pin.get()
        if choice is _UNSET and self.route is not None:
            strict = False
            try:
                choice = self.route(*_run_scope())
            except ValidationError:  # the run names a bad namespace: its request fails
                raise
            except Exception:  # a broken registry read must not serve someone else's adapter
                logger.exception("route() failed; serving the base model for this request")
                return BASE, False
        if choice is _UNSET:
            self._maybe_follow()
            return DEFAULT, False
        if choice is None:
            return BASE, strict
        try:
            return AdapterTarget(*self._resolve(choice)), strict
        except Exception:
            if strict:
                raise
            logger.exception("route() returned %r, which cannot be resolved; serving the base model", choice)
            return BASE, False

    def _maybe_follow(self) -> None:
        """Swap to `follow()`'s version if it changed since the last look."""
        if self.follow is None:
            return
        try:
            version = self.follow()
        except Exception:  # a broken registry read must not fail the request
            logger.exception("follow() failed; keeping adapter %s", self.adapter)
            return
        if version == self._followed:
            return
        with self._swap_lock:
            if version == self._followed:  # another thread swapped meanwhile
                return
            try:
                self._swap(version)
            except Exception as exc:
                # Remember the version anyway: retrying a broken adapter on every
                # request would stall them all; the next CURRENT change retries.
                logger.error("cannot serve adapter %s, keeping %s: %s", version, self.adapter, exc)
            self._followed = version

    # ----------------------------------------------------------------- tools

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions, pydantic models or OpenAI dicts).

        Schemas go into the chat template's ``tools=`` argument when the template
        renders tools, else into a system preamble in the same Hermes format.
        `tool_choice` ``"none"`` binds no tools; other values are accepted for API
        compatibility but not enforced -- a local model cannot be forced to call.
        """
        if tool_choice == "none":
            return self.bind(**kwargs)
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    # ----------------------------------------------------------------- LangChain hooks

    @property
    def _llm_type(self) -> str:
        return "seal-adaptive-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "adapter": self.adapter}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        deltas: list[str] = []
        final: _Final | None = None
        for item in self._run(messages, stop, kwargs):
            if isinstance(item, str):
                deltas.append(item)
            else:
                final = item
        assert final is not None  # _run always ends with a _Final
        content = "".join(deltas) + final.delta
        parsed = final.parsed
        message = AIMessage(
            content=content,
            tool_calls=parsed.tool_calls if parsed else [],
            invalid_tool_calls=parsed.invalid_tool_calls if parsed else [],
            usage_metadata=_usage(final),
            response_metadata=self._response_metadata(final),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: Any = None, **kwargs: Any) -> ChatResult:
        # Generation is blocking torch work: run it off the event loop.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for item in self._run(messages, stop, kwargs):
            if isinstance(item, str):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
                if run_manager is not None:
                    run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
                continue
            chunks = []
            if item.parsed is not None:
                calls = item.parsed.tool_calls
                chunks = [tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
                          for i, c in enumerate(calls)]
                # An invalid call's args are its raw "<tool_call>..." text, which never
                # parses as JSON, so it stays invalid when chunks are added up.
                chunks += [tool_call_chunk(name=c["name"], args=c["args"], id=c["id"], index=len(calls) + i)
                           for i, c in enumerate(item.parsed.invalid_tool_calls)]
            message = AIMessageChunk(content=item.delta, tool_call_chunks=chunks, usage_metadata=_usage(item),
                                     response_metadata=self._response_metadata(item), chunk_position="last")
            yield ChatGenerationChunk(message=message)

    def _response_metadata(self, final: _Final) -> dict[str, Any]:
        return {"model_name": self.model_id, "finish_reason": final.finish_reason, "adapter": final.adapter}

    # ----------------------------------------------------------------- generation

    def _request(self, stop: list[str] | None, kwargs: dict[str, Any]) -> _Request:
        known = {"max_new_tokens", "temperature", "top_p", "seed", "tools", "stop"}
        ignored = sorted(set(kwargs) - known)
        if ignored:  # LangChain passes extras (e.g. ls_structured_output_format)
            logger.debug("ignoring generation options %s", ignored)
        request = _Request(
            max_new_tokens=kwargs.get("max_new_tokens", self.max_new_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed),
            stop=[s for s in [*(self.stop or []), *(stop or []), *(kwargs.get("stop") or [])] if s],
            tools=kwargs.get("tools") or None,
        )
        _check_request(request.max_new_tokens, request.temperature, request.top_p)
        return request

    def _render(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None) -> str:
        """The prompt text: the chat template applied, ending with the generation prompt."""
        chat = to_chat_dicts(messages, native_tools=self._native_tools)
        if tools and not self._native_tools:
            chat = with_tool_preamble(chat, tools)
        with self._tokenizer_lock:
            return self.tokenizer.apply_chat_template(
                chat, tools=tools if self._native_tools else None, add_generation_prompt=True, tokenize=False
            )

    def _encode(self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None) -> Any:
        text = self._render(messages, tools)
        with self._tokenizer_lock:
            # The template already placed any BOS token; do not add another.
            encoded = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        self._check_context(int(encoded["input_ids"].shape[1]), "messages")
        return encoded

    def _check_context(self, n: int, field: str) -> None:
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and n >= limit:
            raise ValidationError(field, f"{n} tokens", f"prompt must be shorter than the context ({limit})")

    def _run(self, messages: list[BaseMessage], stop: list[str] | None,
             kwargs: dict[str, Any]) -> Iterator[str | _Final]:
        """Generate: yield text deltas, then one `_Final`."""
        request = self._request(stop, kwargs)
        target, strict = self._target()  # here, in the caller's context: the run's config
        encoded = self._encode(messages, request.tools)
        tool_mode = request.tools is not None
        holds = [*request.stop, TOOL_CALL_OPEN] if tool_mode else request.stop

        tokens: queue.Queue[Any] = queue.Queue()
        cancel = threading.Event()
        served: list[str | None] = [None]
        worker = threading.Thread(target=self._generate_worker,
                                  args=(encoded, request, tokens, cancel, target, strict, served),
                                  name="seal-generate", daemon=True)
        worker.start()
        ids: list[int] = []
        emitted, text, hit_stop = "", "", False
        try:
            while (item := tokens.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                ids.extend(item)
                # Decode everything each step: a token may complete a multi-byte
                # character begun by the previous one. O(n^2), fine at chat lengths.
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = _find_stop(text, request.stop)
                if cut is not None:
                    text, hit_stop = text[:cut], True
                    cancel.set()
                    break
                safe = _safe_prefix(text, holds, tool_mode)
                if len(safe) > len(emitted) and safe.startswith(emitted):
                    yield safe[len(emitted):]
                    emitted = safe
        finally:
            cancel.set()  # also when the consumer abandons the stream
        worker.join()

        parsed = parse_tool_calls(text) if tool_mode else None
        final_text = parsed.content if parsed is not None else text
        if not final_text.startswith(emitted):  # cannot happen with prefix-stable decoders
            logger.warning("streamed text diverged from the final decode; final text dropped")
            final_text = emitted
        if parsed is not None and (parsed.tool_calls or parsed.invalid_tool_calls):
            reason = "tool_calls"
        elif hit_stop or (ids and ids[-1] in self._eos_ids):
            reason = "stop"
        else:
            reason = "length"
        yield _Final(final_text[len(emitted):], parsed, reason, int(encoded["input_ids"].shape[1]), len(ids),
                     served[0])

    def _generate_worker(self, encoded: Any, request: _Request, tokens: queue.Queue[Any],
                         cancel: threading.Event, target: Any = DEFAULT, strict: bool = False,
                         served: list[str | None] | None = None) -> None:
        import torch
        from transformers import StoppingCriteriaList

        try:
            config = self._generation_config(request)
            with self._host.pinned(target, strict=strict) as model, torch.inference_mode():
                if served is not None:
                    served[0] = self._host.active
                if cancel.is_set():  # the consumer left while we waited for the lock
                    return
                if request.seed is not None and request.temperature > 0:
                    torch.manual_seed(request.seed)
                device = next(model.parameters()).device
                model.generate(
                    input_ids=encoded["input_ids"].to(device),
                    attention_mask=encoded["attention_mask"].to(device),
                    generation_config=config,
                    streamer=_QueueStreamer(tokens),
                    stopping_criteria=StoppingCriteriaList([_CancelCriteria(cancel)]),
                )
        except BaseException as exc:  # hand every failure to the consumer thread
            tokens.put(exc)
        finally:
            tokens.put(_END)

    def _generation_config(self, request: _Request) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = request.max_new_tokens
        config.max_length = None
        config.eos_token_id = self._eos_ids or None
        config.pad_token_id = self.tokenizer.pad_token_id
        config.do_sample = request.temperature > 0
        if config.do_sample:
            config.temperature, config.top_p, config.top_k = request.temperature, request.top_p, None
        else:  # unset sampling knobs so transformers does not warn they are ignored
            config.temperature = config.top_p = config.top_k = None
        return config

    # ----------------------------------------------------------------- batched generation

    def generate_batch(
        self,
        prompts: Sequence[Sequence[BaseMessage] | str],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        prefill: str | Sequence[str] | None = None,
        cancel_event: threading.Event | None = None,
        progress: bool = False,
        adapter: AdapterChoice = _UNSET,
    ) -> list[list[str]]:
        """Generate completions for many prompts at once, several per forward pass.

        Much faster than one `invoke` per prompt: a decode step reads the weights
        once for every row of a chunk. Prompts are rendered like `invoke` renders
        them, sorted by length, padded and run on the KV cache in chunks of at most
        ``max_batch_tokens`` cache positions (rows x (longest prompt +
        `max_new_tokens`)); the prefix a chunk's prompts share (template, system
        prompt, instruction) is prefilled once, and completions that ended leave
        the batch (see `seal_agent.model._batch`). Greedy output equals `invoke`'s
        for each prompt (up to float rounding, which batched matrix products may
        order differently).

        The whole batch runs on one adapter -- `adapter` if given, else the one a
        request made here gets (`pinned`, ``route``, or the default after one look at
        ``follow()``) -- and holds the adapter lock until its last chunk, so a
        concurrent `use_adapter` waits for it (and so do concurrent requests).

        Args:
            prompts: Strings (one user turn each) or message lists, as for `invoke`.
            n: Completions per prompt; above 1 needs a temperature above 0.
            temperature: 0 is greedy; defaults to the model's `temperature`.
            max_new_tokens: Most tokens per completion; defaults to the model's.
            top_p: Nucleus mass when sampling; defaults to the model's.
            seed: Seeds the sampling of this call (defaults to the model's `seed`):
                the same call with the same seed returns the same completions. It
                runs on a forked RNG, so the caller's global torch RNG is untouched.
                A prompt's samples depend on the batch it ran in, not only on it.
            stop: Stop strings, added to the model's `stop`; a completion ends
                before the first one found in its generated text.
            max_batch_tokens: Budget of a chunk, ``rows x (longest prompt +
                max_new_tokens)``: the KV-cache positions it holds. The default
                (16384) is ~0.75 GB of cache for SmolLM2-135M in fp32 and more rows
                than a CPU turns into speed; lower it on a small GPU or a large
                model. A single prompt over the budget still runs, alone.
            prefill: Text the assistant turn starts with, appended after the
                generation prompt (e.g. ``"Q:"`` to force a format on a small
                model); one string for all prompts or one per prompt. Returned
                completions start with it.
            cancel_event: When set, generation stops within a token and
                `TrainingCancelled` is raised (the consolidation's cancellation
                error); nothing is returned.
            progress: Show a tqdm bar of finished completions.
            adapter: Run the batch on this adapter (a folder, a version for
                `resolver`, or None for the base model) instead of the routed one.

        Returns:
            For each prompt, in order, its `n` completions: text without special
            tokens, cut before any stop string, starting with the prefill.

        Raises:
            ValidationError: A bad option (named in the message), e.g. ``n`` above 1
                with temperature 0, or a prompt longer than the context.
            TrainingCancelled: `cancel_event` was set.
            AdapterError: `adapter` (or a `pinned` one) cannot be loaded.
        """
        samples = self._generate_samples(
            prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens, top_p=top_p, seed=seed,
            stop=stop, max_batch_tokens=max_batch_tokens, prefill=prefill, cancel=CancelFlags(cancel_event),
            progress=progress, adapter=adapter)
        return [[s.text for s in row] for row in samples]

    async def agenerate_batch(
        self,
        prompts: Sequence[Sequence[BaseMessage] | str],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: list[str] | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        prefill: str | Sequence[str] | None = None,
        cancel_event: threading.Event | None = None,
        progress: bool = False,
        adapter: AdapterChoice = _UNSET,
    ) -> list[list[str]]:
        """Async `generate_batch`: runs in a worker thread, off the event loop.

        Cancelling the awaiting task also stops the generation (within a token),
        which would otherwise run on in its thread, holding the model.
        """
        own = threading.Event()
        try:
            samples = await asyncio.to_thread(
                self._generate_samples, prompts, n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                top_p=top_p, seed=seed, stop=stop, max_batch_tokens=max_batch_tokens, prefill=prefill,
                cancel=CancelFlags(cancel_event, own), progress=progress, adapter=adapter)
        except asyncio.CancelledError:
            own.set()
            raise
        return [[s.text for s in row] for row in samples]

    def _generate_samples(
        self,
        prompts: Sequence[Sequence[BaseMessage] | str],
        *,
        n: int,
        temperature: float | None,
        max_new_tokens: int | None,
        top_p: float | None,
        seed: int | None,
        stop: list[str] | None,
        max_batch_tokens: int,
        prefill: str | Sequence[str] | None,
        cancel: CancelFlags,
        progress: bool,
        adapter: AdapterChoice = _UNSET,
    ) -> list[list[Sample]]:
        """`generate_batch`, returning `Sample`s (text, token count, finish reason)."""
        import torch
        from tqdm.auto import tqdm

        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise ValidationError("prompts", prompts, "must be a list of prompts (strings or message lists)")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValidationError("n", n, "must be a positive integer")
        if not isinstance(max_batch_tokens, int) or isinstance(max_batch_tokens, bool) or max_batch_tokens < 1:
            raise ValidationError("max_batch_tokens", max_batch_tokens, "must be a positive integer")
        options = {"temperature": temperature, "max_new_tokens": max_new_tokens, "top_p": top_p, "seed": seed}
        request = self._request(stop, {k: v for k, v in options.items() if v is not None})
        if n > 1 and request.temperature == 0:
            raise ValidationError("n", n, "n > 1 needs temperature > 0 (greedy decoding gives n identical completions)")
        prefills = _prefills(prefill, len(prompts))
        if not prompts:
            return []
        ids = self._encode_batch(prompts, prefills)

        # Row r is completion r % n of prompt r // n.
        lengths = [len(ids[r // n]) for r in range(len(prompts) * n)]
        chunks = plan_chunks(lengths, request.max_new_tokens, max_batch_tokens)
        logger.debug("generate_batch: %d rows in %d chunks", len(lengths), len(chunks))
        samples: list[list[Any]] = [[None] * n for _ in prompts]
        config = self._generation_config(request)

        target, strict = self._target(adapter)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(tqdm(total=len(lengths), disable=not progress, desc="generate",
                                           unit="seq", leave=False))
            # One pin for every chunk: a swap between chunks would give the batch two adapters.
            model = stack.enter_context(self._host.pinned(target, strict=strict))
            stack.enter_context(torch.inference_mode())
            if request.temperature > 0 and request.seed is not None:
                # generate() samples from torch's global RNG: seed a fork of it, so the
                # caller's RNG stream is the same after this call as before.
                device = next(model.parameters()).device
                stack.enter_context(torch.random.fork_rng(devices=_rng_devices(device)))
                torch.manual_seed(request.seed)
            for done, chunk in enumerate(chunks):
                if cancel.is_set():
                    raise TrainingCancelled(f"generate_batch cancelled after {done} of {len(chunks)} chunks")
                rows = [ids[r // n] for r in chunk]
                chunk_samples = self._generate_chunk(model, rows, [prefills[r // n] for r in chunk],
                                                     request, config, cancel)
                if cancel.is_set():  # RowEnds stopped every row mid-chunk
                    raise TrainingCancelled(f"generate_batch cancelled after {done} of {len(chunks)} chunks")
                for r, sample in zip(chunk, chunk_samples, strict=True):
                    samples[r // n][r % n] = sample
                bar.update(len(chunk))
        return samples

    def _encode_batch(self, prompts: Sequence[Sequence[BaseMessage] | str], prefills: list[str]) -> list[list[int]]:
        """Token ids of each prompt: chat template, generation prompt, then its prefill."""
        texts = []
        for i, prompt in enumerate(prompts):
            try:
                messages = self._convert_input(prompt).to_messages()  # what invoke() does
            except (ValueError, TypeError) as exc:
                raise ValidationError(f"prompts[{i}]", prompt, f"must be a string or a list of messages ({exc})") from exc
            texts.append(self._render(messages, None) + prefills[i])
        with self._tokenizer_lock:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, row in enumerate(ids):
            self._check_context(len(row), f"prompts[{i}]")
        return ids

    def _generate_chunk(self, model: Any, rows: list[list[int]], prefills: list[str],
                        request: _Request, config: Any, cancel: CancelFlags) -> list[Sample]:
        """Generate one chunk of rows (see `generate_chunk`); decode and cut each row."""
        generated = generate_chunk(model, rows, config, pad_id=self.tokenizer.pad_token_id,
                                   eos_ids=self._eos_ids, stops=request.stop, tokenizer=self.tokenizer,
                                   cancel=cancel)
        samples = []
        for row, tokens, prefill in zip(rows, generated, prefills, strict=True):
            if prefill:
                text = self._decode_continuation(row, tokens)
            else:  # exactly what _run decodes
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            cut = _find_stop(text, request.stop)
            if cut is not None:
                text = text[:cut]
            # Fewer tokens than the limit: an EOS or a stop string ended the row.
            at_eos = bool(tokens) and tokens[-1] in self._eos_ids
            ended = cut is not None or at_eos or len(tokens) < request.max_new_tokens
            samples.append(Sample(prefill + text, len(tokens), "stop" if ended else "length"))
        return samples

    def _decode_continuation(self, prompt: list[int], tokens: list[int]) -> str:
        """Decode `tokens` as they continue `prompt`.

        Decoded alone, a continuation can lose a leading space (SentencePiece drops
        it at the start of a text), so "Q:" + " What" would come back "Q:What":
        decode a few prompt tokens with it and keep what they add.
        """
        context = prompt[-8:]
        head = self.tokenizer.decode(context, skip_special_tokens=True)
        full = self.tokenizer.decode(context + tokens, skip_special_tokens=True)
        if full.startswith(head):
            return full[len(head):]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


# --------------------------------------------------------------------- helpers

_END = object()  # queue sentinel: generation finished


class _QueueStreamer:
    """A transformers streamer that puts each new token id list on a queue."""

    def __init__(self, tokens: queue.Queue[Any]) -> None:
        self.tokens = tokens
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        self.tokens.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass  # the worker signals the end itself, also after an error


class _CancelCriteria:
    """Stop generation when the consumer is gone or a stop sequence was found."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


def _run_scope() -> tuple[dict[str, Any], Any]:
    """The LangGraph config and runtime context of the run this request belongs to.

    Read the way `SealMemoryMiddleware` reads them (``langgraph.config.get_config``; the
    runtime ``create_agent`` passes its nodes), so a route resolves the same namespace
    the middleware recalls from. Outside a runnable context: ``({}, None)``.
    """
    try:
        from langgraph.config import get_config
        from langgraph.runtime import get_runtime
    except ImportError:  # langgraph is a dependency; a stripped install still generates
        return {}, None
    try:
        config = dict(get_config())
    except RuntimeError:  # called outside a runnable context (a direct invoke, a script)
        return {}, None
    try:
        runtime = get_runtime()
    except (RuntimeError, KeyError):
        runtime = None
    return config, getattr(runtime, "context", None)


def _check_request(max_new_tokens: Any, temperature: Any, top_p: Any) -> None:
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise ValidationError("max_new_tokens", max_new_tokens, "must be a positive integer")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 10:
        raise ValidationError("temperature", temperature, "must be a number in [0, 10] (0 = greedy)")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValidationError("top_p", top_p, "must be a number in (0, 1]")


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: the generation config's eos (may be a list) plus the tokenizer's."""
    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return sorted(found)


def _safe_prefix(text: str, holds: list[str], tool_mode: bool) -> str:
    """The part of `text` that later tokens cannot change: no partial stop or tag at the end."""
    if tool_mode:
        start = text.find(TOOL_CALL_OPEN)
        if start >= 0:  # everything from a tool call on waits for the final parse
            text = text[:start]
    keep = len(text)
    for hold in holds:
        for k in range(min(len(hold) - 1, len(text)), 0, -1):
            if text.endswith(hold[:k]):
                keep = min(keep, len(text) - k)
                break
    text = text[:keep].rstrip("\ufffd")  # an incomplete UTF-8 character, completed later
    # parse_tool_calls strips the final content; hold whitespace at both ends to match.
    return text.strip() if tool_mode else text


def _usage(final: _Final) -> dict[str, int]:
    return {"input_tokens": final.input_tokens, "output_tokens": final.output_tokens,
            "total_tokens": final.input_tokens + final.output_tokens}


def _prefills(prefill: str | Sequence[str] | None, count: int) -> list[str]:
    """One prefill string per prompt."""
    if prefill is None:
        return [""] * count
    if isinstance(prefill, str):
        return [prefill] * count
    if not isinstance(prefill, Sequence) or not all(isinstance(p, str) for p in prefill):
        raise ValidationError("prefill", prefill, "must be a string or a list of strings, one per prompt")
    if len(prefill) != count:
        raise ValidationError("prefill", prefill, f"has {len(prefill)} strings for {count} prompts")
    return list(prefill)


def _rng_devices(device: Any) -> list[int]:
    """The CUDA devices whose RNG state `fork_rng` must save and restore."""
    import torch

    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
