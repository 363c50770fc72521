"""Versioned schema migrations for the SQLite store.

``MIGRATIONS`` is append-only: the position of a function is its version (1-based).
Never edit a shipped migration; add a new one. ``schema_migrations`` records
which versions a database has, so the store can apply the missing ones at open
and refuse a database written by a newer release (its tables may mean things
this code does not know).

JSON columns are TEXT; timestamps are UTC ISO-8601 strings with microseconds,
so they compare correctly as text.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

INCIDENT_STATUSES = ("open", "acknowledged", "mitigating", "mitigated", "resolved", "cancelled")
RUN_STATES = (
    "planned",
    "awaiting_approval",
    "approved",
    "refused",
    "dry_run",
    "applying",
    "applied",
    "verified",
    "reverted",
    "failed",
    "denied",
    "expired",
)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _v1_initial(db: Database) -> None:
    statements = [
        f"""CREATE TABLE incidents (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            group_key TEXT NOT NULL,
            title TEXT NOT NULL,
            class TEXT NOT NULL,
            severity TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ({_in(INCIDENT_STATUSES)})),
            is_drill INTEGER NOT NULL DEFAULT 0,
            commander TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            resolved_at TEXT
        )""",
        "CREATE INDEX idx_incidents_group ON incidents (group_key, status)",
        """CREATE TABLE alerts (
            id INTEGER PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            source TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            ends_at TEXT,
            status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
            alertname TEXT NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            generator_url TEXT,
            raw TEXT NOT NULL,
            received_at TEXT NOT NULL,
            UNIQUE (fingerprint, starts_at)
        )""",
        "CREATE INDEX idx_alerts_incident ON alerts (incident_id)",
        f"""CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            incident_id TEXT REFERENCES incidents (id),
            playbook_id TEXT,
            step_id TEXT,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            args TEXT NOT NULL,
            guard TEXT NOT NULL,
            verify_query TEXT,
            plan TEXT NOT NULL,
            diff TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ({_in(RUN_STATES)})),
            dry_run INTEGER NOT NULL DEFAULT 0,
            requested_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            error TEXT,
            held_at TEXT
        )""",
        "CREATE INDEX idx_runs_incident ON runs (incident_id)",
        "CREATE INDEX idx_runs_state ON runs (state)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            incident_id TEXT REFERENCES incidents (id),
            run_id TEXT REFERENCES runs (id),
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            text TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX idx_events_incident ON events (incident_id, id)",
        "CREATE INDEX idx_events_run ON events (run_id, id)",
        """CREATE TABLE approvals (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs (id),
            user TEXT NOT NULL,
            decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
            at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX idx_approvals_run ON approvals (run_id)",
        """CREATE TABLE mitigations (
            run_id TEXT PRIMARY KEY REFERENCES runs (id),
            target TEXT NOT NULL,
            routes TEXT NOT NULL,
            fields TEXT NOT NULL,
            applied_at TEXT NOT NULL,
            ttl_due_at TEXT,
            verify_due_at TEXT,
            verify_state TEXT CHECK (verify_state IN ('pending', 'passed', 'failed')),
            reverted_at TEXT,
            revert_reason TEXT
        )""",
        """CREATE TABLE flags (
            name TEXT PRIMARY KEY,
            value TEXT,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL
        )""",
    ]
    for sql in statements:
        db.execute(sql)


# Append only; index + 1 is the schema version.
MIGRATIONS: list[Callable[[Database], None]] = [_v1_initial]

LATEST_VERSION = len(MIGRATIONS)
