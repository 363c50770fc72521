"""The release guard end to end in the core: a canary started, judged at each step,
promoted by a person or on its own, rolled back by the judge with an incident."""

from __future__ import annotations

import asyncio
import math
import random
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fakes import InMemoryDriver

from actions.policy import ServingPolicy
from bot.base.errors import Conflict, InputError
from bot.core.canary_judge import Histogram
from bot.core.canary_samples import Version
from bot.core.release_cases import ReleaseGuard
from bot.core.release_moves import parse_steps

sys.path.insert(0, str(Path(__file__).parent))
from incident_env import Env  # noqa: E402

BUCKETS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, math.inf]
POLICY = ServingPolicy.model_validate({"routes": {
    "chat": {"prompt_version": "v42", "max_concurrency": 16, "group": "chat"},
    "chat-small": {"group": "chat"}}})


class Traffic:
    """What Prometheus would say over the step's window: 5% of 8,000 requests on the
    canary, whose output tokens are ``canary_factor`` times the baseline's."""

    def __init__(self) -> None:
        self.canary_factor = 1.0
        self.rng = random.Random(12)
        self.asked: list[tuple[Version, Version, timedelta]] = []

    def _hist(self, n: int, mean: float) -> Histogram:
        values = [self.rng.lognormvariate(math.log(mean), 0.5) for _ in range(n)]
        return Histogram([(le, float(sum(v <= le for v in values))) for le in BUCKETS])

    async def __call__(self, canary: Version, baseline: Version, window: timedelta):
        self.asked.append((canary, baseline, window))
        return {"output_tokens": (self._hist(400, 300 * self.canary_factor),
                                  self._hist(7600, 300))}


def rig() -> tuple[Env, ReleaseGuard, Traffic]:
    env = Env(driver=InMemoryDriver(POLICY, name="default"))
    traffic = Traffic()
    return env, ReleaseGuard(env.engine, reader=traffic), traffic


def canary(env: Env) -> dict | None:
    return asyncio.run(env.driver.read()).get("chat", "canary")


def test_a_good_release_goes_out_step_by_step_when_a_person_promotes_it():
    env, guard, traffic = rig()
    rel = asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    assert (rel.id, rel.state, rel.weight, rel.baseline) == ("REL-1", "canary", 0.05,
                                                             {"prompt_version": "v42"})
    assert canary(env) == {"prompt_version": "v43", "model": None, "weight": 0.05,
                           "release": "REL-1"}
    assert asyncio.run(guard.check_due()) == []  # not baked yet: nothing but a rollback
    env.clock.advance(minutes=10)
    (judged,) = asyncio.run(guard.check_due())
    assert judged.step == 0 and not judged.held  # passed; waits for a person
    assert "promote when ready" in guard.store.release_timeline("REL-1")[-1].text
    canary_v, baseline_v, window = traffic.asked[-1]
    assert (canary_v.prompt_version, baseline_v.prompt_version) == ("v43", "v42")
    assert window == timedelta(minutes=10)
    env.clock.advance(seconds=15)
    assert asyncio.run(guard.check_due()) == []  # said once per step, not at every poll
    for percent in (25, 50):
        rel = asyncio.run(guard.promote("REL-1", actor="bob"))
        assert canary(env)["weight"] == percent / 100
    rel = asyncio.run(guard.promote("REL-1", actor="bob"))  # 100%: the promotion
    assert rel.state == "promoted" and canary(env) is None
    assert asyncio.run(env.driver.read()).get("chat", "prompt_version") == "v43"
    kinds = [e.kind for e in guard.store.release_timeline("REL-1")]
    assert kinds == ["started", "judged", "promoted_step", "promoted_step", "promoted"]
    # Every change was a run, none with a TTL: nothing will ever revert a promotion.
    runs = env.store.runs()
    assert [r.action for r in runs] == ["set_canary"] * 3 + ["promote_canary"]
    assert all(r.state == "applied" for r in runs) and not list(env.runner.timers())


def test_a_canary_that_doubles_tokens_is_rolled_back_by_the_judge_with_an_incident():
    env, guard, traffic = rig()
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice", auto_promote=True))
    env.clock.advance(minutes=10)
    asyncio.run(guard.check_due())  # good at 5%: auto_promote takes it to 25%
    assert guard.store.release("REL-1").weight == 0.25
    traffic.canary_factor = 2.0  # the bad part shows at 25%
    env.clock.advance(minutes=10)
    (rolled,) = asyncio.run(guard.check_due())
    assert rolled.state == "rolled_back" and canary(env) is None
    assert asyncio.run(env.driver.read()).get("chat", "prompt_version") == "v42"
    inc = env.store.incident(rolled.incident_id)
    assert inc.klass == "runaway_cost" and inc.status != "resolved"
    (alert,) = env.store.alerts_for(inc.id)
    assert alert.labels["release"] == "REL-1" and alert.labels["signal"] == "output_tokens"
    assert "fail" in alert.annotations["description"]
    assert any("REL-1 rolled back" in m.title for m in env.published)


def test_one_release_per_route_and_no_move_after_the_end():
    env, guard, _ = rig()
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    with pytest.raises(Conflict, match="already has REL-1 in progress"):
        asyncio.run(guard.start("chat", prompt_version="v44", actor="carol"))
    asyncio.run(guard.rollback("REL-1", actor="alice", reason="changed my mind"))
    with pytest.raises(InputError, match="REL-1 is rolled_back"):
        asyncio.run(guard.promote("REL-1", actor="bob"))
    rel = asyncio.run(guard.start("chat", prompt_version="v44", actor="carol"))
    assert rel.id == "REL-2"  # the route is free again


def test_a_held_release_is_not_promoted_on_its_own_and_bad_input_is_named():
    env, guard, _ = rig()
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice", auto_promote=True))
    asyncio.run(guard.hold("REL-1", actor="bob", reason="launch freeze"))
    env.clock.advance(minutes=10)
    assert asyncio.run(guard.check_due()) == []
    assert guard.store.release("REL-1").step == 0
    with pytest.raises(InputError, match="rise from above 0 to 100"):
        parse_steps("50,25,100")
    with pytest.raises(InputError, match="rise from above 0 to 100"):
        parse_steps("100")  # a canary needs a share below all traffic
    with pytest.raises(InputError, match="not served"):
        asyncio.run(guard.start("nope", prompt_version="v1", actor="alice"))
    with pytest.raises(InputError, match="no prompt_version to compare"):
        asyncio.run(guard.start("chat-small", prompt_version="v9", actor="alice"))


def test_the_release_has_one_live_message_and_an_incident_on_its_route_names_it_first():
    from incident_env import alert

    env, guard, traffic = rig()
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    live = [m for m in env.published if m.incident_id == "REL-1"]
    assert [m.kind for m in live] == ["suggestion"]
    assert [b.action for b in live[0].buttons] == ["release_promote", "release_hold",
                                                  "release_rollback"]
    # Any incident on the route meanwhile: the release comes first, its rollback first.
    asyncio.run(env.engine.handle_alerts([alert(route="chat")]))
    (suggestion,) = [m for m in env.published if m.kind == "suggestion" and
                     m.incident_id and m.incident_id.startswith("INC-")]
    assert suggestion.sections[0].title == "Release in progress"
    assert "REL-1 is going out on chat" in suggestion.sections[0].text
    assert suggestion.buttons[0].action == "release_rollback"
    from bot.core.messages import button_command
    assert button_command(suggestion.buttons[0]) == (
        "release rollback REL-1 --reason 'rolled back from chat'")
    asyncio.run(guard.rollback("REL-1", actor="bob", reason="tokens doubled"))
    final = [m for m in env.published if m.incident_id == "REL-1"][-1]
    assert final.kind == "update" and final.closes and not final.buttons
    assert "rolled back" in final.title


def test_a_critical_failure_rolls_back_before_the_step_has_baked():
    env, guard, traffic = rig()
    traffic.canary_factor = 2.0
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    env.clock.advance(minutes=1)  # the bake is 10 minutes; the data is clear already
    (rolled,) = asyncio.run(guard.check_due())
    assert rolled.state == "rolled_back" and rolled.incident_id is not None


def test_an_eval_gate_that_fails_keeps_the_release_from_starting_and_says_why(tmp_path):
    from bot.adapters.release_gate import CommandGate, UrlGate, build_gate
    from bot.base.errors import GuardRefused

    env, _, traffic = rig()
    seen = tmp_path / "seen"
    failing = ReleaseGuard(env.engine, reader=traffic, gate=CommandGate(
        f'echo "$LLM_INCIDENT_RELEASE $LLM_INCIDENT_RELEASE_PROMPT_VERSION" > {seen}; '
        'echo "eval: 71% of 200 cases pass, 90% needed"; exit 1'))
    with pytest.raises(GuardRefused, match="eval command exited 1: eval: 71% of 200"):
        asyncio.run(failing.start("chat", prompt_version="v43", actor="alice"))
    assert seen.read_text().strip() == "REL-1 v43"
    rel = env.store.release("REL-1")
    assert rel.state == "aborted" and canary(env) is None  # nothing reached traffic
    assert env.store.release_timeline("REL-1")[-1].kind == "gate_failed"
    passing = ReleaseGuard(env.engine, reader=traffic, gate=CommandGate("echo ok"))
    rel = asyncio.run(passing.start("chat", prompt_version="v43", actor="alice"))
    assert [e.kind for e in env.store.release_timeline(rel.id)][:2] == ["started",
                                                                        "gate_passed"]
    assert isinstance(build_gate("https://evals.example/gate"), UrlGate)
    assert build_gate(None) is None


def test_a_url_gate_passes_on_2xx_unless_it_says_no():
    import httpx

    from bot.adapters.release_gate import UrlGate

    env, guard, _ = rig()
    rel = asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    answers = iter([httpx.Response(200, json={"pass": True}),
                    httpx.Response(200, json={"pass": False, "why": "regressions"}),
                    httpx.Response(503, text="down")])
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return next(answers)
    gate = UrlGate("http://evals.test/gate", transport=httpx.MockTransport(handler))
    results = [asyncio.run(gate.check(rel))[0] for _ in range(3)]
    assert results == [True, False, False]
    assert b'"release": "REL-1"' in bodies[0] or b'"release":"REL-1"' in bodies[0]


def test_release_thresholds_shows_the_file_in_force_and_names_a_bad_files_line(tmp_path):
    from bot.adapters.cli import run as cli_run
    from bot.adapters.settings import Settings

    settings = Settings(db_path=tmp_path / "bot.db", policy_path=tmp_path / "policy.yaml")
    shipped = asyncio.run(cli_run(["release", "thresholds"], settings))
    assert shipped.exit_code == 0 and "output_tokens" in shipped.text
    assert "fails beyond +25% with 200 requests a side (critical: rolls back)" in shipped.text
    bad = tmp_path / "canary.yaml"
    bad.write_text("version: 1\nsignals:\n  output_tokens: {max_change: 0.25}\n"
                   "  ttft: {max_change: 0.2}\n")
    refused = asyncio.run(cli_run(["release", "thresholds", str(bad)], settings))
    assert refused.exit_code == 2 and f"{bad}:4" in refused.text, refused.text


def test_the_kill_switch_stops_the_guards_own_moves():
    env, guard, traffic = rig()
    traffic.canary_factor = 2.0
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    env.store.set_flag("paused", "incident freeze", actor="bob")
    env.clock.advance(minutes=1)
    assert asyncio.run(guard.check_due()) == [] and canary(env) is not None
    assert len(env.store.runs()) == 1  # no run planned and held at every poll
    rel = asyncio.run(guard.rollback("REL-1", actor="bob", reason="by hand"))
    assert rel.state == "rolled_back" and canary(env) is None


def two_person(env: Env, traffic: Traffic, rule: str) -> ReleaseGuard:
    """A guard whose release policy file puts `chat` under ``rule`` (e.g. promote: two_person)."""
    from bot.playbook.canary_thresholds import SHIPPED, load_thresholds_text

    text = SHIPPED.read_text()
    assert text.endswith("  routes: {}\n")  # the approvals' routes, last in the file
    text = text.removesuffix("  routes: {}\n") + f"  routes: {{chat: {{{rule}}}}}\n"
    return ReleaseGuard(env.engine, reader=traffic, thresholds=load_thresholds_text(text))


def test_a_route_whose_release_policy_wants_two_people_promotes_on_the_second_one():
    from bot.base.errors import GuardRefused

    env, _, traffic = rig()
    guard = two_person(env, traffic, "promote: two_person")
    with pytest.raises(GuardRefused, match="cannot promote itself"):
        asyncio.run(guard.start("chat", prompt_version="v43", actor="alice", auto_promote=True))
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    asked = asyncio.run(guard.promote("REL-1", actor="alice"))
    assert asked.step == 0 and canary(env)["weight"] == 0.05  # nothing moved yet
    last = guard.store.release_timeline("REL-1")[-1]
    assert last.kind == "awaiting_approval" and "second person" in last.text
    [waiting] = env.store.runs(state="awaiting_approval")
    assert waiting.requested_by == "alice" and waiting.args["weight"] == 0.25
    with pytest.raises(GuardRefused, match="cannot approve it"):
        asyncio.run(guard.promote("REL-1", actor="alice"))  # not her own request
    moved = asyncio.run(guard.promote("REL-1", actor="bob"))
    assert moved.step == 1 and canary(env)["weight"] == 0.25
    assert env.store.run(waiting.id).state == "applied"
    assert [a.user for a in env.store.approvals(waiting.id)] == ["bob"]
    # A route without the rule promotes on one person, as before.
    assert guard.approvals("chat-small") == ("none", "none")


def test_a_rollback_the_policy_wants_confirmed_holds_the_release_and_opens_the_incident():
    env, _, traffic = rig()
    guard = two_person(env, traffic, "rollback: two_person")
    traffic.canary_factor = 2.0
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    env.clock.advance(minutes=1)
    (held,) = asyncio.run(guard.check_due())  # the judge asks; a person must confirm
    assert held.state == "canary" and held.held and canary(env)["weight"] == 0.05
    assert held.incident_id is not None  # people are told at once, with the evidence
    assert env.store.incident(held.incident_id).klass == "runaway_cost"
    events = len(guard.store.release_timeline("REL-1"))
    env.clock.advance(seconds=30)
    assert asyncio.run(guard.check_due()) == []  # waiting: the judge asks only once
    assert len(guard.store.release_timeline("REL-1")) == events
    rolled = asyncio.run(guard.rollback("REL-1", actor="carol", reason="confirmed"))
    assert rolled.state == "rolled_back" and canary(env) is None
    assert rolled.incident_id == held.incident_id
