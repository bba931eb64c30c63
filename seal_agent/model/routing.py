"""Which adapter serves a run: its namespace's lineage, resolved like the middleware does.

`LineageRouter` is the ``route`` that `SealMemory.chat_model` gives `AdaptiveChatModel`
with ``consolidation.adapter_scope = "namespace"``. For each request it

1. resolves the run's namespace with `resolve_scope` -- the exact rules
   `SealMemoryMiddleware` recalls and logs by (context ``namespace``/``user_id``, then
   ``config["configurable"]``, then the default namespace);
2. maps it to its lineage with `lineage_for` (the lineage the consolidation trains from
   that namespace's interactions);
3. returns that lineage's served version (`AdapterRegistry.serving`: CURRENT, or the
   newest intact version if CURRENT's weights are damaged) as its *folder* -- version
   names repeat across lineages, folders never do, so two tenants' ``v0001`` are two
   adapters;
4. a namespace whose lineage has nothing to serve (no commit yet, or forgotten) gets the
   shared ``global`` lineage's version (in namespace scope it learns only from
   ``consolidation.shared_namespaces``), else the base model -- never another
   tenant's adapter.

All of it is a few ``stat``/small reads per request, so a commit to alice's lineage is
served from alice's next request on, and bob's requests never look at alice's files.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seal_agent.integrations.langgraph import resolve_scope
from seal_agent.lineage import Lineage, lineage_for
from seal_agent.memory.records import Namespace, validate_namespace

if TYPE_CHECKING:
    from seal_agent.config import ConsolidationConfig
    from seal_agent.registry import AdapterRegistry

__all__ = ["LineageRouter"]

logger = logging.getLogger(__name__)

_MAX_REGISTRIES = 1024  # lineages whose registry objects are kept (they cache verification)


class LineageRouter:
    """``route(config, context)`` for `AdaptiveChatModel`: the run's lineage adapter folder.

    Args:
        home: The memory home.
        consolidation: The consolidation config (``adapter_scope``, ``lineage_depth``,
            ``shared_namespaces`` decide the lineage of a namespace).
        default_namespace: Namespace of a run that names none -- pass the middleware's
            ``namespace=`` (both default to ``("default",)``).
        global_registry: The ``global`` lineage's registry, if already open (so its
            `serving` warnings are logged once, with the memory's).
    """

    def __init__(self, home: str | Path, consolidation: ConsolidationConfig, *,
                 default_namespace: Namespace = ("default",),
                 global_registry: AdapterRegistry | None = None) -> None:
        self.home = Path(home)
        self.consolidation = consolidation
        self.default_namespace = validate_namespace(default_namespace, "default_namespace")
        self._registries: OrderedDict[str, AdapterRegistry] = OrderedDict()
        if global_registry is not None:
            self._registries[Lineage(self.home).name] = global_registry
        self._lock = threading.Lock()

    def __call__(self, config: dict[str, Any] | None, context: Any = None) -> str | None:
        """The adapter folder serving this run (None: the base model).

        Raises:
            ValidationError: The run names a malformed namespace (as the middleware would).
        """
        namespace, _ = resolve_scope(config, context, default=self.default_namespace)  # type: ignore[arg-type]
        return self.adapter_for(namespace)

    def adapter_for(self, namespace: Namespace) -> str | None:
        """The adapter folder serving `namespace`: its lineage's, else the shared one's,
        else None (the base model)."""
        own = lineage_for(self.home, namespace, self.consolidation)
        candidates = [own] if own.namespace is None else [own, Lineage(self.home)]
        for lineage in candidates:
            registry = self._registry(lineage)
            if registry is None:
                continue
            version = registry.serving().version
            if version is not None:
                return str(registry.root / version)
        return None

    def _registry(self, lineage: Lineage) -> AdapterRegistry | None:
        """The lineage's registry, or None when it has none on disk (opening one would
        create its folder -- a request must not write into the home)."""
        with self._lock:
            registry = self._registries.get(lineage.name)
            if registry is not None:
                self._registries.move_to_end(lineage.name)
                return registry
        if not lineage.adapters_dir.is_dir():
            return None
        registry = lineage.registry()
        with self._lock:
            registry = self._registries.setdefault(lineage.name, registry)
            self._registries.move_to_end(lineage.name)
            while len(self._registries) > _MAX_REGISTRIES:
                self._registries.popitem(last=False)
        return registry
