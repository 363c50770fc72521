"""Alert content is data, never authority: each reproduction of the trust-boundary
review as a test against the shipped playbooks, a real policy file and the ASGI app.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import RecordingNotifier

from actions.base import FieldChange, Plan
from actions.catalog import get_action
from actions.drivers.http import HttpDriver, HttpTargetConfig
from actions.drivers.policy_file import PolicyFileDriver
from bot.adapters.service_metrics import ServiceMetrics
from bot.adapters.settings import Settings
from bot.adapters.web import create_app
from bot.adapters.wiring import build_engine
from bot.base.errors import DriverError, InputError, PlaybookError, TemplateError
from bot.intake.alert import Alert
from bot.playbook.loader import lint, load_text
from bot.playbook.render import render_query
from bot.playbook.schema import Guard

AM = "/v1/alerts/alertmanager"
POLICY = (b"version: 1\nroutes:\n  chat:\n    max_concurrency: 16\n    fallback: chat-small\n"
          b"  chat-small: {}\n  chat-long: {}\n")


class Service:
    """build_engine over a real policy file and store, and the webhook app."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_bytes(POLICY)
        self.settings = Settings(db_path=tmp_path / "bot.db", policy_path=self.policy, **settings)
        self.engine = build_engine(self.settings)
        self.notifier = RecordingNotifier()
        self.engine.notifier = self.notifier
        self.app = create_app(self.engine, self.settings,
                              metrics=ServiceMetrics(self.engine.store))

    def post(self, body: bytes, path: str = AM) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bot") as c:
                resp = await c.post(path, content=body,
                                    headers={"content-type": "application/json"})
            await self.app.state.core.drain()  # the work that follows the answer
            return resp

        return asyncio.run(go())


def am_body(labels: dict[str, str], annotations: dict[str, str] | None = None,
            status: str = "firing", starts: str = "2026-11-29T10:00:00Z") -> bytes:
    alert = {"status": status, "labels": labels, "annotations": annotations or {},
             "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
             "fingerprint": "f" * 16}
    return json.dumps({"version": "4", "groupKey": "{}:{}", "status": status,
                       "receiver": "bot", "groupLabels": {}, "commonLabels": labels,
                       "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}).encode()


PROVIDER = {"alertname": "LLMProviderErrorRateHigh", "route": "chat", "severity": "high"}


# --- alert content cannot pick a production target -----------------------------------


@pytest.mark.parametrize("standby, guard", [
    ("totally-unknown-model", "is not served by target 'default'"),  # not served at all
    ("chat-long", "guard 'allow'"),  # served, but not on the step's allowlist
])
def test_an_alert_cannot_point_the_automatic_fallback_anywhere(tmp_path, standby, guard):
    svc = Service(tmp_path)
    res = svc.post(am_body(PROVIDER, {"standby_route": standby}))
    assert res.status_code == 200 and res.json()["alerts"][0]["new_incident"]
    assert svc.policy.read_bytes() == POLICY  # byte-identical: nothing was written
    result = [m for m in svc.notifier.messages if m.kind == "result"]
    assert result and guard in result[0].text + result[0].title


def test_the_default_standby_still_falls_back_automatically(tmp_path):
    svc = Service(tmp_path)
    svc.policy.write_bytes(POLICY.replace(b"    fallback: chat-small\n", b""))
    assert svc.post(am_body(PROVIDER)).status_code == 200
    policy = asyncio.run(PolicyFileDriver(svc.policy).read())
    assert policy.route("chat").fallback == "chat-small"


def test_planning_on_an_unknown_route_names_it_and_adds_nothing(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_bytes(POLICY)
    driver = PolicyFileDriver(path)
    current = asyncio.run(driver.read())
    with pytest.raises(InputError) as err:
        get_action("cap_output_length").plan({"route": "ghost", "max_output_tokens": 64},
                                              current, target="default")
    assert "route 'ghost' is not served by target 'default'" in str(err.value)
    assert "chat, chat-long, chat-small" in (err.value.hint or "")
    # Even a hand-made plan (bypassing the check) cannot add the route to the file.
    plan = Plan(action="cap_output_length", target="default", params={}, changes=[
        FieldChange(route="ghost", field="max_output_tokens", before=None, after=64)])
    with pytest.raises(DriverError, match="not served"):
        asyncio.run(driver.write(plan.updates("after"), reason="x", action="cap_output_length"))
    assert path.read_bytes() == POLICY


# --- queries are built, not pasted ---------------------------------------------------------


def _alert(annotations: dict[str, str]) -> Alert:
    return Alert(source="generic", fingerprint="f", status="firing",
                 labels={"alertname": "LLMCostBurnRateHigh", "route": "chat"},
                 annotations=annotations, starts_at=datetime(2026, 11, 29, tzinfo=UTC))


def test_an_annotation_cannot_change_what_verification_measures():
    from bot.playbook.loader import load_file

    pb = load_file(Path(__file__).resolve().parents[2] / "playbooks" / "runaway-cost.yaml")
    query = pb.step("cap-output").guard.verify.query  # type: ignore[union-attr]
    from bot.playbook.render import render_params

    evil = _alert({"hourly_budget_usd": "1 unless on() vector(1)"})
    with pytest.raises(TemplateError, match="not a number"):
        render_query(query, render_params(pb, evil), evil)
    fine = _alert({"hourly_budget_usd": "40"})
    rendered = render_query(query, render_params(pb, fine), fine)
    assert rendered.rstrip().endswith("/ 40") and "unless" not in rendered


BASE = """id: p
title: P
class: runaway_cost
severity: high
match: {any: [{alertname: A}]}
params:
  route: "{{ labels.route }}"
  budget: "{{ annotations.budget | default(20) }}"
  cap: 256
"""


def test_lint_flags_raw_alert_values_in_queries_with_file_and_line(tmp_path):
    text = BASE + """diagnose:
  - title: spend
    query: sum(rate(x{route="{{ params.route | promql }}"}[5m])) / {{ params.budget }}
  - title: fine
    query: sum(x{route="{{ params.route | promql }}"}) / {{ params.budget | number }} * {{ params.cap }}
steps:
  - id: s
    title: S
    action: cap_output_length
    with: {route: "{{ params.route }}", max_output_tokens: 64}
    guard:
      verify: {query: 'x{r="{{ labels.route }}"}', expect: "< 1", within: 5m}
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    problems = lint([path])
    # `| number` makes the syntax safe but leaves the scale to the alert: a range is needed.
    assert [(p.line, p.field) for p in problems] == [
        (12, "diagnose[0].query"), (14, "diagnose[1].query"), (21, "steps[0].guard.verify.query")]
    assert "params.budget" in problems[0].message and "min:" in (problems[0].hint or "")
    assert "no declared range" in problems[1].message and "params.budget" in problems[1].message
    assert "labels" in problems[2].message


def test_lint_refuses_an_automatic_step_whose_target_comes_from_the_alert(tmp_path):
    step = """steps:
  - id: s
    title: S
    action: fallback
    with: {route: chat, to: "{{ annotations.standby }}"}
    guard: {approval: none, auto: true}
"""
    with pytest.raises(PlaybookError) as err:
        load_text(BASE + step, "p.yaml")
    [problem] = err.value.problems
    assert problem.field == "steps[0].with.to" and problem.line == 14
    assert "guard.allow.to" in (problem.hint or "")
    allowed = step.replace("auto: true}", "auto: true, allow: {to: [chat-small]}}")
    assert load_text(BASE + allowed, "p.yaml").steps[0].guard.allow == {"to": ["chat-small"]}


# --- drivers refuse what would escape --------------------------------------------------------


@pytest.mark.parametrize("route", ["..", ".", " "])
def test_the_http_driver_never_sends_a_dot_segment(route):
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return httpx.Response(200, json={})

    config = HttpTargetConfig.model_validate({
        "name": "gw", "base_url": "http://gw.test/admin/v1",
        "read": {"url": "/policy"},
        "actions": {"default": {"method": "PUT", "url": "/routes/{{ route }}",
                                "json_values": True}}})
    driver = HttpDriver(config, env={}, transport=httpx.MockTransport(handler))
    with pytest.raises(DriverError, match="would change the request path"):
        asyncio.run(driver.write({route: {"enabled": False}}, reason="x", action="disable_route"))
    assert sent == []


# --- poison inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("body, says", [
    (b'{"version": "4", "n": ' + b"9" * 4301 + b"}", "digits"),
    (b"[" * 600 + b"]" * 600, "nested"),
    (b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}", "nested"),
    (b"[" * 100_000, "nested"),
], ids=["4301-digit-int", "600-levels", "900-levels", "unclosed-100k"])
def test_poison_bodies_are_400_naming_the_problem(tmp_path, body, says):
    svc = Service(tmp_path)
    res = svc.post(body)
    assert res.status_code == 400, res.text
    assert says in res.json()["error"] and res.json()["field"] == "body"
    assert svc.engine.store.incidents() == []


def test_label_names_are_capped_and_control_characters_never_reach_a_sink(tmp_path):
    svc = Service(tmp_path)
    res = svc.post(am_body({**PROVIDER, "k" * 129: "v"}))
    assert res.status_code == 400 and "at most 128" in res.json()["error"]
    labels = {**PROVIDER, "note": "a\x00b\r\nc\x1b[31mred\u202e"}
    assert svc.post(am_body(labels)).status_code == 200
    [stored] = svc.engine.store.alerts_for("INC-1")
    assert stored.labels["note"] == "ab\nc[31mred"


# --- flapping --------------------------------------------------------------------------------


def test_a_hundred_flaps_make_one_incident(tmp_path):
    svc = Service(tmp_path)
    svc.policy.write_bytes(POLICY.replace(b"    fallback: chat-small\n", b""))
    labels = {"alertname": "LLMCostBurnRateHigh", "route": "chat", "severity": "critical"}
    outcomes = []
    for i in range(100):
        starts = f"2026-11-29T10:{i // 60:02d}:{i % 60:02d}Z"
        outcomes.append(svc.post(am_body(labels, starts=starts)).json()["alerts"][0]["outcome"])
        svc.post(am_body(labels, status="resolved", starts=starts))
    incidents = svc.engine.store.incidents(limit=1000)
    assert len(incidents) == 1 and incidents[0].status == "resolved"
    assert outcomes[0] == "opened" and set(outcomes[1:]) == {"reopened"}
    assert len([m for m in svc.notifier.messages if m.kind == "suggestion"]) == 1


def test_flap_damping_is_a_setting(tmp_path):
    from datetime import timedelta

    svc = Service(tmp_path, flap_window=timedelta(0))
    labels = {"alertname": "LLMCostBurnRateHigh", "route": "chat", "severity": "critical"}
    for i in range(3):
        starts = f"2026-11-29T10:00:0{i}Z"
        svc.post(am_body(labels, starts=starts))
        svc.post(am_body(labels, status="resolved", starts=starts))
    assert len(svc.engine.store.incidents()) == 3


# --- self-approval ----------------------------------------------------------------------------


def test_the_deployment_can_forbid_approving_your_own_oncall_step(tmp_path):
    from bot.base.errors import GuardRefused

    svc = Service(tmp_path, self_approval=False)
    svc.post(am_body({"alertname": "LLMCostBurnRateHigh", "route": "chat",
                      "severity": "critical"}))
    run = asyncio.run(svc.engine.plan_step("INC-1", actor="alice"))
    with pytest.raises(GuardRefused, match="someone else"):
        asyncio.run(svc.engine.runner.approve(run.id, "alice"))
    approved = asyncio.run(svc.engine.runner.approve(run.id, "bob"))
    assert approved.state == "approved"


def test_a_hundred_flapping_incidents_act_only_as_often_as_the_guards_allow(tmp_path):
    # Damping off: each flap is a new incident with its own automatic fallback step
    # (cooldown 30m, max_runs 2 per 6h on route chat).
    from datetime import timedelta

    svc = Service(tmp_path, flap_window=timedelta(0))
    svc.policy.write_bytes(POLICY.replace(b"    fallback: chat-small\n", b""))
    for i in range(100):
        starts = f"2026-11-29T10:{i // 60:02d}:{i % 60:02d}Z"
        assert svc.post(am_body(PROVIDER, starts=starts)).status_code == 200
        svc.post(am_body(PROVIDER, status="resolved", starts=starts))
        if i % 2:  # half the time someone puts the route back between flaps
            svc.policy.write_bytes(POLICY.replace(b"    fallback: chat-small\n", b""))
    store = svc.engine.store
    assert len(store.incidents(limit=1000)) == 100
    applied = [r for r in store.runs() if r.action == "fallback" and
               store.mitigation(r.id) is not None]
    assert len(applied) == 1  # the cooldown allows one in 30 minutes
    assert len(store.active_mitigations()) <= 1

    # A real mitigation on another route is not refused by the flaps.
    async def cap() -> Any:
        return await svc.engine.runner.plan(
            incident_id=None, playbook_id=None, step_id=None, action="cap_output_length",
            target="default", args={"route": "chat-long", "max_output_tokens": 256},
            guard=Guard(approval="none"), verify_query=None, requested_by="alice")

    run = asyncio.run(cap())
    assert run.state == "planned", run.error
    assert asyncio.run(svc.engine.apply(run.id, "alice")).state == "applied"
