"""The store: the single source of truth (alerts, incidents, timeline, runs...).

On SQLite (the embedded default: one file) or Postgres (replicas on several
machines): see ``bot.store.backend`` for how one SQL text serves both.

Everything the bot knows after a restart comes from here; timers, caches and
chat messages are rebuilt from it. Writes that belong together (a run's state
and its timeline event, a mitigation and the run becoming ``applied``) share one
transaction: use ``with store.transaction():`` around them, it nests.

Records come back as the frozen dataclasses of ``bot.store.records``, never raw rows. Times are aware UTC
datetimes; ``now`` comes from the injected ``clock`` so tests can freeze time.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from bot.base.errors import InputError, NotFound, StoreError
from bot.intake.alert import Alert
from bot.store.backend import Db, connect, is_postgres_url
from bot.store.leases import DEFAULT_LEASE, LeaseRecords
from bot.store.migrations import INCIDENT_STATUSES, LATEST_VERSION, MIGRATIONS
from bot.store.outbox import OutboxRecords
from bot.store.records import (
    CLOSED_STATUSES,
    Approval,
    Event,
    Flag,
    Incident,
    Mitigation,
    Run,
    StoredAlert,
    alert_from_row,
    event_from_row,
    from_text,
    incident_from_row,
    to_text,
    utc_now,
)
from bot.store.runs import RunRecords

__all__ = [
    "Approval", "Event", "Flag", "Incident", "Mitigation", "Run", "Store", "StoredAlert",
    "group_key_for", "CLOSED_STATUSES", "PAUSE_FLAG",
]

PAUSE_FLAG = "paused"


class Recorded(NamedTuple):
    """What ``record_alert`` did: the incident, and whether it opened or reopened it."""

    incident_id: str
    created: bool
    reopened: bool = False


def group_key_for(alert: Alert, klass: str) -> str:
    """Default grouping key: ``class|route|model``.

    The route is the ``route`` label, else LiteLLM's ``requested_model``; the
    model is the ``model`` label, else vLLM's ``model_name``; a missing one is
    ``*``. So a cost alert and a token-rate alert on the same route and model
    land in one incident, while the same class on another route opens its own.
    """
    labels = alert.labels
    route = labels.get("route") or labels.get("requested_model") or "*"
    model = labels.get("model") or labels.get("model_name") or "*"
    return f"{klass}|{route}|{model}"


class Store(RunRecords, OutboxRecords, LeaseRecords):
    """Open (and migrate) the store at ``path``: a SQLite file, ``None`` or ``":memory:"``
    (in memory), or a ``postgresql://`` URL."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.clock = clock
        # A replica whose heartbeat is older than this has lost its claims.
        self.replica_stale_after = DEFAULT_LEASE
        self._lock = threading.RLock()
        self._ensured: set[tuple[str, int]] = set()
        where = ":memory:" if path is None else str(path)
        self.location = _redacted(where)
        self.db: Db
        try:
            self.db = connect(where, busy_timeout_ms=busy_timeout_ms)
        except Exception as exc:
            raise StoreError(
                f"cannot open the store at {self.location}: {one_line(exc)}",
                hint="check the path exists and is writable, or that the Postgres server "
                     "is up and the URL's user may connect",
            ) from exc
        try:
            self._migrate(self.location)
        except StoreError:
            raise
        except self.db.errors as exc:
            raise StoreError(
                f"cannot open the store at {self.location}: {one_line(exc)}",
                hint="check it is an llm-incident database",
            ) from exc

    def failures(self) -> tuple[type[BaseException], ...]:
        """What a store call may raise when the database fails: ours and the driver's."""
        return (StoreError, *self.db.errors)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def now(self) -> datetime:
        return self.clock()

    # --- schema --------------------------------------------------------------------

    def _migrate(self, where: str) -> None:
        if self._current_without_writing():
            return  # the usual start: no write lock needed to see that
        # A migration may rebuild a table others reference (SQLite's ALTER TABLE
        # procedure): foreign keys off meanwhile (a pragma SQLite takes only outside
        # a transaction), checked before the commit. Postgres alters tables in place.
        sqlite = self.db.dialect == "sqlite"
        if sqlite:
            self.db.execute("PRAGMA foreign_keys = OFF")
        try:
            with self.transaction():
                # One write transaction: replicas starting at once on a new Postgres
                # database must not both create (or migrate) the tables.
                self.db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
                )
                self._migrate_locked(where)
        finally:
            if sqlite:
                self.db.execute("PRAGMA foreign_keys = ON")

    def _current_without_writing(self) -> bool:
        if "schema_migrations" not in self.db.table_names():
            return False
        return self.schema_version == LATEST_VERSION

    def _migrate_locked(self, where: str) -> None:
        current = self.schema_version
        if current > LATEST_VERSION:
            raise StoreError(
                f"the store at {where} has schema version {current}, newer than this "
                f"release understands (up to {LATEST_VERSION})",
                hint="upgrade llm-incident, or point it at another database file",
            )
        if current == LATEST_VERSION:
            return
        # All missing versions in one transaction: a failure leaves the old schema intact.
        version = current
        try:
            with self.transaction():
                for version in range(current + 1, LATEST_VERSION + 1):
                    MIGRATIONS[version - 1](self.db)
                    self.db.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                        [version, to_text(self.now())],
                    )
                if self.db.dialect == "sqlite":
                    broken = self.db.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise StoreError(f"foreign keys broken: {broken[:3]}")
        except self.failures() as exc:
            raise StoreError(
                f"migrating the store at {where} to version {version} failed "
                f"({one_line(exc.__cause__ or exc)}); it stays at version {current}",
                hint="report this with the database's schema_migrations table",
            ) from exc

    def ensure_schema(self, component: str,
                      steps: Sequence[Callable[[Db], None]]) -> None:
        """Bring ``component``'s own tables up to ``len(steps)`` (its owner calls this
        before first use). All missing steps run in one transaction; a database with a
        newer history for the component than this code knows is refused."""
        key = (component, len(steps))
        if key in self._ensured:
            return
        with self.transaction():
            row = self.db.execute("SELECT version FROM schema_components WHERE component = ?",
                                  [component]).fetchone()
            current = int(row[0]) if row else 0
            if current > len(steps):
                raise StoreError(
                    f"the store's {component} tables are at version {current}, newer than this "
                    f"release understands (up to {len(steps)})",
                    hint="upgrade llm-incident, or point it at another database file")
            for step in steps[current:]:
                step(self.db)
            if current < len(steps):
                self.db.upsert("schema_components", {
                    "component": component, "version": len(steps),
                    "applied_at": to_text(self.now())}, pk="component")
        self._ensured.add(key)

    def probe_write(self) -> None:
        """Write one row and commit: raises ``StoreError`` when the store takes no writes
        (disk full, read-only file, a lock held too long). ``/readyz`` calls it."""
        with self.transaction():
            self.db.upsert("write_probe", {"id": 1, "at": to_text(self.now())}, pk="id")

    def created_at(self) -> datetime | None:
        """When this database was first migrated (its first schema version)."""
        with self._lock:
            row = self.db.execute("SELECT MIN(applied_at) FROM schema_migrations").fetchone()
        return from_text(row[0]) if row and row[0] else None

    @property
    def schema_version(self) -> int:
        row = self.db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """One atomic unit of writes; nested blocks join the outer one (as savepoints)."""
        with self._lock:
            if self.db.in_transaction:
                with self.db.savepoint():
                    yield self
                return
            self.db.begin_write()
            try:
                yield self
                self.db.commit()
            except self.db.errors as exc:
                self._rollback()
                raise StoreError(f"store write failed, nothing was saved: {one_line(exc)}",
                                 hint="check the disk, the database file or the "
                                      "Postgres server") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # A connection already gone means the server rolled the transaction back.
        with contextlib.suppress(*self.db.errors):
            self.db.rollback()

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self.db.query(sql, params or [])

    def _next_id(self, table: str, prefix: str) -> tuple[str, int]:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return f"{prefix}-{row[0]}", int(row[0])

    # --- alerts and incidents --------------------------------------------------------

    def record_alert(
        self,
        alert: Alert,
        *,
        group_key: str,
        title: str,
        klass: str,
        severity: str,
        is_drill: bool = False,
        reopen_within: timedelta | None = None,
    ) -> Recorded:
        """Store one alert; returns ``(incident_id, created, reopened)``.

        Dedup on ``(fingerprint, starts_at)``: repeats of a known firing change
        nothing, a resolved copy updates status and ends_at. A new firing joins
        the newest open incident with the same group key (and the same drill
        flag: a drill never absorbs a real alert), else opens an incident. An alert
        first seen already resolved (the bot was down while it fired) is still
        recorded, so the history is complete.

        Flap damping: a new firing whose group's latest incident was *resolved*
        less than ``reopen_within`` ago reopens that incident (status back to open,
        one ``reopened`` event) instead of opening another, so a flapping alert is
        one incident with one live message, not a hundred.
        """
        now = to_text(self.now())
        starts = to_text(alert.starts_at)
        with self.transaction():
            known = self._rows(
                "SELECT * FROM alerts WHERE fingerprint = ? AND starts_at = ?",
                [alert.fingerprint, starts],
            )
            if known:
                row = known[0]
                if alert.status == "resolved" and row["status"] != "resolved":
                    self.db.execute(
                        "UPDATE alerts SET status = 'resolved', ends_at = ? WHERE id = ?",
                        [to_text(alert.ends_at) or now, row["id"]],
                    )
                    self.add_event(
                        row["incident_id"], "alert_resolved",
                        f"alert {alert.alertname or alert.fingerprint} resolved",
                        actor=alert.source, data={"fingerprint": alert.fingerprint},
                    )
                return Recorded(row["incident_id"], False)
            open_rows = self._rows(
                f"SELECT id FROM incidents WHERE group_key = ? AND is_drill = ? "
                f"AND status NOT IN {CLOSED_STATUSES!r} ORDER BY seq DESC LIMIT 1",
                [group_key, int(is_drill)],
            )
            if not open_rows and alert.status == "firing" and reopen_within:
                reopened = self._reopen_flapping(group_key, is_drill, reopen_within, alert)
                if reopened is not None:
                    self._insert_alert(reopened, alert, now, starts)
                    return Recorded(reopened, False, True)
            created = not open_rows
            if created:
                incident_id, seq = self._next_id("incidents", "INC")
                self.db.insert(
                    "incidents", {
                        "id": incident_id, "seq": seq, "group_key": group_key, "title": title,
                        "class": klass, "severity": severity, "status": "open",
                        "is_drill": int(is_drill), "commander": None, "created_at": now,
                        "updated_at": now, "resolved_at": None,
                    }
                )
                drill = " (drill)" if is_drill else ""
                self.add_event(incident_id, "opened", f"incident opened{drill}: {title}",
                               actor=alert.source, data={"group_key": group_key})
            else:
                incident_id = open_rows[0]["id"]
            self._insert_alert(incident_id, alert, now, starts)
        return Recorded(incident_id, created)

    def _reopen_flapping(
        self, group_key: str, is_drill: bool, within: timedelta, alert: Alert
    ) -> str | None:
        since = to_text(self.now() - within)
        rows = self._rows(
            "SELECT id, resolved_at FROM incidents WHERE group_key = ? AND is_drill = ? "
            "AND status = 'resolved' AND resolved_at >= ? ORDER BY seq DESC LIMIT 1",
            [group_key, int(is_drill), since],
        )
        if not rows:
            return None
        incident_id = rows[0]["id"]
        self.db.execute(
            "UPDATE incidents SET status = 'open', resolved_at = NULL, updated_at = ? "
            "WHERE id = ?", [to_text(self.now()), incident_id],
        )
        why = (f"{alert.alertname or 'its alert'} fired again within "
               f"{int(within.total_seconds())}s of resolving (flapping)")
        self.add_event(incident_id, "status", f"status resolved -> open: {why}",
                       actor=alert.source, data={"from": "resolved", "to": "open",
                                                 "reason": why, "reopened": True})
        return incident_id

    def _insert_alert(self, incident_id: str, alert: Alert, now: str, starts: str) -> None:
        """One alert row and its timeline line, inside the caller's transaction."""
        self.db.insert(
            "alerts", {
                "incident_id": incident_id, "source": alert.source,
                "fingerprint": alert.fingerprint, "starts_at": starts,
                "ends_at": to_text(alert.ends_at), "status": alert.status,
                "alertname": alert.alertname, "labels": json.dumps(alert.labels),
                "annotations": json.dumps(alert.annotations),
                "generator_url": alert.generator_url,
                "raw": json.dumps(alert.raw, default=str), "received_at": now,
            }
        )
        self.add_event(incident_id, "alert",
                       f"alert {alert.alertname or alert.fingerprint} {alert.status}",
                       actor=alert.source, data={"fingerprint": alert.fingerprint,
                                                 "labels": alert.labels})

    def incident(self, incident_id: str) -> Incident:
        rows = self._rows("SELECT * FROM incidents WHERE id = ?", [incident_id])
        if not rows:
            raise NotFound(f"no incident {incident_id}", hint="list incidents with `incidents`")
        return incident_from_row(rows[0])

    def incidents(self, status: str | None = None, limit: int = 50) -> list[Incident]:
        """Newest first, optionally only those with one ``status``."""
        if status is not None and status not in INCIDENT_STATUSES:
            raise InputError(f"unknown incident status '{status}'",
                             hint=f"one of: {', '.join(INCIDENT_STATUSES)}")
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self._rows(f"SELECT * FROM incidents {where} ORDER BY seq DESC LIMIT ?",
                          [*params, int(limit)])
        return [incident_from_row(r) for r in rows]

    def open_incidents(self) -> list[Incident]:
        """Every incident not resolved or cancelled, newest first (never truncated: the
        open set is what the scheduler, status and the kill switch must see whole)."""
        rows = self._rows(f"SELECT * FROM incidents WHERE status NOT IN {CLOSED_STATUSES!r} "
                          "ORDER BY seq DESC")
        return [incident_from_row(r) for r in rows]

    def count_incidents(self, status: str | None = None) -> int:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        with self._lock:
            row = self.db.execute(f"SELECT COUNT(*) FROM incidents {where}", params).fetchone()
        return int(row[0])

    def set_incident_status(
        self, incident_id: str, status: str, *, actor: str, reason: str = ""
    ) -> Incident:
        if status not in INCIDENT_STATUSES:
            raise InputError(f"unknown incident status '{status}'",
                             hint=f"one of: {', '.join(INCIDENT_STATUSES)}")
        with self.transaction():
            before = self.incident(incident_id)
            now = to_text(self.now())
            resolved = now if status == "resolved" else None
            self.db.execute(
                "UPDATE incidents SET status = ?, updated_at = ?, resolved_at = ? WHERE id = ?",
                [status, now, resolved, incident_id],
            )
            why = f": {reason}" if reason else ""
            data = {"from": before.status, "to": status} | ({"reason": reason} if reason else {})
            self.add_event(incident_id, "status", f"status {before.status} -> {status}{why}",
                           actor=actor, data=data)
        return self.incident(incident_id)

    def set_commander(self, incident_id: str, commander: str, *, actor: str) -> Incident:
        """Name the incident commander; the timeline gets an ``assigned`` event."""
        with self.transaction():
            before = self.incident(incident_id)
            self.db.execute("UPDATE incidents SET commander = ? WHERE id = ?",
                            [commander, incident_id])
            was = f" (was {before.commander})" if before.commander else ""
            self.add_event(incident_id, "assigned", f"commander: {commander}{was}", actor=actor,
                           data={"commander": commander, "previous": before.commander})
        return self.incident(incident_id)

    def alert_by_key(self, fingerprint: str, starts_at: datetime) -> StoredAlert | None:
        """The stored alert with this dedup key, if any."""
        rows = self._rows("SELECT * FROM alerts WHERE fingerprint = ? AND starts_at = ?",
                          [fingerprint, to_text(starts_at)])
        return alert_from_row(rows[0]) if rows else None

    def alerts_for(self, incident_id: str) -> list[StoredAlert]:
        rows = self._rows("SELECT * FROM alerts WHERE incident_id = ? ORDER BY id", [incident_id])
        return [alert_from_row(r) for r in rows]

    # --- timeline ------------------------------------------------------------------

    def add_event(
        self,
        incident_id: str | None,
        kind: str,
        text: str,
        *,
        actor: str,
        run_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Event:
        with self.transaction():
            rows = self._rows(
                "INSERT INTO events (incident_id, run_id, at, kind, actor, text, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
                [incident_id, run_id, to_text(self.now()), kind, actor, text,
                 json.dumps(data or {}, default=str, sort_keys=True)],
            )
            return event_from_row(rows[0])

    def newest_event_id(self) -> int:
        """The id of the newest timeline event: a change counter any process can read."""
        with self._lock:
            row = self.db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)

    def timeline(self, incident_id: str | None) -> list[Event]:
        """An incident's events in order; ``None`` = events of no incident (ad hoc, pause)."""
        if incident_id is None:
            rows = self._rows("SELECT * FROM events WHERE incident_id IS NULL ORDER BY id")
        else:
            rows = self._rows("SELECT * FROM events WHERE incident_id = ? ORDER BY id",
                              [incident_id])
        return [event_from_row(r) for r in rows]

    def run_events(self, run_id: str) -> list[Event]:
        return [event_from_row(r) for r in self._rows(
            "SELECT * FROM events WHERE run_id = ? ORDER BY id", [run_id])]

    # --- flags ---------------------------------------------------------------------

    def flag(self, name: str) -> Flag | None:
        rows = self._rows("SELECT * FROM flags WHERE name = ?", [name])
        if not rows:
            return None
        r = rows[0]
        return Flag(r["name"], r["value"], r["set_by"], datetime.fromisoformat(r["set_at"]))

    def set_flag(self, name: str, value: str | None, *, actor: str) -> None:
        """Set a flag; ``value=None`` removes it."""
        with self.transaction():
            if value is None:
                self.db.execute("DELETE FROM flags WHERE name = ?", [name])
            else:
                self.db.upsert(
                    "flags", {"name": name, "value": value, "set_by": actor,
                              "set_at": to_text(self.now())}, pk="name",
                )


def one_line(exc: BaseException) -> str:
    """A database error as one line (Postgres adds DETAIL and LINE parts on their own lines)."""
    return " ".join(str(exc).split())


def _redacted(where: str) -> str:
    """A location fit for logs and errors: a Postgres URL without its password."""
    if not is_postgres_url(where):
        return where
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", where)
