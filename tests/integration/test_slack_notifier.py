"""The Slack notifier against the Web API stub, over real HTTP on 127.0.0.1.

A real ``slack_sdk`` ``AsyncWebClient`` talks to ``WebApiStub``. Time is a fake
clock shared by the notifier and the stub, so every wait (pacing, Retry-After,
the coalescing window) is observed through the injected ``sleep`` and the
stub's call times, without sleeping for real.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_webapi_stub import StubCall, WebApiStub

from bot.adapters.slack.notifier import SlackNotifier
from bot.adapters.slack.thread_store import ChatMessages
from bot.core.messages import Button, Field, Message, Section
from bot.store import Store

# The engine-on-fakes helper of the unit tier, for the end-to-end case below.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from incident_env import Env, alert  # noqa: E402

pytestmark = pytest.mark.integration
CHANNEL = "C0INCIDENTS"
DEADLINE = 10.0  # seconds of real time for anything to show up at the stub


class FakeTime:
    """A clock in seconds. ``auto``: sleep advances it at once; else the test advances it."""

    def __init__(self, *, auto: bool = True) -> None:
        self.now = 1000.0
        self.auto = auto
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        target = self.now + seconds
        if self.auto:
            self.now = max(self.now, target)
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while self.now < target:
            assert loop.time() < deadline, "the test never advanced the fake clock"
            await asyncio.sleep(0.002)

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(pred: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def suggestion(inc: str = "INC-1", steps: int = 2, drill: bool = False) -> Message:
    secs = tuple(Section(f"step {i} text", title=f"Step {i}") for i in range(steps))
    buttons = tuple(Button("run_step", f"Run s{i}", f"{inc}:pb:s{i}") for i in range(steps))
    buttons += (Button("ack", "Acknowledge", inc),)
    return Message("suggestion", inc, f"{inc} Runaway cost on chat", f"{inc} suggested pb",
                   severity="critical", sections=secs, buttons=buttons, is_drill=drill)


def update(inc: str, status: str) -> Message:
    return Message("update", inc, f"{inc} {status}", f"{inc}: open -> {status} by bob",
                   severity="critical",
                   sections=(Section("", fields=(Field("Status", f"open -> {status}"),)),))


def timeline(inc: str | None, text: str) -> Message:
    return Message("timeline", inc, f"{inc} note", text)


def run(
    scenario: Callable[[WebApiStub, Callable[..., SlackNotifier], FakeTime], Awaitable[Any]],
    *,
    store: Store | None = None,
    time: FakeTime | None = None,
    **stub_options: Any,
) -> Any:
    """Run ``scenario(stub, make_notifier, time)`` with a stub on loopback; closes everything."""
    fake = time or FakeTime()
    db = store or Store(None)

    async def main() -> Any:
        async with WebApiStub(clock=fake, **stub_options) as stub:
            made: list[SlackNotifier] = []

            def make(*, store: Store | None = None, **kw: Any) -> SlackNotifier:
                client = AsyncWebClient(token="xoxb-test", base_url=stub.base_url)
                n = SlackNotifier(client, channel=CHANNEL, store=store or db, clock=fake,
                                  sleep=fake.sleep, **kw)
                made.append(n)
                return n

            try:
                return await scenario(stub, make, fake)
            finally:
                for n in made:
                    await n.aclose(timeout=DEADLINE)

    return asyncio.run(main())


def posts(stub: WebApiStub) -> list[StubCall]:
    return stub.calls_of("chat.postMessage")


def updates(stub: WebApiStub) -> list[StubCall]:
    return stub.calls_of("chat.update")


# --- top message, updates, threads -----------------------------------------------------


def test_one_top_message_per_incident_and_its_ts_is_stored() -> None:
    store = Store(None)

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await n.publish(suggestion("INC-2"))
        await n.publish(suggestion("INC-1"))  # a repeat edits, never posts a second top
        await n.aclose()
        assert len(posts(stub)) == 2 and len(updates(stub)) == 1
        assert [c.params["text"].split()[0] for c in posts(stub)] == ["INC-1", "INC-2"]
        stored = ChatMessages(store).get("INC-1", CHANNEL)
        assert stored is not None and (CHANNEL, stored.ts) in stub.messages
        assert updates(stub)[0].params["ts"] == stored.ts
        first = posts(stub)[0].params
        assert first["channel"] == CHANNEL and "thread_ts" not in first
        assert first["blocks"][0]["type"] == "header" and first["unfurl_links"] is False
        assert n.stats["failed"] == 0

    run(scenario, store=store)


def test_update_edits_the_top_message_in_place_keeping_the_suggestion() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await until(lambda: len(posts(stub)) == 1, "the suggestion")
        await n.publish(update("INC-1", "acknowledged"))
        await n.aclose()
        (call,) = updates(stub)
        top = stub.messages[(CHANNEL, call.params["ts"])]
        assert top.ts == call.params["ts"] and top.edits == 1 and len(posts(stub)) == 1
        shown = str(top.blocks)
        assert "open -&gt; acknowledged" in shown, "the status is shown"
        assert "Step 1" in shown and "run_step#" in shown, "the playbook stays visible"
        assert "ack#" not in shown, "no Acknowledge button once acknowledged"
        assert top.text == "INC-1: open -&gt; acknowledged by bob"

    run(scenario)


def test_a_closed_incidents_message_keeps_no_action_buttons() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await until(lambda: len(posts(stub)) == 1, "the suggestion")
        revert = Button("revert", "Revert RUN-4", "RUN-4", "danger")
        await n.publish(replace(update("INC-1", "resolved"), closes=True, buttons=(revert,)))
        await n.aclose()
        (call,) = updates(stub)
        shown = str(stub.messages[(CHANNEL, call.params["ts"])].blocks)
        assert "run_step#" not in shown and "dry_run#" not in shown
        assert "not_this_playbook#" not in shown
        assert "revert#" in shown  # a mitigation still active can still be reverted
        assert "Step 1" in shown  # what was suggested stays readable

    run(scenario)


def test_timeline_and_results_go_to_the_top_messages_thread() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await n.publish(suggestion("INC-2"))
        await n.publish(timeline("INC-2", "note on two"))
        await n.publish(Message("result", "INC-1", "INC-1 auto step", "applied"))
        await n.publish(Message("reminder", "INC-1", "INC-1 reminder", "still open"))
        await n.publish(timeline(None, "paused by alice"))
        await n.aclose()
        tops = {c.params["text"].split()[0]: c for c in posts(stub)[:2]}
        ts_of = {inc: next(m.ts for m in stub.messages.values()
                           if m.text.startswith(inc) and m.thread_ts is None)
                 for inc in tops}
        by_text = {c.params["text"]: c.params for c in posts(stub)[2:]}
        assert by_text["note on two"]["thread_ts"] == ts_of["INC-2"]
        assert by_text["applied"]["thread_ts"] == ts_of["INC-1"]
        assert by_text["still open"]["thread_ts"] == ts_of["INC-1"]
        assert "thread_ts" not in by_text["paused by alice"]

    run(scenario)


def test_a_reply_for_an_incident_without_a_top_message_becomes_the_top() -> None:
    store = Store(None)

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(timeline("INC-9", "first word"))
        await n.publish(timeline("INC-9", "second word"))
        await n.aclose()
        first, second = posts(stub)
        assert "thread_ts" not in first.params
        assert second.params["thread_ts"] == ChatMessages(store).get("INC-9", CHANNEL).ts

    run(scenario, store=store)


# --- rate limits ---------------------------------------------------------------------


def test_429_is_retried_after_retry_after() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await n.aclose()
        calls = stub.calls_of("chat.postMessage", ok_only=False)
        assert [c.status for c in calls] == [429, 429, 200]
        assert t.sleeps == [3, 3], "slept exactly Retry-After before each retry"
        assert calls[1].time - calls[0].time >= 3 and calls[2].time - calls[1].time >= 3
        assert n.stats["rate_limited"] == 2 and n.stats["failed"] == 0
        assert len(stub.messages) == 1

    run(scenario, fail_429_times={"chat.postMessage": 2}, retry_after=3)


def test_persistent_429_gives_up_without_raising() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make(max_retries=2)
        await n.publish(suggestion("INC-1"))  # never raises into the engine
        await n.publish(suggestion("INC-2"))
        await n.aclose()
        assert n.stats["failed"] == 1 and n.stats["rate_limited"] == 2
        assert [c.params["text"].split()[0] for c in posts(stub)] == ["INC-2"]

    run(scenario, fail_429_times={"chat.postMessage": 3}, retry_after=1)


def test_a_plain_text_500_is_retried_and_the_sender_keeps_going() -> None:
    # One webhook body opened three incidents; a proxy answered the first post with a
    # plain-text 500. All three must reach Slack, with no further traffic.
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make()
        for i in (1, 2, 3):
            await n.publish(suggestion(f"INC-{i}"))
        await until(lambda: len(posts(stub)) == 3, "three posts")
        calls = stub.calls_of("chat.postMessage", ok_only=False)
        assert [c.status for c in calls] == [500, 200, 200, 200]
        assert [c.params["text"].split()[0] for c in posts(stub)] == ["INC-1", "INC-2", "INC-3"]
        assert t.sleeps[0] == 1.0  # backed off, then retried the same message
        assert n.stats["transient"] == 1 and n.stats["failed"] == 0
        assert n._task is not None and not n._task.done()  # the sender is still there

    run(scenario, fail_500_times={"chat.postMessage": 1})


def test_a_call_that_times_out_is_retried() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make()
        n.client = AsyncWebClient(token="xoxb-test", base_url=stub.base_url, timeout=0.3)
        n.sleep = asyncio.sleep  # real backoff (1 s): the slow call lands meanwhile
        await n.publish(suggestion("INC-1"))
        await until(lambda: n.stats["found_after_timeout"] + n.stats["chat_postMessage"] == 1,
                    "the post, after the timeout")
        await asyncio.sleep(0.5)  # the slow first call landed in Slack after the timeout...
        assert n.stats["transient"] == 1 and n.stats["failed"] == 0
        assert len(stub.messages) == 1  # ...and is found, not posted a second time
        assert n.stats["found_after_timeout"] == 1

    run(scenario, slow_times={"chat.postMessage": 1}, slow_seconds=0.6)


def test_the_final_state_survives_eight_429s_in_a_row() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-7"))
        await until(lambda: len(posts(stub)) == 1, "the top message")
        await n.publish(update("INC-7", "resolved"))
        await until(lambda: len(updates(stub)) == 1, "the update, at last")
        statuses = [c.status for c in stub.calls_of("chat.update", ok_only=False)]
        assert statuses == [429] * 8 + [200]
        (top,) = stub.messages.values()
        assert "resolved" in top.text
        assert n.stats["rate_limited"] == 8 and n.stats["failed"] == 0

    run(scenario, fail_429_times={"chat.update": 8}, retry_after=1)


def test_a_permanent_refusal_is_on_the_timeline_and_holds_nothing_up(
        caplog: pytest.LogCaptureFixture) -> None:
    env = Env()
    run_alert = asyncio.run(env.engine.handle_alerts([alert()]))
    incident_id = run_alert[0].incident_id

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make(store=env.store)
        await n.publish(timeline(incident_id, "x" * 10))  # refused: msg_too_long
        await n.publish(suggestion("INC-99"))
        await until(lambda: n.stats["failed"] == 1 and n.stats["chat_postMessage"] == 1,
                    "the refusal, and the other message delivered")
        assert n.stats["permanent"] == 1
        assert posts(stub)[0].params["text"].startswith("INC-99")  # not held up
        assert len(posts(stub)) == 2  # the refused one was not retried

    def refuse_long(params: dict[str, Any]) -> dict[str, Any]:
        if "x" * 10 in params.get("text", ""):
            return {"ok": False, "error": "msg_too_long"}
        return {"ok": True, "channel": params["channel"], "ts": "1.000001"}

    run(scenario, handlers={"chat.postMessage": refuse_long})
    (event,) = [e for e in env.store.timeline(incident_id) if e.kind == "slack_failed"]
    assert "chat.postMessage: msg_too_long" in event.text
    assert "chat.postMessage: msg_too_long" in caplog.text


def test_twenty_incidents_updated_at_once_keep_the_channels_pace() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make(min_interval=1.0)
        for i in range(1, 21):
            await n.publish(suggestion(f"INC-{i}"))
        await until(lambda: len(posts(stub)) == 20, "twenty top messages")
        for i in range(1, 21):  # twenty acknowledgements in the same instant
            await n.publish(update(f"INC-{i}", "acknowledged"))
        for i in range(1, 21):
            await n.publish(update(f"INC-{i}", "resolved"))  # then all resolved
        await n.aclose()
        calls = sorted(posts(stub) + updates(stub), key=lambda c: c.time)
        gaps = [b.time - a.time for a, b in zip(calls, calls[1:], strict=False)]
        assert min(gaps) >= 1.0, min(gaps)  # never more than one a second in the channel
        shown = {m.text.split(":")[0]: m.text for m in stub.messages.values()}
        assert all("resolved" in shown[f"INC-{i}"] for i in range(1, 21))  # final states
        assert len(updates(stub)) <= 40  # a storm is coalesced, not queued one by one

    run(scenario)


def test_new_messages_to_a_channel_are_at_least_min_interval_apart() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make(min_interval=1.0)
        for i in range(1, 6):
            await n.publish(suggestion(f"INC-{i}"))
            await n.publish(timeline(f"INC-{i}", f"note {i}"))
        await n.aclose()
        times = [c.time for c in posts(stub)]
        assert len(times) == 10
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= 1.0, gaps
        # New incidents first: a storm does not hide INC-5 behind thread chatter.
        order = [c.params["text"] for c in posts(stub)]
        assert all("suggested" in x for x in order[:5]), order

    run(scenario)


def test_updates_in_a_storm_are_coalesced_to_the_latest() -> None:
    t = FakeTime(auto=False)

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make(coalesce_window=2.0, min_interval=0)  # the channel pace: its own test
        await n.publish(suggestion("INC-1"))
        await until(lambda: len(posts(stub)) == 1, "the suggestion")
        await n.publish(update("INC-1", "status-1"))
        await until(lambda: len(updates(stub)) == 1, "the first update")
        start = updates(stub)[0].time
        for i in range(2, 11):
            t.advance(0.1)
            await n.publish(update("INC-1", f"status-{i}"))
            await asyncio.sleep(0.01)  # let the notifier run: it must hold, not send
        assert len(updates(stub)) == 1, "held inside the coalescing window"
        t.advance(1.2)
        await until(lambda: len(updates(stub)) == 2, "the coalesced update")
        await n.aclose()
        first, last = updates(stub)
        assert last.time - start >= 2.0
        assert "status-10" in last.params["text"] and "status-1 " not in str(last.params)
        assert "status-10" in str(stub.messages[(CHANNEL, last.params["ts"])].blocks)
        assert n.stats["coalesced"] == 8

    run(scenario, time=t)


def test_close_flushes_held_updates() -> None:
    t = FakeTime(auto=False)

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        n = make(coalesce_window=60.0, min_interval=0)
        await n.publish(suggestion("INC-1"))
        await n.publish(update("INC-1", "first"))
        await until(lambda: len(updates(stub)) == 1, "the first update")
        await n.publish(update("INC-1", "final"))
        await n.aclose()  # no clock advance: closing sends what is held
        assert len(updates(stub)) == 2 and "final" in updates(stub)[-1].params["text"]

    run(scenario, time=t)


# --- restarts and failures -----------------------------------------------------------


def test_after_a_restart_the_same_top_message_is_updated(tmp_path: Path) -> None:
    db = tmp_path / "incidents.db"

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        first = make(store=Store(db))
        await first.publish(suggestion("INC-1"))
        await first.aclose()
        (post,) = posts(stub)
        top_ts = next(iter(stub.messages.values())).ts
        # A new process: a fresh Store on the same file, a fresh notifier.
        second = make(store=Store(db))
        await second.publish(update("INC-1", "acknowledged"))
        await second.publish(timeline("INC-1", "after restart"))
        await second.publish(suggestion("INC-1"))
        await second.aclose()
        assert len([c for c in posts(stub) if "thread_ts" not in c.params]) == 1
        assert [c.params["ts"] for c in updates(stub)] == [top_ts, top_ts]
        assert posts(stub)[-1].params["thread_ts"] == top_ts
        # The re-suggestion still shows the status the update put on top.
        assert "acknowledged" in str(stub.messages[(CHANNEL, top_ts)].blocks)
        assert post.params["channel"] == CHANNEL

    run(scenario)


def test_a_deleted_top_message_is_posted_afresh() -> None:
    store = Store(None)

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await until(lambda: len(posts(stub)) == 1, "the suggestion")
        stub.messages.clear()  # someone deleted it in Slack
        await n.publish(update("INC-1", "acknowledged"))
        await n.publish(timeline("INC-1", "follows the new one"))
        await n.aclose()
        assert stub.calls_of("chat.update", ok_only=True)[0].params["ts"] != ""
        new_ts = ChatMessages(store).get("INC-1", CHANNEL).ts
        assert (CHANNEL, new_ts) in stub.messages
        assert posts(stub)[-1].params["thread_ts"] == new_ts
        assert n.stats["failed"] == 0

    run(scenario, store=store)


def test_api_errors_are_logged_and_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make()
        await n.publish(suggestion("INC-1"))
        await n.publish(timeline("INC-1", "x"))
        await n.aclose()
        await n.publish(suggestion("INC-2"))  # after close: logged, not raised
        assert n.stats["failed"] == 3
        assert all(c.token == "xoxb-test" for c in stub.calls)

    run(scenario, token="xoxb-other")
    assert "invalid_auth" in caplog.text and "INC-1" in caplog.text


# --- with the engine -----------------------------------------------------------------


def test_engine_alert_to_slack_thread_and_update() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        env = Env()
        n = make(store=env.store)
        env.engine.notifier = n
        hostile = alert(route="<!channel>")
        await env.engine.handle_alerts([hostile])
        (inc,) = env.store.incidents()
        await env.engine.note(inc.id, "looking <@U123>", "alice")
        await env.engine.acknowledge(inc.id, "bob")
        await n.aclose()
        tops = [c for c in posts(stub) if "thread_ts" not in c.params]
        assert len(tops) == 1 and tops[0].params["text"].startswith(inc.id)
        top_ts = ChatMessages(env.store).get(inc.id, CHANNEL).ts
        replies = [c for c in posts(stub) if c.params.get("thread_ts") == top_ts]
        assert any("looking &lt;@U123&gt;" in c.params["text"] for c in replies)
        assert updates(stub) and updates(stub)[-1].params["ts"] == top_ts
        # Whatever Slack parses (the top-level text, mrkdwn objects) has no raw markup;
        # plain_text (headers, button labels) is shown by Slack as typed.
        parsed = [c.params["text"] for c in stub.calls] + [
            t["text"] for c in stub.calls for b in c.params["blocks"]
            for t in [b.get("text") or {}, *b.get("fields", []), *b.get("elements", [])]
            if t.get("type") == "mrkdwn"]
        assert not any("<" in t or ">" in t for t in parsed)
        assert any("&lt;!channel&gt;" in t for t in parsed)

    run(scenario)


# --- the stub itself -------------------------------------------------------------------


def test_stub_speaks_the_other_methods_the_app_uses() -> None:
    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        client = AsyncWebClient(token="xoxb-test", base_url=stub.base_url)
        me = await client.auth_test()
        assert me["user_id"] == "U0BOT" and me["ok"] is True
        members = await client.usergroups_users_list(usergroup="S0ONCALL")  # a GET
        assert members["users"] == ["U1", "U2"]
        eph = await client.chat_postEphemeral(channel=CHANNEL, user="U1", text="only you")
        assert eph["message_ts"]
        with pytest.raises(SlackApiError, match="no_such_subteam"):
            await client.usergroups_users_list(usergroup="S0NOPE")
        with pytest.raises(SlackApiError, match="message_not_found"):
            await client.chat_update(channel=CHANNEL, ts="1.000001", text="x")
        assert (await client.api_call("apps.connections.open"))["url"] == "ws://127.0.0.1:1/"
        assert [c.method for c in stub.calls][:3] == [
            "auth.test", "usergroups.users.list", "chat.postEphemeral"]

    run(scenario, usergroups={"S0ONCALL": ["U1", "U2"]},
        handlers={"apps.connections.open": lambda p: {"ok": True, "url": "ws://127.0.0.1:1/"}})


def test_stub_in_a_thread_takes_form_posts_and_counts_429s() -> None:
    stub = WebApiStub(fail_429_times={"chat.postMessage": 1}, retry_after=7)
    with stub.serving_in_thread():
        url = stub.base_url + "chat.postMessage"
        form = {"token": "xoxb-form", "channel": CHANNEL, "text": "hi",
                "blocks": '[{"type": "divider"}]'}
        limited = httpx.post(url, data=form)
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        body = httpx.post(url, data=form).json()
        assert body["ok"] is True and body["channel"] == CHANNEL
        assert httpx.post(url, data={"channel": CHANNEL, "text": "x"}).json() == {
            "ok": False, "error": "not_authed"}
        assert httpx.post(stub.base_url + "nope.method", data=form).json()["error"] == \
            "unknown_method"
    ok = stub.calls_of("chat.postMessage")
    assert ok[0].params["blocks"] == [{"type": "divider"}] and ok[0].token == "xoxb-form"
    assert [c.status for c in stub.calls_of("chat.postMessage", ok_only=False)] == [429, 200, 200]
    assert stub.messages[(CHANNEL, body["ts"])].text == "hi"


def test_a_plain_text_500_from_the_group_lookup_refuses_with_a_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    from bot.adapters.slack.auth import OncallAuthorizer

    async def main() -> None:
        async with WebApiStub(fail_500_times={"usergroups.users.list": 1},
                              usergroups={"S0ONCALL": ["U0BOB"]}) as stub:
            client = AsyncWebClient(token="xoxb-test", base_url=stub.base_url)
            auth = OncallAuthorizer([], "S0ONCALL", client)
            refused = await auth.check("U0BOB")
            assert not refused.allowed
            assert refused.reason.startswith("could not check the on-call group, so the "
                                             "action is refused: usergroups.users.list: HTTP "
                                             "500 with a non-JSON body: upstream connect error")
            assert (await auth.check("U0BOB")).allowed  # the next lookup works

    asyncio.run(main())
    assert "on-call group lookup failed: usergroups.users.list: HTTP 500" in caplog.text


def test_messages_slack_has_not_taken_survive_a_crash(tmp_path: Path) -> None:
    # A process takes 50 messages while Slack answers 429, then dies (its task simply
    # stops: no close, no flush). The next process, on the same store, delivers all
    # 50 final states: the store kept every message until Slack took it.
    db = tmp_path / "bot.db"

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], t: FakeTime) -> None:
        first = make(store=Store(db))
        for i in range(1, 26):
            await first.publish(suggestion(f"INC-{i}"))
            await first.publish(timeline(f"INC-{i}", f"note {i}"))
        await until(lambda: stub.calls_of("chat.postMessage", ok_only=False), "Slack busy")
        assert first._task is not None
        first._task.cancel()  # kill -9: nothing after this line of the first process runs
        first._closing = True
        stub.fail_429_times = 0  # Slack is back
        second = make(store=Store(db))
        second.start()
        await until(lambda: second.pending == 0 and len(posts(stub)) >= 50, "all 50 delivered")
        await second.aclose()
        texts = [c.params["text"] for c in posts(stub)]
        for i in range(1, 26):
            assert sum(x.startswith(f"INC-{i} ") for x in texts) >= 1, i
            assert any(f"note {i}" in x for x in texts), i
        assert Store(db).db.execute("SELECT COUNT(*) FROM chat_deliveries WHERE "
                                    "delivered_at IS NULL").fetchone() == (0,)

    run(scenario, fail_429_times={"chat.postMessage": 10_000}, retry_after=30)


def test_a_status_change_whose_update_a_crash_lost_is_shown_after_the_restart() -> None:
    env = Env()
    incident_id = asyncio.run(env.engine.handle_alerts([alert()]))[0].incident_id

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        first = make(store=env.store)
        await first.publish(env.published[0])  # the suggestion: the live message
        await until(lambda: len(posts(stub)) == 1, "the live message")
        await first.aclose()
        # Acknowledged and committed; the process dies before the update is queued.
        env.engine.lifecycle.move(incident_id, "acknowledged", actor="bob")
        second = make(store=env.store)
        second.start()
        await until(lambda: len(updates(stub)) == 1, "the live message corrected")
        await second.aclose()
        (top,) = [m for m in stub.messages.values() if m.thread_ts is None]
        assert "acknowledged" in top.text
        third = make(store=env.store)  # nothing stale now: no further update
        assert third.pending == 0

    run(scenario)


def test_a_post_that_landed_just_before_a_crash_is_found_not_posted_twice(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        first = make(store=Store(db))
        await first.publish(suggestion("INC-1"))
        await first.aclose()
        (sent,) = posts(stub)
        assert sent.params["metadata"]["event_payload"]["incident_id"] == "INC-1"
        # Slack took it, and the process died before it wrote that down.
        store = Store(db)
        with store.transaction():
            store.db.execute("UPDATE chat_deliveries SET delivered_at = NULL")
            store.db.execute("DELETE FROM chat_messages")
        second = make(store=Store(db))
        second.start()
        await until(lambda: second.pending == 0 and second.stats["found_after_restart"] == 1,
                    "the post found in the channel")
        await second.aclose()
        assert len(posts(stub)) == 1  # not posted twice
        assert stub.calls_of("conversations.history")
        top = ChatMessages(Store(db)).get("INC-1", CHANNEL)
        assert top is not None and top.ts == next(iter(stub.messages.values())).ts

    run(scenario)


def test_deliveries_slack_took_long_ago_are_forgotten_at_start(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        first = make(store=Store(db))
        await first.publish(suggestion("INC-1"))
        await first.aclose()
        store = Store(db)
        with store.transaction():  # delivered eight days ago; one more still waiting
            store.db.execute("UPDATE chat_deliveries SET delivered_at = '2000-01-01T00:00:00'")
        ChatMessages(store).enqueue(CHANNEL, "reply", timeline("INC-1", "later"))
        second = make(store=Store(db))
        second.start()  # what `serve` does at start
        await second.aclose()
        rows = Store(db).db.execute("SELECT queue, delivered_at IS NULL FROM chat_deliveries")
        assert list(rows) == [("reply", 0)]  # the old one is gone; the waiting one was sent

    run(scenario)


def test_a_damaged_delivery_row_is_set_aside_and_the_rest_go_out(tmp_path: Path) -> None:
    db = tmp_path / "bot.db"
    store = Store(db)
    chat = ChatMessages(store)
    bad = chat.enqueue(CHANNEL, "post", suggestion("INC-1"))
    chat.enqueue(CHANNEL, "post", suggestion("INC-2"))
    with store.transaction():
        store.db.execute("UPDATE chat_deliveries SET message = '{not json' WHERE id = ?", [bad])

    async def scenario(stub: WebApiStub, make: Callable[..., SlackNotifier], _: FakeTime) -> None:
        n = make(store=Store(db))  # must not raise on the damaged row
        n.start()
        await n.aclose()
        assert [c.params["text"].split()[0] for c in posts(stub)] == ["INC-2"]

    run(scenario)
    (outcome,) = Store(db).db.execute("SELECT outcome FROM chat_deliveries WHERE id = ?",
                                      [bad]).fetchone()
    assert outcome.startswith("unreadable: a stored chat message is not readable")
