"""Per-customer steps through the core: which step a customer's alert gets, the
customer cap's plan, its guards, and the block's default of two people."""

from __future__ import annotations

import asyncio

import pytest
from incident_env import Env, alert

from bot.base.errors import GuardRefused, InputError
from bot.playbook.loader import load_text


def run(coro):
    return asyncio.run(coro)


def budget_alert(**labels: str):
    return alert("LLMSpendBudgetExceeded", fingerprint="fp-budget", incident_class="runaway_cost",
                 budget="chat-per-customer", **labels)


def test_a_customer_alert_suggests_and_runs_the_customer_cap_first() -> None:
    env = Env()
    item = run(env.engine.handle_alerts([budget_alert(customer="team-acme")]))[0]
    [msg] = env.published
    head = next(sec for sec in msg.sections if sec.title == "Alert")
    assert {f.label: f.value for f in head.fields}["Customer"] == "team-acme"
    primary = [b.value for b in msg.buttons if b.action == "run_step" and b.style == "primary"]
    assert primary == [f"{item.incident_id}:runaway-cost:cap-customer"]
    # `run INC` with no step takes the first step for this alert.
    run_, _ = run(env.engine.run_step(item.incident_id, None, None, "alice"))
    assert run_.step_id == "cap-customer"
    assert run_.plan.diff().splitlines()[1:] == [
        "- customers.team-acme.max_output_tokens: null",
        "+ customers.team-acme.max_output_tokens: 64"]
    assert run_.plan.routes == ["customer/team-acme"]


def test_a_route_alert_never_offers_the_customer_step() -> None:
    env = Env()
    item = run(env.engine.handle_alerts([alert()]))[0]
    run_, _ = run(env.engine.run_step(item.incident_id, None, None, "alice"))
    assert run_.step_id == "cap-output"
    with pytest.raises(InputError, match="cap-customer of runaway-cost is not for this "
                                         "incident: the alert has no customer label") as err:
        run(env.engine.plan_step(item.incident_id, "runaway-cost", "cap-customer",
                                 actor="alice"))
    assert "cap-output" in (err.value.hint or "")


def test_a_customer_id_from_an_alert_that_is_not_one_is_refused() -> None:
    env = Env()
    item = run(env.engine.handle_alerts([budget_alert(customer="acme\" or 1")]))[0]
    with pytest.raises(InputError, match="not a caller id"):
        run(env.engine.plan_step(item.incident_id, "runaway-cost", "cap-customer",
                                 actor="alice"))
    assert "customers" not in env.driver.policy.model_dump(exclude_defaults=True)


def test_the_customer_lock_is_per_customer_not_per_route() -> None:
    env = Env()
    a = run(env.engine.handle_alerts([budget_alert(customer="a")]))[0]
    first, _ = run(env.engine.run_step(a.incident_id, None, None, "alice"))
    run(env.engine.approve(first.id, "bob", apply=True))
    assert env.driver.policy.customer("a").max_output_tokens == 64
    # The route's own cap is another field: not held by the customer's cap.
    route_cap = run(env.engine.plan_step(a.incident_id, "runaway-cost", "cap-output",
                                         actor="alice"))
    run(env.engine.approve(route_cap.id, "bob", apply=True))
    assert env.driver.policy.route("chat").max_output_tokens == 256
    # The same customer's cap again is held by the first run until it is reverted.
    again = run(env.engine.plan_ad_hoc("cap_customer", "a", {"max_output_tokens": 32}, "alice"))
    assert again.state == "refused", again
    assert f"customers.a.max_output_tokens on target default is held by {first.id}" in str(
        again.error)
    assert env.driver.policy.customer("a").max_output_tokens == 64


def test_blocking_a_customer_needs_two_people_unless_the_playbook_says_otherwise() -> None:
    env = Env()
    blocked = run(env.engine.plan_ad_hoc("block_customer", "acme", {}, "alice"))
    assert blocked.guard.approval == "two_person"
    with pytest.raises(GuardRefused, match="two_person needs an approval by someone else"):
        run(env.engine.approve(blocked.id, "alice", apply=True))
    run(env.engine.approve(blocked.id, "bob", apply=True))
    assert env.driver.policy.customer("acme").blocked
    base = ("id: p\ntitle: P\nclass: runaway_cost\nseverity: high\n"
            "match: {any: [{alertname: A}]}\nsteps:\n  - id: block\n    title: Block\n"
            "    action: block_customer\n    with: {customer: acme}\n")
    assert load_text(base).steps[0].guard.approval == "two_person"
    said = load_text(base + "    guard: {approval: oncall}\n")
    assert said.steps[0].guard.approval == "oncall"


def test_blast_radius_counts_customers_as_it_counts_routes() -> None:
    from actions.catalog import get_action
    from actions.policy import ServingPolicy
    from bot.core.guards import check_blast_radius
    from bot.playbook.schema import Guard

    plan = get_action("block_customer").plan({"customer": ["a", "b", "c"]}, ServingPolicy(),
                                             target="t")
    refused = check_blast_radius(Guard(), plan, ServingPolicy())
    assert refused is not None and "would change 3 customers (customer/a, customer/b, " \
                                   "customer/c); this step may change at most 1" in str(refused)
    one = get_action("block_customer").plan({"customer": "a"}, ServingPolicy(), target="t")
    assert check_blast_radius(Guard(), one, ServingPolicy()) is None


def test_a_route_alert_grouped_after_a_customers_does_not_hide_the_customer_step() -> None:
    # Both alerts are runaway cost on chat: one incident. The customer's step stays on
    # offer, and renders from the alert that names the customer.
    env = Env()
    first = run(env.engine.handle_alerts([budget_alert(customer="runaway")]))[0]
    env.clock.advance(minutes=1)
    second = run(env.engine.handle_alerts([alert(starts_at=env.clock.now)]))[0]
    assert second.incident_id == first.incident_id
    assert env.engine.latest_alert(first.incident_id).labels.get("customer") is None
    run_ = run(env.engine.plan_step(first.incident_id, "runaway-cost", "cap-customer",
                                    actor="alice"))
    assert run_.plan.routes == ["customer/runaway"]
    default, _ = run(env.engine.run_step(first.incident_id, None, None, "bob"))
    assert default.id == run_.id  # the first step for the incident is the customer's


def test_a_hostile_customer_label_is_shown_as_typed_and_never_planned() -> None:
    # The label reaches Slack as text (no ping, no template run), and no plan, no file
    # entry and no PromQL is made from it.
    from bot.adapters.slack.blocks import render, render_text

    env = Env()
    hostile = "<!channel> {{ 7*7 }}"
    item = run(env.engine.handle_alerts([budget_alert(customer=hostile)]))[0]
    [msg] = env.published
    blocks = str(render(msg))
    assert "<!channel>" not in blocks and "&lt;!channel&gt; {{ 7*7 }}" in blocks
    assert "49" not in blocks and "<!channel>" not in render_text(msg)
    # The cap-customer step is offered (the alert names a customer) but refuses the id.
    cap = next(s for s in msg.sections if (s.title or "").startswith("Step 1"))
    assert "cannot be planned for this alert" in cap.text and "not a caller id" in cap.text
    primary = [b.value for b in msg.buttons if b.action == "run_step" and b.style == "primary"]
    assert primary == [f"{item.incident_id}:runaway-cost:cap-output"]
    with pytest.raises(InputError, match="not a caller id"):
        run(env.engine.plan_step(item.incident_id, "runaway-cost", "cap-customer",
                                 actor="alice"))
    assert env.store.runs(incident_id=item.incident_id) == []
    assert env.driver.writes == []


def test_slack_cannot_point_slo_at_a_metrics_page() -> None:
    from incident_env import PLAYBOOKS

    from bot.adapters.commands import Context, execute

    env = Env()
    ctx = Context(actor="U0ALICE", playbooks_dir=PLAYBOOKS, open_engine=lambda: env.engine,
                  local=False)
    res = run(execute("slo render --source auto --metrics http://169.254.169.254/metrics", ctx))
    assert not res.ok and "use the CLI for it" in res.text
