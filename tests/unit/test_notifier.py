"""Notifiers and the neutral message: console text, log, recording, fan-out, button values."""

from __future__ import annotations

import asyncio
import io
import logging
import shlex
from datetime import UTC, datetime

import pytest
from fakes import RecordingNotifier

from bot.base.errors import InputError
from bot.core.messages import Button, Field, Message, Section, button_command, parse_value
from bot.core.notifier import ConsoleNotifier, FanoutNotifier, LogNotifier, publish_safely


def run(coro):
    return asyncio.run(coro)


MSG = Message(
    kind="suggestion", incident_id="INC-3", title="INC-3 Runaway cost on chat",
    text="suggested playbook runaway-cost", severity="critical", is_drill=True,
    sections=(Section("Spend is 4x budget <b>*now*</b>", title="Alert",
                      fields=(Field("Route", "chat"), Field("Model", "gpt-x"))),),
    buttons=(Button("run_step", "Run cap-output", "INC-3:runaway-cost:cap-output", "primary"),
             Button("approve", "Approve RUN-3", "RUN-3"),
             Button("ack", "Acknowledge", "INC-3")),
)


def test_console_renders_a_readable_block():
    out = io.StringIO()
    run(ConsoleNotifier(out).publish(MSG))
    lines = out.getvalue().splitlines()
    assert lines[0] == "== [CRITICAL] [DRILL] INC-3 Runaway cost on chat =="
    text = out.getvalue()
    assert "-- Alert" in text and "Route: chat" in text and "Model: gpt-x" in text
    assert "<b>*now*</b>" in text  # plain: escaping is the chat renderer's job
    assert "[Run cap-output]  llm-incident run INC-3 cap-output --playbook runaway-cost" in text
    assert "[Approve RUN-3]  llm-incident approve RUN-3 --apply" in text
    assert "[Acknowledge]  llm-incident ack INC-3" in text


def test_console_survives_a_malformed_button_value():
    out = io.StringIO()
    bad = Message("update", None, "x", "y", buttons=(Button("run_step", "Run", "INC-1"),))
    run(ConsoleNotifier(out).publish(bad))
    assert "[Run]" in out.getvalue() and "llm-incident" not in out.getvalue()


def test_log_notifier_logs_fallback_text(caplog):
    with caplog.at_level(logging.INFO, logger="llm_incident.messages"):
        run(LogNotifier().publish(MSG))
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING  # critical severity
    assert "INC-3 Runaway cost on chat" in rec.getMessage() and "[DRILL]" in rec.getMessage()
    assert rec.incident_id == "INC-3"


def test_recording_notifier_keeps_messages_and_times():
    times = iter([datetime(2026, 1, 1, 10, m, tzinfo=UTC) for m in (1, 2)])
    rec = RecordingNotifier(clock=lambda: next(times))
    other = Message("update", "INC-3", "INC-3 acknowledged", "acked")
    run(rec.publish(MSG))
    run(rec.publish(other))
    assert rec.messages == [MSG, other]
    assert [t.minute for t in rec.times] == [1, 2]
    assert rec.of_kind("update") == [other]


class Boom:
    async def publish(self, msg):
        raise RuntimeError("webhook 500")


class Hang:
    async def publish(self, msg):
        await asyncio.sleep(3600)


def test_fanout_isolates_a_failing_and_a_hanging_notifier(caplog):
    rec = RecordingNotifier()
    fan = FanoutNotifier(Boom(), Hang(), rec, timeout=0.05)
    with caplog.at_level(logging.ERROR):
        run(fan.publish(MSG))  # does not raise, does not hang
    assert rec.messages == [MSG]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "Boom failed" in logged and "webhook 500" in logged and "Hang failed" in logged


def test_publish_safely_reports_failure_without_raising():
    assert run(publish_safely(Boom(), MSG)) is False
    assert run(publish_safely(None, MSG)) is True


@pytest.mark.parametrize(
    "action, value, command",
    [("run_step", "INC-3:runaway-cost:cap-output",
      "run INC-3 cap-output --playbook runaway-cost"),
     ("dry_run", "INC-3:runaway-cost:cap-output",
      "run INC-3 cap-output --playbook runaway-cost --dry-run"),
     ("approve", "RUN-3", "approve RUN-3 --apply"),
     ("deny", "RUN-3", "deny RUN-3 --reason 'denied by button'"),
     ("revert", "RUN-3", "revert RUN-3"), ("ack", "INC-3", "ack INC-3"),
     ("not_this_playbook", "INC-3:runaway-cost", "reject INC-3 runaway-cost")],
)
def test_button_values_and_commands(action, value, command):
    assert button_command(Button(action, "x", value)) == command
    # One table: what the console prints is exactly what a Slack click runs.
    from bot.adapters.slack.app import BUTTON_COMMANDS as SLACK

    assert shlex.split(command) == SLACK[action](parse_value(action, value))


@pytest.mark.parametrize(
    "action, value, problem",
    [("run_step", "INC-3:runaway-cost", "3 non-empty"), ("approve", "RUN-3:x", "1 non-empty"),
     ("ack", "", "1 non-empty"), ("run_step", "INC-3::cap", "3 non-empty"),
     ("launch", "INC-3", "unknown button action")],
)
def test_bad_button_values_are_refused_clearly(action, value, problem):
    with pytest.raises(InputError, match=problem) as err:
        parse_value(action, value)
    assert action in err.value.message


def test_every_button_command_is_a_valid_command():
    # The console shows these as "what to type"; each must parse with the shared grammar.
    from bot.adapters.commands import VERBS, parse, split
    from bot.core.messages import Button, button_command

    for action, value in [("run_step", "INC-3:runaway-cost:cap-output"),
                          ("dry_run", "INC-3:runaway-cost:cap-output"), ("approve", "RUN-7"),
                          ("deny", "RUN-7"), ("revert", "RUN-7"), ("ack", "INC-3"),
                          ("not_this_playbook", "INC-3:runaway-cost")]:
        line = button_command(Button(action=action, label="x", value=value))
        assert parse(split(line.removeprefix("llm-incident ")), VERBS).verb.name


def test_drill_messages_go_to_the_drill_notifier_and_nothing_else_does():
    from bot.core.notifier import DrillRouter

    real, drill = RecordingNotifier(), RecordingNotifier()
    router = DrillRouter(real, drill)
    page = Message(kind="suggestion", incident_id="INC-1", title="real", text="t")
    rehearsal = Message(kind="suggestion", incident_id="INC-2", title="drill", text="t",
                        is_drill=True)
    asyncio.run(router.publish(page))
    asyncio.run(router.publish(rehearsal))
    assert [m.title for m in real.messages] == ["real"]
    assert [m.title for m in drill.messages] == ["drill"]


def test_slack_notifier_routes_drills_to_the_drill_channel(tmp_path):
    from bot.adapters.settings import Settings
    from bot.adapters.slack import build_slack_notifier
    from bot.core.notifier import DrillRouter
    from bot.store import Store

    class E:
        store = Store(tmp_path / "s.db")

    base = Settings(slack_bot_token="xoxb-test", slack_channel="CPAGES")
    assert not isinstance(build_slack_notifier(base, E()), DrillRouter)
    routed = build_slack_notifier(Settings(slack_bot_token="xoxb-test", slack_channel="CPAGES",
                                           drill_channel="CDRILLS"), E())
    assert isinstance(routed, DrillRouter)
    assert (routed.real.channel, routed.drill.channel) == ("CPAGES", "CDRILLS")
