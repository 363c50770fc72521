"""A verification passes only on evidence the playbook defines.

Two ways a verification used to pass on nothing: an alert annotation that scaled
the check (``hourly_budget_usd: 1e300`` divides any spend to ~0), and a query that
turned "no data" into a passing number (``... or vector(0)``). Both are refused:
the first at plan (the param has a declared range), the second at lint and in the
runner (no data is "not known yet" until ``within``, then the step's ``on_fail``).
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import promql_parser
import pytest
from fakes import FakeMetrics
from incident_env import PLAYBOOKS, Env, alert, provider_alert, registry

from actions.base import Sample
from bot.base.errors import PlaybookError, TemplateError
from bot.core.guards import evaluate_verification
from bot.playbook.loader import lint, load_text
from bot.playbook.render import render_params, render_query
from bot.playbook.schema import Verify


def run(coro):
    return asyncio.run(coro)


class NoDataYet(FakeMetrics):
    """Prometheus before the queried series exist (one scrape old, renamed, a wrong
    label): every selector is empty, so only a value the query makes up itself
    (``X or vector(N)``, what Prometheus returns for it) answers."""

    async def query(self, promql: str) -> list[Sample]:
        self.queries.append(promql)
        expr = promql_parser.parse(promql)
        while isinstance(expr, promql_parser.ParenExpr):
            expr = expr.expr
        if isinstance(expr, promql_parser.BinaryExpr) and str(expr.op) == "or" and \
                isinstance(expr.rhs, promql_parser.Call) and expr.rhs.func.name == "vector":
            return [Sample(value=expr.rhs.args[0].val)]
        return []


def cost_alert(budget: str):
    base = alert()
    return base.model_copy(update={"annotations": {**base.annotations,
                                                   "hourly_budget_usd": budget}})


# --- an alert never scales the check -------------------------------------------------------


@pytest.mark.parametrize("budget", ["1e300", "-1", "nan", "inf", "0"])
def test_an_out_of_range_budget_annotation_is_refused_naming_param_value_and_range(budget):
    playbook = registry().get("runaway-cost")
    with pytest.raises(TemplateError) as err:
        render_params(playbook, cost_alert(budget))
    message = err.value.message
    assert "params.hourly_budget_usd" in message and "0.01..1000" in message
    assert budget in message.lower()


@pytest.mark.parametrize("budget", ["1e300", "-1", "nan"])
def test_the_plan_is_refused_so_the_cap_never_verifies_on_that_budget(budget):
    env = Env(metrics=FakeMetrics())
    item = run(env.engine.handle_alerts([cost_alert(budget)]))[0]
    with pytest.raises(TemplateError, match="params.hourly_budget_usd"):
        run(env.engine.plan_step(item.incident_id, "runaway-cost", "cap-output", actor="alice"))
    assert env.store.runs() == [] and env.driver.policy.route("chat").max_output_tokens == 1024


def test_a_budget_inside_the_range_divides_the_spend_as_a_number():
    playbook = registry().get("runaway-cost")
    a = cost_alert("36")
    params = render_params(playbook, a)
    assert params["hourly_budget_usd"] == 36
    query = render_query(playbook.step("cap-output").guard.verify.query, params, a)  # type: ignore[union-attr]
    assert query.rstrip().endswith("* 3600\n/ 36") or query.rstrip().endswith("/ 36")
    assert "vector" not in query


# --- no data is not known yet, then on_fail --------------------------------------------------


def test_the_shipped_cost_cap_with_no_spend_series_escalates_at_the_deadline():
    env = Env(metrics=NoDataYet())
    item = run(env.engine.handle_alerts([alert()]))[0]
    planned, _ = run(env.engine.run_step(item.incident_id, None, "cap-output", "alice"))
    applied = run(env.engine.approve(planned.id, "bob", apply=True))
    assert applied.state == "applied"
    env.clock.advance(minutes=1)
    assert run(env.runner.check_verification(applied.id)).state == "applied"  # not known yet
    assert env.store.mitigation(applied.id).verify_state == "pending"
    env.clock.advance(minutes=15)
    run(env.runner.run_due())
    assert env.store.run(applied.id).state == "applied"  # escalate keeps the cap
    assert env.store.mitigation(applied.id).verify_state == "failed"
    last = env.store.run_events(applied.id)[-1]
    assert last.kind == "escalation" and "no data" in last.text
    assert env.driver.policy.route("chat").max_output_tokens == 256


def test_an_automatic_fallback_with_no_error_series_is_reverted_at_the_deadline():
    env = Env(metrics=NoDataYet())
    item = run(env.engine.handle_alerts([provider_alert()]))[0]
    (auto,) = env.store.runs(incident_id=item.incident_id)
    assert auto.state == "applied" and env.driver.policy.route("chat").fallback == "chat-small"
    assert run(env.runner.check_verification(auto.id)).state == "applied"
    env.clock.advance(minutes=11)
    run(env.runner.run_due())
    assert env.store.run(auto.id).state == "reverted"
    assert env.driver.policy.route("chat").fallback is None
    assert "not known yet" in " ".join(e.text for e in env.store.run_events(auto.id))


def test_a_stored_query_that_makes_up_zero_never_passes():
    # A run planned before the lint existed keeps its rendered query: the runner
    # judges the query, not only its answer.
    q = 'sum(rate(litellm_spend_metric_total{requested_model="chat"}[5m])) or vector(0)'
    metrics = FakeMetrics({q: 0.0})
    env = Env(metrics=metrics)
    item = run(env.engine.handle_alerts([alert()]))[0]
    planned, _ = run(env.engine.run_step(item.incident_id, None, "cap-output", "alice"))
    env.store.db.execute("UPDATE runs SET verify_query = ? WHERE id = ?", [q, planned.id])
    applied = run(env.engine.approve(planned.id, "bob", apply=True))
    assert run(env.runner.check_verification(applied.id)).state == "applied"
    env.clock.advance(minutes=16)
    run(env.runner.run_due())
    assert env.store.mitigation(applied.id).verify_state == "failed"
    assert "makes up a value" in env.store.run_events(applied.id)[-1].text


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
def test_a_sample_that_is_no_number_is_not_known(value):
    # NaN != 0 holds and -Inf < 1 holds; neither measured anything.
    for expect in ("!= 0", "< 1"):
        ok, text = evaluate_verification([Sample(value=value)],
                                         Verify(query="q", expect=expect, within="5m"))
        assert not ok and "not known yet" in text


# --- lint --------------------------------------------------------------------------------

PB = """id: p
title: P
class: runaway_cost
severity: high
match: {any: [{alertname: A}]}
params:
  route: "{{ labels.route }}"
  budget: {value: "{{ annotations.budget | default(20) }}", min: 1, max: 500}
  loose: "{{ annotations.loose | default(20) }}"
diagnose:
  - title: spend, or 0 for the eye
    query: sum(rate(x{route="{{ params.route | promql }}"}[5m])) or vector(0)
steps:
  - id: s
    title: S
    action: cap_output_length
    with: {route: "{{ params.route }}", max_output_tokens: 64}
    guard:
      verify:
        query: QUERY
        expect: "< 1"
        within: 5m
"""
SPEND = 'sum(rate(x{route="{{ params.route | promql }}"}[5m]))'


def _problems(tmp_path: Path, query: str):
    path = tmp_path / "p.yaml"
    path.write_text(PB.replace("QUERY", query))
    return lint([path])


@pytest.mark.parametrize("fallback", [
    " or vector(0)", " or on() vector(1)", " > 0 or vector(0)", " or (vector(1) * 0)"])
def test_lint_refuses_a_verify_query_that_makes_up_a_value(tmp_path, fallback):
    (problem,) = _problems(tmp_path, f"'{SPEND}{fallback}'")
    assert (problem.file, problem.line, problem.field) == (
        str(tmp_path / "p.yaml"), 20, "steps[0].guard.verify.query")
    assert "turns no data into a value" in problem.message
    assert "on_fail" in (problem.hint or "")


def test_lint_refuses_absent_and_a_query_that_reads_no_series(tmp_path):
    (absent,) = _problems(tmp_path, "'absent(up{job=\"x\"})'")
    assert "absent(...)" in absent.message
    (constant,) = _problems(tmp_path, "'vector(0)'")
    assert "reads no series" in constant.message
    (boolean,) = _problems(tmp_path, f"'scalar({SPEND}) > bool 1'")
    assert "scalar(...) answers NaN" in boolean.message


def test_a_diagnose_query_may_keep_or_vector_and_a_ranged_budget_is_fine(tmp_path):
    assert _problems(tmp_path, f"'{SPEND} * 3600 / {{{{ params.budget }}}}'") == []
    # A zero that stands on a series that exists is evidence, not made up.
    assert _problems(tmp_path, f"'{SPEND} or 0 * sum(rate(requests[5m]))'") == []


@pytest.mark.parametrize("number", [
    "{{ params.loose | number }}", "{{ annotations.budget | number }}",
    "{{ params.loose | float }}", "{{ labels.route | length }}"])
def test_lint_refuses_an_alert_derived_number_without_a_declared_range(tmp_path, number):
    (problem,) = _problems(tmp_path, f"'{SPEND} / {number}'")
    assert (problem.line, problem.field) == (20, "steps[0].guard.verify.query")
    assert "no declared range" in problem.message and "min:" in (problem.hint or "")


def test_lint_refuses_promql_quoting_outside_a_label_value(tmp_path):
    (problem,) = _problems(tmp_path, f"'{SPEND} / {{{{ params.loose | promql }}}}'")
    assert "outside a double-quoted label value" in problem.message


@pytest.mark.parametrize(("budget", "error"), [
    ("{value: 5, min: 10, max: 1}", "min (10) is above max (1)"),
    ("{value: 600, min: 1, max: 500}", "value 600 is outside the range 1..500"),
    ("{value: '{{ annotations.b }}', min: 1}", "max"),
])
def test_a_bad_range_is_a_schema_error_at_its_line(budget, error):
    text = PB.replace("QUERY", f"'{SPEND}'").replace(
        'budget: {value: "{{ annotations.budget | default(20) }}", min: 1, max: 500}',
        f"budget: {budget}")
    with pytest.raises(PlaybookError) as err:
        load_text(text, "p.yaml")
    assert any(p.line == 8 and p.field.startswith("params.budget") and error in p.message
               for p in err.value.problems), err.value.problems


def test_every_shipped_verify_query_leaves_no_data_empty():
    for path in sorted(PLAYBOOKS.glob("*.yaml")):
        text = path.read_text()
        playbook = load_text(text, str(path))
        for step in playbook.steps:
            if step.guard.verify is not None:
                query = textwrap.dedent(step.guard.verify.query)
                assert "vector(" not in query and "absent" not in query, (path, step.id)
