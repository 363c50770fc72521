"""The run state machine: one enum, one transition table.

::

    planned ─────────────┬──> applying ──> applied ──> verified
    awaiting_approval ─> approved ─┘    \\      │  \\        │
         │        \\       │    \\        └> failed  └──> reverting <┘
         └──> expired <───┘     └> denied               │     │
    refused, dry_run (final at birth)        reverted <─┘     └> applied | verified
                                                              (the revert failed)

``applying`` and ``reverting`` are claims: the process that moved a run there is
the only one that may move it on, until it dies (``bot.base.claims``); then
whoever comes next reconciles the run against its target. Every store update of
a run's state is a compare-and-set on the state the caller read, so two processes
can never both make the same move.
"""

from __future__ import annotations

from enum import StrEnum

from bot.base.errors import InputError


class RunState(StrEnum):
    PLANNED = "planned"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REFUSED = "refused"
    DRY_RUN = "dry_run"
    APPLYING = "applying"
    APPLIED = "applied"
    VERIFIED = "verified"
    REVERTING = "reverting"
    REVERTED = "reverted"
    FAILED = "failed"
    DENIED = "denied"
    EXPIRED = "expired"


S = RunState

# The states a run may be created in.
INITIAL: frozenset[RunState] = frozenset({S.PLANNED, S.AWAITING_APPROVAL, S.REFUSED, S.DRY_RUN})

# from -> the states it may move to. Anything not listed is refused.
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    S.PLANNED: frozenset({S.APPLYING, S.DENIED, S.EXPIRED}),
    S.AWAITING_APPROVAL: frozenset({S.APPROVED, S.DENIED, S.EXPIRED}),
    # approved -> approved: the second approval of a two-person step.
    S.APPROVED: frozenset({S.APPROVED, S.APPLYING, S.DENIED, S.EXPIRED}),
    S.EXPIRED: frozenset({S.APPROVED, S.APPLYING, S.DENIED}),
    S.APPLYING: frozenset({S.APPLIED, S.FAILED}),
    S.APPLIED: frozenset({S.VERIFIED, S.REVERTING}),
    S.VERIFIED: frozenset({S.REVERTING}),
    # A revert that failed leaves the change in force: back where it was.
    S.REVERTING: frozenset({S.REVERTED, S.APPLIED, S.VERIFIED}),
    S.REFUSED: frozenset(),
    S.DRY_RUN: frozenset(),
    S.REVERTED: frozenset(),
    S.FAILED: frozenset(),
    S.DENIED: frozenset(),
}

# A process holds these while it talks to the target; see bot.base.claims.
CLAIMED: frozenset[RunState] = frozenset({S.APPLYING, S.REVERTING})
# The change is in force.
ACTIVE: frozenset[RunState] = frozenset({S.APPLIED, S.VERIFIED})
# Not yet applied, and still may be.
APPLICABLE: frozenset[RunState] = frozenset({S.PLANNED, S.APPROVED, S.AWAITING_APPROVAL,
                                             S.EXPIRED})
FINAL: frozenset[RunState] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class IllegalTransition(InputError):
    """A move the state machine does not allow; names both states."""


def parse_state(value: str) -> RunState:
    try:
        return RunState(value)
    except ValueError:
        raise InputError(f"unknown run state '{value}'",
                         hint=f"one of: {', '.join(s.value for s in RunState)}") from None


def check_move(run_id: str, current: str, wanted: str) -> RunState:
    """The wanted state, or IllegalTransition naming both states and what is possible."""
    frm, to = parse_state(current), parse_state(wanted)
    allowed = TRANSITIONS[frm]
    if to in allowed:
        return to
    nexts = ", ".join(sorted(s.value for s in allowed)) or "nothing (it is final)"
    raise IllegalTransition(f"{run_id} is {frm.value}; it cannot become {to.value}",
                            hint=f"from {frm.value} a run can become: {nexts}")
