"""The engine: what the bot *does*, over the store, the playbooks and the runner.

Commands (CLI and Slack), the web intake and the scheduler all call these
methods; none of them talks to the store or the runner behind its back. No
Slack, web framework or driver is imported here: the runner arrives with its
drivers already injected, the notifier with its channels.

``handle_alerts`` is the service's entry point: ingest (dedup in the store),
post a suggestion for each new incident, run the steps marked ``auto`` whose
guards pass, and apply the lifecycle rules (``bot.core.lifecycle``) to resolved
alerts. Publishing never raises: a failing notifier is logged and the alert
stays ingested.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.base.errors import GuardRefused, IncidentBotError, InputError, NotFound, NothingToDo
from bot.core.known_alerts import KnownAlerts
from bot.core.lifecycle import ENGINE_ACTOR, Change, Lifecycle, LifecyclePolicy
from bot.core.messages import Message
from bot.core.notifier import Notifier, publish_safely
from bot.core.playbook_loading import LoadResult
from bot.core.playbook_loading import reload as reload_playbooks
from bot.core.runner import Runner
from bot.core.suggestions import auto_result_message
from bot.intake.alert import Alert
from bot.playbook.matcher import Matcher, MatchResult
from bot.playbook.registry import PlaybookRegistry
from bot.playbook.render import render_params, render_query, render_step_args
from bot.playbook.schema import Playbook, Step
from bot.store import PAUSE_FLAG, Incident, Run, Store, group_key_for

log = logging.getLogger(__name__)

UNCLASSIFIED = "unclassified"
MAX_NOTE = 4000  # a note is a timeline line, not a document


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


class Engine:
    def __init__(
        self,
        store: Store,
        registry: PlaybookRegistry,
        runner: Runner,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        notifier: Notifier | None = None,
        lifecycle: LifecyclePolicy = LifecyclePolicy(),  # noqa: B008 - frozen, safe to share
        diagnose_timeout: float = 2.0,
        flap_window: timedelta | None = timedelta(minutes=10),
    ) -> None:
        self.store = store
        self.registry = registry
        self.runner = runner
        self.clock = clock
        self.notifier = notifier
        self.lifecycle = Lifecycle(store, lifecycle)
        self.diagnose_timeout = diagnose_timeout
        # A group firing again this soon after its incident resolved reopens it.
        self.flap_window = flap_window
        self._listeners: list[Callable[[], None]] = []
        # (alertname, route) pairs a running drill owns; see ``drilling``.
        self._drilling: Counter[tuple[str, str]] = Counter()
        self._matcher: Matcher | None = None
        self._matcher_for: object = None
        self._draining = self._drain_again = False
        # Committed alerts by dedup key: repeats skip the store (bot.core.known_alerts).
        self.known = KnownAlerts()
        # How the playbooks in force were loaded (set by the composition root).
        self.playbook_load: LoadResult | None = None

    async def reload_playbooks(self, actor: str) -> LoadResult:
        """All-or-nothing reload of the playbook directory; the result is posted."""
        result = reload_playbooks(self.registry, self.store)
        self.playbook_load = result
        self.store.add_event(None, "playbooks_reloaded" if result.ok else "playbooks_refused",
                             result.text(self.registry.source), actor=actor,
                             data={"count": result.count, "problems": len(result.problems)})
        if result.changed or result.recovered or not result.ok:
            await self.publish(result.message(self.registry.source))
        return result

    @property
    def matcher(self) -> Matcher:
        # Rebuild the index only when the registry swapped in a new good set.
        if self._matcher is None or self._matcher_for is not self.registry.playbooks:
            self._matcher = Matcher(self.registry.playbooks.values())
            self._matcher_for = self.registry.playbooks
        return self._matcher

    # --- intake ---------------------------------------------------------------

    @contextmanager
    def drilling(self, alertname: str, route: str) -> Iterator[None]:
        """While a drill runs, its expected alert is a drill alert however it arrives.

        Alertmanager may deliver the drill's alert to the webhook before the drill's
        own observer hands it over; either way the incident must be marked DRILL
        and never page a real escalation.
        """
        key = (alertname, route)
        self._drilling[key] += 1
        try:
            yield
        finally:
            self._drilling[key] -= 1
            if self._drilling[key] <= 0:
                del self._drilling[key]

    def _is_drill(self, alert: Alert) -> bool:
        route = alert.labels.get("route") or alert.labels.get("requested_model") or ""
        return (alert.alertname, route) in self._drilling

    def ingest(self, alerts: Iterable[Alert], *, is_drill: bool = False) -> list[Ingested]:
        """Record a webhook body's alerts in one transaction, with the work they leave
        (announce, automatic steps, recovery) in the outbox: committed together, or
        nothing at all. ``drain_outbox`` does that work; the webhook answers first."""
        out = []
        with self.store.transaction():
            resolved: set[str] = set()
            alerts = list(alerts)
            for alert in alerts:
                item = self._ingest_one(alert, is_drill=is_drill)
                out.append(item)
                if item.created and alert.status == "firing":
                    self.store.add_outbox(item.incident_id, "opened")
                if item.outcome == "reopened":
                    self.store.add_outbox(item.incident_id, "reopened")
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

    def _ingest_one(self, alert: Alert, *, is_drill: bool) -> Ingested:
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
        incident_id, created, reopened = self.store.record_alert(
            alert,
            group_key=group_key_for(alert, klass),
            title=_title(alert, top),
            klass=klass,
            severity=top.severity if top else alert.labels.get("severity", "warning"),
            is_drill=is_drill or self._is_drill(alert),
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
        self, alerts: Iterable[Alert], *, is_drill: bool = False
    ) -> list[Ingested]:
        """Ingest, then do the work it left at once (suggest for new incidents, run
        auto steps, apply the recovery rules). ``serve``'s webhook calls ``ingest``
        and answers before draining; the CLI, drills and channel alerts call this.

        A duplicate publishes nothing. A new alert joining an open incident is
        recorded on its timeline without a message (grouping exists to cut noise).
        """
        ingested = self.ingest(alerts, is_drill=is_drill)
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
        done = {r.step_id for r in self.store.runs(incident_id=inc.id)
                if r.playbook_id == playbook.id and r.requested_by == ENGINE_ACTOR}
        for step in (s for s in playbook.steps if s.guard.auto):
            if step.id in done:
                continue  # a retried outbox item acts at most once per step
            run: Run | None = None
            try:
                run = await self.plan_step(inc.id, playbook.id, step.id, actor=ENGINE_ACTOR,
                                           automatic=True)
                if run.state == "planned" and run.held_at is None:
                    run = await self.runner.apply(run.id, actor=ENGINE_ACTOR, automatic=True)
                outcome, detail = self._auto_outcome(run)
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

    def latest_alert(self, incident_id: str) -> Alert:
        alerts = self.store.alerts_for(incident_id)
        if not alerts:
            raise NotFound(f"incident {incident_id} has no alerts")
        firing = [a for a in alerts if a.status == "firing"] or alerts
        a = max(firing, key=lambda a: a.starts_at)
        return Alert(
            source=a.source,  # type: ignore[arg-type]  # stored from a valid Alert
            fingerprint=a.fingerprint,
            status=a.status,  # type: ignore[arg-type]
            labels=a.labels,
            annotations=a.annotations,
            starts_at=a.starts_at,
            ends_at=a.ends_at,
            generator_url=a.generator_url,
        )

    def suggested_playbook(self, incident_id: str) -> str | None:
        for ev in reversed(self.store.timeline(incident_id)):
            if ev.kind == "suggested" and ev.data:
                return ev.data.get("playbook")
        return None

    # --- planning -------------------------------------------------------------

    def _step(self, playbook: Playbook, step_id: str | None) -> Step:
        if step_id is None:
            return playbook.steps[0]
        step = playbook.step(step_id)
        if step is None:
            raise InputError(
                f"playbook {playbook.id} has no step '{step_id}'",
                hint=f"steps: {', '.join(s.id for s in playbook.steps)}",
            )
        return step

    async def plan_step(
        self,
        incident_id: str,
        playbook_id: str | None = None,
        step_id: str | None = None,
        *,
        actor: str,
        dry_run: bool = False,
        automatic: bool = False,
    ) -> Run:
        """Render the step against the incident's latest alert and have the runner plan it."""
        self.store.incident(incident_id)  # NotFound early, with a hint
        playbook_id = playbook_id or self.suggested_playbook(incident_id)
        if playbook_id is None:
            raise InputError(
                f"no playbook matched incident {incident_id}",
                hint="name one: plan PLAYBOOK, or run an ad hoc action with `do`",
            )
        playbook = self.registry.get(playbook_id)
        step = self._step(playbook, step_id)
        alert = self.latest_alert(incident_id)
        params = render_params(playbook, alert)
        args = render_step_args(step, params, alert)
        verify = step.guard.verify
        query = render_query(verify.query, params, alert) if verify else None
        return await self.runner.plan(
            incident_id=incident_id,
            playbook_id=playbook.id,
            step_id=step.id,
            action=step.action,
            target=step.target,
            args=args,
            guard=step.guard,
            verify_query=query,
            requested_by=actor,
            dry_run=dry_run or step.guard.dry_run,
            automatic=automatic,
        )

    def diagnose(self, playbook: Playbook, alert: Alert) -> list[tuple[str, str]]:
        """The playbook's diagnose queries, rendered for this alert (title, PromQL)."""
        params = render_params(playbook, alert)
        return [(d.title, render_query(d.query, params, alert)) for d in playbook.diagnose]

    # --- lifecycle ------------------------------------------------------------

    async def acknowledge(self, incident_id: str, actor: str) -> Incident:
        inc = self.store.incident(incident_id)
        if inc.status in ("mitigating", "mitigated"):
            # Someone took it after the bot already acted: record who, keep the status.
            text = f"acknowledged by {actor} (status stays {inc.status})"
            self.store.add_event(incident_id, "acknowledged", text, actor=actor)
            await self.publish(self._timeline(inc, f"{incident_id} acknowledged", text))
            return inc
        return await self._move(incident_id, "acknowledged", actor)

    async def resolve(self, incident_id: str, actor: str, reason: str = "") -> Incident:
        return await self._move(incident_id, "resolved", actor, reason)

    async def cancel(self, incident_id: str, actor: str, reason: str) -> Incident:
        return await self._move(incident_id, "cancelled", actor, reason)

    async def note(self, incident_id: str, text: str, actor: str) -> Incident:
        text = text.strip()
        if not text:
            raise InputError(f"a note on {incident_id} needs some text",
                             hint=f"note {incident_id} WHAT HAPPENED")
        if len(text) > MAX_NOTE:
            raise InputError(f"the note on {incident_id} is {len(text)} characters; "
                             f"the limit is {MAX_NOTE}", hint="link to a document instead")
        inc = self.store.incident(incident_id)
        self.store.add_event(incident_id, "note", text, actor=actor)
        await self.publish(self._timeline(inc, f"{incident_id} note by {actor}", text))
        return inc

    async def assign(self, incident_id: str, commander: str, actor: str) -> Incident:
        commander = commander.strip()
        if not commander or len(commander) > 100:
            raise InputError(f"assign {incident_id}: the commander must be a user name "
                             "(1-100 characters)", hint=f"assign {incident_id} USER")
        inc = self.store.incident(incident_id)
        if not inc.is_open:
            raise InputError(f"{incident_id} is {inc.status}; a closed incident needs no "
                             "commander", hint="add a `note` instead")
        inc = self.store.set_commander(incident_id, commander, actor=actor)
        text = f"{commander} is the incident commander (assigned by {actor})"
        await self.publish(self._timeline(inc, f"{incident_id} commander: {commander}", text))
        return inc

    # --- run use cases: every front end calls these, never the runner directly ------

    async def apply(self, run_id: str, actor: str) -> Run:
        return await self._settle(await self.runner.apply(run_id, actor=actor))

    async def approve(self, run_id: str, actor: str, *, apply: bool = False) -> Run:
        run = self.store.run(run_id)
        if apply and run.incident_id:
            inc = self.store.incident(run.incident_id)
            if not inc.is_open:
                raise InputError(f"{inc.id} is {inc.status}; apply {run_id} is refused",
                                 hint="a closed incident takes no new mitigation")
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

    async def after_run(self, run: Run) -> None:
        """Call after a run changed outside ``handle_alerts`` (a command, a timer):
        applies the run rules of the lifecycle and tells the listeners (the scheduler)."""
        if run.incident_id:
            await self.publish_changes(self.lifecycle.sync_runs(run.incident_id))
        self._changed()

    async def sync_lifecycle(self) -> list[Change]:
        """Re-apply the run rules to every open incident (idempotent; the scheduler's tick)."""
        changes: list[Change] = []
        for inc in self.store.open_incidents():
            changes += self.lifecycle.sync_runs(inc.id)
        await self.publish_changes(changes)
        return changes

    async def _move(self, incident_id: str, wanted: str, actor: str, reason: str = "") -> Incident:
        change = self.lifecycle.move(incident_id, wanted, actor=actor, reason=reason)
        await self.publish_changes([change])
        return change.incident

    # --- publishing -----------------------------------------------------------

    async def publish(self, msg: Message) -> None:
        """Hand a message to the notifier; failures are logged, never raised."""
        await publish_safely(self.notifier, msg)

    async def publish_changes(self, changes: list[Change]) -> None:
        for change in changes:
            await self.publish(self.lifecycle.update_message(change))

    def _timeline(self, inc: Incident, title: str, text: str) -> Message:
        return Message("timeline", inc.id, title, text, severity=inc.severity,
                       is_drill=inc.is_drill)

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs after anything may have added timers (the scheduler's refresh)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("change listener %r failed", listener)


def _title(alert: Alert, playbook: Playbook | None) -> str:
    route = alert.labels.get("route") or alert.labels.get("requested_model")
    name = playbook.title if playbook else (alert.alertname or "alert")
    return f"{name} on {route}" if route else name
