"""Verbs about playbooks: lint, test, match, schema, playbooks, playbook."""

from __future__ import annotations

import json
from pathlib import Path

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.base.errors import InputError
from bot.core.suggestions import describe_guard
from bot.intake.parse import parse_body
from bot.playbook.loader import lint, load_dir
from bot.playbook.matcher import Matcher
from bot.playbook.schema import json_schema
from bot.playbook.testing import run_tests

SCHEMA_FILE = "playbook.schema.json"


async def lint_verb(ctx: Context, cmd: Command) -> Result:
    ctx.require_local("lint")
    paths = [Path(p) for p in cmd.args["paths"]] or [ctx.playbooks_dir]
    problems = lint(paths)
    data = [p.__dict__ for p in problems]
    if problems:
        text = "\n".join(str(p) for p in problems) + f"\n{len(problems)} problem(s)"
        return Result(text, data, exit_code=1)
    return Result(f"ok: no problems in {', '.join(map(str, paths))}", data)


async def test_verb(ctx: Context, cmd: Command) -> Result:
    ctx.require_local("test")
    playbooks_dir = Path(cmd.opt("--playbooks") or ctx.playbooks_dir)
    paths: list[Path] = []
    for raw in cmd.args["paths"]:
        path = Path(raw)
        if path.is_dir() and (path / "tests").is_dir() and not any(path.glob("*.test.y*ml")):
            # A playbook directory (`test playbooks`): its tests, against its playbooks.
            paths.append(path / "tests")
            if not cmd.opt("--playbooks"):
                playbooks_dir = path
        else:
            paths.append(path)
    paths = paths or [playbooks_dir / "tests"]
    playbooks = load_dir(playbooks_dir)
    report = run_tests(paths, playbooks)
    return Result(report.format(), None, exit_code=0 if report.failed == 0 else 1)


def _read_alerts(path: str):
    try:
        body = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read alert file {path}: {exc.strerror}") from None
    return parse_body(body)


async def match_verb(ctx: Context, cmd: Command) -> Result:
    ctx.require_local("match FILE")
    alerts = _read_alerts(cmd.args["file"])
    playbooks = load_dir(ctx.playbooks_dir)
    matcher = Matcher(playbooks.values())
    explain = cmd.flag("--explain")
    lines: list[str] = []
    data = []
    for alert in alerts:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
        lines.append(f"alert {alert.alertname or '?'} [{alert.status}] {{{labels}}}")
        if explain:
            matches, misses = matcher.explain(alert, limit=3)
        else:
            matches, misses = matcher.match(alert), []
        if not matches:
            lines.append("  no playbook matches")
        for rank, m in enumerate(matches, 1):
            lines.append(f"  {rank}. {m.playbook.id} (score {m.score:g}) {m.playbook.title}")
            lines += [f"       because {r.why}" for r in m.matched]
        for miss in misses:
            lines.append(f"  near miss: {miss.playbook.id}")
            lines += [f"       held:   {r.why}" for r in miss.matched]
            lines += [f"       failed: {r.why}" for r in miss.failed]
        data.append(
            {
                "alert": {"alertname": alert.alertname, "status": alert.status,
                          "labels": alert.labels, "fingerprint": alert.fingerprint},
                "matches": [
                    {"playbook": m.playbook.id, "score": m.score,
                     "why": [r.why for r in m.matched]}
                    for m in matches
                ],
                "near_misses": [
                    {"playbook": n.playbook.id, "held": [r.why for r in n.matched],
                     "failed": [r.why for r in n.failed]}
                    for n in misses
                ],
            }
        )
    return Result("\n".join(lines), data)


async def schema_verb(ctx: Context, cmd: Command) -> Result:
    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if cmd.flag("--write"):
        ctx.require_local("schema --write")
        target = ctx.playbooks_dir / SCHEMA_FILE
        target.write_text(text)
        return Result(f"wrote {target}")
    return Result(text.rstrip("\n"), json.loads(text))


async def playbooks_verb(ctx: Context, cmd: Command) -> Result:
    books = sorted(ctx.engine.registry.playbooks.values(), key=lambda p: p.id)
    lines = [f"{p.id:<22} {p.class_:<20} {p.severity:<9} {p.title}" for p in books]
    data = [{"id": p.id, "class": p.class_, "severity": p.severity, "title": p.title,
             "steps": [s.id for s in p.steps]} for p in books]
    return Result("\n".join(lines) or "no playbooks loaded", data)


async def playbook_verb(ctx: Context, cmd: Command) -> Result:
    p = ctx.engine.registry.get(cmd.args["id"])
    lines = [f"{p.id}: {p.title} [{p.class_}, {p.severity}]"]
    if p.summary:
        lines.append(p.summary.strip())
    lines.append("match any: " + "; ".join(c.describe() for c in p.match.any))
    if p.match.all:
        lines.append("match all: " + "; ".join(c.describe() for c in p.match.all))
    for i, s in enumerate(p.steps, 1):
        lines.append(f"{i}. {s.id}: {s.title} ({s.action})\n   guards: {describe_guard(s.guard)}")
    return Result("\n".join(lines), p.model_dump(mode="json", by_alias=True))


async def reload_verb(ctx: Context, cmd: Command) -> Result:
    """Reload the playbook directory, all or nothing; the result is posted too."""
    engine = ctx.engine
    result = await engine.reload_playbooks(ctx.actor)
    data = {"ok": result.ok, "playbooks": result.count, "changed": result.changed,
            "in_force": result.origin, "problems": [p.__dict__ for p in result.problems]}
    return Result(result.text(engine.registry.source), data, exit_code=0 if result.ok else 1)
