"""Every guard of DESIGN.md, as small pure functions that explain themselves.

Each ``check_*`` function looks only at what it is given (a guard declaration,
a plan, records read from the store, ``now``) and returns ``None`` when the
action may go ahead, or a ``GuardRefused`` naming the guard and the concrete
reason. Returning instead of raising lets the runner evaluate *every* guard for
a dry run and record all the refusals, and raise the first one otherwise.

The only stateful piece is ``TargetLocks``: the in-process asyncio locks that
keep two applies/reverts from interleaving on the same (target, route).
"""

from __future__ import annotations

import asyncio
import math
import operator
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from actions.base import Plan, Sample
from actions.policy import ServingPolicy, split_subject
from bot.base.errors import GuardRefused
from bot.playbook.schema import Guard, Verify, format_duration
from bot.store import Approval, Flag, Mitigation


@dataclass(frozen=True)
class RunnerSettings:
    """Guards that belong to the deployment rather than to one playbook step."""

    approval_ttl: timedelta = timedelta(minutes=15)
    max_active_mitigations: int = 3
    # False: an oncall step's requester never approves it alone, whatever the playbook says.
    self_approval: bool = True


def others_only(guard: Guard, *, allow_self: bool = True) -> bool:
    """Whether only approvals by someone other than the requester count."""
    if guard.approval == "two_person":
        return True
    return guard.approval == "oncall" and not (guard.self_approval and allow_self)


# --- wording -----------------------------------------------------------------------


def fmt_time(at: datetime, now: datetime) -> str:
    """``10:42 UTC`` today, ``2026-11-30 10:42 UTC`` on another day."""
    if at.date() == now.date():
        return at.strftime("%H:%M UTC")
    return at.strftime("%Y-%m-%d %H:%M UTC")


def fmt_span(td: timedelta) -> str:
    """A rounded-down human span: ``45s``, ``4m``, ``2h05m``, ``3d``."""
    secs = max(0, int(td.total_seconds()))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 86400:
        h, m = divmod(secs // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    return f"{secs // 86400}d"


def _where(action: str, routes: Iterable[str]) -> str:
    return f"{action} on {', '.join(sorted(routes))}"


# --- pause -------------------------------------------------------------------------


def check_pause(pause: Flag | None, *, automatic: bool) -> GuardRefused | None:
    """The global kill switch holds every automatic action; a human's explicit one passes."""
    if pause is None or not automatic:
        return None
    why = f": {pause.value}" if pause.value else ""
    return GuardRefused(
        "pause",
        f"the bot was paused by {pause.set_by}{why}; automatic actions are held",
        hint="a human can still apply or revert explicitly; `resume` lets held actions run",
    )


# --- approval ----------------------------------------------------------------------

ApprovalState = Literal["not_needed", "approved", "missing", "expired", "denied"]


def approval_state(
    guard: Guard, *, requested_by: str, approvals: Sequence[Approval], now: datetime,
    allow_self: bool = True,
) -> tuple[ApprovalState, list[Approval]]:
    """Where a run stands, and the approvals that decide it (valid, expired or the deny).

    two_person only counts approvals by someone other than the requester; oncall
    counts any on-call approval, the requester's included, unless the step says
    ``self_approval: false`` or the deployment forbids it (``allow_self``).
    """
    strict = others_only(guard, allow_self=allow_self)
    if guard.approval == "none":
        return "not_needed", []
    denies = [a for a in approvals if a.decision == "deny"]
    if denies:
        return "denied", denies
    counted = [
        a
        for a in approvals
        if a.decision == "approve" and (not strict or a.user != requested_by)
    ]
    valid = [a for a in counted if a.expires_at > now]
    if valid:
        return "approved", valid
    if counted:
        return "expired", counted
    return "missing", []


def check_approval(
    guard: Guard,
    *,
    run_id: str,
    requested_by: str,
    approvals: Sequence[Approval],
    now: datetime,
    allow_self: bool = True,
) -> GuardRefused | None:
    state, which = approval_state(guard, requested_by=requested_by, approvals=approvals, now=now,
                                  allow_self=allow_self)
    if state in ("not_needed", "approved"):
        return None
    if state == "denied":
        by = ", ".join(sorted({a.user for a in which}))
        return GuardRefused(
            "approval", f"{run_id} was denied by {by}",
            hint="plan the step again if the situation changed",
        )
    if state == "expired":
        last = max(which, key=lambda a: a.expires_at)
        return GuardRefused(
            "approval",
            f"the approval of {run_id} by {last.user} expired at {fmt_time(last.expires_at, now)}",
            hint=f"approve {run_id} again: an approval is only good for a short while",
        )
    if others_only(guard, allow_self=allow_self):
        return GuardRefused(
            "approval",
            f"{run_id} needs approval by someone other than its requester {requested_by}",
            hint=f"ask another on-call engineer to approve {run_id}",
        )
    return GuardRefused(
        "approval", f"{run_id} needs an on-call approval (none yet)", hint=f"approve {run_id}"
    )


# --- cooldown and max runs -----------------------------------------------------------


def _same_routes(history: Sequence[Mitigation], routes: Iterable[str],
                 run_id: str | None) -> list[Mitigation]:
    wanted = set(routes)
    return [m for m in history if m.run_id != run_id and wanted & set(m.routes)]


def check_cooldown(
    guard: Guard,
    *,
    action: str,
    routes: Sequence[str],
    history: Sequence[Mitigation],
    now: datetime,
    run_id: str | None = None,
) -> GuardRefused | None:
    """``history``: applied changes of the same action on the same target (any age)."""
    if guard.cooldown is None:
        return None
    same = _same_routes(history, routes, run_id)
    recent = [m for m in same if now - m.applied_at < guard.cooldown]
    if not recent:
        return None
    last = max(recent, key=lambda m: m.applied_at)
    shared = sorted(set(routes) & set(last.routes))
    next_at = last.applied_at + guard.cooldown
    return GuardRefused(
        "cooldown",
        f"{_where(action, shared)} ran {fmt_span(now - last.applied_at)} ago ({last.run_id}); "
        f"cooldown is {format_duration(guard.cooldown)}, next allowed at {fmt_time(next_at, now)}",
        hint="wait, or have a human change the target directly if it cannot wait",
    )


def check_max_runs(
    guard: Guard,
    *,
    action: str,
    routes: Sequence[str],
    history: Sequence[Mitigation],
    now: datetime,
    run_id: str | None = None,
) -> GuardRefused | None:
    if guard.max_runs is None:
        return None
    window = guard.max_runs.window
    inside = sorted(
        (m for m in _same_routes(history, routes, run_id) if now - m.applied_at < window),
        key=lambda m: m.applied_at,
    )
    if len(inside) < guard.max_runs.count:
        return None
    # The oldest counted run leaving the window frees one slot.
    next_at = inside[len(inside) - guard.max_runs.count].applied_at + window
    ids = ", ".join(m.run_id for m in inside)
    return GuardRefused(
        "max_runs",
        f"{_where(action, routes)} ran {len(inside)} times in the last "
        f"{format_duration(window)} ({ids}); the limit is {guard.max_runs.count}, "
        f"next allowed at {fmt_time(next_at, now)}",
        hint="a mitigation that keeps being needed is a sign to escalate, not to repeat",
    )


# --- blast radius --------------------------------------------------------------------


def check_blast_radius(guard: Guard, plan: Plan, current: ServingPolicy) -> GuardRefused | None:
    """At most ``max_routes`` routes; with ``keep_serving``, no route group left dark.

    A group is the routes sharing ``RoutePolicy.group`` (an ungrouped route is its
    own group). Only groups whose ``enabled``/``fallback`` the plan touches are
    judged, so an unrelated outage elsewhere does not block this change.
    """
    limit = guard.blast_radius.max_routes
    if len(plan.routes) > limit:
        return GuardRefused(
            "blast_radius",
            f"{plan.action} would change {_count(plan.routes)} ({', '.join(plan.routes)}); "
            f"this step may change at most {limit}",
            hint="split the change into smaller steps, or raise blast_radius.max_routes",
        )
    if not guard.blast_radius.keep_serving:
        return None
    touched = {c.route for c in plan.changes if c.field in ("enabled", "fallback")}
    if not touched:
        return None
    after = current.with_values(plan.updates("after"))
    names = set(after.routes) | touched

    def group_of(route: str) -> str:
        return after.route(route).group or route

    for group in sorted({group_of(r) for r in touched}):
        members = sorted(r for r in names if group_of(r) == group)
        if any(after.route(r).enabled for r in members):
            continue
        # Every member is disabled: acceptable only if each one falls back to a live route.
        dark = [
            r
            for r in members
            if not (fb := after.route(r).fallback) or fb in members or not after.route(fb).enabled
        ]
        if dark:
            return GuardRefused(
                "blast_radius",
                f"{plan.action} would leave route group '{group}' with no enabled route "
                f"and no enabled fallback for {', '.join(dark)}",
                hint="set an enabled fallback first, or enable another route of the group",
            )
    return None


def _count(subjects: Sequence[str]) -> str:
    """"2 routes", "3 customers", "1 route and 2 customers"."""
    customers = sum(1 for s in subjects if split_subject(s)[0] == "customers")
    parts = [(len(subjects) - customers, "route"), (customers, "customer")]
    return " and ".join(f"{n} {w}{'s' if n != 1 else ''}" for n, w in parts if n)


def check_active_cap(
    active: Sequence[Mitigation], settings: RunnerSettings, *, run_id: str | None = None
) -> GuardRefused | None:
    others = [m for m in active if m.run_id != run_id]
    if len(others) < settings.max_active_mitigations:
        return None
    return GuardRefused(
        "blast_radius",
        f"{len(others)} mitigations are already active ({', '.join(m.run_id for m in others)}); "
        f"the cap is {settings.max_active_mitigations} at a time",
        hint="revert a mitigation that is no longer needed first",
    )


# --- locks ---------------------------------------------------------------------------


def check_lock(
    plan: Plan, active: Sequence[Mitigation], *, run_id: str | None = None
) -> GuardRefused | None:
    """Refuse to stack a change on a field another active mitigation holds.

    Stacked changes would make reverts wrong: the older revert would restore a
    value from before the newer change, or find the field drifted.
    """
    for m in active:
        if m.run_id == run_id or m.target != plan.target:
            continue
        held = set(m.fields)
        for c in plan.changes:
            if f"{c.route}.{c.field}" in held:
                return GuardRefused(
                    "lock",
                    f"{c.path} on target {plan.target} is held by "
                    f"{m.run_id} until reverted",
                    hint=f"revert {m.run_id} first if this change should replace it",
                )
    return None


def check_allowed(guard: Guard, plan: Plan, current: ServingPolicy) -> GuardRefused | None:
    """Arguments a step limits (``guard.allow``) hold only listed values.

    Alert text may fill a step's route or fallback; the playbook's list (or the
    serving policy's group) is what decides where a change may land.
    """
    for arg, allowed in guard.allow.items():
        value = plan.params.get(arg)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(allowed, list):
                ok, says = v in allowed, f"one of {', '.join(allowed)}"
            else:
                ok = isinstance(v, str) and current.serves(v) and \
                    current.route(v).group == allowed.group
                says = f"a route of group {allowed.group!r} on {plan.target}"
            if not ok:
                return GuardRefused(
                    "allow", f"{plan.action}: {arg} {v!r} is not allowed here; it must be {says}",
                    hint="the value came from the alert or a command; check its labels, or "
                    "extend the step's guard.allow if the value is right",
                )
    return None


def check_stale_plan(plan: Plan, current: ServingPolicy) -> GuardRefused | None:
    """The diff people approved must be the diff applied: refuse if the target moved since."""
    for c in plan.changes:
        now = current.get(c.route, c.field)
        if now != c.before and now != c.after:
            return GuardRefused(
                "stale_plan",
                f"{c.path} is now {now!r}, the plan expected {c.before!r}",
                hint="someone changed the target since the plan; plan the step again",
            )
    return None


def check_dry_run(run_id: str, dry_run: bool) -> GuardRefused | None:
    if not dry_run:
        return None
    return GuardRefused(
        "dry_run", f"{run_id} is a dry run: it is planned and recorded, never applied",
        hint="plan the step again without dry-run to apply it",
    )


# --- verification --------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


def evaluate_verification(samples: Sequence[Sample], verify: Verify) -> tuple[bool, str]:
    """``(passed, explanation)``: every sample must pass ``verify.expect``.

    No samples is *not known yet*, never a pass: a query with no data proves
    nothing (a series one scrape old, a metric renamed by an upgrade, a label that
    matches nothing), so the runner waits until ``within`` and then applies
    ``on_fail``. A sample that is no number (NaN from a ratio over no traffic,
    an infinity) is the same: ``NaN != 0`` holds, but it measured nothing.
    """
    if not samples:
        return False, ("not known yet: the query returned no data (a metric not scraped "
                       "yet, renamed, or a label that matches nothing); no data never passes")
    blind = [s for s in samples if not math.isfinite(s.value)]
    if blind:
        return False, (f"not known yet: {len(blind)} of {len(samples)} samples are not a "
                       f"number ({blind[0].value:g}); a check needs measured values")
    op, threshold = verify.expectation()
    bad = [s for s in samples if not _OPS[op](s.value, threshold)]
    if bad:
        s = bad[0]
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        return False, (f"{len(bad)} of {len(samples)} samples fail '{verify.expect}' "
                       f"(e.g. {{{labels}}} = {s.value:g})")
    worst = max(samples, key=lambda s: s.value).value
    return True, f"all {len(samples)} samples {verify.expect} (highest {worst:g})"


class TargetLocks:
    """One asyncio.Lock per (target, route), taken in sorted order (no deadlock)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @asynccontextmanager
    async def hold(self, target: str, routes: Iterable[str]) -> AsyncIterator[None]:
        keys = sorted({(target, r) for r in routes})
        locks = [self._locks.setdefault(k, asyncio.Lock()) for k in keys]
        taken: list[asyncio.Lock] = []
        try:
            for lock in locks:
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()

    def locked(self, target: str, route: str) -> bool:
        lock = self._locks.get((target, route))
        return bool(lock and lock.locked())
