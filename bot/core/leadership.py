"""Which replica leads, and on what authority a change is made.

Every ``serve`` process runs a ``Leadership``: each round it beats (the replica
is alive) and takes or renews the leader lease in the store (``bot/store/leases.py``).
The leader runs the scheduler's work (TTL reverts, verification deadlines,
approval expiry, reminders, drills) and automatic steps; the others take
webhooks and Slack requests and leave that work to it. With one replica (the
SQLite default) that replica simply leads.

``authority`` is read inside a claim's transaction: an automatic move needs this
process to hold the lease right then (a leader paused past its lease finds it
gone and stops), and every move carries the lease's current fencing token to the
target (``actions.fencing``), which refuses a lower token than it has seen.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from actions.fencing import Fence
from bot.base.claims import this_process
from bot.base.errors import Conflict
from bot.store import Store
from bot.store.leases import DEFAULT_LEASE, LEADER
from bot.store.records import utc_now

log = logging.getLogger(__name__)


class NotLeader(Conflict):
    """An automatic move by a process that does not hold the leader lease now."""


def authority(store: Store, leader_id: str | None, *, automatic: bool, run_id: str,
              op: str) -> Fence | None:
    """The fence for a move of ``run_id``; call it in the claim's transaction."""
    lease = store.lease(LEADER)
    if automatic and leader_id is not None and (
            lease is None or not lease.held_by(leader_id, store.now())):
        holder = lease.holder if lease else "nobody"
        raise NotLeader(f"{run_id}: an automatic {op} is the leader's, and this replica does "
                        f"not hold the lease now (held by {holder})",
                        hint="nothing was changed; the leader does it")
    return Fence(lease.token, run_id, op) if lease is not None else None


class Leadership:
    """This process's part in the lease: ``renew()`` every ``ttl / 4``."""

    def __init__(self, store: Store, *, ttl: timedelta = DEFAULT_LEASE,
                 holder: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.holder = holder or this_process()
        self.token: int | None = None
        # Local deadline (monotonic): past it, this process stops acting as the leader
        # even if it could not reach the store to learn it lost the lease.
        self._lead_until = 0.0
        # When the lease we last saw another replica hold runs out (this machine's
        # monotonic clock): a follower bids right then, not a round later.
        self.bid_at: float | None = None
        # Claims go stale after the lease, and every store transaction is bounded by it.
        store.set_lease(ttl)

    @property
    def renew_every(self) -> float:
        return self.ttl.total_seconds() / 4

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self._lead_until

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "follower"

    def renew(self) -> bool:
        """Take or renew the lease and beat, in one transaction; True while this
        process leads."""
        started = time.monotonic()
        was = self.is_leader
        try:
            with self.store.transaction():
                lease = self.store.take_lease(self.holder, self.ttl)
                self.store.beat(self.holder, role="leader" if lease else "follower")
                current = None if lease else self.store.lease()
                offset = self.store.clock_offset
        except Exception:  # noqa: BLE001 - the store is down: lead on our deadline, retry
            # Not zeroed: the lease renewed at ``started`` of the last good round runs
            # until then plus the ttl, by the database's clock, and nobody can take it
            # before; ``is_leader`` stops us a quarter of the lease earlier than that.
            log.exception("leader lease: could not reach the store; %s",
                          f"leading for {self._lead_until - time.monotonic():.1f} s more "
                          "at most" if self.is_leader else "not leading until it can")
            return self.is_leader
        self.bid_at = None
        if lease is None:
            self._lead_until = 0.0
            if current is not None:
                # The database's expiry on this machine's monotonic clock.
                left = (current.expires_at - offset - utc_now()).total_seconds()
                self.bid_at = time.monotonic() + max(0.0, left)
        else:
            # Lead for less than the lease: the lease runs from a moment after
            # ``started`` (its row was written later, by the database's clock) for the
            # ttl; stopping a quarter earlier covers a missed round, the time this
            # round took, and clock rate drift. The store's lease check is the fence.
            self._lead_until = started + self.ttl.total_seconds() * 3 / 4
            self.token = lease.token
        if self.is_leader != was:
            log.warning("this replica (%s) is now the %s%s", self.holder, self.role,
                        f" (fencing token {self.token})" if self.is_leader else "")
        return self.is_leader

    def release(self) -> None:
        """At shutdown: hand the lease over at once, and stop counting as a replica."""
        self._lead_until = 0.0
        try:
            self.store.release_lease(self.holder)
            self.store.forget_replica(self.holder)
        except Exception:  # noqa: BLE001 - best effort: the lease expires anyway
            log.exception("could not release the leader lease; it expires on its own")
