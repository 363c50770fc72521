"""Pages: the store's half of paging (``bot.core.paging``).

A mixin of ``bot.store.store.Store``. One row per incident that was ever paged,
keyed by the incident and by the ``dedup_key`` the paging service knows it by.
``wanted`` is where the page should be (trigger, then acknowledge, then resolve:
it only ever moves forward) and ``sent`` is the last action the service accepted.
The deliverer sends what lies between them, retrying with backoff; because both
are in the store, a restart or another replica carries on where the last left
off, and an action the service accepted is never sent again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.store.backend import Db
from bot.store.records import from_text, required_time, to_text

PAGE_ACTIONS = ("trigger", "acknowledge", "resolve")  # in the only order a page moves


@dataclass(frozen=True)
class Page:
    incident_id: str
    dedup_key: str
    reason: str
    severity: str
    wanted: str
    sent: str | None
    attempts: int
    next_try_at: datetime
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def pending(self) -> str | None:
        """The next action to send, or None when the service is where it should be."""
        done = PAGE_ACTIONS.index(self.sent) if self.sent else -1
        return None if done >= PAGE_ACTIONS.index(self.wanted) else PAGE_ACTIONS[done + 1]


def _page(r: dict[str, Any]) -> Page:
    return Page(incident_id=r["incident_id"], dedup_key=r["dedup_key"], reason=r["reason"],
                severity=r["severity"], wanted=r["wanted"], sent=r["sent"],
                attempts=int(r["attempts"]), next_try_at=required_time(r["next_try_at"]),
                last_error=r["last_error"], created_at=required_time(r["created_at"]),
                updated_at=from_text(r["updated_at"]) or required_time(r["created_at"]))


class PageRecords:
    if TYPE_CHECKING:
        db: Db

        def now(self) -> datetime: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]: ...

    def page(self, incident_id: str) -> Page | None:
        rows = self._rows("SELECT * FROM pages WHERE incident_id = ?", [incident_id])
        return _page(rows[0]) if rows else None

    def want_page(self, incident_id: str, action: str, *, reason: str = "",
                  severity: str = "critical", dedup_key: str = "") -> bool:
        """Move the incident's page forward to ``action`` (a trigger creates it); False when
        it is there or beyond already, so each rule pages once however often it runs."""
        now = to_text(self.now())
        with self.transaction():
            page = self.page(incident_id)
            if page is None:
                if action != "trigger":
                    return False  # never paged: nothing to acknowledge or resolve
                self.db.insert("pages", {
                    "incident_id": incident_id, "dedup_key": dedup_key or incident_id,
                    "reason": reason, "severity": severity, "wanted": "trigger", "sent": None,
                    "attempts": 0, "next_try_at": now, "last_error": None,
                    "created_at": now, "updated_at": now})
                return True
            if PAGE_ACTIONS.index(action) <= PAGE_ACTIONS.index(page.wanted):
                return False
            self.db.execute("UPDATE pages SET wanted = ?, next_try_at = ?, updated_at = ? "
                            "WHERE incident_id = ?", [action, now, now, incident_id])
            return True

    def rearm_page(self, incident_id: str, reason: str) -> bool:
        """A resolved page starts again (its incident reopened and pages anew): same
        dedup key, which the service opens as a new alert."""
        now = to_text(self.now())
        with self.transaction():
            cur = self.db.execute(
                "UPDATE pages SET wanted = 'trigger', sent = NULL, attempts = 0, reason = ?, "
                "last_error = NULL, next_try_at = ?, created_at = ?, updated_at = ? "
                "WHERE incident_id = ? AND wanted = 'resolve'",
                [reason, now, now, now, incident_id])
            return cur.rowcount == 1

    def due_pages(self) -> list[Page]:
        rows = self._rows("SELECT * FROM pages WHERE next_try_at <= ? ORDER BY created_at",
                          [to_text(self.now())])
        return [p for p in (_page(r) for r in rows) if p.pending is not None]

    def claim_page(self, incident_id: str, until: datetime) -> bool:
        """Take the page's next send for this process until ``until`` (a compare-and-set
        on its due time): a second sender, here or in another process, finds it taken."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE pages SET next_try_at = ? WHERE incident_id = ? AND next_try_at <= ?",
                [to_text(until), incident_id, to_text(self.now())])
            return cur.rowcount == 1

    def page_sent(self, incident_id: str, action: str) -> None:
        now = to_text(self.now())
        self.db_write("UPDATE pages SET sent = ?, attempts = 0, last_error = NULL, "
                      "next_try_at = ?, updated_at = ? WHERE incident_id = ?",
                      [action, now, now, incident_id])

    def page_retry(self, incident_id: str, error: str, at: datetime) -> None:
        self.db_write("UPDATE pages SET attempts = attempts + 1, last_error = ?, "
                      "next_try_at = ?, updated_at = ? WHERE incident_id = ?",
                      [error, to_text(at), to_text(self.now()), incident_id])

    def db_write(self, sql: str, params: list[Any]) -> None:
        with self.transaction():
            self.db.execute(sql, params)

    def unresolved_pages(self) -> list[Page]:
        """Every page not yet meant to be resolved (the ones that follow their incident)."""
        rows = self._rows("SELECT * FROM pages WHERE wanted != 'resolve' ORDER BY created_at")
        return [_page(r) for r in rows]

    def pages(self, limit: int = 100) -> list[Page]:
        rows = self._rows("SELECT * FROM pages ORDER BY created_at DESC LIMIT ?", [int(limit)])
        return [_page(r) for r in rows]
