"""The run state machine, pair by pair, through the store's compare-and-set."""

from __future__ import annotations

import itertools

import pytest

from actions.base import FieldChange, Plan
from bot.base.errors import Conflict, InputError
from bot.base.run_states import (
    ACTIVE,
    APPLICABLE,
    CLAIMED,
    FINAL,
    INITIAL,
    TRANSITIONS,
    IllegalTransition,
    RunState,
    check_move,
)
from bot.playbook.schema import Guard
from bot.store import Store

EXPECTED = {
    ("planned", "applying"), ("planned", "denied"), ("planned", "expired"),
    ("awaiting_approval", "approved"), ("awaiting_approval", "denied"),
    ("awaiting_approval", "expired"),
    ("approved", "approved"), ("approved", "applying"), ("approved", "denied"),
    ("approved", "expired"),
    ("expired", "approved"), ("expired", "applying"), ("expired", "denied"),
    ("applying", "applied"), ("applying", "failed"),
    ("applied", "verified"), ("applied", "reverting"),
    ("verified", "reverting"),
    ("reverting", "reverted"), ("reverting", "applied"), ("reverting", "verified"),
}


def test_the_table_is_the_documented_one():
    table = {(a.value, b.value) for a, nexts in TRANSITIONS.items() for b in nexts}
    assert table == EXPECTED
    assert set(TRANSITIONS) == set(RunState)
    assert {RunState(s) for s in ("refused", "dry_run", "reverted", "failed", "denied")} == FINAL
    assert {RunState.APPLYING, RunState.REVERTING} == CLAIMED
    assert not (ACTIVE & APPLICABLE) and not (CLAIMED & (ACTIVE | APPLICABLE))


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(RunState, RunState)))
def test_every_pair_of_states(frm: RunState, to: RunState):
    if (frm.value, to.value) in EXPECTED:
        assert check_move("RUN-1", frm, to) is to
        return
    with pytest.raises(IllegalTransition) as err:
        check_move("RUN-1", frm, to)
    # Both states are named, and what is possible instead.
    assert f"RUN-1 is {frm.value}; it cannot become {to.value}" in str(err.value)
    assert err.value.hint and f"from {frm.value} a run can become" in err.value.hint


def _store_with_run(store: Store, state: str) -> tuple[Store, str]:
    """A run put in ``state`` the way the runner gets there (legal moves only)."""
    plan = Plan(action="cap_output_length", target="default", params={},
                changes=[FieldChange(route="chat", field="max_output_tokens", before=512, after=256)])
    start = state if state in {s.value for s in INITIAL} else (
        "awaiting_approval" if state in ("approved", "expired") else "planned")
    run = store.create_run(incident_id=None, playbook_id=None, step_id=None, plan=plan, args={},
                           guard=Guard(), verify_query=None, state=start, dry_run=False,
                           requested_by="alice", event_text="planned")
    path = {"approved": ["approved"], "expired": ["expired"], "applying": ["applying"],
            "applied": ["applying", "applied"], "failed": ["applying", "failed"],
            "verified": ["applying", "applied", "verified"],
            "reverting": ["applying", "applied", "reverting"],
            "reverted": ["applying", "applied", "reverting", "reverted"],
            "denied": ["denied"]}.get(state, [])
    for step in path:
        store.transition(run.id, step, step, actor="alice")
    assert store.run(run.id).state == state
    return store, run.id


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(RunState, RunState)))
def test_the_store_refuses_every_move_the_table_does_not_list(store_at, frm: RunState,
                                                             to: RunState):
    store, run_id = _store_with_run(store_at(), frm.value)
    events = len(store.run_events(run_id))
    if (frm.value, to.value) in EXPECTED:
        assert store.transition(run_id, to.value, "moved", actor="bob").state == to
        assert len(store.run_events(run_id)) == events + 1
        return
    with pytest.raises(IllegalTransition, match=f"is {frm.value}; it cannot become {to.value}"):
        store.transition(run_id, to.value, "moved", actor="bob")
    assert store.run(run_id).state == frm and len(store.run_events(run_id)) == events


def test_a_compare_and_set_loser_changes_nothing(store_at):
    store, run_id = _store_with_run(store_at(), "planned")
    store.transition(run_id, "applying", "mine", actor="alice", expect=APPLICABLE)
    with pytest.raises(Conflict, match="is applying now"):
        store.transition(run_id, "applying", "theirs", actor="bob", expect=APPLICABLE)
    run = store.run(run_id)
    assert run.state == "applying" and run.claimed_by
    assert [e.text for e in store.run_events(run_id)] == ["planned", "mine"]


def test_claims_record_their_holder_and_a_revert_remembers_where_it_came_from(store_at):
    store, run_id = _store_with_run(store_at(), "verified")
    run = store.transition(run_id, "reverting", "x", actor="a", owner="h:1:2")
    assert (run.claimed_by, run.prior_state) == ("h:1:2", "verified")
    assert not store.take_over(run_id, dead_owner="h:9:9", owner="me:1:1")  # not its holder
    assert store.take_over(run_id, dead_owner="h:1:2", owner="me:1:1")
    assert not store.take_over(run_id, dead_owner="h:1:2", owner="other:1:1")  # only once
    # The old holder (it only hung) cannot move the run any more: its claim is gone.
    with pytest.raises(Conflict, match="by me:1:1 now, not by this process .h:1:2.: its claim"):
        store.transition(run_id, "reverted", "late", actor="a", owner="h:1:2")
    back = store.transition(run_id, "verified", "revert failed", actor="a", owner="me:1:1")
    assert back.claimed_by is None and back.claimed_at is None


def test_unknown_states_are_named(store_at):
    store, run_id = _store_with_run(store_at(), "planned")
    with pytest.raises(InputError, match="unknown run state 'done'"):
        store.transition(run_id, "done", "x", actor="a")
    with pytest.raises(IllegalTransition, match="cannot start as applied"):
        store.create_run(incident_id=None, playbook_id=None, step_id=None,
                         plan=store.run(run_id).plan, args={}, guard=Guard(), verify_query=None,
                         state="applied", dry_run=False, requested_by="a", event_text="x")
