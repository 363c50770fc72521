"""Store transactions that always end, on a real Postgres: the write lock's wait, a
statement and idle time inside a transaction are bounded by the lease; a failed
wait rolls back and the next write works; a broken connection is replaced; times
come from the database's clock; /healthz's judgement of stuck writes.

The real-process versions (two `serve` replicas) are in
``tests/integration/test_replicas_chaos.py``.
"""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from postgres_server import PostgresServer

from bot.base.errors import StoreError
from bot.store import Store
from bot.store.backend import WRITE_LOCK_KEY, Limits
from bot.store.health import WriteHealth

LEASE = timedelta(seconds=4)


def test_the_limits_follow_the_lease():
    default = Limits.for_lease(timedelta(seconds=5))
    assert (default.idle_in_transaction_ms, default.lock_wait_ms, default.statement_ms) == \
        (1250, 2500, 3500)
    long = Limits.for_lease(timedelta(seconds=60))
    assert (long.idle_in_transaction_ms, long.lock_wait_ms) == (15000, 30000)
    # A tiny lease keeps workable floors; the lock wait always outlasts the idle cut.
    tiny = Limits.for_lease(timedelta(seconds=1))
    assert tiny.idle_in_transaction_ms == 1000 and tiny.lock_wait_ms == 2000


def test_a_lock_wait_past_the_limit_rolls_back_and_the_next_write_works(
        postgres: PostgresServer):
    url = postgres.new_database()
    store = Store(url)
    store.set_lease(LEASE)
    try:
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", [WRITE_LOCK_KEY])
            started = time.monotonic()
            with pytest.raises(StoreError, match="lock timeout"):
                store.set_flag("probe", "1", actor="t")
            waited = time.monotonic() - started
            other.execute("SELECT pg_advisory_unlock(%s)", [WRITE_LOCK_KEY])
        assert waited < 10  # bounded by the lease (2 s here), never the old forever
        assert not store.db.in_transaction
        store.set_flag("probe", "2", actor="t")  # the old code: InFailedSqlTransaction
        assert store.flag("probe").value == "2"
        assert store.write_problem() is None
    finally:
        store.close()


def test_a_session_idle_inside_a_transaction_is_cut_off_and_the_lock_freed(
        postgres: PostgresServer):
    url = postgres.new_database()
    stalled, other = Store(url), Store(url)
    for s in (stalled, other):
        s.set_lease(LEASE)
    try:
        # A writer that stops between two statements while holding the write lock.
        stalled.db.begin_write()
        time.sleep(1.5)  # past the idle limit (1 s for a 4 s lease)
        other.set_flag("after", "yes", actor="t")  # the lock was freed by the server
        with pytest.raises(psycopg.Error):
            stalled.db.execute("SELECT 1")
        stalled._rollback()
        # The broken connection is replaced at the next write.
        stalled.set_flag("again", "yes", actor="t")
        assert stalled.flag("again").value == "yes"
    finally:
        stalled.close()
        other.close()


def test_the_database_clock_is_used_when_asked(postgres: PostgresServer):
    url = postgres.new_database()
    store = Store(url, database_clock=True)
    try:
        server = store.database_now()
        assert abs((store.now() - server).total_seconds()) < 1
        # Pretend this machine's clock is 30 s behind: the store's time does not move.
        store.db.clock_offset = timedelta(seconds=30)
        assert store.check_clock() is not None and "behind" in store.check_clock()
        assert store.local_time(store.now()) < store.now()
        lease = store.take_lease("a", LEASE)  # re-measures the offset inside the lease
        assert lease is not None and abs(store.clock_offset.total_seconds()) < 1
        assert store.check_clock() is None
    finally:
        store.close()


def test_healthz_judges_stuck_and_failing_writes():
    health = WriteHealth()
    assert health.problem(stuck_after=15, failing_after=30) is None
    health.failed("lock timeout")
    health.failing_since = time.monotonic() - 31
    assert "every store write for 31 s failed" in \
        (health.problem(stuck_after=15, failing_after=30) or "")
    health.ok()
    assert health.problem(stuck_after=15, failing_after=30) is None
    health.started()
    health.running_since = time.monotonic() - 16
    assert "has been running for 16 s" in (health.problem(stuck_after=15, failing_after=30)
                                           or "")
