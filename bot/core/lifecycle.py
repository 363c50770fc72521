"""The incident lifecycle: which status changes are possible, and the automatic rules.

::

    open -> acknowledged -> mitigating -> mitigated -> resolved
      \\________________\\_____________\\____________\\-> cancelled (from any open state)

Forward skips are allowed (an automatic step applied on an unacknowledged
incident moves it straight to ``mitigating``; a human may resolve at once).
Backward moves and anything out of ``resolved`` / ``cancelled`` are refused with
an InputError naming the current and the wanted status.

Automatic rules, all derived from the store so they can be re-run at any time
(the engine after an apply, the scheduler on every tick) without repeating:

- a run of the incident applied (mitigation active)  -> ``mitigating``;
- its verification passed                            -> ``mitigated``;
- every alert resolved after a mitigation was applied -> event ``recovered``,
  ``mitigated``, then ``resolved`` if ``auto_resolve_on_recovery``;
- every alert resolved with no mitigation             -> event ``recovered``,
  then ``resolved`` if ``auto_resolve_without_mitigation``.

Every status change is one ``status`` timeline event (actor, time, reason) and
one ``update`` Message, queued in the outbox in the change's own transaction
(``Lifecycle.queue``, set by the engine), so whichever process moved it (the CLI
too) the message reaches the channel, sent by a process with a notifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from bot.base.errors import InputError, NotFound
from bot.core.messages import Button, Field, Message, Section
from bot.store import CLOSED_STATUSES, Incident, Store

ENGINE_ACTOR = "llm-incident"

ORDER = ("open", "acknowledged", "mitigating", "mitigated", "resolved")


@dataclass(frozen=True)
class LifecyclePolicy:
    auto_resolve_on_recovery: bool = True
    auto_resolve_without_mitigation: bool = True


@dataclass(frozen=True)
class Change:
    """One status change that happened (already stored)."""

    incident: Incident  # after the change
    before: str
    actor: str
    reason: str = ""
    queued: int | None = None  # its update message's outbox item, when one was queued


def check_transition(incident: Incident, wanted: str) -> None:
    """Raise InputError unless ``incident`` may move to ``wanted``."""
    current = incident.status
    if current in CLOSED_STATUSES:
        raise InputError(
            f"{incident.id} is {current}; it cannot become {wanted}",
            hint="a closed incident stays closed; a new firing opens a new incident",
        )
    if wanted == "cancelled":
        return
    if wanted not in ORDER:
        raise InputError(f"{incident.id}: unknown status '{wanted}'",
                         hint=f"one of: {', '.join((*ORDER, 'cancelled'))}")
    if ORDER.index(wanted) <= ORDER.index(current):
        what = "already" if wanted == current else "past that:"
        raise InputError(
            f"{incident.id} is {what} {current}; it cannot move to {wanted}",
            hint=f"the order is {' -> '.join(ORDER)}; `cancel` closes it at any point",
        )


class Lifecycle:
    """Status changes and the automatic rules over one store."""

    def __init__(self, store: Store, policy: LifecyclePolicy | None = None) -> None:
        self.store = store
        self.policy = policy or LifecyclePolicy()
        # Writes a message into the outbox inside the current transaction; its item id.
        self.queue: Callable[[Message], int | None] | None = None

    def move(self, incident_id: str, wanted: str, *, actor: str, reason: str = "") -> Change:
        """Check and store one status change, atomically (read, check and write together),
        with its update message queued in the same transaction."""
        with self.store.transaction():
            before = self.store.incident(incident_id)
            check_transition(before, wanted)
            after = self.store.set_incident_status(incident_id, wanted, actor=actor,
                                                   reason=reason)
            change = Change(after, before.status, actor, reason)
            if self.queue is not None:
                change = replace(change, queued=self.queue(self.update_message(change)))
        return change

    def refresh(self, msg: Message) -> Message:
        """``msg`` as it should read now: an update of an incident whose status moved on
        since it was queued (a crash held it, another process moved the incident) is
        rendered again from the store, so the live message never shows an old state."""
        if msg.kind != "update" or not msg.incident_id:
            return msg
        try:
            inc = self.store.incident(msg.incident_id)
        except NotFound:
            return msg
        if msg.title == f"{inc.id} {inc.status}":  # the title update messages carry
            return msg
        return self.status_message(inc)

    def status_message(self, inc: Incident) -> Message:
        """The update message of the incident's latest status change, from the timeline."""
        last = next((e for e in reversed(self.store.timeline(inc.id)) if e.kind == "status"),
                    None)
        if last is None:
            return self.alerts_message(inc.id)
        data = last.data or {}
        return self.update_message(Change(inc, str(data.get("from", inc.status)), last.actor,
                                          str(data.get("reason", ""))))

    def sync_runs(self, incident_id: str) -> list[Change]:
        """Apply the run rules: applied -> mitigating, verification passed -> mitigated."""
        inc = self.store.incident(incident_id)
        if not inc.is_open:
            return []
        applied, passed = [], []
        for run in self.store.runs(incident_id=incident_id):
            mit = self.store.mitigation(run.id)
            if mit is None:
                continue
            if mit.active:
                applied.append(run.id)
            if mit.verify_state == "passed":
                passed.append(run.id)
        changes: list[Change] = []
        if inc.status in ("open", "acknowledged") and (applied or passed):
            changes.append(self.move(incident_id, "mitigating", actor=ENGINE_ACTOR,
                                     reason=f"{', '.join(applied or passed)} applied"))
        if passed and self.store.incident(incident_id).status == "mitigating":
            changes.append(self.move(incident_id, "mitigated", actor=ENGINE_ACTOR,
                                     reason=f"verification of {', '.join(passed)} passed"))
        return changes

    def on_alerts_resolved(self, incident_id: str) -> list[Change]:
        """Once every alert of the incident resolved: ``recovered``, then per the policy."""
        inc = self.store.incident(incident_id)
        alerts = self.store.alerts_for(incident_id)
        if not inc.is_open or not alerts or any(a.status != "resolved" for a in alerts):
            return []
        changes = self.sync_runs(incident_id)  # an apply nobody synced yet still counts
        mitigations = [r.id for r in self.store.runs(incident_id=incident_id)
                       if self.store.mitigation(r.id) is not None]
        if mitigations:
            self.store.add_event(
                incident_id, "recovered",
                f"every alert resolved after {', '.join(mitigations)} was applied",
                actor=ENGINE_ACTOR, data={"mitigated": True, "runs": mitigations})
            if self.store.incident(incident_id).status != "mitigated":
                changes.append(self.move(incident_id, "mitigated", actor=ENGINE_ACTOR,
                                         reason="alerts recovered after the mitigation"))
            if self.policy.auto_resolve_on_recovery:
                changes.append(self.move(incident_id, "resolved", actor=ENGINE_ACTOR,
                                         reason="alerts recovered after the mitigation"))
            return changes
        self.store.add_event(incident_id, "recovered",
                             "every alert resolved without a mitigation", actor=ENGINE_ACTOR,
                             data={"mitigated": False, "runs": []})
        if self.policy.auto_resolve_without_mitigation:
            changes.append(self.move(incident_id, "resolved", actor=ENGINE_ACTOR,
                                     reason="alerts resolved without a mitigation"))
        return changes

    def update_message(self, change: Change) -> Message:
        inc = change.incident
        why = f": {change.reason}" if change.reason else ""
        text = f"{inc.id} {inc.title}: {change.before} -> {inc.status} by {change.actor}{why}"
        fields = [Field("Status", f"{change.before} -> {inc.status}"), Field("By", change.actor)]
        if change.reason:
            fields.append(Field("Why", change.reason))
        if inc.commander:
            fields.append(Field("Commander", inc.commander))
        fields += self.alert_fields(inc.id)
        sections = [Section("", fields=tuple(fields))]
        buttons: tuple[Button, ...] = ()
        if not inc.is_open:
            still = self._active_runs(inc.id)
            if still:
                sections.append(Section(
                    "\n".join(f"{run_id}: {how}" for run_id, how in still),
                    title="Mitigations still active (their TTL reverts them)"))
                buttons = tuple(Button("revert", f"Revert {r}", r, "danger") for r, _ in still)
        elif inc.status == "open":
            buttons = (Button("ack", "Acknowledge", inc.id, "primary"),)
        return Message("update", inc.id, f"{inc.id} {inc.status}", text, severity=inc.severity,
                       closes=not inc.is_open,
                       sections=tuple(sections), buttons=buttons, is_drill=inc.is_drill)

    def alert_fields(self, incident_id: str) -> list[Field]:
        """How many alerts the incident groups, when the last one was seen, and what the
        latest one says: the live message shows them, so it tells the truth."""
        alerts = self.store.alerts_for(incident_id)
        if not alerts:
            return []
        firing = sum(a.status == "firing" for a in alerts)
        last = max(alerts, key=lambda a: a.received_at)
        out = [Field("Alerts", f"{firing} firing of {len(alerts)}, last seen "
                               f"{last.received_at:%H:%M:%S} UTC")]
        latest = last.annotations.get("value") or last.annotations.get("summary")
        if latest:
            out.append(Field("Latest", f"{last.alertname or 'alert'}: {latest}"[:300]))
        return out

    def alerts_message(self, incident_id: str) -> Message:
        """The live message after more alerts joined: the same status, the new counts."""
        inc = self.store.incident(incident_id)
        fields = [Field("Status", inc.status), *self.alert_fields(inc.id)]
        if inc.commander:
            fields.append(Field("Commander", inc.commander))
        count = fields[1].value if len(fields) > 1 else ""
        buttons = (Button("ack", "Acknowledge", inc.id, "primary"),) \
            if inc.status == "open" else ()
        return Message("update", inc.id, f"{inc.id} {inc.status}",
                       f"{inc.id} {inc.title}: {inc.status}; {count}", severity=inc.severity,
                       sections=(Section("", fields=tuple(fields)),), buttons=buttons,
                       is_drill=inc.is_drill, closes=not inc.is_open)

    def _active_runs(self, incident_id: str) -> list[tuple[str, str]]:
        out = []
        for run in self.store.runs(incident_id=incident_id):
            mit = self.store.mitigation(run.id)
            if mit is not None and mit.active:
                due = f", reverts at {mit.ttl_due_at:%H:%M} UTC" if mit.ttl_due_at else ""
                out.append((run.id, f"{run.plan.summary or run.action} on {run.target}{due}"))
        return out
