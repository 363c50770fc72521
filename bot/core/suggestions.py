"""The suggestion posted when an incident opens, and the messages about automatic steps.

A suggestion carries everything the on-call engineer needs to decide without
leaving the channel: class, severity, route and model, why this playbook
matched, the current numbers from the playbook's diagnose queries, the steps
with their guards in words, the other candidate playbooks and the buttons.

Alert labels go into the message as plain data (the renderer escapes them).
Only the reviewed playbook's own templates are rendered, by the sandbox, with
labels as context values: a label holding ``{{ 7*7 }}`` is shown as exactly that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from actions.base import MetricsSource, Sample
from actions.catalog import get_action
from bot.base.errors import IncidentBotError
from bot.core.messages import Button, Field, Message, Section, step_value
from bot.intake.alert import Alert
from bot.playbook.matcher import MatchResult
from bot.playbook.render import render_params, render_step_args
from bot.playbook.schema import Guard, Playbook, Step, format_duration, not_for
from bot.store import Incident, Run, Store
from bot.store.releases import Release

MAX_SAMPLES_SHOWN = 5
APPROVAL_WORDS = {
    "none": "no approval needed",
    "oncall": "needs an on-call approval",
    "two_person": "needs approval by a second person",
}


def describe_guard(g: Guard) -> str:
    """A step's guards as one sentence an on-call engineer reads at 3 a.m."""
    parts = [APPROVAL_WORDS[g.approval]]
    if g.approval == "oncall":
        # Say who may approve: one person alone is a real difference from two_person.
        parts[0] += (" (the requester may approve it alone)" if g.self_approval
                     else " by someone other than the requester")
    for arg, allowed in g.allow.items():
        shown = ", ".join(allowed) if isinstance(allowed, list) else f"group {allowed.group}"
        parts.append(f"{arg} only {shown}")
    if g.auto:
        parts.append("runs automatically when its guards pass")
    if g.dry_run:
        parts.append("dry run only (never applied)")
    if g.ttl:
        parts.append(f"reverted automatically after {format_duration(g.ttl)}")
    if g.cooldown:
        parts.append(f"cooldown {format_duration(g.cooldown)}")
    if g.max_runs:
        parts.append(f"at most {g.max_runs.count} runs per {format_duration(g.max_runs.window)}")
    br = g.blast_radius
    # Customers count as routes do (actions.customer_actions).
    parts.append(f"changes at most {br.max_routes} route{'s' if br.max_routes > 1 else ''} "
                 "or customer" + ("s" if br.max_routes > 1 else ""))
    if br.keep_serving:
        parts.append("never leaves a model group without a serving route")
    if g.verify:
        parts.append(f"verified: expects {g.verify.expect} within "
                     f"{format_duration(g.verify.within)}, else {g.verify.on_fail}")
    return "; ".join(parts)


def format_samples(samples: Sequence[Sample]) -> str:
    if not samples:
        return "no data"
    if len(samples) == 1 and not samples[0].labels:
        return _num(samples[0].value)
    shown = [
        f"{_num(s.value)} ({', '.join(f'{k}={v}' for k, v in sorted(s.labels.items()))})"
        if s.labels else _num(s.value)
        for s in samples[:MAX_SAMPLES_SHOWN]
    ]
    more = f" and {len(samples) - MAX_SAMPLES_SHOWN} more" if len(samples) > MAX_SAMPLES_SHOWN else ""
    return "; ".join(shown) + more


def _num(v: float) -> str:
    return f"{v:.4g}"


async def diagnose_values(
    queries: Sequence[tuple[str, str]], metrics: MetricsSource | None, *, timeout: float
) -> list[Field]:
    """Run the diagnose queries concurrently, each bounded by ``timeout`` seconds.

    A failing or slow query shows as "unavailable (why)": the suggestion is
    posted either way, it never waits on a sick Prometheus.
    """
    if metrics is None:
        return [Field(title, "unavailable (no metrics source configured)") for title, _ in queries]

    async def one(query: str) -> str:
        try:
            return format_samples(await asyncio.wait_for(metrics.query(query), timeout))
        except TimeoutError:
            return f"unavailable (no answer within {timeout:g}s)"
        except Exception as exc:
            why = exc.message if isinstance(exc, IncidentBotError) else type(exc).__name__
            return f"unavailable ({why})"

    values = await asyncio.gather(*(one(q) for _, q in queries))
    return [Field(title, value) for (title, _), value in zip(queries, values, strict=True)]


def release_on(engine: Any, alert: Alert) -> Release | None:
    """The release in progress on the alert's route (not when the alert is that
    release's own rollback): an incident there most likely started with it."""
    route, _ = route_and_model(alert)
    store: Store = engine.store
    release = store.active_release(route) if route else None
    if release is None or alert.labels.get("release") == release.id:
        return None
    return release


def route_and_model(alert: Alert) -> tuple[str | None, str | None]:
    labels = alert.labels
    route = labels.get("route") or labels.get("requested_model")
    model = labels.get("model") or labels.get("model_name")
    return route, model


def _step_section(index: int, step: Step, playbook: Playbook, alert: Alert) -> Section:
    why = not_for(step, alert.labels)
    if why is not None:
        return Section(f"{step.action} on {step.target}: not for this alert ({why})",
                       title=f"Step {index}: {step.id}: {step.title}")
    try:
        args = render_step_args(step, render_params(playbook, alert), alert)
        what = ", ".join(f"{k}={v}" for k, v in args.items())
    except IncidentBotError as exc:
        what = f"cannot be rendered for this alert: {exc.message}"
    else:
        if (problem := _args_problem(step, args)) is not None:
            what += f"; cannot be planned for this alert: {problem}"
    text = f"{step.action} on {step.target} ({what})\nGuards: {describe_guard(step.guard)}"
    return Section(text, title=f"Step {index}: {step.id}: {step.title}")


def _args_problem(step: Step, args: dict[str, Any]) -> str | None:
    """What the action says of these arguments (e.g. a customer label that is no caller
    id), so the suggestion says it before anyone clicks Run."""
    try:
        get_action(step.action).parse_params(args)
    except IncidentBotError as exc:
        return exc.message
    return None


def _plannable(step: Step, playbook: Playbook, alert: Alert) -> bool:
    if not_for(step, alert.labels) is not None:
        return False
    try:
        args = render_step_args(step, render_params(playbook, alert), alert)
    except IncidentBotError:
        return True  # as before: the click says what is missing
    return _args_problem(step, args) is None


async def build_suggestion(
    incident: Incident,
    alert: Alert,
    matches: Sequence[MatchResult],
    *,
    diagnose: Callable[[Playbook, Alert], list[tuple[str, str]]],
    metrics: MetricsSource | None,
    timeout: float = 2.0,
    release: Release | None = None,
) -> Message:
    """The ``suggestion`` Message for a newly opened incident. With ``release`` (one in
    progress on the incident's route) it says so first, and its rollback comes first."""
    route, model = route_and_model(alert)
    head = [
        Field("Class", incident.klass), Field("Severity", incident.severity),
        Field("Route", route or "-"), Field("Model", model or "-"),
        Field("Alert", alert.alertname or alert.fingerprint), Field("Source", alert.source),
    ]
    if alert.labels.get("customer"):  # a per-customer alert: whose traffic it is
        head.insert(3, Field("Customer", alert.labels["customer"]))
    summary = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    sections = [Section(summary, title="Alert", fields=tuple(head))]
    buttons: list[Button] = []
    if release is not None:
        sections.insert(0, Section(
            f"{release.id} is going out on {release.route}: {release.what} on "
            f"{release.steps[release.step]}% of its traffic (owner {release.owner}). "
            f"Rolling it back is the cheapest first step: `release rollback {release.id}`.",
            title="Release in progress"))
        buttons.append(Button("release_rollback", f"Roll back {release.id}", release.id,
                              "danger"))
    drill = "[DRILL] " if incident.is_drill else ""
    top = matches[0].playbook if matches else None
    if top is None:
        sections.append(Section(
            "No playbook matched this alert. Name one with "
            f"`plan PLAYBOOK --incident {incident.id}`, or run an action with `do`.",
            title="No playbook"))
        text = f"{drill}{incident.id} {incident.title} ({incident.severity}): no playbook matched"
    else:
        why = "; ".join(r.why for r in matches[0].matched)
        sections.append(Section(f"{top.title} ({top.id}): {top.summary.strip()}\nWhy: {why}",
                                title="Suggested playbook"))
        fields = await _diagnose_fields(top, alert, diagnose, metrics, timeout)
        if fields:
            sections.append(Section("", title="Diagnose (now)", fields=tuple(fields)))
        sections += [_step_section(i, s, top, alert) for i, s in enumerate(top.steps, 1)]
        # The primary button: the first step for this alert whose arguments an action
        # would take (a hostile customer label leaves it to the route's cap).
        first = next((s for s in top.steps if _plannable(s, top, alert)),
                     top.first_step_for(alert.labels))
        for step in (s for s in top.steps if not_for(s, alert.labels) is None):
            value = step_value(incident.id, top.id, step.id)
            buttons.append(Button("run_step", f"Run {step.id}", value,
                                  "primary" if step is first else None))
            buttons.append(Button("dry_run", f"Dry-run {step.id}", value))
        steps = ", ".join(s.id for s in top.steps if not_for(s, alert.labels) is None)
        text = (f"{drill}{incident.id} {incident.title} ({incident.severity}): suggested "
                f"playbook {top.id}; steps: {steps}")
    if len(matches) > 1:
        sections.append(Section(
            "\n".join(f"{m.playbook.id}: {m.playbook.title} (score {m.score:g})"
                      for m in matches[1:]),
            title="Other candidates"))
    buttons.append(Button("ack", "Acknowledge", incident.id))
    if top is not None:
        buttons.append(Button("not_this_playbook", "Not this playbook",
                              f"{incident.id}:{top.id}", "danger"))
    return Message("suggestion", incident.id, f"{drill}{incident.id} {incident.title}", text,
                   severity=incident.severity, sections=tuple(sections), buttons=tuple(buttons),
                   is_drill=incident.is_drill)


async def _diagnose_fields(
    playbook: Playbook,
    alert: Alert,
    diagnose: Callable[[Playbook, Alert], list[tuple[str, str]]],
    metrics: MetricsSource | None,
    timeout: float,
) -> list[Field]:
    if not playbook.diagnose:
        return []
    try:
        queries = diagnose(playbook, alert)
    except IncidentBotError as exc:  # e.g. a label the query needs is missing
        return [Field(d.title, f"unavailable ({exc.message})") for d in playbook.diagnose]
    return await diagnose_values(queries, metrics, timeout=timeout)


# --- automatic steps ---------------------------------------------------------------


def auto_result_message(
    incident: Incident, step: Step, outcome: str, detail: str, run: Run | None
) -> Message:
    """A ``result`` Message for one automatic step: applied, refused, held, failed..."""
    run_part = f"{run.id} " if run else ""
    title = f"{incident.id} auto step {step.id}: {outcome}"
    text = f"{incident.id}: automatic step {step.id} ({step.action}) {run_part}{outcome}: {detail}"
    sections = [Section(detail, title=step.title)]
    if run is not None and run.diff:
        sections.append(Section(run.diff, title="Change"))
    buttons: tuple[Button, ...] = ()
    if run is not None and outcome == "applied":
        buttons = (Button("revert", f"Revert {run.id}", run.id, "danger"),)
    return Message("result", incident.id, title, text, severity=incident.severity,
                   sections=tuple(sections), buttons=buttons, is_drill=incident.is_drill)

