"""`serve` reloads its playbooks when the directory changes, or on SIGHUP.

A cheap poll (names, sizes and modification times of the directory's files,
every ``interval`` seconds) rather than inotify: it works the same on a
bind-mounted volume, a ConfigMap's symlink swap and a plain directory. A reload
is all or nothing (``Engine.reload_playbooks``), logged, counted and posted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from bot.adapters.core_loop import Inline
from bot.core.engine import Engine
from bot.core.playbook_loading import LoadResult

log = logging.getLogger("llm_incident.playbooks")

WATCH_ACTOR = "llm-incident (playbook watch)"


def directory_state(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a playbook file is edited, added, removed or swapped in."""
    try:
        entries = sorted(path.iterdir()) if path.is_dir() else [path]
        out = []
        for p in entries:
            with contextlib.suppress(OSError):
                st = p.stat()  # follows symlinks: a swapped ConfigMap target changes it
                out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)
    except OSError:
        return ()


class PlaybookWatcher:
    def __init__(self, engine: Engine, *, interval: float = 2.0,
                 on_result: Callable[[LoadResult], None] | None = None,
                 core: Inline | None = None) -> None:
        self.engine = engine
        # The watch (and SIGHUP, which only the main thread's loop can take) lives on
        # the caller's loop; the reload itself runs on the core.
        self.core = core or Inline()
        self.interval = interval
        self.on_result = on_result
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._signal_installed = False

    def request_reload(self) -> None:
        """Reload at once (SIGHUP's handler)."""
        self._wake.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
            self._signal_installed = True
        self._task = asyncio.create_task(self._run(), name="playbook-watch")

    async def stop(self) -> None:
        if self._signal_installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        source = self.engine.registry.source
        if source is None:
            return
        seen = directory_state(source)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            asked, now = self._wake.is_set(), directory_state(source)
            self._wake.clear()
            if not asked and now == seen:
                continue
            seen = now
            try:
                result = await self.core.call(self.engine.reload_playbooks,
                                              "SIGHUP" if asked else WATCH_ACTOR)
            except Exception:  # noqa: BLE001 - the watcher must outlive any one reload
                log.exception("playbook reload failed")
                continue
            if self.on_result is not None:
                self.on_result(result)
