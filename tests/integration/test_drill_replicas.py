"""Two `serve` processes on one store, a drill cron firing, people answering from the CLI.

Exactly one drill runs for the firing; the responders' step (ack, run, a second person's
approval) lands on the drill's sandbox, never on the production serving-policy file,
which stays byte-identical; the drill's rollback reverts it. Real processes throughout;
the drill runs 60x faster than real time (LLM_INCIDENT_DRILL_SPEED) so it fits a test.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from integration.services import free_port, poll, spawn

pytestmark = pytest.mark.integration


def test_two_serves_run_one_drill_and_responders_never_touch_production(tmp_path: Path):
    production = tmp_path / "policy.yaml"
    production.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"max_concurrency": 32}, "chat-small": {}, "chat-long": {}}}))
    before = production.read_bytes()
    db = tmp_path / "bot.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
    env |= {"LLM_INCIDENT_DB": str(db), "LLM_INCIDENT_POLICY": str(production),
            "LLM_INCIDENT_DRILL_CRON": "* * * * *", "LLM_INCIDENT_DRILL_SPEED": "60"}

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)

    assert cli("reload").returncode == 0  # the store exists before both replicas start
    serves = []
    try:
        for name in ("serve-a", "serve-b"):
            port = free_port()
            serves.append(spawn(name, [sys.executable, "-m", "bot.adapters.cli", "serve", "--port",
                                       str(port)], tmp_path, f"http://127.0.0.1:{port}",
                                ready_path="/readyz", env=env))

        def drill_incident() -> str | None:
            listed = json.loads(cli("incidents", "--json").stdout or "[]")
            return next((i["id"] for i in listed if i["is_drill"] and i["status"] == "open"),
                        None)

        incident = poll(drill_incident, what="the scheduled drill's incident", timeout=150,
                        interval=1)
        assert cli("ack", incident, "--as", "alice").returncode == 0
        planned = cli("run", incident, "--as", "alice", "--json")
        assert planned.returncode == 0, planned.stdout + planned.stderr
        run = json.loads(planned.stdout)
        assert run["scope"] == "drill" and run["target"].startswith("drill:"), run
        if run["state"] != "applied":
            approved = cli("approve", run["id"], "--as", "bob", "--apply")
            assert approved.returncode == 0, approved.stdout + approved.stderr
        assert production.read_bytes() == before

        def finished() -> list | None:
            drills = json.loads(cli("drill", "history", "--json").stdout or "[]")
            return drills if drills and all(d["status"] != "running" for d in drills) else None

        drills = poll(finished, what="the drill to finish", timeout=120, interval=1)
    finally:
        for svc in serves:
            svc.stop()
    with sqlite3.connect(db) as conn:
        firings = conn.execute("SELECT COUNT(*) FROM drill_firings "
                               "WHERE claimed_by != 'missed'").fetchone()[0]
        runs = dict(conn.execute("SELECT id, state FROM runs").fetchall())
    assert len(drills) == firings >= 1  # one drill per firing, with two replicas
    assert drills[-1]["status"] == "completed", drills[-1]
    assert runs[run["id"]] == "reverted"  # the drill's rollback undid the responders' step
    assert production.read_bytes() == before
    for svc in serves:
        assert "Traceback" not in svc.log.read_text(), svc.log_tail()
