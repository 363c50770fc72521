"""A drill never uses up production's guards: real CLI processes, one store.

`drill run quality_degradation --auto-respond` applies the rollback step on the
drill's sandbox (cooldown 1h on rollback_prompt for route chat); a real
quality alert on the same route right after must plan and apply that step with
no guard refusal, and the drill's runs are marked as such in every listing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

QUALITY_ALERT = {
    "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "r", "groupLabels": {},
    "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
    "alerts": [{"status": "firing", "startsAt": "2026-11-29T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "q1",
                "annotations": {"last_good_prompt_version": "v41"},
                "labels": {"alertname": "LLMQualityScoreLow", "route": "chat",
                           "severity": "warning"}}],
}


def test_after_a_drill_a_real_incident_applies_with_no_drill_guard_in_the_way(tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"prompt_version": "v42"}, "chat-small": {}}}))
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(QUALITY_ALERT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
    env |= {"LLM_INCIDENT_DB": str(tmp_path / "bot.db"), "LLM_INCIDENT_POLICY": str(policy),
            "LLM_INCIDENT_USER": "alice"}

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=300)

    drill = cli("drill", "run", "quality_degradation", "--auto-respond")
    assert drill.returncode == 0, drill.stdout[-2000:] + drill.stderr[-2000:]
    drill_runs = json.loads(cli("runs", "--json").stdout)
    assert drill_runs and all(r["scope"] == "drill" for r in drill_runs)
    assert any(r["action"] == "rollback_prompt" for r in drill_runs)

    plan = cli("plan", "quality-degradation", "--alert", str(alert), "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    run = json.loads(plan.stdout)
    assert run["state"] == "awaiting_approval" and run["scope"] == "production", run
    applied = cli("approve", run["id"], "--as", "bob", "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "refused" not in applied.stdout + applied.stderr
    assert yaml.safe_load(policy.read_text())["routes"]["chat"]["prompt_version"] == "v41"

    listing = cli("runs").stdout
    assert "[DRILL]" in listing and run["id"] in listing
