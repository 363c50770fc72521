"""HTTP mode: Slack's commands, interactivity and events at ``POST /slack/events``.

Bolt checks the signature (``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``) and
refuses a timestamp more than five minutes away. A captured request replayed
inside those five minutes would still pass, so ``ReplayGuard`` remembers every
signature it let through for the window and refuses a second one with 401,
before any listener runs: no side effect. The signatures live in the store
(``bot.adapters.slack.replay_store``), so a restart does not forget them.

The body is read with a size cap while it streams, before bolt checks the
signature: a chunked request with no Content-Length cannot make us buffer more
than ``MAX_SLACK_BODY``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

from bot.adapters.settings import Settings
from bot.base.errors import IncidentBotError

log = logging.getLogger(__name__)

SLACK_PATH = "/slack/events"
WINDOW_SECONDS = 300  # bolt's own timestamp window
MAX_REMEMBERED = 50_000  # signatures; at Slack's request rates far more than 5 minutes' worth
STORE_WAIT = 0.5  # seconds the replay check waits on the store before memory decides
MAX_SLACK_BODY = 256 * 1024  # Slack's payloads are a few KB


class SeenSignatures(Protocol):
    def seen(self, signature: str) -> bool: ...


class ReplayGuard(AsyncMiddleware):
    """Bolt middleware: a signature already seen within the window gets 401.

    ``memory`` (a ``RequestReplays`` over the store in the service) remembers; with
    none, an in-process table does (tests, and a bot with no store).
    """

    def __init__(self, window: float = WINDOW_SECONDS, max_entries: int = MAX_REMEMBERED,
                 clock: Callable[[], float] = time.time,
                 memory: SeenSignatures | None = None) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self.memory = memory
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> first seen

    def seen(self, signature: str) -> bool:
        if self.memory is not None:
            return self.memory.seen(signature)
        return self._seen_here(signature)

    async def seen_async(self, signature: str) -> bool:
        """``seen`` without blocking the loop: the store is asked in a thread, and if it
        cannot answer within ``STORE_WAIT`` seconds (another process holds its write
        lock) this process's own table decides, so Slack's 3-second ack never waits
        on a disk. The store still records the signature when the lock frees."""
        if self.memory is None:
            return self._seen_here(signature)
        here = self._seen_here(signature)
        task = asyncio.ensure_future(asyncio.to_thread(self.memory.seen, signature))
        try:
            return await asyncio.wait_for(asyncio.shield(task), STORE_WAIT) or here
        except TimeoutError:
            log.warning("the store did not answer the replay check within %ss; "
                        "checked against this process's memory only", STORE_WAIT)
            return here

    def _seen_here(self, signature: str) -> bool:
        """Record ``signature``; True when it was already recorded within the window."""
        now = self.clock()
        while self._seen:  # oldest first: drop what left the window
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.window and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if signature in self._seen:
            return True
        self._seen[signature] = now
        return False

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse:
        if req.mode == "socket_mode":
            return await next()  # no signatures there; the websocket is authenticated
        signature = req.headers.get("x-slack-signature", [""])[0]
        if not signature or await self.seen_async(signature):
            return BoltResponse(status=401, body='{"error": "replayed request"}',
                                headers={"content-type": "application/json"})
        return await next()


def _malformed(body: bytes, content_type: str) -> str | None:
    """Why bolt could not parse ``body`` (the same rules as its ``parse_body``), or None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"body is not UTF-8 (byte {exc.start})"
    try:
        if content_type.startswith("application/json") or text.startswith("{"):
            doc = json.loads(text)
            return None if isinstance(doc, dict) else "a JSON body must be an object"
        form = parse_qs(text)
        if "payload" in form:
            doc = json.loads(form["payload"][0])
            return None if isinstance(doc, dict) else "payload must be a JSON object"
    except ValueError as exc:
        return f"body is not valid JSON ({exc})"
    return None


def mount_slack(app: FastAPI, slack_app: AsyncApp, settings: Settings, *,
                path: str = SLACK_PATH, replay: ReplayGuard | None = None) -> ReplayGuard:
    """Route ``POST path`` to bolt; returns the replay guard it installed."""
    if not settings.slack_signing_secret:
        raise IncidentBotError("Slack's HTTP endpoint needs SLACK_SIGNING_SECRET",
                               hint="Basic Information > App Credentials > Signing Secret")
    guard = replay or ReplayGuard()
    slack_app.middleware(guard)  # runs after bolt's signature check: only valid ones counted
    handler = AsyncSlackRequestHandler(slack_app)

    async def slack_events(request: Request) -> Response:
        too_big = JSONResponse({"error": "body too large"}, status_code=413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_SLACK_BODY:
            return too_big
        # Counted while streaming; bolt then reads the cached body (Starlette keeps it).
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_SLACK_BODY:
                return too_big
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # what Request.body() returns from now on
        problem = _malformed(body, request.headers.get("content-type", ""))
        if problem:
            return JSONResponse({"error": f"malformed Slack request: {problem}"},
                                status_code=400)
        try:
            response = await handler.handle(request)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            log.warning("Slack request refused: bolt could not read it (%s: %s)",
                        type(exc).__name__, exc)
            return JSONResponse({"error": "malformed Slack request"}, status_code=400)
        if response.status_code >= 500:
            # Listeners run after the ack, so a 5xx here is bolt failing on the request's
            # shape (its middleware logged why): a signed body no Slack client sends. The
            # sender's to fix, never a 500 that Slack would retry.
            return JSONResponse({"error": "malformed Slack request"}, status_code=400)
        return response

    # Not in the OpenAPI document: its body is Slack's, form-encoded and signed.
    app.add_api_route(path, slack_events, methods=["POST"], include_in_schema=False,
                      name="slack_events")
    return guard
