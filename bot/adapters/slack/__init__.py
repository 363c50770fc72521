"""Everything Slack: the bolt app (``app``), on-call authorization (``auth``), HTTP mode
(``http_mode``), Socket Mode (``socket_mode``), alerts posted in channels
(``channel_alerts``), Block Kit rendering (``blocks``) and the notifier (``notifier``).

``attach_slack`` is what ``llm-incident serve`` calls: it builds only what the
settings ask for. Modules are imported lazily so this package stays cheap to
import (``bot.adapters.slack.blocks`` alone is enough for rendering).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bot.adapters.core_loop import Inline
    from bot.adapters.settings import Settings
    from bot.adapters.slack.socket_mode import SocketMode
    from bot.core.engine import Engine


@dataclass
class SlackParts:
    """What ``attach_slack`` set up; ``None`` where the settings did not ask."""

    app: Any = None  # slack_bolt.async_app.AsyncApp
    socket_mode: SocketMode | None = None
    http_path: str | None = None

    async def start(self) -> None:
        if self.socket_mode is not None:
            await self.socket_mode.start()

    async def stop(self) -> None:
        if self.socket_mode is not None:
            await self.socket_mode.stop()


def attach_slack(engine: Engine, settings: Settings, web_app: FastAPI, *,
                 on_ignored: Callable[[str], None] | None = None,
                 core: Inline | None = None) -> SlackParts:
    """With SLACK_BOT_TOKEN plus SLACK_SIGNING_SECRET, mount ``POST /slack/events`` on
    ``web_app``; with SLACK_APP_TOKEN, prepare Socket Mode (started by ``start()``)."""
    parts = SlackParts()
    if not settings.slack_bot_token or not (settings.slack_signing_secret
                                            or settings.slack_app_token):
        return parts
    from bot.adapters.slack.app import create_slack_app

    parts.app = create_slack_app(engine, settings, on_ignored=on_ignored, core=core)
    if settings.slack_signing_secret:
        from bot.adapters.slack.http_mode import SLACK_PATH, ReplayGuard, mount_slack
        from bot.adapters.slack.replay_store import RequestReplays

        # Replays are remembered in the store: refused after a restart too.
        mount_slack(web_app, parts.app, settings,
                    replay=ReplayGuard(memory=RequestReplays(engine.store)))
        parts.http_path = SLACK_PATH
    if settings.slack_app_token:
        from bot.adapters.slack.socket_mode import SocketMode

        parts.socket_mode = SocketMode(parts.app, settings.slack_app_token)
    return parts


def build_slack_notifier(settings: Settings, engine: Engine) -> Any | None:
    """The Slack notifier when SLACK_BOT_TOKEN and LLM_INCIDENT_SLACK_CHANNEL are set."""
    if not settings.slack_bot_token or not settings.slack_channel:
        return None
    from bot.adapters.slack.app import web_client
    from bot.adapters.slack.notifier import SlackNotifier
    from bot.core.notifier import DrillRouter

    client = web_client(settings)
    real = SlackNotifier(client, channel=settings.slack_channel, store=engine.store)
    real.console_url = settings.console_base
    if not settings.drill_channel or settings.drill_channel == settings.slack_channel:
        return real
    # Drill incidents and announcements go to the drills channel, never where pages land.
    drill = SlackNotifier(client, channel=settings.drill_channel, store=engine.store)
    drill.console_url = settings.console_base
    return DrillRouter(real, drill)
