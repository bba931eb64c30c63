"""Self-edit strategies: how logged interactions become training data, by name.

Built in (one module each): ``implications`` and ``rewrite`` (SEAL), ``self_qa``,
``critique`` (SELF), ``statements`` (what the user stated) and ``raw``. Add your own with `register_self_edit_strategy`::

    @register_self_edit_strategy("summary")
    class Summary(SelfEditStrategy): ...

and name it in ``SelfEditConfig.strategies``.
"""

from __future__ import annotations

from seal_agent.selfedit._filters import DROP_REASONS, is_degenerate
from seal_agent.selfedit.base import (
    FORMAT_VERSION,
    Candidate,
    Probe,
    SelfEdit,
    SelfEditBatch,
    SelfEditStrategy,
    agenerate_self_edits,
    chat_messages,
    final_answer_index,
    generate_self_edits,
    get_self_edit_strategy,
    passage_text,
    register_self_edit_strategy,
    self_edit_strategies,
    stated_text,
)

# Imported for their registration side effect (each module registers its strategy).
from seal_agent.selfedit.critique import CritiqueStrategy
from seal_agent.selfedit.implications import ImplicationsStrategy
from seal_agent.selfedit.raw import RawStrategy
from seal_agent.selfedit.rewrite import RewriteStrategy
from seal_agent.selfedit.self_qa import SelfQAStrategy
from seal_agent.selfedit.statements import StatementsStrategy

__all__ = [
    "DROP_REASONS",
    "FORMAT_VERSION",
    "Candidate",
    "CritiqueStrategy",
    "ImplicationsStrategy",
    "Probe",
    "RawStrategy",
    "RewriteStrategy",
    "SelfEdit",
    "SelfEditBatch",
    "SelfEditStrategy",
    "SelfQAStrategy",
    "StatementsStrategy",
    "agenerate_self_edits",
    "chat_messages",
    "final_answer_index",
    "generate_self_edits",
    "get_self_edit_strategy",
    "is_degenerate",
    "passage_text",
    "register_self_edit_strategy",
    "self_edit_strategies",
    "stated_text",
]
