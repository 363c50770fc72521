"""The shipped playbooks: lint clean, their own tests pass, one per incident class."""

from pathlib import Path

import pytest

from bot.intake.parse import parse_generic
from bot.playbook.loader import lint, load_dir
from bot.playbook.matcher import Matcher
from bot.playbook.schema import INCIDENT_CLASSES
from bot.playbook.testing import run_tests

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


@pytest.fixture(scope="module")
def shipped():
    return load_dir(PLAYBOOKS)


def test_shipped_playbooks_lint_clean():
    assert [str(p) for p in lint([PLAYBOOKS])] == []


def test_every_class_has_exactly_one_playbook(shipped):
    classes = sorted(p.class_ for p in shipped.values())
    assert classes == sorted(INCIDENT_CLASSES)


def test_every_shipped_playbook_has_tests(shipped):
    tested = {f.name.removesuffix(".test.yaml") for f in (PLAYBOOKS / "tests").glob("*.test.yaml")}
    assert tested == set(shipped)


def test_shipped_playbook_tests_pass(shipped):
    report = run_tests(sorted((PLAYBOOKS / "tests").glob("*.test.yaml")), shipped)
    assert report.failed == 0, report.format()
    assert report.passed >= len(shipped)


@pytest.mark.parametrize("klass", INCIDENT_CLASSES)
def test_incident_class_label_routes_to_the_class_playbook(shipped, klass):
    [alert] = parse_generic({"labels": {"alertname": "TeamRule", "incident_class": klass,
                                        "route": "chat"}})
    matches = Matcher(shipped.values()).match(alert)
    assert matches, f"nothing matched incident_class={klass}"
    assert matches[0].playbook.class_ == klass


def test_risky_steps_need_two_people(shipped):
    # Disabling a route takes capacity away from users: never on one person's say-so.
    for p in shipped.values():
        for s in p.steps:
            if s.action == "disable_route":
                assert s.guard.approval == "two_person", f"{p.id}/{s.id}"
            if s.guard.auto:
                assert s.guard.ttl is not None and s.guard.verify is not None, f"{p.id}/{s.id}"
