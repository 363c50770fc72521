"""Playbook tests, in the spirit of ``promtool test rules``.

A test file feeds alerts to the playbooks and states what the bot must make of
them: which playbook ranks first, what its params render to, and what every
step would change in the serving policy. Plans are pure, so no driver, store or
network is needed; each step is planned on its own against the file's policy.

File format (``playbooks/tests/*.test.yaml``)::

    policy:                       # the serving policy plans are made against
      routes:                     # (actions.policy.ServingPolicy; default: empty)
        chat: {max_output_tokens: 1024, max_concurrency: 32}
    tests:
      - name: cost burn on the chat route       # required, shown in the report
        alert:                                  # the generic alert shape (bot.intake.parse)
          labels: {alertname: LLMCostBurnRateHigh, route: chat}
          annotations: {hourly_budget_usd: "40"}
        policy: {...}                           # optional: replaces the file's policy
        expect:
          match: runaway-cost     # id of the top-ranked playbook; null = nothing matches
          params: {route: chat}   # optional: a subset of the rendered params
          steps:                  # optional: every step for this alert, in order
            - id: cap-output
              action: cap_output_length                        # optional
              changes: {routes.chat.max_output_tokens: 256}    # exactly the planned changes
            - id: lower-concurrency
              error: "already"    # instead of changes: planning must fail with this text

Rendered params are strings (templates render to text), so an expected number
in ``params`` also matches its decimal string (``40`` matches ``"40"``). Step
``changes`` are compared exactly: keys ``routes.<route>.<field>``, values the
planned ``after`` values. ``changes: {}`` expects a no-op plan.

A malformed test file is reported like a bad playbook (file, line, field) and
counts as a failure, so ``llm-incident test`` never passes on a typo.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actions.catalog import get_action
from actions.policy import ServingPolicy
from bot.base.errors import InputError, PlaybookError, Problem
from bot.intake.parse import parse_generic
from bot.playbook.loader import playbook_files
from bot.playbook.matcher import Matcher
from bot.playbook.render import render_params, render_step_args
from bot.playbook.schema import Playbook, Step, not_for
from bot.playbook.yamlsource import YamlDocument, parse_yaml, validation_problems

# --- the file format ---------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExpectedStep(_Strict):
    id: str
    action: str | None = None
    changes: dict[str, Any] | None = Field(
        default=None, description="'routes.R.F' -> planned value; {} = no change"
    )
    error: str | None = Field(default=None, description="planning must fail with this text")


class Expectation(_Strict):
    match: str | None = Field(description="top-ranked playbook id; null = nothing matches")
    params: dict[str, Any] | None = None
    steps: list[ExpectedStep] | None = None


class PlaybookTest(_Strict):
    __test__ = False  # not a pytest class

    name: str = Field(min_length=1)
    alert: dict[str, Any]
    policy: ServingPolicy | None = None
    expect: Expectation


class PlaybookTestFile(_Strict):
    __test__ = False

    policy: ServingPolicy = Field(default_factory=ServingPolicy)
    tests: list[PlaybookTest] = Field(min_length=1)


# --- results -----------------------------------------------------------------------


@dataclass
class TestResult:
    __test__ = False

    file: str
    line: int | None
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class TestReport:
    __test__ = False

    results: list[TestResult] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed

    @property
    def ok(self) -> bool:
        return self.failed == 0 and bool(self.results)

    def format(self) -> str:
        lines = []
        for r in self.results:
            lines.append(f"{'ok  ' if r.passed else 'FAIL'} {r.where}: {r.name}")
            lines += [f"       {f}" for f in r.failures]
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


# --- running -----------------------------------------------------------------------


def run_tests(test_paths: Iterable[str | Path], playbooks: Mapping[str, Playbook]) -> TestReport:
    """Run every test in the given files (directories: the YAML files directly inside)."""
    report = TestReport()
    matcher = Matcher(playbooks.values())
    files, problems = playbook_files(test_paths, kind="test")
    report.results += [_broken(p) for p in problems]
    for path in files:
        try:
            doc, suite = _load_suite(path)
        except PlaybookError as exc:
            report.results += [_broken(p) for p in exc.problems]
            continue
        for i, case in enumerate(suite.tests):
            result = TestResult(str(path), doc.line_of(("tests", i)), case.name)
            result.failures = _run_case(case, case.policy or suite.policy, matcher, playbooks)
            report.results.append(result)
    return report


def _broken(problem: Problem) -> TestResult:
    message = f"{problem.field or '<document>'}: {problem.message}"
    if problem.hint:
        message += f" (hint: {problem.hint})"
    return TestResult(problem.file, problem.line, "malformed test file", [message])


def _load_suite(path: Path) -> tuple[YamlDocument, PlaybookTestFile]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError(
            problems=[Problem(str(path), None, "", f"cannot read: {exc}")]
        ) from None
    doc = parse_yaml(text, str(path))
    if not isinstance(doc.data, dict):
        msg = "a test file is a YAML mapping with `tests:` (and optionally `policy:`)"
        raise PlaybookError(problems=[Problem(str(path), 1, "", msg)])
    try:
        return doc, PlaybookTestFile.model_validate(doc.data)
    except ValidationError as exc:
        raise PlaybookError(problems=validation_problems(exc, doc, PlaybookTestFile)) from None


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _run_case(
    case: PlaybookTest,
    policy: ServingPolicy,
    matcher: Matcher,
    playbooks: Mapping[str, Playbook],
) -> list[str]:
    expect = case.expect
    try:
        alerts = parse_generic(case.alert)
    except InputError as exc:
        return [f"alert: {exc}"]
    if len(alerts) != 1:
        return [f"alert: a test feeds exactly one alert, got {len(alerts)}"]
    alert = alerts[0]
    if expect.match is not None and expect.match not in playbooks:
        known = ", ".join(sorted(playbooks)) or "none"
        return [f"match: expected playbook '{expect.match}' is not loaded (loaded: {known})"]
    matches = matcher.match(alert)
    got = matches[0].playbook.id if matches else None
    if got != expect.match:
        ranking = ", ".join(f"{m.playbook.id} ({m.score:g})" for m in matches[:3]) or "nothing"
        return [f"match: expected {_show(expect.match)}, got {_show(got)} (ranking: {ranking})"]
    if got is None:
        return []
    playbook = matches[0].playbook
    try:
        params = render_params(playbook, alert)
    except InputError as exc:
        return [f"params: {exc}"]
    failures = _compare_params(expect.params or {}, params)
    if expect.steps is not None:
        failures += _compare_steps(expect.steps, playbook, params, alert, policy)
    return failures


def _same_param(expected: Any, got: Any) -> bool:
    # Templates render to text: an expected number also matches its decimal string.
    if (
        isinstance(got, str)
        and isinstance(expected, int | float)
        and not isinstance(expected, bool)
    ):
        return got == str(expected)
    return bool(expected == got)


def _compare_params(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    out = []
    for key, want in expected.items():
        if key not in got:
            out.append(f"params.{key}: expected {_show(want)}, but the playbook has no such param")
        elif not _same_param(want, got[key]):
            out.append(f"params.{key}: expected {_show(want)}, got {_show(got[key])}")
    return out


def _plan_step(step: Step, params: dict[str, Any], alert: Any, policy: ServingPolicy) -> Any:
    """The planned changes as ``{'routes.R.F': after}``, or the error text."""
    try:
        args = render_step_args(step, params, alert)
        plan = get_action(step.action).plan(args, policy, target=step.target)
    except InputError as exc:
        return InputError(str(exc))
    return {c.path: c.after for c in plan.changes}


def _compare_steps(
    expected: list[ExpectedStep],
    playbook: Playbook,
    params: dict[str, Any],
    alert: Any,
    policy: ServingPolicy,
) -> list[str]:
    out = []
    want_ids = [s.id for s in expected]
    got_ids = [s.id for s in playbook.steps if not_for(s, alert.labels) is None]
    if want_ids != got_ids:
        out.append(f"steps: expected {_show(want_ids)}, got {_show(got_ids)}")
    for want in expected:
        step = playbook.step(want.id)
        if step is None:
            continue
        where = f"steps[{want.id}]"
        if want.action is not None and want.action != step.action:
            out.append(f"{where}.action: expected {_show(want.action)}, got {_show(step.action)}")
            continue
        got = _plan_step(step, params, alert, policy)
        if isinstance(got, InputError):
            if want.error is None or want.error not in str(got):
                expected_text = (
                    f"an error containing {_show(want.error)}" if want.error else "a plan"
                )
                out.append(f"{where}: expected {expected_text}, planning failed: {got}")
        elif want.error is not None:
            out.append(
                f"{where}: expected an error containing {_show(want.error)}, got {_show(got)}"
            )
        elif want.changes is not None:
            out += _compare_changes(where, want.changes, got)
    return out


def _compare_changes(where: str, want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(want.keys() | got.keys()):
        if key not in got:
            out.append(f"{where}.changes: expected {key} = {_show(want[key])}, not changed")
        elif key not in want:
            out.append(f"{where}.changes: unexpected change {key} = {_show(got[key])}")
        elif want[key] != got[key] or isinstance(want[key], bool) != isinstance(got[key], bool):
            out.append(
                f"{where}.changes: {key}: expected {_show(want[key])}, got {_show(got[key])}"
            )
    return out
