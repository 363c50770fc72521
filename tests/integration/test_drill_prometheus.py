"""One drill (runaway cost) with a real Prometheus scraping the sandbox.

Prometheus evaluates the fast copy of the rules pack (``render_rules``: 20s
windows, ``for: 2s``, 1s scrapes); the runner polls its ``/api/v1/alerts`` (no
Alertmanager configured) and hands the firing alert to the bot. The drill runs in
real time (Prometheus computes rates per real second).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fakes import RecordingNotifier
from integration.services import PROMETHEUS_BIN, require_binary

from actions.drivers.policy_file import PolicyFileDriver
from bot.adapters.settings import SHIPPED_PLAYBOOKS
from bot.core.engine import Engine
from bot.core.runner import Runner
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store
from drills.detector import PrometheusObserver
from drills.harness import sandbox_app, serve_sandbox
from drills.prometheus_proc import WARMUP_S, start_prometheus_for
from drills.runner import DrillOptions, DrillRunner
from drills.scenario import SCENARIOS_DIR, load_scenarios
from drills.store import DrillStore

pytestmark = pytest.mark.integration
POLICY = "version: 1\nroutes:\n  chat:\n    max_concurrency: 64\n"


def make_engine(policy: Path) -> tuple[Engine, RecordingNotifier]:
    store, registry = Store(None), PlaybookRegistry()
    assert registry.reload(SHIPPED_PLAYBOOKS) == []
    runner = Runner(store, {"default": PolicyFileDriver(policy, create_missing=True)}, None)
    notifier = RecordingNotifier()
    return Engine(store, registry, runner, notifier=notifier), notifier


def test_runaway_cost_drill_fires_in_prometheus_and_reaches_the_bot(tmp_path: Path):
    require_binary(PROMETHEUS_BIN)
    scenario = load_scenarios(SCENARIOS_DIR)["runaway-cost"]
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(POLICY)
    engine, notifier = make_engine(policy)
    lines: list[str] = []

    async def go():
        async with httpx.AsyncClient(timeout=30) as client, \
                serve_sandbox(sandbox_app(policy, seed=5)) as url, \
                start_prometheus_for(tmp_path, url) as prom:
            observer = PrometheusObserver(prom, client)
            runner = DrillRunner(engine, DrillStore(engine.store), target_url=url,
                                 client=client, observer=observer, policy_path=policy,
                                 options=DrillOptions(auto_respond=True, tick_s=1.0,
                                                      min_warmup_s=WARMUP_S),
                                 say=lines.append)
            d = await runner.run(scenario)
            fired = ('max_over_time(ALERTS{alertname="LLMCostBurnRateHigh", '
                     'alertstate="firing"}[5m])')
            alerts = (await client.get(f"{prom}/api/v1/query",
                                       params={"query": fired})).json()
            faults = (await client.get(f"{url}/faults")).json()["faults"]
            return d, observer.active_at, alerts, faults


    d, active_at, alerts, faults = asyncio.run(go())
    assert d.status == "completed", f"{d.reason}\n" + "\n".join(lines)
    assert d.detector == "Prometheus"
    assert active_at is not None  # Prometheus itself saw the condition
    assert alerts["data"]["result"], "the alert left no ALERTS series in Prometheus"
    inc = engine.store.incident(d.incident_id)
    assert inc.is_drill
    assert engine.store.alerts_for(inc.id)[0].alertname == "LLMCostBurnRateHigh"
    assert d.suggested_playbook == "runaway-cost" and d.recovered_at is not None
    assert faults == [] and policy.read_text() == POLICY
    assert any(m.is_drill for m in notifier.messages)
