"""The core's own thread and event loop, so store work never stalls the HTTP side.

SQLite calls block: a write waits up to the busy timeout while another process
holds the lock. On one event loop that wait would freeze ``/healthz``, Slack's
3-second acks and every other request. ``serve`` therefore runs the engine,
scheduler, drills and notifier on a loop of their own in one worker thread; the
HTTP loop (uvicorn, bolt) parses, checks signatures, answers health, and hands
each use case over with ``await core.call(fn, ...)``. Background work (the
outbox after a webhook's answer) goes through ``core.spawn``: supervised, so a
failure is logged and counted, never lost silently.

One thread, one loop: the core stays single-threaded, as the engine was written.
Tests and the CLI, which have no HTTP side, use ``Inline`` (the same interface,
run on the caller's loop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Inline:
    """Runs core calls on the caller's loop (the CLI, tests)."""

    def __init__(self) -> None:
        self.failures = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        return await fn(*args, **kw)

    def spawn(self, name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        task = asyncio.get_running_loop().create_task(self._supervised(name, fn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _supervised(self, name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            await fn()
        except Exception:
            self.failures += 1
            log.exception("background work %s failed; it is retried on the next poll", name)

    async def drain(self) -> None:
        """Wait for spawned work (tests, shutdown)."""
        await self.drain_here()

    async def cancel_here(self) -> None:
        """Stop background work (shutdown): what it had not finished stays in the
        outbox, claimed by this process, and the next start takes it over."""
        for task in list(self._tasks):
            task.cancel()
        await self.drain_here()

    async def drain_here(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class CoreLoop(Inline):
    """An event loop in a worker thread that owns the core."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="llm-incident-core",
                                        daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()

    def on_core(self) -> bool:
        return threading.current_thread() is self._thread

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kw: P.kwargs) -> T:
        if self.on_core():
            return await fn(*args, **kw)

        async def run() -> T:
            return await fn(*args, **kw)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), self.loop))

    def spawn(self, name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        def schedule() -> None:
            task = self.loop.create_task(self._supervised(name, fn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self.loop.call_soon_threadsafe(schedule)

    async def drain(self) -> None:
        await self.call(self.drain_here)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()
