"""Replicas for tests and benches: two `serve` processes on one Postgres database,
a real Alertmanager delivering every alert to both, the policy-file target, and a
playbook whose automatic cap is reverted by its TTL.

Used by ``test_replicas_failover.py`` and ``bench/bench_failover.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from integration.services import Service, free_port, poll, require_binary, spawn

PLAYBOOK = """\
id: chaos-cap
title: Chaos cap
class: runaway_cost
severity: high
summary: Cap output on the burning route; reverted by its TTL.
match:
  any:
    - alertname: ChaosTokenBurn
params:
  route: "{{{{ labels.route }}}}"
steps:
  - id: cap
    title: Cap output length
    action: cap_output_length
    with:
      route: "{{{{ params.route }}}}"
      max_output_tokens: 64
    guard:
      approval: none
      auto: true
      allow:
        route: [{routes}]
      ttl: {ttl}s
"""


class Cluster:
    """Two replica slots (fixed ports, so Alertmanager's receivers stay valid across
    restarts), one Postgres database, one policy file."""

    def __init__(self, tmp: Path, db_url: str, routes: list[str], *, lease: float = 2.0,
                 ttl: int = 4) -> None:
        self.lease, self.ttl = lease, ttl
        self.tmp, self.db_url = tmp, db_url
        self.ports = [free_port(), free_port()]
        self.procs: list[Service | None] = [None, None]
        self.starts = 0
        playbooks = tmp / "playbooks"
        playbooks.mkdir()
        (playbooks / "chaos.yaml").write_text(PLAYBOOK.format(routes=", ".join(routes), ttl=ttl))
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(yaml.safe_dump({"version": 1, "routes": {r: {} for r in routes}}))
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
        self.env |= {"LLM_INCIDENT_DB": db_url, "LLM_INCIDENT_POLICY": str(self.policy),
                     "LLM_INCIDENT_PLAYBOOKS": str(playbooks),
                     "LLM_INCIDENT_LEASE_TTL": f"{int(lease)}s",
                     "LLM_INCIDENT_MAX_ACTIVE": "1000",
                     "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:1"}

    def url(self, slot: int) -> str:
        return f"http://127.0.0.1:{self.ports[slot]}"

    def start(self, slot: int) -> None:
        self.starts += 1
        self.procs[slot] = spawn(
            f"replica{slot}-{self.starts}",
            [sys.executable, "-m", "bot.adapters.cli", "serve", "--port", str(self.ports[slot])],
            self.tmp, self.url(slot), ready_path="/healthz", env=self.env)

    def role(self, slot: int) -> str | None:
        try:
            body = httpx.get(f"{self.url(slot)}/readyz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body.get("checks", {}).get("lease", {}).get("role")

    def leader(self) -> int:
        return poll(lambda: next((s + 1 for s in (0, 1) if self.role(s) == "leader"), None),
                    what="a leader among the replicas", timeout=30) - 1

    def stop(self) -> None:
        for proc in self.procs:
            if proc is None:
                continue
            proc.process.send_signal(signal.SIGCONT)
            proc.stop()


def post_alert(alertmanager_url: str, route: str) -> None:
    now = datetime.now(UTC)
    alert = {"labels": {"alertname": "ChaosTokenBurn", "route": route, "severity": "critical"},
             "annotations": {"summary": f"token burn on {route}"},
             "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=30)).isoformat()}
    httpx.post(f"{alertmanager_url}/api/v2/alerts", json=[alert], timeout=10).raise_for_status()


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        return conn.execute(sql).fetchall()


def start_alertmanager(tmp: Path, urls: list[str]) -> Service:
    binary = require_binary("/usr/bin/prometheus-alertmanager")
    config = {
        "route": {"receiver": "bot", "group_by": ["route"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        # Every alert to every replica: whichever is up takes it, the store dedups.
        "receivers": [{"name": "bot", "webhook_configs": [
            {"url": f"{u}/v1/alerts/alertmanager", "send_resolved": True} for u in urls]}],
    }
    work = tmp / "am"
    work.mkdir()
    (work / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return spawn("alertmanager", [
        binary, f"--config.file={work / 'alertmanager.yml'}", f"--storage.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url={url}/",
        "--cluster.listen-address=", "--log.level=warn"], work, url)


def run_state(db_url: str, route: str) -> str | None:
    """The state of the automatic cap's run on ``route`` (None: not planned yet)."""
    rows = query(db_url, "SELECT state FROM runs WHERE args LIKE '%%\"" + route + "\"%%' "
                 "ORDER BY seq DESC LIMIT 1")
    return str(rows[0][0]) if rows else None


def disrupt(cluster: Cluster, slot: int, how: str) -> None:
    """SIGKILL the replica and start it again, or hang it (SIGSTOP) past its lease and
    let it wake up (SIGCONT) with whatever it was doing half done."""
    proc = cluster.procs[slot]
    assert proc is not None
    if how == "kill":
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait()
        cluster.start(slot)
    else:
        proc.process.send_signal(signal.SIGSTOP)
        time.sleep(cluster.lease * 2)
        proc.process.send_signal(signal.SIGCONT)


def wait_for_state(db_url: str, route: str, wanted: str, timeout: float) -> str | None:
    """Poll as fast as Postgres answers until the route's run is ``wanted`` (a claim
    lasts milliseconds); the state last seen otherwise."""
    import psycopg

    deadline = time.monotonic() + timeout
    last = None
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT state FROM runs WHERE args LIKE %s ORDER BY seq DESC "
                               "LIMIT 1", [f'%"{route}"%']).fetchone()
            last = row[0] if row else None
            if last == wanted:
                return last
    return last
