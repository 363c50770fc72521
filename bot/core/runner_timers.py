"""The runner's timed work: verification, TTL reverts, held runs, stale approvals,
and the global pause. A half of ``Runner`` (``bot.core.runner``), kept apart so
each file reads as one topic; the scheduler and `tick` call these, and they
move runs only through the runner's own use cases.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from actions.base import MetricsSource
from bot.base.errors import Conflict, GuardRefused, IncidentBotError
from bot.core.guards import (
    RunnerSettings,
    approval_state,
    evaluate_verification,
    fmt_span,
    fmt_time,
)
from bot.playbook.promql_check import no_data_fallback
from bot.playbook.schema import Verify, format_duration
from bot.store import PAUSE_FLAG, Run, Store

BOT_ACTOR = "bot"


class RunnerTimers:
    # Provided by ``Runner``; declared so the type checker knows them.
    if TYPE_CHECKING:
        store: Store
        settings: RunnerSettings
        metrics: MetricsSource | None
        clock: Callable[[], datetime]

        async def apply(self, run_id: str, *, actor: str, automatic: bool = False) -> Run: ...
        async def revert(self, run_id: str, *, actor: str, reason: str,
                         automatic: bool = False) -> Run: ...

    # --- verification --------------------------------------------------------------

    async def check_verification(self, run_id: str) -> Run:
        run = self.store.run(run_id)
        mit = self.store.mitigation(run_id)
        verify = run.guard.verify
        if (run.state != "applied" or mit is None or not mit.active
                or mit.verify_state != "pending" or not verify or not run.verify_query):
            return run
        ok, detail = await self._evaluate(run.verify_query, verify)
        if ok:
            with self.store.transaction():
                self.store.set_verify_state(run_id, "passed")
                return self.store.transition(run_id, "verified", f"verification passed: {detail}",
                                             actor=BOT_ACTOR, data={"query": run.verify_query},
                                             expect=("applied",))
        if mit.verify_due_at is None or self.clock() < mit.verify_due_at:
            return run  # still inside `within`: the metric has time to recover
        if verify.on_fail == "escalate":
            with self.store.transaction():
                self.store.set_verify_state(run_id, "failed")
                self.store.add_event(run.incident_id, "escalation",
                                     f"verification of {run_id} failed: {detail}; the change "
                                     "stays in place, a human must decide", actor=BOT_ACTOR,
                                     run_id=run_id, data={"query": run.verify_query})
            return self.store.run(run_id)
        try:
            run = await self.revert(run_id, actor=BOT_ACTOR, automatic=True,
                                    reason=f"verification failed: {detail}")
        except GuardRefused:
            return self.store.run(run_id)  # paused: stays pending, retried by run_due
        self.store.set_verify_state(run_id, "failed")
        return run

    async def _evaluate(self, query: str, verify: Verify) -> tuple[bool, str]:
        if self.metrics is None:
            return False, "no metrics source is configured"
        # lint refuses these in a playbook; a run planned before that (its query is
        # stored rendered) must not pass on a value the query made up either.
        if (made_up := no_data_fallback(query)) is not None:
            return False, (f"not known: the query makes up a value when there is no data "
                           f"({made_up}), so its answer shows nothing about the change")
        try:
            samples = await self.metrics.query(query)
        except Exception as exc:  # any query failure is "not passing", judged at the deadline
            return False, f"query failed: {_why(exc)}"
        return evaluate_verification(samples, verify)

    # --- timers, pause, restart ----------------------------------------------------

    async def run_due(self) -> list[Run]:
        """Do now everything whose time has come: TTL reverts, verification deadlines,
        and automatic runs the pause held (once resumed)."""
        now, done = self.clock(), []
        for m in self.store.active_mitigations():
            try:
                if m.ttl_due_at and m.ttl_due_at <= now:
                    ttl = self.store.run(m.run_id).guard.ttl
                    span = format_duration(ttl) if ttl else "TTL"
                    done.append(await self.revert(m.run_id, actor=BOT_ACTOR, automatic=True,
                                                  reason=f"TTL of {span} expired"))
                elif m.verify_state == "pending" and m.verify_due_at and m.verify_due_at <= now:
                    done.append(await self.check_verification(m.run_id))
            except IncidentBotError:
                continue  # recorded on the timeline; retried on the next tick
        if self.store.flag(PAUSE_FLAG) is None:
            for run in self.store.runs(state="planned"):
                if run.held_at is None:
                    continue
                if run.incident_id and not self.store.incident(run.incident_id).is_open:
                    done.append(self.store.transition(
                        run.id, "expired", "not applied: the incident closed while the bot "
                        "was paused", actor=BOT_ACTOR, expect=("planned",)))
                    continue
                try:
                    done.append(await self.apply(run.id, actor=BOT_ACTOR, automatic=True))
                except IncidentBotError:
                    continue
        return done

    def timers(self) -> list[tuple[str, str, datetime]]:
        out: list[tuple[str, str, datetime]] = []
        for m in self.store.active_mitigations():
            if m.ttl_due_at:
                out.append((m.run_id, "ttl", m.ttl_due_at))
            if m.verify_state == "pending" and m.verify_due_at:
                out.append((m.run_id, "verify", m.verify_due_at))
        return sorted(out, key=lambda t: (t[2], t[0], t[1]))

    async def pause(self, actor: str, reason: str) -> None:
        with self.store.transaction():
            self.store.set_flag(PAUSE_FLAG, reason, actor=actor)
            self._broadcast("paused", f"bot paused by {actor}: {reason}; automatic actions "
                            "are held until resume", actor)

    async def resume(self, actor: str) -> list[Run]:
        """Lift the pause, then run what it held (returns those runs)."""
        with self.store.transaction():
            self.store.set_flag(PAUSE_FLAG, None, actor=actor)
            self._broadcast("resumed", f"bot resumed by {actor}", actor)
        return await self.run_due()

    async def expire_stale_approvals(self) -> list[Run]:
        """Expire runs whose approval can no longer count: ``approved`` ones whose every
        approval expired, and ``awaiting_approval`` ones with an expired approval or
        none within the approval TTL of planning."""
        now, ttl = self.clock(), self.settings.approval_ttl
        expired = []
        for state in ("awaiting_approval", "approved"):
            for run in self.store.runs(state=state):
                verdict, which = approval_state(
                    run.guard, requested_by=run.requested_by,
                    approvals=self.store.approvals(run.id), now=now,
                    allow_self=self.settings.self_approval)
                if verdict == "expired":
                    last = max(which, key=lambda a: a.expires_at)
                    why = (f"the approval by {last.user} expired at "
                           f"{fmt_time(last.expires_at, now)}")
                elif verdict == "missing" and run.created_at + ttl <= now:
                    why = f"nobody approved it within {fmt_span(ttl)} of planning"
                else:
                    continue
                try:
                    expired.append(self.store.transition(
                        run.id, "expired", f"not applied: {why}", actor=BOT_ACTOR,
                        expect=(state,)))
                except Conflict:
                    continue  # applied or denied by someone else meanwhile
        return expired

    def _broadcast(self, kind: str, text: str, actor: str) -> None:
        # The global timeline, plus every open incident so its own timeline tells the story.
        self.store.add_event(None, kind, text, actor=actor)
        for inc in self.store.open_incidents():
            self.store.add_event(inc.id, kind, text, actor=actor)


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, IncidentBotError) else f"{type(exc).__name__}: {exc}"
