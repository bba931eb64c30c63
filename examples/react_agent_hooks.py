"""The legacy `langgraph.prebuilt.create_react_agent` with memory hooks.

Run: python examples/react_agent_hooks.py   (offline; a scripted stand-in LLM)

`pre_model_hook` puts memories in `llm_input_messages` (seen by the model, not stored);
`post_model_hook` logs a turn once the model answers without tool calls.
"""

from __future__ import annotations

import tempfile
import warnings

from langgraph.prebuilt import create_react_agent

from seal_agent import SealMemory
from seal_agent.stand_in import RecallingScriptModel


def main() -> None:
    with SealMemory(tempfile.mkdtemp(prefix="seal-example-")) as mem:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated upstream in favour of create_agent
            agent = create_react_agent(RecallingScriptModel(), tools=[],
                                       pre_model_hook=mem.pre_model_hook(),
                                       post_model_hook=mem.post_model_hook())
        config = {"configurable": {"thread_id": "r1", "user_id": "ola"}}
        for text in ["My locker number is 42.", "What is my locker number?"]:
            out = agent.invoke({"messages": [{"role": "user", "content": text}]}, config)
            print(f"> {text}\n  {out['messages'][-1].text}")


if __name__ == "__main__":
    main()
