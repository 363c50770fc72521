"""The whole loop on the practice sandbox, one incident class per test.

Steady traffic -> the drill scenario's fault (``drills/scenarios/*.yaml``) -> the
fast rule fires in a real Prometheus -> a real Alertmanager posts to the bot ->
the bot matches and posts its suggestion to Slack (the Web API stub) -> one
on-call engineer clicks Run step, another clicks Approve (signed interactions
into ``/slack/events``) -> the policy file changes -> the sandbox's metric is back
within the alert's bound -> Alertmanager sends the resolution -> the scheduler's
poll verifies against Prometheus -> the incident goes mitigated, then resolved ->
the TTL revert puts the policy back.

Every stage is waited on with a deadline and fails naming the stage, with a
snapshot of the bot, Prometheus and Slack. The rig (``conftest.SandboxRig``) is
shared by the module; each test leaves no fault, no traffic and no active
mitigation behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e.rig import (
    ONCALL,
    STAGE_TIMEOUT,
    WINDOW_S,
    SandboxRig,
    patch_policy,
    policy_routes,
    prom_alerts,
    prom_value,
    threshold_of_alert,
    write_policy,
)

from drills.scenario import SCENARIOS_DIR, Scenario, load_scenarios

pytestmark = pytest.mark.e2e

SCENARIOS = load_scenarios(SCENARIOS_DIR)
REQUESTER, APPROVER = ONCALL


def snapshot(rig: SandboxRig, incident_id: str | None = None) -> str:
    """What the bot, Prometheus and Slack look like now (for a failure message)."""
    store = rig.bot.store
    lines = [f"incidents: {[(i.id, i.klass, i.status) for i in store.incidents(limit=20)]}"]
    runs = store.runs(incident_id=incident_id) if incident_id else store.runs()
    lines.append(f"runs: {[(r.id, r.step_id, r.state, r.error) for r in runs]}")
    for r in runs:
        m = store.mitigation(r.id)
        if m:
            lines.append(f"  {r.id}: verify={m.verify_state} reverted_at={m.reverted_at}")
    if incident_id:
        lines.append(f"alerts: {[(a.alertname, a.status) for a in store.alerts_for(incident_id)]}")
        lines += [f"  {e.at:%H:%M:%S} {e.kind}: {e.text}" for e in store.timeline(incident_id)]
    lines.append(f"slack replies to the clicker: {rig.slack.refusals()}")
    lines.append(f"policy: {rig.policy.read_text()}")
    lines.append(f"faults: {rig.sandbox.faults()}")
    return "\n".join(lines)


def stage(rig: SandboxRig, wait_until: Callable[..., Any], what: str,
          check: Callable[[], Any], incident_id: str | None = None) -> Any:
    """Wait for ``check`` (deadline STAGE_TIMEOUT); print when it held (``-s`` shows it)."""
    try:
        result = wait_until(check, what=what, timeout=STAGE_TIMEOUT, interval=0.25)
    except pytest.fail.Exception as exc:
        pytest.fail(f"{exc}\n{snapshot(rig, incident_id)}", pytrace=False)
    print(f"{time.strftime('%H:%M:%S')} {what}")
    return result


def bound_of(rig: SandboxRig, alertname: str) -> Callable[[float], bool]:
    """``within(value)``: the value does not trip the alert's threshold in the fast rules."""
    op, limit = threshold_of_alert(rig.rules, alertname)
    trips = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}[op]
    return lambda value: not trips(float(value), limit)


@pytest.mark.parametrize("scenario_id", ["runaway-cost", "latency-spike", "malformed-output"])
def test_fault_to_alert_to_slack_approved_mitigation_to_recovery_and_ttl_revert(
    sandbox_rig: SandboxRig, wait_until: Callable[..., Any], scenario_id: str
) -> None:
    rig = sandbox_rig
    sc: Scenario = SCENARIOS[scenario_id]
    expect, fault = sc.expect, sc.injection.fault
    playbook = rig.bot.engine.registry.get(expect.playbook)
    step_id = expect.step or playbook.steps[0].id
    route, prom, slack, bot = fault.route, rig.prometheus.url, rig.slack, rig.bot
    within = bound_of(rig, expect.alertname)

    def metric() -> float | None:
        return prom_value(prom, sc.steady_state.query)

    write_policy(rig.policy, sc.setup.policy)
    traffic = rig.sandbox.traffic(sc.traffic.routes)
    started = time.monotonic()
    try:
        # 1. Warm up: a full rate window of traffic on the setup, healthy, nothing pending.
        def warm() -> bool:
            value = metric()
            return (time.monotonic() - started > WINDOW_S + 2 and value is not None
                    and within(value)
                    and not prom_alerts(prom, expect.alertname, "pending")
                    and not prom_alerts(prom, expect.alertname, "firing"))

        stage(rig, wait_until, "a healthy warm-up", warm)

        # 2. Inject: the release's policy change plus the fault.
        patch_policy(rig.policy, sc.injection.policy)
        rig.sandbox.add_fault(fault.body())
        before_fix = policy_routes(rig.policy, [route])

        # 3. The rule fires in Prometheus.
        (firing,) = stage(rig, wait_until, f"{expect.alertname} firing in Prometheus",
                          lambda: prom_alerts(prom, expect.alertname))
        assert firing["labels"]["route"] == route
        assert not within(metric() or 0.0), "the fault moved the metric past the alert's bound"

        # 4. Alertmanager -> bot -> the suggestion in Slack, offering the expected step.
        top, run_button = stage(rig, wait_until, f"the {expect.playbook} suggestion in Slack",
                                lambda: slack.top_message(expect.playbook, step_id))
        incident_id = run_button.value.split(":")[0]
        incident = bot.incident(incident_id)
        assert incident.klass == sc.class_ and incident.status == "open"
        assert expect.alertname in {a.alertname for a in bot.store.alerts_for(incident_id)}
        assert top.channel == rig.bot.settings.slack_channel
        assert playbook.title in json.dumps(top.blocks)

        # 5. Run step (first on-call), then Approve (second on-call), both signed clicks.
        slack.click(REQUESTER, run_button, top.ts)
        (run,) = stage(rig, wait_until, "the run planned from the click",
                       lambda: bot.store.runs(incident_id=incident_id), incident_id)
        assert (run.step_id, run.requested_by) == (step_id, REQUESTER)
        if run.guard.approval != "none":
            reply, approve = stage(
                rig, wait_until, f"Approve {run.id} in the incident's thread",
                lambda: slack.thread_button(top.ts, "approve", run.id), incident_id)
            assert approve.value == run.id
            slack.click(APPROVER, approve, reply.ts)
        stage(rig, wait_until, f"{run.id} applied",
              lambda: bot.store.mitigation(run.id), incident_id)
        if run.guard.approval != "none":
            assert [a.user for a in bot.store.approvals(run.id)] == [APPROVER]

        # 6. The policy file carries exactly the planned change.
        run = bot.run(run.id)
        after = policy_routes(rig.policy, [route])
        for change in run.plan.changes:
            assert before_fix[change.route][change.field] == change.before
            assert after[change.route][change.field] == change.after
        untouched = {f: v for f, v in after[route].items()
                     if f not in {c.field for c in run.plan.changes}}
        assert untouched == {f: before_fix[route][f] for f in untouched}

        # 7. The sandbox recovers: its metric is back within the alert's bound.
        stage(rig, wait_until, "the sandbox's metric back within bounds",
              lambda: (v := metric()) is not None and within(v), incident_id)

        # 8. Prometheus resolves the alert; Alertmanager tells the bot.
        stage(rig, wait_until, "Alertmanager's resolved notification",
              lambda: all(a.status == "resolved" for a in bot.store.alerts_for(incident_id)),
              incident_id)
        assert not prom_alerts(prom, expect.alertname)

        # 9. The scheduler's poll verifies the change against Prometheus.
        stage(rig, wait_until, f"verification of {run.id} passed",
              lambda: bot.store.mitigation(run.id).verify_state == "passed", incident_id)

        # 10. The incident: mitigating, mitigated, then resolved.
        stage(rig, wait_until, f"{incident_id} resolved",
              lambda: bot.incident(incident_id).status == "resolved", incident_id)
        statuses = bot.statuses(incident_id)
        assert statuses.index("mitigating") < statuses.index("mitigated") < \
            statuses.index("resolved"), statuses

        # 11. The TTL revert (no traffic now, so the fault cannot page again).
        traffic.cancel()
        stage(rig, wait_until, f"the TTL revert of {run.id}",
              lambda: bot.run(run.id).state == "reverted", incident_id)
        assert policy_routes(rig.policy, [route]) == before_fix
        mitigation = bot.store.mitigation(run.id)
        assert mitigation.reverted_at is not None and not mitigation.active
        assert "ttl" in (mitigation.revert_reason or "").lower(), mitigation.revert_reason
        stage(rig, wait_until, "the revert reported in the incident's thread",
              lambda: any("reverted" in t for t in slack.thread_texts(top.ts)), incident_id)
        assert slack.refusals() == []
    finally:
        traffic.cancel()
        rig.sandbox.clear_faults()
    assert rig.sandbox.faults() == []
