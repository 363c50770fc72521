"""Sandboxed templates: label values are data, internals and runaway computations are refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.base.errors import TemplateError
from bot.intake.alert import Alert
from bot.playbook.loader import load_file
from bot.playbook.render import (
    MAX_OUTPUT,
    TemplateLineError,
    check_template,
    inspect_template,
    promql_escape,
    render_params,
    render_query,
    render_step_args,
)
from bot.playbook.schema import Step

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks"


def make_alert(labels: dict[str, str], annotations: dict[str, str] | None = None) -> Alert:
    return Alert(
        source="generic",
        fingerprint="fp-1",
        status="firing",
        labels={"alertname": "LLMCostBurnRateHigh", **labels},
        annotations=annotations or {},
        starts_at=datetime(2026, 11, 29, 10, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def cost_playbook():
    return load_file(FIXTURES / "good" / "runaway-cost.yaml")


def query(text: str, params: dict | None = None, **labels: str) -> str:
    return render_query(text, params or {}, make_alert(labels))


# --- rendering ---------------------------------------------------------------------


def test_params_render_from_labels_and_annotations(cost_playbook):
    alert = make_alert({"route": "chat"}, {"hourly_budget_usd": "40"})
    assert render_params(cost_playbook, alert) == {
        "route": "chat",
        "output_cap": 256,
        "budget": 40,  # a ranged number renders as a number
    }


def test_params_defaults_apply_when_the_alert_lacks_them(cost_playbook):
    params = render_params(cost_playbook, make_alert({"requested_model": "chat-large"}))
    assert params == {"route": "chat-large", "output_cap": 256, "budget": 20}


def test_step_args_render_recursively_and_numbers_stay_strings():
    step = Step.model_validate(
        {
            "id": "s",
            "title": "t",
            "action": "shift_traffic",
            "with": {
                "route": ["{{ params.route }}", "{{ labels.model }}-b"],
                "weights": {"{{ not a template key }}": "{{ params.share }}", "fixed": 0.5},
                "note": None,
            },
        }
    )
    args = render_step_args(step, {"route": "chat", "share": 0.5}, make_alert({"model": "m"}))
    assert args == {
        "route": ["chat", "m-b"],
        "weights": {"{{ not a template key }}": "0.5", "fixed": 0.5},
        "note": None,
    }


def test_alert_fields_are_readable():
    text = "{{ alert.alertname }}/{{ alert.status }}/{{ alert.fingerprint }}/{{ alert.starts_at }}"
    assert query(text) == "LLMCostBurnRateHigh/firing/fp-1/2026-11-29T10:00:00+00:00"


def test_label_values_with_jinja_syntax_stay_literal(cost_playbook):
    evil = "{{ 7*7 }}{% for x in y %}"
    params = render_params(cost_playbook, make_alert({"route": evil}))
    assert params["route"] == evil
    assert query("{{ labels.route }}", route=evil) == evil


def test_promql_filter_escapes_label_values():
    value = 'chat"} or vector(1) or x{a="\\\n'
    rendered = query('up{requested_model="{{ labels.route | promql }}"}', route=value)
    assert rendered == 'up{requested_model="chat\\"} or vector(1) or x{a=\\"\\\\\\n"}'
    assert promql_escape('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_missing_label_names_the_location_and_label():
    step = Step(
        id="cap", title="t", action="cap_output_length", with_={"route": "{{ labels.route }}"}
    )
    with pytest.raises(TemplateError) as info:
        render_step_args(step, {}, make_alert({}))
    assert info.value.message == "steps[cap].with.route: label 'route' is not set"
    assert "default(" in (info.value.hint or "")


def test_missing_label_in_params_names_the_param(cost_playbook):
    alert = make_alert({})  # neither route nor requested_model
    with pytest.raises(TemplateError) as info:
        render_params(cost_playbook, alert)
    assert info.value.message == "params.route: label 'requested_model' is not set"


def test_missing_param_is_named():
    with pytest.raises(TemplateError, match=r"query: param 'cap' is not set"):
        query("{{ params.cap }}", {"route": "chat"})


def test_allowed_filters_and_methods_work():
    text = (
        "{{ labels.route | upper | replace('-', '_') }} {{ labels.get('x', 'd') }} {{ [3,1]|max }}"
    )
    assert query(text, route="chat-large") == "CHAT_LARGE d 3"


# --- refused constructs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "what"),
    [
        ("{{ ''.__class__ }}", "'__class__'"),
        ("{{ labels['__class__'] }}", "'__class__'"),
        ("{% for x in labels %}{{ x }}{% endfor %}", "loops"),
        ("{% set x = 1 %}{{ x }}", "{% set %}"),
        ("{% macro m() %}x{% endmacro %}", "macros"),
        ("{% include 'other' %}", "{% include %}"),
        ("{% import 'other' as o %}", "{% import %}"),
        ("{% extends 'base' %}", "{% extends %}"),
        ("{% filter upper %}x{% endfilter %}", "{% filter %} blocks"),
        ("{{ labels.route | center(99) }}", "filter 'center'"),
        ("{{ 'x'.format(1) }}", "calling 'format'"),
        ("{{ range(10) }}", "calling 'range'"),
    ],
)
def test_forbidden_constructs_are_refused_at_check_and_render_time(template, what):
    with pytest.raises(TemplateError) as checked:
        check_template(template)
    assert what in checked.value.message
    with pytest.raises(TemplateError) as rendered:
        query(template, route="chat")
    assert rendered.value.message.startswith("query: ")
    assert what in rendered.value.message


def test_dynamic_attribute_names_are_refused_by_the_sandbox_at_render_time():
    # The static check cannot see through params.k; the sandbox must still refuse.
    check_template("{{ labels[params.k] }}")
    with pytest.raises(TemplateError, match="not allowed"):
        query("{{ labels[params.k] }}", {"k": "__class__"})


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        "{{ 9 ** (9 ** 9) }}",
        "{{ 2 ** 100000 }}",
        "{{ (10 ** 1000) * (10 ** 1000) * (10 ** 1000) * (10 ** 1000) * (10 ** 1000) }}",
        "{{ 'x' * 60000 + 'y' * 6000 }}",
        "{{ '%999999999d' % 1 }}",
        "{{ 'x'|replace('x','xxxxxxxxxx')|replace('x','xxxxxxxxxx')|replace('x','xxxxxxxxxx')"
        "|replace('x','xxxxxxxxxx')|replace('x','xxxxxxxxxx')|replace('x','xxxxxxxxxx') }}",
        "{{ 2.0 ** 100000 }}",
    ],
)
def test_runaway_computations_fail_fast(template):
    check_template(template)  # syntactically fine: only evaluation is refused
    with pytest.raises(TemplateError):
        query(template)


def test_rendered_output_is_capped():
    assert len(query("{{ 'x' * " + str(MAX_OUTPUT) + " }}")) == MAX_OUTPUT
    with pytest.raises(TemplateError, match="rendered output would be"):
        query("{{ 'x' * " + str(MAX_OUTPUT + 1) + " }}")


def test_syntax_error_carries_the_template_line():
    with pytest.raises(TemplateLineError) as info:
        check_template("first line\n{{ labels.route")
    assert info.value.lineno == 2
    assert "syntax error" in info.value.message


def test_inspect_reports_names_and_static_param_references():
    info = inspect_template("{{ params.route }} {{ params['cap'] }} {{ labels.x }} {{ params[k] }}")
    assert info.params == {"route", "cap"}
    assert info.names == {"params", "labels", "k"}
