"""`slo render` output checked by the real promtool, and a burn-rate alert firing on
sandbox traffic in a real Prometheus, with the right playbook suggested for it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from integration.services import free_port, poll, require_binary, spawn, start_prometheus

from actions.drivers.policy_file import PolicyFileDriver
from bot.adapters.settings import SHIPPED_PLAYBOOKS
from bot.core.engine import Engine
from bot.core.runner import Runner
from bot.playbook.engine_profiles import PROFILES
from bot.playbook.registry import PlaybookRegistry
from bot.playbook.slo_rules import dump, render_rules
from bot.playbook.slos import SHIPPED_EXAMPLE, load_slos_text
from bot.store import Store
from drills.detector import PrometheusObserver
from drills.sandbox.traffic import generate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = "/usr/bin/promtool"


def cli(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("example", ["shipped", "strict", "openslo"])
def test_rendered_rules_pass_promtool_check_and_their_generated_tests(tmp_path, example):
    promtool = require_binary(PROMTOOL)
    source = SHIPPED_EXAMPLE
    if example == "strict":  # other targets and SLIs than the example's
        source = tmp_path / "slos.yaml"
        source.write_text(yaml.safe_dump({"version": 1, "objectives": {
            "chat-latency": {"route": "chat", "sli": "latency", "threshold": "2.5s",
                             "target": "99.9%"},
            "chat-refusals": {"route": "chat", "sli": "refusals", "target": "99%"},
            "long-ttft": {"route": "chat-long", "sli": "ttft", "threshold": "500ms",
                          "target": 0.9}},
            "budgets": {"large-day": {"model": "chat-large", "per_day_usd": 100}}}))
    if example == "openslo":  # OpenSLO v1 documents, a ratio SLO on one counter split
        source = REPO / "tests/fixtures/openslo/chat.yaml"
    out = tmp_path / "rules"
    rendered = cli("slo", "render", str(source), "--out", str(out), cwd=REPO)
    assert rendered.returncode == 0, rendered.stderr
    check = subprocess.run([promtool, "check", "rules", str(out / "slo-rules.yaml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "slo-rules.test.yaml"], cwd=out,
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    cases = yaml.safe_load((out / "slo-rules.test.yaml").read_text())["tests"]
    # A bad and a good case per SLO (and one per budget).
    assert len(cases) >= 2 * {"shipped": 4, "strict": 3, "openslo": 1}[example]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_engine_source_renders_rules_promtool_passes_in_its_own_names(tmp_path, name):
    # Per source: errors, TTFT and latency at one of that source's own bucket bounds (and
    # fallbacks where it sees them); its generated tests feed the engine's own names
    # (vLLM's before-the-rename spellings), and the normalised series read them.
    promtool = require_binary(PROMTOOL)
    p = PROFILES[name]
    objectives = {"chat-errors": {"route": "chat", "sli": "errors", "target": "99.5%"},
                  "chat-ttft": {"route": "chat", "sli": "ttft", "threshold": "1s",
                                "target": "95%"},
                  "chat-latency": {"route": "chat", "sli": "latency", "threshold": "10s",
                                   "target": "99%"}}
    if p.fallbacks is not None:
        objectives["chat-fallbacks"] = {"route": "chat", "sli": "fallbacks", "target": "95%"}
    source = tmp_path / "slos.yaml"
    source.write_text(yaml.safe_dump({"version": 1, "source": name, "objectives": objectives}))
    out = tmp_path / "rules"
    rendered = cli("slo", "render", str(source), "--out", str(out), cwd=REPO)
    assert rendered.returncode == 0, rendered.stderr
    rules = (out / "slo-rules.yaml").read_text()
    check = subprocess.run([promtool, "check", "rules", str(out / "slo-rules.yaml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([promtool, "test", "rules", "slo-rules.test.yaml"], cwd=out,
                          capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    fed = (out / "slo-rules.test.yaml").read_text()
    for hist in (p.ttft, p.latency):
        assert hist is not None and hist.names[0] in rules and hist.names[-1] in fed
    assert "llm_incident:requests:rate5m" in rules
    if name == "vllm":  # both spellings of the renamed series are read
        assert "vllm:kv_cache_usage_perc" in rules and "vllm:gpu_cache_usage_perc" in fed
        assert "vllm:inter_token_latency_seconds" in rules
        assert "vllm:time_per_output_token_seconds_bucket" in fed


def test_a_burning_error_slo_fires_on_sandbox_traffic_and_suggests_its_playbook(tmp_path):
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "chat": {"max_concurrency": 64}, "chat-small": {}, "chat-long": {}}}))
    port = free_port()
    sandbox = spawn("sandbox", [sys.executable, "-m", "drills.sandbox", "--port", str(port),
                                "--policy", str(policy), "--time-scale", "0", "--seed", "5"],
                    tmp_path, f"http://127.0.0.1:{port}", ready_path="/health", cwd=REPO)
    slos = load_slos_text("objectives:\n  chat-errors: {route: chat, sli: errors, "
                          "target: 99.5%}\n")
    rules = tmp_path / "slo-rules.yaml"
    rules.write_text(dump(render_rules(slos, scale=60)))  # 1h -> 60s, 5m -> 5s
    try:
        fault = {"kind": "provider_errors", "route": "chat", "ratio": 0.3, "statuses": [503]}
        assert httpx.post(f"{sandbox.url}/faults", json=fault, timeout=5).status_code == 201
        with start_prometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{port}"],
                              rule_files=[rules]) as prom:
            async def observe():
                async with httpx.AsyncClient() as client:
                    observer = PrometheusObserver(prom.url, client)
                    for _ in range(60):
                        await generate(sandbox.url, routes=["chat"], rate_per_s=40,
                                       duration_s=1.0)
                        alert = await observer.firing("LLMErrorBudgetBurnFast")
                        if alert is not None:
                            return alert
                return None

            alert = asyncio.run(observe())
            assert alert is not None, "the page never fired"
            assert alert.labels["incident_class"] == "provider_errors"
            assert alert.labels["slo"] == "chat-errors" and alert.labels["route"] == "chat"
            assert alert.labels["severity"] == "critical"

            store = Store(None)
            registry = PlaybookRegistry()
            assert registry.reload(SHIPPED_PLAYBOOKS) == []
            engine = Engine(store, registry, Runner(store, {"default": PolicyFileDriver(
                policy)}, None))
            (ingested,) = asyncio.run(engine.handle_alerts([alert]))
            assert engine.suggested_playbook(ingested.incident_id) == "provider-errors"

            # `slo status` on the same Prometheus: burning far above the page's 14.4.
            env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
            slo_file = tmp_path / "slos.yaml"
            slo_file.write_text("objectives:\n  chat-errors: {route: chat, sli: errors, "
                                "target: 99.5%}\n")
            Store(str(tmp_path / "bot.db"))  # the bot's store, as `serve` made it
            env |= {"LLM_INCIDENT_PROMETHEUS_URL": prom.url, "LLM_INCIDENT_SLOS": str(slo_file),
                    "LLM_INCIDENT_DB": str(tmp_path / "bot.db")}
            status = poll(lambda: (r := cli("slo", "status", "--json", env=env)).returncode
                          == 0 and json.loads(r.stdout), what="slo status", timeout=30)
            [state] = status["objectives"]
            assert state["burn_1h"] > 14.4 and state["budget_left"] < 0
            assert 0.2 < state["bad_ratio"] < 0.4  # the fault's 30%
    finally:
        sandbox.stop()
