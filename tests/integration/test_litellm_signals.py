"""The hook's own quality signals through the REAL LiteLLM proxy, read by real Prometheus
evaluating the shipped rules pack (a fast copy: ``for: 3s``, ``[20s]`` windows).

Four routes of one proxy, each served by a model of a faulty upstream
(litellm_faults.py): ``extract`` answers JSON-mode requests with broken JSON,
``assist`` refuses (in words or through the content filter), ``summarize`` is
rejected as too long for its context window, and ``chat`` is healthy. Each faulted
route must fire its own incident's alert with its prompt version, and the healthy
route (half of it a release's canary) none of them. ``flaky`` is down and falls back (LiteLLM's router) to ``chat``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from integration.litellm_faults import FaultyUpstream
from integration.litellm_support import Proxy, require_litellm
from integration.services import PrometheusServer, poll, start_prometheus

from drills.alert_rules import render_rules

pytestmark = pytest.mark.integration

# route -> (upstream model, its fault or None)
ROUTES = {"extract": ("bad-json", "malformed"), "assist": ("prude", "refuse"),
          "summarize": ("short", "overflow"), "chat": ("good", None),
          "flaky": ("down", "down")}
EXPECTED = {("LLMMalformedOutputRatioHigh", "extract"), ("LLMRefusalRateHigh", "assist"),
            ("LLMSafetyFlagRateHigh", "assist"),
            ("LLMContextOverflowRejectionsHigh", "summarize")}
QUALITY_ALERTS = {name for name, _ in EXPECTED}
FIRING_TIMEOUT = 100.0  # generous for a loaded 2-core box; they fire in ~15 s unloaded


@dataclass
class Rig:
    proxy: Proxy
    prometheus: PrometheusServer

    def chat(self, route: str, *, json_mode: bool = True, **body: Any) -> httpx.Response:
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        return httpx.post(
            f"{self.proxy.url}/v1/chat/completions",
            json={"model": route, "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 20, **body},
            headers={"Authorization": f"Bearer {self.proxy.key}"}, timeout=60)

    def firing(self) -> set[tuple[str, str]]:
        resp = httpx.get(f"{self.prometheus.url}/api/v1/alerts", timeout=10)
        resp.raise_for_status()
        return {(a["labels"]["alertname"], a["labels"].get("route", ""))
                for a in resp.json()["data"]["alerts"] if a["state"] == "firing"}

    def alerts(self) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.prometheus.url}/api/v1/alerts", timeout=10)
        return [a for a in resp.json()["data"]["alerts"] if a["state"] == "firing"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    require_litellm()
    workdir = tmp_path_factory.mktemp("litellm-signals")
    upstream = FaultyUpstream(faults={m: f for m, f in ROUTES.values() if f}).start()
    policy = workdir / "serving-policy.yaml"
    routes: dict[str, Any] = {route: {"prompt_version": f"{route}-v1"} for route in ROUTES}
    # Half of chat's own traffic is a release's canary (the hook applies the policy's split).
    routes["chat"]["canary"] = {"prompt_version": "chat-v2", "weight": 0.5, "release": "REL-1"}
    policy.write_text(yaml.safe_dump({"version": 1, "routes": routes}))
    key = "sk-" + secrets.token_hex(16)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": route, "litellm_params": {
            "model": f"openai/{model}", "api_base": upstream.base_url, "api_key": "stub"}}
            for route, (model, _) in ROUTES.items()],
        "litellm_settings": {"callbacks": ["bot_litellm_hook.policy_hook", "prometheus"],
                             "llm_incident_policy_file": str(policy), "num_retries": 0},
        "router_settings": {"num_retries": 0, "disable_cooldowns": True,
                            "fallbacks": [{"flaky": ["chat"]}]},
        "general_settings": {"master_key": key},
    }, sort_keys=False))
    rules = workdir / "rules.yaml"
    rules.write_text(render_rules(for_="3s", window="20s", interval="1s"))
    proxy = Proxy(workdir, config, key)
    try:
        proxy.start()
        # LiteLLM serves /metrics/ (a mount; /metrics redirects there), behind its auth.
        with start_prometheus(workdir / "prometheus", targets=[f"127.0.0.1:{proxy.port}"],
                              rule_files=[rules], interval="1s",
                              scrape_options={"metrics_path": "/metrics/",
                                              "authorization": {"credentials": key}}) as prom:
            yield Rig(proxy, prom)
    finally:
        proxy.close()
        upstream.stop()


def traffic(rig: Rig, stop: threading.Event) -> None:
    """About 2 requests a second per route until ``stop``: over the rules' 0.05/s floor."""
    while not stop.is_set():
        began = time.monotonic()
        for route in ROUTES:
            rig.chat(route)
        stop.wait(max(0.0, 0.5 - (time.monotonic() - began)))


def test_faulted_routes_fire_their_shipped_alerts_and_the_healthy_route_none(rig: Rig) -> None:
    assert rig.chat("chat").status_code == 200
    assert rig.chat("extract").status_code == 200  # broken JSON is still an answer
    assert rig.chat("summarize").status_code == 400
    stop = threading.Event()
    sender = threading.Thread(target=traffic, args=(rig, stop), daemon=True)
    sender.start()
    try:
        poll(lambda: rig.firing() >= EXPECTED, what=f"the alerts {sorted(EXPECTED)} to fire",
             timeout=FIRING_TIMEOUT, interval=1.0)
        time.sleep(5)  # a wrongly firing alert of the healthy route would be past for: too
        firing = rig.alerts()
    finally:
        stop.set()
        sender.join(timeout=60)
    quality = {(a["labels"]["alertname"], a["labels"]["route"]) for a in firing
               if a["labels"]["alertname"] in QUALITY_ALERTS}
    assert quality == EXPECTED, sorted(quality)
    for a in firing:
        if a["labels"]["alertname"] in QUALITY_ALERTS:
            # The alert names the release that went bad (the playbooks roll back from it).
            assert a["labels"]["prompt_version"] == f"{a['labels']['route']}-v1", a["labels"]


def test_the_proxy_exports_version_histograms_and_fallbacks(rig: Rig) -> None:
    for _ in range(20):  # both sides of chat's canary split (all on one side: p = 2**-19)
        assert rig.chat("chat", json_mode=False, stream=True).status_code == 200
    assert rig.chat("flaky").status_code == 200  # served by chat through the router
    text = httpx.get(f"{rig.proxy.url}/metrics/", timeout=10,
                     headers={"Authorization": f"Bearer {rig.proxy.key}"}).text
    lines = text.splitlines()
    ours = "\n".join(line for line in lines if line.startswith("llm_app_"))

    def has(prefix: str, *parts: str) -> bool:
        return any(line.startswith(prefix) and all(p in line for p in parts) for line in lines)

    for version in (('route="chat"', 'prompt_version="chat-v1"', 'role="baseline"'),
                    ('route="chat"', 'prompt_version="chat-v2"', 'role="canary"')):
        assert has("llm_app_time_to_first_token_seconds_count", *version), ours
        assert has("llm_app_output_tokens_count", *version), ours
        assert has("llm_app_request_latency_seconds_count", *version), ours
    # The release judge's sides never mix: no canary version served as baseline.
    assert not has("llm_app_responses_total", 'prompt_version="chat-v2"', 'role="baseline"')
    assert not has("llm_app_responses_total", 'prompt_version="chat-v1"', 'role="canary"')
    assert has("llm_app_fallback_responses_total", 'route="flaky"', 'model="chat"'), ours
    assert not has("llm_app_misrouted_total", 'route="flaky"')
    assert not has("llm_app_output_invalid_total", 'route="chat"')
