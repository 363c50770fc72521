"""Failover time with two replicas: the leader killed, hung, or hung inside a write
transaction -> the new leader's first scheduled action.

Run: ``python bench/bench_failover.py [--trials 50] [--lease 4]
[--modes kill,stop,stop-txn,partition]`` (``partition`` needs root and iptables).

Two `llm-incident serve` replicas on one durable Postgres (started from Debian's
package, as the tests do), the policy-file target. Each trial fires an alert whose
playbook applies a cap automatically with a short TTL; just before that TTL falls
due, the leader is disrupted, the modes in turn: ``kill`` (SIGKILL), ``stop``
(SIGSTOP), ``stop-txn`` (SIGSTOP while it holds the store's write lock inside a
transaction: another session holds the lock until the leader's next lease round
waits on it, then hands it over; see ``tests/integration/chaos.py``), ``partition``
(the same moment, but the leader's packets to Postgres are dropped on the loopback:
each replica reaches the database by an address of its own). The failover
time is from that signal to the TTL revert the new leader does (its ``reverted``
event in the store): the first scheduled action after the leader is gone. Killed,
the leader's pid is seen dead at the other replica's next lease round (both run on
this machine); hung, only the lease's expiry tells, which is what replicas on
separate machines see; hung inside a transaction, the server also has to cut its
session (``idle_in_transaction_session_timeout``) before anyone can write. The
lease is the deployment default unless ``--lease`` says otherwise. Prints
p50/p99/max per mode and, per trial, the fencing token afterwards.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from integration.chaos import (  # noqa: E402
    ChaosCluster,
    backend_holds_write_lock_idle,
    backend_waiting_for_write_lock,
    partitioned,
    stop_inside_a_transaction,
    write_lock_held,
)
from integration.replicas import (  # noqa: E402
    post_alert,
    query,
    run_state,
    start_alertmanager,
    wait_for_state,
)
from integration.services import poll  # noqa: E402
from postgres_server import PostgresServer  # noqa: E402

from bot.adapters.settings import Settings  # noqa: E402

TTL = 3  # seconds: the cap's TTL, so each trial's revert falls due soon after the apply


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50, help="per mode")
    default_lease = Settings().lease_ttl.total_seconds()
    ap.add_argument("--lease", type=float, default=default_lease,
                    help=f"LLM_INCIDENT_LEASE_TTL, seconds (default {default_lease:g})")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    hosts = {0: "127.0.0.2", 1: "127.0.0.3"}  # each replica's own way to the database
    server = PostgresServer(durable=True, listen=",".join(["127.0.0.1", *hosts.values()]))
    times: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        db = server.new_database()
        plan = [modes[i % len(modes)] for i in range(args.trials * len(modes))]
        routes = [f"r{i}" for i in range(len(plan))]
        cluster = ChaosCluster(work, db, routes, lease=args.lease, ttl=TTL, db_urls={
            slot: db.replace("127.0.0.1", host) for slot, host in hosts.items()})
        cluster.env["LLM_INCIDENT_POLL_INTERVAL"] = "15s"  # the deployment default
        cluster.start(0)
        cluster.start(1)
        am = start_alertmanager(work, [cluster.url(0), cluster.url(1)])
        try:
            for trial, (how, route) in enumerate(zip(plan, routes, strict=True)):
                took = trial_once(cluster, am.url, db, route, how, args.lease,
                                  cut=lambda slot: partitioned(server.port, hosts[slot]))
                if took is None:
                    print(f"trial {trial:3d} ({how}): the TTL fell due before the leader "
                          "stopped; not counted", flush=True)
                    continue
                times[how].append(took)
                token = query(db, "SELECT token FROM leases WHERE name = 'leader'")[0][0]
                print(f"trial {trial:3d} ({how}): first scheduled action after {took:5.2f} s "
                      f"(fencing token now {token})", flush=True)
        finally:
            am.stop()
            cluster.stop()
            server.stop()
    print(f"\nlease {args.lease:g} s (renewed every {args.lease / 4:g} s):")
    for how in modes:
        took = times[how]
        if took:
            print(f"  {how} ({MODES[how]}): {len(took)} failovers, p50 "
                  f"{statistics.median(took):.2f} s, p99 {percentile(took, 0.99):.2f} s, "
                  f"max {max(took):.2f} s, min {min(took):.2f} s")


MODES = {"kill": "SIGKILL: the dead pid is seen on this machine",
         "stop": "SIGSTOP: hung, so only the lease expiry tells (as across hosts)",
         "stop-txn": "SIGSTOP inside a write transaction, holding the write lock",
         "partition": "cut off from Postgres inside a write transaction"}


def trial_once(cluster: ChaosCluster, am_url: str, db: str, route: str, how: str,
               lease: float, *, cut: Callable[[int], AbstractContextManager[None]],
               ) -> float | None:
    """One disruption of the leader; seconds to the new leader's TTL revert."""
    leader = cluster.leader()
    post_alert(am_url, route)
    if wait_for_state(db, route, "applied", timeout=30) != "applied":
        raise SystemExit(f"the cap on {route} was never applied")
    (due,) = query(db, "SELECT m.ttl_due_at FROM mitigations m JOIN runs r "
                   "ON r.id = m.run_id WHERE r.args LIKE '%%\"" + route + "\"%%'")[0]
    # stop-txn needs up to a lease round to catch the leader inside a transaction.
    early = 0.3 + (lease / 4 + 0.5 if how in ("stop-txn", "partition") else 0.0)
    time.sleep(max(0.0, datetime.fromisoformat(due).timestamp() - time.time() - early))
    partition = None
    if how == "stop-txn":
        stop_inside_a_transaction(cluster, leader)
        t0 = time.time()
    elif how == "partition":
        partition = cut(leader)
        with write_lock_held(db):
            backend = poll(lambda: backend_waiting_for_write_lock(db, cluster.pid(leader)),
                           what="the leader waiting for the write lock", timeout=15,
                           interval=0.02)
            partition.__enter__()
            t0 = time.time()
        poll(lambda: backend_holds_write_lock_idle(db, backend), timeout=5, interval=0.01,
             what="the partitioned leader inside a transaction")
    else:
        t0 = time.time()
        cluster.signal(leader, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    early_revert = run_state(db, route) != "applied"  # the old leader got to it first
    try:
        if wait_for_state(db, route, "reverted", timeout=lease * 4 + 30) != "reverted":
            raise SystemExit(f"{route} was never reverted after failover")
    finally:
        if partition is not None:
            partition.__exit__(None, None, None)
    ((at,),) = query(db, "SELECT e.at FROM events e JOIN runs r ON r.id = e.run_id "
                     "WHERE e.kind = 'reverted' AND r.args LIKE '%%\"" + route + "\"%%'")
    proc = cluster.procs[leader]
    assert proc is not None
    if how == "kill":
        proc.process.wait()
        cluster.start(leader)
    elif how != "partition":
        cluster.signal(leader, signal.SIGCONT)
    if early_revert:
        return None
    return float(datetime.fromisoformat(at).timestamp() - t0)


if __name__ == "__main__":
    main()
