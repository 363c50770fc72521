"""The Slack verbs of the shared command layer, on-call authorization, the replay guard
and alert messages posted in a channel. No network: an engine on fakes, a fake client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from incident_env import PLAYBOOKS, Env, alert
from slack_sdk.errors import SlackApiError

from bot.adapters.commands import VERBS, Context, execute, parse, split
from bot.adapters.slack.app import BUTTON_COMMANDS, BUTTON_RE, result_message, run_buttons
from bot.adapters.slack.auth import OncallAuthorizer, needs_oncall
from bot.adapters.slack.channel_alerts import ChannelAlerts, parse_message, parse_text
from bot.adapters.slack.http_mode import ReplayGuard


def run(coro):
    return asyncio.run(coro)


def cmd(env: Env, text: str, actor: str = "U0ALICE"):
    ctx = Context(actor=actor, playbooks_dir=PLAYBOOKS, open_engine=lambda: env.engine,
                  local=False)
    return run(execute(text, ctx))


@pytest.fixture
def env() -> Env:
    e = Env()
    run(e.engine.handle_alerts([alert()]))  # INC-1: runaway cost on route chat
    return e


# --- the verbs -----------------------------------------------------------------------


def test_status_shows_open_incidents_mitigations_and_the_pause(env):
    res = cmd(env, "status")
    assert res.ok and "running (not paused)" in res.text and "INC-1" in res.text
    assert res.data["paused"] is False and [i["id"] for i in res.data["incidents"]] == ["INC-1"]
    cmd(env, "pause --reason 'bad deploy'")
    res = cmd(env, "status --json")
    assert res.data["paused"] and res.data["pause"] == {"by": "U0ALICE", "reason": "bad deploy"}
    assert "paused by U0ALICE: bad deploy" in res.text


def test_list_is_incidents(env):
    assert cmd(env, "list").text == cmd(env, "incidents").text


def test_suggest_ranks_playbooks_with_why(env):
    res = cmd(env, "suggest INC-1")
    assert res.ok, res.text
    assert res.data[0]["playbook"] == "runaway-cost" and res.data[0]["current"]
    assert res.data[0]["why"] and "because" in res.text


def test_run_plans_the_first_step_and_a_second_click_does_not_plan_again(env):
    first = cmd(env, "run INC-1")
    assert first.ok, first.text
    assert first.data["step_id"] == "cap-output" and first.data["state"] == "awaiting_approval"
    assert first.data["requested_by"] == "U0ALICE"
    again = cmd(env, "run INC-1 cap-output")
    assert again.data["id"] == first.data["id"] and "already plans this step" in again.text
    assert len(env.store.runs(incident_id="INC-1")) == 1
    buttons = run_buttons(first.data)
    assert [b.action for b in buttons] == ["approve", "deny"]


def test_run_dry_run_never_applies_and_offers_no_buttons(env):
    res = cmd(env, "run INC-1 cap-output --dry-run")
    assert res.data["state"] == "dry_run" and run_buttons(res.data) == ()
    assert env.driver.policy.routes["chat"].max_output_tokens == 1024


def test_run_unknown_step_and_closed_incident_are_clear(env):
    bad = cmd(env, "run INC-1 no-such-step")
    assert bad.exit_code == 2 and "no step 'no-such-step'" in bad.text
    cmd(env, "resolve INC-1")
    closed = cmd(env, "run INC-1")
    assert closed.exit_code == 2 and "INC-1 is resolved" in closed.text
    assert env.store.runs(incident_id="INC-1") == []


def test_approve_apply_applies_and_offers_revert(env):
    planned = cmd(env, "run INC-1").data["id"]
    res = cmd(env, f"approve {planned} --apply", actor="U0BOB")
    assert res.ok, res.text
    assert res.data["state"] == "applied"
    assert env.driver.policy.routes["chat"].max_output_tokens == 256
    assert [b.action for b in run_buttons(res.data)] == ["revert"]
    twice = cmd(env, f"approve {planned} --apply", actor="U0BOB")
    # A second click (or a second approver a moment late) is told it is done; no new change.
    assert twice.ok and "applied already; nothing left to approve" in twice.text
    assert len(env.store.approvals(planned)) == 1
    assert [e.kind for e in env.store.run_events(planned)].count("applied") == 1


def test_two_person_step_refuses_self_approval(env):
    planned = cmd(env, "run INC-1 disable-route").data["id"]
    own = cmd(env, f"approve {planned} --apply", actor="U0ALICE")
    assert own.exit_code == 3 and "approval" in own.text
    assert env.store.run(planned).state == "awaiting_approval"
    assert env.driver.policy.routes["chat"].enabled
    other = cmd(env, f"approve {planned} --apply", actor="U0BOB")
    assert other.ok and other.data["state"] == "applied"
    assert not env.driver.policy.routes["chat"].enabled
    approvals = env.store.approvals(planned)
    assert [a.user for a in approvals] == ["U0BOB"]


def test_an_expired_approval_is_refused_then_approve_apply_gets_a_fresh_one(env):
    planned = cmd(env, "run INC-1").data["id"]
    assert cmd(env, f"approve {planned}", actor="U0BOB").ok
    env.clock.advance(minutes=20)  # the approval TTL is 15 minutes
    late = cmd(env, f"apply {planned}", actor="U0BOB")
    assert late.exit_code == 3 and "expired" in late.text
    again = cmd(env, f"approve {planned} --apply", actor="U0BOB")
    assert again.ok and again.data["state"] == "applied"


def test_approve_apply_on_a_resolved_incident_is_refused(env):
    planned = cmd(env, "run INC-1").data["id"]
    cmd(env, "resolve INC-1")
    res = cmd(env, f"approve {planned} --apply", actor="U0BOB")
    assert res.exit_code == 2 and "resolved" in res.text
    assert env.store.approvals(planned) == []


def test_do_plans_an_ad_hoc_action_with_oncall_approval_and_ttl(env):
    res = cmd(env, "do cap_output_length chat max_output_tokens=100 --incident INC-1")
    assert res.ok, res.text
    run_ = env.store.run(res.data["id"])
    assert run_.state == "awaiting_approval" and run_.guard.approval == "oncall"
    assert run_.guard.ttl.total_seconds() == 3600 and run_.args["max_output_tokens"] == 100
    assert run_.playbook_id is None and run_.incident_id == "INC-1"


@pytest.mark.parametrize("text, why", [
    ("do cap_output_length chat 100", "is not key=value"),
    ("do no_such_action chat", "unknown action"),
    ("do cap_output_length chat route=x", "route as the second word"),
    ("do cap_output_length chat max_output_tokens=-5", "max_output_tokens"),
    ("do cap_output_length chat max_output_tokens=1 --ttl soon", "--ttl"),
    ("do cap_output_length chat max_output_tokens=" + "9" * 600, "limit is 500"),
])
def test_do_bad_arguments_say_what_is_wrong(env, text, why):
    res = cmd(env, text)
    assert res.exit_code == 2 and why in res.text, res.text
    assert env.store.runs() == []


def test_reject_records_and_moves_the_suggestion_on(env):
    before = len(env.published)
    res = cmd(env, "reject INC-1 runaway-cost")
    assert res.ok, res.text
    kinds = env.kinds("INC-1")
    assert "playbook_rejected" in kinds
    nxt = res.data["suggested"]
    assert nxt != "runaway-cost"
    if nxt is None:
        assert "no other playbook matches" in res.text
    else:
        assert env.engine.suggested_playbook("INC-1") == nxt
        assert env.published[before:][-1].kind == "suggestion"
    assert "(rejected)" in cmd(env, "suggest INC-1").text


def test_arguments_with_quotes_unicode_and_10kb(env):
    note = cmd(env, """note INC-1 "it's \\"quoted\\"" ünïcødé 🚀 <!channel>""")
    assert note.ok, note.text
    assert env.store.timeline("INC-1")[-1].text == 'it\'s "quoted" ünïcødé 🚀 <!channel>'
    big = cmd(env, "note INC-1 " + "x" * 10_000)
    assert big.exit_code == 2 and "limit is 4000" in big.text
    unknown = cmd(env, "y" * 10_000)
    assert unknown.exit_code == 2 and len(unknown.text) < 400
    unbalanced = cmd(env, 'note INC-1 "open quote')
    assert unbalanced.exit_code == 2 and "quotes" in unbalanced.text


def test_results_escape_slack_markup():
    from bot.adapters.commands import Result
    from bot.adapters.slack.app import reply

    out = reply(result_message(Result("INC-1 <!channel> & <@U1> <http://x|y>"), "t"))
    flat = str(out)
    assert "<!channel>" not in flat and "<@U1>" not in flat and "<http" not in flat
    assert "&lt;!channel&gt;" in flat and "&amp;" in flat


# --- buttons -------------------------------------------------------------------------


def test_every_button_maps_to_a_known_verb():
    values = {"run_step": ("INC-1", "runaway-cost", "cap-output"),
              "dry_run": ("INC-1", "runaway-cost", "cap-output"), "approve": ("RUN-1",),
              "deny": ("RUN-1",), "revert": ("RUN-1",), "ack": ("INC-1",),
              "not_this_playbook": ("INC-1", "runaway-cost")}
    for action, parts in values.items():
        assert BUTTON_RE.match(action) and BUTTON_RE.match(f"{action}#3")
        tokens = BUTTON_COMMANDS[action](parts)
        parse(tokens, VERBS)  # raises if the grammar does not take it
    assert not BUTTON_RE.match("approve_all") and not BUTTON_RE.match("approve#x")


# --- authorization -------------------------------------------------------------------


class FakeClient:
    def __init__(self, users: list[str] | None = None, error: str | None = None) -> None:
        self.users, self.error, self.calls = users, error, 0

    async def usergroups_users_list(self, usergroup: str) -> Any:
        self.calls += 1
        if self.error == "network":
            raise OSError("connection refused")
        if self.error:
            raise SlackApiError("failed", {"ok": False, "error": self.error})
        return {"ok": True, "users": self.users}


def test_read_verbs_are_open_and_changes_need_oncall():
    def needs(text: str) -> bool:
        return needs_oncall(parse(split(text), VERBS))

    assert not needs("status") and not needs("show INC-1") and not needs("suggest INC-1")
    assert needs("pause") and needs("run INC-1") and needs("approve RUN-1 --apply")
    assert needs("do cap_output_length chat max_output_tokens=1")
    assert not needs("run INC-1 --dry-run")


def test_group_members_are_cached_for_the_ttl():
    now = [0.0]
    client = FakeClient(["U0ALICE"])
    auth = OncallAuthorizer(group="S0ONCALL", client=client, ttl=300, clock=lambda: now[0])
    assert run(auth.check("U0ALICE")).allowed
    denied = run(auth.check("U0MALLORY"))
    assert not denied.allowed and "not in the on-call group S0ONCALL" in denied.reason
    assert client.calls == 1
    client.users = ["U0ALICE", "U0MALLORY"]
    now[0] = 301
    assert run(auth.check("U0MALLORY")).allowed and client.calls == 2


@pytest.mark.parametrize("error", ["no_such_subteam", "network"])
def test_a_failed_group_lookup_denies_and_is_not_cached(error):
    client = FakeClient(error=error)
    auth = OncallAuthorizer(group="S0ONCALL", client=client)
    d = run(auth.check("U0ALICE"))
    assert not d.allowed and "could not check the on-call group" in d.reason
    run(auth.check("U0ALICE"))
    assert client.calls == 2


def test_configured_users_need_no_lookup_and_nothing_configured_denies():
    assert run(OncallAuthorizer(users=["U0ALICE"]).check("U0ALICE")).allowed
    nobody = run(OncallAuthorizer().check("U0ALICE"))
    assert not nobody.allowed and "LLM_INCIDENT_ONCALL_GROUP" in nobody.reason


# --- replay guard --------------------------------------------------------------------


def test_replay_guard_refuses_a_signature_twice_within_the_window():
    now = [1000.0]
    guard = ReplayGuard(window=300, clock=lambda: now[0])
    assert not guard.seen("v0=a") and guard.seen("v0=a") and not guard.seen("v0=b")
    now[0] += 301  # bolt refuses the timestamp by now anyway; the entry can go
    assert not guard.seen("v0=a")


def test_replay_guard_is_bounded():
    guard = ReplayGuard(max_entries=3, clock=lambda: 0.0)
    for i in range(10):
        guard.seen(f"s{i}")
    assert len(guard._seen) <= 3


# --- alerts posted in a channel ------------------------------------------------------


def am_event(title: str, text: str = "", ts: str = "1764410400.000100", **kw: Any) -> dict:
    fallback = f"{title} | http://am.example/#/alerts?receiver=slack"
    return {"type": "message", "subtype": "bot_message", "bot_id": "B0AM",
            "username": "AlertManager", "channel": "C0ALERTS", "ts": ts, "text": "",
            "attachments": [{"title": title, "fallback": fallback, "text": text,
                             "color": "danger"}]} | kw


def test_default_template_title_is_parsed():
    a = parse_message(am_event("[FIRING:1] LLMCostBurnRateHigh (chat critical)"))
    assert a is not None and a.status == "firing" and a.source == "slack"
    assert a.labels == {"alertname": "LLMCostBurnRateHigh", "severity": "critical"}
    assert a.annotations["group_values"] == "chat critical"
    resolved = parse_message(am_event("[RESOLVED] LLMCostBurnRateHigh (chat critical)"))
    assert resolved.status == "resolved" and resolved.fingerprint == a.fingerprint


def test_text_lists_become_labels_and_annotations():
    text = ("Labels:\n - alertname = LLMCostBurnRateHigh\n - route = chat\n"
            "Annotations:\n - summary = spend &lt;!channel&gt; 5x\n"
            "Source: http://prometheus.example/graph")
    a = parse_message(am_event("[FIRING:1] LLMCostBurnRateHigh (chat critical)", text))
    assert a.labels["route"] == "chat" and a.labels["severity"] == "critical"
    assert a.annotations["summary"] == "spend <!channel> 5x"  # unescaped: data, escaped on output
    assert a.annotations["source"] == "http://prometheus.example/graph"
    labels, ann = parse_text("*Summary:* spend high\n*Details:*\n • *route:* `chat`")
    assert labels == {"route": "chat"} and ann["summary"] == "spend high"


@pytest.mark.parametrize("event", [
    {"type": "message", "channel": "C0ALERTS", "ts": "1.0", "text": "hello team"},
    {"type": "message", "channel": "C0ALERTS", "ts": "1.0", "text": "[FIRING:1]"},
    {"type": "message", "channel": "C0ALERTS", "ts": "1.0", "attachments": ["junk", 3]},
    {"type": "message", "channel": "C0ALERTS", "ts": "x", "text": "[FIRING:1] A (b)"},
])
def test_unparseable_messages_are_ignored(event):
    e = Env()
    assert run(ChannelAlerts(e.engine, ["C0ALERTS"], ["B0AM"]).handle(event)) == []
    assert e.store.incidents() == []


def test_channel_alerts_open_dedup_and_resolve_an_incident():
    e = Env()
    feed = ChannelAlerts(e.engine, ["C0ALERTS"], ["B0AM"])
    text = "Labels:\n - route = chat\n"
    title = "[FIRING:1] LLMCostBurnRateHigh (chat critical)"
    first = run(feed.handle(am_event(title, text)))
    assert [i.outcome for i in first] == ["opened"]
    inc = first[0].incident_id
    assert e.engine.suggested_playbook(inc) == "runaway-cost"
    repeat = run(feed.handle(am_event(title, text, ts="1764424800.000100")))  # repeat_interval
    assert [i.outcome for i in repeat] == ["duplicate"]
    done = run(feed.handle(am_event("[RESOLVED] LLMCostBurnRateHigh (chat critical)", text,
                                    ts="1764425000.000100")))
    assert [i.outcome for i in done] == ["resolved"]
    assert e.store.incident(inc).status == "resolved"


def test_other_channels_our_own_posts_and_edits_are_ignored():
    e = Env()
    feed = ChannelAlerts(e.engine, ["C0ALERTS"], ["B0AM"])
    title = "[FIRING:1] LLMCostBurnRateHigh (chat critical)"
    assert run(feed.handle(am_event(title, channel="C0OTHER"))) == []
    assert run(feed.handle(am_event(title, bot_id="B0BOT"), bot_id="B0BOT")) == []
    assert run(feed.handle(am_event(title, subtype="message_changed"))) == []
    assert e.store.incidents() == []
