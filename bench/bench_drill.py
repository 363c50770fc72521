"""From fault injection to mitigation applied, on the loop with a real Prometheus.

    python bench/bench_drill.py [--runs 2]

Each run drills runaway cost on the in-process sandbox (real time: Prometheus
computes rates per real second) with Prometheus scraping it every second and
evaluating the fast rules copy (10s rate windows, ``for: 2s``); the runner polls
``/api/v1/alerts`` once a second and the scripted responder acts at once. The
split printed per run:

- detection = injection -> alert received by the bot, of which
  - until Prometheus saw the condition (``activeAt``: scrapes filling the window
    past the threshold, rule evaluation),
  - the rule's ``for`` plus the runner's poll (``activeAt`` -> received);
- bot = alert received -> mitigation applied (ingest, suggest, ack, plan, approve,
  apply through the policy-file driver).

Needs the ``prometheus`` binary on PATH. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from actions.drivers.policy_file import PolicyFileDriver  # noqa: E402
from bot.adapters.settings import SHIPPED_PLAYBOOKS  # noqa: E402
from bot.core.engine import Engine  # noqa: E402
from bot.core.runner import Runner  # noqa: E402
from bot.playbook.registry import PlaybookRegistry  # noqa: E402
from bot.store import Store  # noqa: E402
from drills.detector import PrometheusObserver  # noqa: E402
from drills.harness import sandbox_app, serve_sandbox  # noqa: E402
from drills.prometheus_proc import WARMUP_S, prometheus_binary, start_prometheus_for  # noqa: E402
from drills.runner import DrillOptions, DrillRunner  # noqa: E402
from drills.scenario import SCENARIOS_DIR, load_scenarios  # noqa: E402
from drills.store import DrillStore  # noqa: E402


async def one_run(workdir: Path, seed: int) -> dict[str, float] | str:
    policy = workdir / "serving-policy.yaml"
    policy.write_text("version: 1\nroutes:\n  chat:\n    max_concurrency: 64\n")
    store, registry = Store(None), PlaybookRegistry()
    registry.reload(SHIPPED_PLAYBOOKS)
    engine = Engine(store, registry,
                    Runner(store, {"default": PolicyFileDriver(policy, create_missing=True)}, None))
    scenario = load_scenarios(SCENARIOS_DIR)["runaway-cost"]
    opts = DrillOptions(auto_respond=True, tick_s=1.0, min_warmup_s=WARMUP_S)
    async with httpx.AsyncClient(timeout=30) as client, \
            serve_sandbox(sandbox_app(policy, seed=seed)) as url, \
            start_prometheus_for(workdir, url) as prom:
        observer = PrometheusObserver(prom, client)
        drill = await DrillRunner(engine, DrillStore(store), target_url=url, client=client,
                                  observer=observer, policy_path=policy, options=opts,
                                  say=lambda _line: None).run(scenario)
    if drill.status != "completed" or not (drill.injected_at and drill.detected_at
                                           and drill.mitigated_at and observer.active_at):
        return f"drill {drill.status}: {drill.reason}"
    return {
        "detection": (drill.detected_at - drill.injected_at).total_seconds(),
        "condition": (observer.active_at - drill.injected_at).total_seconds(),
        "for+poll": (drill.detected_at - observer.active_at).total_seconds(),
        "bot": (drill.mitigated_at - drill.detected_at).total_seconds(),
    }


async def main(runs: int) -> int:
    if prometheus_binary() is None:
        print("prometheus is not on PATH (Debian package prometheus); nothing to measure")
        return 1
    print(f"{'run':>3} {'detection s':>12} {'condition s':>12} {'for+poll s':>11} {'bot ms':>8}")
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="bench-drill-") as tmp:
            r = await one_run(Path(tmp), seed=100 + i)
        if isinstance(r, str):
            print(f"{i + 1:>3} {r}")
            continue
        print(f"{i + 1:>3} {r['detection']:>12.1f} {r['condition']:>12.1f} "
              f"{r['for+poll']:>11.1f} {r['bot'] * 1000:>8.1f}")
    print("condition: scrapes (1s) filling the 10s window past the threshold + rule evaluation;"
          " for+poll: the rule's 2s `for` + the runner's 1s poll of /api/v1/alerts")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=2)
    raise SystemExit(asyncio.run(main(p.parse_args().runs)))
