"""The README's main command: a scored drill of runaway cost on the in-process sandbox."""

import asyncio
from pathlib import Path

import yaml

from bot.adapters.demo import run_demo
from bot.adapters.settings import Settings


def test_demo_runs_a_scored_drill_and_restores_everything(tmp_path):
    lines: list[str] = []
    result = asyncio.run(run_demo(Settings(db_path=tmp_path / "unused.db"), say=lines.append))
    out = "\n".join(lines)
    assert result.ok, result.text
    assert result.data["status"] == "completed" and result.data["policy_restored"]
    assert result.data["score"] >= 70
    assert result.text.startswith(f"# Drill report {result.data['drill']}: "
                                  f"{result.data['score']}/100")
    # The stand-in detector says so, and every responder action is labelled scripted.
    assert "the drill's own detector stood in for Prometheus" in out
    assert "scripted responder (scripted-responder-1) acknowledged" in out
    assert "scripted second responder (scripted-responder-2) approved" in out
    # The policy changed (the cap as a diff) and was reverted; the fault was rolled back.
    assert "+ routes.chat.max_output_tokens: 256" in out
    assert "reverted by drill" in result.text
    assert "fault removed" in out
    assert "[DRILL]" in out  # the bot's own messages are marked
    workspace = next(line.split(": ", 1)[1].split(" ")[0] for line in lines
                     if line.startswith("Demo workspace"))
    policy = yaml.safe_load(Path(workspace, "serving-policy.yaml").read_text())
    assert policy["routes"]["chat"] == {"max_concurrency": 64}
    assert not (tmp_path / "unused.db").exists()  # the demo never touches the real store
