"""A 1,000-alert storm through the engine into Slack (the Web API stub, real HTTP on loopback).

Run: ``python bench/bench_slack.py [--alerts 1000] [--routes 3] [--min-interval 1.0]``.

The engine runs on a temporary SQLite file with the shipped playbooks, an
in-memory serving driver and fake metrics; the ``SlackNotifier`` posts through a
real ``AsyncWebClient`` to ``WebApiStub`` on 127.0.0.1. Alerts arrive as webhook
batches of ``--batch``, as fast as the engine takes them: every class on every
route, many alerts per incident (grouping), some repeats (dedup) and resolved
copies. After the storm each incident is acknowledged and then resolved at
once, two status updates in a row, which the notifier coalesces.

Prints, per run (paced at ``--min-interval`` and, for comparison, unpaced):
Slack calls per incident (top posts, updates, thread replies), the highest
number of calls to the channel inside any 1-second window, and the time from
an alert being received to its incident's suggestion reaching the stub (p50,
p99). With Slack's one message per second per channel, the suggestion latency
of a storm is set by the pacing, not by the bot.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fakes, Slack stub

from fakes import FakeMetrics, InMemoryDriver  # noqa: E402
from slack_sdk.web.async_client import AsyncWebClient  # noqa: E402
from slack_webapi_stub import StubCall, WebApiStub  # noqa: E402

from actions.policy import ServingPolicy  # noqa: E402
from bot.adapters.slack.notifier import SlackNotifier  # noqa: E402
from bot.adapters.slack.thread_store import ChatMessages  # noqa: E402
from bot.core.engine import Engine  # noqa: E402
from bot.core.runner import Runner, RunnerSettings  # noqa: E402
from bot.intake.alert import Alert  # noqa: E402
from bot.playbook.registry import PlaybookRegistry  # noqa: E402
from bot.store import Store  # noqa: E402

PLAYBOOKS = Path(__file__).resolve().parents[1] / "playbooks"
CHANNEL = "C0STORM"
ALERTNAMES = (  # one per incident class of the shipped playbooks
    "LLMCostBurnRateHigh", "LLMTimeToFirstTokenHigh", "LLMMalformedOutputRatioHigh",
    "LLMContextOverflowRejectionsHigh", "LLMSafetyFlagRateHigh", "LLMProviderErrorRateHigh",
    "LLMRoutingMismatch", "LLMQualityScoreLow",
)
ROUTES = ("chat", "chat-small", "summarize", "extract", "embed", "rag-answer")


def policy(routes: list[str]) -> ServingPolicy:
    spec = {r: {"max_output_tokens": 1024, "max_concurrency": 16, "group": "llm"}
            for r in routes}
    spec["standby"] = {"max_output_tokens": 512, "group": "llm"}
    return ServingPolicy.model_validate({"routes": spec})


def storm(n: int, routes: list[str]) -> list[Alert]:
    """``n`` alerts: every class on every route, many instances each, 5% repeats, 5% resolved."""
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    alerts: list[Alert] = []
    i = 0
    while len(alerts) < n:
        name = ALERTNAMES[i % len(ALERTNAMES)]
        route = routes[(i // len(ALERTNAMES)) % len(routes)]
        fp = f"{name}-{route}-{i}"
        status = "resolved" if i % 20 == 19 else "firing"
        a = Alert(source="alertmanager", fingerprint=fp, status=status,
                  labels={"alertname": name, "route": route, "severity": "critical",
                          "instance": f"gw-{i}"},
                  annotations={"summary": f"{name} on {route}"}, starts_at=t0,
                  ends_at=t0 + timedelta(minutes=4) if status == "resolved" else None)
        alerts.append(a)
        if i % 20 == 7:
            alerts.append(a)  # Alertmanager re-sends: dedup must swallow it
        i += 1
    return alerts[:n]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def max_per_window(times: list[float], window: float = 1.0) -> int:
    """Most calls inside any half-open window [t, t + window)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def one_run(args: argparse.Namespace, min_interval: float) -> None:
    routes = list(ROUTES[: args.routes])
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        registry = PlaybookRegistry()
        assert not registry.reload(PLAYBOOKS)
        runner = Runner(store, {"default": InMemoryDriver(policy(routes), name="default")},
                        FakeMetrics(), settings=RunnerSettings())
        # The stub serves from its own thread and loop, as Slack would not share ours.
        with WebApiStub().serving_in_thread() as stub:
            client = AsyncWebClient(token="xoxb-bench", base_url=stub.base_url)
            notifier = SlackNotifier(client, channel=CHANNEL, store=store,
                                     min_interval=min_interval, coalesce_window=2.0)
            engine = Engine(store, registry, runner, notifier=notifier)
            alerts = storm(args.alerts, routes)
            received: dict[str, float] = {}  # incident -> when the alert that opened it came
            started = time.monotonic()
            for k in range(0, len(alerts), args.batch):
                at = time.monotonic()
                for item in await engine.handle_alerts(alerts[k:k + args.batch]):
                    if item.created:
                        received.setdefault(item.incident_id, at)
                await asyncio.sleep(0)  # the next webhook request
            ingest_s = time.monotonic() - started
            for inc in list(received):
                if store.incident(inc).is_open:  # the storm's resolved alerts closed some
                    await engine.acknowledge(inc, "oncall")
                    await engine.resolve(inc, "oncall", "bench")
            await notifier.aclose(timeout=3600)
            report(args, min_interval, stub, store, received, ingest_s, notifier)
        store.close()


def report(args: argparse.Namespace, min_interval: float, stub: WebApiStub, store: Store,
           received: dict[str, float], ingest_s: float, notifier: SlackNotifier) -> None:
    messages = ChatMessages(store)
    top_ts = {inc: messages.get(inc, CHANNEL) for inc in received}
    inc_of_ts = {m.ts: inc for inc, m in top_ts.items() if m}
    per: dict[str, Counter[str]] = {inc: Counter() for inc in received}
    ok: list[StubCall] = [c for c in stub.calls if c.status == 200]
    for c in ok:
        p = c.params
        if c.method == "chat.update":
            per[inc_of_ts[p["ts"]]]["update"] += 1
        elif p.get("thread_ts"):
            per[inc_of_ts[p["thread_ts"]]]["reply"] += 1
        else:  # a top message: the suggestion's text starts with its incident id
            per.setdefault(p["text"].split()[0], Counter())["top"] += 1
    latency = [stub.messages[(CHANNEL, top_ts[i].ts)].at - received[i]  # type: ignore[union-attr]
               for i in received if top_ts[i]]
    n = len(received)
    total: Counter[str] = Counter()
    for c in per.values():
        total.update(c)
    print(f"\n== min_interval {min_interval:g}s: {args.alerts} alerts in batches of {args.batch}"
          f" -> {n} incidents (engine took {ingest_s:.2f}s)")
    print(f"   Slack calls per incident: top postMessage {total['top'] / n:.2f}, "
          f"chat.update {total['update'] / n:.2f}, thread replies {total['reply'] / n:.2f}; "
          f"{notifier.stats['coalesced']} updates coalesced, "
          f"{notifier.stats['failed']} failed")
    posts = [c.time for c in ok if c.method == "chat.postMessage"]
    gap = min((b - a for a, b in zip(posts, posts[1:], strict=False)), default=0.0)
    print(f"   highest rate to {CHANNEL} in any 1 s window: {max_per_window(posts)} "
          f"postMessage (closest two {gap:.3f}s apart at the stub), "
          f"{max_per_window([c.time for c in ok])} calls of any method")
    print(f"   alert received -> suggestion at the stub: p50 {percentile(latency, 50):.3f}s, "
          f"p99 {percentile(latency, 99):.3f}s, max {max(latency):.3f}s "
          f"(mean {statistics.fmean(latency):.3f}s, {len(latency)} suggestions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alerts", type=int, default=1000)
    ap.add_argument("--routes", type=int, default=3, choices=range(1, len(ROUTES) + 1))
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--min-interval", type=float, default=1.0)
    args = ap.parse_args()
    for interval in dict.fromkeys((args.min_interval, 0.0)):
        asyncio.run(one_run(args, interval))


if __name__ == "__main__":
    main()
