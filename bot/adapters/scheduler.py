"""The scheduler: TTL reverts, verification checks, approval expiry and reminders.

The store is the truth and the scheduler only a cache of it. ``start()``
finishes what a crash left (``runner.reconcile``), does at once what fell due
while the bot was down (``runner.run_due``: overdue reverts), then builds one
date job per timer from ``runner.timers()``. ``refresh()`` re-syncs those jobs
with the store; the engine calls it after anything that may add timers, and
every poll tick calls it too, so a run applied from any path is picked up.

With a ``Leadership`` (every ``serve``), the scheduler's work is the leader's: a
follower renews its bid for the lease and leaves every other job to the leader.
A replica that becomes the leader first settles what the old one left (reconcile,
overdue timers, the outbox), so failover loses nothing.

The periodic poll (``poll_interval``) records early verification passes,
retries what is due (a revert that failed, held runs after ``resume``), expires
stale approvals, reminds about unacknowledged incidents and applies the
lifecycle's run rules. Each job catches and logs its own errors: a failing job
never stops the scheduler. Every job is a plain coroutine method, so tests call
them directly with a frozen clock instead of waiting on real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.base.errors import PlaybookError
from bot.core.engine import Engine
from bot.core.leadership import Leadership
from bot.core.messages import Button, Message, Section
from bot.core.paging import Escalations
from bot.core.release_cases import ReleaseGuard
from bot.playbook.canary_thresholds import CanaryThresholds, load_thresholds
from bot.store import Page, Run
from bot.store.outbox import OUTBOX_CHANNEL
from bot.store.releases import Release

log = logging.getLogger(__name__)

TIMER_PREFIX = "timer:"
WATCH_SECONDS = 1.0
# A follower's bid at the lease's expiry comes this much later (seconds): the clock
# offset to the database is measured to a fraction of that.
BID_MARGIN = 0.05
# What a run's change looks like before/after a job: (state, verify_state).
Snapshot = tuple[str, str | None]


def _thresholds(path: Path | None) -> CanaryThresholds:
    """The configured canary thresholds; a broken file must not stop the bot serving
    incidents: it says so loudly and judges with the shipped defaults."""
    try:
        return load_thresholds(path)
    except PlaybookError as exc:
        log.error("canary thresholds file %s does not load, judging releases with the "
                  "shipped defaults: %s", path, exc)
        return load_thresholds()


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        poll_interval: timedelta = timedelta(seconds=15),
        reminder_every: timedelta = timedelta(minutes=10),
        clock: Callable[[], datetime] | None = None,
        leadership: Leadership | None = None,
        canary_thresholds: Path | None = None,
        escalations: Escalations | None = None,
    ) -> None:
        self.engine = engine
        self.escalations = escalations  # paging; None when no pager is configured
        self.leadership = leadership
        self.store = engine.store
        self.runner = engine.runner
        self.poll_interval = poll_interval
        self.reminder_every = reminder_every
        self.clock = clock or engine.clock
        # misfire_grace_time=None: a job the loop could not start on time still runs late.
        self._aps = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._timers: dict[str, datetime] = {}
        self._takeover: asyncio.Future[None] | None = None
        self._woken: asyncio.Future[Any] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._seen_event: int | None = None
        # The release guard judges canaries on Prometheus: without one, no releases.
        self.releases = ReleaseGuard(engine, thresholds=_thresholds(canary_thresholds)) \
            if engine.runner.metrics is not None else None
        engine.add_change_listener(self.refresh)

    # --- start / stop ------------------------------------------------------------

    @property
    def leads(self) -> bool:
        """Does this process do the scheduler's work now (always, without replicas)?"""
        return self.leadership is None or self.leadership.is_leader

    async def start(self) -> None:
        if self.leadership is not None:
            # Automatic moves by this process now need the lease, read in their claim.
            self.runner.leader_id = self.leadership.holder
            self.leadership.renew()
            # On Postgres another replica's new incident wakes the leader at once
            # (NOTIFY at its commit); the watch below is the fallback.
            loop = asyncio.get_running_loop()

            def woken() -> None:
                loop.call_soon_threadsafe(self._outbox_woken)
            self._unlisten = self.store.db.listen(OUTBOX_CHANNEL, woken)
            self._aps.add_job(self.lease_round, "interval", id="lease", replace_existing=True,
                              seconds=self.leadership.renew_every)
        await self._guarded("reconcile", self._reconcile)
        await self._guarded("run_due", self.run_due)
        self._aps.add_job(self._guarded, "interval", args=("poll", self.poll),
                          seconds=self.poll_interval.total_seconds(), id="poll",
                          replace_existing=True)
        # Another process (the CLI, a second `serve`) may apply a change with a short TTL:
        # a cheap look at the newest timeline event each second picks it up at once.
        self._aps.add_job(self._guarded, "interval", args=("watch", self.watch_store),
                          seconds=WATCH_SECONDS, id="watch", replace_existing=True)
        self.refresh()
        self._aps.start()

    async def lease_round(self) -> bool:
        """Renew (or bid for) the lease; on becoming the leader, take over at once."""
        if self.leadership is None:
            return True
        was = self.leadership.is_leader
        if self.leadership.renew() and not was:
            # In its own task: settling may wait on the target (a hung old leader can
            # hold the policy file's lock), and the renewals must go on meanwhile or
            # this replica loses the lease it just took.
            self._takeover = asyncio.ensure_future(self._take_over())
        elif (bid := self.leadership.bid_at) is not None:
            # A follower bids again the moment the leader's lease runs out, not up to a
            # round later: failover within the lease, not the lease and a quarter.
            wait = bid - time.monotonic() + BID_MARGIN
            if wait < self.leadership.renew_every:
                self._aps.add_job(self.lease_round, "date", id="lease-bid",
                                  run_date=datetime.now(UTC) + timedelta(seconds=wait),
                                  replace_existing=True)
        return self.leadership.is_leader

    def _outbox_woken(self) -> None:
        if self.leads and self._aps.running:
            self._woken = asyncio.ensure_future(self._guarded("outbox", self.engine.drain_outbox))

    async def _take_over(self) -> None:
        log.warning("taking over as the leader: settling what the last one left")
        await self._guarded("reconcile", self._reconcile)
        await self._guarded("outbox", self.engine.drain_outbox)
        await self._guarded("run_due", self.run_due)
        self.refresh()

    async def shutdown(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        if self.leadership is not None:
            self.leadership.release()
        if not self._aps.running:
            return
        self._aps.shutdown(wait=False)
        # AsyncIOScheduler stops on the loop's next turn; wait for it, with a deadline.
        deadline = asyncio.get_running_loop().time() + 5
        while self._aps.running and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    @property
    def running(self) -> bool:
        return self._aps.running

    def jobs(self) -> dict[str, datetime | None]:
        """Scheduled job ids and their next run times (for `status` and tests)."""
        # Before start() a job has no next_run_time yet; a date job still knows its date.
        return {j.id: getattr(j, "next_run_time", None) or getattr(j.trigger, "run_date", None)
                for j in self._aps.get_jobs()}

    def refresh(self) -> None:
        """Make the date jobs match ``runner.timers()``: add new ones, drop finished ones.

        Only future timers get a job. One already due is the poll tick's (``run_due``):
        a revert that keeps failing must be retried at the poll pace, not re-fired
        at once in a loop.
        """
        now = self.clock()
        wanted = {f"{TIMER_PREFIX}{kind}:{run_id}": due
                  for run_id, kind, due in self.runner.timers() if due > now}
        for job_id in [j for j in self._timers if j not in wanted]:
            if self._aps.get_job(job_id) is not None:
                self._aps.remove_job(job_id)
            del self._timers[job_id]
        for job_id, due in wanted.items():
            if self._timers.get(job_id) == due and self._aps.get_job(job_id) is not None:
                continue
            # ``due`` is on the store's clock (the database's); the job waits on ours.
            self._aps.add_job(self._guarded, "date", run_date=self.store.local_time(due),
                              id=job_id, args=(job_id, self.run_due), replace_existing=True)
            self._timers[job_id] = due

    # --- jobs ----------------------------------------------------------------------

    async def _guarded(self, name: str, job: Callable[[], Awaitable[Any]]) -> Any:
        if not self.leads:
            return None  # a follower: the leader does this (its timers are the same)
        try:
            return await job()
        except Exception:
            log.exception("scheduler job %s failed; it runs again on the next tick", name)
            return None

    async def _reconcile(self) -> list[Run]:
        runs = await self.runner.reconcile()
        for run in runs:
            await self._report(run, (run.prior_state or "applying", None))
        return runs

    async def run_due(self) -> list[Run]:
        """TTL reverts, verification deadlines and resumed held runs that are due now."""
        before = self._snapshots()
        done = await self.runner.run_due()
        for run in done:
            await self._report(run, before.get(run.id))
        if done:
            await self.engine.sync_lifecycle()
        self.refresh()
        return done

    async def check_verifications(self) -> list[Run]:
        """Query every pending verification now, so an early pass is recorded early."""
        changed = []
        for m in self.store.active_mitigations():
            if m.verify_state != "pending":
                continue
            before = self._snapshot(m.run_id)
            try:
                run = await self.runner.check_verification(m.run_id)
            except Exception:
                log.exception("checking the verification of %s failed", m.run_id)
                continue
            if self._snapshot(run.id) != before:
                changed.append(run)
                await self._report(run, before)
        return changed

    async def expire_approvals(self) -> list[Run]:
        """Runs whose approval window passed become ``expired`` (approve again to use them);
        the rule is the runner's (``expire_stale_approvals``)."""
        expired = await self.runner.expire_stale_approvals()
        for run in expired:
            await self._report(run, (run.prior_state or "awaiting_approval", None))
        return expired

    async def send_reminders(self) -> list[Message]:
        """A ``reminder`` for each incident still ``open`` for ``reminder_every`` since it
        opened or since its last reminder (the engine's ``remind_unacknowledged``)."""
        return await self.engine.remind_unacknowledged(self.reminder_every)

    async def check_releases(self) -> list[Release]:
        """Judge every release whose step has baked: roll back, hold or promote."""
        return await self.releases.check_due() if self.releases is not None else []

    async def page(self) -> list[Page]:
        """The escalation rules: page, acknowledge and resolve pages, retry what failed."""
        return await self.escalations.round() if self.escalations is not None else []

    async def watch_store(self) -> bool:
        """Refresh the timers when anything was written since the last look (any process:
        every change adds a timeline event). True when it refreshed."""
        newest = self.store.newest_event_id()
        if newest == self._seen_event:
            return False
        self._seen_event = newest
        self.refresh()
        if self.leadership is not None:
            # Alerts another replica took wait in the outbox for the leader.
            await self.engine.drain_outbox()
        if self.escalations is not None and self.leads:
            # An acknowledge or resolve (any process) reaches the page within a second.
            await self.page()
        return True

    async def tick(self) -> list[Run]:
        """What `serve`'s timers and poll do, once (the `tick` verb, for cron): due reverts
        and verification deadlines, early verification passes, expired approvals, and
        the incident status rules. Reminders stay with `serve` (they need a channel).
        First, what a dead process left applying or reverting is settled, and the
        outbox's pending work (announcements, automatic steps) is done."""
        done = await self._reconcile()
        await self.engine.drain_outbox()
        done += await self.run_due()
        done += await self.check_verifications()
        done += await self.expire_approvals()
        await self.check_releases()
        await self.engine.sync_lifecycle()
        await self.page()
        return done

    async def poll(self) -> None:
        """The periodic tick: each part guarded on its own, then the timers re-synced."""
        # A CLI that died mid-apply beside a running `serve` is settled here, not only
        # at the next start.
        await self._guarded("reconcile", self._reconcile)
        # Outbox work a failure released, or a dead process left, is retried here.
        await self._guarded("outbox", self.engine.drain_outbox)
        await self._guarded("check_verifications", self.check_verifications)
        await self._guarded("run_due", self.run_due)
        await self._guarded("expire_approvals", self.expire_approvals)
        await self._guarded("releases", self.check_releases)
        await self._guarded("send_reminders", self.send_reminders)
        await self._guarded("sync_lifecycle", self.engine.sync_lifecycle)
        await self._guarded("paging", self.page)
        self.refresh()

    # --- reporting -------------------------------------------------------------------

    def _snapshot(self, run_id: str) -> Snapshot:
        mit = self.store.mitigation(run_id)
        return self.store.run(run_id).state, mit.verify_state if mit else None

    def _snapshots(self) -> dict[str, Snapshot]:
        out = {}
        for m in self.store.active_mitigations():
            out[m.run_id] = self._snapshot(m.run_id)
        for run in self.store.runs(state="planned"):
            out[run.id] = (run.state, None)
        return out

    async def _report(self, run: Run, before: Snapshot | None) -> None:
        after = self._snapshot(run.id)
        if before == after:
            return
        await self.engine.publish(self.run_message(run))

    def run_message(self, run: Run) -> Message:
        """A ``result`` Message for a run a timer changed: the latest run event says how."""
        events = self.store.run_events(run.id)
        last = events[-1].text if events else run.state
        mit = self.store.mitigation(run.id)
        buttons: tuple[Button, ...] = ()
        if run.state == "expired":
            buttons = (Button("approve", f"Approve {run.id}", run.id, "primary"),
                       Button("deny", f"Deny {run.id}", run.id))
        elif mit is not None and mit.active:
            buttons = (Button("revert", f"Revert {run.id}", run.id, "danger"),)
        inc = self.store.incident(run.incident_id) if run.incident_id else None
        where = f"{inc.id} " if inc else ""
        title = f"{where}{run.id} {run.state}"
        if mit is not None and mit.verify_state == "failed" and run.state == "applied":
            title = f"{where}{run.id} verification failed: escalated"
        return Message("result", run.incident_id, title, f"{title}: {last}",
                       severity=inc.severity if inc else None,
                       sections=(Section(run.diff, title=f"{run.action} on {run.target}"),),
                       buttons=buttons, is_drill=inc.is_drill if inc else False)
