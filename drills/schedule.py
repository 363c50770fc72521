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

from bot.base.errors import InputError
from bot.core.messages import Message
from bot.core.notifier import Notifier, publish_safely

log = logging.getLogger(__name__)

DEFAULT_CRON = {"day": "1st tue", "hour": 10, "minute": 0}
ANNOUNCE_BEFORE = (timedelta(hours=24), timedelta(hours=1))
# A firing missed while no service ran is caught up at start within this window.
MISSED_GRACE = timedelta(hours=6)
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
    claim: Callable[[datetime, bool], str | None] | None = None,
    is_claimed: Callable[[datetime], bool] | None = None,
    since: datetime | None = None,
    grace: timedelta = MISSED_GRACE,
) -> CronTrigger:
    """Add the monthly drill and its announcements to ``scheduler``.

    ``scheduler`` is an APScheduler scheduler, or ``bot.adapters.scheduler.Scheduler`` (its
    APScheduler is used). ``run_drill(class)`` runs one drill (e.g. ``DrillService.run``);
    ``choose_class()`` names the class (e.g. via ``pick_class``). Returns the trigger.

    ``claim(fire_time, missed)`` (over ``DrillStore.claim_firing``) makes a firing run
    once however many processes share the store: None means this process won it
    (``missed``: claim it as a firing nobody ran).
    With ``is_claimed``, the newest firing before now (and after ``since``, when the
    store began) that nobody claimed was missed while no process was up: within
    ``grace`` it runs now; older, it is recorded as missed and announced.
    """
    aps = getattr(scheduler, "_aps", scheduler)
    trigger = drill_trigger(cron, tz)
    clock = now or (lambda: datetime.now(trigger.timezone))

    async def drill_job(fire_at: datetime | None = None) -> None:
        fire_at = fire_at or latest_firing(trigger, clock())
        if claim is not None and fire_at is not None:
            other = claim(fire_at, False)
            if other is not None:
                log.info("the drill of %s is %s; not running it twice", fire_at.isoformat(),
                         "recorded as missed" if other == MISSED else f"run by {other}")
                return
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
    missed = latest_firing(trigger, clock()) if is_claimed is not None else None
    if missed is not None and (since is None or missed >= since) and \
            is_claimed is not None and not is_claimed(missed):
        late = clock() - missed
        if late <= grace:
            log.warning("the drill due at %s did not run (no service was up); running it "
                        "now, %s late", missed.isoformat(), late)
            aps.add_job(drill_job, "date", run_date=clock(), args=(missed,),
                        id=f"{JOB_ID}:catch-up", replace_existing=True)
        elif claim is not None and claim_missed(claim, missed):
            log.warning("the drill due at %s was missed (no service was up, more than %s "
                        "ago): recorded as missed", missed.isoformat(), grace)
            aps.add_job(_announce_missed, "date", run_date=clock(), args=(notifier, missed),
                        id=f"{JOB_ID}:missed", replace_existing=True)
    return trigger


MISSED = "missed"


def claim_missed(claim: Callable[[datetime, bool], str | None], when: datetime) -> bool:
    # The firing is claimed by the name "missed": no process runs it later.
    return claim(when, True) is None


def latest_firing(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The newest fire time at or before ``now``: searched back over growing windows,
    so a per-minute schedule and a monthly one both take a few steps."""
    for back in (timedelta(hours=2), timedelta(days=2), timedelta(days=40)):
        latest, at = None, now - back
        while (nxt := trigger.get_next_fire_time(latest, at)) is not None and nxt <= now:
            latest, at = nxt, nxt + timedelta(seconds=1)
        if latest is not None:
            return latest
    return None


async def _announce_missed(notifier: Notifier | None, when: datetime) -> None:
    text = (f"The drill scheduled for {when:%Y-%m-%d %H:%M %Z} did not run: no llm-incident "
            "service was up. It is recorded as missed; the next one runs on schedule.")
    await publish_safely(notifier, Message("drill", None, "[DRILL] missed", text,
                                           is_drill=True))
