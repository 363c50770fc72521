"""Drill scenarios: the shipped ones load and agree with the rules, the playbooks and
the sandbox; bad files give one clear error with file, line and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from actions.policy import ServingPolicy
from bot.base.errors import PlaybookError
from bot.playbook.loader import load_dir
from bot.playbook.schema import INCIDENT_CLASSES
from drills.alert_rules import ALERTS_DIR, alert_rules, load_rules
from drills.sandbox import load_config
from drills.sandbox.faults import FAULT_ADAPTER, FAULT_KINDS
from drills.sandbox.faults import Fault as SandboxFault
from drills.sandbox.policy import seed_policy_text
from drills.scenario import (
    FAULT_PARAMS,
    SCENARIOS_DIR,
    Scenario,
    ScenarioError,
    SteadyState,
    StopCondition,
    load_scenario,
    load_scenarios,
)

PLAYBOOKS_DIR = ALERTS_DIR.parent
# Which fault kinds rehearse which class.
CLASS_FAULTS = {
    "runaway_cost": {"token_blowup"},
    "latency_spike": {"latency_spike"},
    "malformed_output": {"malformed_output"},
    "context_overflow": {"context_overflow"},
    "safety_regression": {"safety_flags", "refusals"},
    "provider_errors": {"provider_errors"},
    "bad_routing": {"bad_routing"},
    # Refusals: a release's refusal signal opens a quality-degradation incident.
    "quality_degradation": {"quality_drop", "refusals"},
}


@pytest.fixture(scope="module")
def shipped() -> dict[str, Scenario]:
    return load_scenarios(SCENARIOS_DIR)


# --- the shipped scenarios ----------------------------------------------------------------


def test_one_shipped_scenario_per_class(shipped: dict[str, Scenario]) -> None:
    own = [s for s in shipped.values() if s.id == s.class_.replace("_", "-")]
    assert sorted(s.class_ for s in own) == sorted(INCIDENT_CLASSES)
    variants = 0
    for path in SCENARIOS_DIR.glob("*.yaml"):
        scenario = load_scenario(path)
        if scenario.class_ == path.stem:
            continue
        variants += 1
        if scenario.injection.release is not None:
            # the bad-release drills, named so, each of its signal's class
            assert path.stem.startswith("bad_release_"), path.name
        else:  # one customer's fault: the per-customer mitigation's drill
            assert scenario.injection.fault.customer and path.stem.endswith("_customer")
    assert variants == len(shipped) - len(own) == 4


def test_release_scenarios_expect_the_guards_rollback_of_their_class(
        shipped: dict[str, Scenario]) -> None:
    from bot.core.canary_judge import SIGNALS

    fails = {"token_blowup": "output_tokens", "malformed_output": "schema_valid",
             "refusals": "refusal"}
    playbooks = load_dir(PLAYBOOKS_DIR)
    for s in (s for s in shipped.values() if s.injection.release is not None):
        assert s.expect.alertname == "CanaryRollback", s.id
        assert SIGNALS[fails[s.injection.fault.kind]].incident_class == s.class_, s.id
        assert playbooks[s.expect.playbook].class_ == s.class_, s.id


def test_scenarios_agree_with_rules_and_playbooks(shipped: dict[str, Scenario]) -> None:
    rules = alert_rules(load_rules())
    playbooks = load_dir(PLAYBOOKS_DIR)
    for s in shipped.values():
        if s.injection.release is not None:
            continue  # the release guard raises their alert (the test above)
        rule = rules[s.expect.alertname]
        assert rule["labels"]["incident_class"] == s.class_, s.id
        book = playbooks[s.expect.playbook]
        assert book.class_ == s.class_, s.id
        assert any(c.alertname == s.expect.alertname for c in book.match.any), s.id
        step = s.expect.step or book.steps[0].id
        assert book.step(step) is not None, f"{s.id}: playbook has no step {step}"
        assert s.injection.fault.kind in CLASS_FAULTS[s.class_], s.id


def test_scenario_queries_read_recording_rules_that_exist(shipped: dict[str, Scenario]) -> None:
    groups = load_rules()["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    for s in shipped.values():
        for query in [s.steady_state.query, *(c.query for c in s.stop_conditions)]:
            names = set(re.findall(r"llm_incident:[a-z0-9_:]+", query))
            assert names, f"{s.id}: {query!r} reads no rules-pack signal"
            assert names <= recorded, f"{s.id}: unknown {names - recorded}"


def test_steady_state_holds_before_and_fails_during_the_fault(
    shipped: dict[str, Scenario],
) -> None:
    """The alert threshold (a healthy value on one side, the fault on the other)
    agrees with each scenario's steady-state expectation."""
    rules = alert_rules(load_rules())
    for s in shipped.values():
        if s.injection.release is not None:
            continue  # judged by the release guard, not a rule (test_drill_releases.py)
        threshold = float(rules[s.expect.alertname]["annotations"]["threshold"])
        firing_side = 10 * threshold if s.expect.alertname != "LLMQualityScoreLow" else 0.5
        healthy_side = 0.5 * threshold if s.expect.alertname != "LLMQualityScoreLow" else 0.9
        assert s.steady_state.holds(healthy_side), s.id
        assert not s.steady_state.holds(firing_side), s.id


def test_faults_are_valid_sandbox_faults_on_sandbox_routes(shipped: dict[str, Scenario]) -> None:
    config = load_config()
    for s in shipped.values():
        fault = FAULT_ADAPTER.validate_python(s.injection.fault.body())
        assert fault.kind == s.injection.fault.kind
        assert s.injection.fault.route in config.routes, s.id
        for name in ("model", "to_model"):
            model = getattr(fault, name, None)
            assert model is None or model in config.models, f"{s.id}: {name} {model}"
        policy = ServingPolicy.model_validate(yaml.safe_load(seed_policy_text()))
        for patch in (s.setup.policy, s.injection.policy):
            assert set(patch) <= set(config.routes), s.id
            policy = policy.with_values(patch)  # validates as a whole
        for route in s.traffic.routes:
            assert route in config.routes, s.id


def test_fault_kinds_and_params_match_the_sandbox() -> None:
    assert set(FAULT_PARAMS) == set(FAULT_KINDS)
    scope = {"id", "kind", "route", "model", "prompt_version", "customer", "note"}
    for member in SandboxFault.__origin__.__args__:  # the union behind the discriminator
        assert issubclass(member, BaseModel)
        kind = member.model_fields["kind"].annotation.__args__[0]
        assert set(FAULT_PARAMS[kind]) == set(member.model_fields) - scope, kind


def test_prompt_rollback_drills_warm_up_on_the_good_version(shipped: dict[str, Scenario]) -> None:
    """The alert names the last good prompt from recent traffic: it must have run."""
    for s in shipped.values():
        if s.expect.step != "rollback-prompt":
            continue
        route = s.injection.fault.route
        good = s.setup.policy.get(route, {}).get("prompt_version")
        bad = s.injection.policy.get(route, {}).get("prompt_version")
        assert good and bad and good != bad, s.id
        assert s.injection.fault.prompt_version == bad, s.id
        assert s.setup.warmup.total_seconds() > 0, s.id


# --- checks ---------------------------------------------------------------------------


def test_steady_state_tolerance_and_stop_conditions() -> None:
    below = SteadyState(query="q", expect="< 1", tolerance=0.1)
    assert below.holds(1.05) and not below.holds(1.2)
    above = SteadyState(query="q", expect=">= 0.8", tolerance=0.05)
    assert above.holds(0.76) and not above.holds(0.7)
    exact = SteadyState(query="q", expect="== 0", tolerance=0.01)
    assert exact.holds(0.005) and not exact.holds(0.02)
    stop = StopCondition(query="q", abort_if="> 0.5", reason="r")
    assert stop.tripped(0.6) and not stop.tripped(0.5)


def test_fault_body_is_what_the_fault_api_takes(shipped: dict[str, Scenario]) -> None:
    body = shipped["provider-errors"].injection.fault.body()
    assert body == {
        "kind": "provider_errors",
        "route": "chat",
        "model": "chat-large",
        "ratio": 0.3,
        "statuses": [503],
    }


# --- bad input ------------------------------------------------------------------------------

GOOD = (SCENARIOS_DIR / "malformed_output.yaml").read_text()


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _load_bad(tmp_path: Path, text: str, name: str = "bad.yaml") -> ScenarioError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert isinstance(err.value, PlaybookError)  # one error family with the playbooks
    assert str(path) in str(err.value)
    return err.value


def test_unknown_fault_kind(tmp_path: Path) -> None:
    text = GOOD.replace("kind: malformed_output", "kind: malformed_outptu")
    err = _load_bad(tmp_path, text)
    [p] = err.problems
    assert p.line == _line_of(text, "malformed_outptu")
    assert p.field == "injection.fault.kind"
    assert "did you mean `malformed_output`" in (p.hint or "")


def test_unknown_fault_parameter(tmp_path: Path) -> None:
    text = GOOD.replace("params: {ratio: 0.5}", "params: {ration: 0.5}")
    [p] = _load_bad(tmp_path, text).problems
    assert "unknown parameter 'ration'" in p.message and "ratio" in p.message
    assert p.line == _line_of(text, "fault:")


@pytest.mark.parametrize(
    ("deadlines", "needle"),
    [
        ("detect: 0m", "'detect' must be more than zero"),
        ("detect: -5m", "not a duration"),
        ("mitigate: 2m", "mitigate (2m) must come after detect (5m)"),
        ("acknowledge: 1m", "acknowledge (1m) comes before detect (5m)"),
        ("mitigate: 7m", "mitigate (7m) comes before acknowledge (10m)"),
    ],
)
def test_impossible_deadlines(tmp_path: Path, deadlines: str, needle: str) -> None:
    key = deadlines.split(":")[0]
    text = re.sub(rf"(?m)^  {key}: .*$", f"  {deadlines}", GOOD)
    assert text != GOOD
    [p] = _load_bad(tmp_path, text).problems
    assert needle in p.message
    assert p.field.startswith("deadlines")
    assert p.line in (_line_of(text, "deadlines:"), _line_of(text, f"  {deadlines}"))


def test_missing_rollback(tmp_path: Path) -> None:
    text = re.sub(r"(?ms)^rollback:\n(  .*?\n)+", "", GOOD)
    assert "rollback" not in text.split("stop_conditions")[0].split("steady_state")[1]
    [p] = _load_bad(tmp_path, text).problems
    assert p.message == "missing required key 'rollback'"
    assert p.line is not None


def test_rollback_that_keeps_the_fault(tmp_path: Path) -> None:
    text = GOOD.replace("remove_fault: true", "remove_fault: false")
    [p] = _load_bad(tmp_path, text).problems
    assert "must remove the injected fault" in p.message
    assert p.line == _line_of(text, "rollback:")


def test_rollback_that_leaves_the_release_in_place(tmp_path: Path) -> None:
    text = GOOD.replace("restore_policy: true", "restore_policy: false")
    [p] = _load_bad(tmp_path, text).problems
    assert "restore_policy: true" in p.message


def test_unknown_key_with_line_and_suggestion(tmp_path: Path) -> None:
    text = GOOD.replace("stop_conditions:", "stop_conditons:")
    problems = _load_bad(tmp_path, text).problems
    unknown = next(p for p in problems if "unknown key" in p.message)
    assert unknown.message == "unknown key 'stop_conditons'"
    assert unknown.line == _line_of(text, "stop_conditons:")
    assert "did you mean `stop_conditions`" in (unknown.hint or "")
    # ... and the key it was meant to be is reported missing, not silently defaulted.
    assert any(p.message == "missing required key 'stop_conditions'" for p in problems)


def test_unknown_policy_field(tmp_path: Path) -> None:
    text = GOOD.replace("chat: {prompt_version: v41}", "chat: {prompt_verison: v41}")
    [p] = _load_bad(tmp_path, text).problems
    assert "unknown field 'prompt_verison'" in p.message and "prompt_version" in p.message
    assert p.field == "setup.policy"


def test_staging_needs_a_base_url(tmp_path: Path) -> None:
    text = GOOD.replace("kind: sandbox", "kind: staging")
    [p] = _load_bad(tmp_path, text).problems
    assert "base_url" in p.message and p.field == "target"
    ok = GOOD.replace("kind: sandbox", "kind: staging\n  base_url: http://127.0.0.1:4000")
    (tmp_path / "ok.yaml").write_text(ok)
    assert load_scenario(tmp_path / "ok.yaml").target.base_url == "http://127.0.0.1:4000"


def test_fault_on_a_route_without_traffic(tmp_path: Path) -> None:
    text = GOOD.replace("routes: [chat]", "routes: [chat-small]")
    [p] = _load_bad(tmp_path, text).problems
    assert "nothing would trigger it" in p.message


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    err = _load_bad(tmp_path, GOOD.replace("title: A prompt", "title: [A prompt"))
    assert err.problems[0].line is not None and "invalid YAML" in err.problems[0].message
    err = _load_bad(tmp_path, "- just\n- a list\n", "list.yaml")
    assert "must be a mapping" in err.problems[0].message


def test_load_scenarios_reports_every_bad_file_and_duplicate_ids(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("kind: malformed_output", "kind: nope"))
    (tmp_path / "b.yaml").write_text(GOOD.replace("detect: 5m", "detect: 0m"))
    (tmp_path / "c.yaml").write_text("id: same\n" + GOOD)
    (tmp_path / "d.yaml").write_text("id: same\n" + GOOD)
    with pytest.raises(ScenarioError) as err:
        load_scenarios(tmp_path)
    files = {Path(p.file).name for p in err.value.problems}
    assert files == {"a.yaml", "b.yaml", "d.yaml"}
    assert any("duplicate scenario id 'same'" in p.message for p in err.value.problems)
    assert str(err.value).startswith("invalid drill scenario:")


def test_load_scenarios_on_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not a directory"):
        load_scenarios(tmp_path / "nope")


def test_a_query_prometheus_would_refuse_is_refused_at_load(tmp_path: Path) -> None:
    good = 'query: max(llm_incident:route_prompt:output_invalid_ratio{route="chat"}) or vector(0)'
    assert good in GOOD
    text = GOOD.replace(good, good.replace(") or vector(0)", " or vector(0)"), 1)
    [p] = _load_bad(tmp_path, text).problems
    assert p.field == "steady_state.query" and "not valid PromQL" in p.message
    assert p.line == _line_of(text, "steady_state:") + 1
