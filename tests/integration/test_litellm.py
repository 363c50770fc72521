"""The LiteLLM driver and pre-call hook against a real LiteLLM proxy on loopback.

One proxy per module (started through ``litellm_proxy``'s launcher, restarted
by the driver's reload), in front of the stub upstream in ``litellm_upstream``.
Each mitigation is applied through the catalog action and the driver, seen in
real responses, reverted, and seen reverted.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration.litellm_support import READY_TIMEOUT, Proxy, require_litellm
from integration.litellm_upstream import StubUpstream

from actions.base import Plan
from actions.catalog import get_action
from actions.drivers.litellm import HttpProbe, LiteLLMDriver
from actions.drivers.policy_file import PolicyFileDriver

pytestmark = pytest.mark.integration
# The body's `user` names an end user only within its key's namespace: the master
# key's (LiteLLM's UserAPIKeyAuth.token for it is this alias, not a hash).
END_USER = "key:litellm_proxy_master_key/"

@dataclass
class Gateway:
    proxy: Proxy
    upstream: StubUpstream
    driver: LiteLLMDriver
    config: Path
    policy: Path

    def chat(self, model: str = "chat", **body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.proxy.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
            headers={"Authorization": f"Bearer {self.proxy.key}"},
            timeout=60,
        )

    def apply(self, action: str, params: dict[str, Any]) -> Plan:
        act = get_action(action)
        plan = act.plan(params, asyncio.run(self.driver.read()), target="litellm")
        assert not plan.noop
        asyncio.run(act.apply(plan, self.driver, reason=f"test {action}"))
        assert asyncio.run(act.verify(plan, self.driver)) == []
        return plan

    def revert(self, plan: Plan) -> None:
        drifted = asyncio.run(
            get_action(plan.action).revert(plan, self.driver, reason="test revert")
        )
        assert drifted == []


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require_litellm()
    workdir = tmp_path_factory.mktemp("litellm")
    upstream = StubUpstream(default_tokens=200).start()
    key = "sk-" + secrets.token_hex(16)
    policy = workdir / "serving-policy.yaml"
    policy.write_text("version: 1\nroutes:\n  chat: {}\n  chat-small: {}\n")
    config = workdir / "config.yaml"

    def deployment(route: str, model: str) -> dict[str, Any]:
        params = {"model": f"openai/{model}", "api_base": upstream.base_url, "api_key": "stub"}
        return {"model_name": route, "litellm_params": params}

    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [deployment("chat", "large"), deployment("chat-small", "small")],
                "litellm_settings": {
                    "callbacks": ["bot_litellm_hook.policy_hook", "prometheus"],
                    "llm_incident_policy_file": str(policy),
                    "num_retries": 0,
                    # LiteLLM leaves end_user off its Prometheus metrics unless told.
                    "enable_end_user_cost_tracking_prometheus_only": True,
                },
                # No retries and no cooldowns: a 429 or 500 must reach the test as is.
                "router_settings": {"num_retries": 0, "disable_cooldowns": True},
                "general_settings": {"master_key": key},
            },
            sort_keys=False,
        )
    )
    proxy = Proxy(workdir, config, key)
    try:
        proxy.start()

        async def reload() -> None:
            await asyncio.to_thread(proxy.restart)

        driver = LiteLLMDriver(
            config,
            PolicyFileDriver(policy),
            HttpProbe(proxy.url, api_key=key),
            reload=reload,
            ready_timeout=READY_TIMEOUT,
        )
        yield Gateway(proxy, upstream, driver, config, policy)
        times = ", ".join(f"{t:.1f}s" for t in proxy.start_times)
        print(f"\nLiteLLM proxy start times (first cold-ish, then forked restarts): {times}")
    finally:
        proxy.close()
        upstream.stop()


@pytest.fixture(autouse=True)
def _fresh_upstream(gateway: Gateway) -> None:
    gateway.upstream.reset()


def served_by(resp: httpx.Response) -> str:
    content = resp.json()["choices"][0]["message"]["content"]
    return content.split("]", 1)[0].lstrip("[")


def test_cap_output_length_clamps_what_callers_ask_for(gateway: Gateway) -> None:
    before = gateway.chat(max_tokens=100)
    assert before.status_code == 200, before.text
    assert before.json()["usage"]["completion_tokens"] == 100
    plan = gateway.apply("cap_output_length", {"route": "chat", "max_output_tokens": 16})
    asked_more = gateway.chat(max_tokens=100)
    asked_nothing = gateway.chat()
    asked_less = gateway.chat(max_completion_tokens=5)
    assert asked_more.json()["usage"]["completion_tokens"] == 16
    assert asked_nothing.json()["usage"]["completion_tokens"] == 16
    assert asked_less.json()["usage"]["completion_tokens"] == 5
    gateway.revert(plan)
    assert gateway.chat(max_tokens=100).json()["usage"]["completion_tokens"] == 100


def _two_at_once(gateway: Gateway) -> tuple[httpx.Response, httpx.Response]:
    """Hold the upstream, send one request, then a second while the first is in flight."""
    results: dict[str, httpx.Response] = {}
    gateway.upstream.hold()
    first = threading.Thread(target=lambda: results.setdefault("a", gateway.chat(max_tokens=3)))
    first.start()
    try:
        deadline = time.monotonic() + 30
        while gateway.upstream.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gateway.upstream.in_flight == 1, "the first request never reached the upstream"
        second = threading.Thread(target=lambda: results.setdefault("b", gateway.chat(max_tokens=3)))
        second.start()
        # The second is either refused by the proxy or reaches the upstream too.
        while (
            second.is_alive() and gateway.upstream.in_flight < 2 and time.monotonic() < deadline
        ):
            time.sleep(0.02)
    finally:
        gateway.upstream.release()
    first.join(30)
    second.join(30)
    return results["a"], results["b"]


def test_lower_concurrency_makes_the_proxy_refuse_past_the_limit(gateway: Gateway) -> None:
    a, b = _two_at_once(gateway)
    assert (a.status_code, b.status_code) == (200, 200)
    plan = gateway.apply("lower_concurrency", {"route": "chat", "max_concurrency": 1})
    a, b = _two_at_once(gateway)
    assert a.status_code == 200, a.text
    assert b.status_code == 429, b.text
    gateway.revert(plan)
    assert "max_parallel_requests" not in gateway.config.read_text()
    a, b = _two_at_once(gateway)
    assert (a.status_code, b.status_code) == (200, 200)


def test_disable_route_answers_503_and_enable_restores_it(gateway: Gateway) -> None:
    original = gateway.config.read_text()
    plan = gateway.apply("disable_route", {"route": "chat-small"})
    resp = gateway.chat("chat-small")
    assert resp.status_code == 503, resp.text
    assert "disabled" in resp.text
    assert gateway.chat("chat").status_code == 200  # the other route is untouched
    gateway.revert(plan)
    assert gateway.config.read_text() == original
    resp = gateway.chat("chat-small")
    assert resp.status_code == 200 and served_by(resp) == "small"


def test_fallback_takes_over_when_the_primary_fails(gateway: Gateway) -> None:
    gateway.upstream.failing.add("large")
    assert gateway.chat().status_code >= 500  # no fallback yet: the failure reaches the caller
    plan = gateway.apply("fallback", {"route": "chat", "to": "chat-small"})
    resp = gateway.chat()
    assert resp.status_code == 200, resp.text
    assert served_by(resp) == "small"
    gateway.revert(plan)
    assert gateway.chat().status_code >= 500


def test_disabled_route_with_fallback_is_rerouted_by_the_hook(gateway: Gateway) -> None:
    # Written straight to the policy file: the hook alone must reroute (no reload needed).
    asyncio.run(
        PolicyFileDriver(gateway.policy).write(
            {"chat": {"enabled": False, "fallback": "chat-small"}}, reason="t", action="t"
        )
    )
    try:
        resp = gateway.chat()
        assert resp.status_code == 200, resp.text
        assert served_by(resp) == "small"
    finally:
        asyncio.run(
            PolicyFileDriver(gateway.policy).write(
                {"chat": {"enabled": True, "fallback": None}}, reason="t", action="t"
            )
        )
    assert served_by(gateway.chat()) == "large"


def test_rollback_prompt_pins_the_version_upstream(gateway: Gateway) -> None:
    gateway.chat()
    assert gateway.upstream.seen[-1].prompt_version is None
    plan = gateway.apply("rollback_prompt", {"route": "chat", "prompt_version": "v41"})
    gateway.chat()
    assert gateway.upstream.seen[-1].prompt_version == "v41"
    gateway.revert(plan)
    gateway.chat()
    assert gateway.upstream.seen[-1].prompt_version is None


def test_unreadable_policy_file_keeps_the_last_good_policy(gateway: Gateway) -> None:
    plan = gateway.apply("cap_output_length", {"route": "chat", "max_output_tokens": 9})
    assert gateway.chat(max_tokens=50).json()["usage"]["completion_tokens"] == 9
    good = gateway.policy.read_bytes()
    try:
        gateway.policy.write_text("version: 1\nroutes: [broken\n")
        resp = gateway.chat(max_tokens=50)
        assert resp.status_code == 200, resp.text  # never block traffic
        assert resp.json()["usage"]["completion_tokens"] == 9  # the last good cap holds
    finally:
        gateway.policy.write_bytes(good)
    gateway.revert(plan)


def test_proxy_exports_litellm_prometheus_metrics(gateway: Gateway) -> None:
    gateway.chat(max_tokens=4)
    resp = httpx.get(
        f"{gateway.proxy.url}/metrics",
        headers={"Authorization": f"Bearer {gateway.proxy.key}"},
        timeout=10,
        follow_redirects=True,
    )
    assert resp.status_code == 200
    names = {line.split("{")[0].split(" ")[0] for line in resp.text.splitlines() if line.startswith("litellm_")}
    # The names the rules pack and the sandbox speak (DESIGN.md "Metrics").
    assert "litellm_output_tokens_metric_total" in names, sorted(names)


def test_a_release_canary_splits_the_routes_traffic_through_the_real_proxy(
        gateway: Gateway) -> None:
    # The hook sends the canary's share of `chat` with the new prompt version upstream;
    # rolled back, none. Measured over 300 requests through the proxy.
    gateway.apply("set_canary", {"route": "chat", "release": "REL-1", "prompt_version": "v43",
                                 "weight": 0.25})
    n = 300
    for _ in range(n):
        assert gateway.chat().status_code == 200
    versions = [s.prompt_version for s in gateway.upstream.seen[-n:]]
    share = versions.count("v43") / n
    print(f"\ncanary share through LiteLLM at weight 0.25: {share:.1%} of {n}")
    assert 0.15 < share < 0.35, share  # 25% +- 4 standard deviations (sd 2.5 points)
    assert set(versions) == {"v43", None}
    rollback = get_action("rollback_canary").plan({"route": "chat", "release": "REL-1"},
                                                  asyncio.run(gateway.driver.read()),
                                                  target="litellm")
    asyncio.run(get_action("rollback_canary").apply(rollback, gateway.driver, reason="test"))
    for _ in range(50):
        gateway.chat()
    assert "v43" not in [s.prompt_version for s in gateway.upstream.seen[-50:]]


def test_customer_limits_hold_for_that_caller_only_through_the_real_proxy(
        gateway: Gateway) -> None:
    # cap_customer through the driver: the hook clamps that caller (an end user, the
    # body's `user`, of the master key: END_USER) and nobody else; throttle gives it
    # 429s; block gives it 403; reverted, it is served as before.
    runaway, acme = END_USER + "runaway", END_USER + "acme"
    cap = gateway.apply("cap_customer", {"customer": runaway, "max_output_tokens": 16})
    assert yaml.safe_load(gateway.policy.read_text())["customers"][runaway][
        "max_output_tokens"] == 16
    capped = gateway.chat(max_tokens=100, user="runaway")
    other = gateway.chat(max_tokens=100, user="acme")
    nobody = gateway.chat(max_tokens=100)
    assert capped.status_code == other.status_code == nobody.status_code == 200, capped.text
    assert capped.json()["usage"]["completion_tokens"] == 16
    assert other.json()["usage"]["completion_tokens"] == 100
    assert nobody.json()["usage"]["completion_tokens"] == 100
    throttle = gateway.apply("throttle_customer", {"customer": runaway,
                                                   "max_requests_per_minute": 2})
    codes = [gateway.chat(max_tokens=5, user="runaway").status_code for _ in range(4)]
    # Requests are counted from the first rate limit on (the capped one above was not).
    assert codes == [200, 200, 429, 429], codes
    assert gateway.chat(max_tokens=5, user="acme").status_code == 200
    gateway.revert(throttle)
    block = gateway.apply("block_customer", {"customer": acme})
    refused = gateway.chat(max_tokens=5, user="acme")
    assert refused.status_code == 403, refused.text
    assert f"'{acme}' is blocked" in refused.text
    gateway.revert(block)
    gateway.revert(cap)
    assert gateway.chat(max_tokens=100, user="acme").status_code == 200
    assert gateway.chat(max_tokens=100, user="runaway").json()["usage"][
        "completion_tokens"] == 100


def test_tokens_per_minute_counts_what_the_proxy_answered(gateway: Gateway) -> None:
    plan = gateway.apply("throttle_customer", {"customer": END_USER + "tokens-co",
                                               "max_tokens_per_minute": 150})
    codes = [gateway.chat(max_tokens=60, user="tokens-co").status_code for _ in range(5)]
    gateway.revert(plan)
    # ~61-70 tokens per answer (input plus 60 out): the third or so is over 150.
    assert codes[:2] == [200, 200] and codes[-1] == 429, codes


def test_the_proxy_labels_tokens_by_end_user_as_the_budgets_read_them(gateway: Gateway) -> None:
    # The per-customer budgets (`slo render`, per_customer) read LiteLLM's end_user label.
    assert gateway.chat(max_tokens=7, user="label-check").status_code == 200
    text = httpx.get(f"{gateway.proxy.url}/metrics",
                     headers={"Authorization": f"Bearer {gateway.proxy.key}"},
                     timeout=10, follow_redirects=True).text
    mine = [line for line in text.splitlines()
            if line.startswith("litellm_output_tokens_metric_total{")
            and 'end_user="label-check"' in line]
    assert mine and 'requested_model="chat"' in mine[0], text[:2000]
    assert float(mine[0].rsplit(" ", 1)[1]) >= 7


def test_caps_hold_on_litellms_own_fallback_path(gateway: Gateway) -> None:
    # The team's own router fallback chat -> chat-small (not the bot's), chat's upstream
    # failing: the router calls chat-small without the pre-call hook. The deployment
    # hook clamps it to chat-small's cap, and to the caller's own cap.
    original = gateway.config.read_text()
    config = yaml.safe_load(original)
    config["router_settings"]["fallbacks"] = [{"chat": ["chat-small"]}]
    gateway.config.write_text(yaml.safe_dump(config, sort_keys=False))
    gateway.proxy.restart()
    try:
        route_cap = gateway.apply("cap_output_length", {"route": "chat-small",
                                                        "max_output_tokens": 16})
        caller_cap = gateway.apply("cap_customer", {"customer": END_USER + "fb-co",
                                                    "max_output_tokens": 4})
        gateway.upstream.failing.add("large")
        resp = gateway.chat(max_tokens=1000)
        assert resp.status_code == 200 and served_by(resp) == "small", resp.text
        tried, fell_back = gateway.upstream.seen[-2:]
        # The router tried chat first (no cap on chat: the caller's 1000 went out), then
        # fell back on its own; only the deployment hook saw that call.
        assert (tried.model, tried.max_tokens) == ("large", 1000)
        assert (fell_back.model, fell_back.max_tokens) == ("small", 16)
        resp = gateway.chat(max_tokens=1000, user="fb-co")
        assert resp.status_code == 200 and gateway.upstream.seen[-1].max_tokens == 4
        gateway.revert(caller_cap)
        gateway.revert(route_cap)
        gateway.chat(max_tokens=1000)
        assert gateway.upstream.seen[-1].max_tokens == 1000  # reverted: nothing clamps
        # A fallback into a route the policy disabled is refused, not served.
        disable = asyncio.run(PolicyFileDriver(gateway.policy).write(
            {"chat-small": {"enabled": False}}, reason="t", action="t"))
        assert disable is None
        resp = gateway.chat(max_tokens=10)
        assert resp.status_code >= 500 and gateway.upstream.seen[-1].model == "large", resp.text
    finally:
        asyncio.run(PolicyFileDriver(gateway.policy).write(
            {"chat-small": {"enabled": True}}, reason="t", action="t"))
        gateway.config.write_text(original)
        gateway.proxy.restart()


def test_the_litellm_source_profile_matches_what_the_real_proxy_exports(
        gateway: Gateway, tmp_path: Path) -> None:
    # `slo render --source auto` on the proxy's own /metrics picks the litellm profile,
    # and every name that profile reads is on the page, labelled by requested_model.
    from bot.playbook.engine_profiles import PROFILES, detect, names_in

    gateway.upstream.failing.add("large")
    assert gateway.chat().status_code >= 500  # a failure, so the failure counter exists
    gateway.upstream.failing.clear()
    assert gateway.chat(stream=False).status_code == 200
    page = httpx.get(f"{gateway.proxy.url}/metrics",
                     headers={"Authorization": f"Bearer {gateway.proxy.key}"},
                     timeout=10, follow_redirects=True).text
    found, _ = detect(page)
    assert found.name == "litellm"
    p = PROFILES["litellm"]
    seen = names_in(page)
    assert p.latency is not None and p.requests is not None and p.errors is not None
    for name in (p.requests.name, p.errors.name, f"{p.latency.names[0]}_bucket",
                 *p.output_tokens):
        assert name in seen, name
        assert any(line.startswith(name + "{") and 'requested_model="chat"' in line
                   for line in page.splitlines()), name
    # Its latency buckets are the profile's bounds.
    bounds = {float(le) for le in re.findall(
        rf'^{p.latency.names[0]}_bucket{{[^}}]*le="([^"]+)"', page, re.M) if le != "+Inf"}
    assert bounds == set(p.latency.bounds or ()), sorted(bounds)
    saved = tmp_path / "metrics.txt"
    saved.write_text(page)
    out = tmp_path / "rules"
    done = subprocess.run([sys.executable, "-m", "bot.adapters.cli", "slo", "render",
                           str(_errors_only(tmp_path)), "--source", "auto", "--metrics",
                           str(saved), "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "source: litellm" in done.stdout
    assert 'requested_model="chat"' in (out / "slo-rules.yaml").read_text()


def _errors_only(folder: Path) -> Path:
    path = folder / "slos.yaml"
    path.write_text("version: 1\nobjectives:\n  chat-errors: {route: chat, sli: errors, "
                    "target: 99.5%}\n")
    return path
