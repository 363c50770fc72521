"""The trust-boundary costs: refusing a huge playbook, scraping /metrics over a big
timeline, and a flapping alert through the webhook.

Run: ``python bench/bench_trust.py``. Prints:

- the time and memory to refuse a 60 MB playbook of small nodes in ``lint`` (before
  the size limit: over 300 s and 3.7 GB), and a 30,000-node document under the size limit (refused at 20,000 nodes);
- one ``/metrics`` render over 1,000,000 timeline events (the guard-refusal and
  action counts are indexed queries; before the index each scrape scanned them all);
- 100 firing/resolved cycles of one alert through the Alertmanager webhook:
  incidents opened, messages published, wall time.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fakes, Slack stub

import httpx  # noqa: E402
from fakes import RecordingNotifier  # noqa: E402

from bot.adapters.service_metrics import ServiceMetrics  # noqa: E402
from bot.adapters.settings import Settings  # noqa: E402
from bot.adapters.web import create_app  # noqa: E402
from bot.adapters.wiring import build_engine  # noqa: E402
from bot.playbook.loader import lint  # noqa: E402
from bot.store import (
    Store,  # noqa: E402
    to_text,  # noqa: E402
)

SHIPPED = Path(__file__).resolve().parents[1] / "playbooks"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def huge_playbook(tmp: Path) -> None:
    d = tmp / "pb"
    shutil.copytree(SHIPPED, d, ignore=shutil.ignore_patterns("tests"))
    line = b"- {a: 1, b: 2}\n"
    with (d / "huge.yaml").open("wb") as fh:
        fh.write(line * (60 * 1024 * 1024 // len(line)))
    before = rss_mb()
    t0 = time.perf_counter()
    problems = lint([d])
    took = time.perf_counter() - t0
    print(f"60 MB playbook: refused in {took * 1000:.1f} ms, max RSS +{rss_mb() - before:.1f} MB "
          f"({problems[0].message})")
    many = tmp / "many.yaml"
    many.write_text("[" + ",".join(["1"] * 30_000) + "]")
    t0 = time.perf_counter()
    problems = lint([many])
    print(f"{many.stat().st_size / 1024:.0f} KB document of 30,000 nodes: refused in "
          f"{(time.perf_counter() - t0) * 1000:.1f} ms ({problems[0].message})")


def metrics_scrape(tmp: Path, n: int = 1_000_000) -> None:
    store = Store(tmp / "metrics.db")
    now = to_text(store.now())
    rows = ((None, None, now, "guard_refused" if i % 1000 == 0 else "alert", "am", "x",
             '{"guard": "cooldown"}' if i % 1000 == 0 else "{}") for i in range(n))
    with store.transaction():
        store.db.conn.executemany(
            "INSERT INTO events (incident_id, run_id, at, kind, actor, text, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    metrics = ServiceMetrics(store)
    metrics.render()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        metrics.render()
        times.append(time.perf_counter() - t0)
    plan = store.db.execute(
        "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events WHERE kind = 'guard_refused'").fetchall()
    print(f"/metrics over {n:,} events: median {sorted(times)[2] * 1000:.1f} ms per scrape "
          f"(refusals query: {plan[0][-1]})")


def flaps(tmp: Path, cycles: int = 100) -> None:
    (tmp / "policy.yaml").write_text("version: 1\nroutes:\n  chat: {}\n  chat-small: {}\n")
    cfg = Settings(db_path=tmp / "flaps.db", policy_path=tmp / "policy.yaml")
    engine = build_engine(cfg)
    notifier = RecordingNotifier()
    engine.notifier = notifier
    app = create_app(engine, cfg, metrics=ServiceMetrics(engine.store))
    labels = {"alertname": "LLMCostBurnRateHigh", "route": "chat", "severity": "critical"}

    def body(status: str, i: int) -> bytes:
        starts = f"2026-11-29T10:{i // 60:02d}:{i % 60:02d}Z"
        return json.dumps({"version": "4", "groupKey": "k", "status": status, "receiver": "r",
                           "alerts": [{"status": status, "labels": labels, "annotations": {},
                                       "startsAt": starts, "fingerprint": "f1"}]}).encode()

    async def go() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as c:
            t0 = time.perf_counter()
            for i in range(cycles):
                for status in ("firing", "resolved"):
                    res = await c.post("/v1/alerts/alertmanager", content=body(status, i),
                                       headers={"content-type": "application/json"})
                    assert res.status_code == 200
            return time.perf_counter() - t0

    took = asyncio.run(go())
    kinds: dict[str, int] = {}
    for m in notifier.messages:
        kinds[m.kind] = kinds.get(m.kind, 0) + 1
    print(f"{cycles} flaps: {len(engine.store.incidents(limit=10_000))} incident(s), "
          f"{len(notifier.messages)} messages {kinds}, {took:.2f} s")


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        huge_playbook(tmp)
        metrics_scrape(tmp)
        flaps(tmp)


if __name__ == "__main__":
    main()
