"""Incident lifecycle: allowed and refused transitions, the automatic rules, the verbs."""

from __future__ import annotations

import asyncio

import pytest
from incident_env import PLAYBOOKS, T0, Env, alert

from bot.adapters.commands import Context, execute
from bot.base.errors import InputError, NotFound
from bot.core.lifecycle import LifecyclePolicy, check_transition
from bot.store import Incident


def run(coro):
    return asyncio.run(coro)


def opened(env: Env, **kw) -> str:
    return run(env.engine.handle_alerts([alert(**kw)]))[0].incident_id


def fake_incident(status: str) -> Incident:
    return Incident("INC-9", "k", "t", "runaway_cost", "critical", status, False, None,
                    T0, T0, None)


@pytest.mark.parametrize(
    "current, wanted",
    [("open", "acknowledged"), ("open", "mitigating"), ("open", "resolved"),
     ("acknowledged", "mitigating"), ("mitigating", "mitigated"), ("mitigated", "resolved"),
     ("open", "cancelled"), ("mitigating", "cancelled"), ("mitigated", "cancelled")],
)
def test_allowed_transitions(current, wanted):
    check_transition(fake_incident(current), wanted)  # no error


@pytest.mark.parametrize(
    "current, wanted",
    [("acknowledged", "open"), ("mitigated", "mitigating"), ("mitigating", "acknowledged"),
     ("acknowledged", "acknowledged"), ("resolved", "acknowledged"), ("resolved", "resolved"),
     ("cancelled", "resolved"), ("cancelled", "cancelled"), ("resolved", "cancelled")],
)
def test_refused_transitions_name_both_states(current, wanted):
    with pytest.raises(InputError) as err:
        check_transition(fake_incident(current), wanted)
    assert current in err.value.message and wanted in err.value.message
    assert "INC-9" in err.value.message and err.value.hint


def test_ack_then_resolve_is_on_the_timeline_with_actor_and_reason():
    env = Env()
    inc = opened(env)
    env.notifier.clear()
    env.clock.advance(minutes=3)
    assert run(env.engine.acknowledge(inc, "alice")).status == "acknowledged"
    env.clock.advance(minutes=5)
    assert run(env.engine.resolve(inc, "bob", "false alarm after deploy")).status == "resolved"
    status = [e for e in env.store.timeline(inc) if e.kind == "status"]
    assert [(e.data["from"], e.data["to"], e.actor) for e in status] == [
        ("open", "acknowledged", "alice"), ("acknowledged", "resolved", "bob")]
    assert status[1].at == env.clock.now and status[1].data["reason"] == "false alarm after deploy"
    assert env.store.incident(inc).resolved_at == env.clock.now
    updates = env.published
    assert [m.kind for m in updates] == ["update", "update"]
    assert "open -> acknowledged" in updates[0].text and "alice" in updates[0].text
    assert "false alarm after deploy" in updates[1].text


def test_refused_transition_changes_nothing_and_publishes_nothing():
    env = Env()
    inc = opened(env)
    run(env.engine.cancel(inc, "alice", "test alert"))
    before = env.kinds(inc)
    env.notifier.clear()
    for attempt in (env.engine.acknowledge(inc, "bob"), env.engine.resolve(inc, "bob"),
                    env.engine.cancel(inc, "bob", "again")):
        with pytest.raises(InputError, match="cancelled"):
            run(attempt)
    assert env.kinds(inc) == before and env.published == []
    assert env.store.incident(inc).status == "cancelled"


def test_unknown_incident_is_not_found():
    env = Env()
    with pytest.raises(NotFound, match="INC-42"):
        run(env.engine.acknowledge("INC-42", "alice"))


def apply_cap(env: Env, inc: str):
    r = run(env.engine.plan_step(inc, "runaway-cost", "cap-output", actor="alice"))
    run(env.runner.approve(r.id, "bob"))
    r = run(env.runner.apply(r.id, actor="alice"))
    run(env.engine.after_run(r))
    return r


def test_recovery_after_mitigation_goes_mitigated_then_resolved():
    env = Env()
    inc = opened(env)
    apply_cap(env, inc)
    assert env.store.incident(inc).status == "mitigating"
    env.notifier.clear()
    run(env.engine.handle_alerts([alert(status="resolved")]))
    assert env.store.incident(inc).status == "resolved"
    tl = env.store.timeline(inc)
    recovered = [e for e in tl if e.kind == "recovered"]
    assert len(recovered) == 1 and recovered[0].data["runs"] == ["RUN-1"]
    moves = [(e.data["from"], e.data["to"]) for e in tl if e.kind == "status"]
    assert moves[-2:] == [("mitigating", "mitigated"), ("mitigated", "resolved")]
    texts = [m.title for m in env.published]
    assert texts == [f"{inc} mitigated", f"{inc} resolved"]
    # The cap is still in place: the resolved update says so and offers the revert.
    assert any(b.action == "revert" and b.value == "RUN-1" for b in env.published[-1].buttons)


def test_recovery_without_auto_resolve_stays_mitigated():
    env = Env(policy=LifecyclePolicy(auto_resolve_on_recovery=False))
    inc = opened(env)
    apply_cap(env, inc)
    run(env.engine.handle_alerts([alert(status="resolved")]))
    assert env.store.incident(inc).status == "mitigated"
    assert "recovered" in env.kinds(inc)


def test_alerts_resolving_without_mitigation_resolve_the_incident():
    env = Env()
    inc = opened(env)
    run(env.engine.handle_alerts([alert(status="resolved")]))
    assert env.store.incident(inc).status == "resolved"
    ev = [e for e in env.store.timeline(inc) if e.kind == "recovered"][0]
    assert ev.data == {"mitigated": False, "runs": []}


def test_no_auto_resolve_without_mitigation_keeps_it_open():
    env = Env(policy=LifecyclePolicy(auto_resolve_without_mitigation=False))
    inc = opened(env)
    run(env.engine.handle_alerts([alert(status="resolved")]))
    assert env.store.incident(inc).status == "open" and "recovered" in env.kinds(inc)


def test_one_alert_of_two_resolving_changes_nothing():
    env = Env()
    inc = opened(env)
    run(env.engine.handle_alerts([alert("LLMOutputTokensSurge", fingerprint="fp-2")]))
    env.notifier.clear()
    run(env.engine.handle_alerts([alert(status="resolved")]))
    assert env.store.incident(inc).status == "open" and "recovered" not in env.kinds(inc)
    assert env.published == []


def test_ack_after_the_bot_acted_keeps_the_status_but_records_who():
    env = Env()
    inc = opened(env)
    apply_cap(env, inc)
    assert run(env.engine.acknowledge(inc, "carol")).status == "mitigating"
    ev = env.store.timeline(inc)[-1]
    assert ev.kind == "acknowledged" and ev.actor == "carol"


def test_cancel_from_mitigating():
    env = Env()
    inc = opened(env)
    apply_cap(env, inc)
    assert run(env.engine.cancel(inc, "alice", "drill by mistake")).status == "cancelled"


def test_note_and_assign():
    env = Env()
    inc = opened(env)
    env.notifier.clear()
    run(env.engine.note(inc, "  prompt v42 shipped at 09:58  ", "alice"))
    run(env.engine.assign(inc, "bob", "alice"))
    assert env.store.incident(inc).commander == "bob"
    tl = env.store.timeline(inc)
    assert (tl[-2].kind, tl[-2].text, tl[-2].actor) == ("note", "prompt v42 shipped at 09:58",
                                                        "alice")
    assert tl[-1].kind == "assigned" and tl[-1].data["commander"] == "bob"
    assert [m.kind for m in env.published] == ["timeline", "timeline"]


def test_bad_note_and_assign_are_refused():
    env = Env()
    inc = opened(env)
    before = env.kinds(inc)
    with pytest.raises(InputError, match="needs some text"):
        run(env.engine.note(inc, "   ", "alice"))
    with pytest.raises(InputError, match="limit is 4000"):
        run(env.engine.note(inc, "x" * 4001, "alice"))
    with pytest.raises(InputError, match="commander"):
        run(env.engine.assign(inc, " ", "alice"))
    run(env.engine.resolve(inc, "alice"))
    with pytest.raises(InputError, match="resolved"):
        run(env.engine.assign(inc, "bob", "alice"))
    assert env.kinds(inc) == [*before, "status"]
    assert env.store.incident(inc).commander is None


def context(env: Env, actor: str = "alice") -> Context:
    return Context(actor=actor, playbooks_dir=PLAYBOOKS, open_engine=lambda: env.engine)


def test_lifecycle_verbs_share_the_command_grammar():
    env = Env()
    inc = opened(env)
    res = run(execute(["ack", inc], context(env)))
    assert res.ok and res.data["status"] == "acknowledged" and "alice" in res.text
    res = run(execute(f"note {inc} rolled back prompt v42", context(env)))
    assert res.ok and env.store.timeline(inc)[-1].text == "rolled back prompt v42"
    res = run(execute(["assign", inc, "bob", "--as", "carol"], context(env)))
    assert res.ok and res.data["commander"] == "bob"
    assert env.store.timeline(inc)[-1].actor == "carol"
    res = run(execute(["resolve", inc, "--reason", "fixed upstream"], context(env)))
    assert res.ok and res.data["status"] == "resolved"
    res = run(execute(["cancel", inc], context(env)))
    assert res.exit_code == 2 and "resolved" in res.text and "cancelled" in res.text
    res = run(execute(["ack", "INC-77"], context(env)))
    assert res.exit_code == 2 and "INC-77" in res.text
    res = run(execute(["note", inc], context(env)))
    assert res.exit_code == 2 and "TEXT" in res.text


def test_alert_first_seen_resolved_opens_and_closes_without_a_suggestion():
    env = Env()
    item = run(env.engine.handle_alerts([alert(status="resolved")]))[0]
    assert item.created and item.outcome == "opened"
    assert env.store.incident(item.incident_id).status == "resolved"
    assert [m.kind for m in env.published] == ["update"]
    assert env.store.runs(incident_id=item.incident_id) == []


def test_a_running_drill_marks_its_alert_as_drill_whatever_path_it_takes():
    env = Env()
    with env.engine.drilling("LLMCostBurnRateHigh", "chat"):
        # e.g. Alertmanager's webhook delivering the drill's alert before the drill does
        [item] = run(env.engine.handle_alerts([alert()]))
        [other] = run(env.engine.handle_alerts([alert(route="summarize", fingerprint="fp-2")]))
    assert env.store.incident(item.incident_id).is_drill
    assert not env.store.incident(other.incident_id).is_drill  # another route is real
    assert all(m.is_drill for m in env.published if m.incident_id == item.incident_id)
    [after] = run(env.engine.handle_alerts([alert(fingerprint="fp-3", starts_at=T0.replace(
        hour=T0.hour + 1))]))
    assert not env.store.incident(after.incident_id).is_drill  # the drill is over
