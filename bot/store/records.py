"""The records the store hands out: small frozen dataclasses, never raw rows.

Also the time helpers: timestamps are stored as fixed-width UTC ISO text so that
text order is time order, and read back as aware datetimes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

from actions.base import Plan
from bot.base.run_states import RunState
from bot.playbook.schema import Guard

CLOSED_STATUSES = ("resolved", "cancelled")

def utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def to_text(dt: datetime) -> str: ...
@overload
def to_text(dt: None) -> None: ...
@overload
def to_text(dt: datetime | None) -> str | None: ...


def to_text(dt: datetime | None) -> str | None:
    """Fixed-width UTC ISO text (naive input is taken as UTC), so text order = time order."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def from_text(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def required_time(value: str) -> datetime:
    """A timestamp column that is NOT NULL."""
    return datetime.fromisoformat(value)




@dataclass(frozen=True)
class Incident:
    id: str
    group_key: str
    title: str
    klass: str
    severity: str
    status: str
    is_drill: bool
    commander: str | None
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None

    @property
    def is_open(self) -> bool:
        return self.status not in CLOSED_STATUSES


@dataclass(frozen=True)
class StoredAlert:
    id: int
    incident_id: str
    source: str
    fingerprint: str
    starts_at: datetime
    ends_at: datetime | None
    status: str
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str | None
    received_at: datetime


@dataclass(frozen=True)
class Event:
    id: int
    incident_id: str | None
    run_id: str | None
    at: datetime
    kind: str
    actor: str
    text: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Run:
    id: str
    incident_id: str | None
    playbook_id: str | None
    step_id: str | None
    action: str
    target: str
    args: dict[str, Any]
    guard: Guard
    verify_query: str | None
    plan: Plan
    diff: str
    state: RunState
    dry_run: bool
    requested_by: str
    created_at: datetime
    updated_at: datetime
    error: str | None
    # Set while the pause holds this automatic run; it is retried after resume.
    held_at: datetime | None = None
    # "drill" for a drill incident's runs: its guards never count production's, and
    # production's never count a drill's.
    scope: str = "production"
    # The process holding the run while it is applying or reverting (bot.base.claims),
    # and the state a revert came from (where a failed revert goes back to).
    claimed_by: str | None = None
    claimed_at: datetime | None = None
    prior_state: str | None = None

    @property
    def routes(self) -> list[str]:
        return self.plan.routes

    @property
    def fields(self) -> list[str]:
        """``route.field`` for every change the plan makes (what a lock covers)."""
        return [f"{c.route}.{c.field}" for c in self.plan.changes]


@dataclass(frozen=True)
class Approval:
    id: int
    run_id: str
    user: str
    decision: str
    at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Mitigation:
    run_id: str
    target: str
    routes: list[str]
    fields: list[str]  # "route.field" entries this change holds while active
    applied_at: datetime
    ttl_due_at: datetime | None
    verify_due_at: datetime | None
    verify_state: str | None  # None (no verification) | pending | passed | failed
    reverted_at: datetime | None
    revert_reason: str | None

    @property
    def active(self) -> bool:
        return self.reverted_at is None


@dataclass(frozen=True)
class Flag:
    name: str
    value: str | None
    set_by: str
    set_at: datetime


def _dt(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: from_text(row[n]) for n in names}


def incident_from_row(r: dict[str, Any]) -> Incident:
    return Incident(
        id=r["id"], group_key=r["group_key"], title=r["title"], klass=r["class"],
        severity=r["severity"], status=r["status"], is_drill=bool(r["is_drill"]),
        commander=r["commander"], **_dt(r, "created_at", "updated_at", "resolved_at"),
    )


def alert_from_row(r: dict[str, Any]) -> StoredAlert:
    return StoredAlert(
        id=r["id"], incident_id=r["incident_id"], source=r["source"],
        fingerprint=r["fingerprint"], status=r["status"], alertname=r["alertname"],
        labels=json.loads(r["labels"]), annotations=json.loads(r["annotations"]),
        generator_url=r["generator_url"], **_dt(r, "starts_at", "ends_at", "received_at"),
    )


def event_from_row(r: dict[str, Any]) -> Event:
    return Event(
        id=r["id"], incident_id=r["incident_id"], run_id=r["run_id"], at=required_time(r["at"]),
        kind=r["kind"], actor=r["actor"], text=r["text"], data=json.loads(r["data"]),
    )


def run_from_row(r: dict[str, Any]) -> Run:
    return Run(
        id=r["id"], incident_id=r["incident_id"], playbook_id=r["playbook_id"],
        step_id=r["step_id"], action=r["action"], target=r["target"], args=json.loads(r["args"]),
        guard=Guard.model_validate_json(r["guard"]), verify_query=r["verify_query"],
        plan=Plan.model_validate_json(r["plan"]), diff=r["diff"], state=RunState(r["state"]),
        dry_run=bool(r["dry_run"]), requested_by=r["requested_by"], error=r["error"],
        scope=r.get("scope") or "production", claimed_by=r.get("claimed_by"),
        prior_state=r.get("prior_state"),
        **_dt(r, "created_at", "updated_at", "held_at", "claimed_at"),
    )


def mitigation_from_row(r: dict[str, Any]) -> Mitigation:
    return Mitigation(
        run_id=r["run_id"], target=r["target"], routes=json.loads(r["routes"]),
        fields=json.loads(r["fields"]), verify_state=r["verify_state"],
        revert_reason=r["revert_reason"],
        **_dt(r, "applied_at", "ttl_due_at", "verify_due_at", "reverted_at"),
    )


def approval_from_row(r: dict[str, Any]) -> Approval:
    return Approval(
        id=r["id"], run_id=r["run_id"], user=r["user"], decision=r["decision"],
        **_dt(r, "at", "expires_at"),
    )
