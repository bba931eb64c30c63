"""Local causal LMs: loading (`load_model`) and serving (`AdaptiveChatModel`)."""

from __future__ import annotations

from seal_agent.model._hermes import ParsedOutput, parse_tool_calls
from seal_agent.model._template import CHATML_TEMPLATE, PLAIN_TEMPLATE, ensure_chat_template
from seal_agent.model.chat import AdaptiveChatModel
from seal_agent.model.loader import SMOLLM2_135M, TINY_RANDOM, base_model_hash, build_tiny_random, load_model

__all__ = [
    "AdaptiveChatModel",
    "CHATML_TEMPLATE",
    "PLAIN_TEMPLATE",
    "ParsedOutput",
    "SMOLLM2_135M",
    "TINY_RANDOM",
    "base_model_hash",
    "build_tiny_random",
    "ensure_chat_template",
    "load_model",
    "parse_tool_calls",
]
