"""What the CLI changes reaches Slack while `serve` runs, and a held message shows the
state at send time (issue 25).

`serve` is a real process against the Slack Web API stub; the CLI verbs are
subprocesses on the same SQLite store. The CLI has no notifier: it queues the
message in its change's transaction and `serve` delivers it (once).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from integration.services import Service, free_port, poll, spawn
from integration.test_serve_core import post, provider_alert
from slack_webapi_stub import StubCall, WebApiStub

pytestmark = pytest.mark.integration

CHANNEL = "C0INC"
DELIVERED_WITHIN = 2.0  # seconds from the CLI's commit to Slack's chat.update (issue 25)


def _env(tmp: Path, api: WebApiStub, db: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
    return env | {"LLM_INCIDENT_DB": db or str(tmp / "bot.db"),
                  "LLM_INCIDENT_POLICY": str(tmp / "policy.yaml"),
                  "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:1",
                  "SLACK_BOT_TOKEN": "xoxb-test", "LLM_INCIDENT_SLACK_CHANNEL": CHANNEL,
                  "LLM_INCIDENT_SLACK_API_URL": f"http://127.0.0.1:{api.port}/api/"}


def _serve(tmp: Path, api: WebApiStub, name: str, db: str | None = None) -> Service:
    port = free_port()
    return spawn(name, [sys.executable, "-m", "bot.adapters.cli", "serve", "--port", str(port)],
                 tmp, f"http://127.0.0.1:{port}", ready_path="/healthz",
                 env=_env(tmp, api, db))


def _cli(tmp: Path, api: WebApiStub, *args: str, db: str | None = None) -> str:
    env = _env(tmp, api, db) | {"LLM_INCIDENT_USER": "alice"}
    done = subprocess.run([sys.executable, "-m", "bot.adapters.cli", *args], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rows(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    if str(db).startswith("postgresql"):
        import psycopg

        with psycopg.connect(str(db)) as pg:
            return pg.execute(sql).fetchall()
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql).fetchall()


def _updates(api: WebApiStub, after: float = 0.0) -> list[StubCall]:
    return [c for c in api.calls_of("chat.update") if c.time > after]


def _settled(api: WebApiStub, db: Path | str, quiet: float = 3.0) -> None:
    """Wait until serve has nothing left for Slack and the stub heard nothing for ``quiet``
    seconds (past the notifier's coalescing window)."""
    def quiet_now() -> bool:
        pending = _rows(db, "SELECT COUNT(*) FROM chat_deliveries WHERE delivered_at IS NULL")
        last = max((c.time for c in api.calls), default=0.0)
        return pending == [(0,)] and time.time() - last > quiet
    poll(quiet_now, what="Slack deliveries settled", timeout=60, interval=0.2)


def _opened(db: Path | str, api: WebApiStub, bot: Service) -> str:
    assert post(bot.url, provider_alert("deliver-1")).status_code == 200
    poll(lambda: api.calls_of("chat.postMessage"), what="the incident's top message", timeout=60)
    (inc,) = [i for (i,) in _rows(db, "SELECT id FROM incidents")]
    return str(inc)


def _resolved_at(db: Path | str, inc: str) -> float:
    (at,) = _rows(db, "SELECT at FROM events WHERE incident_id = ? AND kind = 'status' "
                      "AND data LIKE '%\"to\": \"resolved\"%'".replace("?", f"'{inc}'"))[0]
    return datetime.fromisoformat(at).timestamp()


def _policy(tmp: Path) -> None:
    (tmp / "policy.yaml").write_text(
        "version: 1\nroutes: {chat: {}, chat-long: {}, chat-small: {}}\n")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_cli_resolve_reaches_the_slack_message_while_serve_runs(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest):
    _policy(tmp_path)
    # Postgres: the CLI's commit NOTIFYs the leader; SQLite: serve's look every 0.5 s.
    db: Path | str = request.getfixturevalue("postgres").new_database() \
        if backend == "postgres" else tmp_path / "bot.db"
    url = str(db) if backend == "postgres" else None
    api = WebApiStub(clock=time.time)  # wall time: compared with the store's timestamps
    with api.serving_in_thread():
        bot = _serve(tmp_path, api, "serve-deliver", url)
        try:
            inc = _opened(db, api, bot)
            _settled(api, db)
            before = time.time()
            _cli(tmp_path, api, "resolve", inc, "--reason", "fixed from the CLI", db=url)
            exited = time.time()
            poll(lambda: [c for c in _updates(api, before)
                          if "resolved by alice" in c.params["text"]],
                 what="the resolve in the Slack message", timeout=30, interval=0.05)
            (call,) = [c for c in _updates(api, before)
                       if "resolved by alice" in c.params["text"]]
            took = call.time - _resolved_at(db, inc)
            print(f"{backend}: CLI resolve committed -> chat.update in {took * 1000:.0f} ms "
                  f"({(call.time - exited) * 1000:.0f} ms after the CLI exited)")
            assert "fixed from the CLI" in call.params["text"]
            tops = [m for m in api.messages.values() if m.thread_ts is None]
            assert [m.ts for m in tops] == [call.params["ts"]]  # the incident's one top message
            assert took < DELIVERED_WITHIN, f"{took:.2f}s"
            _settled(api, db)
            # Delivered once: one edit with the resolve, the CLI's item done by serve.
            assert len([c for c in _updates(api, before)
                        if "resolved by alice" in c.params["text"]]) == 1
            assert _rows(db, "SELECT COUNT(*) FROM outbox WHERE done_at IS NULL") == [(0,)]
        finally:
            bot.stop()


def test_a_message_held_by_a_kill_9_goes_out_with_the_state_at_send_time(tmp_path: Path):
    # Slack refuses every chat.update (429) while the automatic step's "mitigating"
    # update is queued; serve is killed with SIGKILL; the CLI resolves the incident;
    # Slack recovers; the next serve sends the held update showing "resolved", once.
    _policy(tmp_path)
    db = tmp_path / "bot.db"
    api = WebApiStub(clock=time.time, fail_429_times={"chat.update": 10**9}, retry_after=1)
    with api.serving_in_thread():
        bot = _serve(tmp_path, api, "serve-held")
        inc = _opened(db, api, bot)
        poll(lambda: _rows(db, "SELECT COUNT(*) FROM chat_deliveries WHERE queue = 'update' "
                               "AND delivered_at IS NULL")[0][0] >= 1
             and api.calls_of("chat.update", ok_only=False),
             what="an update held by Slack's 429s", timeout=60)
        bot.process.send_signal(signal.SIGKILL)
        bot.process.wait()
        _cli(tmp_path, api, "resolve", inc, "--reason", "fixed while serve was down")
        api.fail_429_times = 0
        restarted = time.time()
        again = _serve(tmp_path, api, "serve-held-again")
        try:
            poll(lambda: _updates(api, restarted), what="the held update sent", timeout=60)
            _settled(api, db)
        finally:
            again.stop()
    sent = _updates(api, restarted)
    shown = [c.params["text"] for c in sent]
    print(f"after the restart: {len(sent)} chat.update(s): {shown}")
    assert len(sent) == 1, shown  # once, not twice
    assert "resolved by alice" in shown[0] and "fixed while serve was down" in shown[0], shown
    assert _rows(db, "SELECT COUNT(*) FROM outbox WHERE done_at IS NULL") == [(0,)]
