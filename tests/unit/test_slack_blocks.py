"""Block Kit rendering: Slack's limits hold for any input, and alert text is escaped."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from incident_env import Env, alert
from slack_sdk.models.blocks import Block

from bot.adapters.slack import blocks as bk
from bot.adapters.slack.blocks import action_of, escape_mrkdwn, render, render_text, truncate
from bot.core.messages import Button, Field, Message, Section

HOSTILE = "<!channel> <!here> <@U123> <http://evil.example|click me> & {{ 7*7 }}"


def texts(blocks: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every text object in the blocks (section text, fields, context, header, buttons)."""
    for b in blocks:
        for key in ("text",):
            if isinstance(b.get(key), dict):
                yield b[key]
        yield from b.get("fields", [])
        for el in b.get("elements", []):
            if el.get("type") in ("mrkdwn", "plain_text"):
                yield el
            elif isinstance(el.get("text"), dict):
                yield el["text"]


def assert_within_limits(blocks: list[dict[str, Any]]) -> None:
    assert 0 < len(blocks) <= 50
    for b in blocks:
        # The SDK's own validators accept every block we produce.
        Block.parse(b).validate_json()
        if b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
        if b["type"] == "section":
            assert "text" in b or b.get("fields")
            if "text" in b:
                assert 0 < len(b["text"]["text"]) <= 3000
            assert len(b.get("fields", [])) <= 10
            assert all(0 < len(f["text"]) <= 2000 for f in b.get("fields", []))
        if b["type"] == "actions":
            els = b["elements"]
            assert 0 < len(els) <= 25
            ids = [e["action_id"] for e in els]
            assert len(set(ids)) == len(ids), "action_ids must be unique within a block"
            for e in els:
                assert len(e["text"]["text"]) <= 75
                assert len(e["action_id"]) <= 255 and len(e["value"]) <= 2000


def huge_message() -> Message:
    big = "x" * 10_000
    steps = tuple(
        Section(f"step {i} {big}", title=f"Step {i}: {'t' * 300}",
                fields=tuple(Field(f"label-{j}", big) for j in range(12)))
        for i in range(100)
    )
    buttons = tuple(Button("run_step", "R" * 80, f"INC-3:pb:s{i}", "primary" if i == 0 else None)
                    for i in range(100))
    buttons += (Button("ack", "Acknowledge", "INC-3"),
                Button("not_this_playbook", "Not this playbook", "INC-3:pb", "danger"))
    return Message("suggestion", "INC-3", "T" * 400, big, severity="critical",
                   sections=steps, buttons=buttons)


def test_escape_mrkdwn_neutralises_pings_links_and_ampersands() -> None:
    assert escape_mrkdwn("<!channel>") == "&lt;!channel&gt;"
    assert escape_mrkdwn("<!here> <@U123>") == "&lt;!here&gt; &lt;@U123&gt;"
    assert escape_mrkdwn("<http://x|y>") == "&lt;http://x|y&gt;"
    # & first, so text that already looks escaped is shown literally, not decoded
    assert escape_mrkdwn("a & b &lt;") == "a &amp; b &amp;lt;"
    assert escape_mrkdwn("plain text") == "plain text"


def test_hostile_alert_text_never_reaches_slack_as_markup() -> None:
    msg = Message("suggestion", "INC-1", f"INC-1 {HOSTILE}", HOSTILE, severity="critical",
                  sections=(Section(HOSTILE, title=HOSTILE,
                                    fields=(Field(HOSTILE, HOSTILE),)),),
                  buttons=(Button("ack", HOSTILE, "INC-1"),))
    blocks = render(msg)
    assert_within_limits(blocks)
    for t in texts(blocks):
        if t["type"] == "mrkdwn":
            assert "<" not in t["text"] and ">" not in t["text"], t["text"]
            assert t.get("verbatim") is True
    section = next(b for b in blocks if b["type"] == "section")
    assert "&lt;http://evil.example|click me&gt; &amp; {{ 7*7 }}" in section["text"]["text"]
    # plain_text is not parsed by Slack: shown exactly as typed
    assert blocks[0]["text"]["text"] == f"INC-1 {HOSTILE}"
    assert render_text(msg).startswith("&lt;!channel&gt; &lt;!here&gt; &lt;@U123&gt;")


def test_huge_input_is_cut_to_slacks_limits_with_a_visible_marker() -> None:
    msg = huge_message()
    blocks = render(msg)
    assert_within_limits(blocks)
    assert len(blocks) == 50
    assert len(blocks[0]["text"]["text"]) == 150 and blocks[0]["text"]["text"].endswith("…")
    marker = "… (truncated; /llm-incident show INC-3 for the rest)"
    all_text = [t["text"] for t in texts(blocks)]
    assert any(t.endswith(marker) for t in all_text), "long text ends in the marker"
    notes = [b for b in blocks if b["type"] == "context" and marker in str(b)]
    assert notes, "blocks that did not fit are announced"
    assert "buttons: type the commands" in str(notes[-1])
    buttons = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert len(buttons) == bk.MAX_BUTTONS
    # Incident-wide buttons survive a long list of step buttons.
    assert {action_of(b["action_id"]) for b in buttons} >= {"ack", "not_this_playbook"}
    assert all(len(b["text"]["text"]) == 75 for b in buttons if action_of(b["action_id"])
               == "run_step")
    assert len(render_text(msg)) <= bk.MAX_FALLBACK_TEXT


def test_buttons_keep_action_value_and_style() -> None:
    msg = Message("suggestion", "INC-2", "INC-2 x", "t", buttons=(
        Button("run_step", "Run a", "INC-2:pb:a", "primary"),
        Button("run_step", "Run b", "INC-2:pb:b"),
        Button("deny", "Deny", "RUN-1", "danger"),
    ))
    (actions,) = [b for b in render(msg) if b["type"] == "actions"]
    els = actions["elements"]
    assert [action_of(e["action_id"]) for e in els] == ["run_step", "run_step", "deny"]
    assert len({e["action_id"] for e in els}) == 3
    assert [e["value"] for e in els] == ["INC-2:pb:a", "INC-2:pb:b", "RUN-1"]
    assert [e.get("style") for e in els] == ["primary", None, "danger"]
    assert bk.ACTION_ID_RE.match(els[0]["action_id"])
    assert action_of("something-else") == "something-else"


def test_too_long_button_value_drops_the_button_not_the_message() -> None:
    msg = Message("result", "INC-2", "x", "t", buttons=(
        Button("revert", "Revert", "R" * 2001), Button("revert", "Revert", "RUN-1")))
    blocks = render(msg)
    assert_within_limits(blocks)
    values = [e["value"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert values == ["RUN-1"]


def test_drill_messages_carry_a_visible_marker_once() -> None:
    msg = Message("suggestion", "INC-4", "INC-4 latency", "text", is_drill=True)
    blocks = render(msg)
    assert blocks[0]["text"]["text"] == "[DRILL] INC-4 latency"
    assert "[DRILL]" in str(blocks[1])
    already = Message("suggestion", "INC-4", "[DRILL] INC-4 latency", "[DRILL] t", is_drill=True)
    assert render(already)[0]["text"]["text"].count("[DRILL]") == 1
    assert render_text(already).count("[DRILL]") == 1
    assert "[DRILL]" not in str(render(Message("suggestion", "INC-5", "real", "t")))


def test_truncate_never_splits_an_escaped_entity() -> None:
    text = escape_mrkdwn("&" * 5000)
    cut = truncate(text, 3000, "…")
    assert len(cut) <= 3000 and cut.endswith("…")
    assert cut[:-1].replace("&amp;", "") == ""
    assert truncate("short", 10) == "short"


def test_empty_sections_are_skipped_and_fields_only_sections_kept() -> None:
    msg = Message("update", "INC-6", "INC-6 acknowledged", "", sections=(
        Section(""), Section("", fields=(Field("Status", "open -> acknowledged"),
                                         Field("By", "")))))
    blocks = render(msg)
    assert_within_limits(blocks)
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) == 1 and "text" not in sections[0]
    assert sections[0]["fields"][1]["text"] == "*By*\n-"
    # 23 fields become three sections of at most ten
    many = Message("update", "INC-6", "t", "t",
                   sections=(Section("", fields=tuple(Field(str(i), "v") for i in range(23))),))
    assert [len(b["fields"]) for b in render(many) if "fields" in b] == [10, 10, 3]


def test_a_real_suggestion_with_a_hostile_label_renders_valid_blocks() -> None:
    env = Env()
    hostile = alert(route=HOSTILE)
    asyncio.run(env.engine.handle_alerts([hostile]))
    (msg,) = env.notifier.of_kind("suggestion")  # type: ignore[attr-defined]
    blocks = render(msg)
    assert_within_limits(blocks)
    for t in texts(blocks):
        if t["type"] == "mrkdwn":
            assert "<!channel>" not in t["text"] and "<@U123>" not in t["text"]
    assert any("&lt;!channel&gt;" in t["text"] for t in texts(blocks) if t["type"] == "mrkdwn")
    ids = [action_of(e["action_id"]) for b in blocks if b["type"] == "actions"
           for e in b["elements"]]
    assert "run_step" in ids and "ack" in ids


@pytest.mark.parametrize("kind", ["timeline", "result", "reminder", "update", "drill"])
def test_every_kind_renders(kind: str) -> None:
    msg = Message(kind, None, "t", "", severity="weird")  # type: ignore[arg-type]
    blocks = render(msg)
    assert_within_limits(blocks)
    assert render_text(msg) == "t"


def test_the_stored_form_of_a_message_round_trips_and_damage_is_named() -> None:
    from bot.adapters.slack.thread_store import ChatMessages, message_from_json, message_to_json
    from bot.base.errors import StoreError
    from bot.store import Store

    msg = huge_message()
    assert message_from_json(message_to_json(msg)) == msg
    with pytest.raises(StoreError, match="chat message is not readable"):
        message_from_json('{"kind": "update"}')
    messages = ChatMessages(Store(None))
    messages.record_post("INC-3", "C1", "1.000001", msg)
    messages.record_update("INC-3", "C1", status_message=Message("update", "INC-3", "u", "u"))
    got = messages.get("INC-3", "C1")
    assert got is not None and got.ts == "1.000001" and got.message == msg
    assert got.status_message is not None and got.status_message.title == "u"
    assert messages.get("INC-3", "C2") is None
