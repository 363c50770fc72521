"""Failover time with two replicas: the leader killed (or hung) -> the new leader's
first scheduled action.

Run: ``python bench/bench_failover.py [--trials 50] [--lease 10]``.

Two `llm-incident serve` replicas on one durable Postgres (started from Debian's
package, as the tests do), a real Alertmanager delivering to both, the policy-file
target. Each trial fires an alert whose playbook applies a cap automatically with
a short TTL; just before that TTL falls due, the leader is killed with SIGKILL
(odd trials: hung with SIGSTOP). The failover time is from that signal to the
TTL revert the new leader does (its ``reverted`` event in the store): the first
scheduled action after the leader is gone. Killed, the leader's pid is seen dead
at the other replica's next lease round (both run on this machine); hung, only
the lease's expiry tells, which is what replicas on separate machines see. The lease is the deployment default
(10 s) unless ``--lease`` says otherwise. Prints p50/p99/max and, per trial, the
fencing token of the replica that reverted.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from integration.replicas import (  # noqa: E402
    Cluster,
    post_alert,
    query,
    start_alertmanager,
    wait_for_state,
)
from postgres_server import PostgresServer  # noqa: E402

TTL = 3  # seconds: the cap's TTL, so each trial's revert falls due soon after the apply


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--lease", type=float, default=10.0, help="LLM_INCIDENT_LEASE_TTL, seconds")
    args = ap.parse_args()
    server = PostgresServer(durable=True)
    times: dict[str, list[float]] = {"kill": [], "stop": []}
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        work = Path(tmp)
        db = server.new_database()
        routes = [f"r{i}" for i in range(args.trials)]
        cluster = Cluster(work, db, routes, lease=args.lease, ttl=TTL)
        cluster.start(0)
        cluster.start(1)
        am = start_alertmanager(work, [cluster.url(0), cluster.url(1)])
        try:
            for trial, route in enumerate(routes):
                leader = cluster.leader()
                post_alert(am.url, route)
                if wait_for_state(db, route, "applied", timeout=30) != "applied":
                    raise SystemExit(f"trial {trial}: the cap on {route} was never applied")
                (due,) = query(db, "SELECT m.ttl_due_at FROM mitigations m JOIN runs r "
                               "ON r.id = m.run_id WHERE r.args LIKE '%%\"" + route + "\"%%'")[0]
                wait = datetime.fromisoformat(due).timestamp() - time.time() - 0.3
                time.sleep(max(0.0, wait))
                how = "kill" if trial % 2 == 0 else "stop"
                proc = cluster.procs[leader]
                assert proc is not None
                t0 = time.time()
                proc.process.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                if wait_for_state(db, route, "reverted", timeout=args.lease * 4 + 30) != "reverted":
                    raise SystemExit(f"trial {trial}: {route} was never reverted after failover")
                ((at, actor),) = query(
                    db, "SELECT e.at, e.actor FROM events e JOIN runs r ON r.id = e.run_id "
                    "WHERE e.kind = 'reverted' AND r.args LIKE '%%\"" + route + "\"%%'")
                took = datetime.fromisoformat(at).timestamp() - t0
                times[how].append(took)
                token = query(db, "SELECT token FROM leases WHERE name = 'leader'")[0][0]
                print(f"trial {trial:2d} ({how}): first scheduled action after {took:5.2f} s "
                      f"(fencing token now {token})", flush=True)
                if how == "kill":
                    proc.process.wait()
                    cluster.start(leader)
                else:
                    proc.process.send_signal(signal.SIGCONT)
        finally:
            am.stop()
            cluster.stop()
            server.stop()
    print(f"\nlease {args.lease:g} s (renewed every {args.lease / 4:g} s):")
    for how, why in (("kill", "SIGKILL: the dead pid is seen on this machine"),
                     ("stop", "SIGSTOP: hung, so only the lease expiry tells (as across hosts)")):
        took = times[how]
        if took:
            print(f"  {how} ({why}): {len(took)} failovers, p50 {statistics.median(took):.2f} s, "
                  f"p99 {percentile(took, 0.99):.2f} s, max {max(took):.2f} s, "
                  f"min {min(took):.2f} s")


if __name__ == "__main__":
    main()
