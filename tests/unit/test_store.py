"""The store, on SQLite and on Postgres: dedup, grouping, migrations, atomic writes, records."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from actions.catalog import get_action
from actions.policy import ServingPolicy
from bot.base.errors import InputError, NotFound, StoreError
from bot.intake.alert import Alert
from bot.playbook.schema import Guard
from bot.store import Store, group_key_for, migrations

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def alert(fp: str = "fp1", status: str = "firing", starts: datetime = T0, **labels: str) -> Alert:
    labels = {"alertname": "TokenBurn", "requested_model": "chat", **labels}
    return Alert(source="alertmanager", fingerprint=fp, status=status, labels=labels,
                 starts_at=starts, ends_at=starts + timedelta(minutes=5) if status == "resolved"
                 else None)


def record(store: Store, a: Alert, *, key: str = "runaway_cost|chat|*", drill: bool = False):
    return store.record_alert(a, group_key=key, title="Token burn on chat", klass="runaway_cost",
                              severity="high", is_drill=drill)[:2]


def test_same_alert_a_hundred_times_gives_one_row_and_one_incident(store_at):
    store = store_at()
    results = {record(store, alert()) for _ in range(100)}
    assert results == {("INC-1", True), ("INC-1", False)}
    assert len(store.alerts_for("INC-1")) == 1
    assert len(store.incidents()) == 1
    # One "opened" and one "alert" event: repeats add nothing to the timeline.
    assert [e.kind for e in store.timeline("INC-1")] == ["opened", "alert"]


def test_resolved_copy_updates_status_and_ends_at_once(store_at):
    store = store_at()
    record(store, alert())
    resolved = alert(status="resolved")
    assert record(store, resolved) == ("INC-1", False)
    assert record(store, resolved) == ("INC-1", False)
    (row,) = store.alerts_for("INC-1")
    assert row.status == "resolved"
    assert row.ends_at == T0 + timedelta(minutes=5)
    assert [e.kind for e in store.timeline("INC-1")].count("alert_resolved") == 1


def test_new_firing_of_same_fingerprint_is_a_new_alert_in_the_open_incident(store_at):
    store = store_at()
    record(store, alert())
    assert record(store, alert(starts=T0 + timedelta(hours=1))) == ("INC-1", False)
    assert len(store.alerts_for("INC-1")) == 2


def test_grouping_by_key_and_closed_incidents_and_drills(store_at):
    store = store_at()
    assert record(store, alert("a"))[0] == "INC-1"
    assert record(store, alert("b")) == ("INC-1", False)  # same group, absorbed
    assert record(store, alert("c"), key="latency_spike|chat|*") == ("INC-2", True)
    assert record(store, alert("d"), drill=True) == ("INC-3", True)  # drills never mix
    store.set_incident_status("INC-1", "resolved", actor="alice")
    assert record(store, alert("e")) == ("INC-4", True)  # a closed incident absorbs nothing


def test_group_key_for_uses_class_route_and_model():
    a = alert(model="gpt-x")
    assert group_key_for(a, "runaway_cost") == "runaway_cost|chat|gpt-x"
    b = Alert(source="generic", fingerprint="z", status="firing", starts_at=T0,
              labels={"route": "embed", "model_name": "bge"})
    assert group_key_for(b, "latency_spike") == "latency_spike|embed|bge"
    c = Alert(source="generic", fingerprint="z", status="firing", starts_at=T0, labels={})
    assert group_key_for(c, "bad_routing") == "bad_routing|*|*"


@freeze_time("2026-11-29 10:00:00")
def test_timestamps_are_utc_from_the_clock(store_at):
    store = store_at()
    record(store, alert())
    inc = store.incident("INC-1")
    assert inc.created_at == datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    assert inc.created_at.tzinfo is not None


def test_set_incident_status_adds_event_and_rejects_unknown_status(store_at):
    store = store_at()
    record(store, alert())
    inc = store.set_incident_status("INC-1", "resolved", actor="alice")
    assert inc.status == "resolved" and inc.resolved_at is not None
    assert store.timeline("INC-1")[-1].text == "status open -> resolved"
    with pytest.raises(InputError, match="unknown incident status 'done'"):
        store.set_incident_status("INC-1", "done", actor="alice")
    assert store.incident("INC-1").status == "resolved"


def test_not_found_names_the_id_and_gives_a_hint(store_at):
    store = store_at()
    with pytest.raises(NotFound, match="no incident INC-9") as exc:
        store.incident("INC-9")
    assert exc.value.hint
    with pytest.raises(NotFound, match="no run RUN-3"):
        store.run("RUN-3")


def test_transaction_rolls_back_every_write_on_error(store_at):
    store = store_at()
    record(store, alert())
    with pytest.raises(RuntimeError), store.transaction():
        store.add_event("INC-1", "note", "first", actor="alice")
        store.add_event("INC-1", "note", "second", actor="alice")
        raise RuntimeError("boom")
    assert [e.kind for e in store.timeline("INC-1")] == ["opened", "alert"]


def test_event_on_unknown_incident_is_refused_by_foreign_key(store_at):
    store = store_at()
    with pytest.raises(StoreError, match="(?i)foreign key"):
        store.add_event("INC-404", "note", "x", actor="alice")
    assert store.timeline("INC-404") == []


def test_run_round_trips_plan_and_guard(store_at):
    store = store_at()
    current = ServingPolicy.model_validate({"routes": {"chat": {"max_output_tokens": 1024}}})
    plan = get_action("cap_output_length").plan(
        {"route": "chat", "max_output_tokens": 256}, current, target="default"
    )
    guard = Guard.model_validate({"approval": "two_person", "ttl": "30m"})
    run = store.create_run(incident_id=None, playbook_id="pb", step_id="cap", plan=plan,
                           args={"route": "chat", "max_output_tokens": 256}, guard=guard,
                           verify_query=None, state="awaiting_approval", dry_run=False,
                           requested_by="alice", event_text="planned")
    again = store.run(run.id)
    assert again.id == "RUN-1" and again.plan == plan and again.guard == guard
    assert again.diff == plan.diff() and "+ routes.chat.max_output_tokens: 256" in again.diff
    assert [r.id for r in store.runs(state="awaiting_approval")] == ["RUN-1"]
    assert store.timeline(None)[0].run_id == "RUN-1"  # ad hoc runs have a timeline too
    with pytest.raises(InputError, match="unknown run state"):
        store.transition("RUN-1", "done", "x", actor="alice")
    assert store.run("RUN-1").state == "awaiting_approval"


def test_flags_set_and_clear(store_at):
    store = store_at()
    assert store.flag("paused") is None
    store.set_flag("paused", "investigating", actor="alice")
    flag = store.flag("paused")
    assert flag is not None and (flag.value, flag.set_by) == ("investigating", "alice")
    store.set_flag("paused", None, actor="bob")
    assert store.flag("paused") is None


# --- migrations --------------------------------------------------------------------------


def test_open_twice_keeps_data_and_applies_migrations_once(store_at):
    first = store_at()
    record(first, alert())
    assert first.schema_version == migrations.LATEST_VERSION
    first.close()
    second = store_at()
    assert second.incident("INC-1").title == "Token burn on chat"
    rows = second.db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, migrations.LATEST_VERSION + 1))
    if second.dialect == "sqlite":
        assert second.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert second.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_a_newer_database_is_refused_on_either_backend(store_at):
    store = store_at()
    with store.transaction():
        store.db.execute("INSERT INTO schema_migrations VALUES (?, '2099-01-01')",
                         [migrations.LATEST_VERSION + 1])
    store.close()
    with pytest.raises(StoreError, match="newer than this release"):
        store_at()


def test_a_failing_migration_leaves_the_old_schema_on_either_backend(store_at, monkeypatch):
    store_at().close()

    def broken(db):
        db.execute("CREATE TABLE half_done (x TEXT)")
        db.execute("THIS IS NOT SQL")

    monkeypatch.setattr("bot.store.store.MIGRATIONS", [*migrations.MIGRATIONS, broken])
    monkeypatch.setattr("bot.store.store.LATEST_VERSION", len(migrations.MIGRATIONS) + 1)
    old = migrations.LATEST_VERSION
    with pytest.raises(StoreError, match=f"to version {old + 1} failed .*stays at version {old}"):
        store_at()
    monkeypatch.undo()
    store = store_at()
    assert "half_done" not in store.db.table_names()
    assert store.schema_version == old


def test_a_postgres_url_password_never_reaches_an_error():
    with pytest.raises(StoreError) as err:
        Store("postgresql://bot:s3cret@127.0.0.1:1/none")
    assert "s3cret" not in str(err.value) and "bot:***@" in str(err.value)


def test_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "bot.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (?, '2099-01-01')",
                 [migrations.LATEST_VERSION + 1])
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this release") as exc:
        Store(path)
    assert "upgrade" in (exc.value.hint or "")


def test_a_failing_migration_leaves_the_old_schema(tmp_path, monkeypatch):
    path = tmp_path / "bot.db"
    Store(path).close()

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        db.execute("THIS IS NOT SQL")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, broken])
    monkeypatch.setattr("bot.store.store.MIGRATIONS", migrations.MIGRATIONS)
    monkeypatch.setattr("bot.store.store.LATEST_VERSION", len(migrations.MIGRATIONS))
    old = migrations.LATEST_VERSION
    with pytest.raises(StoreError, match=f"to version {old + 1} failed .*stays at version {old}"):
        Store(path)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
    conn.close()
    assert "half_done" not in tables and version == migrations.LATEST_VERSION


def test_a_file_that_is_not_a_database_gives_a_store_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("this is not sqlite " * 100)
    with pytest.raises(StoreError, match="cannot open the store"):
        Store(path)


# --- tables owned by other parts of the bot ---------------------------------------------


def test_drills_and_slack_tables_are_created_by_their_owners(store_at):
    from bot.adapters.slack.replay_store import RequestReplays
    from bot.adapters.slack.thread_store import ChatMessages
    from drills.store import DrillStore

    store = store_at()
    tables = set(store.db.table_names())
    assert not {"drills", "drill_events", "drill_firings", "chat_messages",
                "request_replays"} & tables  # the core's migrations create none of them
    DrillStore(store)
    ChatMessages(store)
    RequestReplays(store)
    assert {"drills", "drill_events", "drill_firings", "chat_messages",
            "request_replays"} <= set(store.db.table_names())
    versions = dict(store.db.execute("SELECT component, version FROM schema_components"))
    assert versions == {"drills": 2, "chat": 3, "slack_replays": 1}


def test_a_database_whose_core_history_made_those_tables_is_taken_as_is(store_at):
    # Before the move, core migrations 2, 3, 4 and 6 created these tables: the owners'
    # steps must accept them (and keep their rows) rather than fail or recreate.
    from drills.store import DRILL_SCHEMA, DrillStore

    store = store_at()
    with store.transaction():
        for step in DRILL_SCHEMA:
            step(store.db)  # what the old core history left, with no component row
        store.db.execute("INSERT INTO drill_firings VALUES ('2026-12-01T10:00:00', 'x', 'y')")
    drills = DrillStore(store)
    assert drills.store.db.execute("SELECT COUNT(*) FROM drill_firings").fetchone() == (1,)
    assert dict(store.db.execute("SELECT component, version FROM schema_components")) == {
        "drills": 2}


def test_a_component_history_newer_than_the_code_is_refused(store_at):
    from drills.store import DrillStore

    store = store_at()
    with store.transaction():
        store.db.execute("INSERT INTO schema_components VALUES ('drills', 9, 'now')")
    with pytest.raises(StoreError, match="drills tables are at version 9, newer than this"):
        DrillStore(store)


def test_done_outbox_items_are_forgotten_after_a_week_and_pending_ones_never(store_at):
    store = store_at()
    with freeze_time("2026-11-01 10:00:00"):
        inc = store.record_alert(Alert(source="generic", fingerprint="f1", status="firing",
                                       labels={"alertname": "A"},
                                       starts_at=datetime(2026, 11, 1, 9, tzinfo=UTC)),
                                 group_key="g", title="t", klass="k", severity="warning")
        store.add_outbox(inc.incident_id, "opened")
        store.add_outbox(inc.incident_id, "resolved")
        old, pending = store.pending_outbox()
        store.outbox_done(old.id)
    with freeze_time("2026-11-09 10:00:00"):
        assert store.prune_outbox(store.now() - timedelta(days=7)) == 1
        assert [i.id for i in store.pending_outbox()] == [pending.id]  # still to do
        assert store.db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (1,)
