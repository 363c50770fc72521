"""Putting a drill together: the in-process sandbox, the drill's engine, and the verbs' service.

``sandbox_app`` builds the practice gateway for a drill running ``speed`` times faster
than real time (no simulated waiting; its clock runs at drill speed, so gauges that
expire after N seconds expire after N drill seconds). ``serve_sandbox`` runs it under
uvicorn on a free loopback port in the current event loop.

``DrillService`` is what the ``drill`` verbs call (``bot.adapters.commands.drill_verbs``):
list, run, history, report. A drill on the sandbox gets its own serving-policy file
and an engine whose ``default`` target writes that file, sharing the bot's store,
playbooks and notifier: the drill's incident, runs and timeline are the bot's,
marked DRILL, and its changes never reach the real serving policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from actions.drivers.policy_file import PolicyFileDriver
from bot.base.errors import InputError, NotFound
from bot.core.engine import Engine
from bot.core.runner import Runner
from drills.detector import Observer, PrometheusObserver, StandInDetector
from drills.report import render_report
from drills.runner import DrillOptions, DrillRunner
from drills.sandbox.policy import seed_policy_text
from drills.scenario import SCENARIOS_DIR, Scenario, load_scenarios
from drills.scoring import Trend, trend
from drills.store import Drill, DrillStore
from drills.targets import drill_targets
from drills.undo import recover_interrupted

# The sandbox's engines serve these routes (vLLM metrics carry only the model name).
SANDBOX_MODEL_ROUTES = {"chat-large": "chat", "chat-small": "chat-small", "chat-long": "chat-long"}
FAST = DrillOptions(speed=30.0, tick_s=0.2, max_warmup_s=60.0)  # sandbox + scripted responders


def sandbox_app(policy_path: Path, *, speed: float = 1.0, seed: int | None = None,
                quality_ttl_s: float = 120.0):
    """The sandbox for a drill at ``speed``; returns the FastAPI app."""
    from drills.sandbox.app import create_app  # the web stack only when a drill needs it
    from drills.sandbox.shape import load_config

    start, t0 = time.time(), time.monotonic()
    config = load_config(time_scale=0.0, quality_ttl_s=quality_ttl_s)
    return create_app(config, policy_path, clock=lambda: start + (time.monotonic() - t0) * speed,
                      rng=random.Random(seed))


@contextlib.asynccontextmanager
async def serve_sandbox(app, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port in this loop; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           lifespan="off", server_header=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                raise InputError(f"the sandbox did not start on {host}:{port}")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=10)
        sock.close()


def drill_engine(engine: Engine, policy_path: Path) -> Engine:
    """An engine on the bot's store and playbooks whose ``default`` target is ``policy_path``."""
    driver = PolicyFileDriver(policy_path, create_missing=True, actor="llm-incident drill")
    runner = Runner(engine.store, {"default": driver}, engine.runner.metrics,
                    settings=engine.runner.settings, drill_targets=drill_targets(engine.store))
    return Engine(engine.store, engine.registry, runner, notifier=engine.notifier,
                  clock=engine.clock)


def stand_in(url: str, client: httpx.AsyncClient, opts: DrillOptions) -> StandInDetector:
    t0 = time.monotonic()
    # Windows in drill seconds: ~10 scrapes per rate window, `for` of ~3 scrapes.
    step = opts.tick_s * opts.speed
    return StandInDetector(url, client, clock=lambda: (time.monotonic() - t0) * opts.speed,
                           window_s=10 * step, for_s=2 * step,
                           model_routes=SANDBOX_MODEL_ROUTES)


@dataclass
class DrillService:
    """The drill verbs' backend, over the bot's engine."""

    engine: Engine
    workdir: Path  # the drill sandbox's serving-policy file lives here
    prometheus_url: str | None = None
    scenarios_dir: Path = SCENARIOS_DIR
    next_run: Callable[[], datetime | None] = lambda: None
    # Drill seconds per real second for drills people answer on the sandbox (1: real
    # time). Faster is for rehearsing the mechanics and for tests.
    speed: float = 1.0

    def __post_init__(self) -> None:
        self.drills = DrillStore(self.engine.store)

    def scenarios(self) -> dict[str, Scenario]:
        return load_scenarios(self.scenarios_dir)

    def find(self, class_or_id: str) -> Scenario:
        found = self.scenarios()
        key = class_or_id.strip().lower()
        # An id first; a class names its own scenario (runaway-cost for runaway_cost)
        # before the others of the class (bad-release-tokens).
        by_id = [s for s in found.values() if key in (s.id, s.id.replace("-", "_"))]
        by_class = sorted((s for s in found.values()
                           if key in (s.class_, s.class_.replace("_", "-"))),
                          key=lambda s: s.id != s.class_.replace("_", "-"))
        for s in by_id + by_class:
            return s
        raise NotFound(f"no drill scenario or class {class_or_id!r}",
                       hint=f"scenarios: {', '.join(sorted(found))}")

    def history(self, klass: str | None = None, limit: int = 20) -> list[Drill]:
        if klass:
            klass = self.find(klass).class_
        return self.drills.history(klass, limit)

    def trends(self) -> dict[str, Trend]:
        out: dict[str, Trend] = {}
        for d in reversed(self.drills.history(None, limit=500)):
            if d.score is not None:
                out.setdefault(d.klass, Trend((), ""))
                out[d.klass] = Trend((*out[d.klass].scores, d.score), "")
        return {k: trend(t.scores) for k, t in out.items()}

    def report(self, drill_id: str) -> str:
        d = self.drills.get(drill_id.upper())
        scenario = self.scenarios().get(d.scenario_id)
        return render_report(self.drills, d.id, scenario)

    def _workdir(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    async def recover(self, say: Callable[[str], None] = print) -> list[Drill]:
        async with httpx.AsyncClient() as client:
            return await recover_interrupted(self.engine, self.drills, client, say)

    async def run(self, class_or_id: str, *, auto_respond: bool = False,
                  target: str | None = None, say: Callable[[str], None] = print) -> Drill:
        scenario = self.find(class_or_id)
        kind = target or scenario.target.kind
        if kind not in ("sandbox", "staging"):
            raise InputError(f"--target must be sandbox or staging, not {kind!r}")
        await self.recover(say)
        async with httpx.AsyncClient(timeout=30) as client:
            if kind == "staging":
                if not scenario.target.base_url:
                    raise InputError(f"scenario {scenario.id} has no staging base_url")
                opts = DrillOptions(auto_respond=auto_respond)
                observer: Observer = (PrometheusObserver(self.prometheus_url, client)
                                      if self.prometheus_url else
                                      stand_in(scenario.target.base_url, client, opts))
                runner = DrillRunner(self.engine, self.drills, target_url=scenario.target.base_url,
                                     client=client, observer=observer, options=opts, say=say)
                return await runner.run(scenario)
            # Each drill its own directory and sandbox policy file: two drills (two
            # processes, or two classes at once) never see each other's faults.
            workdir = Path(tempfile.mkdtemp(prefix="drill-", dir=self._workdir()))
            policy = workdir / "sandbox-policy.yaml"
            policy.write_text(seed_policy_text())
            opts = FAST if auto_respond else DrillOptions(
                speed=self.speed, tick_s=min(1.0, 30.0 / self.speed), max_warmup_s=60.0
                if self.speed > 1 else None)
            opts = DrillOptions(**{**opts.__dict__, "auto_respond": auto_respond})
            app = sandbox_app(policy, speed=opts.speed)
            async with serve_sandbox(app) as url:
                runner = DrillRunner(drill_engine(self.engine, policy), self.drills,
                                     target_url=url, client=client,
                                     observer=stand_in(url, client, opts), policy_path=policy,
                                     options=opts, say=say)
                return await runner.run(scenario)


def drill_service(engine: Engine, settings) -> DrillService:
    """The service for ``bot.adapters.settings.Settings`` (the CLI's and `serve`'s composition roots)."""
    from datetime import UTC
    from datetime import datetime as _dt

    from drills.schedule import drill_trigger, next_drill

    trigger = drill_trigger(settings.drill_cron, settings.drill_tz)
    workdir = settings.state_dir / "drills"
    return DrillService(engine, workdir, prometheus_url=settings.prometheus_url,
                        next_run=lambda: next_drill(trigger, _dt.now(UTC)),
                        speed=settings.drill_speed)


def next_class(service: DrillService) -> str:
    """The class the scheduled drill should rehearse: the one drilled longest ago."""
    from drills.schedule import pick_class

    classes = sorted({s.class_ for s in service.scenarios().values()})
    last: dict[str, datetime] = {}
    for d in service.drills.history(None, limit=500):
        last.setdefault(d.klass, d.started_at)
    return pick_class(classes, last)
