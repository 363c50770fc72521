"""The engine: what the bot *does*, over the store, the playbooks and the runner.

Every front end (the CLI and Slack through ``bot.adapters.commands``, the web
intake, the scheduler, drills) calls these use cases and nothing else; none
talks to the store or the runner behind their back. No Slack, web framework or
driver is imported here: the runner arrives with its drivers injected, the
notifier with its channels.

``Engine`` = ``AlertCases`` (alerts in, the outbox) + ``StepCases`` (plans and
runs) + the incident moves below (acknowledge, resolve, cancel, note, assign,
reminders), all over ``EngineBase``.
"""

from __future__ import annotations

from datetime import timedelta

from bot.base.errors import InputError
from bot.core.alert_cases import UNCLASSIFIED, AlertCases, Ingested
from bot.core.guards import fmt_span
from bot.core.lifecycle import ENGINE_ACTOR
from bot.core.messages import Button, Message
from bot.core.step_cases import StepCases
from bot.store import Incident

__all__ = ["UNCLASSIFIED", "Engine", "Ingested"]

MAX_NOTE = 4000  # a note is a timeline line, not a document


class Engine(AlertCases, StepCases):
    # --- lifecycle ------------------------------------------------------------

    async def acknowledge(self, incident_id: str, actor: str) -> Incident:
        inc = self.store.incident(incident_id)
        if inc.status in ("mitigating", "mitigated"):
            # Someone took it after the bot already acted: record who, keep the status.
            text = f"acknowledged by {actor} (status stays {inc.status})"
            msg = self._timeline(inc, f"{incident_id} acknowledged", text)
            with self.store.transaction():  # the event and its message commit together
                self.store.add_event(incident_id, "acknowledged", text, actor=actor)
                item = self.queue_message(msg)
            await self.deliver(item, msg)
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
        msg = self._timeline(inc, f"{incident_id} note by {actor}", text)
        with self.store.transaction():
            self.store.add_event(incident_id, "note", text, actor=actor)
            item = self.queue_message(msg)
        await self.deliver(item, msg)
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
        text = f"{commander} is the incident commander (assigned by {actor})"
        with self.store.transaction():
            inc = self.store.set_commander(incident_id, commander, actor=actor)
            msg = self._timeline(inc, f"{incident_id} commander: {commander}", text)
            item = self.queue_message(msg)
        await self.deliver(item, msg)
        return inc

    async def remind_unacknowledged(self, every: timedelta) -> list[Message]:
        """Post a ``reminder`` for each incident still ``open`` ``every`` after it opened
        or after its last reminder (kept on the timeline, so restarts do not spam)."""
        now, sent = self.clock(), []
        for inc in (i for i in self.store.open_incidents() if i.status == "open"):
            reminders = [e.at for e in self.store.timeline(inc.id) if e.kind == "reminder"]
            last = max(reminders, default=inc.created_at)
            if now - last < every:
                continue
            age = fmt_span(now - inc.created_at)
            self.store.add_event(inc.id, "reminder", f"reminder: unacknowledged for {age}",
                                 actor=ENGINE_ACTOR)
            msg = reminder_message(inc, age)
            await self.publish(msg)
            sent.append(msg)
        return sent

    async def _move(self, incident_id: str, wanted: str, actor: str, reason: str = "") -> Incident:
        change = self.lifecycle.move(incident_id, wanted, actor=actor, reason=reason)
        await self.publish_changes([change])
        return change.incident


def reminder_message(inc: Incident, age: str) -> Message:
    text = f"{inc.id} {inc.title} has been open for {age} and nobody acknowledged it"
    return Message("reminder", inc.id, f"{inc.id} still unacknowledged", text,
                   severity=inc.severity, buttons=(Button("ack", "Acknowledge", inc.id,
                                                          "primary"),),
                   is_drill=inc.is_drill)
