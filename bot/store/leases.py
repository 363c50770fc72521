"""The leader lease and the replicas' heartbeats: the store's half that lets several
``serve`` processes share one database.

A mixin of ``bot.store.store.Store``. One replica at a time holds the ``leader``
lease, a row with an expiry that only its holder renews; whoever takes it after it
expired gets the next *fencing token*. The leader runs the scheduler (TTL reverts,
verification deadlines, reminders, drills) and automatic steps; every change it
makes carries its token to the target, which refuses a lower one, so a leader that
was paused past its lease cannot act on stale authority.

Each ``serve`` also beats in ``replicas``. A claim (a run applying or reverting, an
outbox item) held by a replica is live while that replica's heartbeat is fresh
(and, on the same machine, its pid runs):
a replica that hangs (SIGSTOP, a stuck disk) loses its claims like one that died,
and the new leader settles them once. Processes that never beat (a CLI verb) are
judged by their pid, as before. Times are the store's clock, which on Postgres is
the database server's (``Store.now``): the lease is taken and renewed at the
server's ``clock_timestamp()`` read inside the lease's own transaction, which also
refreshes this replica's offset to the server's clock for everything else, so a
replica whose own clock is off neither takes a live lease nor clings to a dead one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot.base.claims import owner_alive
from bot.store.backend import Db
from bot.store.records import from_text, required_time, to_text

LEADER = "leader"
# A follower bids again the moment the lease it saw runs out, so failover takes about
# the lease (at most the lease plus one renew round, ttl / 4, if that bid is missed).
# 5 s: bench_failover's p99 for a hung leader is then about 5 s; each replica writes
# one transaction per round (ttl / 4), 48 a minute, as the 10 s lease did with two.
DEFAULT_LEASE = timedelta(seconds=5)


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    token: int
    acquired_at: datetime
    expires_at: datetime

    def held_by(self, holder: str, now: datetime) -> bool:
        return self.holder == holder and now < self.expires_at


class LeaseRecords:
    if TYPE_CHECKING:
        db: Db
        replica_stale_after: timedelta

        def now(self) -> datetime: ...
        def database_now(self) -> datetime: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]: ...

    def lease(self, name: str = LEADER) -> Lease | None:
        rows = self._rows("SELECT * FROM leases WHERE name = ?", [name])
        if not rows:
            return None
        r = rows[0]
        return Lease(r["name"], r["holder"], int(r["token"]), required_time(r["acquired_at"]),
                     required_time(r["expires_at"]))

    def take_lease(self, holder: str, ttl: timedelta = DEFAULT_LEASE,
                   name: str = LEADER) -> Lease | None:
        """Take or renew ``name`` for ``ttl``: the lease when ``holder`` has it after this
        call, None while another holder's lease runs. Taking over an expired (or
        released) lease bumps the fencing token; renewing keeps it."""
        with self.transaction():
            now = self.database_now()  # after the write lock: the server's time now
            current = self.lease(name)
            until = to_text(now + ttl)
            if current is None:
                self.db.insert("leases", {"name": name, "holder": holder, "token": 1,
                                          "acquired_at": to_text(now), "expires_at": until})
            elif current.held_by(holder, now):
                self.db.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                                [until, name, holder])
            elif now >= current.expires_at or not owner_alive(current.holder):
                # Expired, or its holder is a process on this machine that is gone (a
                # restart on one machine need not wait out the lease).
                self.db.execute(
                    "UPDATE leases SET holder = ?, token = token + 1, acquired_at = ?, "
                    "expires_at = ? WHERE name = ? AND token = ?",
                    [holder, to_text(now), until, name, current.token])
            else:
                return None
            return self.lease(name)

    def holds_lease(self, holder: str, name: str = LEADER) -> Lease | None:
        """The lease if ``holder`` holds it now (read inside a caller's transaction, this
        is the check that fences a claim), else None."""
        lease = self.lease(name)
        return lease if lease is not None and lease.held_by(holder, self.now()) else None

    def release_lease(self, holder: str, name: str = LEADER) -> None:
        """Give the lease up at shutdown: another replica takes it at once, not after TTL."""
        with self.transaction():
            self.db.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                            [to_text(self.now()), name, holder])

    # --- replicas ----------------------------------------------------------------------

    def beat(self, replica: str, *, role: str) -> None:
        """``replica`` is alive (called by every ``serve`` on each lease round)."""
        with self.transaction():
            self.db.upsert("replicas", {"id": replica, "role": role,
                                        "heartbeat_at": to_text(self.now())}, pk="id")

    def forget_replica(self, replica: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM replicas WHERE id = ?", [replica])

    def replicas(self) -> list[tuple[str, str, datetime]]:
        rows = self._rows("SELECT id, role, heartbeat_at FROM replicas ORDER BY id")
        return [(r["id"], r["role"], required_time(r["heartbeat_at"])) for r in rows]

    def holder_alive(self, owner: str | None, *, claimed_at: datetime | None = None) -> bool:
        """Is the process holding a claim still at it? A replica: while its heartbeat is
        fresh. Any other process (a CLI verb): while its pid runs."""
        if not owner:
            return False
        if self.holds_lease(owner) is not None:
            # The leader, until its lease runs out: settling its claim earlier would be
            # fenced with its own token, which cannot stop its late write.
            return owner_alive(owner)
        rows = self._rows("SELECT heartbeat_at FROM replicas WHERE id = ?", [owner])
        if rows:
            # A fresh heartbeat, and (on this machine) a live pid: a replica that hung
            # stops beating, one that died on this machine is known dead at once.
            beat = from_text(rows[0]["heartbeat_at"])
            return (beat is not None and self.now() - beat < self.replica_stale_after
                    and owner_alive(owner))
        return owner_alive(owner, claimed_at=claimed_at, now=self.now())
