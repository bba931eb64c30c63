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

The name of a lineage (its folder, its gate suite, its vLLM adapter names) is
collision-free by construction and valid everywhere a lineage name is used: a readable
prefix for humans (the namespace labels made filename-safe, joined by ``.``, cut to
32 characters, starting with a letter or digit -- ``ns`` when nothing readable is left)
plus the full sha256 of the exact namespace (its JSON list), e.g.
``users.alice-<64 hex digits>``. Each lineage folder records its exact namespace in
``lineage.json``; opening a lineage's registry or writing its marker checks it, so a
folder of another namespace is never served or deleted for this one.

Homes written before this naming (a 60-character prefix and 8 hex digits of a sha1, which
two namespaces could share) are migrated when a lineage of the home is first used in a
process (`migrate_lineage_names`): each old folder is renamed, with its gate suite, to the
name of the namespace its marker records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from seal_agent.errors import StorageError
from seal_agent.memory.records import Namespace, join_namespace

if TYPE_CHECKING:
    from seal_agent.config import ConsolidationConfig
    from seal_agent.registry import AdapterRegistry

__all__ = ["GLOBAL", "Lineage", "all_lineages", "lineage_for", "lineage_name", "migrate_lineage_names"]

logger = logging.getLogger(__name__)

GLOBAL = "global"
MARKER = "lineage.json"
MARKER_FORMAT_VERSION = 2  # 2: also records the lineage's name (1: the namespace only; both read)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_LEADING = re.compile(r"^[^A-Za-z0-9]+")  # a gate suite name must start with a letter or digit
_READABLE_MAX = 32  # + "-" + 64 hex digits: 97 characters, within the gate's 100
_NEW_NAME = re.compile(r"-[0-9a-f]{64}$")


def lineage_name(namespace: Namespace) -> str:
    """The lineage name of `namespace`: a readable prefix and the full sha256 of the
    exact namespace.

    The digest alone tells namespaces apart (its input, the JSON list of labels, is
    injective); the prefix is only for people listing ``home/lineages``. The result
    always matches the gate's suite-name rule (``[A-Za-z0-9][A-Za-z0-9._-]{0,99}``), so
    any valid namespace -- ``("..",)``, ``("用户", "li")`` -- can be consolidated.
    """
    readable = ".".join(_UNSAFE.sub("_", label).strip("_") or "_" for label in namespace)
    readable = _LEADING.sub("", readable[:_READABLE_MAX]) or "ns"
    blob = json.dumps(list(namespace), ensure_ascii=False, separators=(",", ":"))
    return f"{readable}-{hashlib.sha256(b'seal_agent.lineage:' + blob.encode('utf-8')).hexdigest()}"


def _old_name(namespace: Namespace) -> str:
    """The name lineages had before `lineage_name` (what old homes' folders are called).
    Kept verbatim for the migration: it is not collision-free."""
    readable = ".".join(_UNSAFE.sub("_", label).strip("_") or "_" for label in namespace)[:60]
    digest = hashlib.sha1(join_namespace(namespace).encode("utf-8")).hexdigest()[:8]  # noqa: S324
    return f"{readable}-{digest}"


def _read_marker(folder: Path) -> Namespace | None:
    """The namespace a lineage folder's marker records; None without a readable marker."""
    try:
        ns = json.loads((folder / MARKER).read_text(encoding="utf-8"))["namespace"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(ns, list) or not ns or not all(isinstance(label, str) and label for label in ns):
        return None
    return tuple(ns)


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
        """``"global"`` or `lineage_name` of the namespace, e.g. ``"users.alice-<sha256>"``.

        Also the gate's lineage name (it names ``home/gate/suite-<name>.json``) and the
        prefix of its vLLM adapter names."""
        if self.namespace is None:
            return GLOBAL
        return lineage_name(self.namespace)

    @property
    def root(self) -> Path:
        """The folder of this lineage's own files (the home itself for ``global``).

        The home's old-style lineage folders are migrated first (once per process, and
        again when ``home/lineages`` changes); an old folder that could not be renamed
        (a read-only home) is used where it is, when its marker names this namespace."""
        if self.namespace is None:
            return self.home
        name = self.name
        return self.home / "lineages" / _ensure_migrated(self.home).get(name, name)

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
        """This lineage's registry, once its folder's marker is checked (`verify`)."""
        from seal_agent.registry import AdapterRegistry

        self.verify()
        return AdapterRegistry(self.adapters_dir)

    def verify(self) -> None:
        """Refuse a lineage folder whose marker records another namespace.

        Names are collision-free, so this only fires on a copied, renamed or hand-edited
        folder -- but then serving, training into or deleting it would hand one tenant
        another tenant's adapter. A folder with no marker yet (being created) passes.

        Raises:
            StorageError: The marker names another namespace (or is unreadable).
        """
        if self.namespace is None:
            return
        root = self.root
        marker = root / MARKER
        if not marker.exists():
            return
        recorded = _read_marker(root)
        if recorded != tuple(self.namespace):
            raise StorageError(
                f"lineage folder {root} is not the lineage of namespace {join_namespace(self.namespace)!r}: its "
                f"{MARKER} records {join_namespace(recorded) if recorded else 'no readable namespace'!r}. It is "
                "left untouched; move it out of home/lineages (or restore its marker) to go on", path=marker)

    def owns(self, namespace: Namespace, config: ConsolidationConfig) -> bool:
        """Whether interactions of `namespace` train this lineage."""
        return lineage_for(self.home, namespace, config) == self

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "namespace": list(self.namespace) if self.namespace is not None else None,
                "root": str(self.root)}

    def write_marker(self) -> None:
        """Record the exact namespace in the lineage folder, so `all_lineages` can list it
        and `verify` can check it (an existing marker is checked, never overwritten).

        Raises:
            StorageError: The folder's marker records another namespace.
        """
        if self.namespace is None:
            return
        self.verify()
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not marker.exists():
            from seal_agent._fs import write_atomic

            write_atomic(marker, json.dumps({"format_version": MARKER_FORMAT_VERSION, "name": self.name,
                                             "namespace": list(self.namespace)}, ensure_ascii=False))


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
    """Every lineage that has files in the home: ``global`` first, then by folder name.

    A folder is listed only as the lineage its marker names, and only when it is that
    lineage's folder: a copied or unmigrated folder under another name is skipped
    (with a warning), so it is never served, published or deleted as someone else's."""
    home = Path(home)
    out = [Lineage(home)]
    root = home / "lineages"
    if root.is_dir():
        _ensure_migrated(home)
        for folder in sorted(root.iterdir()):
            if not folder.is_dir():
                continue
            ns = _read_marker(folder)
            if ns is None:
                continue  # not a lineage folder (or a damaged one): forget scans files anyway
            lineage = Lineage(home, ns)
            if lineage.root != folder:
                _warn_once(folder, f"lineage folder {folder} records namespace {join_namespace(ns)!r} but that "
                                   f"namespace's lineage is {lineage.root.name}; skipped (not served, published "
                                   "or deleted as that namespace's)")
                continue
            out.append(lineage)
    return out


# ------------------------------------------------------------------ migration of old names

_warned: set[str] = set()
_migrated: dict[str, tuple[int, dict[str, str]]] = {}  # home -> (mtime_ns of home/lineages, aliases)
_migrate_mutex = threading.Lock()


def _warn_once(folder: Path, message: str) -> None:
    if str(folder) not in _warned:
        _warned.add(str(folder))
        logger.warning("%s", message)


def _lineages_mtime(home: Path) -> int | None:
    try:
        return (home / "lineages").stat().st_mtime_ns
    except OSError:
        return None


def _ensure_migrated(home: Path) -> dict[str, str]:
    """`migrate_lineage_names` once per process, and again whenever ``home/lineages``
    changed (one ``stat``): a process of an older version on the same home (a rolling
    upgrade) may still create old-style folders. Returns the aliases (see there)."""
    key = str(home)
    mtime = _lineages_mtime(home)
    if mtime is None:
        return {}
    seen = _migrated.get(key)
    if seen is not None and seen[0] == mtime:
        return seen[1]
    with _migrate_mutex:
        seen = _migrated.get(key)
        if seen is not None and seen[0] == mtime:
            return seen[1]
        aliases = migrate_lineage_names(home)
        _migrated[key] = (_lineages_mtime(home) or mtime, aliases)
        return aliases


def migrate_lineage_names(home: str | Path) -> dict[str, str]:
    """Rename a home's old-style lineage folders (and gate suites) to `lineage_name`.

    For each folder of ``home/lineages`` not named in the current style, the namespace
    its marker records decides: the folder must be that namespace's old name (else it is
    left alone, with a warning), then its suite ``gate/suite-<old>.json`` and the folder
    itself are renamed to the namespace's new name. Old names could collide, so such a
    folder may hold what two namespaces trained: it goes to the namespace of its marker
    only (that namespace created it), and when its gate suite shows past tasks of other
    namespaces a warning names them -- the adapter may have learned from them (forget
    or roll back). The other namespaces start lineages of their own.

    Safe to run at any time and from several processes: it holds ``home/lineages.lock``,
    each step is one atomic rename that never replaces an existing target (the suite is
    moved first, the folder last, so a ``kill -9`` between them is finished by the next
    run), and a step another process already did is skipped.

    Returns:
        ``{new name: old folder name}`` for old folders that could not be renamed (a
        read-only home): `Lineage.root` uses them in place, their marker checked.
    """
    from filelock import FileLock, Timeout

    from seal_agent._fs import fsync_dir

    home = Path(home)
    root = home / "lineages"
    try:
        stale = sorted(f for f in root.iterdir() if f.is_dir() and not _NEW_NAME.search(f.name))
    except OSError:
        return {}
    if not stale:
        return {}
    aliases: dict[str, str] = {}
    lock = FileLock(str(home / "lineages.lock"))
    try:
        lock.acquire(timeout=600)  # a migration renames a few folders: seconds at most
        locked = True
    except (OSError, Timeout) as exc:  # a read-only home: use the old folders in place
        logger.warning("cannot lock %s to migrate lineage names (%s); old folders are used in place", home, exc)
        locked = False
    try:
        for folder in stale:
            ns = _read_marker(folder)
            if ns is None:
                _warn_once(folder, f"{folder} has no readable {MARKER}: not a lineage folder, left as is")
                continue
            new = lineage_name(ns)
            if folder.name != _old_name(ns):
                _warn_once(folder, f"lineage folder {folder} records namespace {join_namespace(ns)!r}, whose lineage "
                                   f"is {new}; left as is (not served, published or deleted as that namespace's)")
                continue
            target = root / new
            if target.exists():
                _warn_once(folder, f"old lineage folder {folder} of namespace {join_namespace(ns)!r} was not "
                                   f"migrated: {target} exists already (written since); the old folder is left as is")
                continue
            suite_old = home / "gate" / f"suite-{folder.name}.json"
            _warn_foreign(folder, ns, suite_old)
            if not locked:
                aliases[new] = folder.name
                continue
            try:
                _move_file(suite_old, home / "gate" / f"suite-{new}.json")
                try:
                    os.rename(folder, target)  # atomic; never over a non-empty folder
                except FileNotFoundError:
                    if not target.is_dir():  # not another process's doing
                        raise
                fsync_dir(root)
                logger.info("lineage folder %s of namespace %r renamed to %s", folder.name, join_namespace(ns), new)
            except OSError as exc:
                logger.warning("could not rename lineage folder %s to %s (%s); it is used in place", folder, new, exc)
                if folder.is_dir():
                    aliases[new] = folder.name
    finally:
        if locked:
            lock.release()
    return aliases


def _move_file(src: Path, dst: Path) -> None:
    """Rename `src` to `dst` without ever replacing an existing `dst` (a hard link, then
    the old name removed: a crash between the two leaves both names of one file, which
    the next run resolves)."""
    from seal_agent._fs import fsync_dir

    if not src.exists():
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        if not os.path.samefile(src, dst):
            logger.warning("%s and %s both exist; the old one is left as is", src, dst)
            return
    except OSError:  # no hard links on this file system
        if dst.exists():
            return
        os.rename(src, dst)
        fsync_dir(dst.parent)
        return
    src.unlink(missing_ok=True)
    fsync_dir(dst.parent)


def _warn_foreign(folder: Path, namespace: Namespace, suite: Path) -> None:
    """Warn when an old folder's gate suite holds past tasks of other namespaces: two
    namespaces shared its old name, and its adapter versions may hold both."""
    try:
        items = json.loads(suite.read_text(encoding="utf-8")).get("items") or []
    except (OSError, ValueError, AttributeError):
        return
    prefix = join_namespace(namespace)
    foreign = sorted({str(it.get("namespace")) for it in items if isinstance(it, dict) and it.get("namespace")
                      and not (str(it["namespace"]) + "/").startswith(prefix + "/")})
    if foreign:
        logger.warning("old lineage folder %s (namespace %r) also learned from namespace(s) %s: their old lineage "
                       "names collided. It now belongs to %r only; the others start lineages of their own. Its "
                       "adapter versions may hold what those namespaces said: forget them or roll the lineage back",
                       folder, prefix, ", ".join(repr(f) for f in foreign[:10]), prefix)
