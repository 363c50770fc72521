"""handle_alerts: the suggestion message, automatic steps and what gets published."""

from __future__ import annotations

import asyncio

from fakes import FakeMetrics, RecordingNotifier
from incident_env import Env, alert, provider_alert

from actions.base import Sample
from bot.core.messages import button_command
from bot.core.notifier import FanoutNotifier, render_text


def run(coro):
    return asyncio.run(coro)


def field_map(msg, title):
    sec = next(s for s in msg.sections if s.title == title)
    return {f.label: f.value for f in sec.fields}


def scripted_env(**kw) -> tuple[Env, list[tuple[str, str]]]:
    env = Env(**kw)
    pb = env.registry_pb = env.engine.registry.get("runaway-cost")
    queries = env.engine.diagnose(pb, alert())
    return env, queries


def test_suggestion_carries_class_route_diagnose_steps_and_buttons():
    env, queries = scripted_env()
    (spend_title, spend_q), (tok_title, tok_q) = queries
    env.metrics.set(spend_q, 42.5)
    env.metrics.set(tok_q, [Sample(labels={"requested_model": "chat"}, value=1830.25)])
    # The class label makes a second playbook a (weaker) candidate.
    item = run(env.engine.handle_alerts([alert(incident_class="latency_spike")]))[0]
    assert item.created and item.outcome == "opened"
    [msg] = env.published
    assert msg.kind == "suggestion" and msg.incident_id == item.incident_id
    assert msg.severity == "critical" and not msg.is_drill
    head = field_map(msg, "Alert")
    assert head["Class"] == "runaway_cost" and head["Route"] == "chat"
    assert head["Alert"] == "LLMCostBurnRateHigh" and head["Model"] == "-"
    diag = field_map(msg, "Diagnose (now)")
    assert diag[spend_title] == "42.5"
    assert diag[tok_title] == "1830 (requested_model=chat)"
    steps = [s for s in msg.sections if (s.title or "").startswith("Step ")]
    assert [s.title.split(":")[0] for s in steps] == ["Step 1", "Step 2", "Step 3", "Step 4"]
    # The per-customer cap is listed but not offered: this alert names no customer.
    assert "cap-customer" in steps[0].title
    assert "not for this alert (the alert has no customer label)" in steps[0].text
    steps = steps[1:]
    assert "max_output_tokens=256" in steps[0].text
    assert "needs an on-call approval" in steps[0].text and "after 2h" in steps[0].text
    assert "needs approval by a second person" in steps[2].text
    others = next(s for s in msg.sections if s.title == "Other candidates")
    assert others.text.startswith("latency-spike: ") and "runaway-cost" not in others.text
    by_action = {}
    for b in msg.buttons:
        by_action.setdefault(b.action, []).append(b.value)
    inc = item.incident_id
    assert by_action["run_step"] == [f"{inc}:runaway-cost:cap-output",
                                     f"{inc}:runaway-cost:lower-concurrency",
                                     f"{inc}:runaway-cost:disable-route"]
    assert by_action["dry_run"] == by_action["run_step"]
    # The first step that applies is the primary one.
    assert [b.style for b in msg.buttons if b.action == "run_step"] == ["primary", None, None]
    assert by_action["ack"] == [inc] and by_action["not_this_playbook"] == [f"{inc}:runaway-cost"]
    assert "runaway-cost" in msg.text and inc in msg.title


def test_a_failing_and_an_unscripted_query_show_unavailable_and_no_data():
    class HalfBroken(FakeMetrics):
        async def query(self, promql):
            if "spend" in promql:
                raise RuntimeError("connection refused")
            return await super().query(promql)

    env = Env(metrics=HalfBroken())
    run(env.engine.handle_alerts([alert()]))
    diag = field_map(env.published[0], "Diagnose (now)")
    values = list(diag.values())
    assert values[0] == "unavailable (RuntimeError)" and values[1] == "no data"


def test_a_hanging_query_is_cut_by_the_timeout_and_the_suggestion_still_posts():
    class Hanging(FakeMetrics):
        async def query(self, promql):
            await asyncio.sleep(3600)

    env = Env(metrics=Hanging(), diagnose_timeout=0.05)
    run(env.engine.handle_alerts([alert()]))
    [msg] = env.published
    assert all(v.startswith("unavailable (no answer within 0.05s")
               for v in field_map(msg, "Diagnose (now)").values())


def test_no_metrics_source_says_so():
    env = Env()
    env.runner.metrics = None
    run(env.engine.handle_alerts([alert()]))
    assert set(field_map(env.published[0], "Diagnose (now)").values()) == {
        "unavailable (no metrics source configured)"}


def test_drill_marker():
    env = Env()
    item = run(env.engine.handle_alerts([alert()], is_drill=True))[0]
    msg = env.published[0]
    assert msg.is_drill and "[DRILL]" in msg.title and msg.text.startswith("[DRILL]")
    assert env.store.incident(item.incident_id).is_drill
    assert "[DRILL]" in render_text(msg).splitlines()[0]


def test_label_text_is_never_rendered_as_a_template():
    env = Env()
    run(env.engine.handle_alerts([alert(route="{{ 7*7 }}", team="{% for x in y %}")]))
    msg = env.published[0]
    assert field_map(msg, "Alert")["Route"] == "{{ 7*7 }}"
    blob = render_text(msg)
    assert "49" not in blob and "{{ 7*7 }}" in blob


def test_unmatched_alert_gets_a_suggestion_without_steps():
    env = Env()
    run(env.engine.handle_alerts([alert("SomethingElse", fingerprint="fp-x")]))
    [msg] = env.published
    assert any(s.title == "No playbook" for s in msg.sections)
    assert [b.action for b in msg.buttons] == ["ack"]


def test_duplicate_alert_publishes_nothing():
    env = Env()
    run(env.engine.handle_alerts([alert()]))
    env.notifier.clear()
    items = run(env.engine.handle_alerts([alert(), alert()]))
    assert [i.outcome for i in items] == ["duplicate", "duplicate"]
    assert env.published == []


def test_a_joined_alert_updates_the_live_message_not_a_new_one():
    env = Env()
    first = run(env.engine.handle_alerts([alert()]))[0]
    env.notifier.clear()
    item = run(env.engine.handle_alerts([alert("LLMOutputTokensSurge", fingerprint="fp-2")]))[0]
    assert item.outcome == "joined" and item.incident_id == first.incident_id
    (update,) = env.published  # no new suggestion, no thread chatter: one update
    assert update.kind == "update" and update.incident_id == first.incident_id
    fields = {f.label: f.value for f in update.sections[0].fields}
    assert fields["Status"] == "open" and fields["Alerts"].startswith("2 firing of 2, last seen")
    assert [b.action for b in update.buttons] == ["ack"]
    # A repeat of a known alert changes nothing and publishes nothing.
    env.notifier.clear()
    run(env.engine.handle_alerts([alert("LLMOutputTokensSurge", fingerprint="fp-2")]))
    assert env.published == []


def test_auto_step_is_applied_and_reported():
    env = Env()
    item = run(env.engine.handle_alerts([provider_alert()]))[0]
    kinds = [m.kind for m in env.published]
    assert kinds[:2] == ["suggestion", "result"]
    result = env.published[1]
    assert "fallback-standby: applied" in result.title and "RUN-1" in result.text
    assert [(b.action, b.value) for b in result.buttons] == [("revert", "RUN-1")]
    assert env.driver.policy.route("chat").fallback == "chat-small"
    assert env.store.run("RUN-1").state == "applied"
    assert env.store.incident(item.incident_id).status == "mitigating"
    assert env.published[-1].kind == "update" and "open -> mitigating" in env.published[-1].text


def test_auto_step_while_paused_is_held_and_reported():
    env = Env()
    run(env.runner.pause("alice", "provider maintenance"))
    item = run(env.engine.handle_alerts([provider_alert()]))[0]
    result = env.published[1]
    assert result.kind == "result" and result.title.endswith("held")
    assert "paused by alice: provider maintenance" in result.text and "resume" in result.text
    assert env.driver.writes == []
    assert env.store.run("RUN-1").held_at is not None
    assert env.store.incident(item.incident_id).status == "open"


def test_auto_step_refused_by_a_guard_is_reported_with_the_guard():
    env = Env()
    run(env.engine.handle_alerts([provider_alert()]))
    run(env.runner.revert("RUN-1", actor="alice", reason="provider back"))
    run(env.engine.resolve("INC-1", "alice"))
    env.notifier.clear()
    # Same route, past the 10m flap window (a new incident) but within the 30m
    # cooldown: the second incident's auto step is refused.
    env.clock.advance(minutes=11)
    run(env.engine.handle_alerts([provider_alert(starts_at=env.clock.now)]))
    result = env.published[1]
    assert result.kind == "result"
    assert "refused by guard" in result.title and "cooldown" in result.text + result.title
    assert [m.kind for m in env.published] == ["suggestion", "result"]


def test_a_failing_notifier_never_blocks_ingest():
    class Broken:
        async def publish(self, msg):
            raise ConnectionError("chat is down")

    env = Env(notifier=Broken())
    items = run(env.engine.handle_alerts([provider_alert()]))
    assert env.store.incident(items[0].incident_id).status == "mitigating"  # auto step ran
    recording = RecordingNotifier()
    env.engine.notifier = FanoutNotifier(Broken(), recording)
    run(env.engine.handle_alerts([alert()]))
    assert [m.kind for m in recording.messages] == ["suggestion"]


def test_every_button_has_a_cli_equivalent():
    env = Env()
    run(env.engine.handle_alerts([alert()]))
    cmds = [button_command(b) for b in env.published[0].buttons]
    assert "run INC-1 cap-output --playbook runaway-cost" in cmds
    assert "run INC-1 cap-output --playbook runaway-cost --dry-run" in cmds
    assert "ack INC-1" in cmds
