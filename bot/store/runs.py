"""Runs, approvals and mitigations: the store's half that the runner writes.

A mixin of ``bot.store.store.Store`` (which provides ``db``, ``transaction``,
``_rows``, ``_next_id`` and ``now``), kept apart so each file reads as one topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from actions.base import Plan
from bot.base.claims import this_process
from bot.base.errors import Conflict, NotFound
from bot.base.run_states import (
    CLAIMED,
    INITIAL,
    IllegalTransition,
    RunState,
    check_move,
    parse_state,
)
from bot.playbook.schema import Guard
from bot.store.backend import Db
from bot.store.records import (
    Approval,
    Mitigation,
    Run,
    approval_from_row,
    mitigation_from_row,
    run_from_row,
    to_text,
)


class RunRecords:
    # Provided by ``bot.store.store.Store``; declared here so the type checker knows them.
    if TYPE_CHECKING:
        db: Db

        def now(self) -> datetime: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]: ...
        def _next_id(self, table: str, prefix: str) -> tuple[str, int]: ...
        def add_event(self, incident_id: str | None, kind: str, text: str, *, actor: str,
                      run_id: str | None = None, data: dict[str, Any] | None = None) -> Any: ...

    # --- runs ----------------------------------------------------------------------

    def create_run(
        self,
        *,
        incident_id: str | None,
        playbook_id: str | None,
        step_id: str | None,
        plan: Plan,
        args: dict[str, Any],
        guard: Guard,
        verify_query: str | None,
        state: str,
        dry_run: bool,
        requested_by: str,
        error: str | None = None,
        event_text: str,
        event_data: dict[str, Any] | None = None,
        scope: str = "production",
    ) -> Run:
        """Persist a planned run (plan and diff included) and its first timeline event."""
        if parse_state(state) not in INITIAL:
            raise IllegalTransition(f"a run cannot start as {state}",
                                    hint=f"one of: {', '.join(sorted(INITIAL))}")
        now = to_text(self.now())
        with self.transaction():
            run_id, seq = self._next_id("runs", "RUN")
            self.db.insert("runs",
                {
                    "id": run_id, "seq": seq, "incident_id": incident_id,
                    "playbook_id": playbook_id, "step_id": step_id, "action": plan.action,
                    "target": plan.target, "args": json.dumps(args, default=str),
                    "guard": guard.model_dump_json(), "verify_query": verify_query,
                    "plan": plan.model_dump_json(), "diff": plan.diff(), "state": state,
                    "dry_run": int(dry_run), "requested_by": requested_by,
                    "created_at": now, "updated_at": now, "error": error, "held_at": None,
                    "scope": scope,
                }
            )
            self.add_event(incident_id, state, event_text, actor=requested_by, run_id=run_id,
                           data={"state": state, **(event_data or {})})
        return self.run(run_id)

    def run(self, run_id: str) -> Run:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", [run_id])
        if not rows:
            raise NotFound(f"no run {run_id}", hint="list runs with `runs`")
        return run_from_row(rows[0])

    def runs(self, incident_id: str | None = None, state: str | None = None) -> list[Run]:
        clauses, params = [], []
        if incident_id is not None:
            clauses.append("incident_id = ?")
            params.append(incident_id)
        if state is not None:
            parse_state(state)
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._rows(f"SELECT * FROM runs {where} ORDER BY seq", params)
        return [run_from_row(r) for r in rows]

    def transition(
        self,
        run_id: str,
        state: str,
        text: str,
        *,
        actor: str,
        kind: str | None = None,
        error: str | None = None,
        data: dict[str, Any] | None = None,
        expect: Iterable[str] | None = None,
        owner: str | None = None,
    ) -> Run:
        """Move a run to ``state`` and add its timeline event, in one transaction.

        The move must be in the state machine's table (``IllegalTransition`` names
        both states), and it is a compare-and-set on the state read inside the
        transaction: ``expect`` narrows which states the caller believes the run is
        in (``Conflict`` when another process moved it first). Entering ``applying``
        or ``reverting`` records ``owner`` as the claim holder; leaving them clears it,
        and only the holder may leave them: a process whose claim was taken over (it
        hung past its heartbeat, and the leader settled the run) cannot move it after.
        """
        with self.transaction():
            before = self.run(run_id)
            if expect is not None and before.state not in set(expect):
                raise Conflict(
                    f"{run_id} is {before.state} now (another request moved it first)",
                    hint=f"see `show {before.incident_id or run_id}` for what happened")
            me = owner or this_process()
            if before.state in CLAIMED and before.claimed_by and before.claimed_by != me:
                raise Conflict(
                    f"{run_id} is {before.state} by {before.claimed_by} now, not by this "
                    f"process ({me}): its claim was taken over",
                    hint=f"see `show {before.incident_id or run_id}` for how it was settled")
            to = check_move(run_id, before.state, state)
            now = to_text(self.now())
            claim: list[Any] = [None, None, before.prior_state]
            if to in CLAIMED:
                claim = [owner or this_process(), now,
                         before.state if to == RunState.REVERTING else None]
            cur = self.db.execute(
                "UPDATE runs SET state = ?, error = ?, updated_at = ?, held_at = NULL, "
                "claimed_by = ?, claimed_at = ?, prior_state = ? WHERE id = ? AND state = ?",
                [to.value, error, now, *claim, run_id, before.state.value],
            )
            if cur.rowcount != 1:
                raise Conflict(f"{run_id} changed under this request (it was {before.state})",
                               hint="run the command again to see where it is now")
            self.add_event(before.incident_id, kind or to.value, text, actor=actor,
                           run_id=run_id,
                           data={"from": before.state.value, "state": to.value, **(data or {})})
        return self.run(run_id)

    def claimed_runs(self, *, scope: str | None = None) -> list[Run]:
        """Runs some process is applying or reverting right now (or was, if it died)."""
        sql = "SELECT * FROM runs WHERE state IN ('applying', 'reverting')"
        params: list[Any] = []
        if scope is not None:
            sql += " AND scope = ?"
            params.append(scope)
        return [run_from_row(r) for r in self._rows(sql + " ORDER BY seq", params)]

    def take_over(self, run_id: str, *, dead_owner: str | None, owner: str) -> bool:
        """Compare-and-set the claim of a run whose holder died: True for the one
        process that gets it (it then finishes or undoes the work exactly once)."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE runs SET claimed_by = ?, claimed_at = ? WHERE id = ? "
                "AND state IN ('applying', 'reverting') AND claimed_by IS ?",
                [owner, to_text(self.now()), run_id, dead_owner])
            return cur.rowcount == 1

    def mark_held(self, run_id: str, held: bool) -> None:
        with self.transaction():
            self.db.execute("UPDATE runs SET held_at = ? WHERE id = ?",
                            [to_text(self.now()) if held else None, run_id])

    # --- approvals -----------------------------------------------------------------

    def add_approval(self, run_id: str, user: str, decision: str, *, expires_at: datetime) -> None:
        with self.transaction():
            self.db.insert("approvals",
                {"run_id": run_id, "user": user, "decision": decision,
                 "at": to_text(self.now()), "expires_at": to_text(expires_at)}
            )

    def approvals(self, run_id: str) -> list[Approval]:
        rows = self._rows("SELECT * FROM approvals WHERE run_id = ? ORDER BY id", [run_id])
        return [approval_from_row(r) for r in rows]

    # --- mitigations ---------------------------------------------------------------

    def record_mitigation(
        self,
        run: Run,
        *,
        applied_at: datetime,
        ttl_due_at: datetime | None,
        verify_due_at: datetime | None,
    ) -> Mitigation:
        with self.transaction():
            self.db.upsert("mitigations", {
                    "run_id": run.id, "target": run.target, "routes": json.dumps(run.routes),
                    "fields": json.dumps([f"{c.route}.{c.field}" for c in run.plan.changes]),
                    "applied_at": to_text(applied_at), "ttl_due_at": to_text(ttl_due_at),
                    "verify_due_at": to_text(verify_due_at),
                    "verify_state": "pending" if verify_due_at else None,
                    "reverted_at": None, "revert_reason": None,
                }, pk="run_id")
        return self.mitigation(run.id)  # type: ignore[return-value]

    def mitigation(self, run_id: str) -> Mitigation | None:
        rows = self._rows("SELECT * FROM mitigations WHERE run_id = ?", [run_id])
        return mitigation_from_row(rows[0]) if rows else None

    def active_mitigations(
        self, target: str | None = None, *, scope: str | None = None
    ) -> list[Mitigation]:
        """Mitigations in force; ``scope`` ("production" or "drill") keeps one side only."""
        sql = "SELECT m.* FROM mitigations m JOIN runs r ON r.id = m.run_id " \
              "WHERE m.reverted_at IS NULL"
        params: list[Any] = []
        if target is not None:
            sql += " AND m.target = ?"
            params.append(target)
        if scope is not None:
            sql += " AND r.scope = ?"
            params.append(scope)
        rows = self._rows(sql + " ORDER BY m.applied_at", params)
        return [mitigation_from_row(r) for r in rows]

    def applied_runs(
        self, action: str, target: str, since: datetime, *, scope: str = "production"
    ) -> list[Mitigation]:
        """Every change of ``action`` on ``target`` applied since ``since``, reverted or not,
        in one scope: what cooldown and max_runs count."""
        rows = self._rows(
            "SELECT m.* FROM mitigations m JOIN runs r ON r.id = m.run_id "
            "WHERE r.action = ? AND m.target = ? AND m.applied_at >= ? AND r.scope = ? "
            "ORDER BY m.applied_at",
            [action, target, to_text(since), scope],
        )
        return [mitigation_from_row(r) for r in rows]

    def set_verify_state(self, run_id: str, state: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE mitigations SET verify_state = ? WHERE run_id = ?",
                            [state, run_id])

    def mark_reverted(self, run_id: str, reason: str) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE mitigations SET reverted_at = ?, revert_reason = ? WHERE run_id = ?",
                [to_text(self.now()), reason, run_id],
            )

