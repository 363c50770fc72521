"""The two databases the store runs on, behind one narrow connection interface.

SQLite is the embedded default (one file, one machine). Postgres is for teams
that run two or more replicas: ``LLM_INCIDENT_DB=postgresql://...``. The store,
its migrations and the parts that own tables (drills, the Slack adapter) write
one SQL text for both, with ``?`` placeholders and the portable
``INSERT ... ON CONFLICT`` form; :class:`PostgresDb` translates the few
differences (placeholders, ``INTEGER PRIMARY KEY`` as an identity column).

Why not an ORM: the store's SQL is small, hand-written and already portable
(SQLite 3.24+ and Postgres share upsert, ``RETURNING`` and CTE syntax); one
translation function is easier to read than a second query language.

Writers are serialised on both. SQLite's ``BEGIN IMMEDIATE`` takes the file's
write lock; on Postgres a write transaction takes one transaction-level advisory
lock first. So every use case that reads, checks and writes in one transaction
(dedup an alert, claim a run, re-check the guards) sees the same single-writer
world on either database, across any number of replicas. Unique keys
(``alerts (fingerprint, starts_at)``, ``runs.seq``...) are the backstop.

Because one lock serialises every replica's writes, no transaction may hold it for
long: on Postgres every session has three limits, sized from the leader lease
(:class:`Limits`), so a stalled or partitioned writer is cut off by the server and
its lock freed before the lease it may hold could pass to another replica.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlite_utils import Database as SqliteUtilsDatabase

from bot.base.claims import this_process

log = logging.getLogger(__name__)

# Any number: the one lock every write transaction of every replica takes.
WRITE_LOCK_KEY = 0x11_1C1D


@dataclass(frozen=True)
class Limits:
    """How long a Postgres session may wait, run or sit inside a transaction.

    All three follow from the leader lease ``L`` (renewed every ``L/4``):

    - ``idle_in_transaction`` = ``L/4`` (at least 1 s): a writer that stops between two
      statements while holding the write lock (SIGSTOP, a GC pause, a partition after
      ``BEGIN``) is disconnected by the server after this, which frees the lock well
      before a lease it renewed just before stalling can expire (at most ``L/4 + L/4``
      after its last renewal), so the next replica can take the lease on time.
    - ``lock_wait`` = ``L/2`` (at least twice the idle limit): longer than the idle limit, so a writer queued behind a stalled
      one gets the lock once the server cuts the staller off instead of failing; a
      lock held longer by someone else (an operator's session) fails the write, which
      rolls back and the next one tries again.
    - ``statement`` = the lock wait plus 1 s: no single statement (the lock wait is
      one) holds the lock long enough to cost the leader its lease (it stops leading
      ``L/4`` before the lease ends); the extra second lets the lock wait's own, clearer
      error win.
    """

    lock_wait_ms: int
    statement_ms: int
    idle_in_transaction_ms: int

    @classmethod
    def for_lease(cls, lease: timedelta) -> Limits:
        lease_ms = lease.total_seconds() * 1000
        idle = max(1000, int(lease_ms / 4))
        wait = max(2 * idle, int(lease_ms / 2))
        return cls(lock_wait_ms=wait, statement_ms=wait + 1000, idle_in_transaction_ms=idle)

    def settings(self) -> list[tuple[str, int]]:
        return [("lock_timeout", self.lock_wait_ms), ("statement_timeout", self.statement_ms),
                ("idle_in_transaction_session_timeout", self.idle_in_transaction_ms)]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def is_postgres_url(where: object) -> bool:
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


class Db:
    """What the store and the table owners use of a database connection."""

    dialect: str = ""
    #: The driver's error classes: a caller turns these into ``StoreError``.
    errors: tuple[type[BaseException], ...] = ()
    #: Those that pass (connection lost, a lock or statement limit): worth a retry.
    transient_errors: tuple[type[BaseException], ...] = ()
    _savepoints = 0
    #: The database's clock minus this machine's (0 where the database is local).
    clock_offset = timedelta(0)

    def set_limits(self, limits: Limits) -> None:
        """Bound this connection's transactions (Postgres; SQLite has its busy timeout)."""

    def server_now(self) -> datetime | None:
        """The database server's clock, read now (None: the database has no clock of its
        own, it is this machine's). Also refreshes ``clock_offset``."""
        return None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    @property
    def in_transaction(self) -> bool:
        raise NotImplementedError

    def begin_write(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        raise NotImplementedError

    def table_names(self) -> list[str]:
        raise NotImplementedError

    def json_field(self, column: str, *path: str | int) -> str:
        """SQL for the text at ``path`` inside a JSON text ``column`` (our own constants,
        never user input): ``json_extract`` on SQLite, ``#>>`` on Postgres."""
        raise NotImplementedError

    def notify(self, channel: str) -> None:
        """Tell listeners in other processes, when this transaction commits."""

    def listen(self, channel: str, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` (from another thread) on each ``notify``; returns a stop
        function, or None when the database has no such thing (one SQLite process
        needs none: it is the only one writing)."""
        return None

    def columns(self, table: str) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def insert(self, table: str, row: dict[str, Any], *, returning: str | None = None) -> Any:
        """Insert one row; with ``returning``, give back that column of the new row."""
        cols = ", ".join(_ident(c) for c in row)
        marks = ", ".join("?" for _ in row)
        tail = f" RETURNING {_ident(returning)}" if returning else ""
        cur = self.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}){tail}",  # noqa: S608
                           list(row.values()))
        return cur.fetchone()[0] if returning else None

    def upsert(self, table: str, row: dict[str, Any], *, pk: str | tuple[str, ...]) -> None:
        """Insert one row, or update the row with the same key."""
        keys = (pk,) if isinstance(pk, str) else pk
        cols = ", ".join(_ident(c) for c in row)
        marks = ", ".join("?" for _ in row)
        rest = [c for c in row if c not in keys]
        action = ("DO UPDATE SET " + ", ".join(f"{_ident(c)} = excluded.{_ident(c)}" for c in rest)
                  if rest else "DO NOTHING")
        self.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks}) "  # noqa: S608
                     f"ON CONFLICT ({', '.join(keys)}) {action}", list(row.values()))

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested atomic block inside the current transaction."""
        self._savepoints += 1
        name = f"sp_{self._savepoints}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._savepoints -= 1


def _ident(name: str) -> str:
    # "user" is a reserved word in Postgres; quoting is harmless in SQLite.
    return f'"{name}"' if name == "user" else name


class SqliteDb(Db):
    dialect = "sqlite"
    errors = (sqlite3.Error,)
    transient_errors = (sqlite3.OperationalError,)  # "database is locked"

    def __init__(self, where: str, *, busy_timeout_ms: int) -> None:
        # check_same_thread=False: the store's lock serialises use of the connection.
        self.conn = sqlite3.connect(where, check_same_thread=False)
        self.utils = SqliteUtilsDatabase(self.conn)
        self.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self.execute("PRAGMA foreign_keys = ON")
        if where != ":memory:":
            self.utils.enable_wal()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, list(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return list(self.utils.query(sql, list(params)))

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def begin_write(self) -> None:
        # IMMEDIATE takes the write lock up front, so a read-then-write cannot be
        # refused half-way by another writer (busy_timeout waits instead).
        self.execute("BEGIN IMMEDIATE")

    def rollback(self) -> None:
        self.conn.rollback()

    def table_names(self) -> list[str]:
        return list(self.utils.table_names())

    def json_field(self, column: str, *path: str | int) -> str:
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
        return f"json_extract({column}, '{where}')"

    def columns(self, table: str) -> set[str]:
        return {c.name for c in self.utils[table].columns}

    def close(self) -> None:
        self.conn.close()


class PostgresDb(Db):
    dialect = "postgres"

    def __init__(self, url: str, *, busy_timeout_ms: int) -> None:
        import psycopg  # only a Postgres deployment needs the driver loaded
        import psycopg.errors
        from psycopg.rows import dict_row

        self._psycopg = psycopg
        self._dict_row = dict_row
        self.errors = (psycopg.Error,)
        # Connection lost, server shutting down, lock_timeout and statement_timeout are
        # OperationalError subclasses; the idle-in-transaction cut is not.
        self.transient_errors = (psycopg.OperationalError,
                                 psycopg.errors.IdleInTransactionSessionTimeout)
        self.url = url
        # Until the leadership says which lease is in force (``set_limits``).
        self.limits = Limits.for_lease(timedelta(seconds=10))
        # Our own record of an open transaction: a broken connection's status says
        # "unknown", which must not pass for "inside a transaction" on the next call.
        self._in_tx = False
        self.conn = self._connect()

    def _connect(self) -> Any:
        conn = self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=10,
            # A peer that vanished (a partition, a dead host) is noticed in seconds,
            # not after the kernel's two-hour default: keepalives for an idle socket,
            # tcp_user_timeout for data sent and never acknowledged.
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            # Names the process in pg_stat_activity (an operator's first question).
            application_name=f"llm-incident {this_process()}"[:63],
            tcp_user_timeout=max(5000, self.limits.statement_ms + 2000))
        for name, ms in self.limits.settings():
            conn.execute(f"SET {name} = {int(ms)}")
        self.conn = conn
        self.server_now()
        return conn

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits
        if not self.conn.closed and not self._in_tx:
            for name, ms in limits.settings():
                self.conn.execute(f"SET {name} = {int(ms)}")

    def server_now(self) -> datetime | None:
        # The offset is the server's clock minus the midpoint of the round trip: off by
        # at most half a round trip (well under a millisecond on a LAN).
        before = time.time()
        row = self.conn.execute("SELECT clock_timestamp()").fetchone()
        after = time.time()
        server: datetime = row[0].astimezone(UTC)
        local = datetime.fromtimestamp((before + after) / 2, UTC)
        self.clock_offset = server - local
        return server

    def _usable(self) -> Any:
        # A connection lost between transactions (Postgres restarted, the server cut
        # an idle-in-transaction session, a partition) is opened again; one lost
        # inside a transaction fails that transaction, and the next one reconnects.
        if self.conn.closed and not self._in_tx:
            log.warning("the Postgres connection was lost; connecting again")
            self._connect()
        return self.conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._usable().execute(to_postgres(sql), tuple(params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._usable().cursor(row_factory=self._dict_row) as cur:
            cur.execute(to_postgres(sql), tuple(params))
            return list(cur.fetchall()) if cur.description else []

    @property
    def in_transaction(self) -> bool:
        return self._in_tx

    def begin_write(self) -> None:
        # The caller rolls back when this raises: past BEGIN the session is inside a
        # transaction, and a lock wait that timed out leaves it aborted.
        self.execute("BEGIN")
        self._in_tx = True
        self.execute("SELECT pg_advisory_xact_lock(?)", [WRITE_LOCK_KEY])

    def commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        finally:
            self._in_tx = False

    def rollback(self) -> None:
        try:
            if not self.conn.closed:
                self.conn.execute("ROLLBACK")
        finally:
            self._in_tx = False

    def json_field(self, column: str, *path: str | int) -> str:
        return f"({column}::jsonb #>> '{{{','.join(str(p) for p in path)}}}')"

    def notify(self, channel: str) -> None:
        self.execute(f"NOTIFY {channel}")  # transactional: delivered at commit, once

    def listen(self, channel: str, callback: Callable[[], None]) -> Callable[[], None] | None:
        # A connection of its own, read by a daemon thread: notifications arrive
        # whatever the store's connection is doing.
        stopping = threading.Event()

        def run() -> None:
            while not stopping.is_set():
                try:
                    with self._psycopg.connect(self.url, autocommit=True) as conn:
                        conn.execute(f"LISTEN {channel}")
                        callback()  # anything committed while we were not listening
                        while not stopping.is_set():
                            for _ in conn.notifies(timeout=1.0):
                                callback()
                except self._psycopg.Error as exc:
                    log.warning("listening for %s failed (%s); again in 1 s", channel, exc)
                    stopping.wait(1.0)

        threading.Thread(target=run, name=f"listen-{channel}", daemon=True).start()
        return stopping.set

    def table_names(self) -> list[str]:
        rows = self.query("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return [r["tablename"] for r in rows]

    def columns(self, table: str) -> set[str]:
        rows = self.query("SELECT column_name FROM information_schema.columns "
                          "WHERE table_schema = current_schema() AND table_name = ?", [table])
        return {r["column_name"] for r in rows}

    def close(self) -> None:
        self.conn.close()


_INTEGER_KEY = re.compile(r"\bINTEGER PRIMARY KEY\b", re.IGNORECASE)
_IS_PARAM = re.compile(r"\bIS \?")


@functools.lru_cache(maxsize=2048)
def to_postgres(sql: str) -> str:
    """SQLite-flavoured SQL to Postgres: ``?`` -> ``%s`` outside string literals,
    ``%`` doubled (psycopg's placeholder escape), ``INTEGER PRIMARY KEY`` (SQLite's
    rowid alias) -> a 64-bit identity column, and SQLite's null-safe ``IS ?`` ->
    ``IS NOT DISTINCT FROM``."""
    sql = _IS_PARAM.sub("IS NOT DISTINCT FROM ?", sql)
    out: list[str] = []
    quoted = False
    for ch in sql:
        if ch == "'":
            quoted = not quoted
            out.append(ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "?" and not quoted:
            out.append("%s")
        else:
            out.append(ch)
    return _INTEGER_KEY.sub("BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "".join(out))


def connect(where: str, *, busy_timeout_ms: int = 5000) -> Db:
    """A SQLite path (or ``:memory:``), or a ``postgresql://`` URL."""
    if is_postgres_url(where):
        return PostgresDb(where, busy_timeout_ms=busy_timeout_ms)
    return SqliteDb(where, busy_timeout_ms=busy_timeout_ms)
