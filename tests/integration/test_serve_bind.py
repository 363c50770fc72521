"""`serve` beyond loopback without a webhook token: refused at start, unless the
operator says so (``LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS=1``), and then the
log says it loudly. Real `llm-incident serve` processes."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.adapters.settings import Settings, is_loopback, unauthenticated_bind
from bot.base.errors import InputError

pytestmark = pytest.mark.integration


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
    clean |= {"LLM_INCIDENT_DB": str(tmp_path / "bot.db"),
              "LLM_INCIDENT_POLICY": str(tmp_path / "policy.yaml"), **env}
    (tmp_path / "policy.yaml").write_text("version: 1\nroutes:\n  chat: {}\n")
    return subprocess.Popen([sys.executable, "-m", "bot.adapters.cli", "serve", *args],
                            env=clean, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def until_ready_or_exit(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    """Its log up to the ready line, or to its exit (a generous deadline: a loaded box)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if not line:
                break  # it exited
            out.append(line)
            if "ready on" in line:
                break
    return "".join(out)


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_all_interfaces_without_a_token_is_refused_at_start(tmp_path):
    proc = serve(tmp_path, "--host", "0.0.0.0", "--port", "0")
    log = until_ready_or_exit(proc)
    code = stop(proc)
    assert code != 0, log
    assert "listening on 0.0.0.0 with no LLM_INCIDENT_WEBHOOK_TOKEN" in log, log
    assert "LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS=1" in log and "ready on" not in log


def test_the_explicit_flag_runs_it_and_the_log_says_so_loudly(tmp_path):
    proc = serve(tmp_path, "--host", "0.0.0.0", "--port", "0",
                 LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS="1")
    log = until_ready_or_exit(proc)
    assert stop(proc) == 0, log
    assert "ready on" in log, log
    (warning,) = [line for line in log.splitlines() if "WEBHOOKS ARE UNAUTHENTICATED" in line]
    assert " WARNING " in warning and "0.0.0.0" in warning


def test_a_token_or_loopback_starts_without_a_word(tmp_path):
    for args, env in ((("--host", "0.0.0.0"), {"LLM_INCIDENT_WEBHOOK_TOKEN": "s3cret"}),
                      ((), {})):
        proc = serve(tmp_path, *args, "--port", "0", **env)
        log = until_ready_or_exit(proc)
        assert stop(proc) == 0, log
        assert "ready on" in log and "UNAUTHENTICATED" not in log, log


def test_which_addresses_are_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "bot.internal", ""]))
    with pytest.raises(InputError, match="listening on :: with no"):
        unauthenticated_bind(Settings(), "::")
    assert unauthenticated_bind(Settings(webhook_token="t"), "0.0.0.0") is None
