"""`serve` while another process holds SQLite's write lock: health checks and Slack acks.

Run: ``python bench/bench_lock.py [--hold 15]``. Starts `llm-incident serve` (Slack HTTP
mode against a minimal local Web API stand-in), has another process take the store's
write lock (``BEGIN IMMEDIATE``) for ``--hold`` seconds, sends one webhook (it waits on
the lock, on the core's thread), and meanwhile measures ``GET /healthz`` every 100 ms
and a signed ``/llm-incident`` command every second. Prints p50/p99/max of each.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_serve import free_port  # noqa: E402

SECRET = "bench-signing-secret"


class SlackStandIn(BaseHTTPRequestHandler):
    """Answers every Web API call with ok (enough for acks and replies)."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"ok": True, "ts": "1.000001", "users": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815


def signed(text: str) -> tuple[bytes, dict[str, str]]:
    body = urlencode({"command": "/llm-incident", "text": text, "user_id": "U0ALICE",
                      "channel_id": "C0INC", "response_url": "http://127.0.0.1:1/r"}).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body,
                           hashlib.sha256).hexdigest()
    return body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig,
                  "Content-Type": "application/x-www-form-urlencoded"}


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 2 else max(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hold", type=float, default=15.0)
    args = ap.parse_args()
    slack = ThreadingHTTPServer(("127.0.0.1", 0), SlackStandIn)
    threading.Thread(target=slack.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="bench-lock-") as tmp:
        work = Path(tmp)
        (work / "policy.yaml").write_text("version: 1\nroutes: {chat: {}, chat-small: {}}\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
        env |= {"LLM_INCIDENT_DB": str(work / "bot.db"),
                "LLM_INCIDENT_POLICY": str(work / "policy.yaml"),
                "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:1",
                "SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": SECRET,
                "LLM_INCIDENT_SLACK_CHANNEL": "C0INC", "LLM_INCIDENT_ONCALL_USERS": "U0ALICE",
                "LLM_INCIDENT_SLACK_API_URL":
                    f"http://127.0.0.1:{slack.server_address[1]}/api/"}
        bot = subprocess.Popen([sys.executable, "-m", "bot.adapters.cli", "serve", "--port",
                                str(port)], env=env, cwd=work, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.05)
            conn = sqlite3.connect(work / "bot.db", isolation_level=None, timeout=30)
            conn.execute("BEGIN IMMEDIATE")
            held_from = time.monotonic()
            threading.Thread(target=lambda: httpx.post(
                f"{url}/v1/alerts", json={"labels": {"alertname": "X", "route": "chat"}},
                timeout=30), daemon=True).start()
            health: list[float] = []
            acks: list[float] = []
            with httpx.Client(timeout=10) as client:
                while time.monotonic() - held_from < args.hold:
                    t0 = time.perf_counter()
                    client.get(f"{url}/healthz").raise_for_status()
                    health.append(time.perf_counter() - t0)
                    if len(health) % 10 == 1:
                        body, headers = signed("incidents")
                        t0 = time.perf_counter()
                        client.post(f"{url}/slack/events", content=body,
                                    headers=headers).raise_for_status()
                        acks.append(time.perf_counter() - t0)
                    time.sleep(0.1)
            conn.execute("ROLLBACK")
            conn.close()
        finally:
            bot.terminate()
            bot.wait(timeout=30)
            slack.shutdown()
    ms = [h * 1000 for h in health]
    ack = [a * 1000 for a in acks]
    print(f"write lock held {args.hold:g} s by another process")
    print(f"/healthz      n={len(ms):3d}  p50 {statistics.median(ms):6.1f} ms  "
          f"p99 {pct(ms, 99):6.1f} ms  max {max(ms):6.1f} ms")
    print(f"Slack command n={len(ack):3d}  p50 {statistics.median(ack):6.1f} ms  "
          f"max {max(ack):6.1f} ms  (Slack's limit: 3000 ms)")


if __name__ == "__main__":
    main()
