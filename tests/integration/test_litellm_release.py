"""The release guard on the REAL LiteLLM proxy, judged from real Prometheus.

`release start` writes the canary into the serving policy the proxy's hook reads;
the hook sends half of `extract`'s requests with the canary's prompt version, passed
on to the upstream as ``x-prompt-version``. The upstream (litellm_faults.py) breaks
JSON for the bad version only, so the hook counts the canary's answers invalid while
the baseline's parse; Prometheus scrapes the hook's ``llm_app_*`` families and
`tick` (serve's scheduler, once) judges the step. A bad canary is rolled back with a
malformed-output incident carrying the judge's table; a good one is promoted.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration.litellm_faults import FaultyUpstream
from integration.litellm_support import Proxy, require_litellm
from integration.services import poll, start_prometheus

from bot.store import Store

pytestmark = pytest.mark.integration

BAD, GOOD = "extract-v2-bad", "extract-v2"
VERDICT_TIMEOUT = 150.0  # 200 requests a side through the proxy, on a loaded 2-core box


@dataclass
class Rig:
    proxy: Proxy
    policy: Path
    env: dict[str, str]

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)

    def status(self, release: str) -> dict[str, Any]:
        done = self.cli("release", "status", release, "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        return dict(json.loads(done.stdout))

    def send(self, n: int) -> list[int]:
        """``n`` JSON-mode requests to `extract`, 8 at a time (the proxy's own pace)."""
        def one(_: int) -> int:
            return httpx.post(
                f"{self.proxy.url}/v1/chat/completions",
                json={"model": "extract", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 20, "response_format": {"type": "json_object"}},
                headers={"Authorization": f"Bearer {self.proxy.key}"}, timeout=60).status_code
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(n)))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    require_litellm()
    upstream = FaultyUpstream(bad_versions={BAD}).start()
    policy = tmp_path / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "routes": {
        "extract": {"prompt_version": "extract-v1"}}}))
    key = "sk-" + secrets.token_hex(16)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "extract", "litellm_params": {
            "model": "openai/good", "api_base": upstream.base_url, "api_key": "stub"}}],
        "litellm_settings": {"callbacks": ["bot_litellm_hook.policy_hook", "prometheus"],
                             "llm_incident_policy_file": str(policy), "num_retries": 0},
        "router_settings": {"num_retries": 0, "disable_cooldowns": True},
        "general_settings": {"master_key": key},
    }, sort_keys=False))
    proxy = Proxy(tmp_path, config, key)
    try:
        proxy.start()
        # LiteLLM serves /metrics/ (a mount; /metrics redirects there), behind its auth.
        with start_prometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{proxy.port}"],
                              interval="1s",
                              scrape_options={"metrics_path": "/metrics/",
                                              "authorization": {"credentials": key}}) as prom:
            env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
            env |= {"LLM_INCIDENT_DB": str(tmp_path / "bot.db"),
                    "LLM_INCIDENT_POLICY": str(policy),
                    "LLM_INCIDENT_PROMETHEUS_URL": prom.url, "LLM_INCIDENT_USER": "alice"}
            yield Rig(proxy, policy, env)
    finally:
        proxy.close()
        upstream.stop()


def until_decided(rig: Rig, release: str) -> dict[str, Any]:
    """Traffic and a tick, again, until the judge has moved the release out of canary."""
    def decided() -> dict[str, Any] | None:
        codes = rig.send(120)
        assert set(codes) == {200}, codes  # broken JSON is still an answer
        time.sleep(1.5)  # Prometheus (1 s scrapes) has seen this round
        ticked = rig.cli("tick")
        assert ticked.returncode == 0, ticked.stderr + ticked.stdout
        status = rig.status(release)
        return status if status["state"] != "canary" else None

    return poll(decided, what=f"the judge's verdict on {release}", timeout=VERDICT_TIMEOUT,
                interval=0.2)


def test_a_canary_version_that_breaks_json_is_rolled_back_with_a_malformed_output_incident(
        rig: Rig) -> None:
    started = rig.cli("release", "start", "extract", "--prompt", BAD,
                      "--steps", "50,100", "--bake", "1s", "--json")
    assert started.returncode == 0, started.stderr + started.stdout
    assert yaml.safe_load(rig.policy.read_text())["routes"]["extract"]["canary"]["weight"] \
        == 0.5
    began = time.monotonic()
    status = until_decided(rig, "REL-1")
    took = time.monotonic() - began
    print(f"rolled back {took:.1f}s after start")
    assert status["state"] == "rolled_back" and status["percent"] == 50, status
    assert [e["kind"] for e in status["timeline"]] == ["started", "rolled_back"], status
    # The proxy's hook stops serving the canary: its policy file no longer names one.
    assert "canary" not in yaml.safe_load(rig.policy.read_text())["routes"]["extract"]
    shown = rig.cli("show", status["incident"], "--json")
    assert shown.returncode == 0, shown.stderr + shown.stdout
    incident = json.loads(shown.stdout)
    assert incident["class"] == "malformed_output", incident
    # The judge's table rides on the incident's alert: the failing signal, both sides.
    (alert,) = Store(rig.env["LLM_INCIDENT_DB"]).alerts_for(incident["id"])
    assert alert.labels["signal"] == "schema_valid" and alert.labels["release"] == "REL-1"
    table = alert.annotations["description"]
    rows = {line.split()[1]: line.split() for line in table.splitlines()}
    assert rows["schema_valid"][0] == "fail" and "critical" in rows["schema_valid"], table
    # Every canary answer broke and every baseline answer parsed: a share of 0 vs 1.
    assert float(rows["schema_valid"][3]) == 0.0 and float(rows["schema_valid"][6]) == 1.0, \
        table
    assert rows["output_tokens"][0] == "pass", table  # only the JSON broke
    print(table)

def test_a_good_canary_on_the_proxy_is_promoted_with_no_incident(rig: Rig) -> None:
    started = rig.cli("release", "start", "extract", "--prompt", GOOD,
                      "--steps", "50,100", "--bake", "1s", "--auto-promote", "--json")
    assert started.returncode == 0, started.stderr + started.stdout
    began = time.monotonic()
    status = until_decided(rig, "REL-1")
    print(f"promoted {time.monotonic() - began:.1f}s after start")
    assert status["state"] == "promoted" and status["incident"] is None, status
    extract = yaml.safe_load(rig.policy.read_text())["routes"]["extract"]
    assert extract["prompt_version"] == GOOD and "canary" not in extract, extract
    assert [e["kind"] for e in status["timeline"]] == ["started", "promoted"], status
    assert json.loads(rig.cli("incidents", "--json").stdout) == []
