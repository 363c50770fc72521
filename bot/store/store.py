"""The store: the single source of truth (alerts, incidents, timeline, runs...).

On SQLite (the embedded default: one file) or Postgres (replicas on several
machines): see ``bot.store.backend`` for how one SQL text serves both.

Everything the bot knows after a restart comes from here; timers, caches and
chat messages are rebuilt from it. Writes that belong together (a run's state
and its timeline event, a mitigation and the run becoming ``applied``) share one
transaction: use ``with store.transaction():`` around them, it nests.

Records come back as the frozen dataclasses of ``bot.store.records``, never raw rows. Times are aware UTC
datetimes; ``now`` comes from the injected ``clock`` so tests can freeze time. With
``database_clock`` (what ``serve`` and the CLI open) on Postgres, ``now`` is the database server's clock (this
machine's plus the offset measured at connect and at every lease round), so
replicas whose own clocks disagree still compare leases, heartbeats, claims, TTL
deadlines and approval expiry on one clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bot.base.errors import StoreError
from bot.store.backend import Db, Limits, connect, is_postgres_url
from bot.store.health import WriteHealth
from bot.store.incidents import IncidentRecords, Recorded, group_key_for
from bot.store.leases import DEFAULT_LEASE, LeaseRecords
from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.outbox import OutboxRecords
from bot.store.pages import PageRecords
from bot.store.records import (
    CLOSED_STATUSES,
    Approval,
    Event,
    Flag,
    Incident,
    Mitigation,
    Run,
    StoredAlert,
    event_from_row,
    from_text,
    to_text,
    utc_now,
)
from bot.store.releases import ReleaseRecords
from bot.store.runs import RunRecords

__all__ = [
    "Approval", "Event", "Flag", "Incident", "Mitigation", "Run", "Recorded", "Store",
    "StoredAlert", "group_key_for", "CLOSED_STATUSES", "PAUSE_FLAG",
]

PAUSE_FLAG = "paused"
# A replica whose clock is further than this from the database's says so (/readyz, log).
CLOCK_SKEW_WARN = timedelta(seconds=2)

log = logging.getLogger(__name__)


class Store(IncidentRecords, RunRecords, OutboxRecords, LeaseRecords, ReleaseRecords,
            PageRecords):
    """Open (and migrate) the store at ``path``: a SQLite file, ``None`` or ``":memory:"``
    (in memory), or a ``postgresql://`` URL."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_ms: int = 5000,
        database_clock: bool = False,
    ) -> None:
        self.clock = clock
        # A replica whose heartbeat is older than this has lost its claims.
        self.replica_stale_after = DEFAULT_LEASE
        self._lock = threading.RLock()
        # The last write transaction's outcome, for /healthz (read without the lock).
        self.writes = WriteHealth()
        self._skew_warned = False
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
        if database_clock and self.db.dialect == "postgres":
            # Time that replicas compare is the database's (see the module docstring).
            self.clock = self._database_clock
            self.check_clock()

    def failures(self) -> tuple[type[BaseException], ...]:
        """What a store call may raise when the database fails: ours and the driver's."""
        return (StoreError, *self.db.errors)

    def transient(self, exc: BaseException) -> bool:
        """Is ``exc`` a failure that passes (a lost connection, a lock wait or statement
        over its limit), worth trying again, rather than a refused write?"""
        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
        return isinstance(cause, self.db.transient_errors)

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def close(self) -> None:
        self.db.close()

    def now(self) -> datetime:
        return self.clock()

    def _database_clock(self) -> datetime:
        return utc_now() + self.db.clock_offset

    @property
    def clock_offset(self) -> timedelta:
        """The database's clock minus this machine's (0 on SQLite or a test's clock)."""
        return self.db.clock_offset if self.clock == self._database_clock else timedelta(0)

    def local_time(self, at: datetime) -> datetime:
        """``at`` (the store's clock) on this machine's clock: what a local timer waits for."""
        return at - self.clock_offset

    def database_now(self) -> datetime:
        """The store's time read from the database now (inside a transaction: after its
        lock), refreshing the clock offset; the local clock where the database has none."""
        if self.clock != self._database_clock:
            return self.now()
        with self._lock:
            server = self.db.server_now()
        self.check_clock()
        return server if server is not None else self.now()

    def check_clock(self) -> str | None:
        """A warning when this machine's clock is far from the database's, else None
        (logged once per change between the two)."""
        offset = self.clock_offset
        far = abs(offset) > CLOCK_SKEW_WARN
        if far != self._skew_warned:
            self._skew_warned = far
            if far:
                log.warning("this machine's clock is %.1f s %s the database's; the bot uses "
                            "the database's clock for leases, claims and timers, but fix the "
                            "clock (NTP)", abs(offset.total_seconds()),
                            "behind" if offset > timedelta(0) else "ahead of")
            else:
                log.warning("this machine's clock agrees with the database's again")
        if not far:
            return None
        return (f"this machine's clock is {abs(offset.total_seconds()):.1f} s "
                f"{'behind' if offset > timedelta(0) else 'ahead of'} the database's "
                "(leases and timers use the database's; fix the clock with NTP)")

    def write_problem(self) -> str | None:
        """Why this process cannot write to the store, for ``/healthz`` (None: it can).
        Every limit on a write is under the lease (``backend.Limits``), and a ``serve``
        writes at every lease round, so a write running for two leases is stuck, and
        writes failing for three leases (30 s at least) are not a passing lock wait."""
        lease = self.replica_stale_after.total_seconds()
        return self.writes.problem(stuck_after=max(15.0, 2 * lease),
                                   failing_after=max(30.0, 3 * lease))

    def set_lease(self, ttl: timedelta) -> None:
        """The leader lease in force: claims go stale after it, and every Postgres
        transaction is bounded by it (``backend.Limits``)."""
        self.replica_stale_after = ttl
        with self._lock:
            self.db.set_limits(Limits.for_lease(ttl))

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
            self.writes.started()
            try:
                # Inside the try: a lock wait that timed out (or a connection lost at
                # BEGIN) must roll back too, or the session stays in an aborted
                # transaction and refuses every later write.
                self.db.begin_write()
                yield self
                self.db.commit()
            except self.db.errors as exc:
                self._rollback()
                self.writes.failed(one_line(exc))
                raise StoreError(f"store write failed, nothing was saved: {one_line(exc)}",
                                 hint="check the disk, the database file or the "
                                      "Postgres server") from exc
            except BaseException:
                self._rollback()
                self.writes.ended()
                raise
            self.writes.ok()

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
