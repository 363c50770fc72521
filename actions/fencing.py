"""Fencing: each change carries who made it and on what authority, down to the target.

With replicas, the leader lease hands out a rising *fencing token*. The runner
sets the current ``Fence`` (token, run id, apply or revert) around its driver
calls with ``fenced(...)``; a driver that can keep the highest token it has seen
refuses a write with a lower one (the policy file stores it, next to the run id,
in the file itself, written atomically with the change). So a leader that was
paused or cut off past its lease cannot write on authority it no longer has: the
new leader's first write (or its reconcile of the paused one's half-done run)
has already raised the bar. The HTTP driver sends the fence as headers and an
``Idempotency-Key``, for a target that deduplicates or fences on its side.

A context variable and not a parameter: the driver interface stays the narrow
read/write every target implements, and the value follows the call into the
worker thread a file driver writes from (``asyncio.to_thread`` copies it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from bot.base.errors import DriverError


@dataclass(frozen=True)
class Fence:
    token: int
    run_id: str
    op: str  # "apply", "revert" or "fence" (raise the bar, change nothing)


_current: ContextVar[Fence | None] = ContextVar("llm_incident_fence", default=None)


def current_fence() -> Fence | None:
    return _current.get()


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    reset = _current.set(fence)
    try:
        yield
    finally:
        _current.reset(reset)


class StaleFence(DriverError):
    """The target has seen a newer fencing token than this write carries."""

    def __init__(self, target: str, ours: int, seen: int, by: str | None) -> None:
        super().__init__(
            f"{target} refused a write with fencing token {ours}: it has seen token {seen}"
            f"{f' (from {by})' if by else ''}, so this process lost the leader lease",
            hint="nothing was written; the current leader settles the run")
