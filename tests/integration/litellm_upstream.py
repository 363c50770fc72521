"""A tiny OpenAI-compatible upstream for the LiteLLM proxy tests, on 127.0.0.1.

It answers ``POST /v1/chat/completions`` with ``min(max_tokens, default_tokens)``
completion tokens, so a cap the proxy enforces is visible in
``usage.completion_tokens``. The content names the upstream model that served
the call (``[large] tok tok ...``), so a fallback or a reroute is visible too.

Knobs the tests turn (the server runs in the test process, in a thread):
``failing`` (models that answer 500, to trigger LiteLLM's fallbacks),
``hold()``/``release()`` (keep requests in flight, to fill concurrency slots).
Every request is recorded with its model, token limit and prompt-version header.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_TIMEOUT = 30.0  # seconds a held request waits at most, so a failed test never hangs


@dataclass
class Seen:
    model: str
    max_tokens: int | None
    prompt_version: str | None


@dataclass
class StubUpstream:
    default_tokens: int = 200
    failing: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> StubUpstream:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._gate.set()
        self.server.shutdown()
        self.server.server_close()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def reset(self) -> None:
        self.release()
        self.failing.clear()
        with self._lock:
            self.seen.clear()

    # -- the request handler --------------------------------------------------------

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        model = str(body.get("model", ""))
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        with self._lock:
            self.seen.append(Seen(model, limit, headers.get("x-prompt-version")))
            self.in_flight += 1
        try:
            self._gate.wait(HOLD_TIMEOUT)
            if model in self.failing:
                return 500, {"error": {"message": f"stub: {model} is failing", "type": "server"}}
            n = self.default_tokens if limit is None else min(int(limit), self.default_tokens)
            content = f"[{model}] " + " ".join(["tok"] * n)
            return 200, {
                "id": f"chatcmpl-stub-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "length" if limit is not None and n == limit else "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n},
            }
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"stub: no route {self.path}"}})
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, {"error": {"message": "stub: body is not JSON"}})
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._send(*stub.answer(body, headers))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        return Handler
