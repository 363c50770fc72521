"""The canary judge on real Prometheus: the sandbox serves a 10% canary of a new
prompt version on two routes; on `chat` the new version doubles output tokens, on
`chat-long` it is as good as the old one. Prometheus scrapes the sandbox's
per-version histograms and counters; the judge, reading them over a window,
rolls `chat` back and finds `chat-long` fit to promote."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from integration.services import free_port, poll, spawn, start_prometheus

from actions.drivers.prometheus import PrometheusSource
from bot.core.canary_judge import judge
from bot.core.canary_samples import Version, read_samples
from bot.playbook.canary_thresholds import load_thresholds
from drills.sandbox.traffic import generate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WINDOW = timedelta(minutes=5)


@pytest.fixture
def sandbox_url(tmp_path: Path) -> Iterator[str]:
    canary = {"prompt_version": "v43", "weight": 0.1, "release": "REL-1"}
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"canary": canary}, "chat-long": {"canary": canary}, "chat-small": {}}}))
    port = free_port()
    argv = [sys.executable, "-m", "drills.sandbox", "--port", str(port),
            "--policy", str(policy), "--time-scale", "0", "--seed", "5"]  # fmt: skip
    sandbox = spawn("sandbox", argv, tmp_path, f"http://127.0.0.1:{port}",
                    ready_path="/health", cwd=REPO)
    try:
        yield sandbox.url
    finally:
        sandbox.stop()


def test_the_judge_on_prometheus_rolls_back_a_bad_canary_and_passes_a_good_one(
        sandbox_url: str, tmp_path: Path) -> None:
    fault = {"kind": "token_blowup", "route": "chat", "prompt_version": "v43", "factor": 2}
    assert httpx.post(f"{sandbox_url}/faults", json=fault, timeout=5).status_code == 201
    thresholds = load_thresholds()
    with start_prometheus(tmp_path / "prometheus",
                          targets=[sandbox_url.removeprefix("http://")]) as prom:
        source = PrometheusSource(prom.url)

        def verdicts() -> dict[str, str] | None:
            asyncio.run(generate(sandbox_url, routes=["chat", "chat-long"], rate_per_s=800,
                                 duration_s=1.0))
            out = {}
            for route in ("chat", "chat-long"):
                samples = asyncio.run(read_samples(
                    source, Version(route, prompt_version="v43"),
                    Version(route, prompt_version="v42"), WINDOW))
                verdict = judge(thresholds.for_route(route), samples, alpha=thresholds.alpha)
                out[route] = verdict.decision
                if route == "chat" and verdict.decision == "rollback":
                    failed = {v.signal for v in verdict.failed}
                    assert "output_tokens" in failed, verdict
            return out if "wait" not in out.values() else None

        decided = poll(verdicts, what="enough canary requests for a verdict", timeout=90,
                       interval=0.5)
    assert decided == {"chat": "rollback", "chat-long": "promote"}, decided
