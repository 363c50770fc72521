"""Two `serve` replicas on one real Postgres, a real Alertmanager delivering every
alert to both, and the policy-file target: the leader is killed (SIGKILL) or hung
(SIGSTOP, then SIGCONT) trial after trial, aimed at the moment a run is being
applied, the moment its TTL revert runs, or a random moment around both.

Afterwards, read from the target's own change log (``policy.yaml.changes``, one
line per write, with run id and fencing token) and from the store: 0 lost
alerts, 0 duplicate incidents, 0 double applies or reverts, every due TTL revert
done exactly once, and the policy file holding what the store says.

``LLM_INCIDENT_TEST_FAILOVERS`` trials (6 in CI, one of each kind; the session
note quotes a run of 50). ``bench/bench_failover.py`` measures failover time.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from integration.replicas import (
    Cluster,
    disrupt,
    post_alert,
    query,
    start_alertmanager,
    wait_for_state,
)
from integration.services import poll
from postgres_server import PostgresServer

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("LLM_INCIDENT_TEST_FAILOVERS", "6"))
# (signal, aimed at): the claim states are where a double action would come from.
KINDS = [("kill", "applying"), ("stop", "applying"), ("kill", "reverting"),
         ("stop", "reverting"), ("kill", None), ("stop", None)]


def test_leader_killed_or_hung_around_apply_and_revert_never_doubles_an_action(
        tmp_path: Path, postgres: PostgresServer):
    rng = random.Random(int(os.environ.get("LLM_INCIDENT_TEST_SEED", "1006")))
    routes = [f"r{i}" for i in range(TRIALS)]
    db_url = postgres.new_database()
    cluster = Cluster(tmp_path, db_url, routes)
    cluster.start(0)
    cluster.start(1)
    am = start_alertmanager(tmp_path, [cluster.url(0), cluster.url(1)])
    caught: Counter[str] = Counter()
    try:
        for trial, route in enumerate(routes):
            how, aim = KINDS[trial % len(KINDS)]
            leader = cluster.leader()
            post_alert(am.url, route)
            if aim is None:
                time.sleep(rng.uniform(0.0, cluster.ttl + 1.5))
                seen = wait_for_state(db_url, route, "-", timeout=0.01)
            else:
                seen = wait_for_state(db_url, route, aim, timeout=cluster.ttl + 10)
            disrupt(cluster, leader, how)
            caught[f"{how} at {seen}"] += 1
        # Everything settles: each run is reverted by its TTL, or failed (its leader
        # died after the claim and before the write: the new leader found nothing to
        # undo). Nothing stays applying, reverting or applied.
        poll(lambda: query(db_url, "SELECT COUNT(*) FROM runs WHERE state IN "
                           "('reverted', 'failed')") == [(TRIALS,)],
             what=f"{TRIALS} runs settled", timeout=60 + TRIALS * 5)
        # The leader says so, with the lease's token; the other says it follows.
        leader = cluster.leader()
        token = query(db_url, "SELECT token FROM leases WHERE name = 'leader'")[0][0]
        metrics = httpx.get(f"{cluster.url(leader)}/metrics", timeout=5).text
        assert f"llm_incident_fencing_token {float(token)}" in metrics, metrics[-2000:]
        assert "llm_incident_store_up 1.0" in metrics  # the store's families read on Postgres
        assert re.search(r'llm_incident_leader\{replica="[^"]+"\} 1\.0', metrics)
        other = httpx.get(f"{cluster.url(1 - leader)}/readyz", timeout=5).json()
        assert other["ready"] and other["checks"]["lease"]["role"] == "follower"
    finally:
        am.stop()
        cluster.stop()

    stored = {r for (r,) in query(db_url, "SELECT labels::json->>'route' FROM alerts")}
    assert stored == set(routes)  # 0 lost alerts
    pairs = query(db_url, "SELECT DISTINCT i.id, a.labels::json->>'route' FROM incidents i "
                  "JOIN alerts a ON a.incident_id = i.id")
    per_route = Counter(route for _, route in pairs)
    assert len(per_route) == TRIALS and set(per_route.values()) == {1}  # 0 duplicates
    assert len(query(db_url, "SELECT id FROM incidents")) == TRIALS
    states = dict(query(db_url, "SELECT id, state FROM runs"))
    assert len(states) == TRIALS  # one automatic run per incident, never a second

    # The target's own log: per run at most one apply and one revert; a run that is
    # reverted was applied once and reverted once (its due TTL revert, exactly once);
    # a failed run left the target as it found it.
    log = [json.loads(line) for line in (tmp_path / "policy.yaml.changes").read_text()
           .splitlines()]
    writes = Counter((e["run"], e["op"]) for e in log if e["op"] != "fence")
    doubled = {k: n for k, n in writes.items() if n != 1}
    assert not doubled, f"a change written more than once: {doubled}"
    for run, state in states.items():
        applied, reverted = writes[(run, "apply")], writes[(run, "revert")]
        if state == "reverted":
            assert (applied, reverted) == (1, 1), (run, state, applied, reverted)
        else:
            assert state == "failed" and applied == reverted, (run, state, applied, reverted)
    failed = sum(1 for s in states.values() if s == "failed")
    assert failed <= sum(n for k, n in caught.items() if k.endswith("at applying"))
    tokens = [e["token"] for e in log]
    assert tokens == sorted(tokens)  # a deposed leader never wrote after a newer one
    # Consistent with the store: every cap reverted, nothing left capped.
    policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    assert all(not v.get("max_output_tokens") for v in policy["routes"].values()), policy
    assert query(db_url, "SELECT COUNT(*) FROM mitigations WHERE reverted_at IS NULL") == [(0,)]
    print(f"\nfailover trials: {dict(caught)}; runs: {dict(Counter(states.values()))}; "
          f"target writes: {len(log)} "
          f"({dict(Counter(e['op'] for e in log))}); fencing tokens: {sorted(set(tokens))}")
    assert sum(caught.values()) == TRIALS
    assert len(set(tokens)) > 1  # failover happened for real: several leaders wrote
