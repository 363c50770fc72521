"""What happens after an alert is committed: announce, automatic steps, recovery.

``Engine.ingest`` records each alert and, in the same transaction, one outbox
item per thing left to do. ``drain`` does them: an item is claimed (a
compare-and-set naming this process), done, and marked done. So the webhook can
answer as soon as the alerts are committed; the work follows at once, and a
crash in between is picked up once by the next drain (``serve`` at start and on
every poll, ``tick``).

An ``opened`` item has two stages: the suggestion is posted (stage
``announced``), then the automatic steps run. A step that already has a run for
the incident is never planned again, so a retried item acts at most once.
A failure is logged, put on the incident's timeline (``background_failed``,
counted in /metrics) and retried, up to ``MAX_ATTEMPTS``.

A ``message`` item is what a change said (a status update, a note, a step's
result), queued in that change's transaction by whichever process made it. Only
a process with a notifier takes one (the CLI leaves them to ``serve``); an
update is rendered again from the store when it is sent, so a message held by a
crash or queued before another process moved the incident shows the incident as
it is at send time, not as it was at queue time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from bot.core.leadership import NotLeader
from bot.core.lifecycle import ENGINE_ACTOR, Change
from bot.core.messages import message_from_json
from bot.core.notifier import publish_safely
from bot.core.suggestions import build_suggestion, release_on
from bot.store.outbox import MAX_ATTEMPTS, OutboxItem

if TYPE_CHECKING:
    from bot.core.alert_cases import AlertCases as Engine

log = logging.getLogger(__name__)

KEEP_DONE = timedelta(days=7)
PRUNE_EVERY = timedelta(hours=1)
# How often ``serve`` looks whether another process (the CLI) queued something: one
# primary-key lookup, so a CLI's `resolve` shows in the channel within a second. On
# Postgres the commit's NOTIFY wakes the leader sooner; this is the fallback too.
WATCH_EVERY = 0.5


async def drain(engine: Engine) -> int:
    """Do every pending item this process can claim; returns how many were done."""
    done = 0
    leader = engine.runner.leader_id
    if leader is not None and engine.store.holds_lease(leader) is None:
        return 0  # a replica that does not lead leaves announcements and steps to the leader
    # One transaction claims the whole pending batch (not one per item): in a storm of
    # new incidents the commits, not the work, were the cost.
    pending = engine.store.pending_outbox(deliveries=engine.notifier is not None)
    batch = engine.store.claim_outbox_batch(pending)
    newest = _newest_updates(batch)
    for claimed in batch:
        try:
            await _do(engine, claimed, newest)
        except NotLeader as exc:
            # Lost the lease half way: the item goes back, untried, for the new leader.
            log.warning("outbox item %s handed to the new leader: %s", claimed.id, exc)
            engine.store.outbox_release(claimed.id, str(exc), attempt=False)
            continue
        except Exception as exc:  # supervised: logged, on the timeline, retried
            why = f"{type(exc).__name__}: {exc}"
            log.exception("outbox item %s (%s of %s) failed", claimed.id, claimed.kind,
                          claimed.incident_id)
            engine.store.add_event(
                claimed.incident_id, "background_failed",
                f"{_what(claimed)} failed (attempt {claimed.attempts} of {MAX_ATTEMPTS}): {why}",
                actor=ENGINE_ACTOR, data={"outbox": claimed.id, "kind": claimed.kind})
            if claimed.attempts >= MAX_ATTEMPTS:
                engine.store.outbox_done(claimed.id, error=why)
            else:
                engine.store.outbox_release(claimed.id, why)
            continue
        engine.store.outbox_done(claimed.id)
        done += 1
    if done:
        engine._changed()
        now = engine.clock()
        if engine.outbox_pruned_at is None or now - engine.outbox_pruned_at > PRUNE_EVERY:
            engine.outbox_pruned_at = now
            engine.store.prune_outbox(now - KEEP_DONE)  # bounded: done items go after a week
    return done


async def watch(engine: Engine, every: float = WATCH_EVERY) -> None:
    """Drain whenever the outbox's newest id moved since the last look (until cancelled)."""
    seen: int | None = None
    while True:
        try:
            mark = engine.store.outbox_mark()
            if mark != seen:
                seen = mark
                await engine.drain_outbox()
        except Exception:  # supervised: the next look tries again
            log.exception("looking for outbox work queued by another process failed")
        await asyncio.sleep(every)


def _what(item: OutboxItem) -> str:
    return {"opened": "announcing the incident and its automatic steps",
            "reopened": "reporting the reopened incident",
            "resolved": "applying the recovery rules",
            "joined": "updating the live message with the new alerts",
            "message": "sending a message"}.get(item.kind, item.kind)


def _newest_updates(items: list[OutboxItem]) -> dict[str, int]:
    """Per incident, the last queued update message among ``items``."""
    out: dict[str, int] = {}
    for item in items:
        if item.kind == "message" and _message_kind(item.payload) == "update":
            out[item.incident_id] = item.id
    return out


def _message_kind(payload: str | None) -> str | None:
    """The queued message's kind, read from its JSON (not found by a substring, which
    would depend on how the JSON was spaced); None for a payload that is not one."""
    try:
        kind = json.loads(payload or "").get("kind")
    except (ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


async def _do(engine: Engine, item: OutboxItem, newest: dict[str, int]) -> None:
    store = engine.store
    if item.kind == "message":
        queued = message_from_json(item.payload or "")
        msg = engine.lifecycle.refresh(queued)
        if msg != queued and newest.get(item.incident_id, item.id) > item.id:
            return  # out of date, and a later update of the same live message follows
        if not await publish_safely(engine.notifier, msg):
            raise RuntimeError(f"the notifier did not take the {msg.kind} message "
                               f"{msg.title!r}")
        return
    inc = store.incident(item.incident_id)
    if item.kind == "opened":
        alert = engine.latest_alert(inc.id)
        matches = engine.matcher.match(alert)
        suggested = engine.suggested_playbook(inc.id)
        # The playbook suggested at ingest comes first, even if a reload re-ranked them.
        matches.sort(key=lambda m: m.playbook.id != suggested)
        if item.stage == "new":
            msg = await build_suggestion(inc, alert, matches, diagnose=engine.diagnose,
                                         metrics=engine.runner.metrics,
                                         timeout=engine.diagnose_timeout,
                                         release=release_on(engine, alert))
            await engine.publish(msg)
        top = matches[0].playbook if matches else None
        playbook = top if top is not None and top.id == suggested else None
        if playbook is not None and any(s.guard.auto for s in playbook.steps):
            if item.stage == "new":
                store.outbox_stage(item.id, "announced")  # a retry does not announce again
            if store.incident(inc.id).is_open:
                await engine.run_auto_steps(store.incident(inc.id), playbook)
    elif item.kind == "reopened":
        # One update of the live message, no new suggestion and no automatic steps:
        # a flapping alert must not open (or act) a hundred times.
        alert = engine.latest_alert(inc.id)
        why = f"{alert.alertname or 'its alert'} fired again soon after resolving"
        await engine.publish(engine.lifecycle.update_message(
            Change(inc, "resolved", alert.source, f"{why} (flapping)")))
    elif item.kind == "joined":
        # More alerts grouped into the incident: its live message shows the new count.
        await engine.publish(engine.lifecycle.alerts_message(inc.id))
    elif item.kind == "resolved":
        await engine.publish_changes(engine.lifecycle.on_alerts_resolved(inc.id))
