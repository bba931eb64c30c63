"""Chat templates seal_agent installs on tokenizers.

Two Jinja templates, in the dialect transformers' ``apply_chat_template`` renders:

* `CHATML_TEMPLATE` -- ChatML turns (``<|im_start|>role ... <|im_end|>``) with
  Hermes-style tools: tool schemas go into a system block inside ``<tools>``; the
  assistant calls a tool by writing ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``;
  tool results come back as a user turn wrapped in ``<tool_response>``. The
  ``tiny-random`` model uses it.
* `PLAIN_TEMPLATE` -- for tokenizers that ship no template (base models such as
  tinystories-260k). Each turn is ``<|role|>\\n{content}{eos}\\n`` and the generation
  prompt is ``<|assistant|>\\n``, so the model ends its turn with the tokenizer's own
  end-of-sequence token. It knows nothing about tools; `AdaptiveChatModel` describes
  bound tools in a system preamble instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHATML_TEMPLATE", "PLAIN_TEMPLATE", "ensure_chat_template", "template_supports_tools"]

# Whitespace control (`{%-`, `-%}`) everywhere: the rendered text is exactly the
# string literals, so prompts are byte-identical to what the trainer renders.
CHATML_TEMPLATE = r"""
{%- if tools -%}
{{- '<|im_start|>system\n' -}}
{%- if messages and messages[0].role == 'system' -%}{{- messages[0].content + '\n\n' -}}{%- endif -%}
{{- '# Tools\n\nYou may call one or more functions to assist with the user query.\nFunction signatures are given within <tools></tools> tags:\n<tools>' -}}
{%- for tool in tools -%}{{- '\n' + (tool | tojson) -}}{%- endfor -%}
{{- '\n</tools>\n\nFor each function call, return a json object with the function name and arguments within <tool_call></tool_call> tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' -}}
{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'system' and loop.first and tools -%}
{%- elif m.role == 'assistant' -%}
{{- '<|im_start|>assistant\n' + (m.content or '') -}}
{%- for tc in (m.tool_calls or []) -%}
{%- set f = tc.function if tc.function is defined else tc -%}
{{- '\n<tool_call>\n{"name": ' + (f.name | tojson) + ', "arguments": ' + (f.arguments if f.arguments is string else (f.arguments | tojson)) + '}\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\n' -}}
{%- elif m.role == 'tool' -%}
{{- '<|im_start|>user\n<tool_response>\n' + (m.content or '') + '\n</tool_response><|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + m.role + '\n' + (m.content or '') + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}
"""

PLAIN_TEMPLATE = r"""
{{- bos_token or '' -}}
{%- for m in messages -%}
{{- '<|' + m.role + '|>\n' + (m.content or '') + (eos_token or '') + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}
"""


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give `tokenizer` a chat template and a pad token if it lacks them (in place).

    Args:
        tokenizer: A transformers tokenizer.

    Returns:
        The same tokenizer, for chaining.
    """
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_TEMPLATE
    if tokenizer.pad_token is None:
        # Reusing an existing token avoids resizing the embeddings; padded positions
        # are masked by the attention mask, so which token fills them does not matter.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.bos_token
    return tokenizer


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools=`` argument itself."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates; "tool_use" is the HF convention
        return "tool_use" in template or any("tools" in t for t in template.values())
    return isinstance(template, str) and "tools" in template
