"""Drills: scoring, the lifecycle on the in-process sandbox for every class, and what goes wrong.

The sandbox runs in process behind httpx's ASGI transport (no sockets), the drill
runs 60x faster than real time with the stand-in detector, and the responders are
scripted. Nothing here asserts on durations.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fakes import RecordingNotifier

from actions.drivers.policy_file import PolicyFileDriver
from actions.policy import ServingPolicy, split_subject
from bot.adapters.commands import execute
from bot.adapters.commands.context import Context
from bot.adapters.settings import SHIPPED_PLAYBOOKS, Settings
from bot.base.errors import InputError
from bot.core.engine import Engine
from bot.core.runner import Runner
from bot.intake.alert import Alert
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store
from drills import scoring
from drills.detector import STAND_IN_NOTE, render_annotation
from drills.harness import DrillService, sandbox_app, stand_in
from drills.report import render_report
from drills.runner import DrillOptions, DrillRunner
from drills.sandbox.policy import seed_policy_text
from drills.scenario import SCENARIOS_DIR, ScenarioError, load_scenario, load_scenarios
from drills.schedule import announcement, attach_drill_schedule, drill_trigger, pick_class
from drills.signals import Scrape, Scrapes, evaluate, histogram_quantile, parse_query
from drills.store import DrillStore
from drills.undo import recover_interrupted

URL = "http://127.0.0.1:9"  # never dialled: the ASGI transport answers
OPTS = DrillOptions(auto_respond=True, speed=60.0, tick_s=0.1, max_warmup_s=60.0)
SCENARIOS = load_scenarios(SCENARIOS_DIR)
POLICY = seed_policy_text({"chat": {"max_concurrency": 64}})


# --- scoring ---------------------------------------------------------------------------

DL = scoring.Deadlines(detect_s=300, acknowledge_s=600, mitigate_s=1200)


def measured(**kw):
    base = dict(detect_s=60, acknowledge_s=120, mitigate_s=300, suggested_playbook="p",
                expected_playbook="p", recovered=True, rolled_back=True)
    return scoring.Measured(**{**base, **kw})


def test_a_drill_within_every_deadline_scores_100():
    s = scoring.score(measured(), DL)
    assert s.total == 100 and s.passed
    assert [c.name for c in s.components] == list(scoring.WEIGHTS)


def test_late_steps_lose_points_linearly_until_twice_the_deadline():
    half_late = scoring.score(measured(detect_s=450), DL)  # 1.5x the deadline: half of 20
    assert half_late.total == 90
    assert scoring.score(measured(detect_s=600), DL).total == 80  # 2x: nothing
    assert scoring.score(measured(detect_s=None), DL).total == 80
    assert "past the" in half_late.components[0].detail


def test_wrong_playbook_and_missing_rollback_cost_their_weights():
    s = scoring.score(measured(suggested_playbook="other", rolled_back=False), DL)
    assert s.total == 100 - scoring.WEIGHTS["playbook"] - scoring.WEIGHTS["rollback"]
    well, badly = scoring.went_well_and_badly(s.components)
    assert any(b.startswith("playbook: suggested other, expected p") for b in badly)
    assert any(w.startswith("detect:") for w in well)
    assert not s.passed or s.total >= scoring.PASS_SCORE


def test_trend_compares_the_latest_score_with_the_ones_before():
    assert scoring.trend([50, 60, 90]).direction == "improving"
    assert scoring.trend([90, 90, 60]).direction == "worsening"
    assert scoring.trend([80, 82, 81]).direction == "steady"
    assert scoring.trend([80]).direction == "not enough drills"
    assert scoring.trend(list(range(20)), last_n=3).scores == (17, 18, 19)


# --- the stand-in's PromQL subset --------------------------------------------------------


def test_rates_between_scrapes_and_the_query_shapes_scenarios_use():
    s = Scrapes(window=60)
    name = "litellm_spend_metric_total"
    labels = (("model", "chat-large"), ("requested_model", "chat"))
    s.add(Scrape(0, {name: {labels: 1.0}}))
    assert evaluate('max(llm_incident:route:spend_usd_per_hour{route="chat"}) or vector(0)',
                    s, {}) == 0  # one scrape: no rate yet, the `or vector(0)` answers
    s.add(Scrape(36, {name: {labels: 1.2}}))
    value = evaluate('max(llm_incident:route:spend_usd_per_hour{route="chat"})', s, {})
    assert value == pytest.approx(3600 * 0.2 / 36)
    assert evaluate('max(llm_incident:route:spend_usd_per_hour{route="other"})', s, {}) is None


def test_unsupported_queries_are_refused_not_guessed():
    with pytest.raises(InputError, match="cannot evaluate"):
        parse_query("rate(x[5m]) / 2")
    with pytest.raises(InputError, match="label=\"value\""):
        parse_query('max(llm_incident:route:spend_usd_per_hour{route=~"c.*"})')
    with pytest.raises(InputError, match="cannot compute"):
        evaluate("max(llm_incident:route:unknown)", Scrapes(window=10), {})


def test_histogram_quantile_interpolates_like_prometheus():
    assert histogram_quantile(0.5, {1.0: 50, 2.0: 100, float("inf"): 100}) == 1.0
    assert histogram_quantile(0.75, {1.0: 50, 2.0: 100, float("inf"): 100}) == 1.5
    assert histogram_quantile(0.99, {1.0: 0, 2.0: 10, float("inf"): 100}) == 2.0


def test_annotations_fill_labels_and_values_and_drop_query_templates():
    labels = {"route": "chat"}
    assert render_annotation("route {{ $labels.route }} at {{ printf \"%.2f\" $value }}",
                             labels, 61.234) == "route chat at 61.23"
    assert render_annotation("{{ $value | humanizePercentage }}", labels, 0.25) == "25%"
    assert render_annotation("{{ with query `x` }}{{ . }}{{ end }}", labels, 1) == ""


# --- drills on the in-process sandbox --------------------------------------------------


def make_engine(policy: Path) -> tuple[Engine, RecordingNotifier]:
    store = Store(None)
    registry = PlaybookRegistry()
    assert registry.reload(SHIPPED_PLAYBOOKS) == []
    runner = Runner(store, {"default": PolicyFileDriver(policy, create_missing=True)}, None)
    notifier = RecordingNotifier()
    return Engine(store, registry, runner, notifier=notifier), notifier


async def drill(scenario, tmp_path: Path, *, on_phase=None, policy_text: str = POLICY,
                seed: int = 11):
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(policy_text)
    engine, notifier = make_engine(policy)
    app = sandbox_app(policy, speed=OPTS.speed, seed=seed, quality_ttl_s=60)
    lines: list[str] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        runner = DrillRunner(engine, DrillStore(engine.store), target_url=URL, client=client,
                             observer=stand_in(URL, client, OPTS), policy_path=policy,
                             options=OPTS, say=lines.append,
                             on_phase=(lambda phase, d: on_phase(phase, d, policy)) if on_phase
                             else None)
        result = await runner.run(scenario)
        faults = (await client.get(f"{URL}/faults")).json()["faults"]
    return result, engine, notifier, faults, policy, lines


# Release drills (a canary the release guard rolls back) are in test_drill_releases.py.
@pytest.mark.parametrize("scenario_id", sorted(k for k, s in SCENARIOS.items()
                                               if s.injection.release is None))
def test_every_class_drills_end_to_end(scenario_id, tmp_path):
    scenario = SCENARIOS[scenario_id]
    seen: dict[str, str] = {}

    def at_phase(phase, d, policy):
        if phase == "mitigated":
            seen["policy"] = policy.read_text()

    d, engine, notifier, faults, policy, lines = asyncio.run(
        drill(scenario, tmp_path, on_phase=at_phase))
    assert d.status == "completed", d.reason
    assert d.detected_at and d.incident_id
    assert engine.store.incident(d.incident_id).is_drill
    assert d.suggested_playbook == scenario.expect.playbook
    runs = [r for r in engine.store.runs(incident_id=d.incident_id)
            if engine.store.mitigation(r.id)]
    assert [r.step_id for r in runs] == [scenario.expect.step]
    expected = runs[0].plan.updates("after")
    applied = yaml.safe_load(seen["policy"])
    for subject, fields in expected.items():
        section, name = split_subject(subject)  # a route, or a customer
        for field, value in fields.items():
            # the step reached the file the sandbox reads
            assert applied[section][name][field] == value
    if scenario.injection.fault.customer:  # a customer's fault: only that customer limited
        assert expected == {f"customer/{scenario.injection.fault.customer}":
                            {"max_output_tokens": 64}}
        before = ServingPolicy.model_validate(yaml.safe_load(POLICY))
        assert ServingPolicy.model_validate(applied).routes == before.routes
    assert d.recovered_at is not None  # the steady state held again
    assert faults == [] and not d.injection_active and d.rolled_back_at
    assert policy.read_text() == POLICY  # restored byte for byte
    assert all(r.state == "reverted" for r in runs)
    assert d.score is not None and d.score >= scoring.PASS_SCORE
    assert any(STAND_IN_NOTE in line for line in lines)
    assert notifier.messages and all(m.is_drill for m in notifier.messages)
    report = render_report(DrillStore(engine.store), d.id, scenario)
    assert f"# Drill report {d.id}: {d.score}/100" in report
    assert "scripted" in report


def test_a_scenario_with_an_unknown_fault_fails_to_load_naming_the_field(tmp_path):
    text = (SCENARIOS_DIR / "runaway_cost.yaml").read_text().replace(
        "kind: token_blowup", "kind: token_explosion")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert "injection.fault.kind" in str(err.value) and "bad.yaml" in str(err.value)


def test_a_fault_the_target_refuses_fails_the_drill_and_touches_nothing(tmp_path):
    scenario = SCENARIOS["runaway-cost"].model_copy(deep=True)
    scenario.injection.fault.route = "no-such-route"
    scenario.traffic.routes.append("no-such-route")
    d, engine, _, faults, policy, _ = asyncio.run(drill(scenario, tmp_path))
    assert d.status == "failed" and "route" in d.reason and "refused the fault" in d.reason
    assert faults == [] and policy.read_text() == POLICY and not d.injection_active
    assert d.incident_id is None


def test_a_tripped_stop_condition_aborts_and_rolls_back(tmp_path):
    scenario = SCENARIOS["runaway-cost"].model_copy(deep=True)
    scenario.stop_conditions[0].abort_if = "> 30"  # the blow-up's ~60 USD/h trips it
    d, engine, _, faults, policy, lines = asyncio.run(drill(scenario, tmp_path))
    assert d.status == "aborted" and "stop condition" in d.reason
    assert d.score is None
    assert faults == [] and policy.read_text() == POLICY
    assert any("aborted" in line for line in lines)
    if d.incident_id:  # tripped after detection: nothing was fixed, so cancelled
        assert engine.store.incident(d.incident_id).status == "cancelled"


def test_an_unhealthy_target_aborts_before_anything_is_injected(tmp_path):
    scenario = SCENARIOS["runaway-cost"].model_copy(deep=True)
    scenario.steady_state.expect = "> 5"  # no traffic yet: 0 fails it
    d, *_ , policy, _ = asyncio.run(drill(scenario, tmp_path))
    assert d.status == "aborted" and "unhealthy before the drill" in d.reason
    assert d.injected_at is None and d.rolled_back_at is None


def test_a_corrupt_policy_file_mid_drill_is_noticed_and_the_drill_survives(tmp_path):
    def corrupt(phase, d, policy):
        if phase == "injected":
            policy.write_text("version: 1\nroutes: [this is: not a mapping\n")

    d, engine, _, faults, policy, lines = asyncio.run(
        drill(SCENARIOS["runaway-cost"], tmp_path, on_phase=corrupt))
    assert d.status in ("failed", "completed")  # it ends, recorded, instead of crashing
    assert any("policy-error" in line and "last good" in line for line in lines)
    assert faults == [] and policy.read_text() == POLICY  # the snapshot put the file back


def dead_owner() -> str:
    """``host:pid`` of a process that has exited (a drill's owner that died)."""
    import socket
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def test_a_drill_whose_process_is_alive_is_never_taken_for_interrupted(tmp_path):
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(POLICY)
    engine, _ = make_engine(policy)
    drills = DrillStore(engine.store)
    drills.create(scenario_id="runaway-cost", klass="runaway_cost", target="sandbox",
                  mode="auto", detector="stand-in", speed=60)  # owned by this process
    other_host = drills.create(scenario_id="runaway-cost", klass="runaway_cost",
                               target="sandbox", mode="auto", detector="stand-in", speed=60,
                               owner="elsewhere.example:4242")
    dead = drills.create(scenario_id="runaway-cost", klass="runaway_cost", target="sandbox",
                         mode="auto", detector="stand-in", speed=60, owner=dead_owner())
    # A third process starting: only the drill whose process is gone is recovered.
    assert [d.id for d in drills.orphaned()] == [dead.id]
    # Another host's drill is taken for dead only once its heartbeat is stale.
    from datetime import timedelta as td
    assert [d.id for d in drills.orphaned(stale_after=td(seconds=-1))] == [other_host.id, dead.id]


def test_an_interrupted_drill_is_rolled_back_and_marked_aborted_at_the_next_start(tmp_path):
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(POLICY)
    engine, _ = make_engine(policy)
    drills = DrillStore(engine.store)
    app = sandbox_app(policy, speed=60)

    async def scenario() -> tuple[list, list[str]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            # What a drill does before it is killed: record the snapshot, inject, change policy.
            d = drills.create(scenario_id="runaway-cost", klass="runaway_cost", target="sandbox",
                              mode="auto", detector="stand-in", speed=60, owner=dead_owner())
            [opened] = await engine.handle_alerts([Alert(
                source="generic", fingerprint="drill-1", status="firing",
                labels={"alertname": "LLMCostBurnRateHigh", "route": "chat"},
                starts_at=datetime.now(UTC))], is_drill=True)
            drills.update(d.id, incident_id=opened.incident_id)
            drills.update(d.id, injection={"base_url": URL, "policy_path": str(policy),
                                           "policy_text": POLICY, "fault_ids": []},
                          injection_active=True)
            resp = await client.post(f"{URL}/faults", json={"kind": "token_blowup",
                                                            "route": "chat", "factor": 6})
            drills.update(d.id, injection={**drills.get(d.id).injection,
                                           "fault_ids": [resp.json()["id"]]})
            policy.write_text("version: 1\nroutes:\n  chat:\n    prompt_version: v42\n")
            # ... the process dies here; a new one starts:
            lines: list[str] = []
            recovered = await recover_interrupted(engine, drills, client, lines.append)
            faults = (await client.get(f"{URL}/faults")).json()["faults"]
            return recovered, faults, lines

    recovered, faults, lines = asyncio.run(scenario())
    assert len(recovered) == 1 and recovered[0].status == "aborted"
    assert "interrupted" in recovered[0].reason and not recovered[0].injection_active
    assert faults == [] and policy.read_text() == POLICY
    assert lines and "rolled back" in lines[0]
    assert drills.with_active_injection() == []  # a second start finds nothing to do
    incident = engine.store.incident(recovered[0].incident_id)
    assert incident.status == "cancelled" and incident.is_drill  # not left open


# --- the verbs and the schedule ----------------------------------------------------------


def test_drill_verbs_list_run_history_and_report(tmp_path):
    settings = Settings(db_path=tmp_path / "bot.db", policy_path=tmp_path / "real-policy.yaml")
    engine, _ = make_engine(settings.policy_path)
    fixed = datetime(2027, 1, 5, 10, tzinfo=UTC)
    service = DrillService(engine, tmp_path / "drills", next_run=lambda: fixed)
    ctx = Context(actor="alice", playbooks_dir=SHIPPED_PLAYBOOKS, open_engine=lambda: engine,
                  open_drills=lambda _engine: service)

    async def go():
        listed = await execute("drill list", ctx)
        bad = await execute("drill run no-such-class", ctx)
        unknown = await execute("drill dance", ctx)
        history = await execute("drill history", ctx)
        return listed, bad, unknown, history

    listed, bad, unknown, empty = asyncio.run(go())
    assert listed.ok and "runaway_cost" in listed.text and "2027-01-05 10:00" in listed.text
    assert len(listed.data["scenarios"]) == len(SCENARIOS)
    assert bad.exit_code == 2 and "no drill scenario or class 'no-such-class'" in bad.text
    assert unknown.exit_code == 2 and "no drill command 'dance'" in unknown.text
    assert empty.text == "no drills yet"
    assert not (tmp_path / "real-policy.yaml").exists()  # drills never touch the real policy


def test_schedule_defaults_to_the_first_tuesday_at_ten_and_announces_ahead():
    trigger = drill_trigger(None, "Europe/Berlin")
    nxt = trigger.get_next_fire_time(None, datetime(2027, 3, 1, tzinfo=UTC))
    assert (nxt.year, nxt.month, nxt.day, nxt.hour) == (2027, 3, 2, 10)  # 2 March 2027: a Tue
    assert nxt.weekday() == 1 and str(nxt.tzinfo) == "Europe/Berlin"
    assert drill_trigger("0 14 * * wed", "UTC").get_next_fire_time(
        None, datetime(2027, 3, 1, tzinfo=UTC)).day == 3
    with pytest.raises(InputError, match="LLM_INCIDENT_DRILL_TZ"):
        drill_trigger(None, "Mars/Olympus")
    with pytest.raises(InputError, match="LLM_INCIDENT_DRILL_CRON"):
        drill_trigger("every tuesday", "UTC")

    aps = AsyncIOScheduler(timezone=UTC)
    now = datetime(2027, 3, 1, 9, tzinfo=UTC)

    async def nothing(_klass: str) -> None:
        return None

    attach_drill_schedule(aps, run_drill=nothing, choose_class=lambda: "latency_spike",
                          notifier=None, now=lambda: now)
    jobs = {j.id: j for j in aps.get_jobs()}
    assert set(jobs) == {"drill:monthly", "drill:monthly:announce:86400",
                         "drill:monthly:announce:3600"}
    assert jobs["drill:monthly:announce:3600"].trigger.run_date == datetime(2027, 3, 2, 9,
                                                                            tzinfo=UTC)
    msg = announcement(datetime(2027, 3, 2, 10, tzinfo=UTC), "latency_spike", timedelta(hours=1))
    assert msg.kind == "drill" and msg.is_drill and "1 hour" in msg.title


def test_the_class_drilled_longest_ago_goes_next():
    t = datetime(2027, 1, 1, tzinfo=UTC)
    assert pick_class(["a", "b"], {"a": t}) == "b"
    assert pick_class(["a", "b"], {"a": t, "b": t - timedelta(days=30)}) == "b"
    with pytest.raises(InputError):
        pick_class([], {})


def test_crontab_weekday_numbers_mean_what_crontab_means():
    from datetime import datetime as _dt

    from drills.schedule import drill_trigger, next_drill

    # 2 is Tuesday in crontab (0 and 7 are Sunday); APScheduler alone would read Wednesday.
    trig = drill_trigger("0 10 * * 2", "UTC")
    when = next_drill(trig, _dt(2026, 11, 29, 12, 0, tzinfo=trig.timezone))
    assert (when.weekday(), when.hour) == (1, 10)
    sunday = next_drill(drill_trigger("0 10 * * 7", "UTC"), when)
    assert sunday.weekday() == 6


def test_a_person_answering_a_drill_acts_on_the_drill_target_never_production(tmp_path):
    """Responders use the normal engine (its `default` target is production), as the
    CLI and Slack do; the drill incident still sends their step to the sandbox."""
    from drills.targets import drill_targets

    sandbox_policy = tmp_path / "serving-policy.yaml"
    sandbox_policy.write_text(POLICY)
    production = tmp_path / "production-policy.yaml"
    production.write_text(POLICY.replace("max_concurrency: 64", "max_concurrency: 32"))
    before = production.read_bytes()
    store = Store(None)
    registry = PlaybookRegistry()
    assert registry.reload(SHIPPED_PLAYBOOKS) == []
    drill_runner = Runner(store, {"default": PolicyFileDriver(sandbox_policy)}, None,
                          drill_targets=drill_targets(store))
    drill_side = Engine(store, registry, drill_runner, notifier=RecordingNotifier())
    people = Engine(store, registry, Runner(store, {"default": PolicyFileDriver(production)},
                                            None, drill_targets=drill_targets(store)))
    seen: dict = {}

    async def respond(incident_id: str) -> None:
        await people.acknowledge(incident_id, "alice")
        run = await people.plan_step(incident_id, actor="alice")
        await people.runner.approve(run.id, "bob")
        run = await people.runner.apply(run.id, actor="bob")
        seen.update(run=run, sandbox=sandbox_policy.read_text(), production=production.read_bytes())

    def on_phase(phase, d):
        if phase == "detected":
            seen["task"] = asyncio.get_running_loop().create_task(respond(d.incident_id))

    async def main():
        app = sandbox_app(sandbox_policy, speed=60.0, seed=11, quality_ttl_s=60)
        opts = DrillOptions(auto_respond=False, speed=60.0, tick_s=0.1, max_warmup_s=60.0)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            runner = DrillRunner(drill_side, DrillStore(store), target_url=URL, client=client,
                                 observer=stand_in(URL, client, opts), policy_path=sandbox_policy,
                                 options=opts, say=lambda _: None, on_phase=on_phase)
            return await runner.run(SCENARIOS["runaway-cost"])

    d = asyncio.run(main())
    run = seen["run"]
    assert run.scope == "drill" and run.target == f"drill:{d.id}" and run.state == "applied"
    assert "max_output_tokens: 256" in seen["sandbox"]  # applied to the sandbox...
    assert seen["production"] == before == production.read_bytes()  # ...never to production
    assert store.run(run.id).state == "reverted"  # the drill's rollback undid it
    assert d.status == "completed" and sandbox_policy.read_text() == POLICY


def test_drill_metrics_by_class_outcome_last_score_and_time(tmp_path):
    import shutil
    import subprocess

    from bot.adapters.service_metrics import ServiceMetrics

    d, engine, *_ = asyncio.run(drill(SCENARIOS["runaway-cost"], tmp_path))
    text = ServiceMetrics(engine.store).render().decode()
    assert 'llm_incident_drills_total{class="runaway_cost",outcome="completed"} 1.0' in text
    assert f'llm_incident_drill_last_score{{class="runaway_cost"}} {float(d.score)}' in text
    assert 'llm_incident_drill_last_timestamp_seconds{class="runaway_cost"}' in text
    # drill incidents and actions are their own series, never production's
    assert 'llm_incident_incidents{class="runaway_cost",drill="true",state="resolved"}' in text
    assert 'drill="false"' not in text.split("llm_incident_actions_total")[-1].split("\n#")[0]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by tests/run.sh"
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fault_nobody_cures_never_scores_the_recovery(tmp_path, seed):
    # The responder applies a real step that does not cure a token blow-up (halving
    # concurrency): the spend stays over budget, so recovery must not be scored.
    scenario = SCENARIOS["runaway-cost"].model_copy(deep=True)
    scenario.expect.step = "lower-concurrency"
    d, engine, _, faults, policy, lines = asyncio.run(drill(scenario, tmp_path, seed=seed))
    assert d.mitigated_at is not None and d.recovered_at is None
    assert d.status == "failed" and "not recovered" in (d.reason or "")
    recovery = next(c for c in d.breakdown if c["name"] == "recovery")
    assert recovery["points"] == 0
    assert faults == [] and policy.read_text() == POLICY  # rolled back all the same


def _claims(store: Store, owner: str):
    from drills.schedule import MISSED

    drills = DrillStore(store)
    return (lambda when, missed: drills.claim_firing(when, MISSED if missed else owner),
            drills.is_claimed)


def test_one_drill_per_firing_however_many_processes_share_the_store():
    from apscheduler.schedulers.background import BackgroundScheduler

    store = Store(None)
    ran: list[str] = []
    fired = datetime(2027, 3, 2, 10, tzinfo=UTC)  # a first Tuesday, 10:00
    jobs = []
    for owner in ("host-a:1", "host-b:2"):  # two `serve` processes on one store
        aps = BackgroundScheduler(timezone=UTC)

        async def run_drill(klass: str, owner: str = owner) -> None:
            ran.append(owner)

        claim, is_claimed = _claims(store, owner)
        attach_drill_schedule(aps, run_drill=run_drill, choose_class=lambda: "latency_spike",
                              notifier=None, now=lambda: fired + timedelta(seconds=2),
                              claim=claim)
        jobs.append(aps.get_job("drill:monthly").func)
    for job in jobs:  # both fire for the same scheduled time
        asyncio.run(job())
    assert ran == ["host-a:1"]
    assert DrillStore(store).firings() == [(fired, "host-a:1")]


def test_a_firing_missed_while_nothing_ran_is_caught_up_or_recorded():
    from apscheduler.schedulers.background import BackgroundScheduler

    fired = datetime(2027, 3, 2, 10, tzinfo=UTC)
    for late, expect_job, expect_claim in ((timedelta(hours=2), "drill:monthly:catch-up", None),
                                          (timedelta(hours=9), "drill:monthly:missed", "missed")):
        store = Store(None)
        aps = BackgroundScheduler(timezone=UTC)
        claim, is_claimed = _claims(store, "host-a:1")

        async def nothing(_klass: str) -> None:
            return None

        attach_drill_schedule(aps, run_drill=nothing, choose_class=lambda: "latency_spike",
                              notifier=None, now=lambda late=late: fired + late, claim=claim,
                              is_claimed=is_claimed, since=fired - timedelta(days=30))
        assert aps.get_job(expect_job) is not None, late
        claimed = dict(DrillStore(store).firings())
        assert claimed.get(fired) == expect_claim, late
    # A store that did not exist at the firing has nothing to catch up.
    store = Store(None)
    aps = BackgroundScheduler(timezone=UTC)
    claim, is_claimed = _claims(store, "host-a:1")
    attach_drill_schedule(aps, run_drill=nothing, choose_class=lambda: "latency_spike",
                          notifier=None, now=lambda: fired + timedelta(hours=1), claim=claim,
                          is_claimed=is_claimed, since=fired + timedelta(minutes=30))
    assert aps.get_job("drill:monthly:catch-up") is None
