"""A local stand-in for Slack's Web API: a *test fixture*, not a production component.

Slack's servers cannot be reached from tests, so tests and benchmarks point a
real ``slack_sdk`` ``AsyncWebClient(base_url=stub.base_url)`` at this server on
127.0.0.1 (a free port). It speaks the documented protocol: form-encoded or JSON
POSTs to ``/api/<method>``, ``200 {"ok": true, ...}`` answers, ``{"ok": false,
"error": "..."}`` for a bad call, and ``429`` with ``Retry-After`` (seconds) when
asked to rate-limit. Every call is recorded (method, params, time, status).

    async with WebApiStub(fail_429_times={"chat.postMessage": 1}, retry_after=2) as stub:
        client = AsyncWebClient(token="xoxb-test", base_url=stub.base_url)
        ...
        assert stub.calls_of("chat.postMessage")

Methods: ``chat.postMessage`` (increasing ``ts``), ``chat.update`` (the message
must exist: ``message_not_found`` otherwise), ``chat.postEphemeral``,
``usergroups.users.list`` (members from ``usergroups``), ``auth.test``. Add
others with ``handlers={"apps.connections.open": fn}``, ``fn(params) -> dict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Handler = Callable[[dict[str, Any]], dict[str, Any]]


async def serve_on_loopback(app: web.Application) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 on a free port; returns the runner (to clean up) and port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


@dataclass(frozen=True)
class StubCall:
    method: str
    params: dict[str, Any]  # JSON-valued params (``blocks``) already decoded
    time: float  # the stub's clock when the call arrived
    status: int  # HTTP status answered (200 or 429)
    token: str | None


@dataclass
class StubMessage:
    channel: str
    ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None = None
    edits: int = 0
    at: float = 0.0  # the stub's clock when it was posted
    metadata: dict[str, Any] | None = None  # chat.postMessage's ``metadata``, kept as sent


@dataclass
class WebApiStub:
    """``fail_429_times``: an int (first N calls of *every* method) or ``{method: N}``."""

    fail_429_times: int | Mapping[str, int] = 0
    # Then, per method, this many plain-text 500s (what a proxy in front of Slack sends).
    fail_500_times: Mapping[str, int] = field(default_factory=dict)
    # Per method, this many calls answered only after ``slow_seconds`` (client timeouts).
    slow_times: Mapping[str, int] = field(default_factory=dict)
    slow_seconds: float = 2.0
    retry_after: float = 1
    usergroups: Mapping[str, list[str]] = field(default_factory=dict)
    handlers: Mapping[str, Handler] = field(default_factory=dict)
    token: str | None = None  # when set, any other token gets ``invalid_auth``
    clock: Callable[[], float] = time.monotonic
    calls: list[StubCall] = field(default_factory=list)
    messages: dict[tuple[str, str], StubMessage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._seen: dict[str, int] = {}
        self._ts_base = int(time.time())
        self._ts_seq = 0
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> WebApiStub:
        app = web.Application()
        # Most methods are POSTs; a few (usergroups.users.list) are GETs with a query string.
        app.router.add_route("*", "/api/{method}", self._handle)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebApiStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def serving_in_thread(self) -> Iterator[WebApiStub]:
        """Serve from a thread with its own event loop (for sync callers, and for benchmarks
        where the server must not share the measured loop, as Slack would not)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="slack-webapi-stub", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the Web API stub did not start within 30s")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)

    @property
    def base_url(self) -> str:
        """For ``AsyncWebClient(base_url=...)``: ends in ``/api/`` like Slack's."""
        return f"http://127.0.0.1:{self.port}/api/"

    # --- inspection -----------------------------------------------------------------

    def calls_of(self, method: str, *, ok_only: bool = True) -> list[StubCall]:
        """The calls of one method, in arrival order (answered ones only by default)."""
        return [c for c in self.calls
                if c.method == method and (c.status == 200 or not ok_only)]

    def message(self, channel: str, ts: str) -> StubMessage:
        return self.messages[(channel, ts)]

    # --- protocol -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        token = _token(request, params)
        n = self._seen.get(method, 0) + 1
        self._seen[method] = n
        limit = (self.fail_429_times if isinstance(self.fail_429_times, int)
                 else self.fail_429_times.get(method, 0))
        if n <= self.slow_times.get(method, 0):
            await asyncio.sleep(self.slow_seconds)
        plain_500 = limit < n <= limit + self.fail_500_times.get(method, 0)
        status = 429 if n <= limit else 500 if plain_500 else 200
        self.calls.append(StubCall(method, params, self.clock(), status, token))
        if plain_500:
            return web.Response(status=500, text="upstream connect error or disconnect/reset "
                                "before headers. reset reason: overflow",
                                content_type="text/plain")
        if status == 429:
            # Slack answers a rate-limited call with 429, Retry-After in whole seconds
            # (we allow fractions so tests need not wait long) and ok=false.
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": f"{self.retry_after:g}"})
        if not token:
            return _error("not_authed")
        if self.token is not None and token != self.token:
            return _error("invalid_auth")
        if method in self.handlers:
            return web.json_response(self.handlers[method](params))
        builtin = _BUILTIN.get(method)
        if builtin is None:
            return _error("unknown_method")
        return web.json_response(builtin(self, params))

    def _next_ts(self) -> str:
        self._ts_seq += 1
        return f"{self._ts_base}.{self._ts_seq:06d}"

    def _post_message(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = p.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        thread_ts = p.get("thread_ts")
        if thread_ts and (channel, thread_ts) not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        ts = self._next_ts()
        metadata = p.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        msg = StubMessage(channel, ts, p.get("text") or "", p.get("blocks") or [], thread_ts,
                          at=self.clock(), metadata=metadata)
        self.messages[(channel, ts)] = msg
        return {"ok": True, "channel": channel, "ts": ts, "message": _as_message(msg)}

    def _update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = p.get("channel"), p.get("ts")
        if not channel or not ts:
            return {"ok": False, "error": "invalid_arguments"}
        msg = self.messages.get((channel, ts))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if "text" in p:
            msg.text = p["text"]
        if "blocks" in p:
            msg.blocks = p["blocks"]
        msg.edits += 1
        return {"ok": True, "channel": channel, "ts": ts, "text": msg.text,
                "message": _as_message(msg)}

    def _post_ephemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("channel") or not p.get("user"):
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _usergroup_users(self, p: dict[str, Any]) -> dict[str, Any]:
        group = p.get("usergroup")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def _auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"http://127.0.0.1:{self.port}/", "team": "Stub Team",
                "user": "llm-incident", "team_id": "T0STUB", "user_id": "U0BOT",
                "bot_id": "B0BOT", "is_enterprise_install": False}


def _history(stub: WebApiStub, p: dict[str, Any]) -> dict[str, Any]:
    """conversations.history / conversations.replies: newest first, metadata included
    when ``include_all_metadata`` is set (as Slack does)."""
    channel, thread = p.get("channel"), p.get("ts")
    if not channel:
        return {"ok": False, "error": "channel_not_found"}
    found = [m for m in stub.messages.values() if m.channel == channel and
             (thread is None or m.ts == thread or m.thread_ts == thread)]
    found.sort(key=lambda m: m.ts, reverse=True)
    limit = int(p.get("limit") or 100)
    with_meta = str(p.get("include_all_metadata", "")).lower() in ("1", "true")
    out = []
    for m in found[:limit]:
        item = _as_message(m)
        if with_meta and m.metadata:
            item["metadata"] = m.metadata
        out.append(item)
    return {"ok": True, "messages": out, "has_more": len(found) > limit}


_BUILTIN: dict[str, Callable[[WebApiStub, dict[str, Any]], dict[str, Any]]] = {
    "conversations.history": _history,
    "conversations.replies": _history,
    "chat.postMessage": WebApiStub._post_message,
    "chat.update": WebApiStub._update,
    "chat.postEphemeral": WebApiStub._post_ephemeral,
    "usergroups.users.list": WebApiStub._usergroup_users,
    "auth.test": WebApiStub._auth_test,
}


def _error(code: str) -> web.Response:
    return web.json_response({"ok": False, "error": code})


def _as_message(m: StubMessage) -> dict[str, Any]:
    out = {"type": "message", "text": m.text, "blocks": m.blocks, "ts": m.ts, "bot_id": "B0BOT"}
    return out | ({"thread_ts": m.thread_ts} if m.thread_ts else {})


async def _params(request: web.Request) -> dict[str, Any]:
    """Query string plus JSON body or form fields (JSON-valued form fields, like ``blocks``,
    decoded)."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        data = await request.json() if request.can_read_body else {}
        return params | (dict(data) if isinstance(data, dict) else {})
    if request.method == "POST":
        form = await request.post()
        params |= {k: v for k, v in form.items() if isinstance(v, str)}
    for key in ("blocks", "attachments", "metadata"):
        if isinstance(params.get(key), str):
            # Not JSON: left as sent; the handler decides whether it matters.
            with contextlib.suppress(ValueError):
                params[key] = json.loads(params[key])
    return params


def _token(request: web.Request, params: dict[str, Any]) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer "):]
    token = params.pop("token", None)
    return token if isinstance(token, str) else None
