"""`serve` pages through a stub of PagerDuty's Events API v2, exactly once, across a
throttled service, a kill -9 and a restart; acknowledging and resolving from the CLI
acknowledge and resolve the page; a drill's incident never pages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from integration.services import Service, free_port, poll, spawn
from pagerduty_stub import PagerDutyStub, serve_stub

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef0123456789abcdef"


def alertmanager(fingerprint: str, severity: str = "critical") -> dict:
    return {"version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "bot",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
            "alerts": [{"status": "firing", "startsAt": "2026-12-06T10:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                        "fingerprint": fingerprint, "annotations": {},
                        "labels": {"alertname": "LLMProviderErrorRateHigh", "route": "chat",
                                   "severity": severity}}]}


def env_for(tmp: Path, stub: PagerDutyStub) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
    return env | {"LLM_INCIDENT_DB": str(tmp / "bot.db"),
                  "LLM_INCIDENT_POLICY": str(tmp / "policy.yaml"),
                  "LLM_INCIDENT_PAGERDUTY_ROUTING_KEY": KEY,
                  "LLM_INCIDENT_PAGERDUTY_URL": stub.url,
                  "LLM_INCIDENT_PAGE_UNACKED": "critical=2s,high=2s",
                  "LLM_INCIDENT_POLL_INTERVAL": "1s",
                  "LLM_INCIDENT_CONSOLE_URL": "https://incidents.example",
                  "LLM_INCIDENT_USER": "alice"}


def serve(tmp: Path, env: dict[str, str]) -> Service:
    port = free_port()
    return spawn("serve", [sys.executable, "-m", "bot.adapters.cli", "serve", "--port",
                           str(port)], tmp, f"http://127.0.0.1:{port}", ready_path="/healthz",
                 env=env)


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_pages_once_through_throttling_and_a_kill_and_the_page_follows(tmp_path):
    stub = PagerDutyStub()
    server, _ = serve_stub(stub)
    env = env_for(tmp_path, stub)
    stub.fail_next(2, 429)  # the first two sends are throttled
    bot = serve(tmp_path, env)
    try:
        resp = httpx.post(f"{bot.url}/v1/alerts/alertmanager", json=alertmanager("fp-1"),
                          timeout=10)
        assert resp.status_code == 200, resp.text
        key = "llm-incident/INC-1"
        poll(lambda: stub.actions(key) == ["trigger"], timeout=30, what="the trigger")
        assert stub.refused == 2  # retried with backoff until PagerDuty took it
        trigger = stub.events[0]
        assert trigger["links"][0]["href"] == "https://incidents.example/ui/incidents/INC-1"
        # Killed hard, then started again: the page is in the store; nothing resends it.
        bot.process.send_signal(signal.SIGKILL)
        bot.process.wait(timeout=10)
        bot = serve(tmp_path, env)
        assert cli(env, "ack", "INC-1").returncode == 0
        poll(lambda: stub.alerts.get(key) == "acknowledged", timeout=30, what="the ack")
        assert cli(env, "resolve", "INC-1", "--reason", "fixed").returncode == 0
        poll(lambda: stub.alerts.get(key) == "resolved", timeout=30, what="the resolve")
        assert stub.actions(key) == ["trigger", "acknowledge", "resolve"]
        assert stub.opened == 1
    finally:
        bot.stop()
        server.shutdown()


def test_a_drill_incident_never_pages(tmp_path):
    stub = PagerDutyStub()
    server, _ = serve_stub(stub)
    env = env_for(tmp_path, stub) | {"LLM_INCIDENT_DRILL_SPEED": "30"}
    try:
        ran = cli(env, "drill", "run", "provider-errors", "--auto-respond")
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "DRILL-1" in ran.stdout
        # The drill's incident stayed open for well over the 2 s limit, and a tick
        # applies the rules now: still nothing pages.
        assert cli(env, "tick").returncode == 0
        assert stub.events == [] and stub.opened == 0
    finally:
        server.shutdown()
