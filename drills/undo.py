"""Undoing a drill: its fault, its release, the bot's mitigations, its policy snapshot.

``undo_injection`` is the drill runner's rollback phase, and what the next start
runs for a drill whose process died half way (``recover_interrupted``, called by
``drill run``, the scheduler and ``serve`` at start). Everything it undoes was
recorded in the store before it was done, so a crash at any point is undone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

from bot.base.errors import DriverError, IncidentBotError
from bot.core.engine import Engine
from bot.core.release_cases import ReleaseGuard
from drills.store import Drill, DrillStore

DRILL_ACTOR = "drill"


async def undo_injection(engine: Engine, client: httpx.AsyncClient, d: Drill, *,
                         actor: str) -> list[str]:
    """Remove the drill's fault, revert the bot's mitigations, restore the policy snapshot."""
    problems: list[str] = []
    inj = d.injection
    for release in engine.store.releases(active_only=True):
        if release.target == f"drill:{d.id}":  # found even if its id was never recorded
            try:
                await ReleaseGuard(engine).abort(release.id, actor=actor, reason=f"drill {d.id} "
                                                 "over; its sandbox policy is restored")
            except IncidentBotError as exc:
                problems.append(f"closing {release.id}: {exc}")
    base = str(inj.get("base_url", "")).rstrip("/")
    for fault_id in inj.get("fault_ids", []):
        try:
            resp = await client.delete(f"{base}/faults/{fault_id}", timeout=10)
            if resp.status_code not in (204, 404):
                problems.append(f"DELETE fault {fault_id}: HTTP {resp.status_code}")
        except httpx.HTTPError as exc:
            problems.append(f"DELETE fault {fault_id}: {exc}")
    if d.incident_id:
        for run in engine.store.runs(incident_id=d.incident_id):
            if run.state in ("applied", "verified"):
                try:
                    await engine.revert(run.id, actor, f"drill {d.id} over")
                except IncidentBotError as exc:
                    problems.append(f"revert {run.id}: {exc}")
    try:
        if "policy_path" in inj:
            restore_file(Path(inj["policy_path"]), inj.get("policy_text"))
        elif "policy_routes" in inj:
            await engine.runner.drivers["default"].write(
                inj["policy_routes"], reason=f"drill {d.id} rollback", action="drill_rollback")
    except (OSError, DriverError) as exc:
        problems.append(f"restoring the serving policy: {exc}")
    return problems


def restore_file(path: Path, text: str | None) -> None:
    """Put the file back as it was (atomically), or remove it if there was none."""
    if text is None:
        path.unlink(missing_ok=True)
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".drill")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def recover_interrupted(engine: Engine, drills: DrillStore, client: httpx.AsyncClient,
                              say: Callable[[str], None] = print) -> list[Drill]:
    """Roll back and mark aborted every drill a dead process left running or injected
    (a drill another live process is running is left alone)."""
    out = []
    for d in drills.orphaned():  # never a drill whose process is alive
        problems = await undo_injection(engine, client, d, actor=DRILL_ACTOR) \
            if d.injection_active else []
        reason = "interrupted (the process running it stopped); rolled back at restart"
        if problems:
            reason += " with problems: " + "; ".join(problems)
        drills.event(d.id, "recovered-interrupted", reason, incident_id=d.incident_id)
        if d.incident_id and engine.store.incident(d.incident_id).is_open:
            # Announced like any status change: the drill incident does not stay open.
            with contextlib.suppress(IncidentBotError):
                await engine.cancel(d.incident_id, DRILL_ACTOR, f"drill {d.id} {reason}")
        out.append(drills.update(d.id, status="aborted", reason=reason, injection_active=False,
                                 rolled_back_at=drills.now() if d.injection_active else None,
                                 finished_at=drills.now(), phase="finished"))
        say(f"[DRILL {d.id}] {reason}")
    return out
