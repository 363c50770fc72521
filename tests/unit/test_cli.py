"""The CLI end to end over the shared command layer: real store, real policy file."""

import asyncio
import json
from pathlib import Path

import pytest
import yaml
from freezegun import freeze_time

from bot.adapters.cli import main, make_context
from bot.adapters.commands import execute
from bot.adapters.settings import Settings

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def am_payload(labels: dict, annotations: dict | None = None, fingerprint: str = "f1") -> dict:
    return {
        "version": "4",
        "groupKey": "{}:{alertname=\"x\"}",
        "status": "firing",
        "receiver": "llm-incident",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": [
            {
                "status": "firing",
                "labels": labels,
                "annotations": annotations or {},
                "startsAt": "2026-11-29T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus.example/graph",
                "fingerprint": fingerprint,
            }
        ],
    }


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_INCIDENT_USER", "alice")
    for var in ("LLM_INCIDENT_DB", "LLM_INCIDENT_POLICY", "LLM_INCIDENT_TARGETS",
                "LLM_INCIDENT_PROMETHEUS_URL", "LLM_INCIDENT_PLAYBOOKS"):
        monkeypatch.delenv(var, raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"max_output_tokens": 1024, "max_concurrency": 32},
        "chat-small": {},
    }}))
    alert = tmp_path / "cost.json"
    alert.write_text(json.dumps(am_payload(
        {"alertname": "LLMCostBurnRateHigh", "route": "chat", "model": "chat-large",
         "severity": "critical"},
        {"summary": "spend 5x budget <!channel> `rm -rf` | table"},
    )))

    class Env:
        root = tmp_path
        policy_path = policy
        alert_path = alert
        base = ["--db", str(tmp_path / "bot.db"), "--policy", str(policy),
                "--playbooks", str(PLAYBOOKS)]

        def run(self, *argv: str) -> int:
            return main([*self.base, *argv])

        def read_policy(self) -> dict:
            return yaml.safe_load(policy.read_text())

    return Env()


def test_plan_approve_apply_revert_and_postmortem(env, capsys):
    assert env.run("plan", "runaway-cost", "--alert", str(env.alert_path)) == 0
    out = capsys.readouterr().out
    assert "RUN-1" in out and "awaiting_approval" in out
    assert "- routes.chat.max_output_tokens: 1024" in out
    assert "+ routes.chat.max_output_tokens: 256" in out
    assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 1024  # planning changed nothing

    # apply without approval: refused by the approval guard, exit code 3, nothing written
    assert env.run("apply", "RUN-1") == 3
    assert "approval" in capsys.readouterr().err
    assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 1024

    assert env.run("approve", "RUN-1", "--as", "bob") == 0
    assert env.run("apply", "RUN-1", "--as", "bob") == 0
    assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 256
    capsys.readouterr()

    assert env.run("mitigations", "--json") == 0
    active = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in active] == ["RUN-1"]

    assert env.run("revert", "RUN-1", "--reason", "spend back under budget") == 0
    assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 1024
    capsys.readouterr()

    assert env.run("postmortem", "INC-1") == 0
    md = capsys.readouterr().out
    assert "# Postmortem INC-1" in md
    assert "approve by bob" in md
    assert "+ routes.chat.max_output_tokens: 256" in md
    assert "spend back under budget" in md


def test_disabling_a_route_with_no_fallback_is_refused_at_plan_time(env, capsys):
    # chat has no fallback: disabling it would leave its callers with nothing.
    assert env.run("plan", "runaway-cost", "--alert", str(env.alert_path),
                   "--step", "disable-route") == 3
    assert "blast_radius" in capsys.readouterr().err
    assert env.read_policy()["routes"]["chat"].get("enabled", True) is True


def test_two_person_step_needs_someone_other_than_the_requester(env, capsys):
    doc = env.read_policy()
    doc["routes"]["chat"]["fallback"] = "chat-small"
    env.policy_path.write_text(yaml.safe_dump(doc))
    assert env.run("plan", "runaway-cost", "--alert", str(env.alert_path),
                   "--step", "disable-route") == 0
    capsys.readouterr()
    assert env.run("approve", "RUN-1") == 3  # alice requested it: her approval never counts
    err = capsys.readouterr().err
    assert "RUN-1" in err and "approval" in err
    assert env.run("apply", "RUN-1", "--as", "bob") == 3  # still no second person
    assert env.read_policy()["routes"]["chat"].get("enabled", True) is True

    assert env.run("approve", "RUN-1", "--as", "bob") == 0
    assert env.run("apply", "RUN-1", "--as", "bob") == 0
    assert env.read_policy()["routes"]["chat"]["enabled"] is False


def test_ttl_revert_runs_when_due(env, capsys):
    with freeze_time("2026-11-29 10:05:00"):
        env.run("plan", "runaway-cost", "--alert", str(env.alert_path))
        env.run("approve", "RUN-1", "--as", "bob")
        assert env.run("apply", "RUN-1", "--as", "bob") == 0
    assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 256
    with freeze_time("2026-11-29 11:00:00"):
        assert env.run("tick") == 0
        assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 256  # ttl is 2h
    capsys.readouterr()
    with freeze_time("2026-11-29 12:06:00"):
        assert env.run("tick") == 0
    assert "RUN-1 -> reverted" in capsys.readouterr().out
    assert env.read_policy()["routes"]["chat"]["max_output_tokens"] == 1024


def test_pause_is_recorded_and_listed(env, capsys):
    assert env.run("pause", "--reason", "bad deploy in progress") == 0
    assert "No automatic action" in capsys.readouterr().out
    assert env.run("resume") == 0
    assert "resumed by alice" in capsys.readouterr().out


def test_match_json_explains(env, capsys):
    assert env.run("match", str(env.alert_path), "--explain", "--json") == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["matches"][0]["playbook"] == "runaway-cost"
    assert "alertname = LLMCostBurnRateHigh" in result["matches"][0]["why"]
    assert result["near_misses"], "explain lists the playbooks that nearly matched"


def test_match_refuses_a_malformed_alert_file(env, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"alerts": [{"labels": {"alertname": 5}}]}')
    assert env.run("match", str(bad)) == 2
    assert "alerts[0].labels.alertname" in capsys.readouterr().err


def test_lint_names_file_line_and_hint(env, tmp_path, capsys):
    book = tmp_path / "typo.yaml"
    text = (PLAYBOOKS / "runaway-cost.yaml").read_text().replace(
        "approval: two_person", "aproval: two_person")
    book.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "aproval" in ln)
    assert env.run("lint", str(book)) == 1
    err = capsys.readouterr().err
    assert f"typo.yaml:{line}" in err
    assert "approval" in err and "did you mean" in err


def test_lint_and_test_pass_on_shipped_playbooks(env, capsys):
    assert env.run("lint") == 0
    assert env.run("test") == 0
    assert " passed, 0 failed" in capsys.readouterr().out


def test_listing_verbs_take_json(env, capsys):
    env.run("plan", "runaway-cost", "--alert", str(env.alert_path))
    capsys.readouterr()
    for verb in (["incidents"], ["runs"], ["mitigations"], ["playbooks"], ["show", "INC-1"]):
        assert env.run(*verb, "--json") == 0, verb
        json.loads(capsys.readouterr().out)


def test_unknown_verb_and_bad_arguments_give_usage(env, capsys):
    assert env.run("frobnicate") == 2
    assert "unknown command" in capsys.readouterr().err
    assert env.run("apply") == 2
    assert "usage: apply RUN" in capsys.readouterr().err
    assert env.run("show", "INC-99") == 2
    assert "INC-99" in capsys.readouterr().err


def test_chat_context_refuses_local_files_and_impersonation(env):
    settings = Settings(db_path=env.root / "bot.db", policy_path=env.policy_path,
                        playbooks_dir=PLAYBOOKS, user="U123")
    ctx = make_context(settings)
    ctx.local = False
    res = asyncio.run(execute("lint /etc", ctx))
    assert res.exit_code == 2 and "CLI" in res.text
    res = asyncio.run(execute("pause --as someone-else", ctx))
    assert res.exit_code == 2 and "--as" in res.text
    res = asyncio.run(execute('note "unterminated', ctx))
    assert res.exit_code == 2


def test_postmortem_escapes_alert_text(env, tmp_path, capsys):
    alert = tmp_path / "evil.json"
    alert.write_text(json.dumps(am_payload(
        {"alertname": "LLMCostBurnRateHigh", "route": "chat", "team": "<!channel> | `x`"},
        fingerprint="evil")))
    env.run("plan", "runaway-cost", "--alert", str(alert))
    capsys.readouterr()
    assert env.run("postmortem", "INC-1") == 0
    md = capsys.readouterr().out
    assert "<!channel>" not in md.replace("`<!channel> | 'x'`", "")
    assert "`<!channel> | 'x'`" in md  # inside a code span, backticks neutralised
