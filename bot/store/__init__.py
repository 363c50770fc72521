"""The store: the single source of truth, one package with one access style.

``from bot.store import Store`` is the way in. ``sqlite`` holds the store itself
(SQLite; the embedded default), with its halves ``runs`` (runs, approvals,
mitigations, claims) and ``outbox``; ``records`` the typed rows; ``migrations``
the schema history; ``chat_messages`` and ``replays`` the tables of the Slack
adapter (thread anchors, signatures already seen).
"""

from bot.store.records import (
    CLOSED_STATUSES,
    Approval,
    Event,
    Flag,
    Incident,
    Mitigation,
    Run,
    StoredAlert,
    from_text,
    required_time,
    to_text,
)
from bot.store.store import PAUSE_FLAG, Recorded, Store, group_key_for

__all__ = [
    "CLOSED_STATUSES", "PAUSE_FLAG", "Approval", "Event", "Flag", "Incident", "Mitigation",
    "Recorded", "Run", "Store", "StoredAlert", "from_text", "group_key_for", "required_time",
    "to_text",
]
