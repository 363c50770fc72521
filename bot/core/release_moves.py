"""How a release moves: its steps, and the claim a move holds while the target changes.

A promote is a compare-and-set on the step the person saw: a double click, a
stale button or a second person at the same moment finds the step moved and is
told so ("REL-3 already promoted to 25% (you saw 5%); nothing changed"), never a
second step nobody judged. The claim (``Store.claim_release_move``) spans the
target's change and the record's move, so a second move waits for the first and
then answers from what it did instead of changing the target again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from bot.base.claims import this_process
from bot.base.errors import InputError
from bot.store.releases import MoveInFlight, Release

if TYPE_CHECKING:
    from bot.store import Store

# How long a second move waits for the one in flight (a LiteLLM reload can be slow).
MOVE_WAIT = 120.0  # seconds
MOVE_POLL = 0.1


def parse_steps(text: str | Sequence[int]) -> list[int]:
    try:
        steps = [int(s) for s in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise InputError(f"steps must be percents like 5,25,50,100, got {text!r}") from None
    if len(steps) < 2 or steps[-1] != 100 or any(not 0 < s <= 100 for s in steps) or \
            steps != sorted(set(steps)):
        raise InputError(f"steps must rise from above 0 to 100, got {steps}",
                         hint="e.g. --steps 5,25,50,100 (100 is the promotion)")
    return steps


def active(release: Release) -> Release:
    """``release``, if it is still in canary (only then can it move)."""
    if release.state != "canary":
        raise InputError(f"{release.id} is {release.state}; only a release in canary "
                         "can move", hint=f"`release status {release.id}`")
    return release


@asynccontextmanager
async def moving(store: Store, release: Release, seen: int | None, *,
                 any_step: bool = False) -> AsyncIterator[Release]:
    """Hold the release's move claim while its target changes (``claim_release_move``):
    a second move waits for the first, then gets the compare-and-set's answer."""
    step = release.step
    if seen is not None:
        if seen not in release.steps:
            raise InputError(f"{release.id} has no step of {seen}%; its steps are "
                             f"{', '.join(f'{p}%' for p in release.steps)}",
                             hint=f"`release status {release.id}` shows where it is")
        step = release.steps.index(seen)
    owner = f"{this_process()}:{secrets.token_hex(4)}"
    deadline = time.monotonic() + MOVE_WAIT
    while True:
        try:
            if any_step:
                step = active(store.release(release.id)).step
            claimed = store.claim_release_move(release.id, expect_step=step, owner=owner)
            break
        except MoveInFlight:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(MOVE_POLL)
    try:
        yield claimed
    finally:
        store.release_move_claim(release.id, owner=owner)
