"""A local stand-in for PagerDuty's Events API v2, speaking its documented protocol.

``POST /v2/enqueue`` takes one JSON event: ``routing_key`` (a 32-character
integration key), ``event_action`` (trigger | acknowledge | resolve) and
``dedup_key``; a trigger also needs ``payload.summary``, ``payload.source`` and
``payload.severity`` (critical | error | warning | info). It answers 202
``{"status": "success", "message": "Event processed", "dedup_key": ...}``, or 400
``{"status": "invalid event", "message": "Event object is invalid", "errors":
[...]}``. As PagerDuty does, a trigger whose ``dedup_key`` names an alert still
open adds to that alert instead of opening another (and an acknowledge or resolve
of an unknown key is accepted and changes nothing).

What no real service offers, for the tests: ``fail_next(n, status)`` answers the
next ``n`` events with ``status`` (429 with ``Retry-After``, or a 5xx) before
looking at them, and every accepted event is kept in ``events``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SEVERITIES = {"critical", "error", "warning", "info"}


@dataclass
class PagerDutyStub:
    alerts: dict[str, str] = field(default_factory=dict)  # dedup_key -> status
    events: list[dict[str, Any]] = field(default_factory=list)  # accepted, in order
    opened: int = 0  # alerts created (a deduplicated trigger creates none)
    refused: int = 0  # answered with an injected failure
    _failures: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail_next(self, n: int, status: int = 429) -> None:
        with self._lock:
            self._failures += [status] * n

    def actions(self, dedup_key: str) -> list[str]:
        return [e["event_action"] for e in self.events if e.get("dedup_key") == dedup_key]

    def handle(self, body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self._failures:
                self.refused += 1
                status = self._failures.pop(0)
                return status, {"status": "throttled" if status == 429 else "error",
                                "message": "injected failure"}
            try:
                event = json.loads(body)
            except ValueError:
                return 400, {"status": "invalid event", "message": "Event object is invalid",
                             "errors": ["body is not JSON"]}
            errors = _validate(event)
            if errors:
                return 400, {"status": "invalid event", "message": "Event object is invalid",
                             "errors": errors}
            key, action = event["dedup_key"], event["event_action"]
            status = self.alerts.get(key)
            if action == "trigger":
                if status is None or status == "resolved":
                    self.opened += 1
                    self.alerts[key] = "triggered"
            elif status in ("triggered", "acknowledged"):
                if action == "acknowledge" and status == "triggered":
                    self.alerts[key] = "acknowledged"
                elif action == "resolve":
                    self.alerts[key] = "resolved"
            self.events.append(event)
            return 202, {"status": "success", "message": "Event processed", "dedup_key": key}


def _validate(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    errors = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errors.append("'routing_key' must be a 32 character integration key")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' must be one of trigger, acknowledge or resolve")
    if not isinstance(event.get("dedup_key"), str) or not event.get("dedup_key"):
        errors.append("'dedup_key' is required to acknowledge or resolve, and used here always")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            return [*errors, "'payload' is missing"]
        for name in ("summary", "source"):
            if not isinstance(payload.get(name), str) or not payload.get(name):
                errors.append(f"'payload.{name}' is missing or empty")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' must be critical, error, warning or info")
        if len(str(payload.get("summary", ""))) > 1024:
            errors.append("'payload.summary' is longer than 1024 characters")
    return errors


def serve_stub(stub: PagerDutyStub) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v2/enqueue":
                status, answer = 404, {"status": "not found"}
            else:
                status, answer = stub.handle(body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/v2/enqueue"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
