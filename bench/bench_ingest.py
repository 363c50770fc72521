"""Ingest rate beside a real Alertmanager, in one harness and one run, on each store.

Run: ``python bench/bench_ingest.py [--alerts N] [--batch 10] [--senders 4]
[--db sqlite,postgres]``. Postgres is a durable local server (fsync on) that the
bench starts from Debian's package, like the tests do.

The same client (httpx, ``--senders`` connections at once) posts the same alerts in
batches of ``--batch``: to Alertmanager's ``POST /api/v2/alerts`` (what Prometheus
does) and to the bot's ``POST /v1/alerts/alertmanager``, as fast as each answers.
Alerts cycle over 1,000 routes, so most are repeats of a known alert, as in a
real storm. Prints alerts/s for both, the ratio, and the bot's stored alert rows
(must equal the distinct alerts sent: committed before each 2xx, no duplicates).
Both servers run as their own processes (`llm-incident serve` with the console
notifier off). Needs the `prometheus-alertmanager` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from bench_serve import free_port  # noqa: E402
from postgres_server import PostgresServer  # noqa: E402

from bot.store import Store  # noqa: E402

ROUTES = 1000
# A minute ago: Alertmanager refuses an alert that starts after the end it assumes.
STARTS = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))


def labels(i: int) -> dict[str, str]:
    route = f"route-{i % ROUTES:04d}"
    return {"alertname": "LLMCostBurnRateHigh", "incident_class": "runaway_cost",
            "route": route, "severity": "critical"}


def am_alert(i: int) -> dict[str, Any]:
    return {"labels": labels(i), "annotations": {"summary": "spend is 6x budget"},
            "startsAt": STARTS, "generatorURL": "http://prometheus/graph"}


def webhook_alert(i: int) -> dict[str, Any]:
    return {"status": "firing", "labels": labels(i),
            "annotations": {"summary": "spend is 6x budget"},
            "startsAt": STARTS, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": f"{i % ROUTES:016x}"}


def webhook_body(alerts: list[dict[str, Any]]) -> bytes:
    return json.dumps({"version": "4", "groupKey": "{}:{}", "status": "firing",
                       "receiver": "llm-incident", "groupLabels": {}, "commonLabels": {},
                       "commonAnnotations": {}, "externalURL": "http://alertmanager",
                       "truncatedAlerts": 0, "alerts": alerts}).encode()


async def blast(url: str, path: str, bodies: list[bytes], senders: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"content-type": "application/json"}

    async def sender(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            res = await client.post(path, content=queue.get_nowait(), headers=headers)
            res.raise_for_status()

    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        # Warm up: connections open, code paths imported.
        await client.post(path, content=bodies[0], headers=headers)
        started = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(senders)))
        return time.perf_counter() - started


def wait(url: str, proc: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready")


def start_alertmanager(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise SystemExit("needs prometheus-alertmanager (Debian package)")
    config = work / "am.yml"
    config.write_text(yaml.safe_dump({
        "route": {"receiver": "null", "group_by": ["alertname"], "group_wait": "1h"},
        "receivers": [{"name": "null"}]}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.path={work / 'am'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
         f"--web.external-url={url}/", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(url, proc, "/-/ready")
    return proc, url


def start_bot(work: Path, db: str) -> tuple[subprocess.Popen[bytes], str]:
    (work / "policy.yaml").write_text("version: 1\nroutes: {}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_INCIDENT_", "SLACK_"))}
    env |= {"LLM_INCIDENT_DB": db, "LLM_INCIDENT_POLICY": str(work / "policy.yaml"),
            "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:1"}
    argv = [sys.executable, "-m", "bot.adapters.cli", "serve", "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait(url, proc, "/readyz")
    return proc, url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alerts", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--db", default="sqlite,postgres", help="stores to run, comma-separated")
    args = ap.parse_args()
    n, batch = args.alerts, args.batch
    print(f"{n} alerts in batches of {batch}, {args.senders} senders, over {ROUTES} routes")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        am, am_url = start_alertmanager(work)
        try:
            am_bodies = [json.dumps([am_alert(i) for i in range(s, min(n, s + batch))]).encode()
                         for s in range(0, n, batch)]
            am_s = asyncio.run(blast(am_url, "/api/v2/alerts", am_bodies, args.senders))
        finally:
            stop(am)
        am_rate = n / am_s
        print(f"alertmanager  POST /api/v2/alerts          {am_rate:9.0f} alerts/s ({am_s:.2f} s)")
        for kind in args.db.split(","):
            server = PostgresServer(durable=True) if kind == "postgres" else None
            try:
                db = server.new_database() if server else str(work / "bot.db")
                run_bot(kind, db, work / kind, n, batch, args.senders, am_rate)
            finally:
                if server:
                    server.stop()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        print(f"pid {proc.pid} did not stop within 30 s of SIGTERM; killed")


def run_bot(kind: str, db: str, work: Path, n: int, batch: int, senders: int,
            am_rate: float) -> None:
    work.mkdir()
    bot, bot_url = start_bot(work, db)
    try:
        bot_bodies = [webhook_body([webhook_alert(i) for i in range(s, min(n, s + batch))])
                      for s in range(0, n, batch)]
        spy = None
        if profile := os.environ.get("BENCH_PROFILE"):  # a py-spy profile of the bot
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(bot.pid), "-o", profile,
                                    "-f", "raw", "-r", "250", "--threads", "-d", "20"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        bot_s = asyncio.run(blast(bot_url, "/v1/alerts/alertmanager", bot_bodies, senders))
        if spy is not None:
            spy.wait()
    finally:
        stop(bot)
    store = Store(db)
    stored = store.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
    incidents = store.count_incidents()
    store.close()
    bot_rate = n / bot_s
    print(f"llm-incident on {kind:8s} POST /v1/alerts/alertmanager {bot_rate:8.0f} alerts/s "
          f"({bot_s:.2f} s), ratio bot/alertmanager: {bot_rate / am_rate:.2f}x; "
          f"stored {stored} alert rows for {min(n, ROUTES)} distinct alerts "
          f"({stored - min(n, ROUTES)} duplicates), {incidents} incidents")


if __name__ == "__main__":
    main()
