"""Fakes of the narrow interfaces, for tests and benches: drivers, metrics, notifier.

They behave like the real drivers where tests depend on it: writes set
absolute values and validate the whole policy, multi-route writes apply one
route at a time in order, and failures raise the same error types.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from actions.base import Sample
from actions.policy import ServingPolicy, UnknownRoute
from bot.base.errors import DriverError, PartialApplyError
from bot.core.messages import Message


class InMemoryDriver:
    """A ``ServingDriver`` holding the policy in memory, with failure injection.

    ``writes`` records every write call (also the failed ones) as
    ``(updates, reason, action)``. ``fail_on_route`` makes a write raise
    ``PartialApplyError`` when it reaches that route, after applying the routes
    before it; ``fail_reads`` / ``fail_writes`` make every read / write raise
    ``DriverError`` without changing anything.
    """

    def __init__(
        self,
        policy: ServingPolicy | None = None,
        *,
        name: str = "fake",
        fail_on_route: str | None = None,
        fail_reads: bool = False,
        fail_writes: bool = False,
    ) -> None:
        self.name = name
        self.policy = policy.model_copy(deep=True) if policy else ServingPolicy()
        self.fail_on_route = fail_on_route
        self.fail_reads = fail_reads
        self.fail_writes = fail_writes
        self.writes: list[tuple[dict[str, dict[str, Any]], str, str]] = []
        self.reads = 0

    async def read(self) -> ServingPolicy:
        self.reads += 1
        if self.fail_reads:
            raise DriverError(f"{self.name}: injected read failure", hint="fake driver")
        # A copy, so a caller mutating the result cannot change the "target".
        return self.policy.model_copy(deep=True)

    async def write(self, updates: dict[str, dict[str, Any]], *, reason: str, action: str) -> None:
        self.writes.append(({r: dict(f) for r, f in updates.items()}, reason, action))
        if self.fail_writes:
            raise DriverError(f"{self.name}: injected write failure", hint="fake driver")
        applied: list[str] = []
        for route, fields in updates.items():
            if route == self.fail_on_route:
                raise PartialApplyError(
                    f"{self.name}: injected failure on route '{route}'",
                    applied=applied,
                    hint="fake driver",
                )
            try:
                new = self.policy.with_values({route: fields})
            except UnknownRoute as exc:
                raise PartialApplyError(f"{self.name}: {exc}", applied=applied) from None
            except ValidationError as exc:
                raise PartialApplyError(
                    f"{self.name}: route '{route}' would be invalid: {exc.errors()[0]['msg']}",
                    applied=applied,
                ) from None
            self.policy = new.model_copy(
                update={"updated_at": datetime.now(UTC), "updated_by": reason}
            )
            applied.append(route)


class FakeMetrics:
    """A ``MetricsSource`` answering scripted values per exact query string.

    A float stands for one unlabelled sample; a query nobody scripted returns
    an empty vector, as Prometheus does for a series with no data.
    """

    def __init__(self, values: dict[str, list[Sample] | float] | None = None) -> None:
        self.values: dict[str, list[Sample] | float] = dict(values or {})
        self.fail = False
        self.queries: list[str] = []

    def set(self, query: str, value: list[Sample] | float) -> None:
        self.values[query] = value

    async def query(self, promql: str) -> list[Sample]:
        self.queries.append(promql)
        if self.fail:
            raise DriverError(f"injected metrics failure for {promql!r}", hint="fake metrics")
        answer = self.values.get(promql, [])
        if isinstance(answer, int | float):
            return [Sample(value=float(answer))]
        return [s.model_copy(deep=True) for s in answer]


class RecordingNotifier:
    """A fake for tests: ``messages`` in publish order, ``times[i]`` when ``messages[i]`` came."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.messages: list[Message] = []
        self.times: list[datetime] = []

    async def publish(self, msg: Message) -> None:
        self.messages.append(msg)
        self.times.append(self.clock())

    def of_kind(self, kind: str) -> list[Message]:
        return [m for m in self.messages if m.kind == kind]

    def clear(self) -> None:
        self.messages.clear()
        self.times.clear()


def dead_owner() -> str:
    """A claim holder that is no longer running: a child process that exited and was reaped
    (what a `kill -9`'d CLI looks like to the store)."""
    import socket
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:1"
