"""Serving the agent's model on vLLM with the adapters consolidation commits.

Why vLLM: one GPU server holds the base model once and serves many LoRA adapters on it,
per request, to any number of agent processes on any host -- the in-process
`AdaptiveChatModel` serves one process. The pieces:

  * `VLLMServer` -- a client of a running ``vllm serve`` (OpenAI-compatible API): its
    runtime LoRA endpoint ``POST /v1/load_lora_adapter`` (``lora_name``, ``lora_path``;
    the server needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), ``GET /v1/models`` and
    ``POST /v1/chat/completions``;
  * `VLLMPublisher` -- registers committed adapter versions with the server under
    immutable names ``<lineage>-<version>`` (a name never changes meaning, so a request
    in flight during a commit gets the version it asked for). `install` makes it a
    registry commit hook (`seal_agent.registry.COMMIT_HOOKS`): every commit in this
    process is registered at once; `sync` registers every lineage's CURRENT (run it at
    start-up and after a rollback, or from another process: CURRENT is a file on the
    shared volume);
  * `VLLMChatModel` / `vllm_chat_model` -- a LangChain chat model whose ``model`` is the
    adapter name of the namespace's lineage CURRENT, resolved per request: a new commit
    is served by the next call, with no reload;
  * `lora_rank` / `cap_lora_rank` -- vLLM refuses adapters whose rank exceeds its
    ``--max-lora-rank``: `cap_lora_rank` truncates an adapter to that rank (the best
    rank-k approximation of each layer's update, by SVD) and reports the error made.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from seal_agent.errors import AdapterError, BackendUnavailableError, ValidationError

if TYPE_CHECKING:
    from seal_agent.registry import AdapterRegistry
    from seal_agent.seal_memory import SealMemory

__all__ = ["VLLMChatModel", "VLLMPublisher", "VLLMServer", "adapter_name", "cap_lora_rank", "lora_rank",
           "vllm_chat_model"]

logger = logging.getLogger(__name__)

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def adapter_name(lineage: str, version: str) -> str:
    """The immutable name a version is served under: ``<lineage>-<version>``."""
    return _NAME_UNSAFE.sub("_", f"{lineage}-{version}")


class VLLMServer:
    """A running vLLM OpenAI-compatible server at `base_url` (e.g. ``http://gpu1:8000``)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        if not isinstance(base_url, str) or not re.match(r"https?://", base_url):
            raise ValidationError("base_url", base_url, "must be an http(s):// URL of a vLLM server")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.base_url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            raise BackendUnavailableError(f"the vLLM server {self.base_url} is unreachable ({exc}); "
                                          f"{method} {path} was not done") from exc

    def load_adapter(self, name: str, path: str | Path) -> bool:
        """Register the LoRA folder `path` (as the server sees it) as model `name`; True if
        it was loaded now, False if the server already had it (names are immutable)."""
        status, text = self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        if status == 200:
            logger.info("vLLM %s: loaded adapter %s from %s", self.base_url, name, path)
            return True
        if "already" in text.lower() and "load" in text.lower():
            return False
        if status == 404:
            raise AdapterError(f"the vLLM server {self.base_url} has no runtime LoRA endpoint (404): start it with "
                               "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora")
        raise AdapterError(f"the vLLM server {self.base_url} refused adapter {name} from {path} "
                           f"(HTTP {status}): {text[:500]}")

    def unload_adapter(self, name: str) -> None:
        status, text = self._call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if status != 200:
            raise AdapterError(f"the vLLM server {self.base_url} could not unload {name} (HTTP {status}): "
                               f"{text[:500]}")

    def models(self) -> list[str]:
        status, text = self._call("GET", "/v1/models")
        if status != 200:
            raise BackendUnavailableError(f"the vLLM server {self.base_url} answered GET /v1/models with "
                                          f"HTTP {status}: {text[:300]}")
        return [m["id"] for m in json.loads(text).get("data", [])]

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        status, text = self._call("POST", "/v1/chat/completions", {"model": model, "messages": messages, **params})
        if status != 200:
            raise BackendUnavailableError(f"the vLLM server {self.base_url} answered the chat request for model "
                                          f"{model} with HTTP {status}: {text[:500]}")
        return json.loads(text)


# ------------------------------------------------------------------ rank

def lora_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in a PEFT adapter folder (``r``, or its ``rank_pattern``)."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read {cfg_path}: {exc}") from exc
    return max([int(cfg.get("r", 0)), *(int(v) for v in (cfg.get("rank_pattern") or {}).values())])


def cap_lora_rank(src: str | Path, dest: str | Path, max_rank: int) -> dict[str, Any]:
    """Write to `dest` the adapter of `src` truncated to rank `max_rank`; a report.

    Each layer's update ``B @ A`` is replaced by its best rank-`max_rank` approximation
    (truncated SVD), and ``lora_alpha`` is scaled so that ``alpha / r`` -- the factor PEFT
    and vLLM multiply the update by -- is unchanged. The report gives the rank before and
    after and the largest relative error (Frobenius norm) over the layers: 0 when the
    updates already had rank <= `max_rank`. An adapter within the cap is copied as is.
    """
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    if not isinstance(max_rank, int) or isinstance(max_rank, bool) or max_rank < 1:
        raise ValidationError("max_lora_rank", max_rank, "must be a positive integer (vLLM's --max-lora-rank)")
    src, dest = Path(src), Path(dest)
    cfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    rank = lora_rank(src)
    if dest.exists() and any(dest.iterdir()):
        raise ValidationError("dest", str(dest), "must not exist or be an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    if rank <= max_rank:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, dest / f.name)
        return {"rank": rank, "max_lora_rank": max_rank, "capped": False, "max_relative_error": 0.0}
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AdapterError(f"{src}: an adapter with per-layer ranks (rank_pattern/alpha_pattern) cannot be capped "
                           "here; train it with consolidation's lora_rank <= vLLM's --max-lora-rank")
    weights = load_file(str(src / "adapter_model.safetensors"))
    out: dict[str, Any] = {}
    worst = 0.0
    for key, a in weights.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                out[key] = a
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        b = weights[b_key]
        delta = b.double() @ a.double()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = max_rank
        new_b = (u[:, :k] * s[:k]).to(b.dtype).contiguous()
        new_a = vh[:k].to(a.dtype).contiguous()
        norm = float(torch.linalg.norm(delta))
        err = float(torch.linalg.norm(delta - new_b.double() @ new_a.double()))
        worst = max(worst, err / norm if norm else 0.0)
        out[key], out[b_key] = new_a, new_b
    save_file(out, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg["lora_alpha"] = float(cfg.get("lora_alpha", rank)) * max_rank / rank
    cfg["r"] = max_rank
    (dest / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    for f in src.iterdir():  # the manifest and anything else travel along
        if f.is_file() and f.name not in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(f, dest / f.name)
    return {"rank": rank, "max_lora_rank": max_rank, "capped": True, "max_relative_error": worst}


# ------------------------------------------------------------------ publishing

class VLLMPublisher:
    """Registers a memory home's committed adapters with a vLLM server.

    Args:
        home: The memory home (on the volume the vLLM host also mounts).
        server: The vLLM server.
        lora_root: Where the vLLM host sees `home` (None: at the same path). A version
            folder ``home/adapters/v0003-...`` is given to vLLM as ``lora_root/adapters/v0003-...``.
        max_lora_rank: The server's ``--max-lora-rank``: a version of a higher rank is
            refused with `AdapterError` naming both (export it capped with
            ``seal-agent adapters export --for-vllm``, or train with a lower rank).
    """

    def __init__(self, home: str | Path, server: VLLMServer, *, lora_root: str | Path | None = None,
                 max_lora_rank: int = 16) -> None:
        self.home = Path(home).resolve()
        self.server = server
        self.lora_root = Path(lora_root) if lora_root is not None else self.home
        self.max_lora_rank = max_lora_rank
        self._hook: Callable[[AdapterRegistry, str], None] | None = None
        self._lock = threading.Lock()

    def _lineage_of(self, registry: AdapterRegistry) -> str | None:
        from seal_agent.lineage import all_lineages

        root = Path(registry.root).resolve()
        for ln in all_lineages(self.home):
            if ln.adapters_dir.resolve() == root:
                return ln.name
        return None

    def publish(self, registry: AdapterRegistry, version: str, lineage: str | None = None) -> str:
        """Register `version` of `registry`; its served name."""
        lineage = lineage or self._lineage_of(registry)
        if lineage is None:
            raise ValidationError("registry", str(registry.root), f"is not a lineage registry of {self.home}")
        v = registry.get(version)
        rank = lora_rank(v.path)
        if rank > self.max_lora_rank:
            raise AdapterError(f"adapter {v.version} of lineage {lineage} has LoRA rank {rank}; the vLLM server "
                               f"accepts up to --max-lora-rank {self.max_lora_rank}. Export it capped with "
                               "`seal-agent adapters export --for-vllm` or train with a lower lora_rank")
        name = adapter_name(lineage, v.version)
        self.server.load_adapter(name, self.lora_root / Path(v.path).resolve().relative_to(self.home))
        return name

    def sync(self) -> dict[str, str]:
        """Register every lineage's CURRENT (what a rollback or another process made
        current); ``{lineage: served name}``."""
        from seal_agent.lineage import all_lineages

        out: dict[str, str] = {}
        for ln in all_lineages(self.home):
            reg = ln.registry()
            current = reg.current
            if current is not None:
                out[ln.name] = self.publish(reg, current, ln.name)
        return out

    def install(self) -> VLLMPublisher:
        """Register every commit of this home's registries made in this process, as it
        happens (a hook in `seal_agent.registry.COMMIT_HOOKS`)."""
        from seal_agent import registry as registry_module

        with self._lock:
            if self._hook is None:
                def hook(reg: AdapterRegistry, version: str) -> None:
                    if self._lineage_of(reg) is not None:
                        self.publish(reg, version)

                self._hook = hook
                registry_module.COMMIT_HOOKS.append(hook)
        return self

    def uninstall(self) -> None:
        from seal_agent import registry as registry_module

        with self._lock:
            if self._hook is not None and self._hook in registry_module.COMMIT_HOOKS:
                registry_module.COMMIT_HOOKS.remove(self._hook)
            self._hook = None


def served_adapter(memory: SealMemory, namespace: Sequence[str] | None = None) -> str | None:
    """The adapter name serving `namespace` now (its lineage's CURRENT), None for the base model."""
    from seal_agent.lineage import Lineage, lineage_for

    ln = (lineage_for(memory.home, tuple(namespace), memory.config.consolidation) if namespace is not None
          else Lineage(memory.home))
    current = ln.registry().current
    return adapter_name(ln.name, current) if current else None


# ------------------------------------------------------------------ the chat model

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _openai_message(m: BaseMessage) -> dict[str, Any]:
    role = _ROLES.get(m.type)
    if role is None:
        raise ValidationError("messages", m.type, "must be human, ai, system or tool messages")
    out: dict[str, Any] = {"role": role, "content": m.text if hasattr(m, "text") else str(m.content)}
    if role == "tool":
        out["tool_call_id"] = getattr(m, "tool_call_id", "")
    return out


class VLLMChatModel(BaseChatModel):
    """A chat model served by vLLM: each request names the adapter `resolve` returns (the
    namespace's lineage CURRENT), or `base_model` when there is none. Text only: tool
    calls are not forwarded."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base_url: str
    base_model: str
    api_key: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    timeout: float = 120.0
    resolve: Callable[[], str | None] | None = Field(default=None, exclude=True)

    @property
    def _llm_type(self) -> str:
        return "seal-vllm"

    def served_model(self) -> str:
        return (self.resolve() if self.resolve is not None else None) or self.base_model

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        server = VLLMServer(self.base_url, api_key=self.api_key, timeout=self.timeout)
        model = self.served_model()
        params: dict[str, Any] = {"max_tokens": kwargs.get("max_tokens", self.max_tokens),
                                  "temperature": kwargs.get("temperature", self.temperature)}
        if stop:
            params["stop"] = stop
        reply = server.chat(model, [_openai_message(m) for m in messages], **params)
        choice = reply["choices"][0]
        msg = AIMessage(content=choice["message"].get("content") or "",
                        response_metadata={"model": reply.get("model", model),
                                           "finish_reason": choice.get("finish_reason")})
        return ChatResult(generations=[ChatGeneration(message=msg)], llm_output={"model": model})


def vllm_chat_model(memory: SealMemory, base_url: str, *, base_model: str,
                    namespace: Sequence[str] | None = None, **kwargs: Any) -> VLLMChatModel:
    """The chat model an agent of `namespace` uses when vLLM serves the home's adapters."""
    ns = tuple(namespace) if namespace is not None else None
    return VLLMChatModel(base_url=base_url, base_model=base_model,
                         resolve=lambda: served_adapter(memory, ns), **kwargs)
