"""The runner: plan -> guards -> approval -> apply -> verify -> keep | revert; TTL -> revert.

Every move follows the run state machine (``bot.base.run_states``) and is a
compare-and-set in the store. Apply and revert first *claim* the run (``applying``
/ ``reverting``, with this process as the holder) in the same transaction that
re-checks the guards, so two processes sharing the store never both change the
target; the second waits for the first and answers with its outcome. A crash
while claimed is finished or undone once, by whoever comes next
(``bot.core.recovery``). The store is the truth; ``timers()`` rebuilds the
scheduler's cache from it.

Failures never look like success: a refused step raises ``GuardRefused``
(state unchanged, an event says why); an apply or revert that fails raises
``ActionFailed`` after recording what was changed and what was put back.

Timeline event kinds: the run states (planned, awaiting_approval, approved,
refused, dry_run, applying, applied, verified, reverted, failed, denied,
expired), plus ``guard_refused``, ``held`` (the pause held an automatic action),
``escalation``, ``reconciled``, ``revert_failed``, ``plan_failed``, ``paused``
and ``resumed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal, NoReturn

from actions.base import Action, MetricsSource, Plan, ServingDriver
from actions.catalog import get_action
from actions.fencing import StaleFence, fenced
from actions.policy import ServingPolicy
from bot.base.errors import (
    ActionFailed,
    Conflict,
    GuardRefused,
    IncidentBotError,
    InputError,
    NothingToDo,
    PartialApplyError,
)
from bot.base.run_states import ACTIVE, APPLICABLE, CLAIMED, RunState
from bot.core.guards import (
    RunnerSettings,
    approval_state,
    check_active_cap,
    check_allowed,
    check_approval,
    check_blast_radius,
    check_cooldown,
    check_dry_run,
    check_lock,
    check_max_runs,
    check_pause,
    check_stale_plan,
    fmt_time,
    others_only,
)
from bot.core.leadership import NotLeader, authority
from bot.core.runner_timers import BOT_ACTOR, RunnerTimers, _why
from bot.playbook.schema import Guard
from bot.store import PAUSE_FLAG, Mitigation, Run, Store

__all__ = ["BOT_ACTOR", "Runner", "RunnerSettings"]

# How long a request waits for another process's apply or revert of the same run
# (a LiteLLM reload takes up to 90 s) before answering that it is still under way.
CLAIM_WAIT_SECONDS = 180.0
log = logging.getLogger(__name__)

# Why an apply does not go ahead now: wait for another request's claim, hold it for
# the pause, expire its approval, or refuse it (with the guard's refusal).
Blocker = tuple[Literal["wait", "hold", "expire", "refuse"], GuardRefused | None]
# incident id, or a target name such as "drill:DRILL-3" -> (that target name, its
# driver), or None when no running drill with a target of its own owns it.
DrillTargets = Callable[[str], "tuple[str, ServingDriver] | None"]

class Runner(RunnerTimers):
    def __init__(
        self,
        store: Store,
        drivers: Mapping[str, ServingDriver],
        metrics: MetricsSource | None,
        *,
        settings: RunnerSettings = RunnerSettings(),  # noqa: B008 - frozen, safe to share
        clock: Callable[[], datetime] | None = None,
        drill_targets: DrillTargets | None = None,
    ) -> None:
        self.store = store
        self.drivers = dict(drivers)
        # Finds the target of the drill that owns an incident (its sandbox policy file):
        # a drill incident's steps act there, never on production, whoever plans them.
        self.drill_targets = drill_targets
        self.metrics = metrics
        self.settings = settings
        self.clock = clock or store.clock
        self.claim_poll = 0.05
        # Set by `serve` (its replica id): automatic moves then need the leader lease.
        self.leader_id: str | None = None

    # --- plan ----------------------------------------------------------------------

    async def plan(
        self,
        *,
        incident_id: str | None,
        playbook_id: str | None,
        step_id: str | None,
        action: str,
        target: str,
        args: dict[str, Any],
        guard: Guard,
        verify_query: str | None,
        requested_by: str,
        dry_run: bool = False,
        automatic: bool = False,
    ) -> Run:
        """Plan and persist a run (plan and diff) before anything is applied."""
        scope = self._scope(incident_id, target)
        try:
            act = get_action(action)
            target, driver = self._target_for(target, incident_id, scope)
            current = await driver.read()
            plan = act.plan(args, current, target=target)
        except IncidentBotError as exc:
            if incident_id:
                self.store.add_event(incident_id, "plan_failed", f"could not plan {action}: {exc}",
                                     actor=requested_by, data={"step": step_id})
            raise
        dry = dry_run or guard.dry_run
        if plan.noop and not dry:
            # Not a run and never an active mitigation: recording an empty change as
            # applied would fill the active cap and hold locks for nothing.
            what = f"{step_id or action} on {target}"
            text = (f"nothing to do: {what} would set what {target} already has "
                    f"({plan.summary or action})")
            if incident_id:
                self.store.add_event(incident_id, "nothing_to_do", text, actor=requested_by,
                                     data={"step": step_id, "action": action, "target": target})
            raise NothingToDo(text, hint="the change is already in place; `mitigations` lists "
                              "what the bot applied")
        refusals = self._refusals(plan, guard, current, run_id=None, scope=scope)
        pause = check_pause(self.store.flag(PAUSE_FLAG), automatic=automatic)
        data: dict[str, Any] = {"diff": plan.diff(), "action": action, "target": target}
        if dry:
            refusals += [pause] if pause else []
            needs = "" if guard.approval == "none" else f"; would need {guard.approval} approval"
            verdict = "; ".join(str(r) for r in refusals) or "every guard passes"
            state, text = "dry_run", f"dry run of {plan.summary or action}: {verdict}{needs}"
        elif refusals:
            state, text = "refused", f"{action}: {refusals[0]}"
        elif guard.approval == "none":
            state, text = "planned", f"planned {plan.summary or action} on {target}"
        else:
            state = "awaiting_approval"
            text = f"planned {plan.summary or action} on {target}; needs {guard.approval} approval"
        data["refusals"] = [{"guard": r.guard, "reason": r.reason} for r in refusals]
        with self.store.transaction():
            run = self.store.create_run(
                incident_id=incident_id, playbook_id=playbook_id, step_id=step_id, plan=plan,
                args=args, guard=guard, verify_query=verify_query, state=state, dry_run=dry,
                requested_by=requested_by, error=str(refusals[0]) if state == "refused" else None,
                event_text=text, event_data=data, scope=scope,
            )
            if pause and state == "planned":
                self._hold(run, pause)  # an auto step waits for resume instead of being refused
        return self.store.run(run.id)

    def _scope(self, incident_id: str | None, target: str = "") -> str:
        """A drill incident's runs are drill runs, whoever plans them and from where; so
        are runs on a drill's own target (a drill's release has no incident yet)."""
        if target.startswith("drill:") or (
                incident_id and self.store.incident(incident_id).is_drill):
            return "drill"
        return "production"

    def _refusals(
        self, plan: Plan, guard: Guard, current: ServingPolicy, *, run_id: str | None,
        scope: str,
    ) -> list[GuardRefused]:
        # Guard history stays inside one scope: a rehearsal never uses up production's
        # cooldowns, max_runs, active cap or locks, and production never blocks a drill.
        now = self.clock()
        spans = [s for s in (guard.cooldown, guard.max_runs and guard.max_runs.window) if s]
        history = []
        if spans:
            history = self.store.applied_runs(plan.action, plan.target, now - max(spans),
                                              scope=scope)
        active = self._holders(scope)
        kw: dict[str, Any] = {"action": plan.action, "routes": plan.routes, "history": history,
                              "now": now}
        checks = [
            check_allowed(guard, plan, current),
            check_stale_plan(plan, current) if run_id else None,
            check_blast_radius(guard, plan, current),
            check_active_cap(active, self.settings, run_id=run_id),
            check_cooldown(guard, run_id=run_id, **kw),
            check_max_runs(guard, run_id=run_id, **kw),
            check_lock(plan, active, run_id=run_id),
        ]
        return [c for c in checks if c is not None]

    def _holders(self, scope: str) -> list[Mitigation]:
        """What holds fields in ``scope``: active mitigations, and runs another request
        is applying right now (read in the claim's transaction, so two processes never
        both pass the lock or the active cap)."""
        held = self.store.active_mitigations(scope=scope)
        now = self.clock()
        for run in self.store.claimed_runs(scope=scope):
            if run.state == RunState.APPLYING:
                held.append(Mitigation(run.id, run.target, run.routes, run.fields, now, None,
                                       None, None, None, None))
        return held

    # --- approval ------------------------------------------------------------------

    async def approve_and_apply(self, run_id: str, user: str) -> Run:
        """``approve --apply``: when two people do it at once, one change, both told so."""
        for _ in range(3):
            run = self.store.run(run_id)
            if run.state in CLAIMED:
                run = await self._settled(run_id)
            if run.state in ACTIVE:
                return run  # another approver applied it a moment ago
            try:
                await self.approve(run_id, user)
            except Conflict:
                continue  # it moved under us: look again
            return await self.apply(run_id, actor=user)
        raise Conflict(f"{run_id} keeps changing under this request",
                       hint=f"see `show {run_id}` and try again")

    async def approve(self, run_id: str, user: str) -> Run:
        run = self.store.run(run_id)
        if run.state in CLAIMED or run.state in ACTIVE:
            raise Conflict(f"{run_id} is {run.state} already; there is nothing left to approve",
                           hint=f"to undo it, revert {run_id}")
        if run.state not in ("awaiting_approval", "approved", "expired"):
            raise InputError(
                f"{run_id} is {run.state}; only a run awaiting approval can be approved",
                hint="plan the step again to get a new run",
            )
        if user == run.requested_by and others_only(
                run.guard, allow_self=self.settings.self_approval):
            rule = ("two_person" if run.guard.approval == "two_person" else
                    "this step (self_approval off)")
            self._refuse(run, GuardRefused(
                "approval", f"{user} requested {run_id} and cannot approve it: "
                f"{rule} needs an approval by someone else",
                hint="ask another on-call engineer to approve"), actor=user)
        expires = self.clock() + self.settings.approval_ttl
        with self.store.transaction():
            self.store.add_approval(run_id, user, "approve", expires_at=expires)
            return self.store.transition(
                run_id, "approved",
                f"approved by {user} (valid until {fmt_time(expires, self.clock())})",
                actor=user, data={"expires_at": expires.isoformat()},
                expect=("awaiting_approval", "approved", "expired"),
            )

    async def deny(self, run_id: str, user: str, reason: str = "") -> Run:
        run = self.store.run(run_id)
        if run.state not in APPLICABLE:
            raise InputError(f"{run_id} is {run.state}; only a run not yet applied can be denied",
                             hint=f"to undo an applied change, revert {run_id}")
        with self.store.transaction():
            self.store.add_approval(run_id, user, "deny", expires_at=self.clock())
            why = f": {reason}" if reason else ""
            return self.store.transition(run_id, "denied", f"denied by {user}{why}", actor=user,
                                         expect=APPLICABLE)

    # --- apply ---------------------------------------------------------------------

    async def apply(self, run_id: str, *, actor: str, automatic: bool = False) -> Run:
        run = self.store.run(run_id)
        if run.state in CLAIMED:
            return await self._blocked(run, ("wait", None), actor=actor)
        if run.state in ACTIVE:
            return run  # applying twice is a no-op
        if refusal := check_dry_run(run_id, run.dry_run):
            self._refuse(run, refusal, actor=actor)
        driver, act = self._run_driver(run), get_action(run.action)
        current = await driver.read()
        note = self._paused_note(automatic, "apply")
        # One write transaction: re-read, check every guard against the store as it is
        # now, and claim. A second process waits on the store's write lock, then sees
        # the claim (and the lock guard) instead of a stale "planned".
        with self.store.transaction():
            run = self.store.run(run_id)
            if run.state in ACTIVE:
                return run
            blocker: Blocker | None
            if run.state in CLAIMED:
                blocker = ("wait", None)
            elif run.state not in APPLICABLE:
                raise InputError(f"{run_id} is {run.state}; it cannot be applied",
                                 hint="plan the step again to get a new run")
            else:
                blocker = self._apply_blocker(run, current, automatic=automatic)
            if blocker is None:
                fence = authority(self.store, self.leader_id, automatic=automatic,
                                  run_id=run_id, op="apply")
                run = self.store.transition(
                    run_id, "applying", f"applying {run.plan.summary or run.action}{note}",
                    actor=actor, expect=APPLICABLE)
        if blocker is not None:
            return await self._blocked(run, blocker, actor=actor)
        reason = " ".join(x for x in (run.id, run.incident_id, run.step_id, f"by {actor}") if x)
        with fenced(fence):  # the target refuses it if a newer leader wrote since
            try:
                await act.apply(run.plan, driver, reason=reason, change_id=run.id)
                mismatch = await act.verify(run.plan, driver)
            except PartialApplyError as exc:
                await self._fail(run, act, driver, exc.message, actor, routes=exc.applied)
            except Exception as exc:  # a failed write may still have changed something
                if isinstance(exc, StaleFence):  # a deposed leader woke up: say so loudly
                    log.warning("%s: %s", run.id, exc)
                await self._fail(run, act, driver, _why(exc), actor, routes=None)
            if mismatch:
                await self._fail(run, act, driver, "the change did not take effect: "
                                 + "; ".join(mismatch), actor, routes=None)
        applied_at = self.clock()
        return await self._record(lambda: self._mark_applied(
            run, actor=actor, applied_at=applied_at,
            text=f"applied: {run.plan.summary or run.action}"), run.id)

    async def _record(self, write: Callable[[], Run], run_id: str) -> Run:
        """Record what was done to the target while this process holds the claim, until
        the store takes it: a store that failed after the target changed (Postgres
        restarted, a partition) must not leave the run claimed by a live process that
        nobody else may settle. Someone who settled it meanwhile wins (a Conflict)."""
        deadline = asyncio.get_running_loop().time() + 600
        while True:
            try:
                return write()
            except self.store.failures() as exc:
                if not self.store.transient(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("%s: recording the outcome failed (%s); trying again", run_id, exc)
                await asyncio.sleep(0.5)

    def _apply_blocker(self, run: Run, current: ServingPolicy, *,
                       automatic: bool) -> Blocker | None:
        """Why ``run`` may not be applied now, without writing anything:
        ("hold" | "expire" | "refuse", the refusal), or None."""
        if pause := check_pause(self.store.flag(PAUSE_FLAG), automatic=automatic):
            return "hold", pause
        now = self.clock()
        approvals = self.store.approvals(run.id)
        allow_self = self.settings.self_approval
        refusal = check_approval(run.guard, run_id=run.id, requested_by=run.requested_by,
                                 approvals=approvals, now=now, allow_self=allow_self)
        if refusal is not None:
            state, _ = approval_state(run.guard, requested_by=run.requested_by,
                                      approvals=approvals, now=now, allow_self=allow_self)
            return ("expire" if state == "expired" and run.state != "expired"
                    else "refuse"), refusal
        refusals = self._refusals(run.plan, run.guard, current, run_id=run.id, scope=run.scope)
        return ("refuse", refusals[0]) if refusals else None

    async def _blocked(self, run: Run, blocker: Blocker, *, actor: str) -> Run:
        how, refusal = blocker
        if how == "wait" or refusal is None:
            # Another request claimed it between our first look and the claim.
            settled = await self._settled(run.id)
            if settled.state in ACTIVE:
                return settled
            raise ActionFailed(f"{run.id} was applied by another request and ended "
                               f"{settled.state}: {settled.error or 'see its timeline'}",
                               hint="see the run's timeline; the step can be planned again")
        if how == "hold":
            self._hold(run, refusal)
            raise refusal
        if how == "expire":
            self.store.transition(run.id, "expired", f"not applied: {refusal.reason}",
                                  actor=actor, expect=APPLICABLE)
            raise refusal
        self._refuse(run, refusal, actor=actor)

    async def _settled(self, run_id: str) -> Run:
        """Wait until no live process holds ``run_id`` (applying or reverting); a claim
        whose holder died is reconciled here and now. Returns the run as it ends up."""
        from bot.core.recovery import reconcile_run  # recovery builds on the runner

        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            run = self.store.run(run_id)
            if run.state not in CLAIMED:
                return run
            if time.monotonic() > deadline:
                raise Conflict(f"{run_id} is still {run.state} by {run.claimed_by}",
                               hint="try again in a minute; `show` lists its timeline")
            if not self.holder_alive(run) and await reconcile_run(self, run) is not None:
                continue  # settled here, now
            # A live holder, another process settling it, or a target we cannot read.
            await asyncio.sleep(self.claim_poll)

    def holder_alive(self, run: Run) -> bool:
        return self.store.holder_alive(run.claimed_by, claimed_at=run.claimed_at)

    def _mark_applied(self, run: Run, *, actor: str, applied_at: datetime, text: str,
                      kind: str | None = None) -> Run:
        g = run.guard
        ttl_due = applied_at + g.ttl if g.ttl else None
        verify_due = applied_at + g.verify.within if g.verify and run.verify_query else None
        with self.store.transaction():
            self.store.record_mitigation(run, applied_at=applied_at, ttl_due_at=ttl_due,
                                         verify_due_at=verify_due)
            return self.store.transition(run.id, "applied", text, actor=actor, kind=kind,
                                         expect=("applying",), data={
                "diff": run.diff, "ttl_due_at": ttl_due and ttl_due.isoformat(),
                "verify_due_at": verify_due and verify_due.isoformat()})

    async def _fail(self, run: Run, act: Action, driver: ServingDriver, what: str, actor: str,
                    *, routes: list[str] | None) -> NoReturn:
        """Put back what this run changed (only ``routes`` if given), mark failed, raise."""
        restored, problem = await self._put_back(run, act, driver, routes)
        back = f"put back {', '.join(restored)}" if restored else "nothing needed putting back"
        if problem:
            back = f"could not check or put back the target ({problem}); check it by hand"
        applied = ""
        if routes is not None:
            applied = f"; applied before the failure: {', '.join(routes) or 'nothing'}"
        text = f"apply failed: {what}{applied}; {back}"
        self.store.transition(run.id, "failed", text, actor=actor, error=text,
                              data={"restored": restored}, expect=("applying",))
        raise ActionFailed(f"{run.id} failed: {what}; {back}",
                           hint="see the run's timeline; the step can be planned again")

    async def _put_back(self, run: Run, act: Action, driver: ServingDriver,
                        routes: list[str] | None) -> tuple[list[str], str | None]:
        changes = [c for c in run.plan.changes if routes is None or c.route in routes]
        try:
            now = await driver.read()
            ours = [c for c in changes if now.get(c.route, c.field) == c.after]
            if ours:
                sub = run.plan.model_copy(update={"changes": ours})
                await act.revert(sub, driver, reason=f"{run.id} put back after a failed apply",
                                 change_id=run.id)
        except Exception as exc:
            return [], _why(exc)
        return [c.path for c in ours], None

    # --- revert --------------------------------------------------------------------

    async def revert(self, run_id: str, *, actor: str, reason: str, automatic: bool = False) -> Run:
        run = self.store.run(run_id)
        if run.state in CLAIMED:
            run = await self._settled(run_id)  # another request's apply or revert ends first
        mit = self.store.mitigation(run_id)
        if run.state == RunState.REVERTED or (mit is not None and not mit.active):
            return run  # reverting twice is a no-op
        if run.state not in ACTIVE or mit is None:
            raise InputError(f"{run_id} is {run.state}: nothing of it is applied to revert",
                             hint="only an applied or verified run can be reverted")
        if pause := check_pause(self.store.flag(PAUSE_FLAG), automatic=automatic):
            self._hold(run, pause)
            raise pause
        driver, act = self._run_driver(run), get_action(run.action)
        note = self._paused_note(automatic, "revert")
        try:
            with self.store.transaction():
                fence = authority(self.store, self.leader_id, automatic=automatic,
                                  run_id=run_id, op="revert")
                run = self.store.transition(run_id, "reverting", f"reverting: {reason}{note}",
                                            actor=actor, expect=ACTIVE)
        except NotLeader:
            raise
        except Conflict:
            return await self._settled(run_id)  # another request got there first
        with fenced(fence):
            return await self.finish_revert(run, act, driver, actor=actor, reason=reason,
                                            note=note)

    async def finish_revert(self, run: Run, act: Action, driver: ServingDriver, *,
                            actor: str, reason: str, note: str = "", kind: str | None = None,
                            ) -> Run:
        """Put the target back for a run this process holds in ``reverting``."""
        try:
            drifted = await act.revert(run.plan, driver, reason=f"{run.id} revert: {reason}",
                                       change_id=run.id)
            now = await driver.read()
        except Exception as exc:
            self._revert_failed(run, _why(exc), actor)
        stuck = [c.path for c in run.plan.changes
                 if now.get(c.route, c.field) == c.after]
        if stuck:
            self._revert_failed(run, f"{', '.join(stuck)} still hold the change", actor)
        left = f"; left as is: {'; '.join(drifted)}" if drifted else ""

        def reverted() -> Run:
            with self.store.transaction():
                self.store.mark_reverted(run.id, reason)
                return self.store.transition(run.id, "reverted", f"reverted by {actor}: "
                                             f"{_without_actor(reason, actor)}{note}{left}",
                                             actor=actor, kind=kind, data={"drifted": drifted},
                                             expect=("reverting",))
        return await self._record(reverted, run.id)

    def _revert_failed(self, run: Run, why: str, actor: str) -> NoReturn:
        text = f"revert of {run.id} failed: {why}; the change is still in place"
        with self.store.transaction():
            back = run.prior_state or "applied"
            self.store.transition(run.id, back, text, actor=actor, kind="revert_failed",
                                  expect=("reverting",))
        raise ActionFailed(text, hint="retry the revert; timer-driven reverts retry on their own")

    async def reconcile(self) -> list[Run]:
        """Finish or undo, once, what a dead process left applying or reverting."""
        from bot.core.recovery import reconcile

        return await reconcile(self)

    # --- helpers -------------------------------------------------------------------

    def _target_for(self, target: str, incident_id: str | None,
                    scope: str) -> tuple[str, ServingDriver]:
        """Where a new run acts: a drill incident's steps go to its drill's target."""
        if scope == "drill" and incident_id and self.drill_targets is not None:
            found = self.drill_targets(incident_id)
            if found is not None:
                return found
        return target, self._driver(target)

    def _run_driver(self, run: Run) -> ServingDriver:
        return self._driver(run.target)  # a drill's target by its name, see _driver

    async def read_target(self, target: str) -> ServingPolicy:
        """What ``target`` serves now (its policy), read through its driver."""
        return await self._driver(target).read()

    def _driver(self, target: str) -> ServingDriver:
        if target.startswith("drill:"):
            # A drill's own target, by name (a release a drill rolls out): found while
            # the drill runs, refused after; never a fall back to a configured target.
            found = self.drill_targets(target) if self.drill_targets is not None else None
            if found is None or found[0] != target:
                raise GuardRefused("drill", f"{target} is over or not reachable from here; "
                                   "nothing falls back to production",
                                   hint="the drill's rollback restores its target")
            return found[1]
        try:
            return self.drivers[target]
        except KeyError:
            known = ", ".join(sorted(self.drivers)) or "none"
            raise InputError(f"unknown target '{target}'", hint=f"configured targets: {known}") from None

    def _refuse(self, run: Run, refusal: GuardRefused, *, actor: str) -> NoReturn:
        self.store.add_event(run.incident_id, "guard_refused", str(refusal), actor=actor,
                             run_id=run.id, data={"guard": refusal.guard})
        raise refusal

    def _hold(self, run: Run, pause: GuardRefused) -> None:
        if run.held_at is not None:
            return  # already said once; timers retry every tick and must not flood the timeline
        with self.store.transaction():
            self.store.mark_held(run.id, True)
            self.store.add_event(run.incident_id, "held", f"{run.id} held: {pause.reason}",
                                 actor=BOT_ACTOR, run_id=run.id)

    def _paused_note(self, automatic: bool, what: str) -> str:
        if automatic or self.store.flag(PAUSE_FLAG) is None:
            return ""
        return f" (the bot is paused; a human's explicit {what} goes ahead)"

def _without_actor(reason: str, actor: str) -> str:
    """The revert verb's default reason is "by ACTOR"; say who reverted only once."""
    for said in (f"reverted by {actor}", f"by {actor}"):
        reason = reason.removeprefix(said)
    return reason.lstrip(" ;:,") or "on request"
