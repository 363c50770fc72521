"""A revert puts back exactly what was there: the file's bytes, per run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from actions.drivers.policy_file import PolicyFileDriver
from bot.core.runner import Runner
from bot.playbook.schema import Guard
from bot.store import Store

TEXT = """\
# Serving policy for the chat product. Owned by the platform team.
version: 1
routes:
  chat:
    max_output_tokens: 1024   # raised for the long-answers launch (PLAT-88)
    max_concurrency: 16
  chat-small: {max_output_tokens: 512}
"""


def _plan(runner: Runner, tokens: int, route: str = "chat"):
    return asyncio.run(runner.plan(
        incident_id=None, playbook_id=None, step_id=None, action="cap_output_length",
        target="default", args={"route": route, "max_output_tokens": tokens},
        guard=Guard(approval="none"), verify_query=None, requested_by="alice"))


def _env(tmp_path: Path) -> tuple[Path, Runner, Store]:
    path = tmp_path / "policy.yaml"
    path.write_text(TEXT)
    store = Store(":memory:")
    runner = Runner(store, {"default": PolicyFileDriver(path)}, None)
    return path, runner, store


def test_an_untouched_file_gets_its_exact_bytes_back(tmp_path: Path):
    path, runner, store = _env(tmp_path)
    first = _plan(runner, 256)
    second = _plan(runner, 128, route="chat-small")
    asyncio.run(runner.apply(first.id, actor="alice"))
    after_first = path.read_bytes()
    asyncio.run(runner.apply(second.id, actor="alice"))
    assert b"PLAT-88" not in path.read_bytes()  # the dumper drops comments...
    # ...and each run kept its own version: the newest reverts to the bytes it found.
    asyncio.run(runner.revert(second.id, actor="bob", reason="done"))
    assert path.read_bytes() == after_first
    done = asyncio.run(runner.revert(first.id, actor="bob", reason="done"))
    assert path.read_text() == TEXT  # comments, flow style and order included
    assert done.state == "reverted"
    assert not list((tmp_path / "policy.yaml.versions").iterdir())  # nothing left behind


def test_a_file_changed_since_gets_values_back_and_says_what_it_left(tmp_path: Path):
    path, runner, store = _env(tmp_path)
    run = _plan(runner, 256)
    asyncio.run(runner.apply(run.id, actor="alice"))
    # A person edits the file by hand during the incident.
    path.write_text(path.read_text().replace("max_concurrency: 16", "max_concurrency: 4"))
    done = asyncio.run(runner.revert(run.id, actor="bob", reason="recovered"))
    policy = asyncio.run(PolicyFileDriver(path).read())
    assert policy.get("chat", "max_output_tokens") == 1024  # our change is undone
    assert policy.get("chat", "max_concurrency") == 4  # theirs stays
    text = store.run_events(done.id)[-1].text
    assert text == "reverted by bob: recovered"
    assert text.count("bob") == 1


def test_a_field_changed_since_is_left_and_reported_once(tmp_path: Path):
    path, runner, store = _env(tmp_path)
    run = _plan(runner, 256)
    asyncio.run(runner.apply(run.id, actor="alice"))
    path.write_text(path.read_text().replace("max_output_tokens: 256", "max_output_tokens: 64"))
    done = asyncio.run(runner.revert(run.id, actor="bob", reason="by bob"))
    text = store.run_events(done.id)[-1].text
    assert text.startswith("reverted by bob: on request; left as is: ")
    assert "routes.chat.max_output_tokens changed since apply (now 64)" in text
    assert text.count("bob") == 1
    assert asyncio.run(PolicyFileDriver(path).read()).get("chat", "max_output_tokens") == 64
