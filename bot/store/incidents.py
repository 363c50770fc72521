"""Alerts and incidents: the store's half that intake writes (dedup, grouping, flap
damping) and incident moves read and change.

A mixin of ``bot.store.store.Store`` (which provides ``db``, ``transaction``,
``_rows``, ``_next_id``, ``add_event`` and ``now``), kept apart so each file reads as
one topic.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from bot.base.errors import InputError, NotFound
from bot.intake.alert import Alert
from bot.store.backend import Db
from bot.store.migrations import INCIDENT_STATUSES
from bot.store.records import (
    CLOSED_STATUSES,
    Incident,
    StoredAlert,
    alert_from_row,
    incident_from_row,
    to_text,
)


class Recorded(NamedTuple):
    """What ``record_alert`` did: the incident, and whether it opened or reopened it."""

    incident_id: str
    created: bool
    reopened: bool = False


def group_key_for(alert: Alert, klass: str, *, drill_id: str | None = None) -> str:
    """Default grouping key: ``class|route|model``, and ``|drill:ID`` for a drill's.

    The route is the ``route`` label, else LiteLLM's ``requested_model``; the
    model is the ``model`` label, else vLLM's ``model_name``; a missing one is
    ``*``. So a cost alert and a token-rate alert on the same route and model
    land in one incident, while the same class on another route opens its own.
    A drill's alerts group only within that drill: two drills of one class
    minutes apart are two incidents (never one reopened as "flapping"), and
    production never joins either (the drill flag keeps them apart as well).
    """
    labels = alert.labels
    route = labels.get("route") or labels.get("requested_model") or "*"
    model = labels.get("model") or labels.get("model_name") or "*"
    drill = f"|drill:{drill_id}" if drill_id else ""
    return f"{klass}|{route}|{model}{drill}"


class IncidentRecords:
    # Provided by ``bot.store.store.Store``; declared here so the type checker knows them.
    if TYPE_CHECKING:
        db: Db

        def now(self) -> datetime: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]: ...
        def _next_id(self, table: str, prefix: str) -> tuple[str, int]: ...
        def add_event(self, incident_id: str | None, kind: str, text: str, *, actor: str,
                      run_id: str | None = None, data: dict[str, Any] | None = None) -> Any: ...
        _lock: Any

    # --- alerts and incidents --------------------------------------------------------

    def record_alert(
        self,
        alert: Alert,
        *,
        group_key: str,
        title: str,
        klass: str,
        severity: str,
        is_drill: bool = False,
        reopen_within: timedelta | None = None,
    ) -> Recorded:
        """Store one alert; returns ``(incident_id, created, reopened)``.

        Dedup on ``(fingerprint, starts_at)``: repeats of a known firing change
        nothing, a resolved copy updates status and ends_at. A new firing joins
        the newest open incident with the same group key (and the same drill
        flag: a drill never absorbs a real alert), else opens an incident. An alert
        first seen already resolved (the bot was down while it fired) is still
        recorded, so the history is complete.

        Flap damping: a new firing whose group's latest incident was *resolved*
        less than ``reopen_within`` ago reopens that incident (status back to open,
        one ``reopened`` event) instead of opening another, so a flapping alert is
        one incident with one live message, not a hundred.
        """
        now = to_text(self.now())
        starts = to_text(alert.starts_at)
        with self.transaction():
            known = self._rows(
                "SELECT * FROM alerts WHERE fingerprint = ? AND starts_at = ?",
                [alert.fingerprint, starts],
            )
            if known:
                row = known[0]
                if alert.status == "resolved" and row["status"] != "resolved":
                    self.db.execute(
                        "UPDATE alerts SET status = 'resolved', ends_at = ? WHERE id = ?",
                        [to_text(alert.ends_at) or now, row["id"]],
                    )
                    self.add_event(
                        row["incident_id"], "alert_resolved",
                        f"alert {alert.alertname or alert.fingerprint} resolved",
                        actor=alert.source, data={"fingerprint": alert.fingerprint},
                    )
                return Recorded(row["incident_id"], False)
            open_rows = self._rows(
                f"SELECT id FROM incidents WHERE group_key = ? AND is_drill = ? "
                f"AND status NOT IN {CLOSED_STATUSES!r} ORDER BY seq DESC LIMIT 1",
                [group_key, int(is_drill)],
            )
            if not open_rows and alert.status == "firing" and reopen_within:
                reopened = self._reopen_flapping(group_key, is_drill, reopen_within, alert)
                if reopened is not None:
                    self._insert_alert(reopened, alert, now, starts)
                    return Recorded(reopened, False, True)
            created = not open_rows
            if created:
                incident_id, seq = self._next_id("incidents", "INC")
                self.db.insert(
                    "incidents", {
                        "id": incident_id, "seq": seq, "group_key": group_key, "title": title,
                        "class": klass, "severity": severity, "status": "open",
                        "is_drill": int(is_drill), "commander": None, "created_at": now,
                        "updated_at": now, "resolved_at": None,
                    }
                )
                drill = " (drill)" if is_drill else ""
                self.add_event(incident_id, "opened", f"incident opened{drill}: {title}",
                               actor=alert.source, data={"group_key": group_key})
            else:
                incident_id = open_rows[0]["id"]
            self._insert_alert(incident_id, alert, now, starts)
        return Recorded(incident_id, created)

    def _reopen_flapping(
        self, group_key: str, is_drill: bool, within: timedelta, alert: Alert
    ) -> str | None:
        since = to_text(self.now() - within)
        rows = self._rows(
            "SELECT id, resolved_at FROM incidents WHERE group_key = ? AND is_drill = ? "
            "AND status = 'resolved' AND resolved_at >= ? ORDER BY seq DESC LIMIT 1",
            [group_key, int(is_drill), since],
        )
        if not rows:
            return None
        incident_id = rows[0]["id"]
        self.db.execute(
            "UPDATE incidents SET status = 'open', resolved_at = NULL, updated_at = ? "
            "WHERE id = ?", [to_text(self.now()), incident_id],
        )
        why = (f"{alert.alertname or 'its alert'} fired again within "
               f"{int(within.total_seconds())}s of resolving (flapping)")
        self.add_event(incident_id, "status", f"status resolved -> open: {why}",
                       actor=alert.source, data={"from": "resolved", "to": "open",
                                                 "reason": why, "reopened": True})
        return incident_id

    def _insert_alert(self, incident_id: str, alert: Alert, now: str, starts: str) -> None:
        """One alert row and its timeline line, inside the caller's transaction."""
        self.db.insert(
            "alerts", {
                "incident_id": incident_id, "source": alert.source,
                "fingerprint": alert.fingerprint, "starts_at": starts,
                "ends_at": to_text(alert.ends_at), "status": alert.status,
                "alertname": alert.alertname, "labels": json.dumps(alert.labels),
                "annotations": json.dumps(alert.annotations),
                "generator_url": alert.generator_url,
                "raw": json.dumps(alert.raw, default=str), "received_at": now,
            }
        )
        self.add_event(incident_id, "alert",
                       f"alert {alert.alertname or alert.fingerprint} {alert.status}",
                       actor=alert.source, data={"fingerprint": alert.fingerprint,
                                                 "labels": alert.labels})

    def incident(self, incident_id: str) -> Incident:
        rows = self._rows("SELECT * FROM incidents WHERE id = ?", [incident_id])
        if not rows:
            raise NotFound(f"no incident {incident_id}", hint="list incidents with `incidents`")
        return incident_from_row(rows[0])

    def incidents(self, status: str | None = None, limit: int = 50) -> list[Incident]:
        """Newest first, optionally only those with one ``status``."""
        if status is not None and status not in INCIDENT_STATUSES:
            raise InputError(f"unknown incident status '{status}'",
                             hint=f"one of: {', '.join(INCIDENT_STATUSES)}")
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        rows = self._rows(f"SELECT * FROM incidents {where} ORDER BY seq DESC LIMIT ?",
                          [*params, int(limit)])
        return [incident_from_row(r) for r in rows]

    def open_incidents(self, limit: int | None = None) -> list[Incident]:
        """Every incident not resolved or cancelled, newest first (whole unless ``limit``
        says: the open set is what the scheduler, status and the kill switch must see)."""
        rows = self._rows(f"SELECT * FROM incidents WHERE status NOT IN {CLOSED_STATUSES!r} "
                          "ORDER BY seq DESC" + (" LIMIT ?" if limit else ""),
                          [int(limit)] if limit else [])
        return [incident_from_row(r) for r in rows]

    def count_incidents(self, status: str | None = None) -> int:
        where, params = ("WHERE status = ?", [status]) if status else ("", [])
        with self._lock:
            row = self.db.execute(f"SELECT COUNT(*) FROM incidents {where}", params).fetchone()
        return int(row[0])

    def set_incident_status(
        self, incident_id: str, status: str, *, actor: str, reason: str = ""
    ) -> Incident:
        if status not in INCIDENT_STATUSES:
            raise InputError(f"unknown incident status '{status}'",
                             hint=f"one of: {', '.join(INCIDENT_STATUSES)}")
        with self.transaction():
            before = self.incident(incident_id)
            now = to_text(self.now())
            resolved = now if status == "resolved" else None
            self.db.execute(
                "UPDATE incidents SET status = ?, updated_at = ?, resolved_at = ? WHERE id = ?",
                [status, now, resolved, incident_id],
            )
            why = f": {reason}" if reason else ""
            data = {"from": before.status, "to": status} | ({"reason": reason} if reason else {})
            self.add_event(incident_id, "status", f"status {before.status} -> {status}{why}",
                           actor=actor, data=data)
        return self.incident(incident_id)

    def set_commander(self, incident_id: str, commander: str, *, actor: str) -> Incident:
        """Name the incident commander; the timeline gets an ``assigned`` event."""
        with self.transaction():
            before = self.incident(incident_id)
            self.db.execute("UPDATE incidents SET commander = ? WHERE id = ?",
                            [commander, incident_id])
            was = f" (was {before.commander})" if before.commander else ""
            self.add_event(incident_id, "assigned", f"commander: {commander}{was}", actor=actor,
                           data={"commander": commander, "previous": before.commander})
        return self.incident(incident_id)

    def alert_by_key(self, fingerprint: str, starts_at: datetime) -> StoredAlert | None:
        """The stored alert with this dedup key, if any."""
        rows = self._rows("SELECT * FROM alerts WHERE fingerprint = ? AND starts_at = ?",
                          [fingerprint, to_text(starts_at)])
        return alert_from_row(rows[0]) if rows else None

    def alerts_for(self, incident_id: str) -> list[StoredAlert]:
        rows = self._rows("SELECT * FROM alerts WHERE incident_id = ? ORDER BY id", [incident_id])
        return [alert_from_row(r) for r in rows]
