"""A release step moves once per judged step: a promote is a compare-and-set on the
step the person saw (a double click, a stale Slack button, two promotes at once)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from fakes import InMemoryDriver

from bot.adapters.commands import Context, execute
from bot.adapters.settings import Settings
from bot.adapters.slack.app import SlackHandlers
from bot.adapters.slack.auth import OncallAuthorizer
from bot.adapters.slack.channel_alerts import ChannelAlerts
from bot.base.errors import Conflict
from bot.core.release_cases import ReleaseGuard

sys.path.insert(0, str(Path(__file__).parent))
from incident_env import PLAYBOOKS, Env  # noqa: E402
from test_releases import POLICY, Traffic  # noqa: E402


class SlowDriver(InMemoryDriver):
    """Each write yields to the loop first, so a second promote runs meanwhile."""

    async def write(self, updates: dict[str, dict[str, Any]], *, reason: str,
                    action: str) -> None:
        await asyncio.sleep(0.05)
        await super().write(updates, reason=reason, action=action)


def rig(driver: InMemoryDriver | None = None) -> tuple[Env, ReleaseGuard]:
    env = Env(driver=driver or InMemoryDriver(POLICY, name="default"))
    guard = ReleaseGuard(env.engine, reader=Traffic())
    asyncio.run(guard.start("chat", prompt_version="v43", actor="alice"))
    return env, guard


def weight(env: Env) -> float:
    return asyncio.run(env.driver.read()).get("chat", "canary")["weight"]


def set_canary_runs(env: Env) -> int:
    return sum(r.action == "set_canary" for r in env.store.runs())


def test_a_second_promote_of_the_step_seen_says_already_promoted_and_changes_nothing():
    env, guard = rig()
    rel = asyncio.run(guard.promote("REL-1", actor="bob", seen=5))
    assert rel.weight == 0.25
    with pytest.raises(Conflict) as err:
        asyncio.run(guard.promote("REL-1", actor="carol", seen=5))
    assert err.value.message == "REL-1 already promoted to 25% (you saw 5%); nothing changed"
    assert weight(env) == 0.25 and set_canary_runs(env) == 2  # the start and one step
    assert guard.store.release("REL-1").step == 1
    with pytest.raises(Exception, match="no step of 7%"):
        asyncio.run(guard.promote("REL-1", actor="carol", seen=7))


def test_two_promotes_at_once_without_a_seen_step_advance_it_once():
    env, guard = rig(SlowDriver(POLICY, name="default"))

    async def both() -> list[Any]:
        return await asyncio.gather(guard.promote("REL-1", actor="bob"),
                                    guard.promote("REL-1", actor="carol"),
                                    return_exceptions=True)

    results = asyncio.run(both())
    moved = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(moved) == 1 and moved[0].weight == 0.25
    assert len(refused) == 1 and isinstance(refused[0], Conflict)
    assert "already promoted to 25% (you saw 5%); nothing changed" in str(refused[0])
    assert weight(env) == 0.25 and set_canary_runs(env) == 2
    assert guard.store.flag("release_move:REL-1") is None  # the claim is let go


def test_the_cli_from_option_refuses_a_moved_step_with_a_nonzero_exit():
    env, _ = rig()
    ctx = Context(actor="bob", playbooks_dir=PLAYBOOKS, open_engine=lambda: env.engine)
    first = asyncio.run(execute("release promote REL-1 --from 5%", ctx))
    assert first.ok, first.text
    again = asyncio.run(execute("release promote REL-1 --from 5%", ctx))
    assert not again.ok and again.exit_code != 0
    assert "REL-1 already promoted to 25% (you saw 5%); nothing changed" in again.text
    bad = asyncio.run(execute("release promote REL-1 --from five", ctx))
    assert not bad.ok and "--from takes the percent you saw" in bad.text
    assert weight(env) == 0.25


def test_the_promote_button_carries_the_step_and_a_stale_one_is_refused():
    env, guard = rig()
    (live,) = [m for m in env.published if m.incident_id == "REL-1"]
    promote = live.buttons[0]
    assert (promote.action, promote.value) == ("release_promote", "REL-1:5")
    handlers = SlackHandlers(env.engine, Settings(playbooks_dir=PLAYBOOKS),
                             OncallAuthorizer(("U0BOB",)),
                             ChannelAlerts(env.engine, (), ()))
    said: list[dict[str, Any]] = []

    async def ack(**_: Any) -> None:
        return None

    async def respond(**kw: Any) -> None:
        said.append(kw)

    async def click(value: str) -> None:
        await handlers.button(ack, {"user": {"id": "U0BOB"}},
                              {"action_id": "release_promote", "value": value}, respond)

    asyncio.run(click("REL-1:5"))
    assert guard.store.release("REL-1").weight == 0.25
    asyncio.run(click("REL-1:5"))  # a double click, or the button of an older message
    assert "REL-1 already promoted to 25% (you saw 5%); nothing changed" in said[-1]["text"]
    assert said[-1]["response_type"] == "ephemeral"
    asyncio.run(click("REL-1"))  # a payload without the step it was shown at
    assert "this button is broken" in said[-1]["text"]
    assert guard.store.release("REL-1").weight == 0.25 and weight(env) == 0.25
