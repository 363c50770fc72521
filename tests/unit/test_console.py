"""The web console over the engine: pages render what the store holds (escaped), and
a signed link approves one run, once, for one person, under the same rules as Slack.
The browser tier (tests/e2e/test_console_browser.py) drives the same pages in Chromium."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

import httpx
from fakes import InMemoryDriver
from fastapi import FastAPI

from actions.policy import ServingPolicy
from bot.adapters.commands import execute
from bot.adapters.commands.context import Context
from bot.adapters.console import ApprovalLinks, attach_console
from bot.adapters.core_loop import Inline
from bot.adapters.slack.blocks import render

sys.path.insert(0, str(Path(__file__).parent))
from incident_env import Env, alert  # noqa: E402

POLICY = ServingPolicy.model_validate({"routes": {
    "chat": {"max_concurrency": 16, "group": "chat", "max_output_tokens": 1024},
    "chat-small": {"group": "chat"}, "chat-long": {}}})
HOSTILE = "<script>alert('x')</script> <!channel>"


class Rig:
    def __init__(self, **console) -> None:
        self.env = Env(driver=InMemoryDriver(POLICY, name="default"))
        self.app = FastAPI()
        self.console = attach_console(self.app, self.env.engine, core=Inline(), **console)
        self.links = self.console.links

    def get(self, path: str, **kw) -> httpx.Response:
        return asyncio.run(self._call("GET", path, **kw))

    def post(self, path: str, **kw) -> httpx.Response:
        return asyncio.run(self._call("POST", path, **kw))

    async def _call(self, method: str, path: str, **kw) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                     base_url="http://console") as client:
            return await client.request(method, path, **kw)

    def incident_with_run(self, step: str = "disable-route", actor: str = "alice"):
        async def go():
            (inc,) = await self.env.engine.handle_alerts([alert(summary_label=HOSTILE)])
            run = await self.env.engine.plan_step(inc.incident_id, "runaway-cost", step,
                                                  actor=actor)
            return inc.incident_id, run

        return asyncio.run(go())


def test_the_pages_show_the_store_and_escape_what_came_from_an_alert():
    rig = Rig()
    incident_id, run = rig.incident_with_run()
    listing = rig.get("/ui/incidents")
    assert listing.status_code == 200 and incident_id in listing.text
    page = rig.get(f"/ui/incidents/{incident_id}")
    assert page.status_code == 200
    html = page.text
    assert HOSTILE not in html and "&lt;script&gt;" in html  # data, never markup
    assert "runaway-cost" in html and "Why:" in html  # the suggestion and why
    assert run.id in html and "disable_route" in html and "two_person" in html
    assert "+ routes.chat.enabled: false" in run.diff and run.diff.splitlines()[-1] in html
    fragment = rig.get(f"/ui/incidents/{incident_id}?part=timeline")
    assert "<html" not in fragment.text and "opened" in fragment.text
    assert rig.get(f"/ui/incidents/{incident_id}?part=status").text == "open"
    for path in ("/ui/mitigations", "/ui/drills", "/ui/releases"):
        assert rig.get(path).status_code == 200, path
    assert rig.get("/ui/incidents/INC-999").status_code == 404
    bad = rig.get("/ui/incidents?status=<b>nope</b>")
    assert bad.status_code == 400 and "unknown incident status" in bad.text
    assert "<b>nope" not in bad.text
    only_drills = rig.get("/ui/incidents?drill=yes")
    assert incident_id not in only_drills.text and "No incidents match" in only_drills.text


def test_a_signed_link_approves_once_for_its_person_and_applies_the_change():
    rig = Rig()
    _, run = rig.incident_with_run()
    assert run.state == "awaiting_approval"
    token = rig.links.issue(run.id, "bob")
    shown = rig.get(f"/ui/approve/{token}")
    assert shown.status_code == 200 and "Approve and apply as bob" in shown.text
    assert rig.env.store.run(run.id).state == "awaiting_approval"  # opening changes nothing
    done = rig.post(f"/ui/approve/{token}")
    assert done.status_code == 200, done.text
    assert rig.env.store.run(run.id).state == "applied"
    assert asyncio.run(rig.env.driver.read()).get("chat", "enabled") is False
    assert [a.user for a in rig.env.store.approvals(run.id)] == ["bob"]
    again = rig.post(f"/ui/approve/{token}")
    assert again.status_code == 403 and "used already" in again.text
    assert rig.get(f"/ui/approve/{token}").status_code == 403


def test_an_expired_altered_or_self_approving_link_is_refused_and_nothing_changes():
    rig = Rig()
    _, run = rig.incident_with_run()
    expired = rig.links.issue(run.id, "bob", ttl=timedelta(minutes=5))
    rig.env.clock.advance(minutes=6)
    assert "expired" in rig.post(f"/ui/approve/{expired}").text
    good = rig.links.issue(run.id, "bob")
    payload, _, sig = good.partition(".")
    forged = ApprovalLinks(rig.env.store, "another-key").issue(run.id, "bob")
    for bad in (f"{payload}.{sig[:-2]}AA", forged, "nonsense"):
        resp = rig.post(f"/ui/approve/{bad}")
        assert resp.status_code == 403 and "not valid" in resp.text
    mine = rig.links.issue(run.id, "alice")  # she asked for it: two_person says no
    resp = rig.post(f"/ui/approve/{mine}")
    assert resp.status_code == 409 and "cannot approve" in resp.text
    assert rig.env.store.run(run.id).state == "awaiting_approval"
    assert asyncio.run(rig.env.driver.read()).get("chat", "enabled") is not False


def test_behind_an_sso_proxy_the_signed_in_person_must_be_the_links():
    rig = Rig(user_header="X-Forwarded-User", oncall_users=("alice", "bob", "carol"))
    _, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob")
    resp = rig.post(f"/ui/approve/{token}", headers={"X-Forwarded-User": "carol"})
    assert resp.status_code == 403 and "this link is for bob" in resp.text
    off_call = rig.links.issue(run.id, "mallory")
    resp = rig.post(f"/ui/approve/{off_call}", headers={"X-Forwarded-User": "mallory"})
    assert resp.status_code == 403 and "not on call" in resp.text
    fresh = rig.links.issue(run.id, "bob")
    assert rig.post(f"/ui/approve/{fresh}",
                    headers={"X-Forwarded-User": "bob"}).status_code == 200


def test_the_link_verb_prints_a_link_and_slack_gets_one_only_for_yourself(tmp_path):
    rig = Rig()
    _, run = rig.incident_with_run()

    def ctx(actor: str, local: bool) -> Context:
        return Context(actor=actor, playbooks_dir=tmp_path, open_engine=lambda: rig.env.engine,
                       local=local, console_url="https://console.example")

    out = asyncio.run(execute(["link", run.id, "--for", "bob"], ctx("cli", True)))
    assert out.ok and out.data["url"].startswith("https://console.example/ui/approve/")
    token = out.data["url"].rsplit("/", 1)[1]
    assert rig.links.check(token).user == "bob"
    refused = asyncio.run(execute(["link", run.id, "--for", "bob"], ctx("U-ALICE", False)))
    assert not refused.ok and "only ever for yourself" in refused.text
    # It hands out the right to approve: in Slack only the on-call group may ask.
    from bot.adapters.commands import VERBS, parse
    from bot.adapters.slack.auth import needs_oncall
    assert needs_oncall(parse(["link", run.id], VERBS))
    shown = asyncio.run(execute(["show", run.incident_id], ctx("cli", True)))
    assert f"console: https://console.example/ui/incidents/{run.incident_id}" in shown.text


def test_slack_messages_link_to_the_console_page():
    rig = Rig()
    rig.incident_with_run()
    msg = rig.env.published[0]
    blocks = render(msg, "https://console.example")
    context = blocks[1]["elements"][0]["text"]
    assert f"<https://console.example/ui/incidents/{msg.incident_id}|open in the console>" \
        in context
    assert "console" not in render(msg)[1]["elements"][0]["text"]
