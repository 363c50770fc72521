"""The canary judge on real Prometheus: the sandbox serves a 10% canary of a new
prompt version on two routes; on `chat` the new version doubles output tokens, on
`chat-long` it is as good as the old one. Prometheus scrapes the sandbox's
per-version histograms and counters; the judge, reading them over a window,
rolls `chat` back and finds `chat-long` fit to promote."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

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


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_release_that_doubles_tokens_is_rolled_back_at_5_percent_with_an_incident(
        tmp_path: Path) -> None:
    # The whole loop through the CLI: `release start` writes the canary into the policy
    # file the sandbox reads; the sandbox serves it to 5% of `chat`; Prometheus scrapes
    # the per-version histograms; `tick` (serve's scheduler, once) judges the step and
    # rolls the release back, opening a runaway-cost incident with the evidence.
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"prompt_version": "v42"}, "chat-small": {}, "chat-long": {}}}))
    port = free_port()
    sandbox = spawn("sandbox", [sys.executable, "-m", "drills.sandbox", "--port", str(port),
                                "--policy", str(policy), "--time-scale", "0", "--seed", "8"],
                    tmp_path, f"http://127.0.0.1:{port}", ready_path="/health", cwd=REPO)
    try:
        fault = {"kind": "token_blowup", "route": "chat", "prompt_version": "v43", "factor": 2}
        assert httpx.post(f"{sandbox.url}/faults", json=fault, timeout=5).status_code == 201
        with start_prometheus(tmp_path / "prometheus",
                              targets=[sandbox.url.removeprefix("http://")]) as prom:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
            env |= {"LLM_INCIDENT_DB": str(tmp_path / "bot.db"),
                    "LLM_INCIDENT_POLICY": str(policy),
                    "LLM_INCIDENT_PROMETHEUS_URL": prom.url, "LLM_INCIDENT_USER": "alice"}
            started = _cli(env, "release", "start", "chat", "--prompt", "v43",
                           "--steps", "5,25,100", "--bake", "1s", "--json")
            assert started.returncode == 0, started.stderr + started.stdout
            assert json.loads(started.stdout)["percent"] == 5
            assert yaml.safe_load(policy.read_text())["routes"]["chat"]["canary"]["weight"] \
                == 0.05

            def rolled_back() -> dict[str, Any] | None:
                asyncio.run(generate(sandbox.url, routes=["chat"], rate_per_s=1000,
                                     duration_s=1.5))
                ticked = _cli(env, "tick")
                assert ticked.returncode == 0, ticked.stderr + ticked.stdout
                status = json.loads(_cli(env, "release", "status", "REL-1", "--json").stdout)
                return status if status["state"] != "canary" else None

            status = poll(rolled_back, what="the judge's verdict on REL-1", timeout=120,
                          interval=0.2)
    finally:
        sandbox.stop()
    assert status["state"] == "rolled_back" and status["percent"] == 5, status
    assert "canary" not in yaml.safe_load(policy.read_text())["routes"]["chat"]
    incident = json.loads(_cli(env, "show", status["incident"], "--json").stdout)
    assert incident["class"] == "runaway_cost", incident
    kinds = [e["kind"] for e in status["timeline"]]
    assert kinds == ["started", "rolled_back"], kinds


def test_a_good_release_is_promoted_to_all_traffic_with_no_incident(tmp_path: Path) -> None:
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"prompt_version": "v42"}, "chat-small": {}, "chat-long": {}}}))
    port = free_port()
    sandbox = spawn("sandbox", [sys.executable, "-m", "drills.sandbox", "--port", str(port),
                                "--policy", str(policy), "--time-scale", "0", "--seed", "9"],
                    tmp_path, f"http://127.0.0.1:{port}", ready_path="/health", cwd=REPO)
    try:
        with start_prometheus(tmp_path / "prometheus",
                              targets=[sandbox.url.removeprefix("http://")]) as prom:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
            env |= {"LLM_INCIDENT_DB": str(tmp_path / "bot.db"),
                    "LLM_INCIDENT_POLICY": str(policy),
                    "LLM_INCIDENT_PROMETHEUS_URL": prom.url, "LLM_INCIDENT_USER": "alice"}
            started = _cli(env, "release", "start", "chat", "--prompt", "v43", "--steps",
                           "10,50,100", "--bake", "1s", "--auto-promote")
            assert started.returncode == 0, started.stderr + started.stdout

            def promoted() -> dict[str, Any] | None:
                asyncio.run(generate(sandbox.url, routes=["chat"], rate_per_s=1000,
                                     duration_s=1.5))
                assert _cli(env, "tick").returncode == 0
                status = json.loads(_cli(env, "release", "status", "REL-1", "--json").stdout)
                return status if status["state"] != "canary" else None

            status = poll(promoted, what="REL-1 promoted step by step", timeout=180,
                          interval=0.2)
    finally:
        sandbox.stop()
    assert status["state"] == "promoted" and status["incident"] is None, status
    chat = yaml.safe_load(policy.read_text())["routes"]["chat"]
    assert chat["prompt_version"] == "v43" and "canary" not in chat
    kinds = [e["kind"] for e in status["timeline"]]
    assert kinds == ["started", "promoted_step", "promoted"], kinds
    assert json.loads(_cli(env, "incidents", "--json").stdout) == []
