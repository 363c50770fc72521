"""Prompt versions, model names, release ids and route names with a control character
(a newline would split the gateway's upstream header or the policy file's scalar) or
stray whitespace are refused where they enter, naming the field; nothing is written."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from fakes import InMemoryDriver
from pydantic import ValidationError

from actions.catalog import RollbackPromptParams, ShiftTrafficParams
from actions.release_actions import SetCanaryParams
from bot.adapters.commands import Context, execute
from bot.base.errors import InputError
from bot.base.names import name_problem
from bot.core.release_cases import ReleaseGuard
from bot.intake.alert import Alert

sys.path.insert(0, str(Path(__file__).parent))
from incident_env import PLAYBOOKS, T0, Env  # noqa: E402
from test_releases import POLICY, Traffic  # noqa: E402

BAD = ["v41\nX-Evil: 1", "v41\r", " v41", "v41 ", "v4\x1b[31m1", "v\u202e14", "\t", ""]


@pytest.mark.parametrize("value", BAD)
def test_a_name_with_a_control_character_or_stray_space_is_no_name(value):
    assert name_problem(value) is not None
    for model, kw in ((RollbackPromptParams, {"route": "chat", "prompt_version": value}),
                      (RollbackPromptParams, {"route": value, "prompt_version": "v41"}),
                      (SetCanaryParams, {"route": "chat", "release": "REL-1",
                                         "model": value, "weight": 0.05}),
                      (SetCanaryParams, {"route": "chat", "release": value,
                                         "prompt_version": "v43", "weight": 0.05}),
                      (ShiftTrafficParams, {"route": "chat", "weights": {value: 1.0}})):
        with pytest.raises(ValidationError):
            model(**kw)
    assert name_problem("chat-small.v2_1:beta") is None  # what names look like


@pytest.mark.parametrize(("option", "field"), [("prompt_version", "prompt_version"),
                                               ("model", "model"),
                                               ("baseline_version", "baseline_version")])
def test_release_start_refuses_a_version_with_a_newline_naming_the_field(option, field):
    env = Env(driver=InMemoryDriver(POLICY, name="default"))
    guard = ReleaseGuard(env.engine, reader=Traffic())
    args = {"prompt_version": "v43", option: "v43\nX-Evil: 1"}
    with pytest.raises(InputError) as err:
        asyncio.run(guard.start("chat", actor="alice", **args))
    assert f"{field} 'v43\\nX-Evil: 1' holds a control character" in err.value.message
    assert env.store.releases() == []  # refused before anything was recorded
    assert asyncio.run(env.driver.read()).get("chat", "canary") is None


def test_release_start_from_the_cli_names_the_option():
    env = Env(driver=InMemoryDriver(POLICY, name="default"))
    ctx = Context(actor="alice", playbooks_dir=PLAYBOOKS, open_engine=lambda: env.engine)
    res = asyncio.run(execute(["release", "start", "chat", "--prompt", "v43 "], ctx))
    assert not res.ok and "prompt_version 'v43 ' starts or ends with whitespace" in res.text


def test_a_rollback_step_rendered_from_an_annotation_with_a_newline_is_not_planned():
    env = Env()
    bad = Alert(source="alertmanager", fingerprint="fp-bad", status="firing",
                labels={"alertname": "LLMMalformedOutputRatioHigh", "route": "chat",
                        "severity": "critical", "incident_class": "malformed_output"},
                annotations={"last_good_prompt_version": "v41\nX-Evil: 1"}, starts_at=T0)
    (ingested,) = asyncio.run(env.engine.handle_alerts([bad]))
    ctx = Context(actor="alice", playbooks_dir=PLAYBOOKS, open_engine=lambda: env.engine)
    res = asyncio.run(execute(["run", ingested.incident_id, "rollback-prompt", "--playbook",
                               "malformed-output"], ctx))
    assert not res.ok, res.text
    assert "prompt_version" in res.text and "control character" in res.text, res.text
    assert not [r for r in env.store.runs() if r.state not in ("refused",)]
    assert asyncio.run(env.driver.read()).get("chat", "prompt_version") != "v41\nX-Evil: 1"
