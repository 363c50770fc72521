"""The playbook loader and linter: every problem with its file, line, field and a useful hint."""

from __future__ import annotations

import shutil
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time

from bot.base.errors import NotFound, PlaybookError, Problem
from bot.playbook.loader import lint, load_dir, load_file, load_text
from bot.playbook.registry import PlaybookRegistry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "playbooks"

# A valid playbook; tests break one thing at a time. Line numbers matter below.
VALID = """\
id: cost
title: Cost
class: runaway_cost
severity: critical
match:
  all:
    - alertname: LLMCostBurnRateHigh
params:
  route: "{{ labels.route }}"
steps:
  - id: cap
    title: Cap output
    action: cap_output_length
    with:
      route: "{{ params.route }}"
      max_output_tokens: 256
    guard:
      approval: oncall
"""


def problems_of(text: str, tmp_path: Path, name: str = "pb.yaml") -> list[Problem]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return lint([path])


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_valid_playbook_loads_with_typed_fields(tmp_path):
    path = tmp_path / "cost.yaml"
    path.write_text(VALID)
    pb = load_file(path)
    assert pb.id == "cost"
    assert pb.steps[0].with_ == {"route": "{{ params.route }}", "max_output_tokens": 256}
    assert lint([path]) == []


def test_fixture_directory_loads_and_skips_its_tests_subdir():
    playbooks = load_dir(FIXTURES / "good")
    assert sorted(playbooks) == ["fixture-latency-spike", "fixture-runaway-cost"]


def test_malformed_yaml_reports_the_line(tmp_path):
    text = VALID.replace("title: Cap output", "title: [Cap output")
    p = only(problems_of(text, tmp_path))
    assert p.line == 13  # the unclosed flow sequence fails where `action:` starts
    assert p.message.startswith("invalid YAML")


def test_tab_indentation_is_reported_with_a_hint(tmp_path):
    p = only(problems_of("id: x\nmatch:\n\tall: []\n", tmp_path))
    assert p.line == 3
    assert "tabs" in (p.hint or "")


def test_unknown_key_suggests_the_closest_allowed_key_on_its_line(tmp_path):
    text = VALID.replace("      approval: oncall", "      aproval: oncall")
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (18, "steps[0].guard.aproval")
    assert p.message == "unknown key 'aproval'"
    assert p.hint is not None and p.hint.startswith("did you mean `approval`?")


def test_wrong_type_names_the_field_and_line(tmp_path):
    text = VALID.replace("      approval: oncall", "      approval: oncall\n      auto: maybe")
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (19, "steps[0].guard.auto")
    assert "boolean" in p.message


def test_bad_literal_lists_the_allowed_values(tmp_path):
    p = only(problems_of(VALID.replace("severity: critical", "severity: urgent"), tmp_path))
    assert (p.line, p.field) == (4, "severity")
    assert "critical, high, warning, info" in (p.hint or "")


def test_missing_required_key_points_at_the_parent(tmp_path):
    text = VALID.replace("      approval: oncall", "      max_runs: {count: 2}")
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (18, "steps[0].guard.max_runs.window")
    assert p.message == "missing required key 'window'"


def test_duplicate_keys_are_refused(tmp_path):
    p = only(
        problems_of(VALID.replace("severity: critical", "severity: critical\nid: other"), tmp_path)
    )
    assert (p.line, p.field) == (5, "id")
    assert "duplicate key 'id' (first at line 1)" in p.message


def test_duplicate_keys_nested_in_a_step(tmp_path):
    text = VALID.replace(
        "      max_output_tokens: 256", "      max_output_tokens: 256\n      route: x"
    )
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (17, "steps[0].with.route")


def test_python_tags_are_refused_by_safe_loading(tmp_path):
    p = only(problems_of("id: !!python/object/apply:os.system ['true']\n", tmp_path))
    assert p.line == 1
    assert "constructor" in p.message


def test_not_a_mapping(tmp_path):
    p = only(problems_of("- just\n- a list\n", tmp_path))
    assert "YAML mapping" in p.message


def test_unknown_action_lists_the_catalog(tmp_path):
    p = only(problems_of(VALID.replace("cap_output_length", "cap_output_lenght"), tmp_path))
    assert (p.line, p.field) == (13, "steps[0].action")
    assert p.hint is not None
    assert p.hint.startswith("did you mean `cap_output_length`?")
    assert "lower_concurrency" in p.hint and "shift_traffic" in p.hint


def test_unknown_with_key_uses_the_action_params(tmp_path):
    text = VALID.replace("max_output_tokens: 256", "max_output_token: 256")
    problems = problems_of(text, tmp_path)
    unknown = [p for p in problems if p.field == "steps[0].with.max_output_token"]
    assert len(unknown) == 1 and unknown[0].line == 16
    assert (unknown[0].hint or "").startswith("did you mean `max_output_tokens`?")
    # ... and the required argument is then missing:
    missing = [p for p in problems if p.field == "steps[0].with"]
    assert [p.message for p in missing] == [
        "action 'cap_output_length' needs argument 'max_output_tokens'"
    ]


def test_missing_required_with_key(tmp_path):
    p = only(problems_of(VALID.replace("      max_output_tokens: 256\n", ""), tmp_path))
    assert (p.line, p.field) == (14, "steps[0].with")
    assert "needs argument 'max_output_tokens'" in p.message


def test_literal_with_values_are_validated_at_load_time(tmp_path):
    text = VALID.replace('route: "{{ params.route }}"', "route: chat").replace("256", "-5")
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (16, "steps[0].with.max_output_tokens")
    assert "greater than 0" in p.message


def test_undefined_param_reference(tmp_path):
    p = only(problems_of(VALID.replace("{{ params.route }}", "{{ params.rout }}"), tmp_path))
    assert (p.line, p.field) == (15, "steps[0].with.route")
    assert "params.rout" in p.message
    assert (p.hint or "").startswith("did you mean `route`?")


def test_params_templates_cannot_read_params(tmp_path):
    text = VALID.replace('route: "{{ labels.route }}"', 'route: "{{ params.x }}"')
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (9, "params.route")
    assert "cannot read params" in p.message


def test_template_reaching_python_internals_is_refused(tmp_path):
    text = VALID.replace("{{ labels.route }}", "{{ ''.__class__.__mro__ }}")
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (9, "params.route")
    assert "__class__" in p.message and "not allowed" in p.message


def test_loops_are_refused(tmp_path):
    text = VALID.replace("{{ labels.route }}", "{% for x in labels %}{{ x }}{% endfor %}")
    p = only(problems_of(text, tmp_path))
    assert p.field == "params.route"
    assert "loops" in p.message


def test_template_syntax_error_in_a_block_scalar_gives_the_inner_line(tmp_path):
    text = VALID + textwrap.indent(
        "verify:\n  query: |\n    sum(rate(x[5m]))\n    / {{ params.route\n  expect: '< 1'\n"
        "  within: 5m\n",
        "      ",
    )
    p = only(problems_of(text, tmp_path))
    assert p.field == "steps[0].guard.verify.query"
    assert p.line == 22  # the second line of the query, where the `{{` is left open
    assert "syntax error" in p.message


def test_unknown_name_in_a_diagnose_query(tmp_path):
    text = VALID.replace(
        "steps:", 'diagnose:\n  - title: d\n    query: up{job="{{ lables.job }}"}\nsteps:'
    )
    p = only(problems_of(text, tmp_path))
    assert (p.line, p.field) == (12, "diagnose[0].query")
    assert "unknown name 'lables'" in p.message
    assert (p.hint or "").startswith("did you mean `labels`?")


def test_every_problem_of_a_file_is_reported_at_once():
    problems = lint([FIXTURES / "bad" / "typos.yaml"])
    assert [(p.line, p.field) for p in problems] == [
        (5, "severity"),
        (14, "steps[0].action"),
        (21, "steps[1].with.route"),
        (22, "steps[1].with.factr"),
        (24, "steps[1].guard.aproval"),
    ]


def test_load_file_raises_with_every_problem_and_a_readable_message():
    with pytest.raises(PlaybookError) as info:
        load_file(FIXTURES / "bad" / "typos.yaml")
    assert len(info.value.problems) == 5
    assert "typos.yaml:5: severity" in str(info.value)
    assert "(and 4 more)" in str(info.value)


def test_load_text_needs_no_file():
    assert load_text(VALID).title == "Cost"


def test_duplicate_ids_across_files_name_both_files(tmp_path):
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID.replace("title: Cost", "title: Cost again"))
    p = only(lint([tmp_path]))
    assert (p.file, p.line, p.field) == (str(tmp_path / "b.yaml"), 1, "id")
    assert f"also defined in {tmp_path / 'a.yaml'}:1" in p.message
    with pytest.raises(PlaybookError):
        load_dir(tmp_path)


def test_directory_lint_skips_tests_subdir_and_schema_file(tmp_path):
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "a.test.yaml").write_text("tests: [broken")
    (tmp_path / "playbook.schema.yaml").write_text("not: [a playbook")
    assert lint([tmp_path]) == []


def test_missing_path_and_empty_directory_are_problems(tmp_path):
    (tmp_path / "empty").mkdir()
    problems = lint([tmp_path / "nope.yaml", tmp_path / "empty"])
    assert [p.message for p in problems] == [
        "no such file or directory",
        "no *.yaml playbook files here",
    ]


def test_load_dir_is_all_or_nothing(tmp_path):
    (tmp_path / "a.yaml").write_text(VALID)
    (tmp_path / "b.yaml").write_text(VALID.replace("id: cost", "id: other").replace("oncall", "x"))
    with pytest.raises(PlaybookError) as info:
        load_dir(tmp_path)
    assert [p.field for p in info.value.problems] == ["steps[0].guard.approval"]


# --- registry ----------------------------------------------------------------------


def test_registry_keeps_the_last_good_set_when_a_bad_file_appears(tmp_path):
    shutil.copytree(FIXTURES / "good", tmp_path / "pb")
    with freeze_time("2026-11-29 10:00:00"):
        registry = PlaybookRegistry()
        assert registry.reload(tmp_path / "pb") == []
    good = registry.playbooks
    assert sorted(good) == ["fixture-latency-spike", "fixture-runaway-cost"]
    assert registry.loaded_at == datetime(2026, 11, 29, 10, tzinfo=UTC)

    shutil.copy(FIXTURES / "bad" / "typos.yaml", tmp_path / "pb" / "typos.yaml")
    with freeze_time("2026-11-29 11:00:00"):
        problems = registry.reload()
    assert len(problems) == 5 and all(p.file.endswith("typos.yaml") for p in problems)
    assert registry.playbooks is good  # the same set, untouched
    assert registry.loaded_at == datetime(2026, 11, 29, 10, tzinfo=UTC)
    assert registry.get("fixture-runaway-cost").title == "Runaway cost (fixture)"

    (tmp_path / "pb" / "typos.yaml").unlink()
    (tmp_path / "pb" / "extra.yaml").write_text(VALID)
    with freeze_time("2026-11-29 12:00:00"):
        assert registry.reload() == []
    assert "cost" in registry.playbooks and registry.playbooks is not good
    assert registry.loaded_at == datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert registry.source == tmp_path / "pb"


def test_registry_get_unknown_id_lists_known_ids():
    registry = PlaybookRegistry.from_path(FIXTURES / "good")
    with pytest.raises(NotFound) as info:
        registry.get("nope")
    assert info.value.hint == "known playbooks: fixture-latency-spike, fixture-runaway-cost"


def test_registry_without_a_source_cannot_reload():
    registry = PlaybookRegistry()
    [p] = registry.reload()
    assert "no playbook path" in p.message
    assert registry.playbooks == {} and registry.loaded_at is None


def test_a_query_prometheus_would_refuse_is_a_lint_error_with_its_line(tmp_path):
    text = """id: p
title: P
class: runaway_cost
severity: high
match: {any: [{alertname: A}]}
params:
  route: "{{ labels.route }}"
diagnose:
  - title: fine
    query: sum(rate(x{route="{{ params.route | promql }}"}[5m]))
steps:
  - id: s
    title: S
    action: cap_output_length
    with: {route: "{{ params.route }}", max_output_tokens: 64}
    guard:
      verify:
        query: sum(rate(x{route="{{ params.route | promql }}"}[1m]
        expect: "< 1"
        within: 5m
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    [problem] = lint([path])
    assert (problem.line, problem.field) == (18, "steps[0].guard.verify.query")
    assert "not valid PromQL" in problem.message and "parenthesis" in problem.message
    path.write_text(text.replace("[1m]\n", "[1m]))\n"))
    assert lint([path]) == []
