"""What a change says goes through the outbox, whichever process made it (issue 25).

Two engines on one SQLite file stand for two processes: ``cli`` has no notifier
(as the `llm-incident` verbs), ``serve`` has one. The CLI queues each message in
its change's transaction and never takes one; ``serve``'s drain sends it once,
and an update that is out of date by then is rendered from the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from incident_env import Env, alert

from bot.core.lifecycle import Change
from bot.core.messages import Message, message_from_json, message_to_json


def pair(tmp_path: Path) -> tuple[Env, Env]:
    serve = Env(db=tmp_path / "bot.db")
    cli = Env(db=tmp_path / "bot.db", clock=serve.clock)
    cli.engine.notifier = None  # the CLI: no channel of its own
    return cli, serve


def opened(serve: Env) -> str:
    (item,) = asyncio.run(serve.engine.handle_alerts([alert()]))
    serve.notifier.clear()  # type: ignore[attr-defined]
    return item.incident_id


def pending_messages(env: Env) -> list[Message]:
    return [message_from_json(i.payload or "") for i in env.store.pending_outbox()
            if i.kind == "message"]


def test_a_cli_resolve_is_queued_with_its_change_and_sent_once_by_serve(tmp_path):
    cli, serve = pair(tmp_path)
    inc = opened(serve)
    asyncio.run(cli.engine.resolve(inc, "alice", "fixed"))
    assert [m.title for m in pending_messages(cli)] == [f"{inc} resolved"]
    assert asyncio.run(cli.engine.drain_outbox()) == 0  # the CLI never takes a message
    assert pending_messages(cli)
    assert asyncio.run(serve.engine.drain_outbox()) == 1
    assert [(m.kind, m.title) for m in serve.published] == [("update", f"{inc} resolved")]
    assert "resolved by alice: fixed" in serve.published[0].text
    assert asyncio.run(serve.engine.drain_outbox()) == 0  # once
    assert len(serve.published) == 1 and not pending_messages(serve)


def test_notes_and_commanders_from_the_cli_reach_the_channel_too(tmp_path):
    cli, serve = pair(tmp_path)
    inc = opened(serve)
    asyncio.run(cli.engine.note(inc, "rolled the canary back by hand", "alice"))
    asyncio.run(cli.engine.assign(inc, "bob", "alice"))
    asyncio.run(serve.engine.drain_outbox())
    assert [m.title for m in serve.published] == [f"{inc} note by alice",
                                                  f"{inc} commander: bob"]


def test_an_update_out_of_date_at_send_time_shows_the_incident_as_it_is(tmp_path):
    cli, serve = pair(tmp_path)
    inc = opened(serve)
    asyncio.run(cli.engine.acknowledge(inc, "alice"))
    asyncio.run(cli.engine.resolve(inc, "bob", "done"))
    asyncio.run(serve.engine.drain_outbox())
    # The acknowledgement's update is superseded: the live message goes to resolved once.
    assert [m.title for m in serve.published] == [f"{inc} resolved"]
    # One queued alone (a crash held it) is rendered again from the store when sent.
    # (What an "acknowledged" update queued before the resolve looked like.)
    acked = replace(serve.store.incident(inc), status="acknowledged")
    held = message_to_json(serve.engine.lifecycle.update_message(Change(acked, "open", "alice")))
    assert message_from_json(held).title == f"{inc} acknowledged"
    refreshed = serve.engine.lifecycle.refresh(message_from_json(held))
    assert refreshed.title == f"{inc} resolved" and "resolved by bob: done" in refreshed.text
    assert refreshed.closes


def test_a_process_with_a_notifier_sends_its_own_messages_at_once_claimed(tmp_path):
    cli, serve = pair(tmp_path)
    inc = opened(serve)
    asyncio.run(serve.engine.resolve(inc, "alice"))
    assert [m.title for m in serve.published] == [f"{inc} resolved"]
    assert not pending_messages(serve)  # claimed at insert, done once sent
    assert asyncio.run(serve.engine.drain_outbox()) == 0 and len(serve.published) == 1
