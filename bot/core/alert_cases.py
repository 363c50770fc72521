"""Alerts in: ingest a body in one transaction, answer repeats from memory, and the
work that follows (the outbox: announce, automatic steps, recovery rules).

Publishing never raises: a failing notifier is logged and the alert stays
ingested.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bot.base.errors import GuardRefused, IncidentBotError, NothingToDo
from bot.core.engine_base import EngineBase
from bot.core.leadership import NotLeader
from bot.core.lifecycle import ENGINE_ACTOR
from bot.core.suggestions import auto_result_message
from bot.intake.alert import Alert
from bot.playbook.matcher import MatchResult
from bot.playbook.schema import Playbook, not_for
from bot.store import PAUSE_FLAG, Incident, Run, group_key_for

log = logging.getLogger(__name__)

UNCLASSIFIED = "unclassified"


@dataclass
class Ingested:
    """What happened to one alert: its incident, whether that is new, the suggestions."""

    alert: Alert
    incident_id: str
    created: bool
    matches: list[MatchResult] = field(default_factory=list)
    # "opened" (a new incident), "joined" (a new alert of an open incident),
    # "reopened" (it fired again soon after its incident resolved: flap damping),
    # "resolved" (a known alert resolved now), "duplicate" (nothing changed).
    outcome: str = ""

    @property
    def suggestion(self) -> Playbook | None:
        return self.matches[0].playbook if self.matches else None


class AlertCases(EngineBase):
    @contextmanager
    def drilling(self, alertname: str, route: str,
                 drill_id: str | None = None) -> Iterator[None]:
        """While a drill runs, its expected alert is a drill alert however it arrives.

        Alertmanager may deliver the drill's alert to the webhook before the drill's
        own observer hands it over; either way the incident must be marked DRILL
        (grouped within that drill, ``drill_id``) and never page a real escalation.
        """
        key = (alertname, route)
        self._drilling[key] += 1
        if drill_id:
            self._drill_ids.setdefault(key, []).append(drill_id)
        try:
            yield
        finally:
            self._drilling[key] -= 1
            if self._drilling[key] <= 0:
                del self._drilling[key]
            if drill_id and drill_id in self._drill_ids.get(key, []):
                self._drill_ids[key].remove(drill_id)
                if not self._drill_ids[key]:
                    del self._drill_ids[key]

    def _drill_key(self, alert: Alert) -> tuple[str, str]:
        route = alert.labels.get("route") or alert.labels.get("requested_model") or ""
        return alert.alertname, route

    def _is_drill(self, alert: Alert) -> bool:
        return self._drill_key(alert) in self._drilling

    def _drill_of(self, alert: Alert) -> str | None:
        """The newest running drill that expects this alert, if one said its id."""
        ids = self._drill_ids.get(self._drill_key(alert))
        return ids[-1] if ids else None

    def ingest(self, alerts: Iterable[Alert], *, is_drill: bool = False,
               drill_id: str | None = None) -> list[Ingested]:
        """Record a webhook body's alerts in one transaction, with the work they leave
        (announce, automatic steps, recovery) in the outbox: committed together, or
        nothing at all. ``drain_outbox`` does that work; the webhook answers first."""
        out = []
        with self.store.transaction():
            resolved: set[str] = set()
            alerts = list(alerts)
            for alert in alerts:
                item = self._ingest_one(alert, is_drill=is_drill, drill_id=drill_id)
                out.append(item)
                if item.created and alert.status == "firing":
                    self.store.add_outbox(item.incident_id, "opened")
                if item.outcome == "reopened":
                    self.store.add_outbox(item.incident_id, "reopened")
                if item.outcome == "joined":
                    self.store.add_outbox(item.incident_id, "joined")
                if alert.status == "resolved" and item.outcome != "duplicate":
                    resolved.add(item.incident_id)
            for incident_id in sorted(resolved):
                self.store.add_outbox(incident_id, "resolved")
        self.known.remember((i.alert, i.incident_id) for i in out)  # committed now
        return out

    def answer_repeats(self, alerts: list[Alert]) -> list[Ingested] | None:
        """A body made only of repeats of committed alerts, answered from memory (any
        thread, no transaction); None when anything in it needs the store."""
        incidents = self.known.repeats(alerts)
        if incidents is None:
            return None
        return [Ingested(a, i, False, [], "duplicate") for a, i in zip(alerts, incidents,
                                                                         strict=True)]

    def _ingest_one(self, alert: Alert, *, is_drill: bool,
                    drill_id: str | None = None) -> Ingested:
        if (incident_id := self.known.incident_of_repeat(alert)) is not None:
            return Ingested(alert, incident_id, False, [], "duplicate")
        known = self.store.alert_by_key(alert.fingerprint, alert.starts_at)
        if known is not None and (alert.status == known.status or alert.status == "firing"):
            # The fast path for repeats (Alertmanager re-sends every group on each
            # repeat_interval): nothing to match, nothing to write.
            return Ingested(alert, known.incident_id, False, [], "duplicate")
        matches = self.matcher.match(alert)
        top = matches[0].playbook if matches else None
        klass = top.class_ if top else alert.labels.get("incident_class", UNCLASSIFIED)
        is_drill = is_drill or self._is_drill(alert)
        drill_id = (drill_id or self._drill_of(alert)) if is_drill else None
        incident_id, created, reopened = self.store.record_alert(
            alert,
            group_key=group_key_for(alert, klass, drill_id=drill_id),
            title=_title(alert, top),
            klass=klass,
            severity=top.severity if top else alert.labels.get("severity", "warning"),
            is_drill=is_drill,
            reopen_within=self.flap_window,
        )
        if created and top is not None:
            self.store.add_event(
                incident_id,
                "suggested",
                f"suggested playbook {top.id} ({top.title})",
                actor="llm-incident",
                data={
                    "playbook": top.id,
                    "why": [r.why for r in matches[0].matched],
                    "others": [m.playbook.id for m in matches[1:]],
                },
            )
        if reopened:
            outcome = "reopened"
        elif known is None:
            outcome = "opened" if created else "joined"
        elif alert.status == "resolved" and known.status != "resolved":
            outcome = "resolved"
        else:
            outcome = "duplicate"
        return Ingested(alert, incident_id, created, matches, outcome)

    async def handle_alerts(
        self, alerts: Iterable[Alert], *, is_drill: bool = False, drill_id: str | None = None
    ) -> list[Ingested]:
        """Ingest, then do the work it left at once (suggest for new incidents, run
        auto steps, apply the recovery rules). ``serve``'s webhook calls ``ingest``
        and answers before draining; the CLI, drills and channel alerts call this.

        A duplicate publishes nothing. A new alert joining an open incident updates
        its live message (alert count, last seen, latest value), never a new one:
        grouping exists to cut noise, and the notifier coalesces a burst of them.
        """
        ingested = self.ingest(alerts, is_drill=is_drill, drill_id=drill_id)
        await self.drain_outbox()
        if any(i.outcome != "duplicate" for i in ingested):
            self._changed()
        return ingested

    async def accept_alerts(self, alerts: Iterable[Alert]) -> list[Ingested]:
        """The webhook's use case: commit the body's alerts (and their outbox work) and
        return; ``drain_outbox`` runs after the answer."""
        ingested = self.ingest(alerts)
        if any(i.outcome != "duplicate" for i in ingested):
            self._changed()
        return ingested

    async def drain_outbox(self) -> int:
        """Do the pending outbox work this process can claim (``bot.core.outbox``).

        One drain at a time: a call while one runs asks it to look again when it is
        done, so a storm of webhooks makes one pass over the outbox, not one each."""
        from bot.core.outbox import drain

        if self._draining:
            self._drain_again = True
            return 0
        self._draining, done = True, 0
        try:
            while True:
                self._drain_again = False
                done += await drain(self)
                if not self._drain_again:
                    return done
        finally:
            self._draining = False

    async def run_auto_steps(self, inc: Incident, playbook: Playbook) -> None:
        ours = {r.step_id: r for r in self.store.runs(incident_id=inc.id)
                if r.playbook_id == playbook.id and r.requested_by == ENGINE_ACTOR}
        labels = self.alert_labels(inc.id)
        for step in (s for s in playbook.steps
                     if s.guard.auto and not_for(s, labels) is None):
            run: Run | None = ours.get(step.id)
            if run is not None and not (run.state == "planned" and run.held_at is None):
                continue  # a retried outbox item acts at most once per step
            try:
                if run is None:
                    run = await self.plan_step(inc.id, playbook.id, step.id,
                                               actor=ENGINE_ACTOR, automatic=True)
                if run.state == "planned" and run.held_at is None:
                    run = await self.runner.apply(run.id, actor=ENGINE_ACTOR, automatic=True)
                outcome, detail = self._auto_outcome(run)
            except NotLeader:
                raise  # planned, not applied: the new leader's retry applies it
            except NothingToDo as exc:
                outcome, detail = "nothing to do", str(exc)
            except GuardRefused as exc:
                run = self.store.run(run.id) if run else None
                outcome = "held" if exc.guard == "pause" else f"refused by guard {exc.guard}"
                detail = str(exc)
            except IncidentBotError as exc:
                run = self.store.run(run.id) if run else None
                outcome, detail = "failed", str(exc)
            await self.publish(auto_result_message(inc, step, outcome, detail, run))
        await self.publish_changes(self.lifecycle.sync_runs(inc.id))

    def _auto_outcome(self, run: Run) -> tuple[str, str]:
        if run.state == "applied":
            mit = self.store.mitigation(run.id)
            ttl = f"; reverts at {mit.ttl_due_at:%H:%M} UTC" if mit and mit.ttl_due_at else ""
            return "applied", f"{run.plan.summary or run.action} on {run.target}{ttl}"
        if run.held_at is not None:
            pause = self.store.flag(PAUSE_FLAG)
            who = f" by {pause.set_by}: {pause.value}" if pause else ""
            return "held", f"the bot is paused{who}; {run.id} runs after `resume`"
        events = self.store.run_events(run.id)
        if run.state == "refused":
            refusals = events[0].data.get("refusals") if events else None
            guard = refusals[0]["guard"] if refusals else "?"
            return f"refused by guard {guard}", run.error or "refused"
        return run.state, events[-1].text if events else run.state


def _title(alert: Alert, playbook: Playbook | None) -> str:
    route = alert.labels.get("route") or alert.labels.get("requested_model")
    name = playbook.title if playbook else (alert.alertname or "alert")
    return f"{name} on {route}" if route else name
