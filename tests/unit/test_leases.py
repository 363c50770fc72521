"""The leader lease, replica heartbeats and fencing, on SQLite and Postgres.

The lease decides which replica runs the scheduler and automatic steps; its
fencing token goes with every change to the target, which refuses a lower one.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from freezegun import freeze_time

from actions.drivers.policy_file import PolicyFileDriver, stamp_change
from actions.fencing import Fence, StaleFence, fenced
from actions.policy import ChangeMark
from bot.core.leadership import Leadership, NotLeader, authority

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
TTL = timedelta(seconds=10)


def test_one_holder_at_a_time_and_a_new_token_on_each_takeover(store_at):
    with freeze_time(T0) as clock:
        store = store_at()
        first = store.take_lease("a", TTL)
        assert first is not None and (first.holder, first.token) == ("a", 1)
        assert store.take_lease("b", TTL) is None  # a's lease runs
        clock.tick(timedelta(seconds=6))
        renewed = store.take_lease("a", TTL)
        assert renewed is not None and renewed.token == 1  # renewing keeps the token
        assert renewed.expires_at == T0 + timedelta(seconds=16)
        clock.tick(timedelta(seconds=15))  # a stopped renewing 15s ago: expired
        taken = store.take_lease("b", TTL)
        assert taken is not None and (taken.holder, taken.token) == ("b", 2)
        assert store.holds_lease("a") is None and store.holds_lease("b") == taken
        store.release_lease("b")  # a graceful stop hands over at once
        again = store.take_lease("a", TTL)
        assert again is not None and again.token == 3


def test_two_stores_racing_for_an_expired_lease_get_one_winner(store_at):
    # Two connections = two replicas; the write transaction decides.
    with freeze_time(T0) as clock:
        a, b = store_at(), store_at()
        assert a.take_lease("a", TTL) is not None
        clock.tick(timedelta(seconds=11))
        won = [s.take_lease(name, TTL) for s, name in ((a, "x"), (b, "y"))]
        assert [w is not None for w in won] == [True, False]
        assert b.lease().holder == "x" and b.lease().token == 2


def test_a_replicas_claims_live_and_die_with_its_heartbeat(store_at):
    with freeze_time(T0) as clock:
        store = store_at()
        store.replica_stale_after = TTL
        store.beat("host-a:1:1", role="leader")
        assert store.holder_alive("host-a:1:1")
        clock.tick(timedelta(seconds=11))  # hung: no beat for longer than the lease
        assert not store.holder_alive("host-a:1:1")
        store.beat("host-a:1:1", role="follower")
        assert store.holder_alive("host-a:1:1")
        assert [r[0] for r in store.replicas()] == ["host-a:1:1"]
        store.forget_replica("host-a:1:1")
        assert store.replicas() == []


def test_an_automatic_move_needs_the_lease_a_human_one_carries_its_token(store_at):
    store = store_at()
    # No lease yet (a CLI on its own store): a human move carries no fence.
    assert authority(store, None, automatic=True, run_id="RUN-1", op="apply") is None
    lease = store.take_lease("other", TTL)
    with pytest.raises(NotLeader, match="held by other"):
        authority(store, "me", automatic=True, run_id="RUN-1", op="apply")
    fence = authority(store, "me", automatic=False, run_id="RUN-1", op="revert")
    assert fence == Fence(lease.token, "RUN-1", "revert")
    assert authority(store, "other", automatic=True, run_id="RUN-2", op="apply").token == 1


def test_leadership_leads_alone_and_hands_over_on_release(store_at):
    store = store_at()
    one, two = Leadership(store, ttl=TTL, holder="one"), Leadership(store, ttl=TTL, holder="two")
    assert one.renew() and one.is_leader and one.token == 1
    assert not two.renew() and two.role == "follower"
    one.release()
    assert not one.is_leader
    assert two.renew() and two.token == 2


# --- the target's side of fencing --------------------------------------------------------


@pytest.fixture
def driver(tmp_path: Path) -> PolicyFileDriver:
    path = tmp_path / "policy.yaml"
    path.write_text("# our routes\nversion: 1\nroutes:\n  chat: {max_output_tokens: 512}\n")
    return PolicyFileDriver(path)


def _write(driver: PolicyFileDriver, fence: Fence | None, tokens: int, run: str) -> None:
    async def go() -> None:
        with fenced(fence):
            await driver.write_versioned({"chat": {"max_output_tokens": tokens}},
                                         reason=run, action="cap_output_length", change_id=run)
    asyncio.run(go())


def test_the_file_records_the_fence_and_refuses_a_lower_token(driver: PolicyFileDriver):
    _write(driver, Fence(5, "RUN-1", "apply"), 256, "RUN-1")
    doc = yaml.safe_load(driver.path.read_text())
    assert doc["change"] == {"run": "RUN-1", "token": 5, "op": "apply"}
    before = driver.path.read_bytes()
    with pytest.raises(StaleFence, match="token 4: it has seen token 5 .from RUN-1."):
        _write(driver, Fence(4, "RUN-2", "apply"), 128, "RUN-2")
    assert driver.path.read_bytes() == before  # nothing written
    _write(driver, Fence(5, "RUN-3", "apply"), 128, "RUN-3")  # the same leader goes on
    log = [json.loads(x) for x in driver.changes_path.read_text().splitlines()]
    assert [(e["run"], e["token"], e["op"]) for e in log] == [
        ("RUN-1", 5, "apply"), ("RUN-3", 5, "apply")]


def test_an_unfenced_write_keeps_the_old_file_shape(driver: PolicyFileDriver):
    _write(driver, None, 256, "RUN-1")
    assert "change" not in yaml.safe_load(driver.path.read_text())
    assert not driver.changes_path.exists()


def test_raising_the_fence_changes_no_route_and_stops_the_deposed_leader(
        driver: PolicyFileDriver):
    _write(driver, Fence(1, "RUN-1", "apply"), 256, "RUN-1")
    before = driver.path.read_bytes()

    async def fence() -> None:
        with fenced(Fence(2, "RUN-1", "fence")):
            await driver.raise_fence()
    asyncio.run(fence())
    # Only the mark changed, every other byte is as it was.
    assert driver.path.read_bytes() == stamp_change(before, ChangeMark(run="RUN-1", token=2,
                                                                       op="fence"))
    assert yaml.safe_load(driver.path.read_text())["routes"]["chat"]["max_output_tokens"] == 256
    with pytest.raises(StaleFence):
        _write(driver, Fence(1, "RUN-4", "apply"), 64, "RUN-4")


def test_a_restore_gives_back_the_exact_bytes_but_never_the_old_fence(driver: PolicyFileDriver):
    original = driver.path.read_bytes()
    _write(driver, Fence(3, "RUN-1", "apply"), 256, "RUN-1")

    async def restore() -> bool:
        with fenced(Fence(4, "RUN-1", "revert")):
            return await driver.restore_version("RUN-1", reason="ttl")
    assert asyncio.run(restore())
    assert driver.path.read_bytes() == original + b"change: {run: RUN-1, token: 4, op: revert}\n"


def test_a_change_whose_log_line_was_lost_is_logged_by_the_next_write(driver: PolicyFileDriver):
    _write(driver, Fence(1, "RUN-1", "apply"), 256, "RUN-1")
    driver.changes_path.write_text("")  # killed between the replace and the log line
    _write(driver, Fence(1, "RUN-2", "apply"), 128, "RUN-2")
    runs = [json.loads(x)["run"] for x in driver.changes_path.read_text().splitlines()]
    assert runs == ["RUN-1", "RUN-2"]


def test_stamp_replaces_only_the_mark():
    raw = b"# keep me\nversion: 1\nchange:\n  run: RUN-1\n  token: 1\n  op: apply\nroutes: {}\n"
    out = stamp_change(raw, ChangeMark(run="RUN-2", token=2, op="revert"))
    assert out == b"# keep me\nversion: 1\nroutes: {}\nchange: {run: RUN-2, token: 2, op: revert}\n"


def test_one_top_message_per_incident_across_replicas(store_at):
    from bot.adapters.slack.thread_store import PENDING, ChatMessages
    from bot.core.messages import Message
    from bot.intake.alert import Alert

    with freeze_time(T0) as clock:
        store = store_at()
        inc = store.record_alert(Alert(source="generic", fingerprint="f", status="firing",
                                       labels={"alertname": "A"}, starts_at=T0),
                                 group_key="g", title="t", klass="k", severity="high")
        chat = ChatMessages(store)
        msg = Message("suggestion", inc.incident_id, "INC-1", "text")
        store.beat("host-a:1:1", role="leader")
        store.beat("host-b:2:2", role="follower")
        assert chat.claim_top("INC-1", "C1", msg, owner="host-a:1:1") is None  # a posts
        assert chat.claim_top("INC-1", "C1", msg, owner="host-b:2:2") == PENDING  # b waits
        assert chat.get("INC-1", "C1") is None  # nothing posted yet
        chat.record_post("INC-1", "C1", "1700.0001", msg)
        assert chat.claim_top("INC-1", "C1", msg, owner="host-b:2:2") == "1700.0001"
        # A claimer that died before posting: its claim lapses with its heartbeat.
        chat.claim_top("INC-1", "C2", msg, owner="host-a:1:1")
        clock.tick(timedelta(seconds=20))
        store.beat("host-b:2:2", role="leader")
        assert chat.claim_top("INC-1", "C2", msg, owner="host-b:2:2") is None


def test_a_new_outbox_item_wakes_a_listener_in_another_process(store_at):
    import threading

    from bot.intake.alert import Alert
    from bot.store.outbox import OUTBOX_CHANNEL

    leader, follower = store_at(), store_at()
    woken = threading.Event()
    stop = leader.db.listen(OUTBOX_CHANNEL, woken.set)
    if leader.dialect == "sqlite":
        assert stop is None  # one process on one file: nobody to wake
        return
    try:
        assert woken.wait(5)  # the listener's first look, for what it may have missed
        woken.clear()
        inc = follower.record_alert(Alert(source="generic", fingerprint="f", status="firing",
                                          labels={"alertname": "A"}, starts_at=T0),
                                    group_key="g", title="t", klass="k", severity="high")
        with follower.transaction():
            follower.add_outbox(inc.incident_id, "opened")
            assert not woken.wait(0.3)  # not before the commit
        assert woken.wait(5)
    finally:
        stop()


def test_the_same_alert_at_two_replicas_at_once_makes_one_incident(store_at):
    # Alertmanager delivering to every replica: the same alerts arrive at two
    # connections at the same moment. The write transaction makes it one incident.
    import threading

    from bot.intake.alert import Alert

    replicas = [store_at(), store_at()]
    alerts = [Alert(source="alertmanager", fingerprint=f"fp{i}", status="firing",
                    labels={"alertname": "A", "route": f"r{i % 5}"}, starts_at=T0)
              for i in range(40)]
    start = threading.Barrier(2)
    results: list[list[tuple[str, bool]]] = [[], []]

    def take(n: int) -> None:
        start.wait()
        for a in alerts:
            rec = replicas[n].record_alert(a, group_key=f"k|{a.labels['route']}", title="t",
                                           klass="k", severity="high")
            results[n].append((rec.incident_id, rec.created))

    threads = [threading.Thread(target=take, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = replicas[0]
    assert store.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 40
    assert store.count_incidents() == 5  # one per group, not one per replica
    created = [inc for r in results for inc, new in r if new]
    assert sorted(created) == sorted(set(created)) and len(created) == 5
    assert [inc for inc, _ in results[0]] == [inc for inc, _ in results[1]]


def test_a_process_that_exited_is_dead_even_before_its_parent_collects_it():
    import os
    import socket
    import subprocess
    import time

    from bot.base.claims import owner_alive

    child = subprocess.Popen(["sleep", "0"])
    name = f"{socket.gethostname()}:{child.pid}:0"
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    try:
        assert not owner_alive(name)  # a zombie: exited, not yet reaped
    finally:
        child.wait()
    assert not owner_alive(name)
    assert owner_alive(f"{socket.gethostname()}:{os.getpid()}:0")


def test_a_follower_stores_the_alert_and_leaves_the_announcement_to_the_leader(
        store_location):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from incident_env import Env, alert

    follower, leader = Env(db=store_location), Env(db=store_location)
    follower.runner.leader_id, leader.runner.leader_id = "follower", "leader"
    assert leader.store.take_lease("leader", TTL) is not None

    async def go() -> None:
        (ingested,) = await follower.engine.accept_alerts([alert()])
        assert ingested.outcome == "opened"
        assert await follower.engine.drain_outbox() == 0  # not its work
        assert not follower.published
        assert await leader.engine.drain_outbox() == 1
    asyncio.run(go())
    assert [m.kind for m in leader.published][:1] == ["suggestion"]
    assert not follower.published
    assert follower.store.pending_outbox() == []


def test_the_leaders_claims_are_not_settled_before_its_lease_runs_out(store_at):
    # A reconcile fences the target with the current token: the leader's own. Settling
    # the leader's claim while its lease runs would not stop its late write.
    with freeze_time(T0) as clock:
        store = store_at()
        store.replica_stale_after = TTL
        store.beat("host-x:1:1", role="leader")
        assert store.take_lease("host-x:1:1", TTL) is not None
        clock.tick(timedelta(seconds=9))  # no beat for 9s, lease runs to 10s
        store.replica_stale_after = timedelta(seconds=5)
        assert store.holder_alive("host-x:1:1")
        clock.tick(timedelta(seconds=2))  # lease over, heartbeat stale
        assert not store.holder_alive("host-x:1:1")


def test_the_store_metrics_read_the_same_on_either_backend(store_location):
    # /metrics counts actions, refusals and background failures with JSON lookups in
    # SQL: each database has its own syntax for them.
    import sys

    from prometheus_client.parser import text_string_to_metric_families

    from bot.adapters.service_metrics import ServiceMetrics

    sys.path.insert(0, str(Path(__file__).parent))
    from incident_env import Env, alert

    env = Env(db=store_location)

    async def go() -> str:
        await env.engine.handle_alerts([alert()])
        run, _ = await env.engine.run_step("INC-1", None, None, "alice")
        return run.state
    run_state = asyncio.run(go())
    env.store.add_event("INC-1", "guard_refused", "x", actor="bot", data={"guard": "cooldown"})
    env.store.add_event("INC-1", "background_failed", "y", actor="bot", data={"kind": "opened"})
    text = ServiceMetrics(env.store).render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("llm_incident_store_up", ())] == 1.0
    assert any(name == "llm_incident_actions_total" and ("result", run_state) in labels
               for name, labels in samples)
    assert samples[("llm_incident_guard_refusals_total", (("guard", "cooldown"),))] == 1.0
    assert samples[("llm_incident_background_failures_total", (("kind", "opened"),))] == 1.0
