"""Text from an SLO file reaches the generated alerts' labels and annotations as
text, never as a template Prometheus runs when the alert fires: checked by the
real promtool, whose tests expand labels and annotations as Prometheus does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from integration.services import require_binary

from bot.playbook.slo_rules import dump, render_rules, render_tests
from bot.playbook.slos import Budget, Objective, SloError, SloFile, load_slos_text

pytestmark = pytest.mark.integration
PROMTOOL = "/usr/bin/promtool"
HOSTILE = '{{ query "up" }} {{ $labels.slo }} {{ $value }}'


def promtool_test(tmp_path: Path, slos: SloFile) -> tuple[dict, subprocess.CompletedProcess]:
    promtool = require_binary(PROMTOOL)
    (tmp_path / "rules.yaml").write_text(dump(render_rules(slos)))
    tests = render_tests(slos, "rules.yaml")
    (tmp_path / "rules.test.yaml").write_text(dump(tests))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", "rules.test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, check=False)
    return tests, run


def fired(tests: dict, alertname: str) -> dict:
    """The first expected firing of ``alertname`` in the generated tests."""
    return next(a for t in tests["tests"] for c in t.get("alert_rule_test", [])
                if c["alertname"] == alertname for a in c["exp_alerts"])


def test_a_description_with_template_text_fires_as_the_literal_text(tmp_path):
    slos = load_slos_text(yaml.safe_dump({"objectives": {"chat-errors": {
        "route": "chat", "sli": "errors", "target": "99%", "description": HOSTILE}}}))
    tests, run = promtool_test(tmp_path, slos)
    want = fired(tests, "LLMErrorBudgetBurnFast")["exp_annotations"]
    # promtool compares the annotations as expanded against these, written as plain text.
    assert want["slo_description"] == HOSTILE
    assert run.returncode == 0, run.stdout + run.stderr


def test_names_built_in_code_are_quoted_in_labels_and_annotations(tmp_path):
    # The file refuses such names (below); a caller building the model in code, as
    # the OpenSLO import does, gets them quoted all the same.
    route = "{{ $value }}"
    objective = Objective.model_construct(
        route=route, sli="errors", target=0.99, threshold=None, incident_class=None,
        bad=None, good=None, total=None, description="")
    budget = Budget.model_construct(
        route=None, model=route, customer=None, per_customer=False, environment=None,
        per_hour_usd=5.0, per_day_usd=None)
    slos = SloFile.model_construct(version=1, source="sandbox", period=None,
                                   objectives={"chat-errors": objective},
                                   budgets={"spend": budget})
    tests, run = promtool_test(tmp_path, slos)
    alert = fired(tests, "LLMErrorBudgetBurnFast")
    assert alert["exp_labels"]["route"] == route
    assert alert["exp_annotations"]["summary"].startswith(f"chat-errors: {route} is burning")
    spend = fired(tests, "LLMSpendBudgetExceeded")
    assert spend["exp_labels"]["model"] == route
    assert f"model {route}" in spend["exp_annotations"]["description"]
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(("doc", "line", "field"), [
    ({"objectives": {"a": {"route": '{{ query "up" }}', "sli": "errors", "target": "99%"}}},
     3, "objectives.a.route"),
    ({"budgets": {"b": {"model": "chat}}", "per_hour_usd": 5}}}, 3, "budgets.b.model"),
    ({"budgets": {"b": {"route": "chat\nx", "per_hour_usd": 5}}}, 4, "budgets.b.route"),
])
def test_a_name_with_template_delimiters_is_refused_at_load_naming_file_line_field(
        doc, line, field):
    text = yaml.safe_dump(doc)
    with pytest.raises(SloError) as err:
        load_slos_text(text, "slos.yaml")
    message = str(err.value)
    assert f"slos.yaml:{line}: {field}" in message, (message, text)
