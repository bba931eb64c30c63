"""The ``seal-agent`` command.

Human-readable output by default, ``--json`` for scripts. The memory home comes from
``--home``, else ``$SEAL_HOME``, else ``./.seal``; ``--chroma-url`` (or
``$SEAL_CHROMA_URL``) selects a Chroma server. These global options (and ``-v``) may be
given before or after the subcommand: ``seal-agent --json status`` and ``seal-agent
status --json`` are the same.

Exit codes: 0 ok; 1 a seal_agent error (bad input, a home that cannot be opened, an
unreachable backend), always one line ``error: ...`` on stderr (with ``--json``, an
``{"error", "message"}`` object on stdout) and never a traceback; 2 bad usage (argparse's
own errors and ours, e.g. ``memories forget`` with neither ``--namespace`` nor ``--ids``),
with the usage on stderr. Output cut short by a closed pipe (``... | head``) ends quietly
with status 141, like other Unix tools killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from seal_agent.errors import SealAgentError, ValidationError

__all__ = ["main"]


class _UsageError(Exception):
    """Bad usage our own checks found after argparse (exit 2, like argparse's own errors)."""


def _memory(args: argparse.Namespace) -> Any:
    from seal_agent.seal_memory import SealMemory

    return SealMemory(args.home, chroma_url=args.chroma_url)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


# ----------------------------------------------------------------------- commands


def cmd_status(args: argparse.Namespace) -> int:
    with _memory(args) as mem:
        st = mem.status()
    lines = [f"home:     {st['home']}", f"backend:  {st['backend']}",
             f"interactions: {st['interactions']} (not yet indexed: {st['backlog']})"]
    for ns, counts in st["by_namespace"].items():
        lines.append(f"  {ns}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if st["last_index_error"]:
        lines.append(f"last indexing error: {st['last_index_error']}")
    # Consolidation, from the record in the home: what a scheduler in another process did.
    cons = st.get("consolidation") or {}
    last = cons.get("last")
    if cons.get("error"):
        lines.append(f"consolidation: status unreadable ({cons['error']})")
    elif last is None and not cons.get("pending"):
        lines.append("consolidation: never run")
    else:
        if last is not None:
            what = last["outcome"] + (f" -> {last['version']}" if last.get("version") else "")
            lines.append(f"consolidation: last run {last['run_id']} {what} at {last['at']}"
                         + (f" ({last['reason']})" if last.get("reason") else ""))
        lines.append(f"  consecutive failures: {cons.get('consecutive_failures', 0)}")
        lines.append(f"  last success: {cons.get('last_success_at') or 'never'}"
                     + (f"; last commit: {cons['last_committed_version']} at {cons['last_commit_at']}"
                        if cons.get("last_commit_at") else ""))
        for run in cons.get("pending", []):
            lines.append(f"  unfinished run {run['run_id']}: {run['attempts']} of {cons.get('max_attempts')} attempts"
                         + (f", last error: {run['last_error']}" if run.get("last_error") else ""))
        if cons.get("consecutive_failures") and cons.get("abandoned"):
            gone = cons["abandoned"][-1]
            lines.append(f"  abandoned {gone['run_id']} at {gone['at']}: {gone['reason']}")
    adapter = st.get("adapter")
    if adapter and adapter.get("problem"):
        lines.append(f"adapter: CURRENT {adapter['current'] or '(unreadable)'} is BROKEN ({adapter['problem']}); "
                     f"serving {adapter['serving'] or 'the base model'} instead")
    elif adapter and adapter.get("current"):
        lines.append(f"adapter: {adapter['current']}")
    _emit(args, st, "\n".join(lines))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from seal_agent.memory.records import parse_namespace

    ns = parse_namespace(args.namespace, "--namespace")
    with _memory(args) as mem:
        found = mem.recall(args.query, namespace=ns, k=args.k)
    # A namespace is a list in every JSON output (as in `memories list`), never a path string.
    data = [{"id": m.id, "score": round(m.score, 4), "namespace": list(m.namespace),
             "created_at": m.created_at.isoformat(), "text": m.text, "metadata": dict(m.metadata)}
            for m in found]
    where = "/".join(ns)
    text = "\n".join([f"namespace {where}:"] + [f"{d['score']:.3f}  {d['id']}  {d['text']!r}" for d in data]
                     if data else [f"no memories found in namespace {where}"])
    _emit(args, data, text)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from seal_agent.memory.records import parse_namespace

    ns = parse_namespace(args.namespace, "--namespace") if args.namespace else None
    with _memory(args) as mem:
        items = mem.list(namespace=ns, status=args.status, limit=args.limit)
    data = [it.to_dict() for it in items]
    text = "\n".join(f"{it.id}  {'/'.join(it.namespace)}  {it.status.value:12}  {it.text[:80]!r}"
                     for it in items) or "no interactions"
    _emit(args, data, text)
    return 0


def _read_import(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """Parse every line of a JSONL import: ``(line number, row)``; nothing is written here.

    Only the file format is checked here (JSON objects, a namespace path string turned
    into a tuple); the fields themselves are validated by `SealMemory.log_many`, the same
    code as `SealMemory.log`, so an import accepts exactly what `log` accepts.
    """
    from seal_agent.memory.records import parse_namespace

    if not path.is_file():
        raise ValidationError("FILE", str(path), "no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError("FILE", str(path), f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path}:{n}", line[:60], f"is not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValidationError(f"{path}:{n}", row, "must be a JSON object")
        if isinstance(row.get("namespace"), str):  # the CLI's path form, "users/alice"
            try:
                row["namespace"] = parse_namespace(row["namespace"])
            except ValidationError as exc:
                raise ValidationError(f"{path}:{n}: {exc.field}", exc.value, exc.reason) from exc
        rows.append((n, row))
    return rows


def cmd_import(args: argparse.Namespace) -> int:
    path = Path(args.file)
    rows = _read_import(path)
    with _memory(args) as mem:
        # One transaction, every row validated first: a bad line 900 leaves nothing written.
        done = mem.log_many([row for _, row in rows], labels=[f"{path}:{n}" for n, _ in rows])
        mem.flush()
    new = sum(1 for _, inserted in done if inserted)
    present = len(done) - new
    _emit(args, {"imported": new, "already_present": present, "ids": [id_ for id_, _ in done]},
          f"imported {new} new, {present} already present")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from seal_agent.memory.records import parse_namespace

    if not args.namespace and not args.ids:
        raise _UsageError("give --namespace and/or --ids")
    ns = parse_namespace(args.namespace, "--namespace") if args.namespace else None
    with _memory(args) as mem:
        report = mem.forget(namespace=ns, ids=args.ids)
    # "forgotten" (the count) stays first, as before the report existed
    _emit(args, {"forgotten": report.forgotten, **report.to_dict()}, report.summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from seal_agent.demo import run_demo

    result = run_demo(args.demo_home, echo=None if args.json else print, parametric=not args.episodic_only)
    if args.json:
        print(json.dumps(asdict(result), indent=2, default=str))
    return 0


def _lineage(args: argparse.Namespace) -> Any:
    """The adapter lineage a command is about: ``--namespace``'s under the home's config
    (``consolidation.adapter_scope``), else the global one."""
    from seal_agent.config import SealConfig
    from seal_agent.lineage import Lineage, lineage_for
    from seal_agent.memory.records import parse_namespace

    namespace = getattr(args, "namespace", None)
    if namespace is None:
        return Lineage(Path(args.home))
    ns = parse_namespace(namespace, "--namespace")
    return lineage_for(Path(args.home), ns, SealConfig.load(Path(args.home)).consolidation)


def cmd_adapters(args: argparse.Namespace) -> int:
    from seal_agent.lineage import all_lineages

    action = args.adapters_command
    if action == "export":  # checked first: nothing is written, nothing opened, when refused
        _refuse_export_into_registry(Path(args.home), args.dest)
    lineage = _lineage(args)
    reg = lineage.registry()
    if action == "list":
        versions = reg.list(verify=True)  # weights checked against the size and sha256 committed
        serving = reg.serving()
        data = [{"version": v.version, "verdict": v.verdict, "current": v.is_current, "parent": v.parent,
                 "created_at": v.created_at, "scale": v.scale, "unverified": v.unverified,
                 "full_candidate": v.full_candidate, "full_candidate_of": v.full_candidate_of,
                 "problem": v.problem, "serving": v.version == serving.version} for v in versions]

        def flags(d: dict[str, Any]) -> str:
            out = [f"  BROKEN: {d['problem']}"] if d["problem"] else []
            if d["unverified"]:
                out.append("  UNVERIFIED")
            if d["full_candidate"]:
                out.append(f"  full candidate: {d['full_candidate']}")
            if d["full_candidate_of"]:
                out.append(f"  full candidate of {d['full_candidate_of']}")
            return "".join(out)

        text = "\n".join(f"{'*' if d['current'] else ' '} {d['version']}  {d['verdict']:9}  parent={d['parent']}"
                         f"  scale={d['scale']}{flags(d)}" for d in data) or "no adapters yet"
        text = f"lineage {lineage.name}" + (f" (namespace {'/'.join(lineage.namespace)})" if lineage.namespace
                                             else "") + "\n" + text
        others = [ln for ln in all_lineages(Path(args.home)) if ln.namespace is not None and ln != lineage]
        if lineage.namespace is None and others:
            text += "\nnamespace lineages (see --namespace): " + ", ".join("/".join(ln.namespace) for ln in others)
        if serving.problem:
            text += (f"\nCURRENT ({serving.current or 'unreadable'}) cannot be served: {serving.problem}\n"
                     f"a chat model serves {serving.version or 'the base model'} instead")
        _emit(args, data, text)
    elif action == "show":
        v = reg.get(args.version)
        _emit(args, v.manifest, json.dumps(v.manifest, indent=2, default=str))
    elif action == "rollback":
        name = reg.rollback(args.version)
        _emit(args, {"current": name}, f"CURRENT is now {name}")
    elif action == "export" and args.for_vllm:  # what vLLM loads: rank capped to --max-lora-rank
        from seal_agent.serving.vllm import adapter_name, cap_lora_rank

        v = reg.get(args.version)
        report = cap_lora_rank(v.path, args.dest, args.max_lora_rank)
        name = adapter_name(lineage.name, v.version)
        text = (f"exported to {args.dest} as vLLM adapter {name}: LoRA rank {report['rank']}"
                + (f" capped to {args.max_lora_rank} (largest relative error of a layer's update "
                   f"{report['max_relative_error']:.3g})" if report["capped"]
                   else f" <= --max-lora-rank {args.max_lora_rank}, copied as is"))
        _emit(args, {"exported": str(args.dest), "vllm_name": name, **report}, text)
    elif action == "export":
        dest = reg.export(args.version, args.dest)
        _emit(args, {"exported": str(dest)}, f"exported to {dest}")
    return 0


# Folders of a home whose subfolders are registry versions (the knowledge adapter's, each
# namespace lineage's, the self-edit writer's): a folder exported there would be listed,
# served or rolled back to as a version that was never committed.
_REGISTRY_FOLDERS = ("adapters", "lineages", "writer")


def _refuse_export_into_registry(home: Path, dest: str) -> None:
    """Raise ValidationError if `dest`, resolved through symlinks and ``..``, lies inside
    one of the home's registries (``adapters/``, ``lineages/``, ``writer/``)."""
    target = Path(dest).expanduser().resolve()
    for name in _REGISTRY_FOLDERS:
        root = (home.expanduser() / name).resolve()
        if target == root or target.is_relative_to(root):
            raise ValidationError("DIR", dest, f"is inside the registry folder {root} of the home (resolved: "
                                                f"{target}); an export there would show up as an adapter version. "
                                                "Export outside the home's adapters/, lineages/ and writer/ folders")


def cmd_writer(args: argparse.Namespace) -> int:
    """The self-edit writer's lineage (ReST-EM, `seal_agent.selfedit.writer`)."""
    from seal_agent.selfedit.writer import list_writer, rollback_writer

    action = args.writer_command
    if action == "list":
        data = list_writer(Path(args.home))

        def reward(d: dict[str, Any]) -> str:
            mean = "-" if d["mean_reward"] is None else f"{d['mean_reward']:+.3f}"
            per = "-" if d["seconds_per_candidate"] is None else f"{d['seconds_per_candidate']:.1f}s"
            return f"mean reward {mean}, kept {d['kept']}/{d['total']}, {per}/candidate"

        text = "\n".join(f"{'*' if d['current'] else ' '} {d['version']}  {d['verdict']:9}  parent={d['parent']}  "
                         f"{reward(d)}" + (f"  BROKEN: {d['problem']}" if d["problem"] else "")
                         for d in data) or "no writer versions yet (seal-agent writer improve)"
        _emit(args, data, text)
    elif action == "rollback":
        name = rollback_writer(Path(args.home), args.version)
        _emit(args, {"current": name}, f"writer CURRENT is now {name}")
    else:
        with _memory(args) as mem:
            report = mem.improve_writer(rounds=args.rounds, candidates=args.candidates, progress=not args.json)
        lines = [f"writer run {report.run_id}: {report.verdict}"
                 + (f" -> {', '.join(report.versions)}" if report.versions else "")]
        if report.reason:
            lines.append(f"reason: {report.reason}")
        for r in report.rounds:
            mean = "-" if r.get("mean_reward") is None else f"{r['mean_reward']:+.3f}"
            per = "-" if r.get("seconds_per_candidate") is None else f"{r['seconds_per_candidate']:.1f}"
            lines.append(f"round {r['round']}: {r.get('version') or 'nothing committed'}; mean reward {mean}, "
                         f"kept {r.get('kept')}/{r.get('total')}, hurt canaries {r.get('hurt_canaries')} "
                         f"of {r.get('canary_checks', 0)} checked, "
                         f"{per} s/candidate, {r.get('seconds', 0):.1f} s"
                         + (f"; {r['unchecked_missing']} passed over, their update gone"
                            if r.get("unchecked_missing") else "")
                         + (f"; knowledge adapter {r['knowledge_gone']} deleted meanwhile: nothing kept"
                            if r.get("knowledge_gone") else ""))
        _emit(args, report.to_dict(), "\n".join(lines))
    return 0


def _print_report(args: argparse.Namespace, report: Any) -> None:
    data = report.to_dict()
    lines = [f"run {report.run_id}: {report.verdict}" + (f" -> {report.version}" if report.version else "")]
    if report.reason:
        lines.append(f"reason: {report.reason}")
    if report.counts:
        lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    if report.timings:
        lines.append("seconds: " + ", ".join(f"{k}={v:.2f}" for k, v in report.timings.items()))
    _emit(args, data, "\n".join(lines))


def cmd_consolidate(args: argparse.Namespace) -> int:
    from seal_agent.consolidation import approve

    if args.dry_run and (args.approve or args.reject):
        raise _UsageError("--dry-run starts a new run; it cannot go with --approve/--reject")
    with _memory(args) as mem:
        if args.approve or args.reject:
            report = approve(mem, args.approve or args.reject, approve=bool(args.approve), progress=not args.json)
        else:
            report = mem.consolidate(dry_run=args.dry_run, progress=not args.json)
    _print_report(args, report)
    return 0


class _EchoHandler(logging.Handler):
    """Prints the scheduler's events (started, each run and its outcome, stopped) on stdout.

    Why not only logging: a daemon that prints nothing without ``-v`` looks hung. One line
    per event, timestamped; with ``--json`` one JSON object per line.
    """

    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            when = datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds")
            if self.as_json:
                line = json.dumps({"time": when, "level": record.levelname.lower(), "message": message})
            else:
                line = f"{when}  {message}"
            print(line, flush=True)  # sys.stdout at emit time (tests capture it)
        except Exception:  # noqa: BLE001 -- logging's contract: a handler must not raise
            self.handleError(record)


def cmd_schedule(args: argparse.Namespace) -> int:
    from seal_agent.scheduler import run_forever

    logger = logging.getLogger("seal_agent.scheduler")
    handler = _EchoHandler(args.json)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
    logger.propagate = False  # printed once, here, not again by -v's stderr handler
    try:
        with _memory(args) as mem:
            overrides = {k: v for k, v in {"cron": args.cron, "interval_minutes": args.interval_minutes,
                                           "min_new_interactions": args.min_new}.items() if v is not None}
            cfg = mem.config.with_overrides(schedule=overrides).schedule
            return run_forever(mem, cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def cmd_chat(args: argparse.Namespace) -> int:
    from seal_agent.assistant import run_chat

    return run_chat(args)


def cmd_gate_report(args: argparse.Namespace) -> int:
    from seal_agent.gate.report import GateReport, render_report

    lineage = _lineage(args)
    reports = lineage.reports_dir
    try:  # accepts the short vNNNN form too
        version = lineage.registry().get(args.version)
    except SealAgentError:
        version = None
    path = reports / (version.version if version is not None else args.version)
    if not path.is_dir():
        raise ValidationError("VERSION", args.version, "has no gate report")
    # The gate judged the run's candidate folder; once committed, the registry version is what counts.
    committed = version.version if version is not None and version.verdict == "committed" else None
    if args.json:
        print(json.dumps({**GateReport.load(path).to_dict(), "committed_version": committed}, indent=2, default=str))
    else:
        print(render_report(path, version=committed))
    return 0


# ------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """``--home``, ``--chroma-url``, ``--json``, ``-v``: on the top parser (with defaults) and
    on every subcommand (``defaults=False``: SUPPRESS, so an option given before the
    subcommand is not reset by the subcommand's parser when it is absent after it)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--home", default=default(os.environ.get("SEAL_HOME", "./.seal")),
                        help="memory home (default: $SEAL_HOME or ./.seal)")
    parser.add_argument("--chroma-url", default=default(os.environ.get("SEAL_CHROMA_URL")),
                        help="Chroma server, e.g. http://localhost:8000 (default: embedded)")
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more logging (-vv for debug)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; global options work before and after the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, defaults=False)
    p = argparse.ArgumentParser(prog="seal-agent", description="Long-term memory for LangGraph agents.")
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", required=True)

    def command(parent: Any, name: str, fn: Any = None, **kwargs: Any) -> argparse.ArgumentParser:
        leaf = parent.add_parser(name, parents=[common], **kwargs)
        if fn is not None:
            leaf.set_defaults(fn=fn, usage_parser=leaf)
        return leaf

    command(sub, "status", cmd_status, help="counts by namespace and status, home, backend")

    mem = command(sub, "memories", help="search, list, import, forget episodic memories")
    msub = mem.add_subparsers(dest="memories_command", required=True)
    s = command(msub, "search", cmd_search, help="recall memories of one namespace for a query")
    s.add_argument("query")
    s.add_argument("--namespace", required=True, help="namespace path to search, e.g. users/alice (required)")
    s.add_argument("-k", type=_positive_int, default=5, help="how many memories (default: 5)")
    ls = command(msub, "list", cmd_list, help="list interactions in logging order")
    ls.add_argument("--namespace", help="only this namespace path (default: all)")
    ls.add_argument("--status", choices=["new", "consolidated", "excluded"])
    ls.add_argument("--limit", type=_positive_int)
    im = command(msub, "import", cmd_import, help="import interactions from JSONL (messages, namespace, "
                                                  "thread_id, metadata, feedback per line); all or nothing")
    im.add_argument("file")
    fg = command(msub, "forget", cmd_forget, help="delete interactions")
    fg.add_argument("--namespace")
    fg.add_argument("--ids", nargs="+")

    demo = command(sub, "demo", cmd_demo, help="run the offline demo assistant")
    demo.add_argument("--demo-home", help="memory home for the demo (default: a fresh temp dir)")
    demo.add_argument("--episodic-only", action="store_true", help="skip part 2 (consolidation into weights)")

    ad = command(sub, "adapters", help="list, show, roll back or export adapter versions")
    asub = ad.add_subparsers(dest="adapters_command", required=True)
    lineage_help = ("the lineage serving this namespace path, e.g. users/alice (with "
                    "consolidation.adapter_scope = 'namespace'; default: the global lineage)")
    al = command(asub, "list", cmd_adapters, help="every version; * marks CURRENT")
    sh = command(asub, "show", cmd_adapters, help="a version's manifest")
    sh.add_argument("version")
    rb = command(asub, "rollback", cmd_adapters, help="make an earlier committed version CURRENT")
    rb.add_argument("version")
    ex = command(asub, "export", cmd_adapters, help="copy a version (a PEFT adapter folder + manifest) to DIR")
    ex.add_argument("version")
    ex.add_argument("dest")
    ex.add_argument("--for-vllm", action="store_true",
                    help="write what vLLM loads: the LoRA rank capped to --max-lora-rank (truncated SVD)")
    ex.add_argument("--max-lora-rank", type=_positive_int, default=16,
                    help="the vLLM server's --max-lora-rank (default: 16, vLLM's default)")
    for leaf in (al, sh, rb, ex):
        leaf.add_argument("--namespace", help=lineage_help)

    wr = command(sub, "writer", help="the self-edit writer (ReST-EM): improve it, list or roll back its versions")
    wsub = wr.add_subparsers(dest="writer_command", required=True)
    wi = command(wsub, "improve", cmd_writer, help="reward sampled self-edits, keep the best, fine-tune the writer")
    wi.add_argument("--rounds", type=_positive_int, default=1, help="ReST-EM rounds (default: 1)")
    wi.add_argument("--candidates", type=_positive_int, help="self-edits sampled per interaction (default: 4)")
    command(wsub, "list", cmd_writer, help="writer versions with their rewards; * marks CURRENT")
    wb = command(wsub, "rollback", cmd_writer, help="make an earlier writer version CURRENT")
    wb.add_argument("version")

    co = command(sub, "consolidate", cmd_consolidate, help="learn from new interactions now (self-edits, LoRA, gate)")
    co.add_argument("--dry-run", action="store_true", help="generate self-edits, stop before training")
    decide = co.add_mutually_exclusive_group()
    decide.add_argument("--approve", metavar="RUN", help="commit a run paused for approval")
    decide.add_argument("--reject", metavar="RUN", help="reject a run paused for approval")

    sc = command(sub, "schedule", cmd_schedule, help="run consolidations on a schedule until SIGINT/SIGTERM; "
                                                     "prints each run and its outcome")
    sc.add_argument("--cron", help="crontab expression, e.g. '0 3 * * *'")
    sc.add_argument("--interval-minutes", type=_positive_float)
    sc.add_argument("--min-new", type=_positive_int, help="run once this many new interactions wait")

    ch = command(sub, "chat", cmd_chat, help="talk to the assistant: streamed answers, recalled memories, /commands")
    ch.add_argument("--user", help="whose memories: namespace users/NAME (default: the OS user name, or 'me')")
    ch.add_argument("--model", help="served model (default: [model] name_or_path in config.toml, else smollm2-135m)")
    ch.add_argument("--no-retrieval", action="store_true", help="start with recall off (/retrieval on|off)")
    ch.add_argument("--schedule-every", type=_positive_float, metavar="MINUTES",
                    help="consolidate every N minutes meanwhile")
    ch.add_argument("--max-new-tokens", type=_positive_int, help="longest answer in tokens (default: model.max_new_tokens)")
    ch.add_argument("--system", help="system prompt ('' for none)")
    ch.add_argument("-k", type=_positive_int, help="memories recalled per message (default: 3)")

    ga = command(sub, "gate", help="validation gate reports")
    gsub = ga.add_subparsers(dest="gate_command", required=True)
    gr = command(gsub, "report", cmd_gate_report, help="print the gate report of a version")
    gr.add_argument("version")
    gr.add_argument("--namespace", help=lineage_help)
    return p


def _exit_code(exc: SystemExit) -> int:
    """argparse's SystemExit as a status: 0 for --help, 2 for bad usage."""
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 2


def _one_line_os_error(exc: OSError, home: str) -> str:
    """An OSError (a home that cannot be created or written, ...) as one line naming the path."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return f"cannot use home {home}: {reason}"
    where, root = Path(os.fsdecode(exc.filename)).absolute(), Path(home).absolute()
    if where == root:
        return f"cannot use home {home}: {reason}"
    if root in where.parents:
        return f"cannot use home {home}: {reason}: {exc.filename}"
    return f"{exc.filename}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (0 ok, 1 error, 2 bad usage, 141 closed pipe)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or bad usage (argparse printed the usage and the error)
        return _exit_code(exc)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Third-party progress bars and chatter are noise in a CLI.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Spinning OpenMP workers slow torch down many times over when another process
    # shares the cores (torch is not imported yet: seal_agent imports it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        try:
            code = int(args.fn(args) or 0)
        except _UsageError as exc:
            usage = getattr(args, "usage_parser", parser)
            usage.print_usage(sys.stderr)
            print(f"{usage.prog}: error: {exc}", file=sys.stderr)
            return 2
        except SealAgentError as exc:
            _error(args, type(exc).__name__, str(exc))
            return 1
        except OSError as exc:  # e.g. a --home that cannot be created or written: one line, no traceback
            if isinstance(exc, BrokenPipeError):
                raise
            _error(args, type(exc).__name__, _one_line_os_error(exc, args.home))
            return 1
        except sqlite3.Error as exc:  # the journal cannot be opened or written
            _error(args, type(exc).__name__, f"home {args.home}: {exc}")
            return 1
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`... | head`): the standard recipe from Python's signal docs --
        # point stdout at devnull so the final flush at exit cannot fail again, and stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout has no file descriptor (captured in tests)
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe


def _error(args: argparse.Namespace, kind: str, message: str) -> None:
    # One line, always: a driver's message may span several (psycopg's "connection refused"
    # adds "\n\tIs the server running on that host...?"), and scripts read one line per error.
    message = " ".join(part.strip() for part in message.splitlines() if part.strip())
    if args.json:
        print(json.dumps({"error": kind, "message": message}))
    else:
        print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
