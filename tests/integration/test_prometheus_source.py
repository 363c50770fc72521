"""PrometheusSource against a real Prometheus on loopback (and an Alertmanager smoke test)."""

from __future__ import annotations

import asyncio
import math
import socket

import httpx
import pytest

from actions.drivers.prometheus import PrometheusSource
from bot.base.errors import DriverError

pytestmark = pytest.mark.integration


def query(source: PrometheusSource, promql: str):
    return asyncio.run(source.query(promql))


def test_query_returns_the_scraped_value_with_its_labels(prometheus, wait_until) -> None:
    assert prometheus.target is not None
    prometheus.target.set(42.5, route="chat")
    prometheus.target.set(7.0, route="chat-small")
    source = PrometheusSource(prometheus.url)

    def scraped():
        samples = query(source, "llm_incident_test_value")
        values = {s.labels.get("route"): s.value for s in samples}
        return samples if values == {"chat": 42.5, "chat-small": 7.0} else None

    samples = wait_until(scraped, what="Prometheus to scrape the test gauge")
    chat = next(s for s in samples if s.labels["route"] == "chat")
    assert chat.labels["__name__"] == "llm_incident_test_value"
    assert chat.labels["job"] == "test"
    assert chat.labels["instance"] == prometheus.target.address

    # A later change is seen too, through a PromQL expression with a label matcher.
    prometheus.target.set(3.0, route="chat")
    wait_until(
        lambda: (
            [s.value for s in query(source, 'llm_incident_test_value{route="chat"} * 2')] == [6.0]
        ),
        what="the new gauge value",
    )


def test_scalar_and_nan_results(prometheus) -> None:
    source = PrometheusSource(prometheus.url)
    (one,) = query(source, "scalar(vector(1.25))")
    assert (one.labels, one.value) == ({}, 1.25)
    (nan,) = query(source, "vector(0) / 0")
    assert math.isnan(nan.value)
    assert query(source, 'llm_incident_test_value{route="no-such-route"}') == []


def test_bad_query_gives_prometheus_error_text(prometheus) -> None:
    source = PrometheusSource(prometheus.url)
    with pytest.raises(DriverError) as exc:
        query(source, "sum(rate(llm_incident_test_value[1m])")
    assert "bad_data" in exc.value.message
    assert "parse error" in exc.value.message
    assert exc.value.hint


def test_range_vector_is_refused_with_a_hint(prometheus) -> None:
    with pytest.raises(DriverError, match="matrix") as exc:
        query(PrometheusSource(prometheus.url), "llm_incident_test_value[1m]")
    assert "instant" in (exc.value.hint or "")


def test_closed_port_gives_driver_error_naming_the_url(closed_port_url: str) -> None:
    url = closed_port_url
    with pytest.raises(DriverError) as exc:
        query(PrometheusSource(url, timeout=2.0), "up")
    assert f"{url}/api/v1/query" in exc.value.message
    assert "running" in (exc.value.hint or "")


def test_server_that_never_answers_gives_a_timeout_error() -> None:
    # A listening socket nobody accepts from: the connect succeeds, the answer never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(DriverError, match="did not answer within 0.3s") as exc:
            query(PrometheusSource(url, timeout=0.3), "up")
    assert url in exc.value.message


def test_alertmanager_becomes_ready_and_delivers_to_the_webhook(
    alertmanager, webhook, wait_until
) -> None:
    am = alertmanager(webhook.url)
    assert httpx.get(f"{am.url}/-/ready").status_code == 200
    alert = [{"labels": {"alertname": "SmokeTest", "route": "chat"}}]
    assert httpx.post(f"{am.url}/api/v2/alerts", json=alert).status_code == 200
    payloads = wait_until(lambda: list(webhook.received), what="Alertmanager to call the webhook")
    (first,) = payloads[0]["alerts"]
    assert first["labels"] == {"alertname": "SmokeTest", "route": "chat"}
    assert first["status"] == "firing"
