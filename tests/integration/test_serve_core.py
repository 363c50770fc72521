"""`serve` as a process: the webhook never waits on the target or on a store lock,
and a kill -9 loses no alert and leaves no incident unannounced.

- A slow HTTP target (every write takes 3 s): the webhook's 2xx comes back in well
  under a second and the automatic mitigation follows.
- Another process holds SQLite's write lock: /healthz still answers at once.
- `serve` killed with SIGKILL again and again under a sender that retries until
  it gets a 2xx (as Alertmanager does): every alert is stored, every incident
  announced, and the outbox ends empty.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import yaml
from integration.services import Service, free_port, poll, spawn
from slack_webapi_stub import WebApiStub

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("LLM_INCIDENT_TEST_KILLS", "4"))
HOLD = 15  # seconds another process holds SQLite's write lock
SECRET = "test-signing-secret"


def provider_alert(fingerprint: str, route: str = "chat") -> dict[str, Any]:
    return {
        "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "bot",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing", "startsAt": "2026-12-06T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                    "fingerprint": fingerprint,
                    "annotations": {"standby_route": "chat-small"},
                    "labels": {"alertname": "LLMProviderErrorRateHigh", "route": route,
                               "severity": "critical"}}],
    }


class SlowGateway:
    """A serving API whose writes take ``delay`` seconds (reads are quick)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.policy: dict[str, Any] = {"version": 1, "routes": {
            "chat": {"fallback": None}, "chat-long": {}, "chat-small": {}}}
        self.writes: list[float] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(gateway.policy)

            def do_PATCH(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                time.sleep(gateway.delay)
                route = self.path.rsplit("/", 1)[1]
                gateway.policy["routes"][route].update(body)
                gateway.writes.append(time.monotonic())
                self._answer({})

            def _answer(self, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def serve(tmp: Path, name: str = "serve", **extra: str) -> Service:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
    env |= {"LLM_INCIDENT_DB": str(tmp / "bot.db"), "LLM_INCIDENT_POLICY": str(tmp / "policy.yaml"),
            "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:1", **extra}
    return spawn(name, [sys.executable, "-m", "bot.adapters.cli", "serve", "--port", str(port)], tmp,
                 f"http://127.0.0.1:{port}", ready_path="/healthz", env=env)


def post(url: str, doc: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}/v1/alerts/alertmanager", json=doc, timeout=timeout)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def gateway() -> Iterator[SlowGateway]:
    gw = SlowGateway(delay=3.0)
    yield gw
    gw.stop()


def test_the_webhook_answers_before_a_slow_target_is_done(tmp_path: Path, gateway: SlowGateway):
    (tmp_path / "policy.yaml").write_text("version: 1\nroutes: {}\n")
    targets = tmp_path / "targets.yaml"
    targets.write_text(yaml.safe_dump({"targets": {"default": {
        "driver": "http", "name": "slow-gateway", "base_url": gateway.url, "timeout": "10s",
        "read": {"method": "GET", "url": "/policy"},
        "actions": {"default": {"method": "PATCH", "url": "/routes/{{ route }}",
                                "json_values": True}}}}}))
    bot = serve(tmp_path, LLM_INCIDENT_TARGETS=str(targets))
    try:
        started = time.monotonic()
        resp = post(bot.url, provider_alert("slow-1"))
        answered = time.monotonic() - started
        assert resp.status_code == 200, resp.text
        assert resp.json()["alerts"][0]["new_incident"] is True
        # The answer did not wait for the target: its 3 s write had not finished (the
        # bound is loose for a loaded box; typically ~10 ms).
        assert not gateway.writes, "the webhook waited for the target's write"
        assert answered < 2.5, f"the webhook took {answered:.2f}s behind a 3 s target"
        # ...and it follows: the automatic fallback is applied on the slow target.
        poll(lambda: gateway.policy["routes"]["chat"].get("fallback") == "chat-small",
             what="the automatic fallback on the slow gateway", timeout=30)
        state = poll(lambda: rows(tmp_path / "bot.db",
                                  "SELECT state FROM runs WHERE action = 'fallback'"),
                     what="the fallback run")
        poll(lambda: rows(tmp_path / "bot.db",
                          "SELECT state FROM runs WHERE action = 'fallback'")[0][0] == "applied",
             what="the run marked applied", timeout=30)
        assert state
        assert rows(tmp_path / "bot.db", "SELECT COUNT(*) FROM outbox WHERE done_at IS NULL") \
            == [(0,)]
    finally:
        bot.stop()


def _signed_command(text: str, user: str = "U0ALICE") -> tuple[bytes, dict[str, str]]:
    body = urlencode({"command": "/llm-incident", "text": text, "user_id": user,
                      "channel_id": "C0INC", "team_id": "T0", "trigger_id": "1.2",
                      "response_url": "http://127.0.0.1:1/respond"}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body,
                           hashlib.sha256).hexdigest()
    return body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig,
                  "Content-Type": "application/x-www-form-urlencoded"}


def test_healthz_and_slack_acks_stay_fast_while_another_process_holds_the_write_lock(
        tmp_path: Path):
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nroutes: {chat: {}, chat-long: {}, chat-small: {}}\n")
    api = WebApiStub()
    with api.serving_in_thread():
        bot = serve(tmp_path, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET,
                    LLM_INCIDENT_SLACK_API_URL=f"http://127.0.0.1:{api.port}/api/",
                    LLM_INCIDENT_SLACK_CHANNEL="C0INC", LLM_INCIDENT_ONCALL_USERS="U0ALICE")
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(tmp_path / 'bot.db')!r}, isolation_level=None)\n"
            f"c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep({HOLD})\n"
            "c.execute('ROLLBACK')\n")], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            held_from = time.monotonic()
            # A webhook now waits on the lock (on the core's thread)...
            pending: dict[str, Any] = {}
            sender = threading.Thread(target=lambda: pending.update(
                r=post(bot.url, provider_alert("locked-1"))))
            sender.start()
            time.sleep(0.3)
            # ...while /healthz, on the HTTP loop, answers at once, again and again, and
            # Slack's commands and buttons are acked inside Slack's 3 seconds.
            health, acks = [], []
            # One client, so its own set-up (an SSL context: ~40 ms) is not measured.
            client = httpx.Client(timeout=10)
            while time.monotonic() - held_from < HOLD - 1:
                started = time.monotonic()
                assert client.get(f"{bot.url}/healthz").status_code == 200
                health.append(time.monotonic() - started)
                if len(health) % 10 == 1:
                    body, headers = _signed_command("ack INC-1" if len(acks) % 2 else "incidents")
                    started = time.monotonic()
                    ack = client.post(f"{bot.url}/slack/events", content=body, headers=headers)
                    acks.append(time.monotonic() - started)
                    assert ack.status_code == 200, ack.text
                time.sleep(0.1)
            client.close()
            print(f"lock held {HOLD}s: /healthz worst {max(health) * 1000:.1f} ms over "
                  f"{len(health)}; Slack ack worst {max(acks) * 1000:.0f} ms over {len(acks)}")
            # Loose bounds (a loaded CI box stalls any process now and then): before the
            # core had its own thread, /healthz took the whole 15 s. The figures to quote
            # come from bench/bench_lock.py.
            assert max(health) < 1.0, f"/healthz took {max(health) * 1000:.0f} ms"
            assert max(acks) < 3.0, f"a Slack ack took {max(acks):.2f}s"  # Slack's limit
            sender.join(timeout=30)
            # The store's 5 s busy timeout ran out first: 503, which the sender retries.
            assert pending["r"].status_code in (200, 503)
        finally:
            holder.kill()
            holder.wait()
            bot.stop()
    retried = serve(tmp_path, "serve-again")
    try:
        assert post(retried.url, provider_alert("locked-1")).status_code == 200
    finally:
        retried.stop()
    assert rows(tmp_path / "bot.db", "SELECT COUNT(*) FROM alerts") == [(1,)]


def test_kill_9_of_serve_loses_no_alert_and_leaves_none_unannounced(tmp_path: Path):
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nroutes: {chat: {}, chat-long: {}, chat-small: {}}\n")
    db = tmp_path / "bot.db"
    sent: list[str] = []
    for trial in range(KILLS):
        bot = serve(tmp_path, f"serve-{trial}")
        fingerprint = f"kill-{trial}"
        doc = provider_alert(fingerprint)
        doc["alerts"][0]["labels"]["model"] = f"m{trial}"  # its own incident each time
        # The kill lands right after the alert's commit (the window where an incident
        # used to be stored but never announced), a little later as trials go on.
        sender = threading.Thread(target=_try_post, args=(bot.url, doc))
        sender.start()
        poll(lambda fp=fingerprint: rows(db, f"SELECT 1 FROM alerts WHERE fingerprint = '{fp}'"),
             what="the alert committed", interval=0.001)
        time.sleep(0.004 * (trial % 8))
        bot.process.send_signal(signal.SIGKILL)
        bot.process.wait()
        sender.join()
        sent.append(fingerprint)
        # The sender retries until it gets a 2xx, as Alertmanager does.
        again = serve(tmp_path, f"serve-{trial}-retry")
        try:
            resp = post(again.url, doc)
            assert resp.status_code == 200, resp.text
            poll(lambda: rows(db, "SELECT COUNT(*) FROM outbox WHERE done_at IS NULL") == [(0,)],
                 what="the outbox drained", timeout=30)
        finally:
            again.stop()
    stored = {fp for (fp,) in rows(db, "SELECT fingerprint FROM alerts")}
    assert stored == set(sent)  # 0 lost
    incidents = [i for (i,) in rows(db, "SELECT id FROM incidents")]
    assert len(incidents) == KILLS
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("serve-*.log"))
    unannounced = [i for i in incidents if f"[{i}]" not in logs and f"{i} " not in logs]
    assert not unannounced, f"never announced: {unannounced}"
    # Automatic steps acted at most once per incident, and once in all: the first
    # applied the fallback on chat; the others found it in place ("nothing to do").
    per_incident = rows(db, "SELECT incident_id, COUNT(*) FROM runs GROUP BY incident_id")
    assert all(n == 1 for _, n in per_incident), per_incident
    assert rows(db, "SELECT COUNT(*) FROM runs WHERE state = 'applied'") == [(1,)]


def _try_post(url: str, doc: dict[str, Any]) -> int | None:
    """What Alertmanager's first attempt sees (None: the process died under it)."""
    try:
        return post(url, doc, timeout=10).status_code
    except httpx.HTTPError:
        return None  # killed mid-request


def test_kill_9_with_slack_messages_pending_delivers_them_after_restart(tmp_path: Path):
    # Slack answers 429 while 25 new incidents are announced (50+ messages: each
    # suggestion and its automatic step's result); `serve` is killed with SIGKILL;
    # Slack recovers; the next `serve` delivers every message the first one held.
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nroutes: {chat: {}, chat-long: {}, chat-small: {}}\n")
    db = tmp_path / "bot.db"
    api = WebApiStub(fail_429_times={"chat.postMessage": 100_000}, retry_after=1)
    slack = {"SLACK_BOT_TOKEN": "xoxb-test",
             "LLM_INCIDENT_SLACK_CHANNEL": "C0INC"}
    with api.serving_in_thread():
        slack["LLM_INCIDENT_SLACK_API_URL"] = f"http://127.0.0.1:{api.port}/api/"
        bot = serve(tmp_path, "serve-slack", **slack)
        for i in range(25):
            doc = provider_alert(f"slack-{i}")
            doc["alerts"][0]["labels"]["model"] = f"m{i}"
            assert post(bot.url, doc).status_code == 200
        poll(lambda: rows(db, "SELECT COUNT(*) FROM chat_deliveries")[0][0] >= 50,
             what="50 messages waiting for Slack", timeout=60)
        # What a team alerts on: Slack has not taken our messages for a while.
        time.sleep(1.5)
        metrics = httpx.get(f"{bot.url}/metrics", timeout=10).text
        depth = _metric(metrics, "llm_incident_slack_outbox_depth")
        assert depth >= 50, depth
        assert _metric(metrics, "llm_incident_slack_outbox_oldest_seconds") >= 1.0
        assert _metric(metrics, 'llm_incident_slack_calls_total{method="any",'
                                'outcome="rate_limited"}') >= 1
        # Slack is back; the kill lands while the held messages are going out.
        api.fail_429_times = 0
        poll(lambda: len(api.calls_of("chat.postMessage")) >= 5, what="a few delivered",
             timeout=60, interval=0.01)
        bot.process.send_signal(signal.SIGKILL)
        bot.process.wait()
        waiting = rows(db, "SELECT COUNT(*) FROM chat_deliveries WHERE delivered_at IS NULL")
        assert waiting[0][0] >= 40, waiting
        again = serve(tmp_path, "serve-slack-again", **slack)
        try:
            poll(lambda: rows(db, "SELECT COUNT(*) FROM chat_deliveries "
                                  "WHERE delivered_at IS NULL") == [(0,)],
                 what="every held message delivered", timeout=120)
            after = httpx.get(f"{again.url}/metrics", timeout=10).text
            assert _metric(after, "llm_incident_slack_outbox_depth") == 0
            assert _metric(after, "llm_incident_slack_outbox_oldest_seconds") == 0
            assert _metric(after, 'llm_incident_slack_calls_total{method="chat.postMessage",'
                                  'outcome="ok"}') >= 1  # this process's own calls
        finally:
            again.stop()
        tops = [c for c in api.calls_of("chat.postMessage") if "thread_ts" not in c.params]
        per_incident: dict[str, int] = {}
        for c in tops:
            inc = c.params["text"].split()[0]
            per_incident[inc] = per_incident.get(inc, 0) + 1
        assert len(per_incident) == 25, per_incident  # every incident reached Slack
        duplicates = sum(n - 1 for n in per_incident.values())
        print(f"{waiting[0][0]} messages held at the kill; all delivered after the restart; "
              f"{duplicates} duplicate top messages")
        assert duplicates == 0  # a post that landed before the kill is found, not repeated


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (("{" in name) and line.startswith(name)):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
