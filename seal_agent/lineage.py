"""Adapter lineages: which adapter learns from, and is served to, which namespaces.

A *lineage* is one chain of adapter versions with everything that judges and feeds it:
its registry (versions + CURRENT), its gate replay suite, its replay buffer of past
training examples, and its gate reports. ``consolidation.adapter_scope`` decides how
namespaces map to lineages:

* ``"global"``: one lineage, ``global``, learns from every namespace and serves every
  request (one user, or one trusted team). Its files stay where they always were:
  ``home/adapters/``, ``home/gate/suite-global.json``, ``home/consolidation/replay.json``.
* ``"namespace"``: one lineage per namespace -- or per namespace prefix of
  ``consolidation.lineage_depth`` labels, so ``("users", "alice", "chat-3")`` and
  ``("users", "alice", "chat-9")`` share alice's lineage with ``lineage_depth = 2``.
  Each lives in ``home/lineages/<slug>/`` (``adapters/``, ``replay.json``) with its
  suite in ``home/gate/suite-<slug>.json``. What alice said is never trained into the
  adapter that serves bob, and forgetting alice deletes her lineage.
  Namespaces listed in ``consolidation.shared_namespaces`` (and their sub-namespaces)
  train the ``global`` lineage instead, which also serves every namespace that has no
  lineage of its own yet.

The slug of a lineage is readable and collision-free: the namespace labels made
filename-safe, joined by ``.``, plus a short hash of the exact namespace.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from seal_agent.memory.records import Namespace, join_namespace

if TYPE_CHECKING:
    from seal_agent.config import ConsolidationConfig
    from seal_agent.registry import AdapterRegistry

__all__ = ["GLOBAL", "Lineage", "all_lineages", "lineage_for"]

GLOBAL = "global"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Lineage:
    """One adapter lineage of a memory home.

    Attributes:
        home: The memory home.
        namespace: The namespace (prefix) this lineage owns; None for ``global``.
    """

    home: Path
    namespace: Namespace | None = None

    @property
    def name(self) -> str:
        """``"global"`` or the slug of the namespace, e.g. ``"users.alice-3f2a9c1b"``.

        Also the gate's lineage name (it names ``home/gate/suite-<name>.json``)."""
        if self.namespace is None:
            return GLOBAL
        readable = ".".join(_UNSAFE.sub("_", label).strip("_") or "_" for label in self.namespace)[:60]
        digest = hashlib.sha1(join_namespace(self.namespace).encode("utf-8")).hexdigest()[:8]
        return f"{readable}-{digest}"

    @property
    def root(self) -> Path:
        """The folder of this lineage's own files (the home itself for ``global``)."""
        return self.home if self.namespace is None else self.home / "lineages" / self.name

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def replay_path(self) -> Path:
        """Training examples of this lineage's committed runs, replayed in later runs."""
        if self.namespace is None:
            return self.home / "consolidation" / "replay.json"
        return self.root / "replay.json"

    @property
    def reports_dir(self) -> Path:
        """Gate reports of this lineage's versions (version names repeat across lineages)."""
        if self.namespace is None:
            return self.home / "gate" / "reports"
        return self.root / "gate-reports"

    @property
    def suite_path(self) -> Path:
        from seal_agent.gate.suite import ReplaySuite

        return ReplaySuite.path_for(self.home, self.name)

    def registry(self) -> AdapterRegistry:
        from seal_agent.registry import AdapterRegistry

        return AdapterRegistry(self.adapters_dir)

    def owns(self, namespace: Namespace, config: ConsolidationConfig) -> bool:
        """Whether interactions of `namespace` train this lineage."""
        return lineage_for(self.home, namespace, config) == self

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "namespace": list(self.namespace) if self.namespace is not None else None,
                "root": str(self.root)}

    def write_marker(self) -> None:
        """Record the namespace in the lineage folder, so `all_lineages` can list it."""
        if self.namespace is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / "lineage.json"
        if not marker.exists():
            from seal_agent._fs import write_atomic

            write_atomic(marker, json.dumps({"format_version": 1, "namespace": list(self.namespace)}))


def _is_under(namespace: Namespace, prefix: Sequence[str]) -> bool:
    return tuple(namespace[: len(prefix)]) == tuple(prefix)


def lineage_for(home: str | Path, namespace: Namespace, config: ConsolidationConfig) -> Lineage:
    """The lineage that learns from (and serves) `namespace` under `config`."""
    home = Path(home)
    if config.adapter_scope == "global":
        return Lineage(home)
    if any(_is_under(namespace, tuple(p.split("/"))) for p in config.shared_namespaces):
        return Lineage(home)
    depth = config.lineage_depth
    key = tuple(namespace if depth is None else namespace[:depth])
    return Lineage(home, key)


def all_lineages(home: str | Path) -> list[Lineage]:
    """Every lineage that has files in the home: ``global`` first, then by name."""
    home = Path(home)
    out = [Lineage(home)]
    root = home / "lineages"
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            marker = folder / "lineage.json"
            try:
                ns = tuple(json.loads(marker.read_text(encoding="utf-8"))["namespace"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a lineage folder (or a damaged one): forget scans files anyway
            out.append(Lineage(home, ns))
    return out
