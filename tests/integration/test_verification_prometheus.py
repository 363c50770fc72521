"""Verification against a real Prometheus: no alert value and no missing series passes it.

A loopback target exports LiteLLM's spend counter for route ``chat``; Prometheus
scrapes it every second, and the test starts once the playbook's own spend query
reads at least 4,058 USD/hour (what an outside test saw verify). The counter grows
faster than that because ``rate(...[5m])`` of a series younger than five minutes
reads low (Prometheus does not extrapolate far past a series' first sample). The shipped runaway-cost playbook runs through the engine with
``PrometheusSource``. The engine's clock is a test clock, so a deadline is reached
by moving it, while every query is answered by Prometheus at its own now.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from integration.services import PROMETHEUS_BIN, poll, require_binary, start_prometheus
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import MetricsHandler

from actions.drivers.prometheus import PrometheusSource
from bot.base.errors import TemplateError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from incident_env import Env, alert, provider_alert  # noqa: E402

pytestmark = pytest.mark.integration
USD_PER_HOUR = 60_000.0
SEEN_USD_PER_HOUR = 4058.0
SPEND = 'sum(rate(litellm_spend_metric_total{{requested_model="{route}"}}[5m])) * 3600'


def run(coro):
    return asyncio.run(coro)


class _Spend:
    """A counter that grows at a fixed rate per real second, read at scrape time."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def collect(self):
        family = CounterMetricFamily("litellm_spend_metric", "Spend in USD",
                                     labels=["requested_model", "model"])
        family.add_metric(["chat", "chat-large"],
                          USD_PER_HOUR / 3600 * (time.monotonic() - self.t0))
        yield family


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_binary(PROMETHEUS_BIN)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Spend())
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler.factory(registry))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address[:2]
    try:
        with start_prometheus(tmp_path_factory.mktemp("prom-verify"),
                              targets=[f"{host}:{port}"]) as prom:
            source = PrometheusSource(prom.url)
            # rate() needs two scrapes; a loaded box may take a while to get them.
            poll(lambda: [s for s in run(source.query(SPEND.format(route="chat")))
                          if s.value >= SEEN_USD_PER_HOUR],
                 what="Prometheus to see the chat spend rate", timeout=90, interval=0.5)
            yield prom.url
    finally:
        server.shutdown()
        server.server_close()


def cost_alert(route: str, budget: str):
    base = alert(route=route)
    return base.model_copy(update={"annotations": {**base.annotations,
                                                   "hourly_budget_usd": budget}})


def test_a_huge_budget_annotation_cannot_verify_high_spend(prometheus_url: str) -> None:
    source = PrometheusSource(prometheus_url)
    # What the old query shape did on this very Prometheus: 4,058 USD/h "under budget".
    (old,) = run(source.query(SPEND.format(route="chat") + " / 1e300 or vector(0)"))
    assert old.value < 1
    env = Env(metrics=source)  # type: ignore[arg-type]
    item = run(env.engine.handle_alerts([cost_alert("chat", "1e300")]))[0]
    with pytest.raises(TemplateError) as err:
        run(env.engine.plan_step(item.incident_id, "runaway-cost", "cap-output",
                                 actor="alice"))
    assert "params.hourly_budget_usd = 1e300 is outside the range 0.01..1000" in str(err.value)
    assert env.store.runs() == []

    # With a budget inside the range the cap is planned and applied; spend stays high,
    # so the check fails on real numbers and escalates at the deadline.
    env = Env(metrics=source)  # type: ignore[arg-type]
    item = run(env.engine.handle_alerts([cost_alert("chat", "1000")]))[0]
    planned, _ = run(env.engine.run_step(item.incident_id, None, "cap-output", "alice"))
    applied = run(env.engine.approve(planned.id, "bob", apply=True))
    assert run(env.runner.check_verification(applied.id)).state == "applied"
    env.clock.advance(minutes=16)
    run(env.runner.run_due())
    last = env.store.run_events(applied.id)[-1]
    assert last.kind == "escalation" and "fail '< 1'" in last.text, last.text
    assert env.store.mitigation(applied.id).verify_state == "failed"


def test_a_metric_that_does_not_exist_yet_stays_unverified_then_on_fail(
        prometheus_url: str) -> None:
    source = PrometheusSource(prometheus_url)
    # The old shape turned the missing series into a passing zero.
    (old,) = run(source.query(SPEND.format(route="chat-small") + " / 20 or vector(0)"))
    assert old.value == 0
    env = Env(metrics=source)  # type: ignore[arg-type]
    item = run(env.engine.handle_alerts([cost_alert("chat-small", "20")]))[0]
    planned, _ = run(env.engine.run_step(item.incident_id, None, "cap-output", "alice"))
    applied = run(env.engine.approve(planned.id, "bob", apply=True))
    for _ in range(3):  # polled a few times inside `within`: never passes, never fails
        assert run(env.runner.check_verification(applied.id)).state == "applied"
        assert env.store.mitigation(applied.id).verify_state == "pending"
        env.clock.advance(minutes=4)
    env.clock.advance(minutes=4)
    run(env.runner.run_due())
    last = env.store.run_events(applied.id)[-1]
    assert last.kind == "escalation" and "not known yet" in last.text, last.text
    assert env.driver.policy.route("chat-small").max_output_tokens == 256  # escalate keeps it

    # on_fail: revert (the automatic provider fallback): no error series, reverted.
    env = Env(metrics=source)  # type: ignore[arg-type]
    item = run(env.engine.handle_alerts([provider_alert()]))[0]
    (auto,) = env.store.runs(incident_id=item.incident_id)
    assert auto.state == "applied" and env.driver.policy.route("chat").fallback == "chat-small"
    assert run(env.runner.check_verification(auto.id)).state == "applied"
    env.clock.advance(minutes=11)
    run(env.runner.run_due())
    assert env.store.run(auto.id).state == "reverted"
    assert env.driver.policy.route("chat").fallback is None
