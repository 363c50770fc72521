"""The alert intake service over loopback: latency, storm throughput, memory, start time.

Run: ``python bench/bench_serve.py [--latency-alerts N] [--storm-alerts N]
[--http h11|httptools] [--loop asyncio|uvloop]`` (the last two compare uvicorn's
HTTP parsers and event loops; the service runs h11 on asyncio). Prints:

* alert-to-suggestion latency, p50/p99: from the moment the client sends an
  Alertmanager webhook to the moment the suggestion ``Message`` is handed to the
  notifier, at a steady 50 alerts/s, each alert opening its own incident;
* a storm: 10,000 alerts over 1,000 fingerprints in Alertmanager-sized batches
  (100 alerts per webhook, 4 senders at once): alerts/s, incidents created, and
  duplicate alert rows (must be 0: each fingerprint is stored once);
* resident memory (VmRSS) of the server process, idle and after the storm;
* start-to-ready: ``llm-incident serve`` spawned until ``/readyz`` answers 200.

``--replicas 2`` (on a durable local Postgres, started from Debian's package like
the tests do) runs two servers on one database and sends the latency phase's
alerts to them in turn, as a load balancer would: the suggestion comes from the
leader whichever replica took the alert. Only the latency phase runs then.

The server runs in its own process (this script with ``--server``), so the
client's work does not share its interpreter. Its notifier appends one line per
message (wall-clock time, kind, incident) to a file; wall-clock time is
comparable across the two processes on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 50.0  # alerts per second in the latency phase
BATCH = 100  # alerts per webhook in the storm, a typical Alertmanager group
SENDERS = 4


# --- server side ---------------------------------------------------------------------------


def run_server(port: int, db: str, notes: Path, http: str, loop: str) -> None:
    from bot.adapters.service import Service
    from bot.adapters.settings import Settings
    from bot.core.messages import Message

    class FileNotifier:
        def __init__(self, path: Path) -> None:
            self.out = path.open("a", buffering=1)

        async def publish(self, msg: Message) -> None:
            self.out.write(f"{time.time():.6f} {msg.kind} {msg.incident_id}\n")

    settings = Settings(policy_path=notes.parent / "policy.yaml").with_db(db)
    service = Service(settings, "127.0.0.1", port, notifier=FileNotifier(notes), http=http,
                      loop=loop)
    if loop == "uvloop":
        import uvloop

        uvloop.run(service.run())
    else:
        asyncio.run(service.run())


# --- client side ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> float:
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise SystemExit(f"server at {url} not ready after {timeout:g}s")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS in /proc status")


def am_body(alerts: list[dict[str, Any]]) -> bytes:
    return json.dumps({
        "version": "4", "groupKey": "{}:{alertname=\"LLMCostBurnRateHigh\"}", "status": "firing",
        "receiver": "llm-incident", "groupLabels": {}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://alertmanager", "truncatedAlerts": 0,
        "alerts": alerts,
    }).encode()


def alert(i: int, *, route: str, starts: str = "2026-11-29T10:00:00Z") -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "LLMCostBurnRateHigh", "incident_class": "runaway_cost",
                   "route": route, "shard": str(i), "severity": "critical"},
        "annotations": {"summary": f"Spend on {route} is 6x budget"},
        "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
    }


async def latency_phase(urls: list[str], n: int, notes: Path) -> list[float]:
    sent: dict[str, float] = {}  # incident id -> send time
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> None:
            body = am_body([alert(i, route=f"lat-{i}")])
            t0 = time.time()
            res = await client.post(f"{urls[i % len(urls)]}/v1/alerts/alertmanager",
                                    content=body, headers=headers)
            res.raise_for_status()
            sent[res.json()["alerts"][0]["incident_id"]] = t0

        start = time.perf_counter()
        tasks = []
        for i in range(n):  # paced by the clock, not by the answers
            await asyncio.sleep(max(0.0, start + i / RATE - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    deadline = time.time() + 30
    published: dict[str, float] = {}
    while time.time() < deadline:
        for line in notes.read_text().splitlines():
            at, kind, incident = line.split(" ", 2)
            if kind == "suggestion":
                published.setdefault(incident, float(at))
        if set(sent) <= set(published):
            break
        await asyncio.sleep(0.05)
    missing = set(sent) - set(published)
    if missing:
        raise SystemExit(f"{len(missing)} incidents never got a suggestion")
    return [published[inc] - t0 for inc, t0 in sent.items()]


async def storm_phase(url: str, total: int, fingerprints: int) -> tuple[float, int]:
    # Alert i repeats fingerprint i % fingerprints; 50 routes -> grouping into incidents.
    alerts = [alert(i % fingerprints, route=f"storm-{i % fingerprints % 50}")
              for i in range(total)]
    bodies = [am_body(alerts[i:i + BATCH]) for i in range(0, total, BATCH)]
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"content-type": "application/json"}
    accepted = 0

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            res = await client.post("/v1/alerts/alertmanager", content=body, headers=headers)
            res.raise_for_status()
            accepted += len(res.json()["alerts"])

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(SENDERS)))
        elapsed = time.perf_counter() - started
    return elapsed, accepted


def start_to_ready(workdir: Path, runs: int = 3) -> list[float]:
    exe = shutil.which("llm-incident")
    argv = [exe] if exe else [sys.executable, "-m", "bot.adapters.cli"]
    times = []
    for i in range(runs):
        port = free_port()
        env = {**os.environ, "LLM_INCIDENT_DB": str(workdir / f"ready-{i}.db"),
               "LLM_INCIDENT_POLICY": str(workdir / "policy.yaml")}
        started = time.perf_counter()
        proc = subprocess.Popen([*argv, "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc)
            times.append(time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return times


def replicas_latency(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres_server import PostgresServer

    server = PostgresServer(durable=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        db = server.new_database()
        with tempfile.TemporaryDirectory() as tmp:
            notes = Path(tmp) / "messages.log"
            notes.touch()
            urls = []
            for _ in range(args.replicas):
                port = free_port()
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--server", str(port), db, str(notes)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
                urls.append(f"http://127.0.0.1:{port}")
                wait_ready(urls[-1], procs[-1])
            time.sleep(1.0)
            lat = sorted(asyncio.run(latency_phase(urls, args.latency_alerts, notes)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        server.stop()
    print(f"{args.replicas} replicas on one Postgres, alerts sent to them in turn at "
          f"{RATE:g} alerts/s ({len(lat)} alerts, webhook sent -> suggestion handed to the "
          f"notifier by the leader):")
    print(f"  p50 {lat[len(lat) // 2] * 1000:.1f} ms   "
          f"p99 {lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000:.1f} ms   "
          f"max {lat[-1] * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-alerts", type=int, default=500)
    parser.add_argument("--storm-alerts", type=int, default=10_000)
    parser.add_argument("--fingerprints", type=int, default=1_000)
    parser.add_argument("--http", default="h11", choices=("h11", "httptools"),
                        help="uvicorn's HTTP parser (the service uses h11)")
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    parser.add_argument("--replicas", type=int, default=1,
                        help="servers on one Postgres database (latency phase only)")
    parser.add_argument("--server", nargs=3, metavar=("PORT", "DB", "NOTES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        run_server(int(args.server[0]), args.server[1], Path(args.server[2]), args.http,
                   args.loop)
        return
    if args.replicas > 1:
        replicas_latency(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port, db, notes = free_port(), work / "bench.db", work / "messages.log"
        notes.touch()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, __file__, "--server", str(port), str(db),
                                 str(notes), "--http", args.http, "--loop", args.loop],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        try:
            wait_ready(url, proc)
            time.sleep(0.5)  # let start-up garbage settle before the idle reading
            idle = rss_kib(proc.pid)
            lat = sorted(asyncio.run(latency_phase([url], args.latency_alerts, notes)))
            elapsed, accepted = asyncio.run(
                storm_phase(url, args.storm_alerts, args.fingerprints))
            after = rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        conn = sqlite3.connect(db)
        storm_rows, distinct, incidents = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT fingerprint || starts_at), "
            "(SELECT COUNT(*) FROM incidents WHERE title LIKE '%storm-%') "
            "FROM alerts WHERE labels LIKE '%storm-%'").fetchone()
        conn.close()
        ready = start_to_ready(work)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000

    print(f"server: uvicorn http={args.http} loop={args.loop}")
    print(f"alert-to-suggestion latency at {RATE:g} alerts/s over loopback "
          f"({len(lat)} alerts, webhook sent -> Message handed to the notifier):")
    print(f"  p50 {pct(0.50):.1f} ms   p99 {pct(0.99):.1f} ms   max {lat[-1] * 1000:.1f} ms")
    print(f"storm: {accepted} alerts over {args.fingerprints} fingerprints in batches of "
          f"{BATCH}, {SENDERS} senders:")
    print(f"  {accepted / elapsed:,.0f} alerts/s ({elapsed:.2f} s), "
          f"{incidents} incidents created, alert rows {storm_rows}, "
          f"duplicates {storm_rows - min(args.fingerprints, accepted) + (storm_rows - distinct)}")
    print(f"server VmRSS: idle {idle / 1024:.1f} MiB, after the storm {after / 1024:.1f} MiB")
    print(f"start-to-ready (`llm-incident serve` -> /readyz 200): "
          f"median {statistics.median(ready):.2f} s over {len(ready)} runs")


if __name__ == "__main__":
    main()
