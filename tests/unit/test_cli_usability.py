"""The CLI as people meet it: help everywhere, the version, listings that say when they
stop short, and reports that read well in a terminal and stay Markdown in a pipe."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bot.adapters.cli import main, show
from bot.adapters.commands.grammar import Result
from bot.intake.alert import Alert
from bot.store import Store

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"


@pytest.fixture
def db(tmp_path, monkeypatch) -> Path:
    for var in ("LLM_INCIDENT_DB", "LLM_INCIDENT_POLICY", "LLM_INCIDENT_PLAYBOOKS"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "bot.db"
    store = Store(path)
    t0 = datetime(2026, 11, 29, tzinfo=UTC)
    for i in range(120):  # 60 resolved, then 60 open: the open ones are the older half
        alert = Alert(source="generic", fingerprint=f"f{i}", status="firing",
                      labels={"alertname": "A", "route": f"r{i}"}, starts_at=t0 + timedelta(i))
        inc, *_ = store.record_alert(alert, group_key=f"g{i}", title=f"incident {i}",
                                     klass="runaway_cost", severity="high")
        if i >= 60:
            store.set_incident_status(inc, "resolved", actor="t")
    store.close()
    return path


def cli(db: Path, *argv: str) -> int:
    return main(["--db", str(db), "--playbooks", str(PLAYBOOKS), *argv])


def test_help_and_version_work_everywhere(db, capsys):
    for argv in (["--help"], ["-h"], ["help"]):
        assert cli(db, *argv) == 0
        out = capsys.readouterr().out
        assert "plan PLAYBOOK" in out and "serve [--host HOST]" in out
    assert cli(db, "revert", "--help") == 0
    assert capsys.readouterr().out.startswith("revert RUN")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("llm-incident ")


def test_listings_say_when_more_exist_and_status_counts_every_open_incident(db, capsys):
    assert cli(db, "incidents", "--json") == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 50
    assert "showing the newest 50 of 120 incidents" in captured.err
    assert cli(db, "incidents", "--limit", "200", "--json") == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)) == 120 and captured.err == ""
    assert cli(db, "incidents", "--limit", "0") == 2
    assert "--limit must be a positive number" in capsys.readouterr().err
    assert cli(db, "status", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)["incidents"]) == 60
    assert cli(db, "status") == 0
    out = capsys.readouterr().out
    assert "60 open incident(s)" in out and "... and 10 more" in out


def test_test_takes_a_playbook_directory(capsys):
    assert main(["test", str(PLAYBOOKS)]) == 0
    cases = sum(len(yaml.safe_load(f.read_text())["tests"])
                for f in (PLAYBOOKS / "tests").glob("*.test.yaml"))
    assert cases > 10 and f"{cases} passed, 0 failed" in capsys.readouterr().out


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_markdown_results_render_for_a_terminal_and_stay_markdown_in_a_pipe():
    md = "# INC-1 cost\n\n| at | what |\n|---|---|\n| 10:00 | cap \\(256\\) |"
    result = Result("INC-1 cost: plain text for chat", markdown=md)
    piped = io.StringIO()
    show(result, piped, "auto")
    assert piped.getvalue().startswith("# INC-1") and "\\(256\\)" in piped.getvalue()
    terminal = Tty()
    show(result, terminal, "auto")
    text = terminal.getvalue()
    assert "INC-1 cost" in text and "cap (256)" in text and "\\(" not in text and "|---" not in text
    forced = Tty()
    show(result, forced, "md")
    assert forced.getvalue().startswith("# INC-1")


def test_show_is_a_markdown_timeline_when_piped(db, capsys):
    assert cli(db, "show", "INC-1") == 0
    out = capsys.readouterr().out
    assert out.startswith("# INC-1 incident 0") and "| at (UTC) | who | what | |" in out
    assert cli(db, "show", "INC-1", "--format", "md") == 0
    assert capsys.readouterr().out == out


def test_read_verbs_never_create_a_store(tmp_path, capsys):
    typo = tmp_path / "var" / "llm-incidnet.db"
    for verb in (["status"], ["incidents"], ["runs"], ["show", "INC-1"], ["mitigations"]):
        assert main(["--db", str(typo), *verb]) == 2, verb
        assert f"no store at {typo}" in capsys.readouterr().err
    assert main(["--db", str(typo), "playbooks"]) == 0  # needs no store, makes none
    assert main(["--db", str(typo), "slo", "lint"]) == 0
    assert main(["--db", str(typo), "slo", "render", "--out", str(tmp_path / "rules")]) == 0
    assert (tmp_path / "rules" / "slo-rules.yaml").exists()
    assert not typo.exists() and not typo.parent.exists()
    assert main(["--db", str(typo), "pause", "--reason", "first write"]) == 0
    assert typo.exists() and f"created a new store at {typo}" in capsys.readouterr().err


def test_a_closed_pipe_is_not_a_traceback(db):
    import subprocess
    import sys

    # The reader is gone before the CLI writes a byte (as `| head` is after its lines).
    proc = subprocess.Popen([sys.executable, "-m", "bot.adapters.cli", "--db", str(db), "incidents"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_change_already_in_place_is_nothing_to_do_and_never_fills_the_cap(tmp_path, capsys,
                                                                            monkeypatch):
    import yaml

    monkeypatch.setenv("LLM_INCIDENT_MAX_ACTIVE", "2")
    monkeypatch.setenv("LLM_INCIDENT_USER", "alice")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {}, "chat-small": {}, "embed": {"max_output_tokens": 512}}}))
    base = ["--db", str(tmp_path / "bot.db"), "--policy", str(policy)]
    assert main([*base, "do", "fallback", "chat", "to=chat-small", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*base, "approve", first["id"], "--as", "bob", "--apply"]) == 0
    capsys.readouterr()
    for _ in range(2):  # the same change again: already in place
        assert main([*base, "do", "fallback", "chat", "to=chat-small", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["nothing_to_do"] is True
    assert main([*base, "mitigations", "--json"]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == [first["id"]]
    # A real change on another route still fits under the cap of 2.
    assert main([*base, "do", "cap_output_length", "embed", "max_output_tokens=128",
                 "--json"]) == 0
    cap = json.loads(capsys.readouterr().out)
    assert main([*base, "approve", cap["id"], "--as", "bob", "--apply"]) == 0
    assert yaml.safe_load(policy.read_text())["routes"]["embed"]["max_output_tokens"] == 128


def test_a_bad_output_format_is_named(capsys):
    assert main(["incidents", "--format", "html"]) == 2
    assert "--format must be one of auto, md, text, got 'html'" in capsys.readouterr().err



def test_do_takes_a_customer_as_its_second_word_and_a_block_needs_two_people(
        tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("LLM_INCIDENT_USER", "alice")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {"chat": {}}}))
    base = ["--db", str(tmp_path / "bot.db"), "--policy", str(policy)]
    assert main([*base, "do", "cap_customer", "team-acme", "max_output_tokens=64",
                 "--json"]) == 0
    cap = json.loads(capsys.readouterr().out)
    assert main([*base, "approve", cap["id"], "--apply"]) == 0  # on-call may approve alone
    assert yaml.safe_load(policy.read_text())["customers"]["team-acme"][
        "max_output_tokens"] == 64
    capsys.readouterr()
    assert main([*base, "do", "cap_customer", "x", "customer=y", "max_output_tokens=1"]) == 2
    assert "give the customer as the second word" in capsys.readouterr().err
    assert main([*base, "do", "block_customer", "team-acme", "--json"]) == 0
    block = json.loads(capsys.readouterr().out)
    assert main([*base, "approve", block["id"], "--apply"]) == 3  # alice asked: not alone
    assert "two_person" in capsys.readouterr().err
    assert main([*base, "approve", block["id"], "--as", "bob", "--apply"]) == 0
    assert yaml.safe_load(policy.read_text())["customers"]["team-acme"]["blocked"] is True
