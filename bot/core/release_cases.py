"""The release guard's use cases: start a release as a canary, judge it at each step,
promote it, hold it, roll it back.

Every change to the target is a run of a catalog action (``set_canary``,
``promote_canary``, ``rollback_canary``): planned as a diff, guarded, applied,
verified and audited like a mitigation, and never reverted by a TTL. The release
record (``bot/store/releases.py``) says where the release stands; its timeline
holds what the judge said at each step, with the numbers.

Rolling back is the safe direction: the judge does it on its own when a critical
signal fails. Promotion past a step is a person's (the owner or on-call), unless
the release was started with ``auto_promote``. A rollback opens an incident of
the failing signal's class, carrying the judge's table, so playbooks, chat and
the postmortem see it like any alert.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from bot.base.errors import GuardRefused, InputError
from bot.base.names import name_problem
from bot.core.canary_judge import SIGNALS, Sample, Verdict, judge
from bot.core.canary_samples import Version, read_samples
from bot.core.messages import Button, Message, Section
from bot.core.release_moves import active, moving, parse_steps
from bot.intake.alert import Alert
from bot.playbook.canary_thresholds import CanaryThresholds, load_thresholds
from bot.playbook.schema import Guard
from bot.store import PAUSE_FLAG, Run
from bot.store.releases import Release

if TYPE_CHECKING:
    from bot.core.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_BAKE = timedelta(minutes=10)
GUARD_ACTOR = "release-guard"
# The release's runs: approval is the verb's (owner or on-call), and no TTL ever
# undoes a promotion or a rollback.
RELEASE_GUARD = Guard(approval="none")

Reader = Callable[[Version, Version, timedelta], Awaitable[dict[str, tuple[Sample, Sample]]]]


class EvalGate(Protocol):
    """Checks a release before its first step (an offline eval): (passed, what it said)."""

    async def check(self, release: Release) -> tuple[bool, str]: ...


class ReleaseGuard:
    def __init__(self, engine: Engine, *, thresholds: CanaryThresholds | None = None,
                 reader: Reader | None = None, gate: EvalGate | None = None) -> None:
        self.gate = gate
        self.engine = engine
        self.store = engine.store
        self.runner = engine.runner
        self.thresholds = thresholds or load_thresholds()
        self._reader = reader

    async def _read(self, canary: Version, baseline: Version,
                    window: timedelta) -> dict[str, tuple[Sample, Sample]]:
        if self._reader is not None:
            return await self._reader(canary, baseline, window)
        if self.runner.metrics is None:
            raise InputError("the release guard needs Prometheus to judge a canary",
                             hint="set LLM_INCIDENT_PROMETHEUS_URL")
        return await read_samples(self.runner.metrics, canary, baseline, window)

    # --- the use cases ------------------------------------------------------------------

    async def start(self, route: str, *, actor: str, prompt_version: str | None = None,
                    model: str | None = None, baseline_version: str | None = None,
                    steps: Sequence[int] = DEFAULT_STEPS, bake: timedelta = DEFAULT_BAKE,
                    owner: str | None = None, auto_promote: bool = False,
                    target: str = "default") -> Release:
        if prompt_version is None and model is None:
            raise InputError("a release changes the prompt version, the model, or both",
                             hint="release start ROUTE --prompt V | --model M")
        # Checked before anything is recorded: these go into the policy file, the
        # gateway's upstream header and every label the judge reads.
        for field, value in (("route", route), ("prompt_version", prompt_version),
                             ("model", model), ("baseline_version", baseline_version),
                             ("owner", owner)):
            if value is not None and (why := name_problem(value)):
                raise InputError(f"release start: {field} {why}",
                                 hint="give the name as the gateway knows it")
        if self._reader is None and self.runner.metrics is None:
            raise InputError("the release guard judges canaries on Prometheus; none is set",
                             hint="set LLM_INCIDENT_PROMETHEUS_URL (or --prometheus)")
        steps = parse_steps(steps)
        if auto_promote and self.approvals(route)[0] == "two_person":
            raise GuardRefused("approval", f"route '{route}' needs two people to promote a "
                               "release; it cannot promote itself",
                               hint="start it without --auto-promote")
        current = await self.runner.read_target(target)
        if not current.serves(route):
            raise InputError(f"route '{route}' is not served by target '{target}'")
        rp = current.route(route)
        baseline: dict[str, str] = {}
        if prompt_version is not None:
            base = baseline_version or rp.prompt_version
            if base is None:
                raise InputError(f"route '{route}' names no prompt_version to compare against",
                                 hint="give the version it serves now with --baseline V")
            baseline["prompt_version"] = base
        change = {k: v for k, v in (("prompt_version", prompt_version), ("model", model)) if v}
        release = self.store.create_release(
            route=route, target=target, change=change, baseline=baseline,
            owner=owner or actor, steps=steps, bake=bake, auto_promote=auto_promote,
            actor=actor)
        if self.gate is not None:
            passed, said = await self.gate.check(release)
            if not passed:
                self.store.move_release(release.id, expect_step=0, actor=actor,
                                        kind="gate_failed", state="aborted",
                                        text=f"the eval gate refused it: {said}")
                raise GuardRefused("eval_gate", f"{release.id} not started: {said}",
                                   hint="fix the release and start it again")
            self.store.add_release_event(release.id, "gate_passed", f"eval gate: {said}",
                                         actor=actor)
        try:
            await self._set_weight(release, steps[0], actor=actor)
        except Exception as exc:
            self.store.move_release(release.id, expect_step=0, actor=actor, kind="aborted",
                                    state="aborted", text=f"could not start the canary: {exc}")
            raise
        await self._announce(release.id, f"{release.id} started: {release.what} on "
                             f"{steps[0]}% of {route}")
        return self.store.release(release.id)

    async def promote(self, release_id: str, *, actor: str, automatic: bool = False,
                      seen: int | None = None) -> Release:
        """To the next step; the step of 100% is the promotion itself (there is nothing
        left to compare a canary on all traffic with).

        ``seen`` is the percent the person saw (a button carries it, `--from` gives it);
        without it, the step read now. Either way the move is a compare-and-set on that
        step: a double click or a stale button gets "already promoted", never a second
        step nobody judged."""
        release = self._active(release_id)
        async with moving(self.store, release, seen) as release:
            return await self._promote(release, actor=actor, automatic=automatic)

    async def _promote(self, release: Release, *, actor: str, automatic: bool) -> Release:
        if release.steps[release.step + 1] == 100:
            run = await self._run("promote_canary", release, {}, actor=actor,
                                  automatic=automatic)
            if run is None:
                return await self._awaiting(release, "promotion to 100%", actor)
            moved = self.store.move_release(
                release.id, expect_step=release.step, actor=actor, kind="promoted",
                state="promoted", text=f"promoted to all of {release.route} by {actor} "
                                       f"({run})", data={"run": run})
            await self._announce(moved.id, f"{moved.id} promoted: {moved.what} serves all "
                                 f"of {moved.route}")
            return moved
        nxt = release.steps[release.step + 1]
        run = await self._set_weight(release, nxt, actor=actor, automatic=automatic)
        if run is None:
            return await self._awaiting(release, f"promotion to {nxt}%", actor)
        moved = self.store.move_release(
            release.id, expect_step=release.step, step=release.step + 1, actor=actor,
            kind="promoted_step", held=False,
            text=f"step {release.step + 2}: {nxt}% of {release.route} by {actor} ({run})",
            data={"run": run, "percent": nxt})
        await self._announce(moved.id, f"{moved.id} at {nxt}% of {moved.route}")
        return moved

    async def hold(self, release_id: str, *, actor: str, reason: str = "") -> Release:
        release = self._active(release_id)
        why = f": {reason}" if reason else ""
        return self.store.move_release(release.id, expect_step=release.step, held=True,
                                       actor=actor, kind="held", text=f"held by {actor}{why}")

    async def rollback(self, release_id: str, *, actor: str, reason: str,
                       verdict: Verdict | None = None, automatic: bool = False) -> Release:
        """Rolling back is the safe direction: it takes whatever step the release is at
        now (a stale button still rolls back), after a move in flight has finished."""
        release = self._active(release_id)
        async with moving(self.store, release, None, any_step=True) as release:
            return await self._rollback(release, actor=actor, reason=reason, verdict=verdict,
                                        automatic=automatic)

    async def _rollback(self, release: Release, *, actor: str, reason: str,
                        verdict: Verdict | None, automatic: bool) -> Release:
        run = await self._run("rollback_canary", release, {}, actor=actor, automatic=automatic)
        # The judge's evidence opens an incident now, approval or not: people must know.
        incident_id = await self._open_incident(release, verdict) if verdict else None
        if run is None:  # the release policy wants a person to confirm it; hold meanwhile
            self.store.move_release(release.id, expect_step=release.step, held=True,
                                    actor=actor, kind="held", incident_id=incident_id,
                                    text=f"held: {reason}; the rollback waits for a person")
            return await self._awaiting(self.store.release(release.id), "rollback", actor,
                                        verdict=verdict)
        moved = self.store.move_release(
            release.id, expect_step=release.step, state="rolled_back", actor=actor,
            kind="rolled_back", incident_id=incident_id,
            text=f"rolled back by {actor} at {release.steps[release.step]}%: {reason} ({run})",
            data={"run": run, "incident": incident_id})
        where = f"; {incident_id} opened" if incident_id else ""
        await self._announce(moved.id, f"{moved.id} rolled back: {reason}{where}",
                             verdict=verdict)
        return moved

    async def abort(self, release_id: str, *, actor: str, reason: str) -> Release:
        """Close a release without touching its target: its drill already restored the
        target (a drill's rollback, or the next start after a crash)."""
        release = self._active(release_id)
        moved = self.store.move_release(release.id, expect_step=release.step, state="aborted",
                                        actor=actor, kind="aborted", text=f"aborted: {reason}")
        await self._announce(moved.id, f"{moved.id} aborted: {reason}")
        return moved

    async def judge(self, release_id: str) -> Verdict:
        """Canary vs baseline over the current step's window, now."""
        release = self.store.release(release_id)
        window = max(self.store.now() - release.step_started_at, timedelta(minutes=1))
        canary = Version(release.route, release.change.get("prompt_version"),
                         release.change.get("model"))
        baseline = Version(release.route, release.baseline.get("prompt_version"),
                           release.baseline.get("model"))
        samples = await self._read(canary, baseline, window)
        return judge(self.thresholds.for_route(release.route), samples,
                     alpha=self.thresholds.alpha)

    async def check_due(self, only: Sequence[str] | None = None) -> list[Release]:
        """Judge every release in canary (the leader's scheduler calls it each poll): a
        critical failure rolls back at once, bake time or not, as soon as the data
        shows it; once the step has baked, another failure holds, and a pass promotes
        when the release says ``auto_promote`` and waits for a person otherwise.

        A drill's release (target ``drill:DRILL-n``) is judged only by that drill,
        on its own target's numbers (``only``): the bot's Prometheus never sees the
        drill's sandbox."""
        done: list[Release] = []
        if self.store.flag(PAUSE_FLAG) is not None:
            return done  # the kill switch stops the guard's own moves; people still can
        for release in self.store.releases(active_only=True):
            if (release.id not in only) if only is not None else is_drill(release):
                continue
            if self._asked(release):
                continue  # a change of it waits for a second person; the judge waits too
            baked = self.store.now() - release.step_started_at >= release.bake
            try:
                verdict = await self.judge(release.id)
            except Exception:  # noqa: BLE001 - one release's data must not stop the others
                log.exception("judging %s failed; it is judged again at the next poll",
                              release.id)
                continue
            table = verdict_text(verdict)
            if verdict.decision != "rollback" and not baked:
                continue
            if verdict.decision == "rollback":
                failed = ", ".join(s.signal for s in verdict.failed if s.critical)
                done.append(await self.rollback(release.id, actor=GUARD_ACTOR, automatic=True,
                                                reason=f"the canary failed {failed}",
                                                verdict=verdict))
            elif verdict.decision == "promote" and release.auto_promote and not release.held:
                done.append(await self.promote(release.id, actor=GUARD_ACTOR, automatic=True))
            elif verdict.decision in ("hold", "promote") and not release.held \
                    and not self._judged_this_step(release):
                ready = verdict.decision == "promote"
                done.append(self.store.move_release(
                    release.id, expect_step=release.step, held=not ready, actor=GUARD_ACTOR,
                    kind="judged", data={"decision": verdict.decision},
                    text=(f"step {release.step + 1} passed; promote when ready" if ready else
                          "held: a signal failed") + f"\n{table}"))
                if not ready:
                    await self._announce(release.id, f"{release.id} held by the judge",
                                         verdict=verdict)
        return done

    # --- helpers --------------------------------------------------------------------------

    def _judged_this_step(self, release: Release) -> bool:
        """A passing step waiting for a person is said once, not at every poll."""
        return any(e.kind == "judged" and e.at >= release.step_started_at
                   for e in self.store.release_timeline(release.id))

    def _active(self, release_id: str) -> Release:
        return active(self.store.release(release_id))

    def approvals(self, route: str) -> tuple[str, str]:
        """The release policy's (promote, rollback) approval on ``route``."""
        return self.thresholds.approvals.for_route(route)

    async def _set_weight(self, release: Release, percent: int, *, actor: str,
                          automatic: bool = False) -> str | None:
        args = {**release.change, "weight": percent / 100}
        # The first step is the start (the eval gate guards it); the others are promotions.
        first = percent == release.steps[0]
        return await self._run("set_canary", release, args, actor=actor, automatic=automatic,
                               rule="none" if first else self.approvals(release.route)[0])

    async def _run(self, action: str, release: Release, args: dict[str, object], *,
                   actor: str, automatic: bool, rule: str | None = None) -> str | None:
        """Plan and apply one change of the release; None when the release policy wants a
        second person and this is the first asking (their run waits, approvable)."""
        promote_rule, rollback_rule = self.approvals(release.route)
        if rule is None:
            rule = rollback_rule if action == "rollback_canary" else promote_rule
        full = {"route": release.route, "release": release.id, **args}
        pending = self._pending(release, action, full)
        if pending is not None:  # someone asked already: this is the second person
            await self.runner.approve(pending.id, actor)  # never the one who asked
            run_id = pending.id
        else:
            guard = RELEASE_GUARD if rule == "none" else Guard(approval="two_person")
            run = await self.runner.plan(
                incident_id=release.incident_id, playbook_id=None, step_id=release.id,
                action=action, target=release.target, args=full, guard=guard,
                verify_query=None, requested_by=actor, automatic=automatic)
            if run.state == "awaiting_approval":
                return None
            if run.state != "planned":
                raise InputError(f"{action} for {release.id} was not planned: "
                                 f"{run.error or run.state}")
            run_id = run.id
        run = await self.runner.apply(run_id, actor=actor, automatic=automatic)
        # The release tracks this change, not the mitigation bookkeeping: it holds no
        # lock, takes no slot of the active-mitigation cap, and nothing reverts it.
        self.store.mark_reverted(run.id, f"a release change: {release.id} tracks it")
        return run.id

    def _asked(self, release: Release) -> list[Run]:
        """The release's runs awaiting their second person."""
        return [r for state in ("awaiting_approval", "approved")
                for r in self.store.runs(state=state) if r.step_id == release.id]

    def _pending(self, release: Release, action: str,
                 args: dict[str, object]) -> Run | None:
        """This very change, asked for and awaiting its second person."""
        return next((r for r in self._asked(release)
                     if r.action == action and r.args == args), None)

    async def _awaiting(self, release: Release, what: str, actor: str,
                        verdict: Verdict | None = None) -> Release:
        pending = self._asked(release)
        run = pending[-1].id if pending else "?"
        self.store.add_release_event(
            release.id, "awaiting_approval", f"{what} asked by {actor}; the release policy "
            f"wants a second person: `release {'rollback' if what == 'rollback' else 'promote'} "
            f"{release.id}` by someone else ({run})", actor=actor, data={"run": run})
        await self._announce(release.id, f"{release.id}: {what} awaits a second person",
                             verdict=verdict)
        return self.store.release(release.id)

    async def _open_incident(self, release: Release, verdict: Verdict) -> str:
        worst = next((s for s in verdict.failed if s.critical), verdict.failed[0])
        spec = SIGNALS[worst.signal]
        alert = Alert(
            source="generic", fingerprint=f"{release.id}:{worst.signal}",
            status="firing", starts_at=self.store.now(),
            labels={"alertname": "CanaryRollback", "incident_class": spec.incident_class,
                    "route": release.route, "release": release.id,
                    "severity": "critical", "signal": worst.signal},
            annotations={"summary": f"{release.id} rolled back: {worst.why}",
                         "description": verdict_text(verdict)})
        # A drill's release opens a drill incident, whichever process rolls it back.
        (ingested,) = await self.engine.handle_alerts([alert], is_drill=is_drill(release))
        return ingested.incident_id

    async def _announce(self, release_id: str, title: str,
                        verdict: Verdict | None = None) -> None:
        """The release's one live message (keyed by its id, like an incident's): posted at
        the start, edited at every move; Promote / Hold / Roll back while in canary."""
        release = self.store.release(release_id)
        steps = " -> ".join(f"[{p}%]" if i == release.step and release.state == "canary"
                            else f"{p}%" for i, p in enumerate(release.steps))
        sections = [Section(f"{release.what} on {release.route}; owner {release.owner}; "
                            f"steps {steps}{'; held' if release.held else ''}",
                            title=f"{release.id}: {release.state.replace('_', ' ')}")]
        if verdict is not None:
            sections.append(Section(verdict_text(verdict), title="canary vs baseline"))
        live = release.state == "canary"
        buttons = (Button("release_promote", f"Promote {release.id}",
                          f"{release.id}:{release.steps[release.step]}", "primary"),
                   Button("release_hold", "Hold", release.id),
                   Button("release_rollback", "Roll back", release.id, "danger")) if live else ()
        first = len(self.store.release_timeline(release.id)) <= 1
        await self.engine.publish(Message(
            "suggestion" if first else "update", release.id, title, title,
            sections=tuple(sections), buttons=buttons, closes=not live,
            is_drill=is_drill(release)))


def is_drill(release: Release) -> bool:
    """Rolled out by a drill, on the drill's own target."""
    return release.target.startswith("drill:")


def verdict_text(verdict: Verdict) -> str:
    """The judge's table, one line per signal: what it measures, both sides, the test."""
    lines = []
    for s in verdict.signals:
        p = "" if s.p_value is None else f" p={s.p_value:.2g}"
        lines.append(f"{s.outcome:>15}  {s.signal:<16} canary {s.canary:.4g} vs baseline "
                     f"{s.baseline:.4g} (n={int(s.n_canary)}/{int(s.n_baseline)}){p}"
                     f"{'  critical' if s.critical else ''}")
    return "\n".join(lines) or "no signal had data"
