"""The web console with a big store: how long an incident's page takes to render.

Run: ``python bench/bench_console.py [--incidents 10000] [--requests 200] [--db sqlite|postgres]``.

Fills a store with ``--incidents`` incidents (one alert each, through the engine's
own intake, a few with runs), then asks the console over HTTP (its ASGI app in this
process, so the figure is the console's work: store reads, rendering, no network)
for one incident's page, the incident list, and the list's live fragment,
``--requests`` times each, and prints p50 / p99 / max. Goal: an incident's page
under 200 ms with 10,000 incidents.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from actions.drivers.policy_file import PolicyFileDriver  # noqa: E402
from bot.adapters.console import attach_console  # noqa: E402
from bot.adapters.core_loop import Inline  # noqa: E402
from bot.adapters.settings import SHIPPED_PLAYBOOKS  # noqa: E402
from bot.core.engine import Engine  # noqa: E402
from bot.core.runner import Runner  # noqa: E402
from bot.intake.alert import Alert  # noqa: E402
from bot.playbook.registry import PlaybookRegistry  # noqa: E402
from bot.store import Store  # noqa: E402


def fill(engine: Engine, n: int) -> None:
    batch = []
    for i in range(n):
        batch.append(Alert(source="generic", fingerprint=f"fp-{i}", status="firing",
                           labels={"alertname": "LLMCostBurnRateHigh", "route": f"r{i}",
                                   "severity": "critical"},
                           annotations={"summary": f"spend over budget on r{i}"},
                           starts_at=datetime.now(UTC)))
        if len(batch) == 500:
            engine.ingest(batch)
            batch = []
    if batch:
        engine.ingest(batch)


async def timed(client: httpx.AsyncClient, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        resp = await client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        assert resp.status_code == 200, (path, resp.status_code)
    return out


def show(what: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"  {what:<34} p50 {statistics.median(ms):6.1f} ms   p99 {p99:6.1f} ms   "
          f"max {ms[-1]:6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--incidents", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        server = None
        if args.db == "postgres":
            from postgres_server import PostgresServer

            server = PostgresServer(durable=True)
            where = server.new_database()
        else:
            where = str(Path(tmp) / "bot.db")
        try:
            store = Store(where)
            registry = PlaybookRegistry()
            registry.reload(SHIPPED_PLAYBOOKS)
            policy = Path(tmp) / "policy.yaml"
            engine = Engine(store, registry, Runner(store, {"default": PolicyFileDriver(
                policy, create_missing=True)}, None))
            t0 = time.perf_counter()
            fill(engine, args.incidents)
            print(f"{args.incidents:,} incidents in the store ({args.db}), filled in "
                  f"{time.perf_counter() - t0:.1f} s")
            app = FastAPI()
            attach_console(app, engine, core=Inline())
            middle = f"INC-{args.incidents // 2}"

            async def run() -> None:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                             base_url="http://console") as client:
                    await timed(client, f"/ui/incidents/{middle}", 5)  # warm up
                    show(f"incident page ({middle})",
                         await timed(client, f"/ui/incidents/{middle}", args.requests))
                    show("its live timeline fragment",
                         await timed(client, f"/ui/incidents/{middle}?part=timeline",
                                     args.requests))
                    show("incident list (newest 50)",
                         await timed(client, "/ui/incidents", args.requests))
                    show("open incidents (filter)",
                         await timed(client, "/ui/incidents?status=open", args.requests // 4))

            asyncio.run(run())
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
