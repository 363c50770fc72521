"""How this process's store writes are going, for ``/healthz``.

A liveness probe must not write (it would wait behind the write lock it is meant
to judge), so it reads what the process's own writes did: ``Store.transaction``
reports each start and outcome here, and a ``serve`` writes at every lease round,
so a process that cannot write anymore is seen within a few rounds.
"""

from __future__ import annotations

import time


class WriteHealth:
    """The outcome of this process's store writes, kept for ``/healthz``: a process
    whose every write has failed for a while, or whose write has been running far
    longer than any limit allows, cannot recover on its own and should be restarted.
    Plain attributes, read from another thread without the store's lock."""

    def __init__(self) -> None:
        self.last_ok: float | None = None  # monotonic
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.running_since: float | None = None

    def started(self) -> None:
        self.running_since = time.monotonic()

    def ended(self) -> None:
        self.running_since = None

    def ok(self) -> None:
        self.running_since = None
        self.last_ok = time.monotonic()
        self.failing_since, self.failures = None, 0

    def failed(self, error: str) -> None:
        self.running_since = None
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.failures += 1
        self.last_error = error

    def problem(self, *, stuck_after: float, failing_after: float) -> str | None:
        """Why this process cannot write (None: it can, or has not been failing long)."""
        now = time.monotonic()
        if self.running_since is not None and now - self.running_since > stuck_after:
            return (f"a store write has been running for {now - self.running_since:.0f} s "
                    "(longer than any store limit allows)")
        if self.failing_since is not None and now - self.failing_since > failing_after:
            return (f"every store write for {now - self.failing_since:.0f} s failed "
                    f"({self.failures} in a row; last: {self.last_error})")
        return None
