"""Paging: the escalation rules page once, the page follows the incident, and a refused
send is retried until the service takes it, never sent twice once it did.

The rules run on the engine with an injected clock; the sends go over real HTTP to a
local stub of PagerDuty's Events API v2 (``tests/pagerduty_stub.py``)."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pagerduty_stub import PagerDutyStub, serve_stub

from bot.adapters.pagers import PagerDutyEvents, WebhookPager
from bot.core.paging import DEDUP_PREFIX, EscalationRules, Escalations, PageEvent, PageRejected

sys.path.insert(0, str(Path(__file__).parent))
from incident_env import Env, alert  # noqa: E402

KEY = "0123456789abcdef0123456789abcdef"  # an integration key: 32 characters


@pytest.fixture
def stub():
    stub = PagerDutyStub()
    server, _ = serve_stub(stub)
    yield stub
    server.shutdown()


def paging(env: Env, stub: PagerDutyStub, client: httpx.AsyncClient,
           **rules) -> Escalations:
    return Escalations(env.engine, PagerDutyEvents(KEY, client, stub.url),
                       EscalationRules(console_url="https://console.example", **rules))


def test_an_unacknowledged_critical_incident_pages_once_and_the_page_follows_it(stub):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client)
            (inc,) = await env.engine.handle_alerts([alert()])
            assert await esc.round() == [] and stub.events == []  # under 5 minutes
            env.clock.advance(minutes=5)
            assert [p.incident_id for p in await esc.round()] == [inc.incident_id]
            for _ in range(3):  # every later poll: nothing more to say
                env.clock.advance(seconds=15)
                assert await esc.round() == []
            await env.engine.acknowledge(inc.incident_id, "alice")
            await esc.round()
            await esc.round()
            await env.engine.resolve(inc.incident_id, "alice", "fixed")
            await esc.round()
            await esc.round()
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    key = DEDUP_PREFIX + incident_id
    assert stub.actions(key) == ["trigger", "acknowledge", "resolve"]
    assert stub.opened == 1 and stub.alerts[key] == "resolved"
    trigger = stub.events[0]
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["summary"].startswith(f"{incident_id}: ")
    assert trigger["payload"]["custom_details"]["why"].startswith("unacknowledged")
    assert trigger["links"] == [{"href": f"https://console.example/ui/incidents/{incident_id}",
                                 "text": f"{incident_id} in the llm-incident console"}]
    kinds = env.kinds(incident_id)
    assert kinds.count("paged") == 1 and kinds.count("page_trigger") == 1
    assert "page_acknowledge" in kinds and "page_resolve" in kinds


def test_an_incident_acknowledged_in_time_never_pages(stub):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client)
            (inc,) = await env.engine.handle_alerts([alert()])
            env.clock.advance(minutes=4)
            await env.engine.acknowledge(inc.incident_id, "alice")
            env.clock.advance(minutes=30)
            await esc.round()

    asyncio.run(scenario())
    assert stub.events == []


def test_a_drill_never_pages_whatever_the_rules_say(stub):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client, unacknowledged={"critical": timedelta(0)},
                         approval_pending=timedelta(0))
            (inc,) = await env.engine.handle_alerts([alert()], is_drill=True)
            env.store.add_event(inc.incident_id, "escalation", "verification of RUN-1 failed",
                                actor="bot")
            env.clock.advance(hours=2)
            await esc.round()
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    assert stub.events == [] and env.store.page(incident_id) is None


@pytest.mark.parametrize(("kind", "why"), [("escalation", "a verification escalated"),
                                           ("revert_failed", "a revert failed")])
def test_an_escalating_verification_or_a_failed_revert_pages_at_once(stub, kind, why):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client)
            (inc,) = await env.engine.handle_alerts([alert()])
            await env.engine.acknowledge(inc.incident_id, "alice")  # owned, yet it escalates
            env.store.add_event(inc.incident_id, kind, "RUN-1: still bad", actor="bot")
            await esc.round()
            await esc.round()  # acknowledged before the page: the page stays triggered
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    assert stub.actions(DEDUP_PREFIX + incident_id) == ["trigger"]
    assert why in stub.events[0]["payload"]["custom_details"]["why"]


def test_a_run_waiting_too_long_for_approval_pages(stub):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client, unacknowledged={})
            (inc,) = await env.engine.handle_alerts([alert()])
            run = await env.engine.plan_step(inc.incident_id, "runaway-cost", None,
                                             actor="alice")
            assert run.state == "awaiting_approval"
            env.clock.advance(minutes=9)
            await esc.round()
            assert stub.events == []
            env.clock.advance(minutes=1)
            await esc.round()
            return run.id

    run_id = asyncio.run(scenario())
    assert f"{run_id} has waited for approval" in stub.events[0]["payload"]["custom_details"][
        "why"]


def test_a_throttled_or_failing_service_is_retried_with_backoff_and_sent_once(stub):
    env = Env()
    stub.fail_next(2, 429)
    stub.fail_next(1, 503)

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client)
            (inc,) = await env.engine.handle_alerts([alert()])
            env.clock.advance(minutes=5)
            waits = []
            for _ in range(4):
                await esc.round()
                page = env.store.page(inc.incident_id)
                if page.sent == "trigger":
                    break
                waits.append((page.next_try_at - env.clock()).total_seconds())
                assert await esc.round() == []  # not before its time
                env.clock.advance(seconds=waits[-1])
            for _ in range(3):
                env.clock.advance(minutes=1)
                await esc.round()
            return inc.incident_id, waits, env.store.page(inc.incident_id)

    incident_id, waits, page = asyncio.run(scenario())
    assert stub.refused == 3 and waits == [1, 2, 4]  # doubling
    assert stub.actions(DEDUP_PREFIX + incident_id) == ["trigger"] and stub.opened == 1
    assert page.sent == "trigger" and page.attempts == 0 and page.last_error is None


def test_a_restart_carries_on_from_the_store_and_never_triggers_again(stub, tmp_path):
    db = tmp_path / "bot.db"
    first = Env(db=db)

    async def before_restart():
        async with httpx.AsyncClient() as client:
            (inc,) = await first.engine.handle_alerts([alert()])
            first.clock.advance(minutes=5)
            await paging(first, stub, client).round()
            await first.engine.acknowledge(inc.incident_id, "alice")
            stub.fail_next(1, 500)  # the acknowledge fails, then the process stops
            await paging(first, stub, client).round()
            return inc.incident_id

    incident_id = asyncio.run(before_restart())
    second = Env(db=db, clock=first.clock)  # a new process on the same store

    async def after_restart():
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                second.clock.advance(minutes=1)
                await paging(second, stub, client).round()

    asyncio.run(after_restart())
    assert stub.actions(DEDUP_PREFIX + incident_id) == ["trigger", "acknowledge"]
    assert stub.opened == 1 and stub.alerts[DEDUP_PREFIX + incident_id] == "acknowledged"


def test_a_refused_event_is_reported_on_the_timeline_and_not_retried(stub):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = Escalations(env.engine, PagerDutyEvents("too-short", client, stub.url),
                              EscalationRules())
            (inc,) = await env.engine.handle_alerts([alert()])
            env.clock.advance(minutes=5)
            await esc.round()
            env.clock.advance(minutes=10)
            await esc.round()
            with pytest.raises(PageRejected, match="routing_key"):
                await PagerDutyEvents("too-short", client, stub.url).send(
                    PageEvent("trigger", "k", summary="s"))
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    failed = [k for k in env.kinds(incident_id) if k == "page_failed"]
    assert failed == ["page_failed"] and stub.events == []


def test_the_webhook_pager_posts_the_event_as_json():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json
        seen.append(json.loads(request.content))
        return httpx.Response(500 if len(seen) == 1 else 200)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            pager = WebhookPager("https://hooks.example/page", client)
            from bot.core.paging import PageRetry
            with pytest.raises(PageRetry):
                await pager.send(PageEvent("trigger", "llm-incident/INC-1", summary="x"))
            await pager.send(PageEvent("resolve", "llm-incident/INC-1"))

    asyncio.run(scenario())
    assert [s["event_action"] for s in seen] == ["trigger", "resolve"]
    assert seen[0]["dedup_key"] == "llm-incident/INC-1" and seen[0]["summary"] == "x"


def test_escalation_rules_parse_from_settings():
    from bot.adapters.settings import Settings
    from bot.base.errors import InputError

    s = Settings.from_env({"LLM_INCIDENT_PAGE_UNACKED": "critical=2m, warning=1h",
                           "LLM_INCIDENT_PAGE_APPROVAL": "0",
                           "LLM_INCIDENT_PAGERDUTY_ROUTING_KEY": KEY})
    assert s.page_unacked == {"critical": timedelta(minutes=2), "warning": timedelta(hours=1)}
    assert s.page_approval is None and KEY not in repr(s)
    assert Settings.from_env({"LLM_INCIDENT_PAGE_UNACKED": "none"}).page_unacked == {}
    with pytest.raises(InputError, match="SEVERITY=DURATION"):
        Settings.from_env({"LLM_INCIDENT_PAGE_UNACKED": "critical"})


def test_the_page_links_to_the_console_and_the_incidents_slack_thread(stub):
    from bot.adapters.pagers import slack_thread_links
    from bot.adapters.settings import Settings
    from bot.adapters.slack.thread_store import ChatMessages

    env = Env()
    settings = Settings(slack_bot_token="xoxb-test", slack_channel="C0INC")

    async def scenario():
        async with httpx.AsyncClient() as client:
            (inc,) = await env.engine.handle_alerts([alert()])
            ChatMessages(env.store).record_post(inc.incident_id, "C0INC", "1733480000.001200",
                                                env.published[0])
            esc = Escalations(env.engine, PagerDutyEvents(KEY, client, stub.url),
                              EscalationRules(console_url="https://c.example",
                                              links_for=slack_thread_links(env.store, settings)))
            env.clock.advance(minutes=5)
            await esc.round()
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    assert [link["href"] for link in stub.events[0]["links"]] == [
        f"https://c.example/ui/incidents/{incident_id}",
        "https://slack.com/archives/C0INC/p1733480000001200"]
    assert slack_thread_links(env.store, Settings()) is None  # no Slack: no link


def test_two_rounds_at_once_send_each_action_once(stub, tmp_path):
    # Two replicas (or serve's poll and its store watch) deciding and delivering together.
    db = tmp_path / "bot.db"
    first = Env(db=db)
    second = Env(db=db, clock=first.clock)

    async def scenario():
        async with httpx.AsyncClient() as client:
            (inc,) = await first.engine.handle_alerts([alert()])
            first.clock.advance(minutes=5)
            one, two = paging(first, stub, client), paging(second, stub, client)
            for _ in range(3):
                await asyncio.gather(one.round(), two.round())
            await first.engine.resolve(inc.incident_id, "alice", "fixed")
            for _ in range(3):
                first.clock.advance(seconds=1)
                await asyncio.gather(one.round(), two.round())
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    assert stub.actions(DEDUP_PREFIX + incident_id) == ["trigger", "resolve"]
    assert first.kinds(incident_id).count("paged") == 1


def test_an_incident_that_reopens_pages_again_counted_from_its_reopening(stub):
    env = Env()

    async def scenario():
        async with httpx.AsyncClient() as client:
            esc = paging(env, stub, client)
            (inc,) = await env.engine.handle_alerts([alert()])
            env.clock.advance(minutes=5)
            await esc.round()
            await env.engine.resolve(inc.incident_id, "alice", "fixed")
            await esc.round()
            env.clock.advance(minutes=2)  # it flaps: the same group fires again
            (again,) = await env.engine.handle_alerts([alert(starts_at=env.clock())])
            assert again.incident_id == inc.incident_id and again.outcome == "reopened"
            env.clock.advance(minutes=4)
            await esc.round()
            assert stub.actions(DEDUP_PREFIX + inc.incident_id) == ["trigger", "resolve"]
            env.clock.advance(minutes=1)  # 5 minutes after the reopening
            await esc.round()
            await esc.round()
            return inc.incident_id

    incident_id = asyncio.run(scenario())
    assert stub.actions(DEDUP_PREFIX + incident_id) == ["trigger", "resolve", "trigger"]
    assert stub.opened == 2 and stub.alerts[DEDUP_PREFIX + incident_id] == "triggered"


def test_a_page_for_a_waiting_approval_carries_a_signed_link_per_oncall_person(stub):
    from bot.adapters.console import ApprovalLinks
    from bot.adapters.pagers import page_links
    from bot.adapters.settings import Settings

    env = Env()
    settings = Settings(oncall_users=("alice", "bob", "carol"), console_url="https://c.example")

    async def scenario():
        async with httpx.AsyncClient() as client:
            (inc,) = await env.engine.handle_alerts([alert()])
            await env.engine.acknowledge(inc.incident_id, "alice")
            run = await env.engine.plan_step(inc.incident_id, "runaway-cost", None,
                                             actor="alice")
            esc = Escalations(env.engine, PagerDutyEvents(KEY, client, stub.url),
                              EscalationRules(console_url="https://c.example",
                                              links_for=page_links(env.store, settings)))
            env.clock.advance(minutes=10)
            await esc.round()
            return run

    run = asyncio.run(scenario())
    links = stub.events[0]["links"]
    approvals = [link for link in links if "/ui/approve/" in link["href"]]
    assert [a["text"] for a in approvals] == [f"Approve {run.id} as bob",
                                              f"Approve {run.id} as carol"]  # not alice
    token = approvals[0]["href"].rsplit("/", 1)[1]
    grant = ApprovalLinks(env.store).check(token)
    assert (grant.run_id, grant.user) == (run.id, "bob")
    assert page_links(env.store, Settings()) is None  # no Slack, nobody named: no links
