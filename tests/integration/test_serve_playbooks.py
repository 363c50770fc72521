"""`llm-incident serve` as a real process with a broken playbook directory: it starts on
the last good set, says so in /readyz and its log, and reloads on a change or SIGHUP."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from integration.services import free_port, poll, spawn

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "playbooks"


def _break(path: Path) -> None:
    path.write_text(path.read_text() + "\nsummary: [unclosed\n")


def test_serve_starts_on_the_last_good_set_and_reloads(tmp_path: Path) -> None:
    playbooks = tmp_path / "playbooks"
    shutil.copytree(SHIPPED, playbooks)
    base = [sys.executable, "-m", "bot.adapters.cli", "--db", str(tmp_path / "bot.db"),
            "--playbooks", str(playbooks), "--policy", str(tmp_path / "policy.yaml")]
    # A clean load first (it creates the store): the store keeps this set as the last good one.
    subprocess.run([*base, "reload"], check=True, capture_output=True, cwd=tmp_path)
    _break(playbooks / "latency-spike.yaml")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    svc = spawn("serve", [*base, "serve", "--port", str(port)], tmp_path, url,
                ready_path="/readyz")
    try:
        def checks() -> dict:
            body = httpx.get(f"{url}/readyz", timeout=5).json()
            assert body["ready"] is True, body
            return body["checks"]["playbooks"]

        first = checks()
        assert first["degraded"] is True and "latency-spike.yaml" in first["detail"]
        assert "8 in force from the last good set stored" in first["detail"]
        assert "PLAYBOOKS DO NOT LOAD" in svc.log.read_text()

        # The fix lands: the watcher reloads without a restart.
        shutil.copy(SHIPPED / "latency-spike.yaml", playbooks / "latency-spike.yaml")
        poll(lambda: not checks().get("degraded"), what="the fixed directory to be reloaded",
             timeout=30)
        assert checks()["detail"] == "8 loaded"

        # A bad edit again, then SIGHUP: refused, the good set stays in force.
        _break(playbooks / "runaway-cost.yaml")
        svc.process.send_signal(signal.SIGHUP)
        poll(lambda: checks().get("degraded"), what="the refused reload to show", timeout=30)
        assert httpx.get(f"{url}/readyz", timeout=5).json()["playbooks"] == 8
        log = svc.log.read_text()
        assert "playbook reload refused" in log and "runaway-cost.yaml" in log
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'llm_incident_playbook_reloads_total{result="ok"}' in metrics
    finally:
        svc.stop()
    assert svc.process.returncode == 0, svc.log_tail()
    assert "Traceback" not in svc.log.read_text()
