"""AdapterRegistry: versioned LoRA adapters with an atomic CURRENT pointer.

Layout of a registry root (``<home>/adapters/``)::

    CURRENT                     the serving version's name, replaced atomically
    v0001-20261122T213500Z/     adapter_config.json, adapter_model.safetensors, manifest.json
    v0002-20261123T020000Z/     ...
    .lock                       a file lock shared by every process using the registry
    .pending                    present only while a commit is in flight (see below)
    .deleted-high-water         the highest version number ever deleted (forget): names are never reused

Every version is a complete PEFT LoRA folder (bias "none", no modules_to_save -- so
``PeftModel.from_pretrained`` and vLLM's LoRA loader both accept it) plus
``manifest.json``. Names are immutable and sort by time: ``v<NNNN>-<UTC time>``.
Committed versions are kept (rollback targets); staged and rejected candidates are
kept for inspection, the newest ``keep_staged`` of them.

A scaled-back commit (the gate committed a fraction of the update) keeps the *full*
candidate too: ``commit(scaled_dir, manifest, full_candidate=candidate_dir)`` stores it
as a staged version just before the committed one, in the same commit, and links the
two (``full_candidate`` in the committed manifest, ``full_candidate_of`` in the staged
one). It is retained like any staged version (the newest ``keep_staged``), so the link
may outlive it.

A manifest says ``"unverified": true`` when the adapter was committed with nothing to
judge it on (the gate's report says so, or the caller did).

Damaged versions: a manifest (format 2) records the size and sha256 of the weights file
(``"weights"``), so a version whose ``adapter_model.safetensors`` was deleted, cut short
or altered is detected (`AdapterRegistry.verify`; ``seal-agent adapters list`` shows it
as BROKEN). Manifests of format 1 carry no digest: their weights are checked against the
safetensors header (missing or cut-short files are still caught). Serving follows
`AdapterRegistry.serving`: CURRENT when it is intact, else the newest intact committed
version in its lineage (or the base model), with a warning saying so.

Crash safety of `AdapterRegistry.commit` (``kill -9`` at any instant):

1. the adapter is copied into ``.tmp-<version>/`` with its manifest, and fsync'd;
2. ``.pending`` (naming the version, then the staged full candidate if any) is
   written atomically;
3. ``.tmp-<version>/`` is renamed to ``<version>/`` (atomic on one filesystem), the
   full candidate's folder first;
4. ``CURRENT`` is replaced atomically (temp file, fsync, ``os.replace``, fsync dir);
5. ``.pending`` is removed.

Opening a registry repairs an interrupted commit: temp folders are deleted, and the
versions named in ``.pending`` are deleted too when the first of them never became
CURRENT (its commit never returned, so it never existed). CURRENT therefore always
names a complete version.

Crash safety of `AdapterRegistry.delete_versions` (what `forget` uses to remove the
versions that learned from forgotten interactions): ``.deleting`` (naming the versions)
is written atomically first; then CURRENT is moved off them (replaced atomically, or
removed: the base model serves); then each folder is renamed out of the version
namespace and removed; ``.deleting`` goes last. Opening a registry finishes a deletion
that a crash interrupted, so a version once condemned is never served again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from filelock import FileLock, Timeout

from seal_agent._finite import adapter_nonfinite, describe_nonfinite, json_safe, nonfinite_paths
from seal_agent._fs import fsync_dir as _fsync_dir
from seal_agent._fs import remove_dir as _remove_dir
from seal_agent._fs import staged_dir
from seal_agent._fs import write_atomic as _write_atomic
from seal_agent._fs import write_synced as _write_file
from seal_agent.errors import AdapterError, NotFoundError, RegistryError, ValidationError

__all__ = [
    "ADAPTER_FILES",
    "MANIFEST_FILENAME",
    "MANIFEST_FORMAT_VERSION",
    "AdapterRegistry",
    "AdapterVersion",
    "Serving",
    "check_weights",
    "validate_adapter_dir",
    "weights_digest",
]

logger = logging.getLogger(__name__)

MANIFEST_FILENAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 2
"""2: the manifest records the weights' size and sha256 (``"weights"``); 1 did not (still read)."""
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
"""Files every version must hold (besides ``manifest.json``)."""
WEIGHTS_FILENAME = "adapter_model.safetensors"

Verdict = Literal["committed", "rejected", "staged"]

_CURRENT = "CURRENT"
_PENDING = ".pending"
_DELETING = ".deleting"
_HIGH_WATER = ".deleted-high-water"  # highest version number deleted (names are never reused)
_KEEP_CURRENT: Any = object()  # `delete_versions`: leave CURRENT as it is
_LOCK = ".lock"
_TMP_PREFIX = ".tmp-"
_VERSION_RE = re.compile(r"^v(\d{4,})-(\d{8}T\d{6}Z)$")

# Fields a caller may set in a manifest; the registry fills in the rest.
_CALLER_FIELDS: dict[str, Any] = {
    "parent": None,  # default: CURRENT at commit time
    "base_model": None,
    "base_model_hash": None,
    "lineage": None,  # default: {"interaction_ids": [], "self_edit_hashes": []}
    "hyperparameters": None,
    "metrics": None,
    "gate": None,
    "scale": 1.0,
    "unverified": False,  # committed with nothing to judge it on (also read from gate["unverified"])
    "verdict": None,  # stage() only: "staged" (default) or "rejected"
}

# Test hook: called with the name of each step of a commit (crash simulation).
_fault_hook: Callable[[str], None] | None = None

COMMIT_HOOKS: list[Callable[[AdapterRegistry, str], None]] = []
"""Called as ``hook(registry, version)`` after every commit in this process, e.g. by
`seal_agent.serving.vllm.VLLMPublisher.install` (registers the version with a vLLM
server). A hook that raises is logged; the commit stands."""


def _fault_point(name: str) -> None:
    if _fault_hook is not None:
        _fault_hook(name)


@dataclass(frozen=True)
class AdapterVersion:
    """One stored adapter version.

    Attributes:
        version: Immutable name, e.g. ``"v0003-20261122T213500Z"``.
        path: The version's folder (a PEFT adapter folder plus ``manifest.json``).
        manifest: The parsed ``manifest.json`` (a copy; editing it changes nothing).
        verdict: ``"committed"``, ``"rejected"`` or ``"staged"``.
        is_current: Whether CURRENT names this version.
    """

    version: str
    path: Path
    manifest: dict[str, Any]
    verdict: Verdict
    is_current: bool = False
    problem: str | None = None
    """What is wrong with its files (missing, cut-short or altered weights); None when
    they are intact or were not checked (`AdapterRegistry.list` with ``verify=True``
    checks them)."""

    @property
    def parent(self) -> str | None:
        """The version this one was trained from, if any."""
        return self.manifest.get("parent")

    @property
    def created_at(self) -> str:
        """ISO-8601 UTC time of the commit or stage."""
        return str(self.manifest.get("created_at", ""))

    @property
    def base_model_hash(self) -> str | None:
        """Hash of the base model the adapter was trained on."""
        return self.manifest.get("base_model_hash")

    @property
    def scale(self) -> float:
        """Fraction of its update the adapter carries (the gate may scale back); informational:
        the weights are already scaled."""
        return float(self.manifest.get("scale", 1.0))

    @property
    def unverified(self) -> bool:
        """Committed with nothing to judge it on (no past tasks, canaries or probes)."""
        return bool(self.manifest.get("unverified", False))

    @property
    def full_candidate(self) -> str | None:
        """A scaled-back version: the staged version holding the full candidate it was scaled from."""
        return self.manifest.get("full_candidate")

    @property
    def full_candidate_of(self) -> str | None:
        """A staged full candidate: the scaled-back version committed from it."""
        return self.manifest.get("full_candidate_of")


class Serving(NamedTuple):
    """What a served model should load, from `AdapterRegistry.serving`.

    Attributes:
        version: The version to serve; None for the base model.
        current: What CURRENT names (None before the first commit or when CURRENT is
            unreadable).
        problem: Why `version` is not CURRENT (CURRENT's weights are damaged, or CURRENT
            itself is); None when CURRENT is served.
    """

    version: str | None
    current: str | None
    problem: str | None


class AdapterRegistry:
    """Versioned LoRA adapters under one folder, with an atomically replaced CURRENT.

    Safe across threads and processes (a file lock guards every write). Reading never
    takes the lock: CURRENT and version folders only ever change by atomic renames.

    Args:
        root: The registry folder (created if missing), typically ``<home>/adapters``.
        keep_staged: How many staged/rejected candidates to keep; older ones are pruned.
        base_model_hash: Hash of the base model this registry serves. When given (or
            known from CURRENT's manifest), commits of adapters trained on another base
            model are refused.
        lock_timeout: Seconds to wait for another process's commit to finish.

    Example::

        reg = AdapterRegistry(home / "adapters")
        v = reg.commit(result.adapter_path, {"base_model": "tiny-random", "base_model_hash": h})
        reg.current == v        # True
        reg.rollback(reg.get(v).parent)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        keep_staged: int = 10,
        base_model_hash: str | None = None,
        lock_timeout: float = 60.0,
    ) -> None:
        if not isinstance(keep_staged, int) or keep_staged < 0:
            raise ValidationError("keep_staged", keep_staged, "must be an integer >= 0")
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only home without adapters: readable as empty; writes fail later
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            logger.debug("registry %s cannot be created (%s); reading it as empty", self.root, exc)
        self.keep_staged = keep_staged
        self._base_hash = base_model_hash
        self._warned: set[tuple[Any, ...]] = set()  # `serving` fallbacks already logged
        self._warn_lock = threading.Lock()
        self._lock = FileLock(str(self.root / _LOCK), timeout=lock_timeout)
        try:  # repair only when no other process is mid-commit
            with self._lock.acquire(timeout=0):
                self._recover()
        except Timeout:
            logger.debug("registry %s is locked by another process; skipping recovery", self.root)
        except OSError as exc:  # a read-only home: nothing to repair from here, reading still works
            logger.debug("registry %s: cannot take the lock (%s); skipping recovery", self.root, exc)

    def __repr__(self) -> str:
        return f"AdapterRegistry({str(self.root)!r}, current={self.current!r})"

    # ------------------------------------------------------------------ reading

    @property
    def current(self) -> str | None:
        """The serving version's name, or None before the first commit.

        Raises:
            RegistryError: CURRENT is unreadable or garbage, or names no complete version;
                the message names the file and how to set it again.
        """
        path = self.root / _CURRENT
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = None
        if name == "":
            return None
        if name is None or not _VERSION_RE.match(name):
            raise RegistryError(f"{path} is damaged: it holds {raw[:40]!r}, not a version name. Set it again "
                                "with `seal-agent adapters rollback <version>` (versions: `seal-agent adapters "
                                "list`); until then the newest intact committed version is served")
        if not (self.root / name / MANIFEST_FILENAME).is_file():
            raise RegistryError(f"CURRENT names {name!r}, which is not a complete version in {self.root}")
        return name

    def _current_or_none(self) -> str | None:
        """CURRENT, or None when it is damaged (so that `list`, `get` and `rollback` still work)."""
        try:
            return self.current
        except RegistryError:
            return None

    @property
    def base_model_hash(self) -> str | None:
        """The base-model hash commits must match: the one given, else CURRENT's."""
        if self._base_hash is not None:
            return self._base_hash
        cur = self.current
        return self.get(cur).base_model_hash if cur else None

    def list(self, *, verify: bool = False) -> list[AdapterVersion]:
        """Every stored version, committed and staged, oldest first.

        Args:
            verify: Also check each version's files (sets `AdapterVersion.problem`); reads
                every weights file once per change (digests are cached by size and mtime).
        """
        cur = self._current_or_none()
        out = [self._read(name, cur) for name in self._version_names()]
        if verify:
            out = [dataclasses.replace(v, problem=check_weights(v.path, v.manifest)) for v in out]
        return out

    def get(self, version: str) -> AdapterVersion:
        """One version, by full name or by its ``vNNNN`` prefix.

        Raises:
            NotFoundError: No such version.
        """
        return self._read(self._resolve(version), self._current_or_none())

    def verify(self, version: str) -> str | None:
        """What is wrong with a version's files, or None when they are intact.

        Checks that the adapter files exist and that the weights have the size and
        sha256 the manifest recorded at commit (format-1 manifests: that the file holds
        all the data its safetensors header announces).

        Raises:
            NotFoundError: No such version.
        """
        v = self.get(version)
        return check_weights(v.path, v.manifest)

    def serving(self) -> Serving:
        """The version a model should serve: CURRENT if its files are intact, else the
        newest intact committed version in CURRENT's lineage (its parents), else the base
        model -- with a warning, logged once per CURRENT and problem.

        `SealMemory.chat_model` follows this before every request (cheap: a stat per
        version; a weights file is hashed again only when it changed).
        """
        try:
            cur = self.current
        except RegistryError as exc:  # CURRENT itself is garbage: take the newest intact committed
            candidates = list(reversed(self._version_names()))
            problem, cur = str(exc), None
        else:
            if cur is None:
                return Serving(None, None, None)
            problem = self.verify(cur)
            if problem is None:
                return Serving(cur, cur, None)
            candidates = []
            seen = {cur}
            parent = self.get(cur).parent
            while parent and parent not in seen:  # the lineage, newest first
                seen.add(parent)
                candidates.append(parent)
                try:
                    parent = self.get(parent).parent
                except NotFoundError:
                    break
        fallback = None
        for name in candidates:
            try:
                v = self.get(name)
            except NotFoundError:
                continue
            if v.verdict == "committed" and check_weights(v.path, v.manifest) is None:
                fallback = v.version
                break
        key = (cur, problem, fallback)
        with self._warn_lock:
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("adapter %s cannot be served (%s); serving %s instead", cur or "CURRENT", problem,
                               fallback or "the base model")
        return Serving(fallback, cur, problem)

    def check_compatible(self, version: str, base_model_hash: str | None) -> None:
        """Refuse to serve ``version`` on a base model with another hash.

        Args:
            version: The version (full name or ``vNNNN``).
            base_model_hash: Hash of the base model about to load it; None skips the check.

        Raises:
            AdapterError: Both hashes are known and differ.
            NotFoundError: No such version.
        """
        v = self.get(version)
        if base_model_hash is not None and v.base_model_hash is not None and v.base_model_hash != base_model_hash:
            raise AdapterError(f"adapter {v.version} was trained on base model {v.base_model_hash!r}, "
                               f"not {base_model_hash!r}")

    # ------------------------------------------------------------------ writing

    def commit(self, adapter_dir: str | os.PathLike[str], manifest: Mapping[str, Any] | None = None, *,
               full_candidate: str | os.PathLike[str] | None = None) -> str:
        """Store an adapter as a new version and make it CURRENT, atomically.

        Args:
            adapter_dir: A PEFT LoRA adapter folder (e.g. ``TrainResult.adapter_path``).
            manifest: Caller fields of the manifest: ``parent`` (default: CURRENT),
                ``base_model``, ``base_model_hash``, ``lineage`` (``interaction_ids``,
                ``self_edit_hashes``), ``hyperparameters``, ``metrics``, ``gate``,
                ``scale`` (default 1.0), ``unverified`` (default: the gate report's).
                The registry adds ``format_version``, ``library_version``, ``version``,
                ``verdict``, ``created_at`` and, with `full_candidate`, ``full_candidate``.
            full_candidate: For a scaled-back adapter: the full candidate's folder. It is
                stored as a staged version (``scale`` 1.0, ``full_candidate_of`` naming the
                committed one) in the same atomic commit, for inspection.

        Returns:
            The new version's name.

        Raises:
            AdapterError: The adapter folder is incomplete or corrupt, not LoRA, has a
                bias or modules_to_save, holds NaN/inf weights, or was trained on another
                base model.
            ValidationError: A manifest field is unknown or malformed (a NaN/inf number
                included: JSON has none).
            RegistryError: The registry is locked by another process for too long.
        """
        _refuse_nonfinite(adapter_dir, "commit")  # an all-NaN adapter must never become CURRENT
        name = self._store(adapter_dir, manifest, verdict="committed", full_candidate=full_candidate)
        for hook in list(COMMIT_HOOKS):
            try:
                hook(self, name)
            except Exception:  # serving elsewhere must not undo or fail a commit
                logger.warning("commit hook %r failed for %s of %s", hook, name, self.root, exc_info=True)
        return name

    def stage(self, adapter_dir: str | os.PathLike[str], manifest: Mapping[str, Any] | None = None) -> str:
        """Keep an adapter that is not served (a rejected or pending candidate) for inspection.

        The version gets a name like a committed one but CURRENT does not move. Only
        the newest ``keep_staged`` staged/rejected versions are kept.

        Args:
            adapter_dir: A PEFT LoRA adapter folder.
            manifest: As for `commit`; ``verdict`` may be ``"staged"`` (default) or ``"rejected"``.

        Returns:
            The staged version's name.
        """
        verdict = (manifest or {}).get("verdict") or "staged"
        if verdict not in ("staged", "rejected"):
            raise ValidationError("manifest.verdict", verdict, "stage() takes 'staged' or 'rejected'")
        return self._store(adapter_dir, manifest, verdict=verdict)

    def rollback(self, version: str) -> str:
        """Make an earlier committed version CURRENT again.

        Args:
            version: A committed version (full name or ``vNNNN``).

        Returns:
            The full version name now CURRENT.

        Raises:
            NotFoundError: No such version.
            RegistryError: The version was never committed (staged or rejected).
            AdapterError: It was trained on another base model than the registry's, or
                its weights are missing, damaged or hold NaN/inf values.
        """
        with self._locked():
            v = self.get(version)
            if v.verdict != "committed":
                raise RegistryError(f"cannot roll back to {v.version}: its verdict is {v.verdict!r}, "
                                    "only committed versions can be served")
            problem = check_weights(v.path, v.manifest)
            if problem is not None:
                raise AdapterError(f"cannot roll back to {v.version}: {problem}")
            _refuse_nonfinite(v.path, f"roll back to {v.version}")  # committed before NaN was refused
            if self._base_hash is not None:
                self.check_compatible(v.version, self._base_hash)
            self._write_current(v.version)
            logger.info("registry %s: rolled back to %s", self.root, v.version)
            return v.version

    def set_current(self, version: str | None) -> str | None:
        """Point CURRENT at a committed version, or remove it (None: the base model serves).

        Unlike `rollback`, None is allowed: it is where `forget` leaves a lineage none of
        whose committed versions is free of forgotten data. The change is atomic (a
        replaced or removed file, the folder fsync'd).

        Raises:
            NotFoundError, RegistryError, AdapterError: As `rollback`, for a version.
        """
        if version is not None:
            return self.rollback(version)
        with self._locked():
            (self.root / _CURRENT).unlink(missing_ok=True)
            _fsync_dir(self.root)
            logger.info("registry %s: CURRENT removed; the base model serves", self.root)
            return None

    def replace_gate_report(self, version: str, gate: Mapping[str, Any] | None) -> None:
        """Replace the gate report embedded in a version's manifest (atomically).

        Only `forget` uses it: a kept version's report may quote a past task that was
        forgotten since. Nothing else in a manifest may change after it was stored.
        """
        with self._locked():
            v = self.get(version)
            # json_safe: a report written before NaN was refused may hold NaN (JSON has none).
            body = {**v.manifest, "gate": json_safe(dict(gate)) if gate is not None else None}
            _write_atomic(v.path / MANIFEST_FILENAME, json.dumps(body, indent=2, sort_keys=True) + "\n")

    def delete_versions(self, versions: Iterable[str], *, new_current: str | None = _KEEP_CURRENT) -> list[str]:
        """Delete versions from disk (committed, staged or rejected), crash-safe.

        Args:
            versions: Version names (full or ``vNNNN``); unknown ones are skipped.
            new_current: What CURRENT names afterwards: a committed version that is
                kept, or None (the base model serves). Required when CURRENT is among
                `versions`; by default CURRENT is left as it is.

        Returns:
            The full names deleted.

        Raises:
            RegistryError: CURRENT would name a deleted version, or `new_current` is
                not a committed version that is kept.
        """
        with self._locked():
            names = []
            for v in versions:
                try:
                    names.append(self._resolve(v))
                except NotFoundError:
                    continue
            names = list(dict.fromkeys(names))
            current = self._current_or_none()
            target = current if new_current is _KEEP_CURRENT else new_current
            if target is not None:
                if target in names or self.get(target).verdict != "committed":
                    raise RegistryError(f"cannot delete {names} and serve {target!r}: CURRENT must name a "
                                        "committed version that is kept")
            elif current in names and new_current is _KEEP_CURRENT:
                raise RegistryError(f"cannot delete CURRENT ({current}) without saying what serves instead")
            if not names and target == current:
                return []
            numbers = [int(m.group(1)) for n in names if (m := _VERSION_RE.match(n))]
            if numbers and max(numbers) > self._deleted_high_water():
                _write_atomic(self.root / _HIGH_WATER, str(max(numbers)))
            # first line: what CURRENT must name ("-": nothing), so recovery can finish the move
            _write_atomic(self.root / _DELETING, "\n".join([target or "-", *names]))
            _fault_point("deleting")
            if target != current:
                if target is None:
                    (self.root / _CURRENT).unlink(missing_ok=True)
                    _fsync_dir(self.root)
                else:
                    self._write_current(target)
            _fault_point("deleting-current")
            for name in names:
                _remove_dir(self.root / name)
                _fault_point("deleted-one")
            (self.root / _DELETING).unlink()
            _fsync_dir(self.root)
            if names:
                logger.info("registry %s: deleted %s; CURRENT is %s", self.root, ", ".join(names),
                            target or "none (base model)")
            return names

    def export(self, version: str, dest: str | os.PathLike[str]) -> Path:
        """Copy a version (adapter files and manifest) to ``dest``, e.g. for vLLM or sharing.

        Args:
            version: The version (full name or ``vNNNN``).
            dest: Target folder; must not exist or be empty, and must not be inside this
                registry (resolved through symlinks and ``..``).

        Returns:
            ``dest`` as a Path.
        """
        v = self.get(version)
        out = Path(dest)
        inside = out.expanduser().resolve()
        root = self.root.resolve()
        if inside == root or inside.is_relative_to(root):  # it would be listed as a version of this registry
            raise ValidationError("dest", str(out), f"is inside this adapter registry {root} (resolved: {inside}); "
                                                    "export to a folder outside it")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValidationError("dest", str(out), "must not exist or be an empty folder")
        with staged_dir(out) as tmp:
            shutil.copytree(v.path, tmp, dirs_exist_ok=True)
        return out

    # ------------------------------------------------------------------ internals

    def _store(self, adapter_dir: str | os.PathLike[str], manifest: Mapping[str, Any] | None,
               *, verdict: Verdict, full_candidate: str | os.PathLike[str] | None = None) -> str:
        src = Path(adapter_dir)
        validate_adapter_dir(src)
        if full_candidate is not None:
            validate_adapter_dir(full_candidate)
        fields = _check_manifest(manifest)
        with self._locked():
            known = self.base_model_hash
            given = fields["base_model_hash"]
            if known is not None and given is not None and given != known:
                raise AdapterError(f"adapter in {src} was trained on base model {given!r}; "
                                   f"this registry serves {known!r}")
            if known is not None and given is None:
                logger.warning("manifest has no base_model_hash; cannot check the adapter in %s "
                               "matches base model %s", src, known)
            current = self.current
            now = datetime.now(UTC)
            # (name, source folder, manifest body) of each folder this call stores; the
            # full candidate (if any) takes the number just before the committed version.
            plan: list[tuple[str, Path, dict[str, Any]]] = []
            n = self._next_number()
            if full_candidate is not None:
                full_name, name = _name(n, now), _name(n + 1, now)
                plan.append((full_name, Path(full_candidate), self._body(
                    full_name, {**fields, "scale": 1.0, "unverified": False}, current, "staged",
                    full_candidate_of=name)))
                plan.append((name, src, self._body(name, fields, current, verdict, full_candidate=full_name)))
            else:
                name = _name(n, now)
                plan.append((name, src, self._body(name, fields, current, verdict)))
            tmps = []
            try:
                for vname, folder, body in plan:
                    tmp = self.root / f"{_TMP_PREFIX}{vname}"
                    tmps.append(tmp)
                    shutil.copytree(folder, tmp)
                    # digest of the stored copy: what `verify` and serving compare against
                    body = {**body, "weights": weights_digest(tmp)}
                    _write_file(tmp / MANIFEST_FILENAME, json.dumps(body, indent=2, sort_keys=True) + "\n")
                    _fsync_tree(tmp)
            except BaseException:
                for tmp in tmps:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
            _fault_point("copied")
            if verdict == "committed":
                # The committed version first: recovery reads it to decide.
                _write_atomic(self.root / _PENDING, "\n".join([name] + [v for v, _, _ in plan if v != name]))
                _fault_point("pending")
            for (vname, _, _), tmp in zip(plan, tmps, strict=True):
                os.replace(tmp, self.root / vname)
            _fsync_dir(self.root)
            _fault_point("renamed")
            if verdict == "committed":
                self._write_current(name)
                _fault_point("current")
                (self.root / _PENDING).unlink()
                _fsync_dir(self.root)
                logger.info("registry %s: committed %s (parent %s)%s", self.root, name, plan[-1][2]["parent"],
                            f", full candidate staged as {plan[0][0]}" if full_candidate is not None else "")
                if full_candidate is not None:
                    self._prune_staged()
            else:
                logger.info("registry %s: staged %s (%s)", self.root, name, verdict)
                self._prune_staged()
            return name

    def _body(self, name: str, fields: dict[str, Any], current: str | None, verdict: Verdict,
              **links: str) -> dict[str, Any]:
        gate = fields.get("gate") or {}
        return {
            "format_version": MANIFEST_FORMAT_VERSION,
            "library_version": _library_version(),
            "version": name,
            **fields,
            "unverified": bool(fields["unverified"] or gate.get("unverified", False)),
            "parent": fields["parent"] if fields["parent"] is not None else current,
            "verdict": verdict,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            **links,
        }

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._lock.acquire()
        except Timeout as exc:
            raise RegistryError(f"registry {self.root} is locked by another process") from exc
        try:
            yield
        finally:
            self._lock.release()

    def _write_current(self, name: str) -> None:
        _write_atomic(self.root / _CURRENT, name + "\n")

    def _version_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(names, key=lambda n: int(_VERSION_RE.match(n).group(1)))  # type: ignore[union-attr]

    def _next_number(self) -> int:
        names = self._version_names()
        top = int(_VERSION_RE.match(names[-1]).group(1)) if names else 0  # type: ignore[union-attr]
        return max(top, self._deleted_high_water()) + 1

    def _deleted_high_water(self) -> int:
        """The highest version number ever deleted: a name is never given twice (vLLM and
        manifests refer to versions by name; a deleted v0001 must not come back as another
        adapter called v0001)."""
        try:
            return int((self.root / _HIGH_WATER).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _resolve(self, version: str) -> str:
        if not isinstance(version, str) or not version:
            raise ValidationError("version", version, "must be a version name such as 'v0003'")
        names = self._version_names()
        if version in names:
            return version
        matches = [n for n in names if n.split("-", 1)[0] == version]
        if len(matches) == 1:
            return matches[0]
        raise NotFoundError("adapter version", version)

    def _read(self, name: str, current: str | None) -> AdapterVersion:
        path = self.root / name
        try:
            manifest = json.loads((path / MANIFEST_FILENAME).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NotFoundError("adapter version", name) from exc
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{path / MANIFEST_FILENAME} is not valid JSON: {exc}") from exc
        return AdapterVersion(version=name, path=path, manifest=manifest,
                              verdict=manifest.get("verdict", "committed"), is_current=name == current)

    def _prune_staged(self) -> None:
        current = self.current
        staged = [v for v in self.list() if v.verdict != "committed" and v.version != current]
        for v in staged[: max(0, len(staged) - self.keep_staged)]:
            logger.info("registry %s: pruning %s candidate %s", self.root, v.verdict, v.version)
            _remove_dir(v.path)

    def _recover(self) -> None:
        """Undo an interrupted commit and delete temp leftovers (called under the lock)."""
        pending = self.root / _PENDING
        if pending.exists():
            names = pending.read_bytes().decode("utf-8", errors="replace").split()  # committed version first
            try:
                current = (self.root / _CURRENT).read_bytes().decode("utf-8", errors="replace").strip()
            except FileNotFoundError:
                current = None
            if names and names[0] != current:
                for name in names:
                    if _VERSION_RE.match(name) and (self.root / name).is_dir():
                        logger.warning("registry %s: removing %s, whose commit was interrupted", self.root, name)
                        _remove_dir(self.root / name)
            pending.unlink()
        deleting = self.root / _DELETING
        if deleting.exists():  # a `delete_versions` that a crash interrupted: finish it
            target, *names = deleting.read_bytes().decode("utf-8", errors="replace").split() or ["-"]
            current = self._current_or_none()
            if current in names:  # CURRENT had not moved yet: move it as the deletion meant to
                if target != "-" and target not in names and (self.root / target / MANIFEST_FILENAME).is_file():
                    self._write_current(target)
                else:
                    (self.root / _CURRENT).unlink(missing_ok=True)
            for name in names:
                if _VERSION_RE.match(name) and (self.root / name).is_dir():
                    logger.warning("registry %s: removing %s, whose deletion was interrupted", self.root, name)
                    _remove_dir(self.root / name)
            deleting.unlink()
        for p in self.root.iterdir():
            # temp version folders, and temp files of `write_atomic` (".CURRENT.tmp-...")
            if p.name.startswith((_TMP_PREFIX, f".{_CURRENT}.tmp-", f".{_PENDING}.tmp-", f".{_DELETING}.tmp-")):
                logger.info("registry %s: removing leftover %s", self.root, p.name)
                _remove_dir(p) if p.is_dir() else p.unlink()
        _fsync_dir(self.root)


# --------------------------------------------------------------------------- validation


def validate_adapter_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that a folder holds a complete, servable PEFT LoRA adapter.

    Args:
        path: The adapter folder.

    Returns:
        The parsed ``adapter_config.json``.

    Raises:
        AdapterError: Missing files, unreadable config or weights, not LoRA, a bias
            other than "none", modules_to_save, or no LoRA tensors.
    """
    p = Path(path)
    if not p.is_dir():
        raise AdapterError(f"adapter folder {p} does not exist")
    for name in ADAPTER_FILES:
        if not (p / name).is_file():
            raise AdapterError(f"adapter folder {p} lacks {name}")
    try:
        cfg = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{p / 'adapter_config.json'} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise AdapterError(f"{p / 'adapter_config.json'} must hold a JSON object")
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"adapter in {p} has peft_type={cfg.get('peft_type')!r}; only 'LORA' is served")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"adapter in {p} has bias={cfg.get('bias')!r}; vLLM needs bias='none'")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"adapter in {p} has modules_to_save={cfg['modules_to_save']!r}; vLLM needs none")
    try:
        from safetensors import safe_open

        # Opening checks the header against the file size (a truncated file fails);
        # reading each tensor checks the data is all there.
        with safe_open(str(p / "adapter_model.safetensors"), framework="pt") as f:
            keys = list(f.keys())
            for k in keys:
                f.get_slice(k)[:]
    except Exception as exc:  # safetensors raises its own error types
        raise AdapterError(f"{p / 'adapter_model.safetensors'} is corrupt: {exc}") from exc
    if not any("lora_" in k for k in keys):
        raise AdapterError(f"{p / 'adapter_model.safetensors'} holds no LoRA weights")
    return cfg


_digests: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> sha256
_digests_lock = threading.Lock()


def _sha256(path: Path) -> str:
    """sha256 of a file, cached while its size, mtime and inode stay the same."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _digests_lock:
        hit = _digests.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    with _digests_lock:
        if len(_digests) > 4096:
            _digests.clear()
        _digests[key] = h.hexdigest()
    return _digests[key]


def weights_digest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"file", "size", "sha256"}`` of an adapter folder's weights, as a manifest records them."""
    path = Path(folder) / WEIGHTS_FILENAME
    return {"file": WEIGHTS_FILENAME, "size": path.stat().st_size, "sha256": _sha256(path)}


def check_weights(folder: str | os.PathLike[str], manifest: Mapping[str, Any] | None = None) -> str | None:
    """What is wrong with an adapter folder's files, or None when they look intact.

    With a manifest that records the weights' digest (format 2), the size and sha256
    must match. Otherwise (format 1, or a bare PEFT folder) the safetensors header must
    be readable and the file must hold all the data it announces -- cheap, and enough
    to catch a deleted or cut-short file.

    Args:
        folder: The adapter folder.
        manifest: Its parsed ``manifest.json``, if any.
    """
    p = Path(folder)
    for name in ADAPTER_FILES:
        if not (p / name).is_file():
            return f"{p / name} is missing"
    weights = p / WEIGHTS_FILENAME
    record = (manifest or {}).get("weights")
    try:
        size = weights.stat().st_size
        if isinstance(record, Mapping) and isinstance(record.get("sha256"), str):
            if size != record.get("size"):
                return (f"{weights} has {size} bytes, but {record.get('size')} were committed "
                        "(cut short or replaced)")
            if _sha256(weights) != record["sha256"]:
                return f"{weights} does not match the sha256 recorded at commit (damaged or replaced)"
            return None
        return _safetensors_problem(weights, size)
    except OSError as exc:
        return f"cannot read {weights}: {exc.strerror or exc}"


def _safetensors_problem(path: Path, size: int) -> str | None:
    """A cut-short or garbage safetensors file, from its header alone (no tensor is read)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is cut short ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000 or 8 + n > size:
            return f"{path} is cut short or not a safetensors file ({size} bytes; header of {n} bytes)"
        try:
            header = json.loads(f.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{path} is not a safetensors file (unreadable header)"
    if 8 + n + end > size:
        return f"{path} is cut short ({size} bytes of the {8 + n + end} its header announces)"
    return None


def _check_manifest(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    if manifest is None:
        manifest = {}
    if not isinstance(manifest, Mapping):
        raise ValidationError("manifest", manifest, "must be a dict")
    for key in manifest:
        if key not in _CALLER_FIELDS:
            raise ValidationError(f"manifest.{key}", manifest[key],
                                  f"unknown manifest field; known: {sorted(_CALLER_FIELDS)}")
    out = {k: manifest.get(k, default) for k, default in _CALLER_FIELDS.items() if k != "verdict"}
    for key in ("parent", "base_model", "base_model_hash"):
        if out[key] is not None and not isinstance(out[key], str):
            raise ValidationError(f"manifest.{key}", out[key], "must be a string or None")
    for key in ("hyperparameters", "metrics"):
        out[key] = dict(out[key] or {})
    if out["gate"] is not None and not isinstance(out["gate"], Mapping):
        raise ValidationError("manifest.gate", out["gate"], "must be a dict (the gate report) or None")
    lineage = dict(out["lineage"] or {})
    lineage.setdefault("interaction_ids", [])
    lineage.setdefault("self_edit_hashes", [])
    out["lineage"] = lineage
    if not isinstance(out["unverified"], bool):
        raise ValidationError("manifest.unverified", out["unverified"], "must be true or false")
    scale = out["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale <= 10.0:
        raise ValidationError("manifest.scale", scale, "must be a number in [0, 10]")
    out["scale"] = float(scale)
    bad = nonfinite_paths(out)
    if bad:  # json.dumps would write NaN/Infinity tokens, which strict JSON readers refuse
        path, value = bad[0]
        more = f" (and {len(bad) - 1} more: {', '.join(p for p, _ in bad[1:4])})" if len(bad) > 1 else ""
        raise ValidationError(f"manifest.{path}", value, f"must be a finite number: JSON has no NaN or "
                              f"Infinity{more}")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError("manifest", "<dict>", f"must be JSON-serialisable: {exc}") from exc
    return out


def _refuse_nonfinite(folder: str | os.PathLike[str], action: str) -> None:
    """`AdapterError` when the adapter's weights hold NaN/inf values (unreadable weights are
    left to `validate_adapter_dir` / `check_weights`, which name that)."""
    try:
        bad = adapter_nonfinite(folder)
    except Exception:  # safetensors raises its own types
        return
    if bad:
        raise AdapterError(f"cannot {action}: the adapter in {folder} holds NaN/inf weights in "
                           f"{describe_nonfinite(bad)} (it would answer nothing)")


# --------------------------------------------------------------------------- filesystem


def _name(number: int, when: datetime) -> str:
    return f"v{number:04d}-{when.strftime('%Y%m%dT%H%M%SZ')}"


def _library_version() -> str:
    try:
        from seal_agent import __version__

        return str(__version__)
    except ImportError:
        return "0+unknown"


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))
