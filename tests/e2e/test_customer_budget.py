"""One customer's runaway traffic, capped for that customer alone, on the sandbox.

The rules are the user's own: an SLO file with a per-customer budget, rendered by
`llm-incident slo render --scale 360` (the 1h window becomes 10s) and loaded into a
real Prometheus. Three customers call `chat`; `runaway` sends four times the others'
traffic together. Its spend trips `LLMSpendBudgetExceeded{customer="runaway"}` and
nobody else's; Alertmanager posts it; the runaway-cost playbook suggests its
`cap-customer` step in Slack; two on-call engineers click Run step and Approve; the
policy file's `customers.runaway` gets the cap and no route changes; the sandbox's
per-customer metrics show `runaway`'s answers capped and the others' as before; the
alert resolves, verification passes, and the TTL revert takes the cap away.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from e2e.rig import (
    ONCALL,
    STAGE_TIMEOUT,
    WINDOW,
    SandboxRig,
    policy_routes,
    prom_alerts,
    prom_query,
)

pytestmark = pytest.mark.e2e

REQUESTER, APPROVER = ONCALL
ALERT = "LLMSpendBudgetExceeded"
SCALE = 360  # 1h -> 10s
# Per 10 s window: runaway ~40 requests (~$0.22 uncapped, ~$0.06 at 64 tokens);
# acme and beta ~5 each (~$0.03, under $0.07 even if all five answer long).
SLOS = """\
version: 1
budgets:
  chat-per-customer:
    route: chat
    per_customer: true
    per_hour_usd: 0.1
"""
CAP = 64  # the runaway-cost playbook's customer_output_cap
TOKENS_PER_ANSWER = (
    f"sum by (end_user) (rate(litellm_output_tokens_metric_total{{requested_model=\"chat\"}}"
    f"[{WINDOW}])) / sum by (end_user) (rate(litellm_proxy_total_requests_metric_total"
    f"{{requested_model=\"chat\",status_code=\"200\"}}[{WINDOW}]))")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxRig]:
    workdir = tmp_path_factory.mktemp("e2e-customer")
    (workdir / "slos.yaml").write_text(SLOS)
    # The workflow the README gives: render the user's file, load what it wrote.
    rendered = subprocess.run(
        [sys.executable, "-m", "bot.adapters.cli", "slo", "render", str(workdir / "slos.yaml"),
         "--out", str(workdir / "slo"), "--scale", str(SCALE)],
        capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    with SandboxRig(workdir, rules=workdir / "slo" / "slo-rules.yaml") as r:
        yield r


def per_customer(rig: SandboxRig) -> dict[str, float]:
    return {s["metric"].get("end_user", ""): float(s["value"][1])
            for s in prom_query(rig.prometheus.url, TOKENS_PER_ANSWER)}


def stage(wait_until: Callable[..., Any], what: str, check: Callable[[], Any],
          rig: SandboxRig) -> Any:
    try:
        result = wait_until(check, what=what, timeout=STAGE_TIMEOUT, interval=0.25)
    except pytest.fail.Exception as exc:
        store = rig.bot.store
        pytest.fail(f"{exc}\nincidents: {[(i.id, i.status) for i in store.incidents()]}\n"
                    f"runs: {[(r.id, r.state, r.error) for r in store.runs()]}\n"
                    f"policy: {rig.policy.read_text()}\nslack: {rig.slack.refusals()}",
                    pytrace=False)
    print(f"{time.strftime('%H:%M:%S')} {what}")
    return result


def test_a_runaway_customer_is_capped_alone_through_slack_and_the_cap_reverts(
        rig: SandboxRig, wait_until: Callable[..., Any]) -> None:
    prom, slack, bot = rig.prometheus.url, rig.slack, rig.bot
    routes_before, text_before = policy_routes(rig.policy), rig.policy.read_text()
    runaway = rig.sandbox.traffic(["chat"], rate_per_s=4.0, customers={"runaway": 1.0})
    others = rig.sandbox.traffic(["chat"], rate_per_s=1.0, customers={"acme": 1.0, "beta": 1.0})
    try:
        # 1. Only runaway's budget alert fires.
        (firing,) = stage(wait_until, f"{ALERT} firing for runaway",
                          lambda: prom_alerts(prom, ALERT), rig)
        assert firing["labels"]["customer"] == "runaway"
        assert firing["labels"]["incident_class"] == "runaway_cost"
        assert float(firing["annotations"]["hourly_budget_usd"]) == pytest.approx(36)

        # 2. The suggestion offers the per-customer cap first.
        top, run_button = stage(wait_until, "the runaway-cost suggestion with cap-customer",
                                lambda: slack.top_message("runaway-cost", "cap-customer"), rig)
        incident_id = run_button.value.split(":")[0]
        assert bot.incident(incident_id).klass == "runaway_cost"

        # 3. Run step, then Approve by a second on-call engineer (signed clicks).
        slack.click(REQUESTER, run_button, top.ts)
        (run,) = stage(wait_until, "the run planned from the click",
                       lambda: bot.store.runs(incident_id=incident_id), rig)
        assert (run.step_id, run.plan.action) == ("cap-customer", "cap_customer")
        reply, approve = stage(wait_until, f"Approve {run.id} in the thread",
                               lambda: slack.thread_button(top.ts, "approve", run.id), rig)
        slack.click(APPROVER, approve, reply.ts)
        stage(wait_until, f"{run.id} applied", lambda: bot.store.mitigation(run.id), rig)

        # 4. The policy file: runaway capped, no route touched, nobody else listed.
        policy = yaml.safe_load(rig.policy.read_text())
        assert policy["customers"] == {"runaway": {"blocked": False, "max_output_tokens": CAP,
                                                   "max_requests_per_minute": None,
                                                   "max_tokens_per_minute": None}}
        assert policy_routes(rig.policy) == routes_before

        # 5. Measured from the sandbox's per-customer metrics: runaway's answers are
        #    capped, acme's and beta's are as long as before.
        def capped_alone() -> dict[str, float] | None:
            seen = per_customer(rig)
            ok = (seen.get("runaway", CAP + 1) <= CAP and seen.get("acme", 0) > 2 * CAP
                  and seen.get("beta", 0) > 2 * CAP)
            return seen if ok else None

        seen = stage(wait_until, "runaway's answers capped, the others' untouched",
                     capped_alone, rig)
        print(f"output tokens per answer over {WINDOW}: {seen}")

        # 6. The alert resolves and the verification passes: the incident closes.
        stage(wait_until, f"{ALERT} resolved", lambda: not prom_alerts(prom, ALERT), rig)
        stage(wait_until, f"verification of {run.id} passed",
              lambda: bot.store.mitigation(run.id).verify_state == "passed", rig)
        stage(wait_until, f"{incident_id} resolved",
              lambda: bot.incident(incident_id).status == "resolved", rig)
    finally:
        runaway.cancel()
        others.cancel()

    # 7. The TTL revert (traffic stopped, so the budget cannot page again).
    stage(wait_until, f"the TTL revert of {run.id}",
          lambda: bot.run(run.id).state == "reverted", rig)
    # The file the cap changed is put back byte for byte (no customers section at all).
    assert rig.policy.read_text() == text_before
    assert slack.refusals() == []
