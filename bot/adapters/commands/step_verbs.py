"""Verbs about steps and suggestions: the same on the CLI and in Slack.

status, list (= incidents), suggest, run, do, reject (the "Not this playbook"
button) and ``approve --apply`` (the Approve button: one click approves
and applies, every guard still checked at apply).
"""

from __future__ import annotations

from dataclasses import replace

import yaml

from actions.catalog import get_action
from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.adapters.commands.incident_verbs import approve_verb as _approve_only
from bot.adapters.commands.incident_verbs import describe_run, incident_data, run_data
from bot.base.errors import InputError
from bot.core.step_cases import AD_HOC_TTL
from bot.playbook.schema import parse_duration
from bot.store import PAUSE_FLAG, Run

MAX_PARAM_VALUE = 500  # a key=value argument is a number or a name, not a document


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


async def suggest_verb(ctx: Context, cmd: Command) -> Result:
    engine = ctx.engine
    inc = engine.store.incident(cmd.args["id"])
    alert = engine.latest_alert(inc.id)
    matches = engine.matcher.match(alert)
    rejected = set(engine.rejected_playbooks(inc.id))
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
    run, new = await ctx.engine.run_step(cmd.args["id"], cmd.opt("--playbook"),
                                         cmd.args["step"], ctx.actor, dry_run=cmd.flag("--dry-run"))
    if not new:  # a double click, or two people clicking: nothing queued twice
        return replace(_run_result(run, f"{run.id} already plans this step ({run.state})"),
                       changed=False)
    return _run_result(run)


async def approve_verb(ctx: Context, cmd: Command) -> Result:
    """``approve RUN [--apply]``: with --apply, apply right after a valid approval."""
    if not cmd.flag("--apply"):
        return await _approve_only(ctx, cmd)
    run = ctx.engine.store.run(cmd.args["run"])
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
    params = dict(_param(p) for p in cmd.args["params"])
    subject = get_action(cmd.args["action"]).subject_arg
    if subject in params:
        raise InputError(f"give the {subject} as the second word, not as {subject}=...",
                         hint=f"do ACTION {subject.upper()} key=value...")
    ttl = AD_HOC_TTL
    if raw := cmd.opt("--ttl"):
        try:
            ttl = parse_duration(raw)
        except ValueError as exc:
            raise InputError(f"--ttl: {exc}", hint="e.g. --ttl 30m") from None
    run = await ctx.engine.plan_ad_hoc(
        cmd.args["action"], cmd.args["route"], params, ctx.actor,
        incident_id=cmd.opt("--incident"), target=cmd.opt("--target") or "default", ttl=ttl,
        dry_run=cmd.flag("--dry-run"))
    return _run_result(run)


async def reject_verb(ctx: Context, cmd: Command) -> Result:
    """"Not this playbook": record the rejection, suggest the next candidate (if any)."""
    inc_id, playbook_id = cmd.args["id"], cmd.args["playbook"]
    nxt = await ctx.engine.reject_playbook(inc_id, playbook_id, ctx.actor)
    if nxt is None:
        text = (f"{playbook_id} rejected for {inc_id}; no other playbook matches "
                f"(run an action by hand with `do`, or `plan PLAYBOOK --incident {inc_id}`)")
        return Result(text, {"rejected": playbook_id, "suggested": None})
    why = "; ".join(r.why for r in nxt.matched)
    text = (f"{playbook_id} rejected for {inc_id}; next suggestion: {nxt.playbook.id} "
            f"({nxt.playbook.title}), because {why}")
    return Result(text, {"rejected": playbook_id, "suggested": nxt.playbook.id})
