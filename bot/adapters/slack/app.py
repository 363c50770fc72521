"""The bolt ``AsyncApp``: `/llm-incident`, the buttons, and alerts posted in channels.

Handlers only translate. A slash command's text and a button's value become
tokens for the shared command layer (``bot.adapters.commands.execute``) with the Slack
user id as the actor; the Result becomes Block Kit through ``bot.adapters.slack.blocks``.
Every handler acks first (Slack wants an answer within 3 seconds) and does the
work after: the result goes to the response URL (``respond``) or, for a button,
to the incident's thread through the engine's notifier.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.commands import VERBS, Context, Result, execute, parse, split
from bot.adapters.core_loop import Inline
from bot.adapters.settings import Settings
from bot.adapters.slack.auth import OncallAuthorizer, needs_oncall
from bot.adapters.slack.blocks import action_of, escape_mrkdwn, render
from bot.adapters.slack.channel_alerts import ChannelAlerts
from bot.base.errors import IncidentBotError, InputError
from bot.core.engine import Engine
from bot.core.messages import (
    BUTTON_COMMANDS,
    VALUE_PARTS,
    Button,
    Message,
    Section,
    parse_value,
)

log = logging.getLogger(__name__)

SLASH_COMMAND = "/llm-incident"
BUTTON_ACTIONS = tuple(VALUE_PARTS)  # every button the core's messages may carry
# bot.adapters.slack.blocks numbers action ids (``approve#3``); a bare action name is accepted too.
BUTTON_RE = re.compile(rf"^({'|'.join(BUTTON_ACTIONS)})(#\d+)?$")
READ_ONLY_BUTTONS = ("dry_run",)  # plans and records, can never be applied
MAX_REPLY_TEXT = 2800  # inside one section with the code fence (Slack's limit is 3000)

BUTTON_WORDS = {
    "run_step": "run", "dry_run": "dry run", "approve": "approve", "deny": "deny",
    "revert": "revert", "ack": "acknowledge", "not_this_playbook": "not this playbook",
    "release_promote": "promote", "release_hold": "hold", "release_rollback": "roll back",
}


def web_client(settings: Settings) -> AsyncWebClient:
    kwargs: dict[str, Any] = {"token": settings.slack_bot_token}
    if settings.slack_api_url:
        kwargs["base_url"] = settings.slack_api_url  # ends with "/" (bot.adapters.settings sees to it)
    return AsyncWebClient(**kwargs)


# --- replies ---------------------------------------------------------------------------


def run_buttons(data: Any) -> tuple[Button, ...]:
    """The buttons a run's result offers next, read off its ``run_data``."""
    if not isinstance(data, dict) or not str(data.get("id", "")).startswith("RUN-"):
        return ()
    run_id, state = data["id"], data.get("state")
    if data.get("dry_run"):
        return ()
    if state in ("awaiting_approval", "expired"):
        return (Button("approve", f"Approve {run_id}", run_id, "primary"),
                Button("deny", f"Deny {run_id}", run_id))
    if state in ("applied", "verified"):
        return (Button("revert", f"Revert {run_id}", run_id, "danger"),)
    return ()


def result_message(result: Result, title: str, incident_id: str | None = None) -> Message:
    """A command's Result as a neutral Message: the text verbatim in a code block."""
    text = result.text.strip() or "(nothing to show)"
    if len(text) > MAX_REPLY_TEXT:
        more = f"show {incident_id}" if incident_id else "the CLI"
        text = text[:MAX_REPLY_TEXT] + f"\n… (cut; see {more} for the rest)"
    first = text.splitlines()[0]
    return Message("result", incident_id, title, first,
                   sections=(Section(f"```\n{text}\n```"),), buttons=run_buttons(result.data))


def reply(msg: Message, *, in_channel: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``respond``/``ack``: escaped blocks plus the fallback text."""
    return {"text": escape_mrkdwn(msg.text)[:3000], "blocks": render(msg),
            "response_type": "in_channel" if in_channel else "ephemeral"}


def notice(text: str) -> dict[str, Any]:
    return {"text": escape_mrkdwn(text)[:3000], "response_type": "ephemeral"}


def _incident_of(result: Result, fallback: str | None) -> str | None:
    if isinstance(result.data, dict) and result.data.get("incident_id"):
        return str(result.data["incident_id"])
    return fallback


# --- the app ---------------------------------------------------------------------------


class SlackHandlers:
    """The listeners, kept as methods so tests can reach the pieces."""

    def __init__(self, engine: Engine, settings: Settings, authorizer: OncallAuthorizer,
                 channel_alerts: ChannelAlerts, core: Inline | None = None) -> None:
        self.engine = engine
        # Everything that touches the engine or the store runs on the core (its own
        # thread in `serve`): acks never wait behind a store write.
        self.core = core or Inline()
        self.settings = settings
        self.authorizer = authorizer
        self.channel_alerts = channel_alerts

    def context(self, user_id: str) -> Context:
        return Context(actor=user_id, playbooks_dir=self.settings.playbooks_dir,
                       release_gate=self.settings.release_gate,
                       canary_thresholds=self.settings.canary_thresholds,
                       slos=self.settings.slos,
                       console_url=self.settings.console_base,
                       console_secret=self.settings.console_secret,
                       open_engine=lambda: self.engine, local=False,
                       open_drills=self._open_drills)

    def _open_drills(self, engine: Engine) -> Any:
        from drills.harness import drill_service  # the sandbox loads only when drills run

        return drill_service(engine, self.settings)

    async def command(self, ack: Any, body: dict[str, Any], respond: Any) -> None:
        user = str(body.get("user_id") or "")
        text = str(body.get("text") or "").strip() or "help"
        try:
            tokens = split(text)
            cmd = parse(tokens, VERBS)
        except InputError as err:  # unknown verb, bad quoting, missing argument: usage help
            await ack(**notice(f"{err}"))
            return
        changes = needs_oncall(cmd)
        if changes:
            await ack(**notice(f"working on it: {cmd.verb.name} …"))
        else:
            await ack()
        try:
            if changes and not (decision := await self.authorizer.check(user)).allowed:
                await respond(**notice(f"refused: {decision.reason}"))
                return
            result = await self.core.call(execute, tokens, self.context(user))
            title = f"{SLASH_COMMAND} {cmd.verb.name}" + ("" if result.ok else " (refused)")
            msg = result_message(result, title, _incident_of(result, None))
            # A change done is news for the channel; reads, failures and secrets (an
            # approval link) stay with the asker.
            await respond(**reply(msg, in_channel=changes and result.ok
                                  and not cmd.verb.private))
        except Exception:  # noqa: BLE001 - the user gets a line, the log gets the traceback
            log.exception("/llm-incident %s failed", cmd.verb.name)
            await respond(**notice("internal error; the failure was logged"))

    async def button(self, ack: Any, body: dict[str, Any], action: dict[str, Any],
                     respond: Any) -> None:
        await ack()
        user = str((body.get("user") or {}).get("id") or "")
        name = action_of(str(action.get("action_id", "")))
        try:
            parts = parse_value(name, str(action.get("value", "")))
        except InputError as err:
            await respond(**notice(f"this button is broken: {err}"))
            return
        try:
            if name not in READ_ONLY_BUTTONS and \
                    not (decision := await self.authorizer.check(user)).allowed:
                await respond(**notice(f"refused: {decision.reason}"))
                return
            tokens = BUTTON_COMMANDS[name](parts)
            result = await self.core.call(execute, tokens, self.context(user))
            await self._button_result(name, parts, user, result, respond)
        except Exception:  # noqa: BLE001
            log.exception("button %s failed", name)
            await respond(**notice("internal error; the failure was logged"))

    async def _button_result(self, name: str, parts: Sequence[str], user: str, result: Result,
                             respond: Any) -> None:
        incident_id = _incident_of(result, await self.core.call(self._incident_for, name, parts))
        if (not result.ok and result.exit_code != 3) or not result.changed:
            # A stale or double click, a closed incident: tell the clicker, not the channel.
            await respond(**notice(f"{BUTTON_WORDS[name]}: {result.text}"))
            return
        verdict = "" if result.ok else " refused"
        title = f"{incident_id + ' ' if incident_id else ''}{BUTTON_WORDS[name]}{verdict} ({user})"
        msg = result_message(result, title, incident_id)
        if incident_id:
            # The incident thread: the audit trail people read.
            await self.core.call(self.engine.publish, msg)
        else:
            await respond(**reply(msg, in_channel=True) | {"replace_original": False})

    async def _incident_for(self, name: str, parts: Sequence[str]) -> str | None:
        if name.startswith("release_"):
            return parts[0]  # the release's own live message is keyed by its id
        if name not in ("approve", "deny", "revert"):
            return parts[0]
        try:  # a refusal's Result carries no run data: find the run's incident
            return self.engine.store.run(parts[0]).incident_id
        except IncidentBotError:
            return None

    async def message(self, event: dict[str, Any], context: Any) -> None:
        await self.core.call(self.channel_alerts.handle, event,
                             bot_user_id=context.get("bot_user_id"), bot_id=context.get("bot_id"))


def create_slack_app(
    engine: Engine,
    settings: Settings,
    *,
    client: AsyncWebClient | None = None,
    authorizer: OncallAuthorizer | None = None,
    on_ignored: Callable[[str], None] | None = None,
    core: Inline | None = None,
) -> AsyncApp:
    """The bolt app. ``client`` defaults to one on ``settings.slack_api_url``."""
    if not settings.slack_bot_token:
        raise IncidentBotError("the Slack app needs SLACK_BOT_TOKEN",
                               hint="OAuth & Permissions > Bot User OAuth Token (xoxb-...)")
    client = client or web_client(settings)
    authorizer = authorizer or OncallAuthorizer(settings.oncall_users, settings.oncall_group,
                                                client)
    app = AsyncApp(
        client=client,
        # Empty when only Socket Mode is used: http_mode refuses to mount without a secret.
        signing_secret=settings.slack_signing_secret or "",
        logger=logging.getLogger("llm_incident.slack.bolt"),
    )
    handlers = SlackHandlers(engine, settings, authorizer,
                             ChannelAlerts(engine, settings.alert_channels,
                                           settings.alert_posters, on_ignored=on_ignored),
                             core=core)
    app.command(SLASH_COMMAND)(handlers.command)
    app.action(BUTTON_RE)(handlers.button)
    app.event("message")(handlers.message)
    app.handlers = handlers  # type: ignore[attr-defined]  # for tests and the service
    return app
