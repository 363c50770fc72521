"""Drill records in the bot's SQLite store (tables ``drills`` and ``drill_events``).

Uses ``bot.store.store.Store``'s connection and transactions: a drill, its incident and
its timeline live in the one database. Records come back as frozen dataclasses.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot.base import claims
from bot.base.claims import this_process
from bot.base.errors import NotFound
from bot.store import Store, from_text, to_text
from bot.store.backend import Db

TIME_FIELDS = ("started_at", "injected_at", "detected_at", "acknowledged_at", "mitigated_at",
               "recovered_at", "rolled_back_at", "finished_at")
UPDATABLE = {*TIME_FIELDS, "status", "phase", "incident_id", "suggested_playbook", "injection",
             "injection_active", "score", "breakdown", "reason", "detector"}


@dataclass(frozen=True)
class Drill:
    id: str
    scenario_id: str
    klass: str
    target: str
    mode: str
    detector: str
    speed: float
    status: str
    phase: str
    incident_id: str | None
    started_at: datetime
    injected_at: datetime | None
    detected_at: datetime | None
    acknowledged_at: datetime | None
    mitigated_at: datetime | None
    recovered_at: datetime | None
    rolled_back_at: datetime | None
    finished_at: datetime | None
    suggested_playbook: str | None
    injection: dict[str, Any]
    injection_active: bool
    score: int | None
    breakdown: list[dict[str, Any]]
    reason: str | None

    def drill_seconds(self, at: datetime | None) -> float | None:
        """Seconds of drill time from the injection to ``at`` (None if either is unknown)."""
        if at is None or self.injected_at is None:
            return None
        return (at - self.injected_at).total_seconds() * self.speed


@dataclass(frozen=True)
class DrillEvent:
    at: datetime
    phase: str
    text: str
    data: dict[str, Any]


def _drill(row: dict[str, Any]) -> Drill:
    times = {k: from_text(row[k]) for k in TIME_FIELDS}
    return Drill(
        id=row["id"], scenario_id=row["scenario_id"], klass=row["class"], target=row["target"],
        mode=row["mode"], detector=row["detector"], speed=float(row["speed"]),
        status=row["status"], phase=row["phase"], incident_id=row["incident_id"],
        suggested_playbook=row["suggested_playbook"], injection=json.loads(row["injection"]),
        injection_active=bool(row["injection_active"]), score=row["score"],
        breakdown=json.loads(row["breakdown"]), reason=row["reason"], **times,  # type: ignore[arg-type]
    )


# A drill whose owner runs on another host is taken for dead after this long without a
# heartbeat (it beats on every tick, at most a few seconds apart).
STALE_AFTER = timedelta(minutes=5)


# --- the drills tables: owned here, applied by ``Store.ensure_schema`` --------------
# (Written to accept a database whose core migrations 3 and 6 created them before
# they moved here.)


def _d1_drills(db: Db) -> None:
    # One row per drill run (drills/runner.py); `injection` holds what must be undone
    # while `injection_active` is 1, so a drill killed half way is rolled back on the
    # next start. Times are real UTC; `speed` says how much faster than real time the
    # drill ran (timings in reports are drill time = real elapsed x speed).
    db.execute(
        """CREATE TABLE IF NOT EXISTS drills (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            scenario_id TEXT NOT NULL,
            class TEXT NOT NULL,
            target TEXT NOT NULL,
            mode TEXT NOT NULL CHECK (mode IN ('auto', 'humans')),
            detector TEXT NOT NULL,
            speed REAL NOT NULL DEFAULT 1,
            status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'aborted')),
            phase TEXT NOT NULL,
            incident_id TEXT,
            started_at TEXT NOT NULL,
            injected_at TEXT,
            detected_at TEXT,
            acknowledged_at TEXT,
            mitigated_at TEXT,
            recovered_at TEXT,
            rolled_back_at TEXT,
            finished_at TEXT,
            suggested_playbook TEXT,
            injection TEXT NOT NULL DEFAULT '{}',
            injection_active INTEGER NOT NULL DEFAULT 0,
            score INTEGER,
            breakdown TEXT NOT NULL DEFAULT '[]',
            reason TEXT
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_drills_class ON drills (class, seq)")
    db.execute(
        """CREATE TABLE IF NOT EXISTS drill_events (
            id INTEGER PRIMARY KEY,
            drill_id TEXT NOT NULL REFERENCES drills (id),
            at TEXT NOT NULL,
            phase TEXT NOT NULL,
            text TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_drill_events ON drill_events (drill_id, id)")



def _d2_ownership(db: Db) -> None:
    # Which process runs a drill, and when it last said so: a drill is "interrupted"
    # only when that process is gone, never because another process started.
    have = db.columns("drills")
    if "owner" not in have:  # a database from before the move has them from core v6
        db.execute("ALTER TABLE drills ADD COLUMN owner TEXT")
    if "heartbeat_at" not in have:
        db.execute("ALTER TABLE drills ADD COLUMN heartbeat_at TEXT")
    # One row per scheduled drill time: the first process to insert it runs the drill;
    # `claimed_by` "missed" records a firing no process was up for.
    db.execute(
        """CREATE TABLE IF NOT EXISTS drill_firings (
            fire_at TEXT PRIMARY KEY,
            claimed_by TEXT NOT NULL,
            claimed_at TEXT NOT NULL
        )"""
    )


DRILL_SCHEMA = [_d1_drills, _d2_ownership]


class DrillStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.ensure_schema("drills", DRILL_SCHEMA)

    def now(self) -> datetime:
        return self.store.now()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.store._rows(sql, params)  # the store's own locked read

    def create(self, *, scenario_id: str, klass: str, target: str, mode: str, detector: str,
               speed: float, owner: str | None = None) -> Drill:
        with self.store.transaction():
            row = self.store.db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM drills").fetchone()
            seq = int(row[0])
            drill_id = f"DRILL-{seq}"
            self.store.db.execute(
                "INSERT INTO drills (id, seq, scenario_id, class, target, mode, detector, speed, "
                "status, phase, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', 'created', ?)",
                [drill_id, seq, scenario_id, klass, target, mode, detector, speed,
                 to_text(self.now())],
            )
            self.store.db.execute("UPDATE drills SET owner = ?, heartbeat_at = ? WHERE id = ?",
                                  [owner or this_process(), to_text(self.now()), drill_id])
            self.event(drill_id, "created", f"drill of scenario {scenario_id} ({klass}) "
                       f"on {target}, responders: {mode}")
        return self.get(drill_id)

    def get(self, drill_id: str) -> Drill:
        rows = self._rows("SELECT * FROM drills WHERE id = ?", [drill_id])
        if not rows:
            raise NotFound(f"no drill {drill_id}", hint="`drill history` lists them")
        return _drill(rows[0])

    def update(self, drill_id: str, **values: Any) -> Drill:
        unknown = set(values) - UPDATABLE
        if unknown:
            raise ValueError(f"not drill fields: {', '.join(sorted(unknown))}")
        row: dict[str, Any] = {}
        for k, v in values.items():
            if k in TIME_FIELDS:
                v = to_text(v)
            elif k in ("injection", "breakdown"):
                v = json.dumps(v, default=str)
            elif k == "injection_active":
                v = int(bool(v))
            row[k] = v
        with self.store.transaction():
            # Column names come from UPDATABLE above, never from input.
            sets = ", ".join(f"{k} = ?" for k in row)
            self.store.db.execute(f"UPDATE drills SET {sets} WHERE id = ?",  # noqa: S608
                                  [*row.values(), drill_id])
        return self.get(drill_id)

    def event(self, drill_id: str, phase: str, text: str, data: dict[str, Any] | None = None,
              *, incident_id: str | None = None) -> None:
        """One phase line on the drill's record, and on its incident's timeline (marked DRILL)."""
        with self.store.transaction():
            self.store.db.execute(
                "INSERT INTO drill_events (drill_id, at, phase, text, data) VALUES (?, ?, ?, ?, ?)",
                [drill_id, to_text(self.now()), phase, text, json.dumps(data or {}, default=str)],
            )
            if incident_id:
                self.store.add_event(incident_id, "drill", f"[DRILL {drill_id}] {text}",
                                     actor="drill", data={"drill": drill_id, "phase": phase})

    def events(self, drill_id: str) -> list[DrillEvent]:
        rows = self._rows("SELECT * FROM drill_events WHERE drill_id = ? ORDER BY id", [drill_id])
        return [DrillEvent(from_text(r["at"]), r["phase"], r["text"],  # type: ignore[arg-type]
                           json.loads(r["data"])) for r in rows]

    def history(self, klass: str | None = None, limit: int = 20) -> list[Drill]:
        """Newest first; only ``klass`` when given."""
        sql, params = "SELECT * FROM drills", []
        if klass:
            sql, params = sql + " WHERE class = ?", [klass]
        rows = self._rows(sql + " ORDER BY seq DESC LIMIT ?", [*params, limit])
        return [_drill(r) for r in rows]

    def with_active_injection(self) -> list[Drill]:
        rows = self._rows(
            "SELECT * FROM drills WHERE injection_active = 1 OR status = 'running' ORDER BY seq")
        return [_drill(r) for r in rows]

    def orphaned(self, stale_after: timedelta = STALE_AFTER) -> list[Drill]:
        """Running or injected drills whose process is gone: on this host its pid no
        longer exists; elsewhere its heartbeat is older than ``stale_after``."""
        out = []
        for r in self._rows("SELECT * FROM drills WHERE injection_active = 1 OR "
                            "status = 'running' ORDER BY seq"):
            beat = from_text(r.get("heartbeat_at"))
            stale = beat is None or self.now() - beat > stale_after
            if not owner_alive(r.get("owner"), stale):
                out.append(_drill(r))
        return out

    def beat(self, drill_id: str) -> None:
        """The running process is alive (called on every drill tick)."""
        with self.store.transaction():
            self.store.db.execute("UPDATE drills SET heartbeat_at = ? WHERE id = ?",
                                  [to_text(self.now()), drill_id])

    def claim_firing(self, fire_at: datetime, owner: str) -> str | None:
        """Claim the scheduled drill at ``fire_at``; None when won, else who has it."""
        with self.store.transaction():
            self.store.db.execute(
                "INSERT INTO drill_firings (fire_at, claimed_by, claimed_at) "
                "VALUES (?, ?, ?) ON CONFLICT (fire_at) DO NOTHING", [to_text(fire_at), owner, to_text(self.now())])
            row = self.store.db.execute("SELECT claimed_by FROM drill_firings WHERE fire_at = ?",
                                        [to_text(fire_at)]).fetchone()
        return None if row[0] == owner else str(row[0])

    def is_claimed(self, fire_at: datetime) -> bool:
        return bool(self._rows("SELECT 1 FROM drill_firings WHERE fire_at = ?",
                               [to_text(fire_at)]))

    def firings(self, limit: int = 12) -> list[tuple[datetime, str]]:
        """The newest scheduled firings and who took them ("missed": nobody was up)."""
        rows = self._rows("SELECT fire_at, claimed_by FROM drill_firings ORDER BY fire_at DESC "
                          "LIMIT ?", [limit])
        return [(from_text(r["fire_at"]) or self.now(), r["claimed_by"]) for r in rows]


def owner_alive(owner: str | None, stale: bool) -> bool:
    """Is the process that owns a drill still there? On this host its pid (and start
    time) decide (``bot.base.claims``); for another host, or no owner recorded, only
    the heartbeat can tell."""
    if not owner or owner.split(":")[0] != socket.gethostname():
        return not stale
    return claims.owner_alive(owner)
