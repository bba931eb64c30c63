"""Serving on vLLM, against a local HTTP stub of the endpoints our code calls (never a
real vLLM): runtime LoRA loading, model listing, chat completions. The stub checks what
vLLM checks first -- the adapter folder exists and holds a PEFT config -- and refuses a
name loaded twice, as vLLM does."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import HashEmbeddings
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, SystemMessage

from seal_agent import SealMemory
from seal_agent.cli import main
from seal_agent.errors import AdapterError, BackendUnavailableError
from seal_agent.registry import COMMIT_HOOKS
from seal_agent.serving.vllm import (
    VLLMPublisher,
    VLLMServer,
    adapter_name,
    cap_lora_rank,
    lora_rank,
    vllm_chat_model,
)

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


class StubVLLM:
    """What the stub saw: ``loads`` [(name, path)], ``chats`` [(model, messages)]."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, str]] = []
        self.chats: list[tuple[str, list[dict[str, Any]]]] = []
        self.adapters: dict[str, str] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = (json.dumps(body) if not isinstance(body, str) else body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m} for m in [BASE, *stub.adapters]]})
                else:
                    self._send(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/load_lora_adapter":
                    name, path = body["lora_name"], body["lora_path"]
                    if name in stub.adapters:
                        self._send(400, {"object": "error", "message": f"The lora adapter '{name}' has already "
                                                                       "been loaded.", "code": 400})
                    elif not (Path(path) / "adapter_config.json").is_file():
                        self._send(400, {"object": "error", "message": f"No adapter found for {path}"})
                    else:
                        stub.adapters[name] = path
                        stub.loads.append((name, path))
                        self._send(200, f"Success: LoRA adapter '{name}' added successfully.")
                elif self.path == "/v1/chat/completions":
                    model = body["model"]
                    if model != BASE and model not in stub.adapters:
                        self._send(404, {"object": "error", "message": f"The model `{model}` does not exist."})
                        return
                    stub.chats.append((model, body["messages"]))
                    self._send(200, {"id": "c1", "object": "chat.completion", "model": model, "choices": [
                        {"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"served by {model}"}}]})
                else:
                    self._send(404, {"detail": "Not Found"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[StubVLLM]:
    s = StubVLLM()
    yield s
    s.close()


def _adapter(folder: Path, rank: int, seed: int = 0) -> Path:
    """A real PEFT LoRA folder on a tiny Llama, with random (non-zero) B so that the
    update has full rank `rank`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=rank, lora_alpha=2 * rank,
                                                             target_modules=["q_proj", "v_proj"], bias="none"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.save_pretrained(str(folder))
    return folder


def _manifest(rank: int) -> dict[str, Any]:
    return {"base_model": "tiny", "base_model_hash": "sha256:tiny",
            "lineage": {"interaction_ids": ["i1"], "self_edit_hashes": ["h1"]},
            "hyperparameters": {"lora_rank": rank}, "metrics": {"loss": 1.0}}


def test_commit_hook_registers_each_version_and_the_chat_model_follows_current(
        stub: StubVLLM, tmp_path: Path) -> None:
    mem = SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random")
    try:
        mount = tmp_path / "mnt-seal"  # where the vLLM host mounts the shared home
        mount.symlink_to(mem.home)
        publisher = VLLMPublisher(mem.home, VLLMServer(stub.url), max_lora_rank=16, lora_root=mount).install()
        chat = vllm_chat_model(mem, stub.url, base_model=BASE, namespace=("users", "al"))
        assert chat.invoke([HumanMessage("hi")]).content == f"served by {BASE}"  # nothing committed yet
        reg = mem.adapters
        v1 = reg.commit(_adapter(tmp_path / "a1", 4), _manifest(4))
        assert stub.loads == [(adapter_name("global", v1), str(mount / "adapters" / v1))]
        reply = chat.invoke([SystemMessage("be brief"), HumanMessage("what do you know?")])
        assert reply.content == f"served by global-{v1}"
        assert stub.chats[-1][1] == [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "what do you know?"}]
        v2 = reg.commit(_adapter(tmp_path / "a2", 4, seed=1), _manifest(4))
        assert chat.invoke([HumanMessage("again")]).content == f"served by global-{v2}"  # hot swap, no reload
        reg.rollback(v1)
        assert publisher.sync() == {"global": f"global-{v1}"}  # already loaded: the name is immutable
        assert chat.invoke([HumanMessage("again")]).content == f"served by global-{v1}"
        assert [n for n, _ in stub.loads] == [f"global-{v1}", f"global-{v2}"]
        mem.log([{"role": "user", "content": "my dog is called Rex"}, {"role": "assistant", "content": "Nice."}],
                namespace=("users", "al"))
        agent = create_agent(chat, tools=[], middleware=[mem.middleware()])
        out = agent.invoke({"messages": [HumanMessage("what is my dog called?")]},
                           {"configurable": {"thread_id": "t1", "user_id": "al"}})
        assert out["messages"][-1].content == f"served by global-{v1}"
        assert "Rex" in stub.chats[-1][1][0]["content"]  # the recalled memory reached vLLM
        publisher.uninstall()
        assert not COMMIT_HOOKS
    finally:
        for hook in list(COMMIT_HOOKS):
            COMMIT_HOOKS.remove(hook)
        mem.close()


def test_rank_above_the_servers_cap_is_refused_and_the_commit_stands(
        stub: StubVLLM, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mem = SealMemory(tmp_path / "home", embeddings=HashEmbeddings(), model="tiny-random")
    try:
        publisher = VLLMPublisher(mem.home, VLLMServer(stub.url), max_lora_rank=4).install()
        v = mem.adapters.commit(_adapter(tmp_path / "a", 8), _manifest(8))
        assert mem.adapters.current == v and stub.loads == []
        assert "LoRA rank 8" in caplog.text and "--max-lora-rank 4" in caplog.text
        with pytest.raises(AdapterError, match="LoRA rank 8"):
            publisher.sync()
        publisher.uninstall()
    finally:
        for hook in list(COMMIT_HOOKS):
            COMMIT_HOOKS.remove(hook)
        mem.close()


def test_cap_lora_rank_keeps_the_best_low_rank_update(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    src = _adapter(tmp_path / "r8", 8)
    report = cap_lora_rank(src, tmp_path / "r4", 4)
    assert report["rank"] == 8 and report["capped"] and 0 < report["max_relative_error"] < 1
    assert lora_rank(tmp_path / "r4") == 4
    cfg = json.loads((tmp_path / "r4" / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] / cfg["r"] == 16 / 8  # the scaling vLLM and PEFT apply is unchanged
    a8, a4 = load_file(str(src / "adapter_model.safetensors")), load_file(str(tmp_path / "r4" /
                                                                           "adapter_model.safetensors"))
    errs = []
    for key in a8:
        if ".lora_A." in key:
            b_key = key.replace(".lora_A.", ".lora_B.")
            assert a4[key].shape[0] == 4 and a4[b_key].shape[1] == 4
            full = a8[b_key].double() @ a8[key].double()
            low = a4[b_key].double() @ a4[key].double()
            errs.append(float((full - low).norm() / full.norm()))
    assert max(errs) == pytest.approx(report["max_relative_error"], rel=1e-4)
    same = cap_lora_rank(src, tmp_path / "same", 8)  # within the cap: copied as is
    assert not same["capped"] and same["max_relative_error"] == 0.0
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(tmp_path / "r4")).r == 4  # PEFT (and vLLM) read the folder


def test_cli_export_for_vllm_caps_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    with SealMemory(home, embeddings=HashEmbeddings(), model="tiny-random") as mem:
        v = mem.adapters.commit(_adapter(tmp_path / "a", 8), _manifest(8))
    code = main(["--home", str(home), "adapters", "export", v, str(tmp_path / "out"), "--for-vllm",
                 "--max-lora-rank", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["capped"] and out["rank"] == 8 and out["max_lora_rank"] == 4
    assert out["vllm_name"] == f"global-{v}" and lora_rank(tmp_path / "out") == 4


def test_unreachable_vllm_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}"):
        VLLMServer(f"http://127.0.0.1:{port}", timeout=2).models()
