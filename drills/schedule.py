"""The monthly drill: an APScheduler cron job, announced beforehand, rotating the classes.

By default the drill runs on the first Tuesday of every month at 10:00 in
``LLM_INCIDENT_DRILL_TZ`` (default UTC); ``LLM_INCIDENT_DRILL_CRON`` (five crontab
fields, e.g. ``0 14 * * wed``) replaces that. Each drill is announced by a ``drill``
message through the notifier 24 hours and 1 hour before (``ANNOUNCE_BEFORE``), and
every drill message and incident is marked ``is_drill``: notifiers show DRILL and
never page a real escalation (a drills channel can take them: ``LLM_INCIDENT_DRILL_CHANNEL``).

The class drilled is the one drilled longest ago (never drilled first), so every
class gets its turn. Scheduled drills wait for people (no scripted responder).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from bot.errors import InputError
from bot.messages import Message
from bot.notifier import Notifier, publish_safely

log = logging.getLogger(__name__)

DEFAULT_CRON = {"day": "1st tue", "hour": 10, "minute": 0}
ANNOUNCE_BEFORE = (timedelta(hours=24), timedelta(hours=1))
JOB_ID = "drill:monthly"


def drill_trigger(cron: str | None = None, tz: str = "UTC") -> CronTrigger:
    """The drill's trigger: the first Tuesday at 10:00, or ``cron`` (crontab syntax)."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(f"LLM_INCIDENT_DRILL_TZ: unknown time zone {tz!r}",
                         hint="an IANA name, e.g. Europe/Berlin or UTC") from None
    if not cron:
        return CronTrigger(timezone=zone, **DEFAULT_CRON)
    try:
        return CronTrigger.from_crontab(_crontab_weekdays(cron), timezone=zone)
    except ValueError as exc:
        raise InputError(f"LLM_INCIDENT_DRILL_CRON: {cron!r} is not a crontab line: {exc}",
                         hint="five fields: minute hour day month weekday, e.g. '0 10 1-7 * tue'"
                         ) from None


_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _crontab_weekdays(line: str) -> str:
    """Spell numeric weekdays out: crontab counts 0 (and 7) as Sunday, while APScheduler 3's
    ``from_crontab`` passes numbers through with 0 as Monday, so '2' would mean Wednesday."""
    fields = line.split()
    if len(fields) == 5:
        fields[4] = re.sub(r"(?<![/\d])([0-7])(?!\d)",
                           lambda m: _CRON_DAYS[int(m.group(1))], fields[4])
    return " ".join(fields)


def next_drill(trigger: CronTrigger, now: datetime) -> datetime | None:
    return trigger.get_next_fire_time(None, now)


def pick_class(classes: Sequence[str], last_drilled: dict[str, datetime]) -> str:
    """The class drilled longest ago; never-drilled classes first, in the given order."""
    if not classes:
        raise InputError("no drill scenarios to choose from")
    never = [c for c in classes if c not in last_drilled]
    if never:
        return never[0]
    return min(classes, key=lambda c: last_drilled[c])


def announcement(when: datetime, klass: str, lead: timedelta) -> Message:
    hours = lead.total_seconds() / 3600
    ahead = f"{hours:g} hour{'s' if hours != 1 else ''}"
    return Message(
        "drill", None, f"Drill in {ahead}: {klass.replace('_', ' ')}",
        f"A {klass.replace('_', ' ')} drill starts at {when:%Y-%m-%d %H:%M %Z} on the sandbox. "
        "Its alert and incident are marked DRILL and page nobody; respond as you would for "
        "real (ack, run the step) and the drill is scored.",
        is_drill=True,
    )


def attach_drill_schedule(
    scheduler: Any,
    *,
    run_drill: Callable[[str], Awaitable[Any]],
    choose_class: Callable[[], str],
    notifier: Notifier | None,
    cron: str | None = None,
    tz: str = "UTC",
    announce_before: Sequence[timedelta] = ANNOUNCE_BEFORE,
    now: Callable[[], datetime] | None = None,
) -> CronTrigger:
    """Add the monthly drill and its announcements to ``scheduler``.

    ``scheduler`` is an APScheduler scheduler, or ``bot.scheduler.Scheduler`` (its
    APScheduler is used). ``run_drill(class)`` runs one drill (e.g. ``DrillService.run``);
    ``choose_class()`` names the class (e.g. via ``pick_class``). Returns the trigger.
    """
    aps = getattr(scheduler, "_aps", scheduler)
    trigger = drill_trigger(cron, tz)

    async def drill_job() -> None:
        try:
            klass = choose_class()
            await run_drill(klass)
        except asyncio.CancelledError:
            # `serve` stopping (SIGTERM) mid-drill: one line, no traceback. The drill's
            # own rollback ran as the task unwound; a new start recovers what is left.
            log.warning("the scheduled drill was stopped by shutdown; the next start "
                        "rolls back anything it left")
            return  # the job's own top level: ending here keeps a traceback out of the log
        except Exception:  # a failed drill must not take the scheduler down
            log.exception("the scheduled drill failed")
        _schedule_announcements()

    async def announce(when: datetime, lead: timedelta) -> None:
        try:
            await publish_safely(notifier, announcement(when, choose_class(), lead))
        except Exception:
            log.exception("announcing the drill failed")

    def _schedule_announcements() -> None:
        current = (now or (lambda: datetime.now(trigger.timezone)))()
        when = next_drill(trigger, current)
        if when is None:
            return
        log.info("next drill: %s", when.isoformat())
        for lead in announce_before:
            at = when - lead
            if at > current:
                aps.add_job(announce, "date", run_date=at, args=(when, lead),
                            id=f"{JOB_ID}:announce:{int(lead.total_seconds())}",
                            replace_existing=True)

    aps.add_job(drill_job, trigger, id=JOB_ID, replace_existing=True)
    _schedule_announcements()
    return trigger
