"""`llm-incident demo`: a real drill of the runaway-cost scenario, scored, in one go.

The practice gateway (``drills/sandbox``) starts in this process on a free loopback
port and reads a serving-policy file in a temp dir; traffic flows; a token blow-up
fault is injected; the cost alert is detected (by the drill's own stand-in
detector, or with ``--prometheus`` by a real Prometheus started for the demo);
the bot opens a DRILL incident and suggests the runaway-cost playbook; a scripted
responder acknowledges, plans the cap-output step, a second scripted responder
approves it, it is applied to the policy file the sandbox reads, spend recovers,
and everything is rolled back. The scored report is printed at the end.

Everything lives in a temp dir (SQLite store, policy file): the demo never touches
the real store or serving policy. No Slack tokens are needed: messages go to the
console.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import httpx

from bot.adapters.commands import Result
from bot.adapters.settings import Settings
from bot.core.notifier import ConsoleNotifier

DEMO_SCENARIO = "runaway-cost"
DEMO_SPEED = 30.0  # drill seconds per real second: the drill's minutes pass in seconds


class _Say:
    """The console notifier writes to a stream; route it through ``say`` line by line."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def write(self, text: str) -> int:
        if text.strip():
            self.say(text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.asynccontextmanager
async def _real_prometheus(workdir: Path, sandbox_url: str) -> AsyncIterator[str]:
    """A Prometheus scraping the sandbox every second with the fast rules copy."""
    from drills.prometheus_proc import start_prometheus_for

    async with start_prometheus_for(workdir, sandbox_url) as url:
        yield url


def prometheus_available() -> bool:
    from drills.prometheus_proc import prometheus_binary

    return prometheus_binary() is not None


async def run_demo(settings: Settings, *, say: Callable[[str], None] = print,
                   use_prometheus: bool = False) -> Result:
    from bot.adapters.wiring import build_engine
    from drills.detector import Observer, PrometheusObserver
    from drills.harness import FAST, drill_engine, sandbox_app, serve_sandbox, stand_in
    from drills.prometheus_proc import WARMUP_S
    from drills.report import render_report
    from drills.runner import DrillOptions, DrillRunner
    from drills.sandbox.policy import seed_policy_text
    from drills.scenario import SCENARIOS_DIR, load_scenarios
    from drills.store import DrillStore

    workdir = Path(tempfile.mkdtemp(prefix="llm-incident-demo-"))
    policy = workdir / "serving-policy.yaml"
    policy.write_text(seed_policy_text({"chat": {"max_concurrency": 64}}))
    original = policy.read_text()
    settings = replace(settings, db_path=workdir / "llm-incident.db", policy_path=policy,
                       targets_file=None, prometheus_url=None)
    base = build_engine(settings)
    base.notifier = ConsoleNotifier(_Say(say))  # type: ignore[arg-type]
    engine = drill_engine(base, policy)
    scenario = load_scenarios(SCENARIOS_DIR)[DEMO_SCENARIO]
    real_prom = use_prometheus and prometheus_available()
    # Prometheus computes rates per real second: with it the drill runs in real time.
    opts = (DrillOptions(auto_respond=True, tick_s=1.0, min_warmup_s=WARMUP_S) if real_prom else
            DrillOptions(**{**FAST.__dict__, "auto_respond": True, "speed": DEMO_SPEED}))
    say(f"Demo workspace: {workdir} (SQLite store, serving-policy file)")
    say(f"Drill: {scenario.title} (scenario {scenario.id}), {opts.speed:g}x real time; "
        "responders are scripted (--auto-respond)")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            app = sandbox_app(policy, speed=opts.speed, seed=7)
            async with serve_sandbox(app) as url:
                say(f"Sandbox gateway on {url}")
                async with contextlib.AsyncExitStack() as stack:
                    if use_prometheus and not real_prom:
                        say("prometheus is not installed: the drill's own detector stands in")
                    if real_prom:
                        prom = await stack.enter_async_context(_real_prometheus(workdir, url))
                        observer: Observer = PrometheusObserver(prom, client)
                        say(f"Prometheus on {prom} scrapes the sandbox (fast rules copy)")
                    else:
                        observer = stand_in(url, client, opts)
                    runner = DrillRunner(engine, DrillStore(engine.store), target_url=url,
                                         client=client, observer=observer, policy_path=policy,
                                         options=opts, say=say)
                    drill = await runner.run(scenario)
        report = render_report(DrillStore(engine.store), drill.id, scenario)
    finally:
        base.store.close()
    restored = policy.read_text() == original
    say(f"\nServing policy after the drill: {'restored' if restored else 'NOT restored'}\n")
    ok = drill.status == "completed" and restored
    return Result(report, {"drill": drill.id, "status": drill.status, "score": drill.score,
                           "policy_restored": restored}, exit_code=0 if ok else 1,
                  markdown=report)


def demo_flags(argv: list[str]) -> bool:
    """`demo [--prometheus]`: True when a real Prometheus is wanted."""
    from bot.base.errors import InputError

    unknown = [a for a in argv if a != "--prometheus"]
    if unknown:
        raise InputError(f"demo: unknown argument {unknown[0]!r}", hint="demo [--prometheus]")
    return "--prometheus" in argv
