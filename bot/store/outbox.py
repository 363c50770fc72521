"""The outbox: work an ingest leaves for after the webhook's answer.

A mixin of ``bot.store.store.Store``. ``add_outbox`` runs inside the transaction that
records the alert, so an incident and the work it needs (announce it, run its
automatic steps, report its recovery) commit together or not at all. Items are
claimed like runs: a compare-and-set names the holder, and an item whose holder
died is taken over by whoever drains next (``serve`` at start and on every
poll, ``tick``), exactly once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.base.claims import this_process
from bot.store.backend import Db
from bot.store.records import from_text, to_text

OUTBOX_KINDS = ("opened", "reopened", "resolved", "joined", "message")
# Items only a process with a notifier can do (deliver a message): the CLI leaves them.
DELIVERY_KINDS = ("message",)
OUTBOX_CHANNEL = "llm_incident_outbox"
MAX_ATTEMPTS = 3  # a poison item stops being retried, with its error on the timeline


@dataclass(frozen=True)
class OutboxItem:
    id: int
    incident_id: str
    kind: str
    stage: str  # "new" | "announced" (opened: the suggestion is out, steps still to run)
    attempts: int
    claimed_by: str | None
    claimed_at: datetime | None
    payload: str | None = None  # kind "message": the message as JSON


class OutboxRecords:
    if TYPE_CHECKING:
        db: Db

        def now(self) -> datetime: ...
        def transaction(self) -> AbstractContextManager[Any]: ...
        def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]: ...
        def holder_alive(self, owner: str | None, *,
                         claimed_at: datetime | None = None) -> bool: ...

    def add_outbox(self, incident_id: str, kind: str, *, payload: str | None = None,
                   claim: bool = False) -> int | None:
        """Queue an item (in the caller's transaction, when there is one); its id, or
        None when an equal item is already pending. ``claim``: this process does it at
        once (it has a notifier), so nobody else takes it while it lives."""
        assert kind in OUTBOX_KINDS, kind
        with self.transaction():
            if kind == "joined" and self.db.execute(
                    "SELECT 1 FROM outbox WHERE incident_id = ? AND kind = 'joined' "
                    "AND done_at IS NULL AND claimed_by IS NULL", [incident_id]).fetchone():
                return None  # one pending refresh of the live message is enough
            now = to_text(self.now())
            holder = this_process() if claim else None
            item_id = self.db.insert("outbox", {
                "incident_id": incident_id, "kind": kind, "created_at": now,
                "payload": payload, "claimed_by": holder, "claimed_at": now if claim else None,
                "attempts": 1 if claim else 0}, returning="id")
            # Wakes the leader (another replica) when this commits; SQLite: nothing.
            if not claim:
                self.db.notify(OUTBOX_CHANNEL)
            return int(item_id)

    def pending_outbox(self, *, deliveries: bool = True) -> list[OutboxItem]:
        """Items not done, oldest first; ``deliveries=False`` leaves out what needs a
        notifier (a process without one must not take a message it cannot send)."""
        skip = "" if deliveries else \
            f" AND kind NOT IN ({', '.join(repr(k) for k in DELIVERY_KINDS)})"
        rows = self._rows(f"SELECT * FROM outbox WHERE done_at IS NULL{skip} ORDER BY id")
        return [_item(r) for r in rows]

    def outbox_mark(self) -> int:
        """The newest item's id: a cheap look (the primary key's end) whether another
        process queued something since the last look (serve polls it on SQLite)."""
        rows = self._rows("SELECT MAX(id) AS newest FROM outbox")
        return int(rows[0]["newest"] or 0)

    def claim_outbox_batch(self, items: list[OutboxItem]) -> list[OutboxItem]:
        """Claim every item of ``items`` no live process holds, in one transaction."""
        me, now = this_process(), to_text(self.now())
        free = [i for i in items if not i.claimed_by or (
            i.claimed_by != me and not self.holder_alive(i.claimed_by,
                                                         claimed_at=i.claimed_at))]
        won: list[int] = []
        with self.transaction():
            for item in free:
                cur = self.db.execute(
                    "UPDATE outbox SET claimed_by = ?, claimed_at = ?, attempts = attempts + 1 "
                    "WHERE id = ? AND done_at IS NULL AND claimed_by IS ?",
                    [me, now, item.id, item.claimed_by])
                if cur.rowcount == 1:
                    won.append(item.id)
        if not won:
            return []
        marks = ", ".join("?" for _ in won)
        rows = self._rows(f"SELECT * FROM outbox WHERE id IN ({marks}) ORDER BY id", won)
        return [_item(r) for r in rows]

    def outbox_stage(self, item_id: int, stage: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE outbox SET stage = ? WHERE id = ?", [stage, item_id])

    def outbox_done(self, item_id: int, error: str | None = None) -> None:
        with self.transaction():
            self.db.execute("UPDATE outbox SET done_at = ?, last_error = ? WHERE id = ?",
                            [to_text(self.now()), error, item_id])

    def prune_outbox(self, before: datetime) -> int:
        """Forget items done before ``before`` (the timeline keeps what they did), and
        messages queued before it that no process with a notifier ever took (a store
        used only from the CLI): a week-old status line is no news to send."""
        with self.transaction():
            cur = self.db.execute(
                "DELETE FROM outbox WHERE (done_at IS NOT NULL AND done_at < ?) OR "
                f"(done_at IS NULL AND claimed_by IS NULL AND kind IN "
                f"({', '.join(repr(k) for k in DELIVERY_KINDS)}) AND created_at < ?)",
                [to_text(before), to_text(before)])
            return cur.rowcount

    def outbox_release(self, item_id: int, error: str, *, attempt: bool = True) -> None:
        """Let the next pass retry it (kept claimed by nobody). ``attempt=False``: this
        claim did not really try (it was handed over), so it does not count."""
        with self.transaction():
            self.db.execute("UPDATE outbox SET claimed_by = NULL, last_error = ?, "
                            "attempts = attempts - ? WHERE id = ?",
                            [error, 0 if attempt else 1, item_id])


def _item(r: dict[str, Any]) -> OutboxItem:
    return OutboxItem(r["id"], r["incident_id"], r["kind"], r["stage"], r["attempts"],
                      r["claimed_by"], from_text(r["claimed_at"]), r.get("payload"))
