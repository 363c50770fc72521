"""The action catalog and lifecycle (plan/apply/verify/revert) against both the
in-memory fake and the real policy-file driver."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeMetrics, InMemoryDriver

from actions.base import Sample, ServingDriver
from actions.catalog import CATALOG, get_action
from actions.drivers.policy_file import PolicyFileDriver, dump_policy
from actions.policy import ServingPolicy
from bot.base.errors import DriverError, InputError, PartialApplyError

BASE = ServingPolicy.model_validate(
    {
        "routes": {
            "chat": {
                "max_output_tokens": 512,
                "max_concurrency": 16,
                "prompt_version": "v41",
                "traffic": {"chat-large": 0.9, "chat-small": 0.1},
            },
            "chat-small": {"max_output_tokens": 256, "max_concurrency": 8},
            "spare": {"enabled": False},
            "chat-long": {"canary": {"prompt_version": "v43", "weight": 0.25,
                                     "release": "REL-1"}},
        },
        "customers": {"acme": {"max_requests_per_minute": 600}},
    }
)
CANARY_1 = '{"model": null, "prompt_version": "v43", "release": "REL-1", "weight": 0.25}'
CANARY_2 = {"model": None, "prompt_version": "v42", "release": "REL-2", "weight": 0.05}

# (action, params, expected diff, (route, field, a value a human might set later))
CASES: list[tuple[str, dict[str, Any], str, tuple[str, str, Any] | None]] = [
    (
        "cap_output_length",
        {"route": "chat", "max_output_tokens": 200},
        "# t: cap output at 200 tokens on chat\n"
        "- routes.chat.max_output_tokens: 512\n+ routes.chat.max_output_tokens: 200",
        ("chat", "max_output_tokens", 100),
    ),
    (
        "cap_output_length",
        {"route": ["chat-small", "chat"], "max_output_tokens": 128},
        "# t: cap output at 128 tokens on chat-small, chat\n"
        "- routes.chat.max_output_tokens: 512\n+ routes.chat.max_output_tokens: 128\n"
        "- routes.chat-small.max_output_tokens: 256\n+ routes.chat-small.max_output_tokens: 128",
        ("chat-small", "max_output_tokens", 64),
    ),
    (
        "lower_concurrency",
        {"route": "chat", "factor": 0.5},
        "# t: lower concurrency to chat=8\n"
        "- routes.chat.max_concurrency: 16\n+ routes.chat.max_concurrency: 8",
        ("chat", "max_concurrency", 2),
    ),
    (
        "lower_concurrency",
        {"route": "spare", "max_concurrency": 4},
        "# t: lower concurrency to spare=4\n"
        "- routes.spare.max_concurrency: null\n+ routes.spare.max_concurrency: 4",
        ("spare", "max_concurrency", 1),
    ),
    (
        "disable_route",
        {"route": "chat-small"},
        "# t: disable chat-small\n- routes.chat-small.enabled: true\n+ routes.chat-small.enabled: false",
        None,
    ),
    (
        "enable_route",
        {"route": "spare"},
        "# t: enable spare\n- routes.spare.enabled: false\n+ routes.spare.enabled: true",
        None,
    ),
    (
        "fallback",
        {"route": "chat", "to": "chat-small"},
        '# t: send chat to fallback chat-small\n- routes.chat.fallback: null\n+ routes.chat.fallback: "chat-small"',
        ("chat", "fallback", "other"),
    ),
    (
        "rollback_prompt",
        {"route": "chat", "prompt_version": "v40"},
        '# t: pin prompt v40 on chat\n- routes.chat.prompt_version: "v41"\n+ routes.chat.prompt_version: "v40"',
        ("chat", "prompt_version", "v39"),
    ),
    (
        "shift_traffic",
        {"route": "chat", "weights": {"chat-small": 0.75, "chat-large": 0.25}},
        "# t: shift traffic to chat-large 25%, chat-small 75%\n"
        '- routes.chat.traffic: {"chat-large": 0.9, "chat-small": 0.1}\n'
        '+ routes.chat.traffic: {"chat-large": 0.25, "chat-small": 0.75}',
        ("chat", "traffic", {"chat-large": 1.0}),
    ),
    (
        "set_canary",
        {"route": "chat", "release": "REL-2", "prompt_version": "v42", "weight": 0.05},
        "# t: REL-2: prompt v42 on 5% of chat\n- routes.chat.canary: null\n"
        '+ routes.chat.canary: {"model": null, "prompt_version": "v42", "release": "REL-2", '
        '"weight": 0.05}',
        ("chat", "canary", {**CANARY_2, "weight": 0.5}),
    ),
    (
        "promote_canary",
        {"route": "chat-long", "release": "REL-1"},
        "# t: REL-1: promote the canary to all of chat-long\n"
        '- routes.chat-long.prompt_version: null\n+ routes.chat-long.prompt_version: "v43"\n'
        f"- routes.chat-long.canary: {CANARY_1}\n+ routes.chat-long.canary: null",
        ("chat-long", "prompt_version", "v44"),
    ),
    (
        "rollback_canary",
        {"route": "chat-long", "release": "REL-1"},
        "# t: REL-1: roll back the canary, all of chat-long on the baseline\n"
        f"- routes.chat-long.canary: {CANARY_1}\n+ routes.chat-long.canary: null",
        ("chat-long", "canary", {**CANARY_2, "release": "REL-1"}),
    ),
    (
        "cap_customer",
        {"customer": "runaway-co", "max_output_tokens": 64},
        "# t: cap output at 64 tokens for runaway-co\n"
        "- customers.runaway-co.max_output_tokens: null\n"
        "+ customers.runaway-co.max_output_tokens: 64",
        ("customer/runaway-co", "max_output_tokens", 32),
    ),
    (
        "throttle_customer",
        {"customer": ["acme", "beta@example.com"], "max_requests_per_minute": 30,
         "max_tokens_per_minute": 20000},
        "# t: throttle acme, beta@example.com to 30 requests/min, 20000 tokens/min\n"
        "- customers.acme.max_requests_per_minute: 600\n"
        "+ customers.acme.max_requests_per_minute: 30\n"
        "- customers.acme.max_tokens_per_minute: null\n"
        "+ customers.acme.max_tokens_per_minute: 20000\n"
        "- customers.beta@example.com.max_requests_per_minute: null\n"
        "+ customers.beta@example.com.max_requests_per_minute: 30\n"
        "- customers.beta@example.com.max_tokens_per_minute: null\n"
        "+ customers.beta@example.com.max_tokens_per_minute: 20000",
        ("customer/acme", "max_requests_per_minute", 10),
    ),
    (
        "block_customer",
        {"customer": "acme"},
        "# t: block acme (callers get 403)\n"
        "- customers.acme.blocked: false\n+ customers.acme.blocked: true",
        None,
    ),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["memory", "file"])
def driver(request, tmp_path: Path) -> ServingDriver:
    if request.param == "memory":
        return InMemoryDriver(BASE)
    path = tmp_path / "policy.yaml"
    path.write_bytes(dump_policy(BASE))
    return PolicyFileDriver(path)


def snapshot(driver: ServingDriver) -> Any:
    """Everything observable about the target, to prove nothing changed."""
    if isinstance(driver, PolicyFileDriver):
        return driver.path.read_bytes()
    return (driver.policy, len(driver.writes))


def routes(driver: ServingDriver) -> dict:
    """The routes and customers sections: what actions change."""
    data = run(driver.read()).model_dump()
    return {**data["routes"], **{f"customer/{k}": v for k, v in data["customers"].items()}}


def path(subject: str, field: str) -> str:
    section, _, name = subject.rpartition("/")
    return f"{'customers' if section else 'routes'}.{name}.{field}"


def plan_for(driver: ServingDriver, action: str, params: dict[str, Any]):
    return get_action(action).plan(params, run(driver.read()), target="t")


def test_catalog_has_the_course_actions() -> None:
    expected = {"cap_output_length", "lower_concurrency", "disable_route", "fallback"}
    assert expected | {"rollback_prompt", "shift_traffic"} <= set(CATALOG)
    assert {c[0] for c in CASES} == set(CATALOG)  # every action is exercised below


@pytest.mark.parametrize(("action", "params", "diff", "drift"), CASES, ids=IDS)
def test_plan_has_no_side_effects_and_a_readable_diff(driver, action, params, diff, drift) -> None:
    before = snapshot(driver)
    plan = plan_for(driver, action, params)
    assert snapshot(driver) == before
    assert plan.diff() == diff
    assert not plan.noop
    assert plan.action == action and plan.target == "t"


@pytest.mark.parametrize(("action", "params", "diff", "drift"), CASES, ids=IDS)
def test_apply_then_verify_is_clean_and_apply_is_idempotent(
    driver, action, params, diff, drift
) -> None:
    act, plan = get_action(action), plan_for(driver, action, params)
    run(act.apply(plan, driver, reason="INC-1"))
    assert run(act.verify(plan, driver)) == []
    for c in plan.changes:
        assert run(driver.read()).get(c.route, c.field) == c.after
    once, snap = routes(driver), snapshot(driver)
    run(act.apply(plan, driver, reason="INC-1 again"))
    assert routes(driver) == once
    if isinstance(driver, PolicyFileDriver):
        assert snapshot(driver) == snap  # not even updated_at moves


@pytest.mark.parametrize(("action", "params", "diff", "drift"), CASES, ids=IDS)
def test_revert_restores_before_and_twice_is_harmless(driver, action, params, diff, drift) -> None:
    original = routes(driver)
    act, plan = get_action(action), plan_for(driver, action, params)
    run(act.apply(plan, driver, reason="INC-1"))
    assert run(act.revert(plan, driver, reason="ttl")) == []
    for c in plan.changes:
        assert run(driver.read()).get(c.route, c.field) == c.before
    after_first = routes(driver)
    assert run(act.revert(plan, driver, reason="ttl again")) == []
    assert routes(driver) == after_first
    # The fields the plan touched are back; a route the plan added keeps only defaults.
    for name, route in original.items():
        assert after_first[name] == route


@pytest.mark.parametrize(
    ("action", "params", "diff", "drift"),
    [c for c in CASES if c[3]],
    ids=[i for i, c in zip(IDS, CASES, strict=True) if c[3]],
)
def test_revert_leaves_a_field_changed_since_apply_and_reports_it(
    driver, action, params, diff, drift
) -> None:
    route, field, human_value = drift
    act, plan = get_action(action), plan_for(driver, action, params)
    run(act.apply(plan, driver, reason="INC-1"))
    run(driver.write({route: {field: human_value}}, reason="human", action="manual"))
    problems = run(act.verify(plan, driver))
    assert len(problems) == 1 and path(route, field) in problems[0]
    drifted = run(act.revert(plan, driver, reason="ttl"))
    assert len(drifted) == 1 and path(route, field) in drifted[0]
    assert "left as is" in drifted[0]
    now = run(driver.read())
    assert now.get(route, field) == human_value
    for c in plan.changes:  # the other fields of the plan are still put back
        if (c.route, c.field) != (route, field):
            assert now.get(c.route, c.field) == c.before


def test_plan_when_target_already_holds_the_values_is_a_noop(driver) -> None:
    act = get_action("cap_output_length")
    plan = plan_for(driver, "cap_output_length", {"route": "chat", "max_output_tokens": 512})
    assert plan.noop and "no change" in plan.diff()
    before = snapshot(driver)
    run(act.apply(plan, driver, reason="r"))
    assert snapshot(driver) == before


def test_revert_after_a_partial_apply_puts_back_only_what_changed() -> None:
    driver = InMemoryDriver(BASE, fail_on_route="chat")
    act = get_action("cap_output_length")
    plan = plan_for(
        driver, "cap_output_length", {"route": ["chat-small", "chat"], "max_output_tokens": 64}
    )
    with pytest.raises(PartialApplyError) as exc:
        run(act.apply(plan, driver, reason="r"))
    assert exc.value.applied == ["chat-small"]
    assert run(driver.read()).get("chat-small", "max_output_tokens") == 64
    assert run(driver.read()).get("chat", "max_output_tokens") == 512
    driver.fail_on_route = None
    assert run(act.revert(plan, driver, reason="undo")) == []
    assert routes(driver) == {**BASE.model_dump()["routes"], "customer/acme":
                              BASE.model_dump()["customers"]["acme"]}


# -- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "params", "needle"),
    [
        ("cap_output_length", {"route": "chat", "max_output_tokens": 1024}, "would raise the cap"),
        ("lower_concurrency", {"route": "chat", "max_concurrency": 32}, "would raise it"),
        ("lower_concurrency", {"route": "spare", "factor": 0.5}, "no concurrency limit"),
        (
            "lower_concurrency",
            {"route": "chat", "factor": 0.5, "max_concurrency": 2},
            "exactly one",
        ),
        ("lower_concurrency", {"route": "chat"}, "exactly one"),
        ("lower_concurrency", {"route": "chat", "factor": 1.5}, "factor"),
        ("fallback", {"route": "chat", "to": "spare"}, "'spare' is disabled"),
        ("fallback", {"route": "chat", "to": "chat"}, "cannot fall back to itself"),
        ("fallback", {"route": ["chat", "chat-small"], "to": "chat-small"}, "itself"),
        ("shift_traffic", {"route": "chat", "weights": {"a": 0.5, "b": 0.3}}, "sum to 1"),
        ("shift_traffic", {"route": "chat", "weights": {"a": 1.5, "b": -0.5}}, ">= 0"),
        (
            "cap_output_length",
            {"route": "chat", "max_tokens": 5, "max_output_tokens": 5},
            "max_tokens",
        ),
        ("cap_output_length", {"route": "chat"}, "max_output_tokens"),
        ("cap_output_length", {"route": "chat", "max_output_tokens": 0}, "max_output_tokens"),
        ("disable_route", {"route": []}, "route"),
        ("disable_route", {"route": " "}, "at least one route"),
        ("rollback_prompt", {"route": "chat", "prompt_version": ""}, "prompt_version"),
        ("throttle_customer", {"customer": "acme", "max_requests_per_minute": 900},
         "already has max_requests_per_minute 600; 900 would raise it"),
        ("throttle_customer", {"customer": "acme"}, "give max_requests_per_minute"),
        ("cap_customer", {"customer": "a b", "max_output_tokens": 5}, "not a caller id"),
        ("cap_customer", {"customer": "x/../y", "max_output_tokens": 5}, "not a caller id"),
        ("block_customer", {"customer": []}, "at least one customer"),
    ],
)
def test_refusals_say_why_and_change_nothing(driver, action, params, needle) -> None:
    before = snapshot(driver)
    with pytest.raises(InputError, match=needle) as exc:
        plan_for(driver, action, params)
    assert action in exc.value.message
    assert snapshot(driver) == before


def test_unknown_param_error_names_the_field_and_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as exc:
        get_action("fallback").plan({"route": "chat", "to": "x", "too": "y"}, BASE, target="t")
    assert "too" in exc.value.message
    assert exc.value.hint and "route" in exc.value.hint and "to" in exc.value.hint


def test_unknown_action_lists_the_catalog() -> None:
    with pytest.raises(InputError, match="unknown action 'reboot'") as exc:
        get_action("reboot")
    assert "cap_output_length" in (exc.value.hint or "")


# -- the fakes the runner's tests rely on --------------------------------------------


def test_in_memory_driver_records_writes_and_injects_failures() -> None:
    d = InMemoryDriver(BASE, name="gw")
    run(d.write({"chat": {"enabled": False}}, reason="why", action="disable_route"))
    assert d.writes == [({"chat": {"enabled": False}}, "why", "disable_route")]
    assert run(d.read()).updated_by == "why"
    assert BASE.route("chat").enabled  # the fake copied its input
    d.fail_writes = True
    with pytest.raises(DriverError, match="gw"):
        run(d.write({"chat": {"enabled": True}}, reason="r", action="a"))
    assert not run(d.read()).route("chat").enabled
    d.fail_reads = True
    with pytest.raises(DriverError):
        run(d.read())


def test_in_memory_driver_refuses_an_invalid_policy_part_way() -> None:
    d = InMemoryDriver(BASE)
    updates = {"chat-small": {"enabled": False}, "chat": {"traffic": {"x": 0.2}}}
    with pytest.raises(PartialApplyError) as exc:
        run(d.write(updates, reason="r", action="a"))
    assert exc.value.applied == ["chat-small"]
    assert run(d.read()).route("chat").traffic == BASE.route("chat").traffic


def test_fake_metrics_scripts_answers_and_records_queries() -> None:
    labelled = [Sample(labels={"route": "chat"}, value=2.0)]
    m = FakeMetrics({"up": 1, "rate": labelled})
    assert run(m.query("up")) == [Sample(value=1.0)]
    assert run(m.query("rate")) == labelled
    assert run(m.query("unscripted")) == []
    m.set("up", math.nan)
    assert math.isnan(run(m.query("up"))[0].value)
    m.fail = True
    with pytest.raises(DriverError, match="up"):
        run(m.query("up"))
    assert m.queries == ["up", "rate", "unscripted", "up", "up"]
