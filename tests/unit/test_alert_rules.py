"""The alert rules pack: promtool/amtool accept it, its unit tests pass, it agrees
with the shipped playbooks, and its fast rendered copy works the same way.

promtool and amtool run as subprocesses on local files only (no network). A
missing binary skips locally and fails when LLM_INCIDENT_REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bot.base.errors import InputError
from bot.playbook.loader import load_dir
from bot.playbook.schema import INCIDENT_CLASSES
from drills.alert_rules import (
    ALERTMANAGER_PATH,
    ALERTS_DIR,
    RULES_PATH,
    alert_rules,
    engine_route_relabel,
    load_rules,
    render_rules,
    threshold_of,
    write_rules,
)

PLAYBOOKS_DIR = ALERTS_DIR.parent
REQUIRED_ALERTS = {
    "LLMCostBurnRateHigh": "runaway_cost",
    "LLMOutputTokensSurge": "runaway_cost",
    "LLMTimeToFirstTokenHigh": "latency_spike",
    "LLMMalformedOutputRatioHigh": "malformed_output",
    "LLMContextOverflowRejectionsHigh": "context_overflow",
    "LLMSafetyFlagRateHigh": "safety_regression",
    "LLMRefusalRateHigh": "safety_regression",
    "LLMProviderErrorRateHigh": "provider_errors",
    "LLMRoutingMismatch": "bad_routing",
    "LLMFallbackRateHigh": "bad_routing",
    "LLMQualityScoreLow": "quality_degradation",
}
SEVERITIES = {"critical", "high", "warning", "info"}


def tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    message = (
        f"{name} is not installed; install the Debian package "
        f"{'prometheus-alertmanager' if name == 'amtool' else 'prometheus'} (tests/run.sh does)"
    )
    if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def rules() -> dict:
    return alert_rules(load_rules())


# --- the shipped files, through the real tools ------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    out = run([tool("promtool"), "check", "rules", str(RULES_PATH)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_rule_tests_pass() -> None:
    out = run([tool("promtool"), "test", "rules", "rules.test.yaml"], cwd=ALERTS_DIR)
    assert out.returncode == 0, out.stdout + out.stderr


def _where(series: str) -> tuple[str | None, str | None]:
    """(route, prompt_version or caller) of an input series, by the label each family
    uses: a per-customer alert's quiet neighbour is another customer of the route."""
    labels = dict(re.findall(r'(\w+)="([^"]*)"', series))
    route = next(
        (labels[k] for k in ("route", "requested_model", "model_name", "model") if k in labels),
        None,
    )
    return route, labels.get("prompt_version") or labels.get("end_user")


def test_promtool_rule_tests_cover_every_alert_firing_and_quiet(rules: dict) -> None:
    tests = yaml.safe_load((ALERTS_DIR / "rules.test.yaml").read_text())["tests"]
    fired: set[str] = set()
    for group in tests:
        inputs = {_where(s["series"]) for s in group["input_series"]}
        for case in group.get("alert_rule_test", []):
            if not case["exp_alerts"]:
                continue
            fired.add(case["alertname"])
            alerted = {
                (a["exp_labels"]["route"],
                 a["exp_labels"].get("prompt_version") or a["exp_labels"].get("customer"))
                for a in case["exp_alerts"]
            }
            # Some route (or prompt version) in the same input must stay quiet.
            quiet = {
                (r, v) for r, v in inputs if (r, v) not in alerted and (r, None) not in alerted
            }
            assert quiet, f"{group['name']}: no not-firing case for {case['alertname']}"
    assert fired == set(rules)


def test_a_broken_threshold_makes_the_rule_tests_fail(tmp_path: Path) -> None:
    """The promtool tests can fail: raise one threshold and they do."""
    rule = "llm_incident:route:provider_error_ratio"
    text = RULES_PATH.read_text().replace(f"{rule} > 0.05", f"{rule} > 0.5")
    assert text != RULES_PATH.read_text()
    (tmp_path / "rules.yaml").write_text(text)
    shutil.copy(ALERTS_DIR / "rules.test.yaml", tmp_path / "rules.test.yaml")
    out = run([tool("promtool"), "test", "rules", "rules.test.yaml"], cwd=tmp_path)
    assert out.returncode != 0
    assert "LLMProviderErrorRateHigh" in out.stdout + out.stderr


def test_amtool_accepts_the_alertmanager_config() -> None:
    out = run([tool("amtool"), "check-config", str(ALERTMANAGER_PATH)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_amtool_rejects_a_broken_config(tmp_path: Path) -> None:
    bad = ALERTMANAGER_PATH.read_text().replace("receiver: llm-incident-bot", "receiver: nobody")
    (tmp_path / "am.yml").write_text(bad)
    out = run([tool("amtool"), "check-config", str(tmp_path / "am.yml")])
    assert out.returncode != 0
    assert "nobody" in out.stdout + out.stderr


# --- what the pack promises -------------------------------------------------------------


def test_every_incident_class_has_its_named_alerts(rules: dict) -> None:
    for name, klass in REQUIRED_ALERTS.items():
        assert name in rules, f"missing alert {name}"
        assert rules[name]["labels"]["incident_class"] == klass
    assert {r["labels"]["incident_class"] for r in rules.values()} == set(INCIDENT_CLASSES)


def test_every_alert_has_severity_summary_description_and_its_threshold(rules: dict) -> None:
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        ann = rule["annotations"]
        assert ann["summary"].strip() and ann["description"].strip(), name
        _, value = threshold_of(rule)
        assert float(ann["threshold"]) == value, f"{name}: threshold annotation out of step"
        assert "{{ $labels.route }}" in ann["summary"], f"{name}: summary must name the route"
    budget = float(rules["LLMCostBurnRateHigh"]["annotations"]["hourly_budget_usd"])
    assert budget == threshold_of(rules["LLMCostBurnRateHigh"])[1]


def test_each_alert_is_matched_by_its_class_playbook(rules: dict) -> None:
    playbooks = load_dir(PLAYBOOKS_DIR)
    for name, rule in rules.items():
        klass = rule["labels"]["incident_class"]
        matching = [p for p in playbooks.values() if any(c.alertname == name for c in p.match.any)]
        assert matching, f"no playbook matches {name}"
        assert all(p.class_ == klass for p in matching), name


def test_annotations_the_playbooks_read_are_provided(rules: dict) -> None:
    """A playbook param `annotations.x` must find `x` on every alert it matches,
    unless the template gives a default."""
    playbooks = load_dir(PLAYBOOKS_DIR)
    for p in playbooks.values():
        names = {c.alertname for c in p.match.any if c.alertname in rules}
        for param, template in p.params.items():
            for key in re.findall(r"annotations\.([a-z_]+)", str(template)):
                for alert in names:
                    assert key in rules[alert]["annotations"], (
                        f"playbook {p.id} param {param} reads annotations.{key}; "
                        f"alert {alert} does not set it"
                    )


def test_alertmanager_config_sends_everything_to_the_bot() -> None:
    cfg = yaml.safe_load(ALERTMANAGER_PATH.read_text())
    route = cfg["route"]
    assert {"alertname", "route"} <= set(route["group_by"])
    bot_routes = [r for r in route["routes"] if r["receiver"] == "llm-incident-bot"]
    matcher = bot_routes[0]["matchers"][0]
    pattern = re.search(r'incident_class\s*=~\s*"([^"]+)"', matcher).group(1)
    for klass in INCIDENT_CLASSES:
        assert re.fullmatch(pattern, klass), klass
    receiver = next(r for r in cfg["receivers"] if r["name"] == "llm-incident-bot")
    hook = receiver["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:8080/v1/alerts/alertmanager"
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"


# --- the fast copy ------------------------------------------------------------------------


def test_rendered_copy_is_valid_and_fast(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path / "fast.yaml", for_="5s", window="30s", interval="1s",
        thresholds={"LLMCostBurnRateHigh": 0.5, "LLMMalformedOutputRatioHigh": 0.2},
    )  # fmt: skip
    out = run([tool("promtool"), "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    data = yaml.safe_load(path.read_text())
    assert all(g["interval"] == "1s" for g in data["groups"])
    fast = alert_rules(data)
    assert set(fast) == set(alert_rules(load_rules()))
    assert all(r["for"] == "5s" for r in fast.values())
    text = path.read_text()
    assert "[5m]" not in text and "offset 5m" not in text
    assert "[30s]" in text and "[6h]" in text  # history windows are kept
    assert threshold_of(fast["LLMCostBurnRateHigh"]) == (">", 0.5)
    assert threshold_of(fast["LLMMalformedOutputRatioHigh"]) == (">", 0.2)
    assert fast["LLMCostBurnRateHigh"]["annotations"]["threshold"] == "0.5"
    # The budget the runaway-cost playbook verifies against moves with the threshold.
    assert fast["LLMCostBurnRateHigh"]["annotations"]["hourly_budget_usd"] == "0.5"
    assert fast["LLMOutputTokensSurge"]["annotations"]["hourly_budget_usd"] == "0.5"
    assert threshold_of(fast["LLMProviderErrorRateHigh"]) == (">", 0.05)  # untouched


def test_rendered_copy_fires_within_seconds(tmp_path: Path) -> None:
    """promtool runs the fast copy: 10s samples, a 30s window, for: 5s."""
    write_rules(tmp_path / "fast.yaml", for_="5s", window="30s", interval="5s",
                thresholds={"LLMCostBurnRateHigh": 1})  # fmt: skip
    firing = '{alertname="LLMCostBurnRateHigh", alertstate="firing", incident_class="runaway_cost", route="chat", severity="critical"}'  # noqa: E501
    suite = {
        "rule_files": ["fast.yaml"],
        "evaluation_interval": "5s",
        "tests": [
            {
                "interval": "10s",
                "input_series": [
                    # 0.01 USD per 10s = 3.6 USD/h: over the 1 USD/h drill budget.
                    {
                        "series": 'litellm_spend_metric_total{requested_model="chat"}',
                        "values": "0+0.01x30",
                    },
                    # 0.36 USD/h: under it.
                    {
                        "series": 'litellm_spend_metric_total{requested_model="chat-small"}',
                        "values": "0+0.001x30",
                    },
                ],  # fmt: skip
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertname="LLMCostBurnRateHigh"}',
                        "eval_time": "1m",
                        "exp_samples": [{"labels": "ALERTS" + firing, "value": 1}],
                    },
                ],  # fmt: skip
            }
        ],
    }
    (tmp_path / "fast.test.yaml").write_text(yaml.safe_dump(suite))
    out = run([tool("promtool"), "test", "rules", "fast.test.yaml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # The shipped copy, with the same input, has not fired a minute in (5m windows, for: 1m).
    shutil.copy(RULES_PATH, tmp_path / "fast.yaml")
    out = run([tool("promtool"), "test", "rules", "fast.test.yaml"], cwd=tmp_path)
    assert out.returncode != 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"window": "5 minutes"}, "window"),
        ({"for_": "0s"}, "for_"),
        ({"interval": "-1s"}, "interval"),
        ({"thresholds": {"LLMCostBurnRateHgh": 1}}, "LLMCostBurnRateHgh"),
    ],
)
def test_render_refuses_bad_input(kwargs: dict, needle: str) -> None:
    with pytest.raises(InputError) as err:
        render_rules(**kwargs)
    assert needle in str(err.value)


def test_render_refuses_a_threshold_on_an_alert_without_a_trailing_constant(tmp_path: Path) -> None:
    src = tmp_path / "rules.yaml"
    src.write_text(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == bool 0\n"
        "    annotations: {summary: s}\n"
    )
    assert "A" in alert_rules(load_rules(src))
    with pytest.raises(InputError, match="does not end with a comparison"):
        render_rules(source=src, thresholds={"A": 1})


def test_render_refuses_a_file_that_is_not_a_rules_file(tmp_path: Path) -> None:
    src = tmp_path / "rules.yaml"
    src.write_text("routes: []\n")
    with pytest.raises(InputError, match="groups"):
        render_rules(source=src)


def test_engine_route_relabel_is_a_valid_prometheus_config(tmp_path: Path) -> None:
    relabel = engine_route_relabel({"chat-large": "chat", "chat.small": "small"})
    assert relabel[0]["replacement"] == "chat"
    assert re.fullmatch(relabel[0]["regex"], "vllm:time_to_first_token_seconds_bucket;chat-large")
    assert not re.fullmatch(relabel[1]["regex"], "vllm:num_requests_waiting;chatXsmall")
    assert not re.fullmatch(relabel[0]["regex"], "litellm_spend_metric_total;chat-large")
    config = {
        "scrape_configs": [
            {
                "job_name": "sandbox",
                "static_configs": [{"targets": ["127.0.0.1:4000"]}],
                "metric_relabel_configs": relabel,
            }
        ]
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
