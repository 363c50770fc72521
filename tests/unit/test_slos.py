"""The SLO file: objectives in user terms and budgets, linted like playbooks; the rules it
renders (checked by promtool in tests/integration/test_slo_prometheus.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bot.playbook.engine_profiles import SANDBOX_LATENCY as LATENCY_BOUNDS
from bot.playbook.engine_profiles import SANDBOX_TTFT as TTFT_BOUNDS
from bot.playbook.openslo import load_openslo_text
from bot.playbook.slo_rules import render_rules, scaled, sli
from bot.playbook.slos import (
    SHIPPED_EXAMPLE,
    SloError,
    load_slos,
    load_slos_text,
    slos_json_schema,
)


def test_the_shipped_example_loads_with_user_terms():
    slos = load_slos(SHIPPED_EXAMPLE)
    ttft = slos.objectives["chat-ttft"]
    assert (ttft.sli, ttft.threshold, ttft.target) == ("ttft", 1.5, 0.95)
    assert ttft.klass == "latency_spike" and math.isclose(ttft.error_budget, 0.05)
    assert slos.objectives["chat-json"].klass == "malformed_output"
    assert slos.budgets["chat-spend"].per_hour_usd == 20
    assert "objectives" in slos_json_schema()["properties"]


@pytest.mark.parametrize(("text", "line", "says"), [
    ("objectives:\n  a:\n    route: chat\n    sli: ttft\n    threshold: 1.4s\n    target: 95%\n",
     5, "not a bucket bound"),
    ("objectives:\n  a:\n    route: chat\n    sli: errors\n    target: 100%\n", 5,
     "below 100%"),
    ("objectives:\n  a:\n    route: chat\n    sli: error\n    target: 99%\n", 4, "sli"),
    ("objectives:\n  a:\n    route: chat\n    sli: latency\n    target: 99%\n", 2,
     "needs a threshold"),
    ("budgets:\n  b:\n    route: chat\n", 2, "per_hour_usd"),
    ("budgets:\n  b:\n    per_hour_usd: 5\n", 2, "a route, a model, a customer, or per_customer"),
    ("source: vllm\nbudgets:\n  b: {route: chat, per_hour_usd: 5}\n", 2,
     "only a gateway counts; vllm has none"),
    ("budgets:\n  b:\n    customer: acme\n    per_customer: true\n    per_hour_usd: 5\n", 2,
     "not both"),
    ("objectives:\n  a:\n    route: chat\n    sli: errors\n    target: 99%\n    tgt: 1\n", 6,
     "tgt"),
])
def test_a_bad_slo_file_names_file_line_and_field(text, line, says):
    with pytest.raises(SloError) as err:
        load_slos_text(text, "slos.yaml")
    message = str(err.value)
    assert f"slos.yaml:{line}" in message and says in message, message


def test_the_thresholds_are_the_sandboxs_histogram_bounds():
    from drills.sandbox.metrics import APP_TTFT_BUCKETS, LATENCY_BUCKETS

    assert tuple(b for b in APP_TTFT_BUCKETS if math.isfinite(b)) == TTFT_BOUNDS
    assert tuple(b for b in LATENCY_BUCKETS if math.isfinite(b)) == LATENCY_BOUNDS


def test_the_rules_are_multiwindow_and_carry_the_labels_playbooks_match():
    slos = load_slos(SHIPPED_EXAMPLE)
    rules = render_rules(slos)["groups"][1]["rules"]  # chat-errors
    records = [r["record"] for r in rules if "record" in r]
    assert records == [f"llm_incident_slo:error_ratio:rate{w}"
                       for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")]
    fast = next(r for r in rules if r.get("alert") == "LLMErrorBudgetBurnFast")
    assert "rate1h" in fast["expr"] and "rate5m" in fast["expr"] and "14.4 * 0.005" in \
        fast["expr"] and "rate6h" in fast["expr"] and "6 * 0.005" in fast["expr"]
    assert fast["labels"] == {"slo": "chat-errors", "route": "chat", "sli": "errors",
                              "severity": "critical", "incident_class": "provider_errors"}
    ttft = sli(slos.objectives["chat-ttft"], "5m")
    assert 'le=~"1\\\\.50*"' in ttft.bad and "llm_app_time_to_first_token_seconds" in ttft.total
    assert scaled("1h", 60) == "60s" and scaled("5m", 60) == "5s" and scaled("3d", 1) == "3d"
    hostile = load_slos_text('objectives:\n  a: {route: "x\\"}) or vector(1", sli: errors, '
                             'target: 99%}\n')
    expr = sli(hostile.objectives["a"], "5m").ratio()
    assert 'requested_model="x\\"}) or vector(1"' in expr  # escaped, still one matcher


# --- sli: ratio and OpenSLO input ----------------------------------------------------

OPENSLO = Path(__file__).parents[1] / "fixtures" / "openslo" / "chat.yaml"


def test_openslo_ratio_slos_map_to_ratio_objectives_and_other_kinds_are_noted():
    slos, notes = load_openslo_text(OPENSLO.read_text(), str(OPENSLO))
    o = slos.objectives["chat-availability"]
    assert (o.sli, o.route, o.target, o.klass) == ("ratio", "chat", 0.995, "provider_errors")
    assert o.good is not None and 'status_code="200"' in o.good and o.bad is None
    assert slos.period.days == 28
    assert len(notes) == 1 and "Service chat: skipped" in notes[0]
    ratio = sli(o, "5m").ratio()
    assert ratio.startswith("(sum(rate(litellm_proxy_total_requests_metric_total{")


@pytest.mark.parametrize(("edit", "says"), [
    (("      ratioMetric:", "      thresholdMetric:"), "thresholdMetric"),
    (("  budgetingMethod: Occurrences", "  budgetingMethod: Timeslices"), "Timeslices"),
    (("      isRolling: true", "      isRolling: false"), "calendar window"),
    (("            type: Prometheus\n            spec:\n              query: "
      "litellm_proxy_total_requests_metric_total{requested_model=\"chat\"}",
      "            type: Datadog\n            spec:\n              query: x"), "only Prometheus"),
    (("        counter: true", "        counter: false"), "only counters"),
])
def test_openslo_parts_that_do_not_map_are_refused_naming_the_field(edit, says):
    text = OPENSLO.read_text()
    assert edit[0] in text
    with pytest.raises(SloError) as err:
        load_openslo_text(text.replace(edit[0], edit[1]), "openslo.yaml")
    assert says in str(err.value) and "SLO chat-availability" in str(err.value)


def test_a_ratio_objective_needs_counters_and_a_class():
    with pytest.raises(SloError, match="not a counter selector"):
        load_slos_text("objectives:\n  a: {route: chat, sli: ratio, incident_class: "
                       "provider_errors, target: 99%, bad: 'sum(rate(x[5m]))', total: y}\n")
    with pytest.raises(SloError, match="needs incident_class"):
        load_slos_text("objectives:\n  a: {route: chat, sli: ratio, target: 99%, bad: x, "
                       "total: y}\n")
    with pytest.raises(SloError, match="total and one of bad or good"):
        load_slos_text("objectives:\n  a: {route: chat, sli: ratio, target: 99%, bad: x, "
                       "good: z, total: y, incident_class: provider_errors}\n")


def test_slo_render_names_a_bad_scale_and_a_file_it_cannot_read(tmp_path):
    import asyncio

    from bot.adapters.commands import execute
    from bot.adapters.commands.context import Context

    ctx = Context(actor="cli", playbooks_dir=tmp_path, open_engine=lambda: None)
    bad = asyncio.run(execute(["slo", "render", "--scale", "fast"], ctx))
    assert not bad.ok and "--scale must be a number, got 'fast'" in bad.text
    slow = asyncio.run(execute(["slo", "render", "--scale", "0.5"], ctx))
    assert not slow.ok and "--scale must be 1 or more" in slow.text
    missing = asyncio.run(execute(["slo", "lint", str(tmp_path / "nope.yaml")], ctx))
    assert not missing.ok and "nope.yaml" in missing.text and "cannot read" in missing.text
