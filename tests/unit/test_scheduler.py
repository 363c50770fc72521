"""The scheduler: jobs driven directly on an injected clock, plus one real start/shutdown."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from incident_env import Env, alert, provider_alert

from bot.adapters.scheduler import Scheduler


def run(coro):
    return asyncio.run(coro)


def applied_cap(env: Env) -> str:
    inc = run(env.engine.handle_alerts([alert()]))[0].incident_id
    r = run(env.engine.plan_step(inc, "runaway-cost", "cap-output", actor="alice"))
    run(env.runner.approve(r.id, "bob"))
    r = run(env.runner.apply(r.id, actor="alice"))
    run(env.engine.after_run(r))
    return r.id


def test_start_and_shutdown_really_run_the_apscheduler_loop():
    env = Env()
    sched = Scheduler(env.engine)

    async def main():
        await sched.start()
        started = sched.running
        jobs = sched.jobs()
        await sched.shutdown()
        return started, jobs, sched.running

    started, jobs, after = run(main())
    assert started and not after
    assert "poll" in jobs and jobs["poll"] is not None


def test_restart_runs_an_overdue_ttl_revert_at_start(tmp_path):
    db = tmp_path / "incidents.db"
    first = Env(db=db)
    run_id = applied_cap(first)
    assert first.driver.policy.route("chat").max_output_tokens == 256
    first.store.close()
    # The bot was down past the 2h TTL; a new engine opens the same file.
    first.clock.advance(hours=3)
    second = Env(db=db, clock=first.clock, driver=first.driver)
    sched = Scheduler(second.engine)

    async def main():
        await sched.start()
        jobs = sched.jobs()
        await sched.shutdown()
        return jobs

    jobs = run(main())
    assert second.store.run(run_id).state == "reverted"
    assert second.driver.policy.route("chat").max_output_tokens == 1024
    assert not any(j.startswith("timer:") for j in jobs)
    [msg] = second.published
    assert msg.kind == "result" and msg.title == f"INC-1 {run_id} reverted"
    assert "TTL of 2h expired" in msg.text


def test_timers_are_rebuilt_from_the_store_and_refreshed_after_an_apply():
    env = Env()
    sched = Scheduler(env.engine)
    sched.refresh()
    assert not any(j.startswith("timer:") for j in sched.jobs())
    run_id = applied_cap(env)  # after_run tells the scheduler (change listener)
    ttl_due = env.store.mitigation(run_id).ttl_due_at
    assert sched.jobs()[f"timer:ttl:{run_id}"] == ttl_due
    assert f"timer:verify:{run_id}" in sched.jobs()
    run(env.runner.revert(run_id, actor="alice", reason="done"))
    sched.refresh()
    assert not any(j.startswith("timer:") for j in sched.jobs())


def test_verification_passing_early_is_recorded_and_the_incident_is_mitigated():
    env = Env()
    sched = Scheduler(env.engine)
    item = run(env.engine.handle_alerts([provider_alert()]))[0]
    env.metrics.set(env.store.run("RUN-1").verify_query, 0.01)
    env.notifier.clear()
    env.clock.advance(minutes=2)  # well inside `within: 10m`
    changed = run(sched.check_verifications())
    assert [r.state for r in changed] == ["verified"]
    run(env.engine.sync_lifecycle())
    assert env.store.incident(item.incident_id).status == "mitigated"
    titles = [m.title for m in env.published]
    assert titles == ["INC-1 RUN-1 verified", "INC-1 mitigated"]


def test_a_failing_verification_is_left_alone_until_its_deadline():
    env = Env()
    sched = Scheduler(env.engine)
    run(env.engine.handle_alerts([provider_alert()]))
    env.metrics.set(env.store.run("RUN-1").verify_query, 0.5)
    env.clock.advance(minutes=2)
    assert run(sched.check_verifications()) == []
    env.clock.advance(minutes=9)
    run(sched.poll())
    assert env.store.run("RUN-1").state == "reverted"  # on_fail: revert
    assert env.driver.policy.route("chat").fallback is None


def test_approval_expiry():
    env = Env()
    sched = Scheduler(env.engine)
    inc = run(env.engine.handle_alerts([alert()]))[0].incident_id
    approved = run(env.engine.plan_step(inc, "runaway-cost", "cap-output", actor="alice"))
    run(env.runner.approve(approved.id, "bob"))
    waiting = run(env.engine.plan_step(inc, "runaway-cost", "lower-concurrency", actor="alice"))
    env.notifier.clear()
    env.clock.advance(minutes=14)
    assert run(sched.expire_approvals()) == []
    env.clock.advance(minutes=2)
    expired = run(sched.expire_approvals())
    assert sorted(r.id for r in expired) == sorted([approved.id, waiting.id])
    assert all(env.store.run(r.id).state == "expired" for r in expired)
    texts = {r.id: env.store.run_events(r.id)[-1].text for r in expired}
    assert "approval by bob expired" in texts[approved.id]
    assert "nobody approved it within 15m" in texts[waiting.id]
    assert {m.kind for m in env.published} == {"result"}
    assert all(m.buttons[0].action == "approve" for m in env.published)
    assert run(sched.expire_approvals()) == []  # once only
    # Expired is not final: approving again makes the run usable.
    assert run(env.runner.approve(waiting.id, "bob")).state == "approved"


def test_reminders_for_unacknowledged_incidents_only():
    env = Env()
    sched = Scheduler(env.engine, reminder_every=timedelta(minutes=10))
    inc = run(env.engine.handle_alerts([alert()]))[0].incident_id
    other = run(env.engine.handle_alerts([provider_alert()]))[0].incident_id  # mitigating
    env.notifier.clear()
    env.clock.advance(minutes=9)
    assert run(sched.send_reminders()) == []
    env.clock.advance(minutes=1)
    [msg] = run(sched.send_reminders())
    assert msg.kind == "reminder" and msg.incident_id == inc and "10m" in msg.text
    assert [(b.action, b.value) for b in msg.buttons] == [("ack", inc)]
    assert run(sched.send_reminders()) == []  # not again until reminder_every passed
    # A restarted scheduler reads the last reminder from the timeline: no burst.
    assert run(Scheduler(env.engine).send_reminders()) == []
    env.clock.advance(minutes=10)
    assert len(run(sched.send_reminders())) == 1
    run(env.engine.acknowledge(inc, "alice"))
    env.clock.advance(minutes=30)
    assert run(sched.send_reminders()) == []
    assert "reminder" not in [e.kind for e in env.store.timeline(other)]


def test_a_failing_job_is_logged_and_the_others_still_run(caplog):
    env = Env()
    sched = Scheduler(env.engine)
    run(env.engine.handle_alerts([alert()]))

    async def broken():
        raise RuntimeError("database on fire")

    env.runner.run_due = broken
    env.clock.advance(minutes=11)
    with caplog.at_level(logging.ERROR, logger="bot.adapters.scheduler"):
        run(sched.poll())
    assert "run_due failed" in caplog.text and "database on fire" in caplog.text
    assert "reminder" in [e.kind for e in env.store.timeline("INC-1")]


def test_tick_does_what_the_timers_do_incident_status_included():
    from bot.adapters.commands import Context, execute

    env = Env()
    item = run(env.engine.handle_alerts([provider_alert()]))[0]
    env.metrics.set(env.store.run("RUN-1").verify_query, 0.01)
    env.clock.advance(minutes=2)
    assert env.store.incident(item.incident_id).status == "mitigating"
    ctx = Context(actor="cron", playbooks_dir=Path("."), open_engine=lambda: env.engine)
    result = run(execute(["tick"], ctx))
    assert result.ok and "RUN-1 -> verified" in result.text
    assert env.store.incident(item.incident_id).status == "mitigated"


def test_a_change_written_by_another_process_gets_its_timer_within_a_watch():
    env = Env()
    sched = Scheduler(env.engine)
    run(sched.watch_store())  # the first look records the change counter
    env.engine._listeners.clear()  # the apply happens in another process: no listener here
    run_id = applied_cap(env)
    assert f"timer:ttl:{run_id}" not in sched.jobs()
    assert run(sched.watch_store()) is True
    assert f"timer:ttl:{run_id}" in sched.jobs()
    assert run(sched.watch_store()) is False  # nothing new since


def test_a_failed_announcement_is_on_the_timeline_counted_and_retried_by_the_poll(
        monkeypatch, caplog):
    from bot.adapters.service_metrics import ServiceMetrics

    env = Env()
    real = env.engine.latest_alert
    calls = {"n": 0}

    def flaky(incident_id):  # the first announcement fails half way
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("diagnose went wrong")
        return real(incident_id)

    monkeypatch.setattr(env.engine, "latest_alert", flaky)
    inc = run(env.engine.handle_alerts([alert()]))[0].incident_id
    assert not [m for m in env.published if m.kind == "suggestion"]
    (failed,) = [e for e in env.store.timeline(inc) if e.kind == "background_failed"]
    assert "announcing the incident" in failed.text and "attempt 1 of 3" in failed.text
    body = ServiceMetrics(env.store).render().decode()
    assert 'llm_incident_background_failures_total{kind="opened"} 1.0' in body
    run(Scheduler(env.engine).poll())  # the next poll retries it, once
    assert [m.kind for m in env.published].count("suggestion") == 1
    assert env.store.pending_outbox() == []
    assert "outbox item" in caplog.text  # logged with its traceback


def test_tick_does_the_outbox_work_a_dead_process_left():
    env = Env()
    inc = env.engine.ingest([alert()])[0].incident_id  # committed; its process died here
    assert not env.published
    run(Scheduler(env.engine).tick())
    assert [m.kind for m in env.published] == ["suggestion"]
    assert env.store.pending_outbox() == []
    assert env.store.incident(inc).status == "open"
