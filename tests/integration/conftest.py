"""Real services on loopback for integration tests: Prometheus and Alertmanager.

Each service runs as a plain background process bound to 127.0.0.1 on a free
port, with its own storage under a tmp dir, and is waited on through
``/-/ready`` (polling with a deadline, never a bare sleep). A missing binary
skips the tests locally but fails them when ``LLM_INCIDENT_REQUIRE_INTEGRATION=1``
(CI), so the integration tier can never pass by silently not running.

Later tests reuse ``start_prometheus`` (rule files, an Alertmanager to notify)
and the ``alertmanager`` factory fixture."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from integration.services import (
    PROMETHEUS_BIN,
    PrometheusServer,
    ScrapeTarget,
    Service,
    WebhookRecorder,
    free_port,
    poll,
    require_binary,
    start_alertmanager,
    start_prometheus,
)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus scraping a gauge the test sets: ``prometheus.target.set(1.5)``."""
    require_binary(PROMETHEUS_BIN)
    target = ScrapeTarget().start()
    try:
        with start_prometheus(
            tmp_path_factory.mktemp("prometheus"), targets=[target.address]
        ) as server:
            server.target = target
            yield server
    finally:
        target.stop()


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Service]]:
    """Factory: ``alertmanager(webhook_url, **options)`` starts one (options: see
    ``start_alertmanager``); all stop at the end of the session."""
    started: list[Service] = []

    def start(webhook_url: str, **options: Any) -> Service:
        service = start_alertmanager(
            tmp_path_factory.mktemp("alertmanager"), webhook_url, **options
        )
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            service.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookRecorder]:
    recorder = WebhookRecorder()
    try:
        yield recorder
    finally:
        recorder.close()


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``wait_until(check, what=...)``: poll until truthy, fail at the deadline."""
    return poll


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL on which nothing listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"
