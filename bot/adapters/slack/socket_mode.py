"""Socket Mode: the same bolt app over a websocket the bot opens (no public URL needed).

``apps.connections.open`` (with the ``xapp-`` app-level token) hands out a
``wss://`` URL; Slack sends ``hello``, then envelopes
``{"envelope_id", "type": "slash_commands" | "interactive" | "events_api",
"payload", "accepts_response_payload"}``, each acknowledged with
``{"envelope_id", "payload"?}``. Bolt's aiohttp handler does the protocol,
reconnects, and runs the listeners exactly as in HTTP mode (ack first).
"""

from __future__ import annotations

import logging

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.base.errors import IncidentBotError

log = logging.getLogger(__name__)


class SocketMode:
    """Connect with ``await start()`` (returns once connected); ``await stop()`` closes."""

    def __init__(self, slack_app: AsyncApp, app_token: str, *,
                 web_client: AsyncWebClient | None = None, ping_interval: float = 10) -> None:
        if not app_token.startswith("xapp-"):
            raise IncidentBotError("Socket Mode needs an app-level token (xapp-...)",
                                   hint="Basic Information > App-Level Tokens, scope "
                                   "connections:write")
        self.handler = AsyncSocketModeHandler(slack_app, app_token, web_client=web_client,
                                              ping_interval=ping_interval)

    async def start(self) -> None:
        await self.handler.connect_async()
        log.info("Slack Socket Mode connected")

    async def stop(self) -> None:
        try:
            await self.handler.close_async()
        except Exception:  # noqa: BLE001 - shutting down: log, carry on closing the rest
            log.exception("closing the Slack Socket Mode connection failed")
