"""Crash recovery: finish or undo, exactly once, a run a dead process left claimed.

A run in ``applying`` or ``reverting`` is held by the process that claimed it
(``bot.base.claims``). While that process lives nobody touches the run; once it
is gone, the first process to ``take_over`` the claim (a compare-and-set in the
store) settles it against the target:

- ``applying``: the target holds every planned value -> ``applied`` (its TTL and
  verification start from the claim time); otherwise what this run changed is
  put back -> ``failed``.
- ``reverting``: the revert is finished (revert is idempotent) -> ``reverted``;
  if the target still holds the change after that -> back to where it was
  (``applied`` / ``verified``), with ``revert_failed`` on the timeline.

``serve`` runs this at start and on every poll, every state-changing CLI verb
before it acts, ``tick`` each time, and a request that finds the run claimed by
a dead holder while waiting for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from actions.base import Fenceable, ServingDriver
from actions.catalog import get_action
from actions.fencing import fenced
from bot.base.claims import this_process
from bot.base.errors import ActionFailed, Conflict, IncidentBotError
from bot.base.run_states import RunState
from bot.core.leadership import authority
from bot.core.runner_timers import BOT_ACTOR
from bot.store import Run

if TYPE_CHECKING:
    from bot.core.runner import Runner

log = logging.getLogger(__name__)



async def reconcile(runner: Runner) -> list[Run]:
    out = []
    for run in runner.store.claimed_runs():
        if runner.holder_alive(run):
            continue  # a live process is still at it: never second-guess it
        settled = await reconcile_run(runner, run)
        if settled is not None:
            out.append(settled)
    return out


async def reconcile_run(runner: Runner, run: Run) -> Run | None:
    """Settle one crash-left run; None when another process took it over first."""
    store, dead = runner.store, run.claimed_by
    if not store.take_over(run.id, dead_owner=dead, owner=this_process()):
        return None
    run = store.run(run.id)
    # Raise the target's fence first: a replica that only hung (not died) and wakes
    # up to finish this run must find its write refused, not race this one.
    with fenced(authority(store, None, automatic=False, run_id=run.id, op="fence")):
        try:
            driver = runner._run_driver(run)
            if isinstance(driver, Fenceable):
                await driver.raise_fence()
        except IncidentBotError as exc:
            store.take_over(run.id, dead_owner=this_process(), owner=dead or "")
            store.add_event(run.incident_id, "reconcile_failed",
                            f"{run.id} left in {run.state}: cannot fence the target ({exc})",
                            actor=BOT_ACTOR, run_id=run.id)
            return None
    op = "revert" if run.state == RunState.REVERTING else "apply"
    with fenced(authority(store, None, automatic=False, run_id=run.id, op=op)):
        try:
            return await _settle(runner, run, driver, dead)
        except Conflict as exc:
            # Only a holder that woke up could have moved it (and its writes after our
            # fence were refused): the run is settled either way.
            log.warning("reconcile of %s: %s", run.id, exc)
            return None


async def _settle(runner: Runner, run: Run, driver: ServingDriver,
                  dead: str | None) -> Run | None:
    store = runner.store
    try:
        now = await driver.read()
    except IncidentBotError as exc:
        # Leave it claimed by nobody alive: the next pass tries again.
        store.take_over(run.id, dead_owner=this_process(), owner=dead or "")
        store.add_event(run.incident_id, "reconcile_failed",
                        f"{run.id} left in {run.state}: cannot read the target ({exc})",
                        actor=BOT_ACTOR, run_id=run.id)
        return None
    act = get_action(run.action)
    if run.state == RunState.REVERTING:
        try:
            return await runner.finish_revert(
                run, act, driver, actor=BOT_ACTOR, kind="reconciled",
                reason="finished after its process died while reverting")
        except ActionFailed:
            return store.run(run.id)
    missing = [c for c in run.plan.changes if now.get(c.route, c.field) != c.after]
    if not missing:
        return runner._mark_applied(
            run, actor=BOT_ACTOR, applied_at=run.claimed_at or run.updated_at,
            kind="reconciled", text="found applying after its process died; the target "
            "holds the planned values: marked applied")
    restored, problem = await runner._put_back(run, act, driver, routes=None)
    back = f"put back {', '.join(restored)}" if restored else "nothing to put back"
    where = ", ".join(c.path for c in missing)
    text = (f"found applying after its process died; the target does not hold the plan "
            f"({where}); {problem or back}: marked failed")
    return store.transition(run.id, "failed", text, actor=BOT_ACTOR, kind="reconciled",
                            error=text, expect=("applying",))
