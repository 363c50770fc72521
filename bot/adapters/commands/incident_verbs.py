"""Verbs about incidents and runs: plan, apply, approve, deny, revert, mitigations,
runs, pause, resume, incidents, show, postmortem, tick."""

from __future__ import annotations

from bot.adapters.commands.console_verbs import console_page
from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.adapters.commands.playbook_verbs import _read_alerts
from bot.base.errors import InputError
from bot.core.postmortem import md_escape, render_postmortem
from bot.core.suggestions import describe_guard

NEXT_STEP = {
    "planned": "apply {id}",
    "awaiting_approval": "approve {id} (then apply {id})",
    "approved": "apply {id}",
    "applied": "revert {id} when done (or wait for its TTL)",
    "verified": "revert {id} when done (or wait for its TTL)",
}


def describe_run(run) -> str:
    head = f"{run.id}  {run.action} on {run.target}  state: {run.state}"
    if run.dry_run:
        head += " (dry run: never applied)"
    lines = [head]
    if run.playbook_id:
        lines.append(f"  from playbook {run.playbook_id} step {run.step_id}"
                     + (f", incident {run.incident_id}" if run.incident_id else ""))
    lines += ["  " + line for line in run.diff.splitlines()]
    lines.append("  guards: " + describe_guard(run.guard))
    if run.verify_query:
        lines.append(f"  verify query: {run.verify_query.strip()}")
    if run.error:
        lines.append(f"  why: {run.error}")
    if hint := NEXT_STEP.get(run.state):
        lines.append("  next: " + hint.format(id=run.id))
    return "\n".join(lines)


def run_data(run) -> dict:
    keys = ("id", "incident_id", "playbook_id", "step_id", "action", "target", "args", "state",
            "dry_run", "requested_by", "diff", "error", "verify_query", "scope")
    out = {k: getattr(run, k) for k in keys}
    out["created_at"] = str(run.created_at)
    out["updated_at"] = str(run.updated_at)
    return out


def _one(run) -> Result:
    return Result(describe_run(run), run_data(run))


async def plan_verb(ctx: Context, cmd: Command) -> Result:
    engine = ctx.engine
    incident_id = cmd.opt("--incident")
    alert_file = cmd.opt("--alert")
    if bool(incident_id) == bool(alert_file):
        raise InputError("plan needs exactly one of --alert FILE or --incident ID")
    if alert_file:
        ctx.require_local("plan --alert FILE")
        ingested = engine.ingest(_read_alerts(alert_file))
        wanted = cmd.args["playbook"]
        # Plan for the incident of the first alert the playbook is meant for; an
        # explicitly named playbook may also be forced onto the first alert.
        chosen = next(
            (i for i in ingested if any(m.playbook.id == wanted for m in i.matches)), ingested[0]
        )
        incident_id = chosen.incident_id
    assert incident_id is not None  # an alert file or --incident gave one
    run = await engine.plan_step(
        incident_id,
        cmd.args["playbook"],
        cmd.opt("--step"),
        actor=ctx.actor,
        dry_run=cmd.flag("--dry-run"),
    )
    return Result(describe_run(run), run_data(run), exit_code=3 if run.state == "refused" else 0)


async def apply_verb(ctx: Context, cmd: Command) -> Result:
    return _one(await ctx.engine.apply(cmd.args["run"], ctx.actor))


async def approve_verb(ctx: Context, cmd: Command) -> Result:
    return _one(await ctx.engine.approve(cmd.args["run"], ctx.actor))


async def deny_verb(ctx: Context, cmd: Command) -> Result:
    return _one(await ctx.engine.deny(cmd.args["run"], ctx.actor, cmd.opt("--reason") or ""))


async def revert_verb(ctx: Context, cmd: Command) -> Result:
    reason = cmd.opt("--reason") or "on request"
    return _one(await ctx.engine.revert(cmd.args["run"], ctx.actor, reason))


async def mitigations_verb(ctx: Context, cmd: Command) -> Result:
    active = ctx.engine.store.active_mitigations()
    lines = []
    data = []
    for m in active:
        run = ctx.engine.store.run(m.run_id)
        ttl = f"reverts at {m.ttl_due_at:%Y-%m-%d %H:%M} UTC" if m.ttl_due_at else "no TTL"
        drill = "[DRILL] " if run.scope == "drill" else ""
        lines.append(f"{drill}{run.id}  {run.action} on {run.target} ({', '.join(m.routes)})  "
                     f"applied {m.applied_at:%H:%M} UTC, {ttl}, verify {m.verify_state or '-'}")
        data.append(run_data(run) | {"ttl_due_at": str(m.ttl_due_at),
                                     "verify_state": m.verify_state})
    return Result("\n".join(lines) or "no active mitigations", data)


def _more(shown: int, total: int, what: str) -> str | None:
    if total <= shown:
        return None
    return f"showing the newest {shown} of {total} {what}; --limit N shows more"


async def runs_verb(ctx: Context, cmd: Command) -> Result:
    every = ctx.engine.store.runs(incident_id=cmd.opt("--incident"), state=cmd.opt("--state"))
    limit = cmd.limit(100)
    runs = every[-limit:]  # the newest, in order
    lines = [f"{r.id:<8} {r.state:<18} {r.action:<18} {r.target:<10} "
             f"{r.incident_id or '(ad hoc)'}{' [DRILL]' if r.scope == 'drill' else ''}"
             for r in runs]
    note = _more(len(runs), len(every), "runs")
    text = "\n".join(lines + ([note] if note else [])) or "no runs"
    return Result(text, [run_data(r) for r in runs], note=note)


async def pause_verb(ctx: Context, cmd: Command) -> Result:
    reason = cmd.opt("--reason") or "paused by hand"
    await ctx.engine.runner.pause(ctx.actor, reason)
    return Result(f"paused by {ctx.actor}: {reason}. No automatic action will run until `resume`.",
                  {"paused": True})


async def resume_verb(ctx: Context, cmd: Command) -> Result:
    await ctx.engine.runner.resume(ctx.actor)
    return Result(f"resumed by {ctx.actor}", {"paused": False})


def incident_data(i) -> dict:
    keys = ("id", "title", "class", "severity", "status", "is_drill", "commander")
    out = {k: getattr(i, "klass" if k == "class" else k, None) for k in keys}
    out["created_at"] = str(i.created_at)
    return out


async def incidents_verb(ctx: Context, cmd: Command) -> Result:
    store, status = ctx.engine.store, cmd.opt("--status")
    found = store.incidents(status=status, limit=cmd.limit(50))
    lines = [f"{i.id:<8} {i.status:<13} {i.severity:<9} {i.created_at:%Y-%m-%d %H:%M}  "
             f"{'[DRILL] ' if i.is_drill else ''}{i.title}" for i in found]
    note = _more(len(found), store.count_incidents(status), "incidents")
    text = "\n".join(lines + ([note] if note else [])) or "no incidents"
    return Result(text, [incident_data(i) for i in found], note=note)


async def show_verb(ctx: Context, cmd: Command) -> Result:
    store = ctx.engine.store
    inc = store.incident(cmd.args["id"])
    events = store.timeline(inc.id)
    lines = [f"{inc.id} {inc.title} [{inc.status}, {inc.severity}]"]
    if page := console_page(ctx, inc.id):
        lines.append(f"  console: {page}")
    lines += [f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.actor:<14} {e.kind:<18} {e.text}" for e in events]
    drill = " (DRILL)" if inc.is_drill else ""
    md = [f"# {inc.id} {md_escape(inc.title)}{drill}", "",
          f"**{inc.status}**, severity {inc.severity}, opened {inc.created_at:%Y-%m-%d %H:%M} UTC"
          + (f", commander {md_escape(inc.commander)}" if inc.commander else ""), "",
          "| at (UTC) | who | what | |", "|---|---|---|---|"]
    md += [f"| {e.at:%Y-%m-%d %H:%M:%S} | {md_escape(e.actor)} | {e.kind} | {md_escape(e.text)} |"
           for e in events]
    data = incident_data(inc) | {
        "console": console_page(ctx, inc.id),
        "timeline": [{"at": str(e.at), "actor": e.actor, "kind": e.kind, "text": e.text,
                      "run_id": e.run_id} for e in events]
    }
    return Result("\n".join(lines), data, markdown="\n".join(md))



async def postmortem_verb(ctx: Context, cmd: Command) -> Result:
    text = render_postmortem(ctx.engine.store, cmd.args["id"])
    return Result(text, {"markdown": text}, markdown=text)


async def tick_verb(ctx: Context, cmd: Command) -> Result:
    """Run what is due now, as `serve`'s timers would: cron-friendly."""
    from bot.adapters.scheduler import Scheduler  # the jobs, run once, without starting timers

    paging = ctx.open_escalations(ctx.engine) if ctx.open_escalations is not None else None
    runs = await Scheduler(ctx.engine, canary_thresholds=ctx.canary_thresholds,
                           escalations=paging).tick()
    lines = [f"{r.id} -> {r.state}" for r in runs]
    return Result("\n".join(lines) or "nothing due", [run_data(r) for r in runs])
