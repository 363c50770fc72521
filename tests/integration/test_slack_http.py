"""Slack over HTTP through bolt's real request path.

The service's FastAPI app (``bot.adapters.web.create_app``) with ``POST /slack/events``
mounted, driven through httpx's ASGI transport (bolt's own handler, signature
check and ack machinery run as in production). Requests are signed like
Slack's (``v0=`` HMAC-SHA256 of ``v0:{ts}:{body}``); the Web API is the local
``WebApiStub`` (auth.test, usergroups.users.list); response URLs point at a
local recorder. The engine runs on fakes with an injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_webapi_stub import WebApiStub

from bot.adapters.service_metrics import ServiceMetrics
from bot.adapters.settings import Settings
from bot.adapters.slack.app import create_slack_app
from bot.adapters.slack.http_mode import MAX_SLACK_BODY, ReplayGuard, mount_slack
from bot.adapters.slack.replay_store import RequestReplays
from bot.adapters.web import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from incident_env import Env, alert  # noqa: E402
from slack_socket_stub import SocketModeStub  # noqa: E402

pytestmark = pytest.mark.integration
SECRET = "test-signing-secret"
ONCALL = ["U0ALICE", "U0BOB"]
DEADLINE = 10.0


def sign(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    base = b"v0:" + str(ts).encode() + b":" + body
    sig = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig}


class Slack:
    """What Slack's servers would send, plus the recorders to look at what came back."""

    def __init__(self, env: Env, api: WebApiStub, urls: SocketModeStub,
                 http: httpx.AsyncClient) -> None:
        self.env, self.api, self.urls, self.http = env, api, urls, http

    async def post(self, body: bytes, content_type: str, headers: dict[str, str] | None = None
                   ) -> httpx.Response:
        hdrs = {"Content-Type": content_type, **(headers if headers is not None else sign(body))}
        return await self.http.post("/slack/events", content=body, headers=hdrs)

    def command_body(self, text: str, user: str, url: str) -> bytes:
        return urlencode({"token": "legacy", "team_id": "T0STUB", "channel_id": "C0INC",
                          "user_id": user, "user_name": user.lower(), "command": "/llm-incident",
                          "text": text, "response_url": url, "trigger_id": "1.2.3",
                          "api_app_id": "A0STUB"}).encode()

    async def command(self, text: str, user: str = "U0ALICE") -> tuple[httpx.Response, str]:
        url = self.urls.response_url()
        body = self.command_body(text, user, url)
        return await self.post(body, "application/x-www-form-urlencoded"), url

    async def click(self, action: str, value: str, user: str = "U0ALICE"
                    ) -> tuple[httpx.Response, str]:
        url = self.urls.response_url()
        payload = {"type": "block_actions", "user": {"id": user, "team_id": "T0STUB"},
                   "api_app_id": "A0STUB", "token": "legacy", "trigger_id": "1.2.3",
                   "team": {"id": "T0STUB"}, "channel": {"id": "C0INC"},
                   "container": {"type": "message", "message_ts": "1.1"},
                   "response_url": url,
                   "actions": [{"action_id": f"{action}#0", "block_id": "b1", "value": value,
                                "type": "button", "action_ts": "1.2"}]}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.post(body, "application/x-www-form-urlencoded"), url

    async def event(self, event: dict[str, Any]) -> httpx.Response:
        body = json.dumps({"token": "legacy", "team_id": "T0STUB", "api_app_id": "A0STUB",
                           "type": "event_callback", "event_id": f"Ev{time.time_ns()}",
                           "event_time": int(time.time()), "event": event}).encode()
        return await self.post(body, "application/json")

    async def reply(self, url: str) -> dict[str, Any]:
        """The first message bolt's ``respond`` posted to ``url``."""
        await until(lambda: self.urls.responses_to(url), f"a reply at {url}")
        return self.urls.responses_to(url)[0]

    def thread(self, title_part: str) -> list[Any]:
        return [m for m in self.env.published if title_part in m.title]


async def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return result


@contextlib.asynccontextmanager
async def slack_http(db: Path | None = None, **settings: Any) -> AsyncIterator[Slack]:
    env = Env(db=db)
    if not env.store.incidents():
        await env.engine.handle_alerts([alert()])  # INC-1: runaway cost on route chat
    async with WebApiStub(usergroups={"S0ONCALL": ONCALL}) as api, SocketModeStub() as urls:
        cfg = Settings(slack_bot_token="xoxb-test", slack_signing_secret=SECRET,
                       slack_api_url=api.base_url, oncall_group="S0ONCALL", **settings)
        app = create_app(env.engine, cfg, metrics=ServiceMetrics(env.store))
        # As `serve` does: replays are remembered in the store.
        mount_slack(app, create_slack_app(env.engine, cfg), cfg,
                    replay=ReplayGuard(memory=RequestReplays(env.store)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://slack.test") as http:
            yield Slack(env, api, urls, http)
        # Let bolt's listener tasks (after the ack) finish before the loop closes.
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.wait(pending, timeout=DEADLINE) if pending else None


def go(coro) -> None:
    asyncio.run(coro)


# --- the request path ----------------------------------------------------------------


def test_a_signed_read_command_is_acked_then_answered():
    async def main() -> None:
        async with slack_http() as s:
            resp, url = await s.command("status")
            assert resp.status_code == 200
            body = await s.reply(url)
            assert body["response_type"] == "ephemeral"
            assert "INC-1" in json.dumps(body["blocks"])
            assert s.api.calls_of("auth.test")  # bolt's single-team authorization

    go(main())


def test_a_change_is_acked_with_working_on_it_and_the_result_goes_in_channel():
    async def main() -> None:
        async with slack_http() as s:
            resp, url = await s.command("pause --reason 'bad deploy'")
            assert resp.status_code == 200 and "working on it" in resp.json()["text"]
            body = await s.reply(url)
            assert body["response_type"] == "in_channel" and "paused by U0ALICE" in body["text"]
            assert s.env.store.flag("paused").set_by == "U0ALICE"
            assert s.api.calls_of("usergroups.users.list")

    go(main())


def test_an_approval_link_from_slack_is_for_the_oncall_asker_alone_and_never_in_channel():
    async def main() -> None:
        async with slack_http(console_url="https://console.example") as s:
            run = await s.env.engine.plan_step("INC-1", "runaway-cost", "disable-route",
                                               actor="U0ALICE")
            resp, url = await s.command(f"link {run.id}", user="U0BOB")
            assert resp.status_code == 200
            body = await s.reply(url)
            assert body["response_type"] == "ephemeral"  # a secret: the asker's alone
            assert "https://console.example/ui/approve/" in body["text"]
            _, url = await s.command(f"link {run.id}", user="U0MALLORY")  # not on call
            assert "refused" in (await s.reply(url))["text"]
            _, url = await s.command(f"link {run.id} --for U0ALICE", user="U0BOB")
            assert "only ever for yourself" in json.dumps(await s.reply(url))

    go(main())


def test_url_verification_answers_the_challenge():
    async def main() -> None:
        async with slack_http() as s:
            body = json.dumps({"type": "url_verification", "challenge": "c-123",
                               "token": "legacy"}).encode()
            resp = await s.post(body, "application/json")
            assert resp.status_code == 200 and resp.json()["challenge"] == "c-123"

    go(main())


@pytest.mark.parametrize("headers", [
    pytest.param(lambda b: sign(b, secret="not-the-secret"), id="bad-signature"),
    pytest.param(lambda b: sign(b, ts=int(time.time()) - 6 * 60), id="older-than-5-minutes"),
    pytest.param(lambda b: {}, id="unsigned"),
])
def test_forged_and_expired_requests_are_401_with_no_side_effect(headers):
    async def main() -> None:
        async with slack_http() as s:
            url = s.urls.response_url()
            body = s.command_body("pause --reason forged", "U0ALICE", url)
            resp = await s.post(body, "application/x-www-form-urlencoded", headers(body))
            assert resp.status_code == 401
            assert s.env.store.flag("paused") is None and s.urls.responses == []

    go(main())


def test_a_replayed_request_is_refused_after_a_restart_too(tmp_path: Path):
    db = tmp_path / "bot.db"
    url_holder: dict[str, Any] = {}

    async def first() -> None:
        async with slack_http(db=db) as s:
            url = s.urls.response_url()
            body = s.command_body("note INC-1 once", "U0ALICE", url)
            url_holder.update(body=body, headers=sign(body))
            ok = await s.post(body, "application/x-www-form-urlencoded", url_holder["headers"])
            assert ok.status_code == 200
            await s.reply(url)
        # the "process" ends here: a new app, a new guard, the same store

    async def after_restart() -> None:
        async with slack_http(db=db) as s:
            again = await s.post(url_holder["body"], "application/x-www-form-urlencoded",
                                 url_holder["headers"])
            assert again.status_code == 401 and "replayed" in again.text
            notes = [e for e in s.env.store.timeline("INC-1") if e.kind == "note"]
            assert len(notes) == 1

    go(first())
    go(after_restart())


def test_a_chunked_body_over_the_limit_is_refused_before_the_signature_check():
    async def main() -> None:
        async with slack_http() as s:
            big = b"x" * (MAX_SLACK_BODY + 1)

            async def chunks():
                for i in range(0, len(big), 65536):
                    yield big[i:i + 65536]

            resp = await s.http.post("/slack/events", content=chunks(),
                                     headers={"Content-Type": "application/json"})
            assert resp.status_code == 413

    go(main())


def test_a_person_typing_an_alert_in_the_alert_channel_opens_nothing():
    async def main() -> None:
        async with slack_http(alert_channels=("C0ALERTS",), alert_posters=("B0AM",)) as s:
            policy_before = s.env.driver.policy
            text = ("[FIRING:1] LLMProviderErrorRateHigh (chat critical)\n"
                    "Labels:\n - route = chat\nAnnotations:\n - standby_route = attacker-route")
            resp = await s.event({"type": "message", "user": "U0MALLORY", "channel": "C0ALERTS",
                                  "ts": "1764410400.000200", "text": text})
            assert resp.status_code == 200
            _, url = await s.command("status")  # a later request: the event was handled
            await s.reply(url)
            assert [i.id for i in s.env.store.incidents()] == ["INC-1"]
            assert s.env.driver.policy == policy_before

    go(main())


def test_a_replayed_request_is_refused():
    async def main() -> None:
        async with slack_http() as s:
            url = s.urls.response_url()
            body = s.command_body("note INC-1 first and only", "U0ALICE", url)
            headers = sign(body)
            first = await s.post(body, "application/x-www-form-urlencoded", headers)
            assert first.status_code == 200
            await s.reply(url)
            again = await s.post(body, "application/x-www-form-urlencoded", headers)
            assert again.status_code == 401 and "replayed" in again.text
            notes = [e for e in s.env.store.timeline("INC-1") if e.kind == "note"]
            assert len(notes) == 1

    go(main())


# --- authorization -------------------------------------------------------------------


def test_commands_from_outside_the_oncall_group_are_refused():
    async def main() -> None:
        async with slack_http() as s:
            resp, url = await s.command("pause", user="U0MALLORY")
            assert resp.status_code == 200
            body = await s.reply(url)
            assert body["response_type"] == "ephemeral"
            assert "not in the on-call group" in body["text"]
            assert s.env.store.flag("paused") is None
            read, url = await s.command("show INC-1", user="U0MALLORY")  # reads are open
            assert "INC-1" in json.dumps(await s.reply(url))
            _, url = await s.click("approve", "RUN-1", user="U0MALLORY")
            assert "not in the on-call group" in (await s.reply(url))["text"]

    go(main())


# --- buttons -------------------------------------------------------------------------


def test_two_person_step_by_buttons_self_approval_refused_double_click_harmless():
    async def main() -> None:
        async with slack_http() as s:
            resp, _ = await s.click("run_step", "INC-1:runaway-cost:disable-route")
            assert resp.status_code == 200
            planned = await until(lambda: s.thread("run (U0ALICE)"), "the planned run")
            assert [b.action for b in planned[0].buttons] == ["approve", "deny"]
            run_id = planned[0].buttons[0].value
            await s.click("approve", run_id, user="U0ALICE")
            refused = await until(lambda: s.thread("approve refused (U0ALICE)"), "refusal")
            assert "two_person" in json.dumps(refused[0].sections[0].text)
            assert s.env.store.run(run_id).state == "awaiting_approval"
            await s.click("approve", run_id, user="U0BOB")
            await until(lambda: s.thread("approve (U0BOB)"), "the applied run")
            assert s.env.store.run(run_id).state == "applied"
            assert not s.env.driver.policy.routes["chat"].enabled
            _, url = await s.click("approve", run_id, user="U0BOB")  # clicked twice
            again = await s.reply(url)  # to the clicker only; the change is not made twice
            assert "applied already; nothing left to approve" in again["text"]
            assert again["response_type"] == "ephemeral"
            assert len(s.env.store.approvals(run_id)) == 1
            await s.click("revert", run_id, user="U0BOB")
            await until(lambda: s.env.store.run(run_id).state == "reverted", "the revert")
            assert s.env.driver.policy.routes["chat"].enabled

    go(main())


def test_a_button_after_its_approval_expired_gets_a_fresh_approval():
    async def main() -> None:
        async with slack_http() as s:
            await s.click("run_step", "INC-1:runaway-cost:cap-output")
            planned = await until(lambda: s.thread("run (U0ALICE)"), "the planned run")
            run_id = planned[0].buttons[0].value
            _, url = await s.command(f"approve {run_id}", user="U0BOB")
            await s.reply(url)
            s.env.clock.advance(minutes=20)  # past the 15-minute approval TTL
            _, url = await s.command(f"apply {run_id}", user="U0BOB")
            late = await s.reply(url)
            assert "expired" in late["text"] and late["response_type"] == "ephemeral"
            await s.click("approve", run_id, user="U0BOB")
            await until(lambda: s.env.store.run(run_id).state == "applied", "the apply")
            assert len(s.env.store.approvals(run_id)) == 2

    go(main())


def test_buttons_on_a_resolved_incident_do_nothing_and_say_why():
    async def main() -> None:
        async with slack_http() as s:
            _, url = await s.command("resolve INC-1")
            await s.reply(url)
            _, url = await s.click("run_step", "INC-1:runaway-cost:cap-output")
            assert "INC-1 is resolved" in (await s.reply(url))["text"]
            _, url = await s.click("ack", "INC-1")
            assert "resolved" in (await s.reply(url))["text"]
            assert s.env.store.runs() == []

    go(main())


def test_a_broken_button_value_is_reported_not_raised():
    async def main() -> None:
        async with slack_http() as s:
            _, url = await s.click("run_step", "INC-1:only-two")
            assert "this button is broken" in (await s.reply(url))["text"]

    go(main())


# --- bad input and escaping ----------------------------------------------------------


def test_quotes_unicode_10kb_and_markup_never_ping():
    async def main() -> None:
        async with slack_http() as s:
            text = """note INC-1 "it's <!channel> \\"quoted\\"" ünïcødé 🚀 <@U0BOB>"""
            _, url = await s.command(text)
            assert (await s.reply(url))["response_type"] == "in_channel"
            assert s.env.store.timeline("INC-1")[-1].text == \
                'it\'s <!channel> "quoted" ünïcødé 🚀 <@U0BOB>'
            _, url = await s.command("show INC-1", user="U0MALLORY")
            shown = json.dumps(await s.reply(url), ensure_ascii=False)
            assert "ünïcødé 🚀" in shown and "&lt;!channel&gt;" in shown
            assert "<!channel>" not in shown and "<@U0BOB>" not in shown
            resp, url = await s.command("note INC-1 " + "x" * 10_000)
            assert resp.status_code == 200
            assert "limit is 4000" in (await s.reply(url))["text"]
            resp, _ = await s.command("<!here>" + "z" * 10_000)
            assert resp.status_code == 200  # usage help in the ack itself
            ack = resp.json()["text"]
            assert "unknown command" in ack and "<!here>" not in ack and len(ack) < 1000

    go(main())


def test_alert_posted_in_a_channel_opens_an_incident_and_its_markup_stays_inert():
    async def main() -> None:
        async with slack_http(alert_channels=("C0ALERTS",), alert_posters=("B0AM",)) as s:
            title = "[FIRING:1] LLMTimeToFirstTokenHigh (chat critical)"
            text = "Labels:\n - route = chat-small\nAnnotations:\n - summary = &lt;!channel&gt; slow"
            resp = await s.event({"type": "message", "subtype": "bot_message", "bot_id": "B0AM",
                                  "channel": "C0ALERTS", "ts": "1764410400.000100", "text": "",
                                  "attachments": [{"title": title, "text": text}]})
            assert resp.status_code == 200
            opened = await until(lambda: [i for i in s.env.store.incidents() if i.id != "INC-1"],
                                 "the incident from the channel")
            alerts = s.env.store.alerts_for(opened[0].id)
            assert alerts[0].source == "slack"
            assert alerts[0].annotations["summary"] == "<!channel> slow"
            # our own post in the channel is not read back as an alert
            await s.event({"type": "message", "subtype": "bot_message", "bot_id": "B0BOT",
                           "channel": "C0ALERTS", "ts": "1764410500.000100",
                           "attachments": [{"title": "[FIRING:1] Other (x)"}]})
            _, url = await s.command("status")
            await s.reply(url)
            assert len(s.env.store.incidents()) == 2

    go(main())


# --- property: any signed body is answered 2xx/4xx -----------------------------------------

_ANY_BODY = st.one_of(
    st.binary(max_size=400),
    st.dictionaries(st.sampled_from(["payload", "command", "text", "user_id", "type", "token",
                                     "response_url", "event", "x"]),
                    st.text(max_size=60), max_size=5).map(lambda d: urlencode(d).encode()),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(
                     st.sampled_from(["type", "event", "payload", "actions", "user", "x"]),
                     c, max_size=3), max_leaves=12).map(lambda v: json.dumps(v).encode()),
)


def test_any_signed_body_at_the_slack_endpoint_is_answered_without_a_5xx():
    """Whatever Slack (or someone with the secret) sends, bolt's path answers 2xx or 4xx."""
    seen: list[int] = []

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(body=_ANY_BODY, content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "text/plain"]))
    def check(body: bytes, content_type: str) -> None:
        async def main() -> None:
            async with slack_http() as s:
                resp = await s.post(body, content_type)
                seen.append(resp.status_code)
                assert resp.status_code < 500, (resp.status_code, body[:200])
                assert (await s.http.get("/healthz")).status_code == 200

        go(main())

    check()
    assert len(seen) >= 100


def test_a_release_is_started_by_command_and_rolled_back_by_its_button_by_on_call_only():
    async def main() -> None:
        async with slack_http() as s:
            resp, url = await s.command("release start chat --prompt v43 --baseline v42")
            assert resp.status_code == 200
            await s.reply(url)
            assert s.env.store.release("REL-1").state == "canary"
            assert s.env.driver.policy.routes["chat"].canary.weight == 0.05
            live = [m for m in s.env.published if m.incident_id == "REL-1"]
            assert live and live[0].buttons[-1].action == "release_rollback"
            _, url = await s.click("release_rollback", "REL-1", user="U0MALLORY")
            refused = await s.reply(url)
            assert "refused" in refused["text"]
            assert s.env.store.release("REL-1").state == "canary"
            await s.click("release_rollback", "REL-1", user="U0BOB")
            await until(lambda: s.env.store.release("REL-1").state == "rolled_back",
                        "the rollback")
            assert s.env.driver.policy.routes["chat"].canary is None
            (event,) = [e for e in s.env.store.release_timeline("REL-1")
                        if e.kind == "rolled_back"]
            assert event.actor == "U0BOB" and "rolled back from chat" in event.text

    go(main())
