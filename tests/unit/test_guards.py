"""The guards as pure functions: each refusal names the guard and the concrete reason."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from actions.base import Sample
from actions.catalog import get_action
from actions.policy import ServingPolicy
from bot.core.guards import (
    RunnerSettings,
    TargetLocks,
    approval_state,
    check_active_cap,
    check_approval,
    check_blast_radius,
    check_cooldown,
    check_dry_run,
    check_lock,
    check_max_runs,
    check_pause,
    check_stale_plan,
    evaluate_verification,
    fmt_span,
    fmt_time,
)
from bot.playbook.schema import Guard, Verify
from bot.store import Approval, Flag, Mitigation

NOW = datetime(2026, 11, 29, 10, 32, tzinfo=UTC)
POLICY = ServingPolicy.model_validate(
    {
        "routes": {
            "chat": {"max_output_tokens": 1024, "group": "chat"},
            "chat-small": {"group": "chat"},
            "solo": {},
            "backup": {},
            "off": {"enabled": False},
        }
    }
)


def plan(action: str, **args):
    return get_action(action).plan(args, POLICY, target="default")


def guard(**kw) -> Guard:
    return Guard.model_validate(kw)


def mitigation(run_id: str, ago: timedelta, routes=("chat",), fields=None, target="default"):
    return Mitigation(
        run_id=run_id, target=target, routes=list(routes),
        fields=fields or [f"{r}.max_output_tokens" for r in routes], applied_at=NOW - ago,
        ttl_due_at=None, verify_due_at=None, verify_state=None, reverted_at=None,
        revert_reason=None,
    )


def approval(user: str, decision: str = "approve", expires_in=timedelta(minutes=10)):
    return Approval(id=1, run_id="RUN-1", user=user, decision=decision, at=NOW,
                    expires_at=NOW + expires_in)


def test_wording_helpers():
    assert fmt_span(timedelta(seconds=42)) == "42s"
    assert fmt_span(timedelta(minutes=4, seconds=59)) == "4m"
    assert fmt_span(timedelta(hours=2, minutes=5)) == "2h05m"
    assert fmt_span(timedelta(hours=3)) == "3h"
    assert fmt_span(timedelta(days=3, hours=1)) == "3d"
    assert fmt_time(NOW + timedelta(minutes=10), NOW) == "10:42 UTC"
    assert fmt_time(NOW + timedelta(days=1), NOW) == "2026-11-30 10:32 UTC"


def test_pause_holds_only_automatic_actions():
    flag = Flag("paused", "provider outage", "alice", NOW)
    refusal = check_pause(flag, automatic=True)
    assert refusal is not None and refusal.guard == "pause"
    assert "paused by alice: provider outage" in refusal.reason
    assert check_pause(flag, automatic=False) is None
    assert check_pause(None, automatic=True) is None


def test_approval_none_oncall_and_two_person():
    assert check_approval(guard(approval="none", auto=True), run_id="RUN-1",
                          requested_by="alice", approvals=[], now=NOW) is None
    missing = check_approval(guard(approval="oncall"), run_id="RUN-1", requested_by="alice",
                             approvals=[], now=NOW)
    assert missing.guard == "approval" and "needs an on-call approval" in missing.reason
    # oncall: any on-call approval counts, the requester's own included.
    assert check_approval(guard(approval="oncall"), run_id="RUN-1", requested_by="alice",
                          approvals=[approval("alice")], now=NOW) is None
    # two_person: the requester's own approval never counts.
    own = check_approval(guard(approval="two_person"), run_id="RUN-1", requested_by="alice",
                         approvals=[approval("alice")], now=NOW)
    assert own is not None and "someone other than its requester alice" in own.reason
    assert check_approval(guard(approval="two_person"), run_id="RUN-1", requested_by="alice",
                          approvals=[approval("alice"), approval("bob")], now=NOW) is None


def test_expired_and_denied_approvals():
    old = approval("bob", expires_in=timedelta(minutes=-2))
    state, which = approval_state(guard(), requested_by="alice", approvals=[old], now=NOW)
    assert state == "expired" and which == [old]
    refusal = check_approval(guard(), run_id="RUN-1", requested_by="alice", approvals=[old],
                             now=NOW)
    assert refusal.reason == "the approval of RUN-1 by bob expired at 10:30 UTC"
    denied = check_approval(guard(), run_id="RUN-1", requested_by="alice",
                            approvals=[approval("bob"), approval("carol", "deny")], now=NOW)
    assert denied.reason == "RUN-1 was denied by carol"


def test_cooldown_names_the_last_run_and_next_time():
    g = guard(cooldown="10m")
    history = [mitigation("RUN-1", timedelta(minutes=30)), mitigation("RUN-3", timedelta(minutes=4))]
    refusal = check_cooldown(g, action="cap_output_length", routes=["chat"], history=history,
                             now=NOW)
    assert str(refusal).startswith(
        "refused by guard 'cooldown': cap_output_length on chat ran 4m ago (RUN-3); "
        "cooldown is 10m, next allowed at 10:38 UTC"
    )
    # Another route, or the run itself, does not count.
    assert check_cooldown(g, action="cap_output_length", routes=["solo"], history=history,
                          now=NOW) is None
    assert check_cooldown(g, action="cap_output_length", routes=["chat"], history=history[1:],
                          now=NOW, run_id="RUN-3") is None
    assert check_cooldown(guard(), action="x", routes=["chat"], history=history, now=NOW) is None


def test_max_runs_counts_inside_the_window():
    g = guard(max_runs={"count": 2, "window": "1h"})
    history = [
        mitigation("RUN-1", timedelta(minutes=90)),
        mitigation("RUN-2", timedelta(minutes=50)),
        mitigation("RUN-4", timedelta(minutes=5)),
    ]
    refusal = check_max_runs(g, action="cap_output_length", routes=["chat"], history=history,
                             now=NOW)
    assert refusal.guard == "max_runs"
    assert refusal.reason == (
        "cap_output_length on chat ran 2 times in the last 1h (RUN-2, RUN-4); "
        "the limit is 2, next allowed at 10:42 UTC"
    )
    assert check_max_runs(g, action="cap_output_length", routes=["chat"], history=history[:2],
                          now=NOW) is None


def test_blast_radius_max_routes():
    p = plan("cap_output_length", route=["chat", "solo"], max_output_tokens=256)
    refusal = check_blast_radius(guard(), p, POLICY)
    assert refusal.guard == "blast_radius"
    assert "would change 2 routes (chat, solo); this step may change at most 1" in refusal.reason
    assert check_blast_radius(guard(blast_radius={"max_routes": 2}), p, POLICY) is None


def test_blast_radius_keep_serving_by_group_and_fallback():
    both = plan("disable_route", route=["chat", "chat-small"])
    wide = guard(blast_radius={"max_routes": 2})
    refusal = check_blast_radius(wide, both, POLICY)
    assert "leave route group 'chat' with no enabled route" in refusal.reason
    assert "chat, chat-small" in refusal.reason
    assert check_blast_radius(guard(), plan("disable_route", route="chat"), POLICY) is None
    # An ungrouped route is its own group: disabling it is fine only with a live fallback.
    assert check_blast_radius(guard(), plan("disable_route", route="solo"), POLICY) is not None
    with_fb = POLICY.with_values({"solo": {"fallback": "backup"}})
    p = get_action("disable_route").plan({"route": "solo"}, with_fb, target="default")
    assert check_blast_radius(guard(), p, with_fb) is None
    dead_fb = POLICY.with_values({"solo": {"fallback": "off"}})
    p = get_action("disable_route").plan({"route": "solo"}, dead_fb, target="default")
    assert "no enabled fallback for solo" in check_blast_radius(guard(), p, dead_fb).reason
    off = guard(blast_radius={"keep_serving": False})
    assert check_blast_radius(off, plan("disable_route", route="solo"), POLICY) is None


def test_active_mitigation_cap():
    active = [mitigation("RUN-1", timedelta(0)), mitigation("RUN-2", timedelta(0), ("solo",))]
    refusal = check_active_cap(active, RunnerSettings(max_active_mitigations=2))
    assert refusal.guard == "blast_radius"
    assert refusal.reason.startswith("2 mitigations are already active (RUN-1, RUN-2)")
    assert check_active_cap(active, RunnerSettings(max_active_mitigations=3)) is None
    assert check_active_cap(active, RunnerSettings(max_active_mitigations=2),
                            run_id="RUN-2") is None


def test_lock_refuses_a_field_held_by_another_active_mitigation():
    p = plan("cap_output_length", route="chat", max_output_tokens=256)
    held = [mitigation("RUN-2", timedelta(0))]
    refusal = check_lock(p, held)
    assert refusal.guard == "lock"
    assert refusal.reason == (
        "routes.chat.max_output_tokens on target default is held by RUN-2 until reverted"
    )
    assert check_lock(p, [mitigation("RUN-2", timedelta(0), target="other")]) is None
    other_field = [mitigation("RUN-2", timedelta(0), fields=["chat.max_concurrency"])]
    assert check_lock(p, other_field) is None
    assert check_lock(p, held, run_id="RUN-2") is None


def test_stale_plan_and_dry_run():
    p = plan("cap_output_length", route="chat", max_output_tokens=256)
    assert check_stale_plan(p, POLICY) is None
    moved = POLICY.with_values({"chat": {"max_output_tokens": 300}})
    refusal = check_stale_plan(p, moved)
    assert refusal.guard == "stale_plan" and "is now 300, the plan expected 1024" in refusal.reason
    assert check_stale_plan(p, POLICY.with_values({"chat": {"max_output_tokens": 256}})) is None
    assert check_dry_run("RUN-5", True).guard == "dry_run"
    assert check_dry_run("RUN-5", False) is None


def test_target_locks_serialise_the_same_route_only():
    locks = TargetLocks()
    order: list[str] = []

    async def worker(name: str, routes: list[str], started: asyncio.Event | None = None):
        async with locks.hold("default", routes):
            order.append(f"{name}+")
            if started:
                started.set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            order.append(f"{name}-")

    async def main():
        started = asyncio.Event()
        first = asyncio.create_task(worker("a", ["chat", "solo"], started))
        await started.wait()
        assert locks.locked("default", "chat")
        await asyncio.gather(first, worker("b", ["solo"]), worker("c", ["backup"]))

    asyncio.run(main())
    # b waits for a (shared route solo); c (another route) runs inside a's hold.
    assert order.index("b+") > order.index("a-")
    assert order.index("c+") < order.index("a-")


def test_verification_every_sample_must_pass_and_no_data_is_not_a_pass():
    v = Verify(query="q", expect="< 0.05", within="5m")
    ok, text = evaluate_verification([Sample(value=0.01), Sample(value=0.04)], v)
    assert ok and text == "all 2 samples < 0.05 (highest 0.04)"
    ok, text = evaluate_verification(
        [Sample(labels={"route": "a"}, value=0.01), Sample(labels={"route": "b"}, value=0.2)], v
    )
    assert not ok and text == "1 of 2 samples fail '< 0.05' (e.g. {route=b} = 0.2)"
    ok, text = evaluate_verification([], v)
    assert not ok and "no data" in text and "not known yet" in text
    ge = Verify(query="q", expect=">= 1", within="5m")
    assert evaluate_verification([Sample(value=1.0)], ge)[0]
    assert not evaluate_verification([Sample(value=0.5)], ge)[0]
