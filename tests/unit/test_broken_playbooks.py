"""A broken playbook directory never takes the operator's tools away.

Each test first runs with the shipped playbooks (so a good set is stored), then
breaks a copy of the directory the way a bad commit would, and checks what an
on-call engineer needs still works.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from bot.adapters.cli import main
from bot.adapters.settings import Settings
from bot.adapters.wiring import build_engine
from bot.base.errors import PlaybookError
from bot.core.playbook_loading import reload
from bot.playbook.loader import MAX_FILE_BYTES, lint, load_dir
from bot.playbook.registry import PlaybookRegistry

SHIPPED = Path(__file__).resolve().parents[2] / "playbooks"
CAP_ALERT = {
    "version": "4", "groupKey": "{}:{}", "status": "firing", "receiver": "r", "groupLabels": {},
    "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
    "alerts": [{"status": "firing", "startsAt": "2026-11-29T10:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "f1",
                "annotations": {}, "labels": {"alertname": "LLMCostBurnRateHigh",
                                              "route": "chat", "severity": "critical"}}],
}


@pytest.fixture
def cli(tmp_path, monkeypatch):
    for var in ("LLM_INCIDENT_DB", "LLM_INCIDENT_POLICY", "LLM_INCIDENT_PLAYBOOKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLM_INCIDENT_USER", "alice")
    playbooks = tmp_path / "playbooks"
    shutil.copytree(SHIPPED, playbooks)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"max_output_tokens": 1024, "max_concurrency": 32}, "chat-small": {}}}))
    alert = tmp_path / "alert.json"
    alert.write_text(json.dumps(CAP_ALERT))

    class Cli:
        dir = playbooks
        policy_path = policy
        alert_path = alert
        db = tmp_path / "bot.db"

        def run(self, *argv: str) -> int:
            return main(["--db", str(self.db), "--policy", str(policy),
                         "--playbooks", str(playbooks), *argv])

        def break_a_playbook(self) -> None:
            path = playbooks / "latency-spike.yaml"
            path.write_text(path.read_text().replace("severity: high", "severity: [high"))

    return Cli()


def test_pause_revert_and_status_work_with_a_broken_directory(cli, capsys):
    assert cli.run("plan", "runaway-cost", "--alert", str(cli.alert_path)) == 0
    assert cli.run("approve", "RUN-1", "--as", "bob", "--apply") == 0
    assert yaml.safe_load(cli.policy_path.read_text())["routes"]["chat"]["max_output_tokens"] == 256
    cli.break_a_playbook()
    capsys.readouterr()
    for argv in (["status"], ["runs"], ["mitigations"], ["incidents"], ["show", "INC-1"],
                 ["pause", "--reason", "bad deploy"], ["resume"]):
        assert cli.run(*argv) == 0, argv
    assert cli.run("revert", "RUN-1", "--reason", "rolled back") == 0
    assert yaml.safe_load(cli.policy_path.read_text())["routes"]["chat"]["max_output_tokens"] == 1024
    err = capsys.readouterr().err
    assert "warning: playbooks from" in err and "do not load" in err
    assert "latency-spike.yaml" in err


def test_the_last_good_set_stays_in_force_and_a_fix_reloads(cli, capsys):
    assert cli.run("reload") == 0  # creates the store and keeps the shipped set in it
    cli.break_a_playbook()
    capsys.readouterr()
    assert cli.run("playbooks", "--json") == 0  # the stored set: all eight
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 8
    assert cli.run("reload") == 1
    assert "do not load" in capsys.readouterr().err
    shutil.copy(SHIPPED / "latency-spike.yaml", cli.dir / "latency-spike.yaml")
    assert cli.run("reload") == 0


def test_without_a_stored_set_the_verbs_that_need_playbooks_say_why(cli, capsys):
    cli.break_a_playbook()
    assert cli.run("resume") == 0  # creates the store: no good set was ever stored
    assert cli.run("status") == 0
    assert cli.run("suggest", "INC-9") != 0
    assert cli.run("plan", "runaway-cost", "--alert", str(cli.alert_path)) != 0
    err = capsys.readouterr().err
    assert "latency-spike.yaml:6" in err and "no playbooks are in force" in err


def test_a_runtime_reload_is_all_or_nothing(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "pb")
    engine = build_engine(Settings(db_path=tmp_path / "bot.db", playbooks_dir=tmp_path / "pb",
                                   policy_path=tmp_path / "p.yaml"))
    before = engine.registry.playbooks
    (tmp_path / "pb" / "extra.yaml").write_text("id: [broken\n")
    result = asyncio.run(engine.reload_playbooks("alice"))
    assert not result.ok and engine.registry.playbooks is before and result.count == 8
    assert "extra.yaml" in result.text(engine.registry.source)
    (tmp_path / "pb" / "extra.yaml").unlink()
    (tmp_path / "pb" / "runaway-cost.yaml").write_text(
        (SHIPPED / "runaway-cost.yaml").read_text().replace("title: Runaway cost", "title: Spend"))
    result = reload(engine.registry, engine.store)
    assert result.ok and result.changed and engine.registry.get("runaway-cost").title == "Spend"
    kinds = [e.kind for e in engine.store.timeline(None)]
    assert "playbooks_refused" in kinds


def test_a_huge_playbook_is_refused_before_it_is_parsed(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "pb", ignore=shutil.ignore_patterns("tests"))
    huge = tmp_path / "pb" / "huge.yaml"
    with huge.open("wb") as fh:  # 60 MB of "a: 1\n" lines (sparse: cheap to make)
        fh.truncate(60 * 1024 * 1024)
    problems = lint([tmp_path / "pb"])
    assert [p.file for p in problems] == [str(huge)]
    assert f"at most {MAX_FILE_BYTES}" in problems[0].message
    with pytest.raises(PlaybookError):
        load_dir(tmp_path / "pb")
    registry = PlaybookRegistry()
    assert registry.reload(tmp_path / "pb") and len(registry) == 0


def test_a_document_of_too_many_nodes_is_refused_while_it_is_composed(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("[" + ",".join(["1"] * 30_000) + "]")  # ~60 KB, under the size limit
    assert os.path.getsize(path) < MAX_FILE_BYTES
    [problem] = lint([path])
    assert "more than 20000 nodes" in problem.message
