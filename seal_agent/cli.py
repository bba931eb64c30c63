"""The ``seal-agent`` command.

Human-readable output by default, ``--json`` for scripts. The memory home comes from
``--home``, else ``$SEAL_HOME``, else ``./.seal``; ``--chroma-url`` (or
``$SEAL_CHROMA_URL``) selects a Chroma server. Exit codes: 0 ok, 1 a seal_agent error
(bad input, unreachable backend), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seal_agent.errors import SealAgentError, ValidationError

__all__ = ["main"]


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
    _emit(args, st, "\n".join(lines))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from seal_agent.memory.records import parse_namespace

    ns = parse_namespace(args.namespace, "--namespace")
    with _memory(args) as mem:
        found = mem.recall(args.query, namespace=ns, k=args.k)
    data = [{"id": m.id, "score": round(m.score, 4), "namespace": "/".join(m.namespace),
             "created_at": m.created_at.isoformat(), "text": m.text, "metadata": dict(m.metadata)}
            for m in found]
    text = "\n".join(f"{d['score']:.3f}  {d['id']}  {d['text']!r}" for d in data) or "no memories found"
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
    """Parse and validate every line before anything is written (all or nothing)."""
    from seal_agent.memory.records import parse_namespace, validate_namespace

    if not path.is_file():
        raise ValidationError("FILE", str(path), "no such file")
    rows = []
    allowed = {"messages", "namespace", "thread_id", "metadata", "feedback"}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"line {n}", line[:60], f"is not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValidationError(f"line {n}", row, "must be a JSON object")
        extra = set(row) - allowed
        if extra:
            raise ValidationError(f"line {n}.{sorted(extra)[0]}", row[sorted(extra)[0]],
                                  f"unknown field; known: {sorted(allowed)}")
        ns = row.get("namespace", ["default"])
        try:
            row["namespace"] = parse_namespace(ns) if isinstance(ns, str) else validate_namespace(ns)
        except ValidationError as exc:
            raise ValidationError(f"line {n}.{exc.field}", exc.value, exc.reason) from exc
        rows.append((n, row))
    return rows


def cmd_import(args: argparse.Namespace) -> int:
    from seal_agent.memory.records import normalize_messages, validate_metadata, validate_score

    rows = _read_import(Path(args.file))
    with _memory(args) as mem:
        mc = mem.config.memory
        for n, row in rows:  # validate everything first: a bad line 900 must not leave 899 written
            try:
                normalize_messages(row.get("messages"), max_messages=mc.max_messages,
                                   max_message_chars=mc.max_message_chars)
                validate_metadata(row.get("metadata"))
                if row.get("feedback") is not None:
                    validate_score(row["feedback"], "feedback")
            except ValidationError as exc:
                raise ValidationError(f"line {n}.{exc.field}", exc.value, exc.reason) from exc
        ids = [mem.log(row["messages"], namespace=row["namespace"], thread_id=row.get("thread_id"),
                       metadata=row.get("metadata"), feedback=row.get("feedback")) for _, row in rows]
        mem.flush()
    _emit(args, {"imported": len(ids), "ids": ids}, f"imported {len(ids)} interactions")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from seal_agent.memory.records import parse_namespace

    if not args.namespace and not args.ids:
        raise ValidationError("--namespace", None, "give --namespace and/or --ids")
    ns = parse_namespace(args.namespace, "--namespace") if args.namespace else None
    with _memory(args) as mem:
        n = mem.forget(namespace=ns, ids=args.ids)
    _emit(args, {"forgotten": n}, f"forgot {n} interactions")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from seal_agent.demo import run_demo

    result = run_demo(args.demo_home, echo=None if args.json else print, parametric=not args.episodic_only)
    if args.json:
        print(json.dumps(asdict(result), indent=2, default=str))
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    from seal_agent.registry import AdapterRegistry

    reg = AdapterRegistry(Path(args.home) / "adapters")
    action = args.adapters_command
    if action == "list":
        versions = reg.list()
        data = [{"version": v.version, "verdict": v.verdict, "current": v.is_current, "parent": v.parent,
                 "created_at": v.created_at, "scale": v.scale, "unverified": v.unverified,
                 "full_candidate": v.full_candidate, "full_candidate_of": v.full_candidate_of} for v in versions]

        def flags(d: dict[str, Any]) -> str:
            out = ["  UNVERIFIED"] if d["unverified"] else []
            if d["full_candidate"]:
                out.append(f"  full candidate: {d['full_candidate']}")
            if d["full_candidate_of"]:
                out.append(f"  full candidate of {d['full_candidate_of']}")
            return "".join(out)

        text = "\n".join(f"{'*' if d['current'] else ' '} {d['version']}  {d['verdict']:9}  parent={d['parent']}"
                         f"  scale={d['scale']}{flags(d)}" for d in data) or "no adapters yet"
        _emit(args, data, text)
    elif action == "show":
        v = reg.get(args.version)
        _emit(args, v.manifest, json.dumps(v.manifest, indent=2, default=str))
    elif action == "rollback":
        name = reg.rollback(args.version)
        _emit(args, {"current": name}, f"CURRENT is now {name}")
    elif action == "export":
        dest = reg.export(args.version, args.dest)
        _emit(args, {"exported": str(dest)}, f"exported to {dest}")
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

    with _memory(args) as mem:
        if args.approve or args.reject:
            report = approve(mem, args.approve or args.reject, approve=bool(args.approve), progress=not args.json)
        else:
            report = mem.consolidate(dry_run=args.dry_run, progress=not args.json)
    _print_report(args, report)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from seal_agent.scheduler import run_forever

    with _memory(args) as mem:
        overrides = {k: v for k, v in {"cron": args.cron, "interval_minutes": args.interval_minutes,
                                       "min_new_interactions": args.min_new}.items() if v is not None}
        cfg = mem.config.with_overrides(schedule=overrides).schedule
        return run_forever(mem, cfg)


def cmd_chat(args: argparse.Namespace) -> int:
    from seal_agent.assistant import run_chat

    return run_chat(args)


def cmd_gate_report(args: argparse.Namespace) -> int:
    from seal_agent.gate.report import GateReport, render_report

    path = Path(args.home) / "gate" / "reports" / args.version
    if not path.is_dir():
        from seal_agent.registry import AdapterRegistry

        try:  # accept the short vNNNN form
            path = Path(args.home) / "gate" / "reports" / AdapterRegistry(Path(args.home) / "adapters").get(
                args.version).version
        except SealAgentError:
            raise ValidationError("VERSION", args.version, "has no gate report") from None
    if args.json:
        print(json.dumps(GateReport.load(path).to_dict(), indent=2, default=str))
    else:
        print(render_report(path))
    return 0


# ------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seal-agent", description="Long-term memory for LangGraph agents.")
    p.add_argument("--home", default=os.environ.get("SEAL_HOME", "./.seal"),
                   help="memory home (default: $SEAL_HOME or ./.seal)")
    p.add_argument("--chroma-url", default=os.environ.get("SEAL_CHROMA_URL"),
                   help="Chroma server, e.g. http://localhost:8000 (default: embedded)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("status", help="counts by namespace and status, home, backend").set_defaults(fn=cmd_status)

    mem = sub.add_parser("memories", help="search, list, import, forget episodic memories")
    msub = mem.add_subparsers(dest="memories_command", required=True)
    s = msub.add_parser("search", help="recall memories for a query")
    s.add_argument("query")
    s.add_argument("--namespace", default="default", help="namespace path, e.g. users/alice")
    s.add_argument("-k", type=int, default=5)
    s.set_defaults(fn=cmd_search)
    ls = msub.add_parser("list", help="list interactions in logging order")
    ls.add_argument("--namespace")
    ls.add_argument("--status", choices=["new", "consolidated", "excluded"])
    ls.add_argument("--limit", type=int)
    ls.set_defaults(fn=cmd_list)
    im = msub.add_parser("import", help="import interactions from JSONL (messages, namespace, thread_id, "
                                        "metadata, feedback per line)")
    im.add_argument("file")
    im.set_defaults(fn=cmd_import)
    fg = msub.add_parser("forget", help="delete interactions")
    fg.add_argument("--namespace")
    fg.add_argument("--ids", nargs="+")
    fg.set_defaults(fn=cmd_forget)

    demo = sub.add_parser("demo", help="run the offline demo assistant")
    demo.add_argument("--demo-home", help="memory home for the demo (default: a fresh temp dir)")
    demo.add_argument("--episodic-only", action="store_true", help="skip part 2 (consolidation into weights)")
    demo.set_defaults(fn=cmd_demo)

    ad = sub.add_parser("adapters", help="list, show, roll back or export adapter versions")
    asub = ad.add_subparsers(dest="adapters_command", required=True)
    asub.add_parser("list", help="every version; * marks CURRENT").set_defaults(fn=cmd_adapters)
    sh = asub.add_parser("show", help="a version's manifest")
    sh.add_argument("version")
    sh.set_defaults(fn=cmd_adapters)
    rb = asub.add_parser("rollback", help="make an earlier committed version CURRENT")
    rb.add_argument("version")
    rb.set_defaults(fn=cmd_adapters)
    ex = asub.add_parser("export", help="copy a version (a PEFT adapter folder + manifest) to DIR")
    ex.add_argument("version")
    ex.add_argument("dest")
    ex.set_defaults(fn=cmd_adapters)

    co = sub.add_parser("consolidate", help="learn from new interactions now (self-edits, LoRA, gate)")
    co.add_argument("--dry-run", action="store_true", help="generate self-edits, stop before training")
    co.add_argument("--approve", metavar="RUN", help="commit a run paused for approval")
    co.add_argument("--reject", metavar="RUN", help="reject a run paused for approval")
    co.set_defaults(fn=cmd_consolidate)

    sc = sub.add_parser("schedule", help="run consolidations on a schedule until SIGINT/SIGTERM")
    sc.add_argument("--cron", help="crontab expression, e.g. '0 3 * * *'")
    sc.add_argument("--interval-minutes", type=float)
    sc.add_argument("--min-new", type=int, help="run once this many new interactions wait")
    sc.set_defaults(fn=cmd_schedule)

    ch = sub.add_parser("chat", help="talk to the assistant: streamed answers, recalled memories, /commands")
    ch.add_argument("--user", help="whose memories: namespace users/NAME (default: the OS user name, or 'me')")
    ch.add_argument("--model", help="served model (default: [model] name_or_path in config.toml, else smollm2-135m)")
    ch.add_argument("--no-retrieval", action="store_true", help="start with recall off (/retrieval on|off)")
    ch.add_argument("--schedule-every", type=float, metavar="MINUTES", help="consolidate every N minutes meanwhile")
    ch.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default: model.max_new_tokens)")
    ch.add_argument("--system", help="system prompt ('' for none)")
    ch.add_argument("-k", type=int, help="memories recalled per message (default: 3)")
    ch.set_defaults(fn=cmd_chat)

    ga = sub.add_parser("gate", help="validation gate reports")
    gsub = ga.add_subparsers(dest="gate_command", required=True)
    gr = gsub.add_parser("report", help="print the gate report of a version")
    gr.add_argument("version")
    gr.set_defaults(fn=cmd_gate_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Third-party progress bars and chatter are noise in a CLI.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Spinning OpenMP workers slow torch down many times over when another process
    # shares the cores (torch is not imported yet: seal_agent imports it lazily).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return int(args.fn(args) or 0)
    except SealAgentError as exc:
        if args.json:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
