"""Signed requests already let through, kept in the store for the replay window.

Slack signs ``v0:{timestamp}:{body}`` and bolt refuses a timestamp more than five
minutes away, so a captured request can be replayed inside those five minutes.
Remembering each signature in process memory loses them on a restart (and would
not be seen by a second replica), so they live here: the first ``INSERT`` of a
signature wins, any later one within the window is a replay.
"""

from __future__ import annotations

from datetime import timedelta

from bot.store import Store, to_text
from bot.store.backend import Db

WINDOW = timedelta(seconds=300)  # bolt's own timestamp window
PRUNE_EVERY = 500  # inserts between deletes of what left the window


def _r1_request_replays(db: Db) -> None:
    # Signed Slack requests already let through, kept for Slack's 5-minute window so a
    # replay is refused after a restart too (and by any replica). Was a part of core
    # migration 4; an older database has it.
    db.execute(
        """CREATE TABLE IF NOT EXISTS request_replays (
            signature TEXT PRIMARY KEY,
            seen_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_request_replays_seen ON request_replays (seen_at)")


REPLAY_SCHEMA = [_r1_request_replays]


class RequestReplays:
    """The ``request_replays`` table of a ``Store`` (component ``slack_replays``)."""

    def __init__(self, store: Store, window: timedelta = WINDOW) -> None:
        self.store = store
        store.ensure_schema("slack_replays", REPLAY_SCHEMA)
        self.window = window
        self._since_prune = 0

    def seen(self, signature: str) -> bool:
        """Record ``signature``; True when it was already recorded within the window."""
        now = self.store.now()
        with self.store.transaction():
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self.store.db.execute("DELETE FROM request_replays WHERE seen_at < ?",
                                      [to_text(now - self.window)])
            row = self.store.db.execute(
                "SELECT seen_at FROM request_replays WHERE signature = ?", [signature]
            ).fetchone()
            if row is not None and row[0] >= to_text(now - self.window):
                return True
            self.store.db.upsert("request_replays",
                                 {"signature": signature, "seen_at": to_text(now)},
                                 pk="signature")
            return False
