"""Plans and runs: the use cases behind `run`, `do`, `approve`, `apply`, `deny`,
`revert` and the "not this playbook" button, whichever front end asks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from actions.catalog import get_action
from bot.base.errors import InputError
from bot.core.engine_base import EngineBase
from bot.core.suggestions import build_suggestion, release_on
from bot.playbook.matcher import MatchResult
from bot.playbook.schema import Guard
from bot.store import Incident, Run

# An ad hoc action (`do`) gets the strictest guards a human can still pass alone.
AD_HOC_TTL = timedelta(hours=1)
PENDING = ("planned", "awaiting_approval", "approved")
REJECTED_KIND = "playbook_rejected"


class StepCases(EngineBase):
    async def apply(self, run_id: str, actor: str) -> Run:
        return await self._settle(await self.runner.apply(run_id, actor=actor))

    async def approve(self, run_id: str, actor: str, *, apply: bool = False) -> Run:
        run = self.store.run(run_id)
        if apply and run.incident_id:
            self.open_incident(run.incident_id, f"apply {run_id}")
        if apply:
            return await self._settle(await self.runner.approve_and_apply(run_id, actor))
        return await self._settle(await self.runner.approve(run_id, actor))

    async def deny(self, run_id: str, actor: str, reason: str = "") -> Run:
        return await self._settle(await self.runner.deny(run_id, actor, reason))

    async def revert(self, run_id: str, actor: str, reason: str) -> Run:
        return await self._settle(await self.runner.revert(run_id, actor=actor, reason=reason))

    async def _settle(self, run: Run) -> Run:
        await self.after_run(run)
        return run

    # --- steps, ad hoc actions, rejected suggestions ------------------------------------

    def open_incident(self, incident_id: str, what: str) -> Incident:
        """The incident, if it is still open (InputError naming its status otherwise)."""
        inc = self.store.incident(incident_id)
        if not inc.is_open:
            raise InputError(f"{inc.id} is {inc.status}; cannot {what} on a closed incident",
                             hint=f"`show {inc.id}` for its timeline; revert still works on "
                             "its runs")
        return inc

    async def run_step(self, incident_id: str, playbook_id: str | None, step_id: str | None,
                       actor: str, *, dry_run: bool = False) -> tuple[Run, bool]:
        """The "Run" button and the `run` verb: plan a step, and apply it at once when it
        needs no approval (a human asked). A second click while the step is still
        pending returns that run (``(run, False)``) instead of queueing it twice."""
        inc = self.open_incident(incident_id, "run a step")
        playbook_id = playbook_id or self.suggested_playbook(inc.id)
        if playbook_id is None:
            raise InputError(f"no playbook is suggested for {inc.id}",
                             hint=f"`suggest {inc.id}`, then `run {inc.id} --playbook ID`")
        playbook = self.registry.get(playbook_id)
        step_id = step_id or playbook.first_step_for(self.alert_labels(inc.id)).id
        if not dry_run:
            for r in self.store.runs(incident_id=inc.id):
                if (r.playbook_id, r.step_id) == (playbook.id, step_id) and \
                        r.state in PENDING and not r.dry_run:
                    return r, False
        run = await self.plan_step(inc.id, playbook.id, step_id, actor=actor, dry_run=dry_run)
        if run.state == "planned" and run.held_at is None:
            run = await self.apply(run.id, actor)
        return run, True

    async def plan_ad_hoc(self, action: str, route: str, params: dict[str, Any], actor: str, *,
                          incident_id: str | None = None, target: str = "default",
                          ttl: timedelta = AD_HOC_TTL, dry_run: bool = False) -> Run:
        """`do`: one guarded action outside a playbook, with the strictest guards a human
        can still pass alone (on-call approval, a TTL)."""
        if incident_id:
            incident_id = self.open_incident(incident_id, "run an action").id
        chosen = get_action(action)
        # `do` may not go below on-call; an action that asks for more (block_customer:
        # two people) keeps it.
        approval: Literal["oncall", "two_person"] = (
            "two_person" if chosen.default_approval == "two_person" else "oncall")
        return await self.runner.plan(
            incident_id=incident_id, playbook_id=None, step_id=None, action=action,
            target=target, args={chosen.subject_arg: route, **params},
            guard=Guard(approval=approval, ttl=ttl), verify_query=None, requested_by=actor,
            dry_run=dry_run)

    def rejected_playbooks(self, incident_id: str) -> list[str]:
        return [e.data["playbook"] for e in self.store.timeline(incident_id)
                if e.kind == REJECTED_KIND and e.data and "playbook" in e.data]

    async def reject_playbook(self, incident_id: str, playbook_id: str,
                              actor: str) -> MatchResult | None:
        """"Not this playbook": record it, then suggest (and post) the next candidate not
        rejected yet; returns that match, or None when no other playbook matches."""
        inc = self.open_incident(incident_id, "change the suggestion")
        playbook = self.registry.get(playbook_id)
        self.store.add_event(inc.id, REJECTED_KIND, f"{actor}: not this playbook: {playbook.id}",
                             actor=actor, data={"playbook": playbook.id})
        rejected = set(self.rejected_playbooks(inc.id))
        alert = self.latest_alert(inc.id)
        rest = [m for m in self.matcher.match(alert) if m.playbook.id not in rejected]
        if not rest:
            return None
        nxt = rest[0]
        self.store.add_event(inc.id, "suggested",
                             f"suggested playbook {nxt.playbook.id} ({nxt.playbook.title}) "
                             f"after {actor} rejected {playbook.id}", actor=actor,
                             data={"playbook": nxt.playbook.id,
                                   "why": [r.why for r in nxt.matched],
                                   "others": [m.playbook.id for m in rest[1:]]})
        await self.publish(await build_suggestion(
            self.store.incident(inc.id), alert, rest, diagnose=self.diagnose,
            metrics=self.runner.metrics, timeout=self.diagnose_timeout,
            release=release_on(self, alert)))
        return nxt
