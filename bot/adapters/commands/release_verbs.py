"""`release start | status | list | promote | hold | rollback | judge`: the release
guard from the CLI and from Slack (one grammar; in Slack every release verb but
`status`, `list` and `judge` needs the on-call group, like any change)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.adapters.release_gate import build_gate
from bot.base.durations import parse_duration
from bot.base.errors import InputError
from bot.core.canary_judge import SIGNALS
from bot.core.release_cases import (
    DEFAULT_BAKE,
    DEFAULT_STEPS,
    ReleaseGuard,
    verdict_text,
)
from bot.core.release_moves import parse_steps
from bot.playbook.canary_thresholds import load_thresholds
from bot.store.releases import Release

USAGE = ("release start ROUTE --prompt V | --model M [--baseline V] [--steps 5,25,50,100] "
         "[--bake 10m] [--owner U] [--auto-promote] | release status [REL] | release list | "
         "release promote REL [--from 5%] | release hold REL [--reason R] | "
         "release rollback REL [--reason R] | release judge REL | release thresholds [FILE]")


def _data(r: Release) -> dict[str, Any]:
    return {"id": r.id, "route": r.route, "state": r.state, "percent": r.steps[r.step],
            "steps": r.steps, "change": r.change, "baseline": r.baseline, "owner": r.owner,
            "held": r.held, "auto_promote": r.auto_promote, "incident": r.incident_id,
            "step_started_at": r.step_started_at.isoformat()}


def _line(r: Release) -> str:
    held = ", held" if r.held else ""
    where = f"{r.steps[r.step]}%" if r.state == "canary" else r.state.replace("_", " ")
    return f"{r.id} {r.route}: {r.what} at {where}{held} (owner {r.owner})"


def _percent(text: str | None) -> int | None:
    """`--from 5%` (or 5): the step the person saw; the promote is refused if it moved."""
    if text is None:
        return None
    digits = text.strip().removesuffix("%")
    if not digits.isdigit():
        raise InputError(f"--from takes the percent you saw, like 5%, got {text[:20]!r}",
                         hint="`release status REL` shows the step it is at")
    return int(digits)


def _thresholds(ctx: Context, path: str | None) -> Result:
    """The thresholds in force (or FILE's, checked like a playbook), per signal."""
    if path is not None:
        ctx.require_local("release thresholds FILE")
    where = Path(path) if path else ctx.canary_thresholds
    thresholds = load_thresholds(where)  # a bad file raises, naming file, line and field
    rows = [f"{name:<17} {SIGNALS[name].means}: fails beyond +{t.max_change:.0%} "
            f"with {t.min_samples} requests a side{' (critical: rolls back)' if t.critical else ''}"
            for name, t in thresholds.signals.items()]
    shown = str(where) if where else "the shipped defaults"
    text = f"{shown}: alpha {thresholds.alpha:g}\n" + "\n".join(rows)
    return Result(text, thresholds.model_dump(mode="json"))


async def release_verb(ctx: Context, cmd: Command) -> Result:
    sub = (cmd.args.get("sub") or "list").lower()
    arg = cmd.args.get("arg")
    if sub == "thresholds":
        return _thresholds(ctx, arg)
    guard = ReleaseGuard(ctx.engine, gate=build_gate(ctx.release_gate),
                         thresholds=load_thresholds(ctx.canary_thresholds))
    store = ctx.engine.store
    if sub == "list":
        releases = store.releases()
        text = "\n".join(_line(r) for r in releases) or "no releases"
        return Result(text, [_data(r) for r in releases])
    if sub == "status" and arg is None:
        active = store.releases(active_only=True)
        return Result("\n".join(_line(r) for r in active) or "no release in progress",
                      [_data(r) for r in active])
    if not arg:
        raise InputError(f"release {sub} needs {'a ROUTE' if sub == 'start' else 'a REL id'}",
                         hint=USAGE)
    if sub == "start":
        rel = await guard.start(
            arg, actor=ctx.actor, prompt_version=cmd.opt("--prompt"), model=cmd.opt("--model"),
            baseline_version=cmd.opt("--baseline"),
            steps=parse_steps(cmd.opt("--steps") or DEFAULT_STEPS),
            bake=parse_duration(cmd.opt("--bake")) if cmd.opt("--bake") else DEFAULT_BAKE,
            owner=cmd.opt("--owner"), auto_promote=cmd.flag("--auto-promote"),
            target=cmd.opt("--target") or "default")
        return Result(f"started {_line(rel)}", _data(rel))
    if sub == "status":
        rel = store.release(arg)
        lines = [_line(rel)] + [f"  {e.at:%H:%M} {e.kind}: {e.text}"
                                for e in store.release_timeline(rel.id)]
        return Result("\n".join(lines), {**_data(rel), "timeline": [
            {"at": e.at.isoformat(), "kind": e.kind, "actor": e.actor, "text": e.text}
            for e in store.release_timeline(rel.id)]})
    if sub == "judge":
        verdict = await guard.judge(arg)
        text = f"{arg.upper()}: {verdict.decision}\n{verdict_text(verdict)}"
        return Result(text, {"decision": verdict.decision, "signals": [
            {"signal": s.signal, "outcome": s.outcome, "canary": s.canary,
             "baseline": s.baseline, "change": s.change, "p_value": s.p_value,
             "why": s.why} for s in verdict.signals]})
    if sub == "promote":
        rel = await guard.promote(arg, actor=ctx.actor, seen=_percent(cmd.opt("--from")))
    elif sub == "hold":
        rel = await guard.hold(arg, actor=ctx.actor, reason=cmd.opt("--reason") or "")
    elif sub == "rollback":
        rel = await guard.rollback(arg, actor=ctx.actor,
                                   reason=cmd.opt("--reason") or f"rolled back by {ctx.actor}")
    else:
        raise InputError(f"no release command '{sub[:40]}'", hint=USAGE)
    last = store.release_timeline(rel.id)[-1]
    waiting = f"\n{last.text}" if last.kind == "awaiting_approval" else ""
    return Result(_line(rel) + waiting, _data(rel))
