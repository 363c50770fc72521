"""Replicas that never freeze: two real `serve` processes on a real Postgres, put
through what freezes a cluster that shares one write lock and one lease.

- another session holds the write lock past every writer's wait limit;
- the leader is stopped (SIGSTOP) inside a write transaction, holding that lock;
- Postgres crashes and restarts while a run is claimed (``applying``);
- one replica's clock runs 30 s ahead, or 30 s behind (libfaketime);
- the leader is cut off from Postgres (iptables drops its packets on the loopback)
  while it holds the write lock inside a transaction.

Each asserts what an on-call engineer needs: no change written twice to the target
(its own change log), no replica left stuck (every one answers /healthz and takes
alerts afterwards, and one leads), failover within the lease plus a quarter, and no
TTL revert before its deadline by the database's clock. The lease is 4 s (renewed
each second); Alertmanager is not needed: alerts go straight to the replicas.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from integration.chaos import (
    LEASE,
    PARTITION_HOST,
    ChaosCluster,
    assert_no_double_writes,
    assert_not_stuck,
    backend_holds_write_lock_idle,
    backend_waiting_for_write_lock,
    db_now,
    lease_row,
    partitioned,
    probe,
    require_iptables,
    stop_inside_a_transaction,
    write_lock_held,
)
from integration.replicas import query, run_state, wait_for_state
from integration.services import poll
from postgres_server import PostgresServer

pytestmark = pytest.mark.integration

QUARTER = LEASE / 4


def fire(cluster: ChaosCluster, slot: int, route: str) -> None:
    """The automatic cap's alert, posted the way Alertmanager would to one replica."""
    now = time.time()
    body = {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "bot",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{"status": "firing",
                        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                        "fingerprint": f"fp-{route}", "annotations": {},
                        "labels": {"alertname": "ChaosTokenBurn", "route": route,
                                   "severity": "critical"}}]}
    poll(lambda: httpx.post(f"{cluster.url(slot)}/v1/alerts/alertmanager", json=body,
                            timeout=15).status_code == 200,
         what=f"the {route} alert taken", timeout=30, interval=0.5)


def ttl_due(db_url: str, route: str) -> float:
    """The cap's TTL deadline (epoch seconds, as written by the store's clock)."""
    ((due,),) = query(db_url, "SELECT m.ttl_due_at FROM mitigations m JOIN runs r "
                      "ON r.id = m.run_id WHERE r.args LIKE '%%\"" + route + "\"%%'")
    return datetime.fromisoformat(due).timestamp()


def test_a_write_lock_held_past_the_wait_limit_leaves_no_replica_stuck(
        tmp_path: Path, postgres: PostgresServer):
    db = postgres.new_database()
    cluster = ChaosCluster(tmp_path, db, ["r0"], ttl=3)
    cluster.start(0)
    cluster.start(1)
    try:
        cluster.leader()
        answers: dict[int, list[int]] = {0: [], 1: []}
        stop = threading.Event()

        def hammer(slot: int) -> None:
            while not stop.is_set():
                answers[slot].append(probe(cluster.url(slot), timeout=30))

        # Longer than any wait limit, this code's (L/2 = 2 s) and the old 5 s, and than
        # the lease: nobody can write or renew meanwhile.
        with write_lock_held(db):
            threads = [threading.Thread(target=hammer, args=(s,)) for s in (0, 1)]
            for t in threads:
                t.start()
            time.sleep(6.5)
            stop.set()
        released = time.monotonic()
        for t in threads:
            t.join(timeout=60)
        # Every wait hit its limit and was refused while the lock was held...
        assert all(503 in answers[s] for s in (0, 1)), answers
        # ...and right after the release each replica takes the next alert at once.
        after = {s: probe(cluster.url(s)) for s in (0, 1)}
        took = time.monotonic() - released
        assert after == {0: 200, 1: 200}, (after, cluster.procs[0] and
                                           cluster.procs[0].log_tail())
        print(f"\nlock held 6.5 s: answers during it {answers}; both replicas took an alert "
              f"{took:.2f} s after the release")
        assert_not_stuck(cluster)
        # The scheduler works again too: the automatic cap is applied and TTL-reverted.
        fire(cluster, 0, "r0")
        assert wait_for_state(db, "r0", "reverted", timeout=30) == "reverted"
        writes = assert_no_double_writes(tmp_path)
        assert sorted(op for _, op in writes) == ["apply", "revert"]
    finally:
        cluster.stop()


def test_a_leader_stopped_inside_a_transaction_loses_the_lease_within_a_lease_and_a_quarter(
        tmp_path: Path, postgres: PostgresServer):
    db = postgres.new_database()
    cluster = ChaosCluster(tmp_path, db, ["r0"], ttl=8)
    cluster.start(0)
    cluster.start(1)
    try:
        leader = cluster.leader()
        other = 1 - leader
        fire(cluster, leader, "r0")
        assert wait_for_state(db, "r0", "applied", timeout=30) == "applied"
        _, token, _, _ = lease_row(db)
        stopped = stop_inside_a_transaction(cluster, leader)
        # The lease the stopped leader last renewed ran from (expires - lease): the
        # protocol's promise is counted from there.
        holder_before, _, _, expires_before = lease_row(db)
        assert f":{cluster.pid(leader)}:" in holder_before
        poll(lambda: cluster.holder() == other, what="the other replica taking the lease",
             timeout=LEASE * 4)
        moved = time.monotonic() - stopped
        _, new_token, acquired, _ = lease_row(db)
        assert new_token > token
        since_renewal = (acquired - (expires_before - timedelta(seconds=LEASE))).total_seconds()
        assert since_renewal <= LEASE * 1.25, since_renewal
        # The replica that is still up takes webhooks straight away.
        first = probe(cluster.url(other))
        took = time.monotonic() - stopped
        assert first == 200
        print(f"\nleader stopped inside a transaction: lease moved {moved:.2f} s after the "
              f"stop ({since_renewal:.2f} s after its last renewal); the other replica "
              f"took an alert {took:.2f} s after the stop")
        # The cap's TTL revert is the new leader's, once.
        assert wait_for_state(db, "r0", "reverted", timeout=30) == "reverted"
        cluster.signal(leader, signal.SIGCONT)
        assert_not_stuck(cluster)
        assert cluster.holder() == other  # the woken one follows; it does not fight
        assert_no_double_writes(tmp_path)
    finally:
        cluster.stop()


def test_a_postgres_crash_while_a_run_is_claimed_settles_it_once(tmp_path: Path):
    # Its own server (the crash must not hit the session's other tests), durable: a
    # crash loses no committed transaction, as on a production server.
    server = PostgresServer(durable=True)
    try:
        db = server.new_database()
        cluster = ChaosCluster(tmp_path, db, ["r0", "r1"], ttl=4)
        cluster.start(0)
        cluster.start(1)
        try:
            leader = cluster.leader()
            fire(cluster, leader, "r0")
            seen = wait_for_state(db, "r0", "applying", timeout=30)
            server.restart(down_for=1.0)
            print(f"\nPostgres crashed and restarted with r0's run {seen}")
            assert_not_stuck(cluster, within=45)
            poll(lambda: run_state(db, "r0") in ("reverted", "failed"),
                 what="r0's run settled after the crash", timeout=60)
            # And the cluster keeps acting: a second cap is applied and reverted.
            fire(cluster, 0, "r1")
            assert wait_for_state(db, "r1", "reverted", timeout=40) == "reverted"
            writes = assert_no_double_writes(tmp_path)
            state = run_state(db, "r0")
            r0 = [op for (run, op) in writes if run == _run_id(db, "r0")]
            assert (state, sorted(r0)) in (("reverted", ["apply", "revert"]), ("failed", []),
                                           ("failed", ["apply", "revert"])), (state, r0)
        finally:
            cluster.stop()
    finally:
        server.stop()


@pytest.mark.parametrize("skew", ["+30s", "-30s"])
def test_a_replica_whose_clock_is_30s_off_neither_steals_the_lease_nor_reverts_early(
        tmp_path: Path, postgres: PostgresServer, skew: str):
    db = postgres.new_database()
    cluster = ChaosCluster(tmp_path, db, ["r0"], ttl=10, skew={1: skew})
    cluster.start(0)
    assert cluster.leader() == 0
    cluster.start(1)
    try:
        # A live leader keeps its lease: the skewed replica never takes it.
        _, token, _, _ = lease_row(db)
        deadline = time.monotonic() + LEASE * 2.5
        while time.monotonic() < deadline:
            assert cluster.holder() == 0 and lease_row(db)[1] == token
            time.sleep(0.2)
        fire(cluster, 0, "r0")
        assert wait_for_state(db, "r0", "applied", timeout=30) == "applied"
        due = ttl_due(db, "r0")
        # The leader hangs; the skewed replica takes over within the lease and a quarter
        # by the database's clock, and reverts the cap when its TTL ends, not before.
        cluster.signal(0, signal.SIGSTOP)
        stopped = time.monotonic()
        poll(lambda: cluster.holder() == 1, what="the skewed replica taking over",
             timeout=LEASE * 4)
        moved = time.monotonic() - stopped
        assert moved <= LEASE * 1.25 + QUARTER, moved
        while db_now(db).timestamp() < due - 0.3:
            assert run_state(db, "r0") == "applied", "reverted before its TTL by the database"
            time.sleep(0.1)
        assert wait_for_state(db, "r0", "reverted", timeout=LEASE * 3) == "reverted"
        late = db_now(db).timestamp() - due
        print(f"\nclock {skew}: the skewed replica took over {moved:.2f} s after the leader "
              f"hung; the cap was reverted at most {late:.2f} s after its TTL")
        cluster.signal(0, signal.SIGCONT)
        assert_not_stuck(cluster)
        assert_no_double_writes(tmp_path)
        # Ready (it works on the database's clock), and it says how far off it is.
        ready = httpx.get(f"{cluster.url(1)}/readyz", timeout=10).json()
        clock = ready["checks"].get("clock", {})
        assert ready["ready"] and abs(abs(clock.get("offset_seconds", 0)) - 30) < 2, ready
        assert "the database's; the bot uses" in (tmp_path / "replica1-2.log").read_text()
    finally:
        cluster.stop()


def _run_id(db_url: str, route: str) -> str:
    rows = query(db_url, "SELECT id FROM runs WHERE args LIKE '%%\"" + route + "\"%%'")
    return str(rows[0][0])


def test_a_leader_partitioned_from_postgres_inside_a_transaction_is_replaced_in_time(
        tmp_path: Path):
    require_iptables()
    # Its own server, also listening on a second loopback address: the leader reaches
    # it there, and only that address is cut off.
    server = PostgresServer(listen=f"127.0.0.1,{PARTITION_HOST}")
    try:
        db = server.new_database()
        cluster = ChaosCluster(tmp_path, db, ["r0"], ttl=8,
                               db_urls={0: db.replace("127.0.0.1", PARTITION_HOST)})
        cluster.start(0)
        assert cluster.leader() == 0
        cluster.start(1)
        try:
            fire(cluster, 0, "r0")
            assert wait_for_state(db, "r0", "applied", timeout=30) == "applied"
            _, token, _, _ = lease_row(db)
            cut = partitioned(server.port)
            # As with SIGSTOP: the leader's next lease round waits for the lock inside
            # its transaction; the partition falls then, and the lock is handed to it.
            with write_lock_held(db):
                backend = poll(lambda: backend_waiting_for_write_lock(db, cluster.pid(0)),
                               what="the leader waiting for the write lock", timeout=15,
                               interval=0.02)
                cut.__enter__()
                started = time.monotonic()
            try:
                poll(lambda: backend_holds_write_lock_idle(db, backend),
                     what="the partitioned leader's transaction holding the lock", timeout=5,
                     interval=0.01)
                _, _, _, expires_before = lease_row(db)
                poll(lambda: cluster.holder() == 1, what="the other replica taking the lease",
                     timeout=LEASE * 4)
                moved = time.monotonic() - started
                _, new_token, acquired, _ = lease_row(db)
                since = (acquired - (expires_before - timedelta(seconds=LEASE))).total_seconds()
                assert new_token > token and since <= LEASE * 1.25, (new_token, since)
                assert probe(cluster.url(1)) == 200
                assert wait_for_state(db, "r0", "reverted", timeout=30) == "reverted"
                print(f"\nleader partitioned inside a transaction: lease moved {moved:.2f} s "
                      f"after the cut ({since:.2f} s after its last renewal)")
            finally:
                cut.__exit__(None, None, None)
            # Healed: the cut-off replica reconnects and follows; nothing was doubled.
            assert_not_stuck(cluster, within=60)
            assert cluster.holder() == 1
            assert_no_double_writes(tmp_path)
        finally:
            cluster.stop()
    finally:
        server.stop()
