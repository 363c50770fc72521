"""Versioned schema migrations for the store (SQLite or Postgres): the core's tables.

Parts of the bot that own tables of their own (drills, the Slack adapter) keep
their history beside their code and apply it with ``Store.ensure_schema`` when
they first use the store; their versions are recorded in ``schema_components``.

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

from bot.base.run_states import RunState
from bot.store.backend import Db

INCIDENT_STATUSES = ("open", "acknowledged", "mitigating", "mitigated", "resolved", "cancelled")
# The run states as version 1 shipped them (its CHECK); v7 adds "reverting".
_V1_RUN_STATES = (
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
RUN_STATES = tuple(s.value for s in RunState)


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _v1_initial(db: Db) -> None:
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
            state TEXT NOT NULL CHECK (state IN ({_in(_V1_RUN_STATES)})),
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
            "user" TEXT NOT NULL,
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


def _v2_chat_messages(db: Db) -> None:
    # Moved to its owner: the chat_messages table is the Slack adapter's
    # (bot.adapters.slack.thread_store registers it). Databases that ran this
    # version before have the table already; the owner's own step accepts that.
    return


def _v3_drills(db: Db) -> None:
    # Moved to its owner: drills/store.py registers the drills tables (see there).
    return


def _v4_trust(db: Db) -> None:
    # /metrics counts refusals by kind at every scrape: without an index that scans
    # every event (alerts included) on each scrape.
    db.execute("CREATE INDEX idx_events_kind ON events (kind)")
    # (request_replays moved to its owner, bot.adapters.slack.replay_store.)
    # The last playbook set that loaded cleanly, file by file, so `serve` can start
    # on it when the directory is broken. One row per good load; only the latest counts.
    db.execute(
        """CREATE TABLE playbook_sets (
            id INTEGER PRIMARY KEY,
            loaded_at TEXT NOT NULL,
            source TEXT NOT NULL,
            digest TEXT NOT NULL,
            files TEXT NOT NULL
        )"""
    )
    # /readyz proves the store takes writes by updating this one row.
    db.execute("CREATE TABLE write_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT)")


def _v5_drill_scope(db: Db) -> None:
    # A drill's runs and production's never share a guard's history (cooldown,
    # max_runs, the active cap, locks): each run says which scope it belongs to.
    db.execute("ALTER TABLE runs ADD COLUMN scope TEXT NOT NULL DEFAULT 'production' "
               "CHECK (scope IN ('production', 'drill'))")
    db.execute("UPDATE runs SET scope = 'drill' WHERE incident_id IN "
               "(SELECT id FROM incidents WHERE is_drill = 1)")
    db.execute("CREATE INDEX idx_runs_scope_action ON runs (scope, action)")


def _v6_drill_ownership(db: Db) -> None:
    # Moved to its owner: drills/store.py (drill owners, heartbeats, drill_firings).
    return


def _v7_claims_and_outbox(db: Db) -> None:
    # Runs gain the "reverting" claim and an owner for both claims, so a crash inside
    # a revert is finished by whoever comes next and a live process's claim is left
    # alone. SQLite cannot alter a CHECK: the table is rebuilt (the caller turns
    # foreign keys off around migrations, as SQLite's ALTER TABLE guide says).
    # Postgres alters it in place (others' foreign keys keep pointing at it).
    if db.dialect == "postgres":
        db.execute("ALTER TABLE runs DROP CONSTRAINT runs_state_check")
        db.execute(f"ALTER TABLE runs ADD CONSTRAINT runs_state_check "
                   f"CHECK (state IN ({_in(RUN_STATES)}))")
        for column in ("claimed_by", "claimed_at", "prior_state"):
            db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
    else:
        _v7_rebuild_runs_sqlite(db)
    # Work an ingest leaves for after the webhook's answer (announce a new incident,
    # run its automatic steps), written in the alert's own transaction so a crash
    # between the two never loses it. Claimed like a run; done_at marks it finished.
    db.execute(
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents (id),
            kind TEXT NOT NULL,
            stage TEXT NOT NULL DEFAULT 'new',
            created_at TEXT NOT NULL,
            claimed_by TEXT,
            claimed_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            done_at TEXT
        )"""
    )
    db.execute("CREATE INDEX idx_outbox_pending ON outbox (done_at, id)")


def _v7_rebuild_runs_sqlite(db: Db) -> None:
    columns = ("id, seq, incident_id, playbook_id, step_id, action, target, args, guard, "
               "verify_query, plan, diff, state, dry_run, requested_by, created_at, "
               "updated_at, error, held_at, scope")
    db.execute(
        f"""CREATE TABLE runs_v7 (
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
            held_at TEXT,
            scope TEXT NOT NULL DEFAULT 'production'
                CHECK (scope IN ('production', 'drill')),
            claimed_by TEXT,
            claimed_at TEXT,
            prior_state TEXT
        )"""
    )
    db.execute(f"INSERT INTO runs_v7 ({columns}) SELECT {columns} FROM runs")
    db.execute("DROP TABLE runs")
    db.execute("ALTER TABLE runs_v7 RENAME TO runs")
    db.execute("CREATE INDEX idx_runs_incident ON runs (incident_id)")
    db.execute("CREATE INDEX idx_runs_state ON runs (state)")
    db.execute("CREATE INDEX idx_runs_scope_action ON runs (scope, action)")


def _v8_components(db: Db) -> None:
    # The tables a part of the bot owns (drills, the Slack adapter's) have their own
    # version history, kept here: see ``Store.ensure_schema``.
    db.execute(
        """CREATE TABLE IF NOT EXISTS schema_components (
            component TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            applied_at TEXT NOT NULL
        )"""
    )


def _v9_leases(db: Db) -> None:
    # Replicas on one database (Postgres): the leader lease with its fencing token,
    # and each serve's heartbeat, by which its claims are judged (bot/store/leases.py).
    db.execute(
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            token INTEGER NOT NULL,
            acquired_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE replicas (
            id TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL
        )"""
    )


def _v10_releases(db: Db) -> None:
    # The release guard: one row per release and its own timeline (bot/store/releases.py).
    db.execute(
        """CREATE TABLE releases (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            route TEXT NOT NULL,
            target TEXT NOT NULL,
            change TEXT NOT NULL,
            baseline TEXT NOT NULL,
            owner TEXT NOT NULL,
            steps TEXT NOT NULL,
            step INTEGER NOT NULL,
            bake_seconds INTEGER NOT NULL,
            auto_promote INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL CHECK (state IN ('canary', 'promoted', 'rolled_back', 'aborted')),
            held INTEGER NOT NULL DEFAULT 0,
            step_started_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            incident_id TEXT
        )"""
    )
    # One release in progress per route, whatever the replicas do at once.
    db.execute("CREATE UNIQUE INDEX idx_releases_active ON releases (route) "
               "WHERE state = 'canary'")
    db.execute(
        """CREATE TABLE release_events (
            id INTEGER PRIMARY KEY,
            release_id TEXT NOT NULL REFERENCES releases (id),
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            text TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX idx_release_events ON release_events (release_id, id)")


def _v11_pages(db: Db) -> None:
    # Paging (bot/store/pages.py): one row per paged incident, wanted vs sent.
    db.execute(
        """CREATE TABLE pages (
            incident_id TEXT PRIMARY KEY,
            dedup_key TEXT NOT NULL UNIQUE,
            reason TEXT NOT NULL,
            severity TEXT NOT NULL,
            wanted TEXT NOT NULL CHECK (wanted IN ('trigger', 'acknowledge', 'resolve')),
            sent TEXT CHECK (sent IN ('trigger', 'acknowledge', 'resolve')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_try_at TEXT NOT NULL,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )"""
    )


def _v12_outbox_messages(db: Db) -> None:
    # What a change says (a status update, a note, a step's result) goes through the
    # outbox too, written in that change's transaction by whichever process made it
    # (the CLI included), and delivered once by a process with a notifier: the message,
    # as neutral JSON (bot.core.messages.message_to_json), is the item's payload.
    db.execute("ALTER TABLE outbox ADD COLUMN payload TEXT")


# Append only; index + 1 is the schema version. Versions 2, 3, 6 and a part of 4
# created tables that now belong to their owners (drills, the Slack adapter): those
# positions stay, empty, so every version number keeps its meaning.
MIGRATIONS: list[Callable[[Db], None]] = [
    _v1_initial, _v2_chat_messages, _v3_drills, _v4_trust, _v5_drill_scope,
    _v6_drill_ownership, _v7_claims_and_outbox, _v8_components, _v9_leases, _v10_releases,
    _v11_pages, _v12_outbox_messages,
]

LATEST_VERSION = len(MIGRATIONS)
