"""The README is kept true by tests: every verb and every setting is documented."""

from pathlib import Path

from actions.catalog import CATALOG
from bot.adapters.commands import VERBS
from bot.adapters.settings import ENV_VARS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_verb_is_in_the_readme():
    missing = [v for v in VERBS if f"`{v}" not in README]
    assert not missing, f"README lacks verbs: {missing}"


def test_every_setting_is_in_the_readme():
    missing = [v for v in ENV_VARS if f"`{v}`" not in README]
    assert not missing, f"README lacks settings: {missing}"


def test_every_action_is_in_the_readme():
    missing = [a for a in CATALOG if f"`{a}`" not in README]
    assert not missing, f"README lacks actions: {missing}"


def test_first_screen_has_exactly_two_commands():
    first_screen = README.split("\n## ")[0]
    blocks = first_screen.split("```")[1::2]
    assert len(blocks) == 2
    assert "llm-incident demo" in blocks[0] and "tests/run.sh" in blocks[1]
