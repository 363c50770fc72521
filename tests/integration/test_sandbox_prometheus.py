"""The sandbox as a real server (subprocess + uvicorn), scraped by a real Prometheus."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration.services import free_port, poll, spawn, start_prometheus

from drills.sandbox.traffic import generate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {"chat": {"max_concurrency": 64}}}))
    port = free_port()
    argv = [sys.executable, "-m", "drills.sandbox", "--port", str(port),
            "--policy", str(policy), "--time-scale", "0", "--seed", "3"]  # fmt: skip
    sandbox = spawn("sandbox", argv, tmp_path, f"http://127.0.0.1:{port}",
                    ready_path="/health", cwd=REPO)
    try:
        yield sandbox.url
    finally:
        sandbox.stop()


def instant(prom_url: str, promql: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{prom_url}/api/v1/query", params={"query": promql}, timeout=5)
    resp.raise_for_status()
    return resp.json()["data"]["result"]


def test_prometheus_sees_a_positive_spend_rate_for_the_route(
    sandbox_url: str, tmp_path: Path
) -> None:
    host = sandbox_url.removeprefix("http://")
    fault = {"kind": "provider_errors", "model": "chat-large", "ratio": 0.5, "statuses": [503]}
    assert httpx.post(f"{sandbox_url}/faults", json=fault, timeout=5).status_code == 201
    totals: dict[int | str, int] = {}

    with start_prometheus(tmp_path / "prometheus", targets=[host]) as prom:

        def burst_then_query() -> list[dict[str, Any]]:
            counts = asyncio.run(
                generate(sandbox_url, routes=["chat"], rate_per_s=40, duration_s=0.5)
            )
            for status, n in counts.items():
                totals[status] = totals.get(status, 0) + n
            result = instant(
                prom.url, 'sum(rate(litellm_spend_metric_total{requested_model="chat"}[15s]))'
            )
            return result if result and float(result[0]["value"][1]) > 0 else []

        (spend,) = poll(burst_then_query, what="a positive spend rate on route chat", timeout=60)
        assert float(spend["value"][1]) > 0
        # The fault shows up as LiteLLM-named failures, and the vLLM-named histogram is scraped.
        assert set(totals) == {200, 503}
        failed = instant(
            prom.url,
            'sum(litellm_proxy_failed_requests_metric_total{requested_model="chat",'
            'exception_status="503"})',
        )
        assert failed and float(failed[0]["value"][1]) > 0
        ttft = instant(prom.url, "sum(vllm:time_to_first_token_seconds_count)")
        assert ttft and float(ttft[0]["value"][1]) > 0
