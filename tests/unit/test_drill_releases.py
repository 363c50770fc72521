"""Bad-release drills: a fault shipped as a canary the release guard must roll back
before full rollout, on the drill's own target and never on production.

The drills run on the in-process sandbox (its ASGI app, a clock at drill speed) with
the drill's own stand-in detector: the judge reads its samples from the drill's
scrapes of the sandbox.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from fakes import RecordingNotifier

from actions.drivers.policy_file import PolicyFileDriver
from bot.adapters.settings import SHIPPED_PLAYBOOKS
from bot.base.errors import GuardRefused
from bot.core.engine import Engine
from bot.core.release_cases import ReleaseGuard
from bot.core.runner import Runner
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store
from drills import scoring
from drills.harness import DrillService, drill_engine, sandbox_app, stand_in
from drills.release_phase import exposure
from drills.report import render_report
from drills.runner import DrillOptions, DrillRunner
from drills.sandbox.policy import seed_policy_text
from drills.scenario import SCENARIOS_DIR, Scenario, ScenarioError, load_scenario, load_scenarios
from drills.store import DrillStore
from drills.targets import drill_targets
from drills.undo import recover_interrupted

URL = "http://127.0.0.1:9"  # never dialled: the ASGI transport answers
OPTS = DrillOptions(auto_respond=True, speed=30.0, tick_s=0.2, max_warmup_s=60.0)
SCENARIOS = load_scenarios(SCENARIOS_DIR)
RELEASES = sorted(k for k, s in SCENARIOS.items() if s.injection.release is not None)
PRODUCTION = "version: 1\nroutes:\n  chat: {prompt_version: v7}\n  chat-small: {}\n"


def bot_engine(tmp_path: Path) -> tuple[Engine, RecordingNotifier, Path]:
    """The bot as `serve` builds it: production's policy file as ``default``, and the
    drills' own targets found through the store."""
    prod = tmp_path / "production-policy.yaml"
    prod.write_text(PRODUCTION)
    store = Store(None)
    registry = PlaybookRegistry()
    assert registry.reload(SHIPPED_PLAYBOOKS) == []
    runner = Runner(store, {"default": PolicyFileDriver(prod)}, None,
                    drill_targets=drill_targets(store))
    notifier = RecordingNotifier()
    return Engine(store, registry, runner, notifier=notifier), notifier, prod


async def run_drill(scenario: Scenario, tmp_path: Path, engine: Engine):
    """What ``DrillService.run`` does for a sandbox drill, on the ASGI transport."""
    sandbox_policy = tmp_path / "sandbox-policy.yaml"
    sandbox_policy.write_text(seed_policy_text())
    app = sandbox_app(sandbox_policy, speed=OPTS.speed, seed=5)
    lines: list[str] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        runner = DrillRunner(drill_engine(engine, sandbox_policy), DrillStore(engine.store),
                             target_url=URL, client=client, observer=stand_in(URL, client, OPTS),
                             policy_path=sandbox_policy, options=OPTS, say=lines.append)
        result = await runner.run(scenario)
        faults = (await client.get(f"{URL}/faults")).json()["faults"]
    return result, sandbox_policy, faults, lines


@pytest.mark.parametrize("scenario_id", RELEASES)
def test_a_bad_release_is_rolled_back_at_its_first_step_on_the_drill_target(scenario_id,
                                                                           tmp_path):
    scenario = SCENARIOS[scenario_id]
    engine, notifier, prod = bot_engine(tmp_path)
    d, sandbox_policy, faults, lines = asyncio.run(run_drill(scenario, tmp_path, engine))

    assert d.status == "completed", d.reason
    [release] = engine.store.releases()
    assert release.state == "rolled_back" and release.step == 0  # at 5%: before full rollout
    assert release.target == f"drill:{d.id}" and release.change == {"prompt_version": "v43"}
    assert release.baseline == {"prompt_version": "v42"}
    assert release.incident_id == d.incident_id
    incident = engine.store.incident(d.incident_id)
    assert incident.is_drill and incident.klass == scenario.class_
    assert d.suggested_playbook == scenario.expect.playbook
    # The judge's evidence is on the release's timeline, with the failing signal.
    rolled = [e for e in engine.store.release_timeline(release.id) if e.kind == "rolled_back"]
    assert rolled and rolled[0].actor == "release-guard"
    # Every release run acted on the drill's file; production was never read for a write.
    runs = engine.store.runs()
    assert {r.action for r in runs} == {"set_canary", "rollback_canary"}
    assert all(r.target == f"drill:{d.id}" for r in runs)
    assert prod.read_text() == PRODUCTION and not Path(f"{prod}.changes").exists()
    assert sandbox_policy.read_text() == seed_policy_text()  # restored byte for byte
    assert faults == [] and not d.injection_active
    assert all(m.is_drill for m in notifier.messages)
    assert any(m.incident_id == release.id for m in notifier.messages)  # its live message

    breakdown = {c["name"]: c for c in d.breakdown}
    assert breakdown["mitigate"]["detail"].startswith("rolled back at 5% of chat")
    assert d.score is not None and d.score >= scoring.PASS_SCORE
    [spent] = [e.data for e in DrillStore(engine.store).events(d.id) if e.phase == "exposure"]
    assert spent["canary_requests"] >= 200  # what the judge needs before it decides
    assert 0.03 < spent["share"] < 0.08  # about the first step's 5%
    assert spent["wasted_tokens"] > 0
    assert spent["alert_wasted_tokens"] > 2 * spent["wasted_tokens"]  # the rollout's worth
    report = render_report(DrillStore(engine.store), d.id, scenario)
    assert "## The bad release" in report and "saw the bad version" in report


def test_a_bad_release_the_judge_misses_reaches_all_traffic_and_fails_the_drill(tmp_path):
    # Answers 10% longer: under the 25% threshold, so every step passes and auto-promotes.
    text = (SCENARIOS_DIR / "bad_release_tokens.yaml").read_text()
    text = text.replace("params: {factor: 2}", "params: {factor: 1.1}").replace(
        "bake: 30m", "bake: 1m")
    path = tmp_path / "bad_release_missed.yaml"
    path.write_text(text)
    scenario = load_scenario(path)
    engine, _, prod = bot_engine(tmp_path)
    d, sandbox_policy, faults, _ = asyncio.run(run_drill(scenario, tmp_path, engine))

    assert d.status == "failed" and "reached all of chat (promoted)" in d.reason
    [release] = engine.store.releases()
    assert release.state == "promoted"
    breakdown = {c["name"]: c for c in d.breakdown}
    assert breakdown["mitigate"]["points"] == 0
    assert "reached all of chat (promoted): never happened" in breakdown["mitigate"]["detail"]
    [spent] = [e.data for e in DrillStore(engine.store).events(d.id) if e.phase == "exposure"]
    steps = [e.data.get("percent") for e in engine.store.release_timeline(release.id)
             if e.kind == "promoted_step"]
    assert steps == [25, 50]  # every step passed, then the promotion
    assert spent["share"] > 0.05  # more than the first step's share saw it
    assert sandbox_policy.read_text() == seed_policy_text() and faults == []
    assert prod.read_text() == PRODUCTION


def test_a_drill_release_is_never_judged_by_the_bot_and_a_person_moves_it_on_the_drill(
        tmp_path):
    engine, _, prod = bot_engine(tmp_path)
    drills = DrillStore(engine.store)
    sandbox_policy = tmp_path / "sandbox-policy.yaml"
    sandbox_policy.write_text("version: 1\nroutes:\n  chat: {prompt_version: v42}\n")
    proc = subprocess.Popen(["true"])
    proc.wait()
    import socket
    d = drills.create(scenario_id="bad-release-tokens", klass="runaway_cost", target="sandbox",
                      mode="humans", detector="stand-in", speed=1,
                      owner=f"{socket.gethostname()}:{proc.pid}")  # its process died
    drills.update(d.id, injection={"base_url": URL, "policy_path": str(sandbox_policy),
                                   "policy_text": sandbox_policy.read_text(), "fault_ids": []},
                  injection_active=True)
    judged: list[str] = []

    async def reader(canary, baseline, window):
        judged.append(canary.route)
        return {}

    async def scenario():
        guard = ReleaseGuard(engine, reader=reader)
        release = await guard.start("chat", actor="drill", prompt_version="v43",
                                    target=f"drill:{d.id}")
        assert yaml.safe_load(sandbox_policy.read_text())["routes"]["chat"]["canary"][
            "weight"] == 0.05
        assert await guard.check_due() == [] and judged == []  # the bot's poll skips it
        held = await guard.hold(release.id, actor="alice")  # a person, from Slack or the CLI
        assert held.held
        # The drill's process died: the next start closes the release, target untouched.
        async with httpx.AsyncClient() as client:
            [recovered] = await recover_interrupted(engine, drills, client, lambda _: None)
        assert recovered.status == "aborted"
        assert engine.store.release(release.id).state == "aborted"
        # Over: a move on the drill's target is refused, never sent to production.
        with pytest.raises(GuardRefused, match="over or not reachable"):
            await engine.runner.read_target(f"drill:{d.id}")
        # And the route is free for a real release on production.
        real = await guard.start("chat", actor="alice", prompt_version="v8")
        assert real.target == "default"
        return real

    real = asyncio.run(scenario())
    assert yaml.safe_load(prod.read_text())["routes"]["chat"]["canary"] == {
        "prompt_version": "v8", "weight": 0.05, "release": real.id}


def test_exposure_counts_the_canary_against_the_rest_of_the_route():
    before = {"v42": {"requests": 100, "tokens": 30_000, "invalid": 0, "refused": 0}}
    after = {"v42": {"requests": 1_050, "tokens": 315_000, "invalid": 0, "refused": 0},
             "v43": {"requests": 50, "tokens": 30_000, "invalid": 5, "refused": 0}}
    got = exposure(before, after, "v43", drill_seconds=100, alert_delay_s=600)
    # 50 canary requests of 1,000 on the route; 300 tokens a request on the baseline.
    assert got.share == pytest.approx(0.05) and got.route_requests == 1_000
    assert got.bad_answers == 5
    # 15,000 tokens beyond the baseline's mean plus the 5 failed answers' 600 tokens each.
    assert got.wasted_tokens == pytest.approx(15_000 + 5 * 600)
    # The route's 10 requests a second, all on the bad version, for 600 s.
    assert got.alert_wasted_tokens == pytest.approx(18_000 / 50 * 6_000)
    assert got.alert_bad_answers == pytest.approx(600)
    assert "50 of 1000 requests (5.0%)" in got.text()


@pytest.mark.parametrize(("edit", "says"), [
    ("    prompt_version: v43\n    params", "injection.fault.prompt_version (v44) must equal"),
    ("    chat: {prompt_version: v42}", "setup.policy.chat.prompt_version must name"),
    ("  kind: sandbox", "a release drill runs on the sandbox"),
])
def test_a_release_scenario_that_would_not_rehearse_a_canary_is_refused_at_load(
        tmp_path, edit, says):
    text = (SCENARIOS_DIR / "bad_release_json.yaml").read_text()
    replacement = {
        "    prompt_version: v43\n    params": "    prompt_version: v44\n    params",
        "    chat: {prompt_version: v42}": "    chat: {max_output_tokens: 512}",
        "  kind: sandbox": "  kind: staging\n  base_url: http://staging.example:4000",
    }[edit]
    assert edit in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(edit, replacement, 1))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert says in str(err.value) and "bad.yaml" in str(err.value)


def test_a_class_names_its_own_scenario_before_its_release_drill(tmp_path):
    engine, _, _ = bot_engine(tmp_path)
    service = DrillService(engine, tmp_path / "drills")
    assert service.find("runaway_cost").id == "runaway-cost"
    assert service.find("bad-release-tokens").injection.release is not None
    assert service.find("bad_release_refusals").class_ == "quality_degradation"


@pytest.mark.parametrize(("fault", "failing", "decision"), [
    (None, set(), "promote"),
    ({"kind": "provider_errors", "ratio": 0.3, "statuses": [503]}, {"error"}, "rollback"),
    ({"kind": "quality_drop", "drop": 0.2}, {"quality_score"}, "hold"),
])
def test_the_sandbox_gives_the_judge_errors_fallbacks_and_sampled_quality_by_version(
        tmp_path, fault, failing, decision):
    from bot.core.canary_judge import judge
    from bot.core.canary_samples import Version
    from bot.playbook.canary_thresholds import load_thresholds
    from drills.release_phase import ScrapeSamples
    from drills.sandbox.traffic import generate
    from drills.signals import parse_scrape

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nroutes:\n  chat:\n    prompt_version: v42\n    canary: "
                      "{prompt_version: v43, weight: 0.2}\n  chat-small: {}\n  chat-long: {}\n")
    app = sandbox_app(policy, seed=3)
    reader = ScrapeSamples()
    clock = iter(range(100))

    async def scrape(client):
        text = (await client.get(f"{URL}/metrics")).text
        from datetime import UTC, datetime, timedelta
        reader.record(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=next(clock)),
                      parse_scrape(text, 0.0))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            if fault:
                resp = await client.post(f"{URL}/faults", json={
                    **fault, "route": "chat", "prompt_version": "v43"})
                assert resp.status_code == 201, resp.text
            await scrape(client)
            await generate(URL, routes=["chat"], rate_per_s=1500, duration_s=2, client=client)
            await scrape(client)
            from datetime import timedelta
            return await reader(Version("chat", "v43"), Version("chat", "v42"),
                                timedelta(minutes=1))

    samples = asyncio.run(scenario())
    assert {"error", "fallback", "quality_score"} <= set(samples)  # by version, both sides
    verdict = judge(load_thresholds().for_route("chat"), samples, alpha=0.01)
    assert {s.signal for s in verdict.failed} == failing
    assert verdict.decision == decision
