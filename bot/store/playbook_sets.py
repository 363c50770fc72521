"""The last good playbook set, kept in the store so a broken directory never stops the bot.

Every clean load whose texts differ from the latest stored set is written as a
new row of ``playbook_sets``; at start, if the directory does not load, the
newest row is what ``serve`` and the CLI run on (and they say so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from bot.store.records import required_time, to_text

if TYPE_CHECKING:
    from bot.store import Store

KEEP = 20  # older sets are dropped; only the latest is ever loaded


@dataclass(frozen=True)
class StoredSet:
    loaded_at: datetime
    source: str
    digest: str
    files: dict[str, str]

    def describe(self) -> str:
        return f"the last good set stored at {self.loaded_at:%Y-%m-%d %H:%M} UTC ({self.source})"


class PlaybookSnapshots:
    """The ``playbook_sets`` table of a ``Store`` (schema version 4)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def latest(self) -> StoredSet | None:
        row = self.store.db.execute(
            "SELECT loaded_at, source, digest, files FROM playbook_sets ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return StoredSet(required_time(row[0]), row[1], row[2], json.loads(row[3]))

    def save(self, source: str, files: dict[str, str], digest: str) -> bool:
        """Store ``files`` as the latest good set unless it already is; True if stored."""
        latest = self.latest()
        if latest is not None and latest.digest == digest:
            return False
        with self.store.transaction():
            self.store.db.execute(
                "INSERT INTO playbook_sets (loaded_at, source, digest, files) VALUES (?, ?, ?, ?)",
                [to_text(self.store.now()), source, digest, json.dumps(files, sort_keys=True)],
            )
            self.store.db.execute(
                "DELETE FROM playbook_sets WHERE id NOT IN "
                "(SELECT id FROM playbook_sets ORDER BY id DESC LIMIT ?)", [KEEP],
            )
        return True
