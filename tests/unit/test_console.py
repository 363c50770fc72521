"""The web console over the engine: pages render what the store holds (escaped), and
a signed link approves one run, once, for one person, under the same rules as Slack.
The browser tier (tests/e2e/test_console_browser.py) drives the same pages in Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fakes import InMemoryDriver
from fastapi import FastAPI

from actions.policy import ServingPolicy
from bot.adapters.commands import execute
from bot.adapters.commands.context import Context
from bot.adapters.console import ApprovalLinks, attach_console
from bot.adapters.core_loop import Inline
from bot.adapters.slack.auth import OncallAuthorizer
from bot.adapters.slack.blocks import render
from bot.base.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
from incident_env import Env, alert  # noqa: E402

POLICY = ServingPolicy.model_validate({"routes": {
    "chat": {"max_concurrency": 16, "group": "chat", "max_output_tokens": 1024},
    "chat-small": {"group": "chat"}, "chat-long": {}}})
HOSTILE = "<script>alert('x')</script> <!channel>"


ORIGIN = "http://console"  # the test client's base URL: the console's own origin


class Rig:
    def __init__(self, **console) -> None:
        self.env = Env(driver=InMemoryDriver(POLICY, name="default"))
        self.app = FastAPI()
        self.console = attach_console(self.app, self.env.engine, core=Inline(), **console)
        self.links = self.console.links

    def approve(self, token: str, who: str = "", headers: dict | None = None,
                origin: str = ORIGIN) -> httpx.Response:
        """The approval form's POST as the console's page sends it: from its origin, with
        the form token a page opened by ``who`` carries (minted directly, so a link
        that the page would refuse can still be posted)."""
        form = self.console.forms.issue(f"/ui/approve/{token}", who)
        return self.post(f"/ui/approve/{token}", data={"form_token": form},
                         headers={"Origin": origin, **(headers or {})})

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
    form = re.search(r'name="form_token" value="([^"]+)"', shown.text)
    assert form, "the page's form carries its token"
    done = rig.post(f"/ui/approve/{token}", data={"form_token": form[1]},
                    headers={"Origin": ORIGIN})
    assert done.status_code == 200, done.text
    assert rig.env.store.run(run.id).state == "applied"
    assert asyncio.run(rig.env.driver.read()).get("chat", "enabled") is False
    assert [a.user for a in rig.env.store.approvals(run.id)] == ["bob"]
    again = rig.approve(token)
    assert again.status_code == 403 and "used already" in again.text
    assert rig.get(f"/ui/approve/{token}").status_code == 403


def test_an_expired_altered_or_self_approving_link_is_refused_and_nothing_changes():
    rig = Rig()
    _, run = rig.incident_with_run()
    expired = rig.links.issue(run.id, "bob", ttl=timedelta(minutes=5))
    rig.env.clock.advance(minutes=6)
    assert "expired" in rig.approve(expired).text
    good = rig.links.issue(run.id, "bob")
    payload, _, sig = good.partition(".")
    forged = ApprovalLinks(rig.env.store, "another-key").issue(run.id, "bob")
    for bad in (f"{payload}.{sig[:-2]}AA", forged, "nonsense"):
        resp = rig.approve(bad)
        assert resp.status_code == 403 and "not valid" in resp.text
    mine = rig.links.issue(run.id, "alice")  # she asked for it: two_person says no
    resp = rig.approve(mine)
    assert resp.status_code == 409 and "cannot approve" in resp.text
    assert rig.env.store.run(run.id).state == "awaiting_approval"
    assert asyncio.run(rig.env.driver.read()).get("chat", "enabled") is not False


def test_behind_an_sso_proxy_the_signed_in_person_must_be_the_links():
    rig = Rig(user_header="X-Forwarded-User",
              oncall=OncallAuthorizer(users=("alice", "bob", "carol")))
    _, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob")
    resp = rig.approve(token, "carol", headers={"X-Forwarded-User": "carol"})
    assert resp.status_code == 403 and "this link is for bob" in resp.text
    off_call = rig.links.issue(run.id, "mallory")
    resp = rig.approve(off_call, "mallory", headers={"X-Forwarded-User": "mallory"})
    assert resp.status_code == 403 and "not on call" in resp.text
    fresh = rig.links.issue(run.id, "bob")
    assert rig.approve(fresh, "bob", headers={"X-Forwarded-User": "bob"}).status_code == 200


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


# --- cross-site requests, framing, link lifetime, on-call at use (issue 31) ---------


def test_a_post_from_another_origin_or_from_no_origin_is_refused_and_changes_nothing(caplog):
    rig = Rig()
    _, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob")
    form = {"form_token": rig.console.forms.issue(f"/ui/approve/{token}", "")}
    for headers, said in (({"Origin": "http://evil.example"}, "another origin"),
                          ({"Origin": "http://console:8080"}, "another origin"),
                          ({"Origin": "null"}, "opaque origin"),
                          ({"Referer": "http://evil.example/page"}, "another origin"),
                          ({}, "no Origin or Referer")):
        resp = rig.post(f"/ui/approve/{token}", data=form, headers=headers)
        assert resp.status_code == 403 and said in resp.text, (headers, resp.text)
        assert "nothing was changed" in resp.text
    for method in ("PUT", "DELETE", "PATCH"):  # every state-changing method, any /ui path
        resp = asyncio.run(rig._call(method, f"/ui/approve/{token}",
                                     headers={"Origin": "http://evil.example"}))
        assert resp.status_code == 403, method
    assert rig.post("/ui/incidents", headers={"Origin": "http://evil.example"}).status_code == 403
    assert rig.env.store.run(run.id).state == "awaiting_approval"
    assert not rig.env.store.approvals(run.id)
    assert "console POST /ui/approve/<token> refused" in caplog.text
    assert token not in caplog.text  # the link is a secret: never logged
    # Not spent by any of that: from the console's own page it still works (Referer
    # alone is enough when a browser leaves Origin out).
    done = rig.post(f"/ui/approve/{token}", data=form, headers={"Referer": f"{ORIGIN}/ui/x"})
    assert done.status_code == 200, done.text


def test_with_an_external_url_configured_only_that_origin_may_post():
    rig = Rig(external_url="https://console.example")
    _, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob")
    for origin in (ORIGIN, "http://console.example", "https://console.example:8443"):
        resp = rig.approve(token, origin=origin)  # the Host matches; the URL does not
        assert resp.status_code == 403 and "https://console.example" in resp.text, origin
    assert rig.env.store.run(run.id).state == "awaiting_approval"
    assert rig.approve(token, origin="https://console.example").status_code == 200


def test_a_missing_altered_or_foreign_page_token_is_refused_and_changes_nothing():
    rig = Rig(user_header="X-Forwarded-User")
    _, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob", ttl=timedelta(hours=3))  # outlives a page
    path = f"/ui/approve/{token}"
    as_bob = {"Origin": ORIGIN, "X-Forwarded-User": "bob"}
    other_link = rig.links.issue(run.id, "bob")
    good = rig.console.forms.issue(path, "bob")
    for data, said in ((None, "is missing"), ({"form_token": ""}, "is missing"),
                       ({"form_token": good[:-3] + "AAA"}, "does not match"),
                       ({"form_token": "garbage"}, "does not match"),
                       # a page someone else opened (the attacker's own, through the proxy)
                       ({"form_token": rig.console.forms.issue(path, "mallory")},
                        "does not match"),
                       ({"form_token": rig.console.forms.issue(f"/ui/approve/{other_link}",
                                                               "bob")}, "does not match"),
                       ({"form_token": "x" * 9000}, "larger than")):
        resp = rig.post(path, data=data, headers=as_bob)
        assert resp.status_code == 403 and said in resp.text, (data, resp.text[:300])
    stale = rig.console.forms.issue(path, "bob")
    rig.env.clock.advance(minutes=61)
    resp = rig.post(path, data={"form_token": stale}, headers=as_bob)
    assert resp.status_code == 403 and "60 minutes old" in resp.text
    assert rig.env.store.run(run.id).state == "awaiting_approval"
    page = rig.get(path, headers={"X-Forwarded-User": "bob"})
    fresh = re.search(r'name="form_token" value="([^"]+)"', page.text)
    assert fresh and rig.post(path, data={"form_token": fresh[1]},
                              headers=as_bob).status_code == 200


def test_every_console_response_forbids_framing_and_sniffing_and_sets_no_cookie():
    rig = Rig()
    incident_id, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob")
    responses = [rig.get(p) for p in ("/ui/incidents", f"/ui/incidents/{incident_id}",
                                      "/ui/incidents?part=rows", "/ui/static/console.js",
                                      "/ui/static/console.css", f"/ui/approve/{token}",
                                      "/ui/incidents/INC-999", "/ui/nope")]
    responses.append(rig.post(f"/ui/approve/{token}", headers={"Origin": "http://evil"}))
    responses.append(rig.post(f"/ui/approve/{token}", headers={"Origin": ORIGIN}))
    for resp in responses:
        where = (resp.request.method, resp.request.url.path[:20], resp.status_code)
        csp = resp.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, where
        assert "'unsafe-inline'" not in csp, where
        assert resp.headers.get("x-frame-options") == "DENY", where
        assert resp.headers.get("x-content-type-options") == "nosniff", where
        # same-origin: the approval URL's token never goes to another site in a Referer
        assert resp.headers.get("referrer-policy") == "same-origin", where
        assert "set-cookie" not in resp.headers, where
    assert [r.status_code for r in responses[-4:]] == [404, 404, 403, 403]


def test_a_link_lives_at_most_24h(tmp_path):
    rig = Rig()
    _, run = rig.incident_with_run()
    ctx = Context(actor="cli", playbooks_dir=tmp_path, open_engine=lambda: rig.env.engine,
                  console_url="https://console.example")
    refused = asyncio.run(execute(["link", run.id, "--for", "bob", "--ttl", "3650d"], ctx))
    assert not refused.ok and "longer than the 24h" in refused.text
    assert "--ttl 24h or less" in refused.text
    bad = asyncio.run(execute(["link", run.id, "--ttl", "soon"], ctx))
    assert not bad.ok and "--ttl: not a duration" in bad.text
    ok = asyncio.run(execute(["link", run.id, "--for", "bob", "--ttl", "24h"], ctx))
    assert ok.ok and ok.data["ttl_seconds"] == 86400 and "within 1d" in ok.text
    with pytest.raises(InputError, match="at most 24h"):
        rig.links.issue(run.id, "bob", ttl=timedelta(hours=25))
    # One made before the ceiling (signed with the right key, ten years long): refused.
    body = {"run": run.id, "user": "bob", "nonce": "old",
            "exp": int((rig.env.store.now() + timedelta(days=3650)).timestamp())}
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    old = f"{payload}.{rig.links._sign(payload)}"
    resp = rig.approve(old)
    assert resp.status_code == 403 and "longer than the 24h a link may" in resp.text
    assert rig.env.store.run(run.id).state == "awaiting_approval"


class SlackDirectory:
    """Slack's user groups as ``OncallAuthorizer`` reads them (usergroups.users.list)."""

    def __init__(self, **groups: list[str]) -> None:
        self.groups, self.calls, self.down = groups, 0, False

    async def usergroups_users_list(self, usergroup: str) -> dict:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return {"ok": True, "users": list(self.groups[usergroup])}


def test_a_person_removed_from_the_oncall_group_cannot_use_a_link_issued_before():
    slack = SlackDirectory(S0ONCALL=["alice", "bob"])
    # Slack's own check (ttl=0: no cache, so the removal shows at the very next use;
    # serve shares the Slack app's instance and its 5-minute cache).
    rig = Rig(oncall=OncallAuthorizer(group="S0ONCALL", client=slack, ttl=0))
    _, run = rig.incident_with_run()
    token = rig.links.issue(run.id, "bob")
    assert rig.get(f"/ui/approve/{token}").status_code == 200
    slack.groups["S0ONCALL"] = ["alice"]  # bob's shift ended
    page = rig.get(f"/ui/approve/{token}")
    assert page.status_code == 403 and "not in the on-call group S0ONCALL" in page.text
    resp = rig.approve(token)
    assert resp.status_code == 403 and "bob may not approve any more" in resp.text
    slack.down = True  # a lookup that fails refuses too (fail closed), saying why
    resp = rig.approve(token)
    assert resp.status_code == 403 and "could not check the on-call group" in resp.text
    assert rig.env.store.run(run.id).state == "awaiting_approval"
    assert not rig.env.store.approvals(run.id) and slack.calls == 4
    slack.down, slack.groups["S0ONCALL"] = False, ["alice", "bob"]  # back on call
    assert rig.approve(token).status_code == 200  # the refusals did not spend the link


def test_serve_gives_the_console_slacks_own_oncall_check():
    from types import SimpleNamespace

    from bot.adapters.console.oncall import console_oncall
    from bot.adapters.settings import Settings

    assert console_oncall(Settings()) is None  # nobody named on call: the issuer decided
    shared = OncallAuthorizer(users=("bob",))
    app = SimpleNamespace(handlers=SimpleNamespace(authorizer=shared))
    assert console_oncall(Settings(oncall_group="S0ONCALL"), app) is shared
    listed = console_oncall(Settings(oncall_users=("bob",)))
    assert isinstance(listed, OncallAuthorizer) and listed.users == {"bob"}
    no_token = console_oncall(Settings(oncall_group="S0ONCALL"))  # cannot read the group
    decision = asyncio.run(no_token.check("bob"))
    assert not decision.allowed and "could not check the on-call group" in decision.reason
