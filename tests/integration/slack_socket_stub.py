"""Local stand-ins for Slack's Socket Mode server and for response URLs (tests only).

``SocketModeStub`` speaks Slack's Socket Mode protocol on 127.0.0.1:

* ``connections_open`` is the ``apps.connections.open`` answer (plug it into
  ``WebApiStub(handlers={"apps.connections.open": stub.connections_open})``):
  ``{"ok": true, "url": "ws://127.0.0.1:PORT/link/?ticket=..."}``;
* on connect it sends ``{"type": "hello", ...}``; ``send(type, payload)`` then
  sends an envelope ``{"envelope_id", "type", "payload", "accepts_response_payload"}``
  and every acknowledgement the app sends back (``{"envelope_id", "payload"?}``)
  is recorded in ``acks``;
* ``POST /respond/N`` records what bolt's ``respond`` posts to a response URL
  (``response_url()`` hands out a fresh one).

An app may open several connections (one per replica); like Slack, the stub sends
each envelope to one of them (in turn), and ``delivered_to`` records which.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from aiohttp import WSMsgType, web
from slack_webapi_stub import serve_on_loopback


class SocketModeStub:
    def __init__(self) -> None:
        self.port = 0
        self.acks: dict[str, dict[str, Any]] = {}  # envelope_id -> the ack message
        self.responses: list[tuple[str, dict[str, Any]]] = []  # (path, JSON body)
        self.connections = 0
        self._sockets: list[web.WebSocketResponse] = []
        self._turn = 0
        self.delivered_to: dict[str, int] = {}  # envelope_id -> connection number
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._n = 0

    async def start(self) -> SocketModeStub:
        app = web.Application()
        app.router.add_get("/link/", self._link)
        app.router.add_post("/respond/{n}", self._respond)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def stop(self) -> None:
        for ws in self._sockets:
            if not ws.closed:
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SocketModeStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- Web API and response URLs ----------------------------------------------------

    def connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4()}"}

    def response_url(self) -> str:
        self._n += 1
        return f"http://127.0.0.1:{self.port}/respond/{self._n}"

    async def _respond(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append((request.path, body))
        return web.Response(text="ok")

    def responses_to(self, url: str) -> list[dict[str, Any]]:
        path = url.split(str(self.port), 1)[1]
        return [body for p, body in self.responses if p == path]

    # --- the websocket ----------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)  # answers the client's pings
        await ws.prepare(request)
        self._sockets.append(ws)
        self.connections += 1
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "debug_info": {"host": "stub", "approximate_connection_time": 18060},
                            "connection_info": {"app_id": "A0STUB"}})
        self._connected.set()
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                if "envelope_id" in data:
                    self.acks[data["envelope_id"]] = data
        return ws

    async def wait_connected(self, timeout: float = 10, *, count: int = 1) -> None:
        async def enough() -> None:
            while sum(not ws.closed for ws in self._sockets) < count:
                self._connected.clear()
                await self._connected.wait()
        await asyncio.wait_for(enough(), timeout)

    async def send(self, type_: str, payload: dict[str, Any], *,
                   accepts_response_payload: bool = False) -> str:
        live = [i for i, ws in enumerate(self._sockets) if not ws.closed]
        assert live, "no Socket Mode client connected"
        which = live[self._turn % len(live)]
        self._turn += 1
        envelope_id = str(uuid.uuid4())
        self.delivered_to[envelope_id] = which
        envelope = {"envelope_id": envelope_id, "type": type_, "payload": payload,
                    "accepts_response_payload": accepts_response_payload}
        if type_ == "events_api":
            envelope |= {"retry_attempt": 0, "retry_reason": ""}
        await self._sockets[which].send_json(envelope)
        return envelope_id
