"""Verbs first asked for by the Slack app; they work the same on the CLI.

status, list (= incidents), suggest, run, do, reject (the "Not this playbook"
button) and ``approve --apply`` (the Approve button: one click approves
and applies, every guard still checked at apply).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import yaml

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.adapters.commands.incident_verbs import approve_verb as _approve_only
from bot.adapters.commands.incident_verbs import describe_run, incident_data, run_data
from bot.base.errors import InputError
from bot.core.engine import Engine
from bot.playbook.schema import Guard, parse_duration
from bot.store import PAUSE_FLAG
from bot.store.records import Incident, Run

# An ad hoc action (`do`) gets the strictest guards a human can still pass alone.
AD_HOC_TTL = timedelta(hours=1)
MAX_PARAM_VALUE = 500  # a key=value argument is a number or a name, not a document
PENDING = ("planned", "awaiting_approval", "approved")
REJECTED_KIND = "playbook_rejected"


def _open_incident(engine: Engine, incident_id: str, what: str) -> Incident:
    inc = engine.store.incident(incident_id)
    if not inc.is_open:
        raise InputError(f"{inc.id} is {inc.status}; cannot {what} on a closed incident",
                         hint=f"`show {inc.id}` for its timeline; revert still works on its runs")
    return inc


def _run_result(run: Run, prefix: str = "") -> Result:
    text = (prefix + "\n" if prefix else "") + describe_run(run)
    return Result(text, run_data(run), exit_code=3 if run.state == "refused" else 0)


# --- read verbs ---------------------------------------------------------------------

STATUS_SHOWN = 50  # lines of open incidents in `status`; the count covers every one


async def status_verb(ctx: Context, cmd: Command) -> Result:
    store = ctx.engine.store
    pause = store.flag(PAUSE_FLAG)
    open_incidents = store.open_incidents()  # every one: the count is never truncated
    active = store.active_mitigations()
    lines = [f"paused by {pause.set_by}: {pause.value}" if pause else "running (not paused)"]
    lines.append(f"{len(open_incidents)} open incident(s)")
    lines += [f"  {i.id:<8} {i.status:<13} {i.severity:<9} {i.title}"
              for i in open_incidents[:STATUS_SHOWN]]
    if len(open_incidents) > STATUS_SHOWN:
        lines.append(f"  ... and {len(open_incidents) - STATUS_SHOWN} more (`incidents --status "
                     "open --limit N`)")
    lines.append(f"{len(active)} active mitigation(s)")
    for m in active:
        run = store.run(m.run_id)
        ttl = f"reverts at {m.ttl_due_at:%H:%M} UTC" if m.ttl_due_at else "no TTL"
        lines.append(f"  {run.id:<8} {run.action} on {run.target} ({', '.join(m.routes)}), "
                     f"{ttl}, {run.incident_id or 'ad hoc'}")
    data = {
        "paused": pause is not None,
        "pause": {"by": pause.set_by, "reason": pause.value} if pause else None,
        "incidents": [incident_data(i) for i in open_incidents],
        "mitigations": [run_data(store.run(m.run_id)) for m in active],
    }
    return Result("\n".join(lines), data)


def rejected_playbooks(engine: Engine, incident_id: str) -> list[str]:
    return [e.data["playbook"] for e in engine.store.timeline(incident_id)
            if e.kind == REJECTED_KIND and e.data and "playbook" in e.data]


async def suggest_verb(ctx: Context, cmd: Command) -> Result:
    engine = ctx.engine
    inc = engine.store.incident(cmd.args["id"])
    alert = engine.latest_alert(inc.id)
    matches = engine.matcher.match(alert)
    rejected = set(rejected_playbooks(engine, inc.id))
    current = engine.suggested_playbook(inc.id)
    lines = [f"{inc.id} {inc.title}: playbooks for alert {alert.alertname or alert.fingerprint}"]
    for rank, m in enumerate(matches, 1):
        mark = " (current suggestion)" if m.playbook.id == current else ""
        mark += " (rejected)" if m.playbook.id in rejected else ""
        lines.append(f"{rank}. {m.playbook.id} (score {m.score:g}) {m.playbook.title}{mark}")
        lines += [f"     because {r.why}" for r in m.matched]
    if not matches:
        lines.append("no playbook matches; run an action by hand with `do`")
    data = [{"playbook": m.playbook.id, "score": m.score, "why": [r.why for r in m.matched],
             "current": m.playbook.id == current, "rejected": m.playbook.id in rejected}
            for m in matches]
    return Result("\n".join(lines), data)


# --- verbs that change things -------------------------------------------------------


async def run_verb(ctx: Context, cmd: Command) -> Result:
    """Plan a step; a step that needs no approval is applied at once (a human asked)."""
    engine = ctx.engine
    inc = _open_incident(engine, cmd.args["id"], "run a step")
    playbook_id = cmd.opt("--playbook") or engine.suggested_playbook(inc.id)
    if playbook_id is None:
        raise InputError(f"no playbook is suggested for {inc.id}",
                         hint=f"`suggest {inc.id}`, then `run {inc.id} --playbook ID`")
    playbook = engine.registry.get(playbook_id)
    step_id = cmd.args["step"] or playbook.steps[0].id
    dry = cmd.flag("--dry-run")
    if not dry:
        # A double click (or two people clicking) must not queue the same change twice.
        for r in engine.store.runs(incident_id=inc.id):
            if (r.playbook_id, r.step_id) == (playbook.id, step_id) and r.state in PENDING \
                    and not r.dry_run:
                return _run_result(r, f"{r.id} already plans this step ({r.state})")
    run = await engine.plan_step(inc.id, playbook.id, step_id, actor=ctx.actor, dry_run=dry)
    if run.state == "planned" and run.held_at is None:
        run = await engine.apply(run.id, ctx.actor)
    return _run_result(run)


async def approve_verb(ctx: Context, cmd: Command) -> Result:
    """``approve RUN [--apply]``: with --apply, apply right after a valid approval."""
    if not cmd.flag("--apply"):
        return await _approve_only(ctx, cmd)
    run = ctx.engine.store.run(cmd.args["run"])
    if run.incident_id:
        _open_incident(ctx.engine, run.incident_id, f"apply {run.id}")
    before = len(ctx.engine.store.approvals(run.id))
    run = await ctx.engine.approve(run.id, ctx.actor, apply=True)
    if len(ctx.engine.store.approvals(run.id)) > before:
        return _run_result(run, f"{run.id} approved by {ctx.actor} and {run.state}")
    # Someone else's approve --apply got there first: the change is in, once.
    done = _run_result(run, f"{run.id} is {run.state} already; nothing left to approve")
    return replace(done, changed=False)


def _param(pair: str) -> tuple[str, object]:
    key, eq, raw = pair.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise InputError(f"'{pair[:40]}' is not key=value",
                         hint="e.g. do cap_output_length chat max_output_tokens=256")
    if len(raw) > MAX_PARAM_VALUE:
        raise InputError(f"the value of {key} is {len(raw)} characters; the limit is "
                         f"{MAX_PARAM_VALUE}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw  # 256 -> int, {a: 0.5} -> dict
    except yaml.YAMLError:
        value = raw
    return key, value


async def do_verb(ctx: Context, cmd: Command) -> Result:
    """One ad hoc guarded action: on-call approval and a TTL (1h unless --ttl)."""
    engine = ctx.engine
    incident_id = cmd.opt("--incident")
    if incident_id:
        incident_id = _open_incident(engine, incident_id, "run an action").id
    params = dict(_param(p) for p in cmd.args["params"])
    if "route" in params:
        raise InputError("give the route as the second word, not as route=...",
                         hint="do ACTION ROUTE key=value...")
    ttl = AD_HOC_TTL
    if raw := cmd.opt("--ttl"):
        try:
            ttl = parse_duration(raw)
        except ValueError as exc:
            raise InputError(f"--ttl: {exc}", hint="e.g. --ttl 30m") from None
    run = await engine.runner.plan(
        incident_id=incident_id, playbook_id=None, step_id=None, action=cmd.args["action"],
        target=cmd.opt("--target") or "default", args={"route": cmd.args["route"], **params},
        guard=Guard(approval="oncall", ttl=ttl), verify_query=None, requested_by=ctx.actor,
        dry_run=cmd.flag("--dry-run"),
    )
    return _run_result(run)


async def reject_verb(ctx: Context, cmd: Command) -> Result:
    """"Not this playbook": record the rejection, suggest the next candidate (if any)."""
    engine = ctx.engine
    inc = _open_incident(engine, cmd.args["id"], "change the suggestion")
    playbook = engine.registry.get(cmd.args["playbook"])
    engine.store.add_event(inc.id, REJECTED_KIND, f"{ctx.actor}: not this playbook: {playbook.id}",
                           actor=ctx.actor, data={"playbook": playbook.id})
    rejected = set(rejected_playbooks(engine, inc.id))
    alert = engine.latest_alert(inc.id)
    rest = [m for m in engine.matcher.match(alert) if m.playbook.id not in rejected]
    if not rest:
        text = (f"{playbook.id} rejected for {inc.id}; no other playbook matches "
                f"(run an action by hand with `do`, or `plan PLAYBOOK --incident {inc.id}`)")
        return Result(text, {"rejected": playbook.id, "suggested": None})
    nxt = rest[0]
    engine.store.add_event(inc.id, "suggested",
                           f"suggested playbook {nxt.playbook.id} ({nxt.playbook.title}) after "
                           f"{ctx.actor} rejected {playbook.id}", actor=ctx.actor,
                           data={"playbook": nxt.playbook.id, "why": [r.why for r in nxt.matched],
                                 "others": [m.playbook.id for m in rest[1:]]})
    await engine.publish(await _suggestion(engine, inc.id, alert, rest))
    why = "; ".join(r.why for r in nxt.matched)
    text = (f"{playbook.id} rejected for {inc.id}; next suggestion: {nxt.playbook.id} "
            f"({nxt.playbook.title}), because {why}")
    return Result(text, {"rejected": playbook.id, "suggested": nxt.playbook.id})


async def _suggestion(engine: Engine, incident_id: str, alert, matches):
    from bot.core.suggestions import build_suggestion

    return await build_suggestion(engine.store.incident(incident_id), alert, matches,
                                  diagnose=engine.diagnose, metrics=engine.runner.metrics,
                                  timeout=engine.diagnose_timeout)
