"""The playbook-test runner: passes what holds, and says exactly what differed when not."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot.playbook.loader import load_dir
from bot.playbook.testing import TestReport, run_tests

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks"

POLICY = """\
policy:
  routes:
    chat: {max_output_tokens: 1024, max_concurrency: 32}
    chat-small: {}
tests:
"""


@pytest.fixture(scope="module")
def playbooks():
    return load_dir(FIXTURES / "good")


def run(tmp_path: Path, playbooks, tests: str, name: str = "t.test.yaml") -> TestReport:
    path = tmp_path / name
    path.write_text(POLICY + textwrap.indent(textwrap.dedent(tests), "  "))
    return run_tests([path], playbooks)


def failures(report: TestReport) -> list[str]:
    return [f for r in report.results for f in r.failures]


def test_fixture_tests_pass(playbooks):
    report = run_tests([FIXTURES / "good" / "tests"], playbooks)
    assert (report.passed, report.failed) == (4, 0), report.format()
    assert report.ok
    assert report.format().splitlines()[-1] == "4 passed, 0 failed"


def test_a_wrong_planned_value_is_reported_precisely(tmp_path, playbooks):
    report = run(
        tmp_path,
        playbooks,
        """\
        - name: passes
          alert: {labels: {alertname: LLMCostBurnRateHigh, route: chat}}
          expect: {match: fixture-runaway-cost}
        - name: cap is wrong
          alert: {labels: {alertname: LLMCostBurnRateHigh, route: chat}}
          expect:
            match: fixture-runaway-cost
            steps:
              - id: cap-output
                changes: {routes.chat.max_output_tokens: 128}
              - id: lower-concurrency
                changes: {routes.chat.max_concurrency: 16}
        """,
    )
    assert (report.passed, report.failed) == (1, 1)
    bad = report.results[1]
    assert (bad.name, bad.line) == ("cap is wrong", 9)
    assert bad.failures == [
        "steps[cap-output].changes: routes.chat.max_output_tokens: expected 128, got 256"
    ]
    text = report.format()
    assert f"FAIL {tmp_path / 't.test.yaml'}:9: cap is wrong" in text
    assert text.endswith("1 passed, 1 failed")


def test_wrong_match_shows_expected_got_and_ranking(tmp_path, playbooks):
    report = run(
        tmp_path,
        playbooks,
        """\
        - name: wrong playbook
          alert: {labels: {alertname: LLMCostBurnRateHigh, route: chat}}
          expect: {match: fixture-latency-spike}
        - name: expected nothing
          alert: {labels: {alertname: LLMTimeToFirstTokenHigh, route: chat}}
          expect: {match: null}
        """,
    )
    assert failures(report) == [
        'match: expected "fixture-latency-spike", got "fixture-runaway-cost" '
        "(ranking: fixture-runaway-cost (3.03))",
        'match: expected null, got "fixture-latency-spike" (ranking: fixture-latency-spike (3.02))',
    ]


def test_params_mismatch_and_unknown_param(tmp_path, playbooks):
    report = run(
        tmp_path,
        playbooks,
        """\
        - name: params
          alert: {labels: {alertname: LLMCostBurnRateHigh, route: chat}}
          expect:
            match: fixture-runaway-cost
            params: {route: chat-large, output_cap: 256, budget: 20, colour: red}
        """,
    )
    assert failures(report) == [
        'params.route: expected "chat-large", got "chat"',
        'params.colour: expected "red", but the playbook has no such param',
    ]


def test_step_list_changes_and_errors_are_compared(tmp_path, playbooks):
    report = run(
        tmp_path,
        playbooks,
        """\
        - name: steps
          alert: {labels: {alertname: LLMCostBurnRateHigh, route: chat}}
          expect:
            match: fixture-runaway-cost
            steps:
              - id: cap-output
                action: lower_concurrency
              - id: lower-concurrency
                error: would raise it
        - name: changes
          alert: {labels: {alertname: LLMTimeToFirstTokenHigh, route: chat}}
          expect:
            match: fixture-latency-spike
            steps:
              - id: fallback
                changes: {routes.chat.enabled: false}
        """,
    )
    assert failures(report) == [
        'steps[cap-output].action: expected "lower_concurrency", got "cap_output_length"',
        'steps[lower-concurrency]: expected an error containing "would raise it", '
        'got {"routes.chat.max_concurrency": 16}',
        "steps[fallback].changes: expected routes.chat.enabled = false, not changed",
        'steps[fallback].changes: unexpected change routes.chat.fallback = "chat-small"',
    ]


def test_missing_steps_and_unexpected_planning_errors(tmp_path, playbooks):
    report = run(
        tmp_path,
        playbooks,
        """\
        - name: only one step listed, and the route is capped lower already
          alert: {labels: {alertname: LLMCostBurnRateHigh, route: chat}}
          policy: {routes: {chat: {max_output_tokens: 100, max_concurrency: 8}}}
          expect:
            match: fixture-runaway-cost
            steps:
              - id: cap-output
                changes: {routes.chat.max_output_tokens: 256}
        """,
    )
    [first, second] = failures(report)
    assert first == 'steps: expected ["cap-output"], got ["cap-output", "lower-concurrency"]'
    assert second.startswith("steps[cap-output]: expected a plan, planning failed: ")
    assert "already capped at 100 tokens" in second


def test_render_and_alert_problems_fail_the_test(tmp_path, playbooks):
    report = run(
        tmp_path,
        playbooks,
        """\
        - name: alert lacks the route label
          alert: {labels: {alertname: LLMTimeToFirstTokenHigh}}
          expect: {match: fixture-latency-spike}
        - name: alert without an alertname
          alert: {labels: {route: chat}}
          expect: {match: null}
        - name: expects a playbook that is not loaded
          alert: {labels: {alertname: X}}
          expect: {match: no-such-playbook}
        """,
    )
    got = failures(report)
    assert got[0].startswith("params: params.route: label 'route' is not set")
    assert got[1].startswith("alert: labels.alertname: missing or empty")
    assert got[2].startswith("match: expected playbook 'no-such-playbook' is not loaded")
    assert report.failed == 3


def test_malformed_test_file_is_a_failure_with_file_and_line(tmp_path, playbooks):
    good = tmp_path / "good.test.yaml"
    good.write_text((FIXTURES / "good" / "tests" / "fixture.test.yaml").read_text())
    bad = tmp_path / "bad.test.yaml"
    bad.write_text(
        POLICY + "  - name: typo\n    alert: {labels: {alertname: X}}\n    expects: {match: null}\n"
    )
    report = run_tests([tmp_path], playbooks)
    assert (report.passed, report.failed) == (4, 2)
    broken = [r for r in report.results if not r.passed]
    assert [(r.file, r.line, r.name) for r in broken] == [
        (str(bad), 6, "malformed test file"),  # the test item lacks `expect`
        (str(bad), 8, "malformed test file"),  # the line with the typo
    ]
    assert broken[0].failures == ["tests[0].expect: missing required key 'expect'"]
    assert broken[1].failures[0].startswith("tests[0].expects: unknown key 'expects' ")
    assert "did you mean `expect`?" in broken[1].failures[0]
    assert not report.ok


def test_unparseable_test_file_reports_the_yaml_line(tmp_path, playbooks):
    path = tmp_path / "broken.test.yaml"
    path.write_text("tests:\n  - name: a\n    alert: {labels: [\n")
    report = run_tests([path], playbooks)
    [result] = report.results
    assert result.failures[0].startswith("<document>: invalid YAML")
    assert result.line == 4
    assert report.format().endswith("0 passed, 1 failed")


def test_bad_policy_in_a_test_file_points_at_the_field(tmp_path, playbooks):
    path = tmp_path / "p.test.yaml"
    path.write_text(
        "policy:\n  routes:\n    chat: {max_output_tokenz: 5}\n"
        "tests:\n  - name: a\n    alert: {labels: {alertname: X}}\n    expect: {match: null}\n"
    )
    [result] = run_tests([path], playbooks).results
    assert result.line == 3
    assert "policy.routes.chat.max_output_tokenz: unknown key" in result.failures[0]
    assert "did you mean `max_output_tokens`?" in result.failures[0]
