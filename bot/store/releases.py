"""Releases: the store's half the release guard writes.

A mixin of ``bot.store.store.Store``. A release (``REL-n``) moves a route from a
baseline (its prompt version and/or model now) to a change, through canary steps
(percent of the route's traffic, e.g. 5 -> 25 -> 50 -> 100). Its state moves are
compare-and-set like a run's; its timeline is ``release_events`` (what the judge
said at each step, who promoted, held or rolled back, and the runs that did it).
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.base.claims import owner_alive
from bot.base.errors import Conflict, InputError, NotFound
from bot.store.backend import Db
from bot.store.records import from_text, required_time, to_text

ACTIVE_RELEASE = "canary"
# state -> the states it may become
RELEASE_MOVES: dict[str, tuple[str, ...]] = {
    "canary": ("canary", "promoted", "rolled_back", "aborted"),
    "promoted": (), "rolled_back": (), "aborted": (),
}
# A promote or rollback that changes the target holds this flag (``flags``) from the
# compare-and-set to the record's move, so a second one waits and then answers from
# what the first did instead of changing the target again. Its value is the holder
# (``bot.base.claims``): a claim left by a dead process is taken over.
MOVE_CLAIM = "release_move:"


class MoveInFlight(Conflict):
    """Another live process is moving this release right now."""


@dataclass(frozen=True)
class Release:
    id: str
    route: str
    target: str
    change: dict[str, str]  # {"prompt_version": ..., "model": ...} (what goes out)
    baseline: dict[str, str]  # the same keys, as the route serves them before
    owner: str
    steps: list[int]  # percent of the route's traffic on the canary, per step
    step: int  # index into steps
    bake: timedelta
    auto_promote: bool
    state: str
    held: bool
    step_started_at: datetime
    created_at: datetime
    updated_at: datetime
    incident_id: str | None

    @property
    def what(self) -> str:
        """What goes out, for people: "prompt version v43", "model chat-large"..."""
        return describe_change(self.change)

    @property
    def weight(self) -> float:
        return self.steps[self.step] / 100



@dataclass(frozen=True)
class ReleaseEvent:
    at: datetime
    kind: str
    actor: str
    text: str
    data: dict[str, Any]


def _release(r: dict[str, Any]) -> Release:
    return Release(
        id=r["id"], route=r["route"], target=r["target"], change=json.loads(r["change"]),
        baseline=json.loads(r["baseline"]), owner=r["owner"], steps=json.loads(r["steps"]),
        step=int(r["step"]), bake=timedelta(seconds=int(r["bake_seconds"])),
        auto_promote=bool(r["auto_promote"]), state=r["state"], held=bool(r["held"]),
        step_started_at=required_time(r["step_started_at"]),
        created_at=required_time(r["created_at"]), updated_at=required_time(r["updated_at"]),
        incident_id=r["incident_id"])


class ReleaseRecords:
    if TYPE_CHECKING:
        db: Db

        def now(self) -> datetime: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]: ...
        def _next_id(self, table: str, prefix: str) -> tuple[str, int]: ...

    def create_release(self, *, route: str, target: str, change: dict[str, str],
                       baseline: dict[str, str], owner: str, steps: list[int],
                       bake: timedelta, auto_promote: bool, actor: str) -> Release:
        """A new release at its first step; refused while the route has one in progress."""
        now = to_text(self.now())
        with self.transaction():
            if (busy := self.active_release(route)) is not None:
                raise Conflict(f"route '{route}' already has {busy.id} in progress",
                               hint=f"promote or roll back {busy.id} first")
            release_id, seq = self._next_id("releases", "REL")
            self.db.insert("releases", {
                "id": release_id, "seq": seq, "route": route, "target": target,
                "change": json.dumps(change, sort_keys=True),
                "baseline": json.dumps(baseline, sort_keys=True), "owner": owner,
                "steps": json.dumps(steps), "step": 0, "bake_seconds": int(bake.total_seconds()),
                "auto_promote": int(auto_promote), "state": ACTIVE_RELEASE, "held": 0,
                "step_started_at": now, "created_at": now, "updated_at": now,
                "incident_id": None})
            self.add_release_event(release_id, "started", f"started by {owner}: "
                                   f"{describe_change(change)} on {steps[0]}% of {route}", actor=actor,
                                   data={"steps": steps, "change": change,
                                         "baseline": baseline})
        return self.release(release_id)

    def release(self, release_id: str) -> Release:
        rows = self._rows("SELECT * FROM releases WHERE id = ?", [release_id.upper()])
        if not rows:
            raise NotFound(f"no release {release_id}", hint="`release list` shows them")
        return _release(rows[0])

    def releases(self, *, active_only: bool = False, limit: int = 50) -> list[Release]:
        where = "WHERE state = 'canary'" if active_only else ""
        rows = self._rows(f"SELECT * FROM releases {where} ORDER BY seq DESC LIMIT ?",
                          [int(limit)])
        return [_release(r) for r in rows]

    def active_release(self, route: str) -> Release | None:
        rows = self._rows("SELECT * FROM releases WHERE route = ? AND state = 'canary'", [route])
        return _release(rows[0]) if rows else None

    def move_release(self, release_id: str, *, expect_step: int, actor: str, kind: str,
                     text: str, state: str | None = None, step: int | None = None,
                     held: bool | None = None, incident_id: str | None = None,
                     data: dict[str, Any] | None = None) -> Release:
        """Compare-and-set on (state canary, step): a second promote of the same step, or a
        promote racing a rollback, finds it moved and gets ``Conflict``."""
        with self.transaction():
            before = self.release(release_id)
            to = state or before.state
            expect_at(before, expect_step)
            if to not in RELEASE_MOVES[before.state]:
                raise InputError(f"{before.id} is {before.state}; it cannot become {to}")
            sets: dict[str, Any] = {"state": to, "updated_at": to_text(self.now())}
            if step is not None:
                sets |= {"step": step, "step_started_at": to_text(self.now())}
            if held is not None:
                sets["held"] = int(held)
            if incident_id is not None:
                sets["incident_id"] = incident_id
            cols = ", ".join(f"{k} = ?" for k in sets)
            self.db.execute(f"UPDATE releases SET {cols} WHERE id = ?",  # noqa: S608
                            [*sets.values(), before.id])
            self.add_release_event(before.id, kind, text, actor=actor, data=data)
        return self.release(release_id)

    def claim_release_move(self, release_id: str, *, expect_step: int, owner: str) -> Release:
        """Compare-and-set on the step the person saw, and claim the move: ``Conflict``
        saying where the release is when it moved on, ``MoveInFlight`` while another
        live process holds the claim."""
        name = MOVE_CLAIM + release_id.upper()
        with self.transaction():
            before = self.release(release_id)
            expect_at(before, expect_step)
            rows = self._rows("SELECT value, set_at FROM flags WHERE name = ?", [name])
            if rows and rows[0]["value"] != owner and owner_alive(
                    rows[0]["value"], claimed_at=from_text(rows[0]["set_at"]), now=self.now()):
                raise MoveInFlight(f"{before.id} is being moved by another request",
                                   hint="wait for it and look again")
            self.db.upsert("flags", {"name": name, "value": owner, "set_by": owner,
                                     "set_at": to_text(self.now())}, pk="name")
        return before

    def release_move_claim(self, release_id: str, *, owner: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM flags WHERE name = ? AND value = ?",
                            [MOVE_CLAIM + release_id.upper(), owner])

    def add_release_event(self, release_id: str, kind: str, text: str, *, actor: str,
                          data: dict[str, Any] | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO release_events (release_id, at, kind, actor, text, data) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [release_id, to_text(self.now()), kind, actor, text,
                 json.dumps(data or {}, default=str, sort_keys=True)])

    def release_timeline(self, release_id: str) -> list[ReleaseEvent]:
        rows = self._rows("SELECT * FROM release_events WHERE release_id = ? ORDER BY id",
                          [release_id.upper()])
        return [ReleaseEvent(from_text(r["at"]) or self.now(), r["kind"], r["actor"], r["text"],
                             json.loads(r["data"])) for r in rows]


def expect_at(release: Release, step: int) -> None:
    """``Conflict`` unless ``release`` is in canary at ``step`` (what the person saw)."""
    if release.state == ACTIVE_RELEASE and release.step == step:
        return
    saw = release.steps[step] if 0 <= step < len(release.steps) else None
    seen = f"you saw {saw}%" if saw is not None else f"you saw step {step + 1}"
    if release.state == ACTIVE_RELEASE and release.step > step:
        where = f"already promoted to {release.steps[release.step]}%"
    elif release.state == ACTIVE_RELEASE:
        where = f"at {release.steps[release.step]}%"
    else:
        where = f"already {release.state.replace('_', ' ')}"
    raise Conflict(f"{release.id} {where} ({seen}); nothing changed",
                   hint=f"`release status {release.id}` shows where it is and who moved it")


def describe_change(change: dict[str, str]) -> str:
    return " ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(change.items()))
