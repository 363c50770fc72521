"""The store: the single source of truth, one package with one access style.

``from bot.store import Store`` is the way in. ``store`` holds the store itself
(connection, schema, transactions, timeline, flags), with its halves
``incidents`` (alerts, dedup, grouping), ``runs`` (runs, approvals, mitigations,
claims), ``outbox``, ``leases`` (the leader lease, replica heartbeats),
``releases`` and ``pages`` (what was paged, wanted vs sent);
``backend`` the two databases behind one connection interface (SQLite, the
embedded default, and Postgres for replicas); ``records`` the typed rows;
``migrations`` the schema history; ``playbook_sets`` the last good playbooks.
Parts of the bot own tables of their own (drills, the Slack adapter's thread,
delivery and replay tables) and register them with ``Store.ensure_schema``.
"""

from bot.store.pages import Page
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
    "CLOSED_STATUSES", "PAUSE_FLAG", "Approval", "Event", "Flag", "Incident", "Mitigation", "Page",
    "Recorded", "Run", "Store", "StoredAlert", "from_text", "group_key_for", "required_time",
    "to_text",
]
