"""The engine's shared part: its collaborators and what every use case needs.

``Engine`` (``bot.core.engine``) is this plus the use cases, grouped by topic:
``AlertCases`` (alerts in) and ``StepCases`` (plans and runs); the incident
moves are in ``Engine`` itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.base.errors import InputError, NotFound
from bot.core.known_alerts import KnownAlerts
from bot.core.lifecycle import Change, Lifecycle, LifecyclePolicy
from bot.core.messages import Message, message_to_json
from bot.core.notifier import Notifier, publish_safely
from bot.core.playbook_loading import LoadResult
from bot.core.playbook_loading import reload as reload_playbooks
from bot.core.runner import Runner
from bot.intake.alert import Alert
from bot.playbook.matcher import Matcher
from bot.playbook.registry import PlaybookRegistry
from bot.playbook.render import render_params, render_query, render_step_args
from bot.playbook.schema import Playbook, Step, not_for
from bot.store import Incident, Run, Store, StoredAlert

log = logging.getLogger(__name__)


class EngineBase:
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
        self.lifecycle.queue = self.queue_message  # status updates join their change
        self.diagnose_timeout = diagnose_timeout
        # A group firing again this soon after its incident resolved reopens it.
        self.flap_window = flap_window
        self._listeners: list[Callable[[], None]] = []
        # (alertname, route) pairs a running drill owns; see ``drilling``.
        self._drilling: Counter[tuple[str, str]] = Counter()
        self._drill_ids: dict[tuple[str, str], list[str]] = {}  # the drills among them
        self._matcher: Matcher | None = None
        self._matcher_for: object = None
        self._draining = self._drain_again = False
        self.outbox_pruned_at: datetime | None = None
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

    def _current_alerts(self, incident_id: str) -> list[StoredAlert]:
        alerts = self.store.alerts_for(incident_id)
        if not alerts:
            raise NotFound(f"incident {incident_id} has no alerts")
        return [a for a in alerts if a.status == "firing"] or alerts

    def alert_labels(self, incident_id: str) -> dict[str, str]:
        """Every label the incident's alerts carry (the newest value wins): what a step's
        ``when`` is judged on, so a route alert grouped in after a customer's alert does
        not hide the customer's step."""
        merged: dict[str, str] = {}
        for a in sorted(self._current_alerts(incident_id), key=lambda a: a.starts_at):
            merged.update({k: v for k, v in a.labels.items() if v})
        return merged

    def latest_alert(self, incident_id: str, *, having: str | None = None) -> Alert:
        """The newest firing alert; with ``having``, the newest one carrying that label
        (a step rendered for a customer reads the alert that names one)."""
        firing = self._current_alerts(incident_id)
        if having is not None:
            firing = [a for a in firing if a.labels.get(having)] or firing
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

    def _step(self, playbook: Playbook, step_id: str | None, labels: dict[str, str]) -> Step:
        if step_id is None:
            return playbook.first_step_for(labels)
        step = playbook.step(step_id)
        if step is None:
            raise InputError(
                f"playbook {playbook.id} has no step '{step_id}'",
                hint=f"steps: {', '.join(s.id for s in playbook.steps)}",
            )
        why = not_for(step, labels)
        if why is not None:
            others = [s.id for s in playbook.steps if not_for(s, labels) is None]
            raise InputError(f"step {step.id} of {playbook.id} is not for this incident: {why}",
                             hint=f"steps for it: {', '.join(others) or 'none'}")
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
        step = self._step(playbook, step_id, self.alert_labels(incident_id))
        alert = self.latest_alert(incident_id, having=step.when.label if step.when else None)
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

    # --- publishing -----------------------------------------------------------

    # What a change says goes through the outbox, whichever process made it: queued
    # (``queue_message``, in the change's transaction where the caller holds one),
    # then delivered by this process at once when it has a notifier (the item is
    # claimed at insert, so no other process sends it too), else left for one that
    # has (``serve`` sees a CLI's items within a second). A message about no
    # incident has no outbox row to hang on: it goes straight to the notifier.

    def queue_message(self, msg: Message) -> int | None:
        """Put ``msg`` in the outbox (inside the caller's transaction, if any)."""
        if msg.incident_id is None or not msg.incident_id.startswith("INC-"):
            # A release's messages (``REL-n``) name no incident row for the outbox to
            # hang on; they go straight to the notifier, as they always have.
            return None
        return self.store.add_outbox(msg.incident_id, "message", payload=message_to_json(msg),
                                     claim=self.notifier is not None)

    async def deliver(self, item_id: int | None, msg: Message) -> None:
        """Send a queued message now when this process can; the outbox keeps it otherwise."""
        if item_id is None:
            await publish_safely(self.notifier, msg)
        elif self.notifier is not None:
            # Sent as the change made it (a burst of moves reads as its steps); a message
            # this process could not send is rendered again when it is (``outbox``).
            # A notifier that raised was logged; as before, the message is not resent
            # (a fan-out that half worked would show it twice). The error stays on it.
            sent = await publish_safely(self.notifier, msg)
            self.store.outbox_done(item_id, None if sent else "the notifier failed")

    async def publish(self, msg: Message) -> None:
        """Queue and send a message; failures are logged, never raised."""
        try:
            item_id = self.queue_message(msg)
        except Exception as exc:  # noqa: BLE001 - the message still goes out, undurably
            log.error("could not queue the %s message %r: %s", msg.kind, msg.title, exc)
            item_id = None
        await self.deliver(item_id, msg)

    async def publish_changes(self, changes: list[Change]) -> None:
        for change in changes:
            msg = self.lifecycle.update_message(change)
            if change.queued is not None:
                await self.deliver(change.queued, msg)  # queued by the move itself
            else:
                await self.publish(msg)

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


