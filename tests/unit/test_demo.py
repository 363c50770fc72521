"""The README's main command runs the whole guarded loop on a fresh machine."""

import asyncio

from bot.demo import run_demo
from bot.settings import Settings


def test_demo_walks_the_loop_and_restores_the_policy(tmp_path):
    lines: list[str] = []
    result = asyncio.run(run_demo(Settings(db_path=tmp_path / "unused.db"), say=lines.append))
    out = "\n".join(lines)
    assert result.ok
    assert "1. runaway-cost" in out
    assert "refused by guard 'approval'" in out
    assert "state: applied" in out and "state: reverted" in out
    assert "max_output_tokens: 256" in out  # the policy file as printed after apply
    assert result.text.startswith("# Postmortem INC-1")
    assert "approve by bob" in result.text
    assert not (tmp_path / "unused.db").exists()  # the demo never touches the real store
