"""Socket Mode against a local websocket server speaking Slack's envelope protocol.

bolt's aiohttp ``AsyncSocketModeHandler`` calls ``apps.connections.open`` on the
Web API stub, connects to the ``ws://127.0.0.1`` URL it gets, receives ``hello``,
then slash-command, interactive and Events API envelopes. Each must be acked
(``{"envelope_id"}``) and its effect must show in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from slack_webapi_stub import WebApiStub

from bot.adapters.settings import Settings
from bot.adapters.slack.app import create_slack_app
from bot.adapters.slack.socket_mode import SocketMode
from bot.base.errors import IncidentBotError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from incident_env import Env, alert  # noqa: E402
from slack_socket_stub import SocketModeStub  # noqa: E402

pytestmark = pytest.mark.integration
DEADLINE = 10.0


async def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return result


@contextlib.asynccontextmanager
async def socket_mode() -> AsyncIterator[tuple[Env, SocketModeStub, WebApiStub]]:
    env = Env()
    await env.engine.handle_alerts([alert()])  # INC-1
    async with SocketModeStub() as sock, WebApiStub(
            handlers={"apps.connections.open": sock.connections_open}) as api:
        cfg = Settings(slack_bot_token="xoxb-test", slack_app_token="xapp-1-test",
                       slack_api_url=api.base_url, oncall_users=("U0ALICE", "U0BOB"),
                       alert_channels=("C0ALERTS",), alert_posters=("B0AM",))
        mode = SocketMode(create_slack_app(env.engine, cfg), cfg.slack_app_token or "")
        await mode.start()
        try:
            await sock.wait_connected()
            yield env, sock, api
        finally:
            await mode.stop()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if pending:
                await asyncio.wait(pending, timeout=DEADLINE)


def command_payload(text: str, user: str, url: str) -> dict[str, Any]:
    return {"token": "legacy", "team_id": "T0STUB", "channel_id": "C0INC", "user_id": user,
            "command": "/llm-incident", "text": text, "response_url": url,
            "trigger_id": "1.2.3", "api_app_id": "A0STUB"}


def test_envelopes_are_acked_and_their_commands_take_effect():
    async def main() -> None:
        async with socket_mode() as (env, sock, api):
            assert api.calls_of("apps.connections.open") and sock.connections == 1
            # a slash command that changes something: acked with "working on it"
            url = sock.response_url()
            eid = await sock.send("slash_commands",
                                  command_payload("pause --reason drill", "U0ALICE", url),
                                  accepts_response_payload=True)
            ack = await until(lambda: sock.acks.get(eid), "the ack of the command")
            assert "working on it" in ack["payload"]["text"]
            await until(lambda: sock.responses_to(url), "the command's result")
            assert env.store.flag("paused").set_by == "U0ALICE"
            # a read command from anyone
            url = sock.response_url()
            eid = await sock.send("slash_commands",
                                  command_payload("status", "U0MALLORY", url),
                                  accepts_response_payload=True)
            await until(lambda: sock.acks.get(eid), "the ack of status")
            reply = await until(lambda: sock.responses_to(url), "the status")
            assert "paused by U0ALICE" in str(reply[0]["blocks"])
            # a button
            eid = await sock.send("interactive", {
                "type": "block_actions", "user": {"id": "U0BOB"}, "team": {"id": "T0STUB"},
                "api_app_id": "A0STUB", "token": "legacy", "trigger_id": "1.2.3",
                "channel": {"id": "C0INC"}, "response_url": sock.response_url(),
                "container": {"type": "message", "message_ts": "1.1"},
                "actions": [{"action_id": "ack#0", "block_id": "b", "value": "INC-1",
                             "type": "button", "action_ts": "1.2"}]})
            await until(lambda: sock.acks.get(eid), "the ack of the button")
            await until(lambda: env.store.incident("INC-1").status == "acknowledged",
                        "the acknowledgement")
            # an alert posted in a watched channel, through the Events API
            eid = await sock.send("events_api", {
                "token": "legacy", "team_id": "T0STUB", "api_app_id": "A0STUB",
                "type": "event_callback", "event_id": "Ev1", "event_time": 1,
                "event": {"type": "message", "subtype": "bot_message", "bot_id": "B0AM",
                          "channel": "C0ALERTS", "ts": "1764410400.000100", "text": "",
                          "attachments": [{"title": "[FIRING:1] LLMProviderErrorRateHigh "
                                                    "(chat critical)",
                                           "text": "Labels:\n - route = chat-small"}]}})
            await until(lambda: sock.acks.get(eid), "the ack of the event")
            await until(lambda: len(env.store.incidents()) == 2, "the incident from the channel")

    asyncio.run(main())


def test_socket_mode_refuses_a_bot_token_as_app_token():
    env = Env()
    cfg = Settings(slack_bot_token="xoxb-test")
    with pytest.raises(IncidentBotError, match="app-level token"):
        SocketMode(create_slack_app(env.engine, cfg), "xoxb-not-an-app-token")


def test_serve_mounts_slack_events_and_starts_socket_mode(tmp_path):
    from fakes import RecordingNotifier

    from bot.adapters.service import Service
    from bot.adapters.slack.notifier import SlackNotifier

    async def main() -> None:
        async with SocketModeStub() as sock, WebApiStub(
                handlers={"apps.connections.open": sock.connections_open}) as api:
            cfg = Settings(db_path=tmp_path / "bot.db", policy_path=tmp_path / "policy.yaml",
                           slack_bot_token="xoxb-test", slack_signing_secret="s",
                           slack_app_token="xapp-1-test", slack_api_url=api.base_url,
                           slack_channel="C0INC")
            service = Service(cfg, "127.0.0.1", 0)
            assert isinstance(service.engine.notifier, SlackNotifier)
            assert "/slack/events" in {getattr(r, "path", "") for r in service.app.routes}
            await service.slack.start()
            await sock.wait_connected()
            await service.slack.stop()
            service.engine.store.close()
            plain = Service(Settings(db_path=tmp_path / "b2.db"), "127.0.0.1", 0,
                            notifier=RecordingNotifier())
            assert "/slack/events" not in {getattr(r, "path", "") for r in plain.app.routes}
            assert plain.slack.socket_mode is None
            plain.engine.store.close()

    asyncio.run(main())


def test_two_replicas_on_one_store_each_take_the_events_slack_sends_them(postgres):
    # Two replicas, each with its own Socket Mode connection, on one Postgres database.
    # Slack (the stub) sends each envelope to one connection; whichever gets it acts,
    # through the shared store: every command takes effect exactly once.
    db = postgres.new_database()

    async def main() -> None:
        first, second = Env(db=db), Env(db=db)
        await first.engine.handle_alerts([alert()])  # INC-1, seen by both
        async with SocketModeStub() as sock, WebApiStub(
                handlers={"apps.connections.open": sock.connections_open}) as api:
            cfg = Settings(slack_bot_token="xoxb-test", slack_app_token="xapp-1-test",
                           slack_api_url=api.base_url, oncall_users=("U0ALICE",))
            modes = [SocketMode(create_slack_app(env.engine, cfg), "xapp-1-test")
                     for env in (first, second)]
            for mode in modes:
                await mode.start()
            try:
                await sock.wait_connected(count=2)
                sent = []
                for i in range(6):
                    url = sock.response_url()
                    eid = await sock.send("slash_commands", command_payload(
                        f"note INC-1 replica check {i}", "U0ALICE", url),
                        accepts_response_payload=True)
                    sent.append((eid, url))
                for eid, url in sent:
                    await until(lambda e=eid: sock.acks.get(e), "every command acked")
                    await until(lambda u=url: sock.responses_to(u), "every command answered")
            finally:
                for mode in modes:
                    await mode.stop()
        assert sorted(sock.delivered_to.values()) == [0, 0, 0, 1, 1, 1]  # both took events
        notes = [e.text for e in second.store.timeline("INC-1") if e.kind == "note"]
        assert sorted(notes) == [f"replica check {i}" for i in range(6)], notes

    asyncio.run(main())
