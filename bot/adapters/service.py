"""`llm-incident serve`: the webhooks, Slack, the scheduler and the store in one process.

The composition of the long-running service: settings -> engine (``bot.adapters.wiring``),
notifier, scheduler, FastAPI app and a ``uvicorn.Server``. Two event loops: the
main one serves HTTP (webhooks, Slack, health, metrics); the core's, in its own
thread (``bot.adapters.core_loop``), runs the engine, the scheduler, drills and the
notifier, so a store write waiting on a lock never delays an ack or /healthz.

Shutdown on SIGTERM or SIGINT: uvicorn stops accepting, finishes the requests in
flight (bounded by ``GRACEFUL_SECONDS``), then the scheduler shuts down and the
store closes. Nothing is lost: a webhook is answered 2xx only after its alerts are
committed, so a request cut short is retried by its sender and deduplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from bot.adapters.console.oncall import console_oncall
from bot.adapters.console.views import attach_console
from bot.adapters.core_loop import CoreLoop
from bot.adapters.pagers import build_escalations
from bot.adapters.playbook_watch import PlaybookWatcher
from bot.adapters.scheduler import Scheduler
from bot.adapters.service_metrics import ServiceMetrics
from bot.adapters.settings import Settings, unauthenticated_bind
from bot.adapters.slack import attach_slack, build_slack_notifier
from bot.adapters.web import create_app
from bot.adapters.wiring import build_engine
from bot.base.claims import this_process
from bot.core.engine import Engine
from bot.core.leadership import Leadership
from bot.core.notifier import ConsoleNotifier, Notifier, publish_safely
from bot.core.outbox import watch as watch_outbox
from drills.harness import drill_service, next_class
from drills.schedule import MISSED, attach_drill_schedule

log = logging.getLogger("llm_incident.serve")

GRACEFUL_SECONDS = 20  # a request still running after this is cut; its sender retries
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Server(uvicorn.Server):
    """uvicorn's server with two changes: the ready line, and signal handling that
    returns from ``serve()`` instead of re-raising the signal, so our cleanup runs."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.url: str | None = None
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in _SIGNALS:
            try:
                # handle_exit: the first signal drains gracefully, a second forces exit.
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests, embedding): the caller stops us
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        log.info("llm-incident ready on %s (webhooks under /v1/alerts)", self.url)
        self.ready.set()


def build_notifier(settings: Settings) -> Notifier:
    """The console until the Slack notifier is configured (its tokens in the settings)."""
    return ConsoleNotifier(sys.stdout)


def build_scheduler(engine: Engine, settings: Settings) -> Scheduler:
    # Every serve bids for the leader lease; alone on its store it simply leads.
    return Scheduler(engine, leadership=Leadership(engine.store, ttl=settings.lease_ttl),
                     canary_thresholds=settings.canary_thresholds,
                     poll_interval=settings.poll_interval,
                     escalations=build_escalations(engine, settings))


class Service:
    """Everything one `serve` process runs; ``run()`` serves until stopped."""

    def __init__(self, settings: Settings, host: str | None = None, port: int | None = None,
                 *, engine: Engine | None = None, scheduler: Scheduler | None = None,
                 notifier: Notifier | None = None, http: str = "h11",
                 loop: str = "asyncio") -> None:
        # Before anything opens: open webhooks beyond loopback are refused, or said loudly.
        if warning := unauthenticated_bind(settings, host or settings.host):
            log.warning("%s", warning)
        self.settings = settings
        self.engine = engine or build_engine(settings)
        # Slack's notifier when SLACK_BOT_TOKEN and LLM_INCIDENT_SLACK_CHANNEL are set.
        self.engine.notifier = (notifier or build_slack_notifier(settings, self.engine)
                                or build_notifier(settings))
        self.scheduler = scheduler or build_scheduler(self.engine, settings)
        self.drills = drill_service(self.engine, settings)
        self.metrics = ServiceMetrics(self.engine.store)
        if self.scheduler.leadership is not None:
            self.metrics.attach_leadership(self.scheduler.leadership)
        slack: Any = getattr(self.engine.notifier, "real", self.engine.notifier)
        if isinstance(getattr(slack, "stats", None), dict) and hasattr(slack, "channel"):
            self.metrics.attach_slack(lambda: dict(slack.stats), self.engine.store,
                                      slack.channel)
        self.core = CoreLoop()
        self.app = create_app(self.engine, settings, metrics=self.metrics,
                              scheduler=self.scheduler, core=self.core)
        # POST /slack/events and/or Socket Mode, as far as the Slack settings say.
        self.slack = attach_slack(
            self.engine, settings, self.app,
            on_ignored=lambda reason: self.metrics.channel_messages_ignored.labels(reason).inc(),
            core=self.core)
        # The web console at /ui: read-only, but for signed approval links, which ask
        # Slack's on-call check again at use (the Slack app's own, when there is one).
        attach_console(self.app, self.engine, core=self.core, secret=settings.console_secret,
                       user_header=settings.console_user_header,
                       external_url=settings.console_url,
                       oncall=console_oncall(settings, self.slack.app))
        self.playbook_watch = PlaybookWatcher(
            self.engine,
            on_result=lambda r: self.metrics.playbook_reloads.labels(
                "ok" if r.ok else "refused").inc(),
            core=self.core)
        config = uvicorn.Config(
            self.app,
            host=host or settings.host,
            port=settings.port if port is None else port,
            log_config=None,  # the caller configures logging; uvicorn's loggers propagate
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            server_header=False,
            # h11 and asyncio, pinned so an environment that happens to have httptools
            # does not switch: bench_serve.py measured httptools' p99 at ~19 ms against
            # h11's ~6-7 ms at 50 alerts/s, and no better storm throughput.
            http=http,
            loop=loop,
        )
        self.server = _Server(config)

    @property
    def url(self) -> str | None:
        return self.server.url

    async def wait_ready(self) -> str:
        await self.server.ready.wait()
        assert self.server.url is not None
        return self.server.url

    def stop(self) -> None:
        """Ask for a graceful stop (what SIGTERM does)."""
        self.server.should_exit = True

    async def run(self) -> None:
        self.core.start()
        try:
            # Before listening: settle what a crash left (claims, the outbox), run
            # overdue reverts, roll back a drill killed half way.
            await self.core.call(self._start_core)
            await self.slack.start()
            await self.playbook_watch.start()
            await self.server.serve()
            if not self.server.started:
                raise SystemExit(1)  # uvicorn logged why (port in use...)
        finally:
            await self.playbook_watch.stop()
            await self.slack.stop()
            try:
                await self.core.call(self._stop_core)
            finally:
                self.core.stop()
                self.engine.store.close()
            log.info("llm-incident stopped")

    async def _start_core(self) -> None:
        """On the core's loop: the scheduler's jobs bind to the loop that starts them."""
        if start := getattr(self.engine.notifier, "start", None):
            start()  # what Slack had not taken before a crash or restart goes out now
        await self.scheduler.start()
        await self.engine.drain_outbox()  # announced and stepped once, even after a crash
        # What another process (the CLI) queued reaches the channel within a second.
        self._outbox_watch = asyncio.ensure_future(watch_outbox(self.engine))
        await self.drills.recover(log.info)
        attach_drill_schedule(
            self.scheduler,
            run_drill=lambda klass: self.drills.run(klass, say=log.info),
            choose_class=lambda: next_class(self.drills),
            notifier=self.engine.notifier,
            cron=self.settings.drill_cron,
            tz=self.settings.drill_tz,
            # Every process sharing the store schedules the drill; the store decides
            # which one runs each firing, and which firings nobody was up for.
            claim=lambda when, missed: self.drills.drills.claim_firing(
                when, MISSED if missed else this_process()),
            is_claimed=self.drills.drills.is_claimed,
            since=self.engine.store.created_at(),
        )
        load = self.engine.playbook_load
        if load is not None and not load.ok:
            # Loud, and where people look: the bot runs on an older good set (or none).
            await publish_safely(self.engine.notifier, load.message(self.engine.registry.source))

    async def _stop_core(self) -> None:
        # Background work stops here; the outbox keeps what it had not done, and the
        # next start (or another process) does it, once.
        await self.core.cancel_here()
        if (watch := getattr(self, "_outbox_watch", None)) is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if aclose := getattr(self.engine.notifier, "aclose", None):
            await aclose()  # the Slack notifier flushes what it still holds
        try:
            await self.scheduler.shutdown()
        except Exception:  # noqa: BLE001 - the store must still be closed
            log.exception("scheduler shutdown failed")


async def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGTERM/SIGINT; returns after a graceful shutdown."""
    await Service(settings, host, port).run()
