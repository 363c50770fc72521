"""Per-model quality faults for the LiteLLM tests' upstream stand-in (litellm_upstream.py).

``FaultyUpstream`` answers like ``StubUpstream`` except for the models named in
``faults``, each with one fault kind:

- ``malformed``: the content is cut-off JSON (a JSON-mode request gets invalid output);
- ``refuse``: every other answer is a plain refusal, the rest are stopped by the
  provider's content filter (``finish_reason: content_filter``);
- ``overflow``: a 400 ``context_length_exceeded``, as OpenAI answers a too-long request;
- ``down``: a 500 (for LiteLLM's router fallbacks).

``bad_versions`` names prompt versions whose every answer is that cut-off JSON, on
any model: the hook passes the version it chose on as the ``x-prompt-version``
header, so a release's canary version can break while its baseline stays healthy.

A healthy model answers a JSON-mode request (``response_format``) with a JSON object,
and a ``stream`` request as server-sent events, its first chunk after
``FIRST_TOKEN_S`` (so the proxy's time to first token has something to measure).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from integration.litellm_upstream import StubUpstream

FIRST_TOKEN_S = 0.2
REFUSAL = "I'm sorry, but I can't help with that request."


def completion(model: str, content: str | None, finish: str = "stop") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-faulty-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17},
    }


@dataclass
class FaultyUpstream(StubUpstream):
    faults: dict[str, str] = field(default_factory=dict)  # upstream model -> fault kind
    bad_versions: set[str] = field(default_factory=set)  # x-prompt-version -> broken JSON

    def __post_init__(self) -> None:
        super().__post_init__()
        self._turn = itertools.count()
        self.server.stub = self  # type: ignore[attr-defined]  # what the handler answers with

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        model = str(body.get("model", ""))
        fault = self.faults.get(model)
        if headers.get("x-prompt-version") in self.bad_versions:
            fault = "malformed"
        if fault == "overflow":
            return 400, {"error": {
                "message": "This model's maximum context length is 8192 tokens. However, "
                           "your messages resulted in 9000 tokens.",
                "type": "invalid_request_error", "param": "messages",
                "code": "context_length_exceeded"}}
        if fault == "down":
            return 500, {"error": {"message": f"faulty: {model} is down", "type": "server"}}
        if fault == "malformed":
            return 200, completion(model, '{"answer": "cut off')
        if fault == "refuse":
            if next(self._turn) % 2:
                return 200, completion(model, "", "content_filter")
            return 200, completion(model, REFUSAL)
        if body.get("response_format"):
            return 200, completion(model, json.dumps({"answer": f"[{model}] fine"}))
        return super().answer(body, headers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler()

        class Streaming(base):  # type: ignore[misc,valid-type]
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                if not body.get("stream"):
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    self._send(*self.server.stub.answer(body, headers))  # type: ignore[attr-defined]
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                time.sleep(FIRST_TOKEN_S)
                for n, (text, finish) in enumerate([("hello", None), (" world", "stop")]):
                    chunk = {"id": "chatcmpl-faulty-stream", "object": "chat.completion.chunk",
                             "created": int(time.time()), "model": body.get("model"),
                             "choices": [{"index": 0, "finish_reason": finish, "delta": (
                                 {"role": "assistant", "content": text} if n == 0
                                 else {"content": text})}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        return Streaming
