"""The runner's lifecycle against an in-memory driver, recorded at every step."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from fakes import FakeMetrics, InMemoryDriver, dead_owner
from freezegun import freeze_time

from actions.base import Sample
from actions.policy import ServingPolicy
from bot.base.errors import ActionFailed, GuardRefused, InputError
from bot.core.runner import Runner, RunnerSettings
from bot.intake.alert import Alert
from bot.playbook.schema import Guard
from bot.store import Store

T0 = "2026-11-29 10:00:00"
Q = 'sum(rate(litellm_output_tokens_metric_total{requested_model="chat"}[5m]))'
POLICY = ServingPolicy.model_validate(
    {
        "routes": {
            "chat": {"max_output_tokens": 1024, "max_concurrency": 16, "group": "chat"},
            "chat-small": {"max_output_tokens": 512, "group": "chat"},
        }
    }
)


def run(coro):
    return asyncio.run(coro)


class Env:
    def __init__(self, *, settings: RunnerSettings | None = None, metrics: bool = True, **drv):
        self.store = Store(None)
        self.driver = InMemoryDriver(POLICY, name="default", **drv)
        self.metrics = FakeMetrics() if metrics else None
        self.runner = Runner(self.store, {"default": self.driver}, self.metrics,
                             settings=settings or RunnerSettings())
        a = Alert(source="alertmanager", fingerprint="f1", status="firing",
                  labels={"alertname": "TokenBurn"}, starts_at=datetime(2026, 11, 29, tzinfo=UTC))
        self.incident, *_ = self.store.record_alert(a, group_key="k", title="Token burn",
                                                   klass="runaway_cost", severity="high")

    def cap(self, tokens: int = 256, *, route="chat", incident=True, user="alice", dry=False,
            **guard):
        return run(self.runner.plan(
            incident_id=self.incident if incident else None, playbook_id="runaway-cost",
            step_id="cap", action="cap_output_length", target="default",
            args={"route": route, "max_output_tokens": tokens},
            guard=Guard.model_validate(guard), verify_query=Q if "verify" in guard else None,
            requested_by=user, dry_run=dry,
        ))

    def apply(self, run_id: str, actor="alice", **kw):
        return run(self.runner.apply(run_id, actor=actor, **kw))

    def approved(self, tokens: int = 256, **guard):
        r = self.cap(tokens, **guard)
        run(self.runner.approve(r.id, "bob"))
        return self.apply(r.id)

    def tokens(self, route: str = "chat"):
        return self.driver.policy.route(route).max_output_tokens

    def kinds(self, run_id: str):
        return [e.kind for e in self.store.run_events(run_id)]


def test_happy_path_plan_approve_apply_verify_revert():
    env = Env()
    with freeze_time(T0) as clock:
        r = env.cap(ttl="1h", verify={"query": Q, "expect": "< 1000", "within": "10m"})
        assert r.state == "awaiting_approval" and r.id == "RUN-1"
        assert "+ routes.chat.max_output_tokens: 256" in env.store.run(r.id).diff
        assert env.driver.writes == []  # persisted before anything is applied
        assert run(env.runner.approve(r.id, "bob")).state == "approved"
        applied = env.apply(r.id)
        assert applied.state == "applied" and env.tokens() == 256
        mit = env.store.mitigation(r.id)
        assert mit.ttl_due_at == datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
        assert mit.verify_due_at == datetime(2026, 11, 29, 10, 10, tzinfo=UTC)
        assert env.runner.timers() == [(r.id, "verify", mit.verify_due_at),
                                       (r.id, "ttl", mit.ttl_due_at)]
        clock.tick(timedelta(minutes=2))
        env.metrics.set(Q, 420.0)
        assert run(env.runner.check_verification(r.id)).state == "verified"
        done = run(env.runner.revert(r.id, actor="alice", reason="recovered"))
        assert done.state == "reverted" and env.tokens() == 1024
    assert env.kinds(r.id) == ["awaiting_approval", "approved", "applying", "applied",
                               "verified", "reverting", "reverted"]
    assert env.store.active_mitigations() == [] and env.runner.timers() == []
    assert all(e.incident_id == env.incident for e in env.store.run_events(r.id))


def test_ad_hoc_run_has_no_incident_and_is_still_listed():
    env = Env()
    r = env.cap(incident=False, approval="none")
    assert r.state == "planned" and r.incident_id is None
    env.apply(r.id)
    assert [x.id for x in env.store.runs()] == [r.id]
    assert [e.kind for e in env.store.timeline(None)] == ["planned", "applying", "applied"]


def test_apply_twice_writes_once_even_concurrently():
    env = Env()
    r = env.cap(approval="none")

    async def both():
        return await asyncio.gather(env.runner.apply(r.id, actor="a"),
                                    env.runner.apply(r.id, actor="b"))

    assert [x.state for x in run(both())] == ["applied", "applied"]
    assert len(env.driver.writes) == 1
    assert env.apply(r.id).state == "applied" and len(env.driver.writes) == 1


def test_dry_run_records_every_guard_and_never_applies():
    env = Env()
    r = env.cap(route=["chat", "chat-small"], approval="two_person", dry=True)
    assert r.state == "dry_run" and r.dry_run
    event = env.store.run_events(r.id)[0]
    assert [x["guard"] for x in event.data["refusals"]] == ["blast_radius"]
    assert "would need two_person approval" in event.text
    with pytest.raises(GuardRefused) as exc:
        env.apply(r.id)
    assert exc.value.guard == "dry_run" and env.driver.writes == []
    assert env.kinds(r.id) == ["dry_run", "guard_refused"]


def test_bad_args_are_an_input_error_and_noted_on_the_incident():
    env = Env()
    with pytest.raises(InputError, match="max_output_tokens"):
        env.cap(tokens=-1)
    assert env.store.runs() == []
    assert env.store.timeline(env.incident)[-1].kind == "plan_failed"


def test_apply_without_approval_is_refused_and_state_kept():
    env = Env()
    r = env.cap()
    with pytest.raises(GuardRefused, match="needs an on-call approval"):
        env.apply(r.id)
    assert env.store.run(r.id).state == "awaiting_approval" and env.driver.writes == []
    assert env.kinds(r.id)[-1] == "guard_refused"


def test_two_person_refuses_self_approval():
    env = Env()
    r = env.cap(approval="two_person", user="alice")
    with pytest.raises(GuardRefused, match="alice requested RUN-1 and cannot approve it"):
        run(env.runner.approve(r.id, "alice"))
    assert env.store.approvals(r.id) == [] and env.store.run(r.id).state == "awaiting_approval"
    run(env.runner.approve(r.id, "bob"))
    assert env.apply(r.id).state == "applied"


def test_expired_approval_blocks_apply_until_approved_again():
    env = Env(settings=RunnerSettings(approval_ttl=timedelta(minutes=15)))
    with freeze_time(T0) as clock:
        r = env.cap()
        run(env.runner.approve(r.id, "bob"))
        clock.tick(timedelta(minutes=16))
        with pytest.raises(GuardRefused, match="approval of RUN-1 by bob expired at 10:15 UTC"):
            env.apply(r.id)
        assert env.store.run(r.id).state == "expired" and env.driver.writes == []
        run(env.runner.approve(r.id, "carol"))
        assert env.apply(r.id).state == "applied"


def test_deny_blocks_the_run():
    env = Env()
    r = env.cap()
    assert run(env.runner.deny(r.id, "bob", "too aggressive")).state == "denied"
    with pytest.raises(InputError, match="RUN-1 is denied"):
        env.apply(r.id)
    assert env.store.run_events(r.id)[-1].text == "denied by bob: too aggressive"
    assert env.driver.writes == []


def test_cooldown_refuses_at_plan_and_allows_after():
    env = Env()
    with freeze_time(T0) as clock:
        first = env.approved(cooldown="10m")
        run(env.runner.revert(first.id, actor="alice", reason="done"))
        clock.tick(timedelta(minutes=4))
        r = env.cap(cooldown="10m")
        assert r.state == "refused"
        assert r.error.startswith(
            "refused by guard 'cooldown': cap_output_length on chat ran 4m ago (RUN-1); "
            "cooldown is 10m, next allowed at 10:10 UTC"
        )
        with pytest.raises(InputError, match="RUN-2 is refused"):
            env.apply(r.id)
        clock.tick(timedelta(minutes=7))
        assert env.cap(cooldown="10m").state == "awaiting_approval"


def test_cooldown_is_rechecked_at_apply():
    env = Env()
    with freeze_time(T0):
        waiting = env.cap(cooldown="10m")  # planned while nothing had run yet
        run(env.runner.approve(waiting.id, "bob"))
        first = env.approved(cooldown="10m")
        run(env.runner.revert(first.id, actor="alice", reason="done"))
        with pytest.raises(GuardRefused, match="cooldown"):
            env.apply(waiting.id)
        assert env.store.run(waiting.id).state == "approved"


def test_max_runs_in_window():
    env = Env()
    with freeze_time(T0) as clock:
        for _ in range(2):
            r = env.approved(max_runs={"count": 2, "window": "1h"})
            run(env.runner.revert(r.id, actor="alice", reason="x"))
            clock.tick(timedelta(minutes=10))
        third = env.cap(max_runs={"count": 2, "window": "1h"})
        assert third.state == "refused" and "max_runs" in third.error
        assert "ran 2 times in the last 1h (RUN-1, RUN-2)" in third.error
        clock.tick(timedelta(minutes=45))
        assert env.cap(max_runs={"count": 2, "window": "1h"}).state == "awaiting_approval"


def test_blast_radius_and_active_cap_refusals():
    env = Env(settings=RunnerSettings(max_active_mitigations=1))
    wide = env.cap(route=["chat", "chat-small"])
    assert wide.state == "refused" and "blast_radius" in wide.error
    env.approved()
    other = env.cap(route="chat-small")
    assert other.state == "refused"
    assert "1 mitigations are already active (RUN-2); the cap is 1" in other.error


def test_keep_serving_refuses_disabling_a_whole_group():
    env = Env()
    r = run(env.runner.plan(
        incident_id=env.incident, playbook_id=None, step_id=None, action="disable_route",
        target="default", args={"route": ["chat", "chat-small"]},
        guard=Guard.model_validate({"blast_radius": {"max_routes": 2}}), verify_query=None,
        requested_by="alice"))
    assert r.state == "refused" and "leave route group 'chat' with no enabled route" in r.error


def test_lock_refuses_stacking_on_an_active_change():
    env = Env()
    first = env.approved(512)
    second = env.cap(256)
    assert second.state == "refused"
    assert "routes.chat.max_output_tokens on target default is held by RUN-1" in second.error
    run(env.runner.revert(first.id, actor="alice", reason="x"))
    assert env.cap(256).state == "awaiting_approval"


def test_stale_plan_is_refused_at_apply():
    env = Env()
    r = env.cap(256, approval="none")
    env.driver.policy = env.driver.policy.with_values({"chat": {"max_output_tokens": 300}})
    with pytest.raises(GuardRefused, match="stale_plan"):
        env.apply(r.id)
    assert env.tokens() == 300 and env.store.run(r.id).state == "planned"


def test_pause_holds_automatic_actions_and_ttl_but_not_humans():
    env = Env()
    with freeze_time(T0) as clock:
        manual = env.approved(ttl="10m")
        run(env.runner.pause("alice", "provider outage"))
        auto = env.cap(200, route="chat-small", approval="none", auto=True)
        run_auto = run(env.runner.plan(
            incident_id=env.incident, playbook_id="p", step_id="auto", action="lower_concurrency",
            target="default", args={"route": "chat", "max_concurrency": 4},
            guard=Guard(approval="none", auto=True), verify_query=None, requested_by="bot",
            automatic=True))
        assert auto.state == "planned"  # not automatic: a human's plan
        assert run_auto.state == "planned" and run_auto.held_at is not None
        with pytest.raises(GuardRefused, match="paused by alice: provider outage"):
            env.apply(run_auto.id, automatic=True)
        assert env.driver.policy.route("chat").max_concurrency == 16
        # A human's explicit apply goes ahead, and the timeline says the bot is paused.
        env.apply(auto.id)
        assert "the bot is paused" in env.store.run_events(auto.id)[-2].text
        clock.tick(timedelta(minutes=11))
        assert run(env.runner.run_due()) == []  # the TTL revert is held
        assert env.tokens() == 256
        assert env.kinds(manual.id).count("held") == 1
        assert run(env.runner.run_due()) == [] and env.kinds(manual.id).count("held") == 1
        done = run(env.runner.resume("bob"))
        assert {r.id: r.state for r in done} == {manual.id: "reverted", run_auto.id: "applied"}
        assert env.tokens() == 1024 and env.driver.policy.route("chat").max_concurrency == 4
    assert [e.kind for e in env.store.timeline(None)] == ["paused", "resumed"]


def test_ttl_revert_via_run_due():
    env = Env()
    with freeze_time(T0) as clock:
        r = env.approved(ttl="30m")
        clock.tick(timedelta(minutes=29))
        assert run(env.runner.run_due()) == [] and env.tokens() == 256
        clock.tick(timedelta(minutes=1))
        (done,) = run(env.runner.run_due())
        assert done.state == "reverted" and env.tokens() == 1024
        assert env.store.mitigation(r.id).revert_reason == "TTL of 30m expired"
        assert run(env.runner.run_due()) == []


VERIFY = {"query": Q, "expect": "< 1000", "within": "10m"}


def test_verification_fail_before_deadline_is_pending_then_reverts():
    env = Env()
    with freeze_time(T0) as clock:
        r = env.approved(verify=VERIFY)
        env.metrics.set(Q, [Sample(labels={"requested_model": "chat"}, value=5000.0)])
        assert run(env.runner.check_verification(r.id)).state == "applied"
        assert env.store.mitigation(r.id).verify_state == "pending"
        clock.tick(timedelta(minutes=10))
        (done,) = run(env.runner.run_due())
        assert done.state == "reverted" and env.tokens() == 1024
        assert env.store.mitigation(r.id).verify_state == "failed"
        assert "1 of 1 samples fail '< 1000'" in env.store.run_events(r.id)[-1].text


def test_verification_fail_escalates_and_keeps_the_change():
    env = Env()
    with freeze_time(T0) as clock:
        r = env.approved(verify={**VERIFY, "on_fail": "escalate"})
        env.metrics.set(Q, 5000.0)
        clock.tick(timedelta(minutes=11))
        assert run(env.runner.check_verification(r.id)).state == "applied"
        assert env.kinds(r.id)[-1] == "escalation" and env.tokens() == 256
        assert env.store.mitigation(r.id).verify_state == "failed"
        assert env.runner.timers() == []


def test_empty_result_and_missing_metrics_only_fail_at_the_deadline():
    env = Env()
    with freeze_time(T0) as clock:
        r = env.approved(verify={**VERIFY, "on_fail": "escalate"})
        assert run(env.runner.check_verification(r.id)).state == "applied"  # no data yet
        clock.tick(timedelta(minutes=10))
        run(env.runner.check_verification(r.id))
        assert "no data" in env.store.run_events(r.id)[-1].text
        assert "not known yet" in env.store.run_events(r.id)[-1].text
    blind = Env(metrics=False)
    with freeze_time(T0) as clock:
        r = blind.approved(verify=VERIFY)
        assert run(blind.runner.check_verification(r.id)).state == "applied"
        clock.tick(timedelta(minutes=10))
        assert run(blind.runner.check_verification(r.id)).state == "reverted"
        assert "no metrics source" in blind.store.run_events(r.id)[-1].text


def test_query_error_counts_only_at_the_deadline():
    env = Env()
    with freeze_time(T0) as clock:
        r = env.approved(verify=VERIFY)
        env.metrics.fail = True
        assert run(env.runner.check_verification(r.id)).state == "applied"
        clock.tick(timedelta(minutes=10))
        assert run(env.runner.check_verification(r.id)).state == "reverted"
        assert "query failed" in env.store.run_events(r.id)[-1].text


def test_partial_apply_puts_back_what_was_applied_and_fails():
    env = Env(fail_on_route="chat-small")
    r = env.cap(200, route=["chat", "chat-small"], blast_radius={"max_routes": 2})
    run(env.runner.approve(r.id, "bob"))
    with pytest.raises(ActionFailed, match="put back routes.chat.max_output_tokens"):
        env.apply(r.id)
    failed = env.store.run(r.id)
    assert failed.state == "failed" and env.tokens() == 1024
    text = env.store.run_events(r.id)[-1].text
    assert "applied before the failure: chat" in text and "put back" in text
    assert env.store.active_mitigations() == []


def test_driver_error_fails_without_claiming_success():
    env = Env(fail_writes=True)
    r = env.cap(approval="none")
    with pytest.raises(ActionFailed, match="injected write failure"):
        env.apply(r.id)
    assert env.store.run(r.id).state == "failed" and env.tokens() == 1024
    assert env.store.mitigation(r.id) is None


def test_revert_is_idempotent_and_reports_drift():
    env = Env()
    r = env.approved(256)
    env.driver.policy = env.driver.policy.with_values({"chat": {"max_output_tokens": 100}})
    first = run(env.runner.revert(r.id, actor="alice", reason="done"))
    writes = len(env.driver.writes)
    second = run(env.runner.revert(r.id, actor="alice", reason="again"))
    assert first.state == second.state == "reverted" and len(env.driver.writes) == writes
    assert env.tokens() == 100  # someone else's value is left alone...
    assert "left as is" in env.store.run_events(r.id)[-1].text  # ...and said so
    with pytest.raises(InputError, match="nothing of it is applied"):
        run(env.runner.revert(env.cap(50).id, actor="alice", reason="x"))


def test_failed_revert_keeps_the_mitigation_active():
    env = Env()
    r = env.approved()
    env.driver.fail_writes = True
    with pytest.raises(ActionFailed, match="revert of RUN-1 failed"):
        run(env.runner.revert(r.id, actor="alice", reason="x"))
    assert env.store.run(r.id).state == "applied" and env.store.mitigation(r.id).active


def test_reconcile_after_a_crash_in_applying():
    env = Env()
    with freeze_time(T0):
        done = env.cap(256, approval="none", ttl="1h")
        lost = env.cap(300, route="chat-small", approval="none")
        live = env.cap(128, approval="none")
        for r in (done, lost):
            env.store.transition(r.id, "applying", "applying", actor="alice", owner=dead_owner())
        env.store.transition(live.id, "applying", "applying", actor="bob")  # this process
        # The crash happened after the first write reached the target, before the second.
        env.driver.policy = env.driver.policy.with_values({"chat": {"max_output_tokens": 256}})
        result = {r.id: r.state for r in run(env.runner.reconcile())}
    assert result == {done.id: "applied", lost.id: "failed"}
    # A claim whose holder is alive is never second-guessed.
    assert env.store.run(live.id).state == "applying"
    assert env.store.mitigation(done.id).ttl_due_at == datetime(2026, 11, 29, 11, tzinfo=UTC)
    assert env.kinds(done.id)[-1] == env.kinds(lost.id)[-1] == "reconciled"
    assert "does not hold the plan" in env.store.run(lost.id).error
    assert run(env.runner.reconcile()) == []


class _IgnoringDriver(InMemoryDriver):
    """Accepts writes and silently drops them, like a gateway that lost its reload."""

    async def write(self, updates, *, reason, action):
        self.writes.append((updates, reason, action))


def test_a_write_that_does_not_take_effect_is_a_failure():
    env = Env()
    env.driver = _IgnoringDriver(POLICY, name="default")
    env.runner.drivers["default"] = env.driver
    r = env.cap(approval="none")
    with pytest.raises(ActionFailed, match="did not take effect: routes.chat.max_output_tokens"):
        env.apply(r.id)
    assert env.store.run(r.id).state == "failed" and env.store.mitigation(r.id) is None


def test_reconcile_after_a_crash_in_applying_a_customer_limit():
    # kill -9 between claiming and writing a per-customer cap: the same settling as a
    # route's, by the customer's field.
    env = Env()

    def cap_customer(customer: str):
        return run(env.runner.plan(
            incident_id=env.incident, playbook_id="runaway-cost", step_id="cap-customer",
            action="cap_customer", target="default",
            args={"customer": customer, "max_output_tokens": 64},
            guard=Guard.model_validate({"approval": "none"}), verify_query=None,
            requested_by="alice", dry_run=False))

    done, lost = cap_customer("acme"), cap_customer("beta")
    for r in (done, lost):
        env.store.transition(r.id, "applying", "applying", actor="alice", owner=dead_owner())
    env.driver.policy = env.driver.policy.with_values(
        {"customer/acme": {"max_output_tokens": 64}})  # acme's write landed, beta's not
    result = {r.id: r.state for r in run(env.runner.reconcile())}
    assert result == {done.id: "applied", lost.id: "failed"}
    assert "customers.beta.max_output_tokens" in env.store.run(lost.id).error
    assert env.driver.policy.customer("beta").max_output_tokens is None
