"""The loop on a real LiteLLM proxy: long answers -> alert -> Slack -> cap output -> recovery.

The proxy (``tests/integration/test_litellm.Proxy`` through the ``litellm_proxy``
launcher) sits in front of the stub upstream (``litellm_upstream``), with the
policy pre-call hook and LiteLLM's Prometheus callback. A real Prometheus scrapes
its ``/metrics/`` with the master key (``authorization`` in the scrape config) and
evaluates one rule over LiteLLM's own names: output tokens per second per route.
The bot's ``default`` target is the ``litellm`` driver, configured through
``LLM_INCIDENT_TARGETS`` with a reload command that restarts this test's proxy.

When the upstream starts answering long, the rule fires, Alertmanager posts, the
runaway-cost playbook is suggested in Slack, two on-call engineers click Run step
and Approve, and the cap lands in the policy file: the hook enforces it on the
next request (no restart), the answers shrink, the token rate falls under the
threshold, the alert resolves and the incident closes.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.rig import (
    FOR,
    ONCALL,
    STAGE_TIMEOUT,
    WINDOW,
    WINDOW_S,
    LoopThread,
    Rig,
    prom_alerts,
    prom_value,
)
from integration.litellm_support import READY_TIMEOUT, Proxy, require_litellm
from integration.litellm_upstream import StubUpstream
from integration.services import LoopbackHTTPServer, QuietHandler

from drills.sandbox.traffic import generate

pytestmark = pytest.mark.e2e

ALERT = "LLMOutputTokenRateHigh"
ROUTE = "chat"
RATE = 2.0  # requests/s
SHORT, LONG = 100, 2000  # completion tokens the upstream answers, before and during the fault
CAP = 256  # the runaway-cost playbook's output cap
THRESHOLD = 1500  # tokens/s: 200 healthy, 4000 with long answers, 512 capped
TOKEN_RATE = (f'sum by (route) (label_replace(rate(litellm_output_tokens_metric_total[{WINDOW}]),'
              f' "route", "$1", "requested_model", "(.+)"))')
RULES = {"groups": [{"name": "e2e-litellm", "interval": "1s", "rules": [{
    "alert": ALERT,
    "expr": f"{TOKEN_RATE} > {THRESHOLD}",
    "for": FOR,
    "labels": {"severity": "critical", "incident_class": "runaway_cost"},
    "annotations": {"summary": "Output tokens per second on route {{ $labels.route }} are high",
                    "threshold": str(THRESHOLD)},
}]}]}
# The driver's reload: ask this test (over loopback) to restart its proxy.
RELOAD_SCRIPT = ("import sys, urllib.request; "
                 "urllib.request.urlopen(urllib.request.Request(sys.argv[1], method='POST'), "
                 "timeout=float(sys.argv[2]))")


class RestartControl(LoopbackHTTPServer):
    """``POST /restart`` restarts the proxy; the driver's ``reload_command`` calls it."""

    def __init__(self, proxy: Proxy) -> None:
        self.restarts = 0
        control = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                try:
                    proxy.restart()
                    control.restarts += 1
                    self.send_response(200)
                except BaseException:  # noqa: BLE001 - the reload command reports the failure
                    self.send_response(500)
                self.end_headers()

        super().__init__(Handler, "/restart")


class LiteLLMRig(Rig):
    def __init__(self, workdir: Path) -> None:
        require_litellm()
        super().__init__(workdir)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        wd = self.workdir
        self.upstream = StubUpstream(default_tokens=SHORT).start()
        self.on_close(self.upstream.stop)
        self.key = "sk-" + secrets.token_hex(16)
        self.policy = wd / "serving-policy.yaml"
        self.policy.write_text(f"version: 1\nroutes:\n  {ROUTE}: {{}}\n")
        self.config = wd / "litellm.yaml"
        params = {"model": "openai/large", "api_base": self.upstream.base_url, "api_key": "stub"}
        self.config.write_text(yaml.safe_dump({
            "model_list": [{"model_name": ROUTE, "litellm_params": params}],
            "litellm_settings": {"callbacks": ["bot_litellm_hook.policy_hook", "prometheus"],
                                 "llm_incident_policy_file": str(self.policy),
                                 "num_retries": 0},
            "router_settings": {"num_retries": 0, "disable_cooldowns": True},
            "general_settings": {"master_key": self.key},
        }, sort_keys=False))
        self.proxy = Proxy(wd, self.config, self.key)
        self.on_close(self.proxy.close)
        self.proxy.start()
        self.control = RestartControl(self.proxy)
        self.on_close(self.control.close)

        targets = wd / "targets.yaml"
        targets.write_text(yaml.safe_dump({"targets": {"default": {
            "driver": "litellm", "config_path": str(self.config), "policy_file": str(self.policy),
            "base_url": self.proxy.url, "master_key_env": "LITELLM_MASTER_KEY",
            "reload_command": [sys.executable, "-c", RELOAD_SCRIPT, self.control.url,
                               str(READY_TIMEOUT)],
            "ready_timeout": READY_TIMEOUT,
        }}}))
        rules = wd / "rules.litellm.yaml"
        rules.write_text(yaml.safe_dump(RULES, sort_keys=False))
        self.loop = LoopThread("e2e-litellm-traffic")
        self.on_close(self.loop.close)
        self.start_bot_side(
            scrape_target=self.proxy.url.removeprefix("http://"), rules=rules,
            ttl="1h",  # this loop ends at recovery; the sandbox loop covers the TTL revert
            # /metrics answers a redirect; the master key is required.
            scrape_options={"metrics_path": "/metrics/",
                            "authorization": {"type": "Bearer", "credentials": self.key}},
            environ={"LLM_INCIDENT_TARGETS": str(targets), "LITELLM_MASTER_KEY": self.key,
                     "LLM_INCIDENT_POLICY": str(wd / "unused-default-policy.yaml")})

    def chat(self) -> httpx.Response:
        return httpx.post(f"{self.proxy.url}/v1/chat/completions",
                          json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]},
                          headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def traffic(self) -> concurrent.futures.Future[Any]:
        async def run() -> dict[int | str, int]:
            headers = {"Authorization": f"Bearer {self.key}"}
            async with httpx.AsyncClient(timeout=60, headers=headers) as client:
                return await generate(self.proxy.url, routes=[ROUTE], rate_per_s=RATE,
                                      duration_s=300, client=client, json_share=0)

        return self.loop.submit(run())


@pytest.fixture(scope="module")
def litellm_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMRig]:
    with LiteLLMRig(tmp_path_factory.mktemp("e2e-litellm")) as rig:
        yield rig


def test_long_answers_page_and_the_approved_cap_is_enforced_by_the_proxy(
    litellm_rig: LiteLLMRig, wait_until: Callable[..., Any]
) -> None:
    rig = litellm_rig
    prom, bot, slack = rig.prometheus.url, rig.bot, rig.slack
    requester, approver = ONCALL
    config_before = rig.config.read_bytes()

    def token_rate() -> float | None:
        return prom_value(prom, f'{TOKEN_RATE.replace("sum by (route)", "sum")}')

    def stage(what: str, check: Callable[[], Any]) -> Any:
        result = wait_until(check, what=what, timeout=STAGE_TIMEOUT, interval=0.25)
        print(f"{time.strftime('%H:%M:%S')} {what}")
        return result

    traffic = rig.traffic()
    started = time.monotonic()
    try:
        stage("healthy traffic through the proxy, scraped by Prometheus",
              lambda: time.monotonic() - started > WINDOW_S + 2
              and (r := token_rate()) is not None and 0 < r < THRESHOLD
              and not prom_alerts(prom, ALERT, "pending"))

        rig.upstream.default_tokens = LONG  # the model starts answering at length
        stage(f"{ALERT} firing in Prometheus", lambda: prom_alerts(prom, ALERT))
        top, run_button = stage("the runaway-cost suggestion in Slack",
                                lambda: slack.top_message("runaway-cost", "cap-output"))
        incident_id = run_button.value.split(":")[0]
        assert [a.alertname for a in bot.store.alerts_for(incident_id)] == [ALERT]

        slack.click(requester, run_button, top.ts)
        (run,) = stage("the planned run", lambda: bot.store.runs(incident_id=incident_id))
        assert run.target == "default" and run.plan.updates("after") == {
            ROUTE: {"max_output_tokens": CAP}}
        reply, approve = stage("Approve in the thread",
                               lambda: slack.thread_button(top.ts, "approve", run.id))
        slack.click(approver, approve, reply.ts)
        stage(f"{run.id} applied", lambda: bot.store.mitigation(run.id))
        assert [a.user for a in bot.store.approvals(run.id)] == [approver]

        # The cap went to the policy file, read by the hook on every request: the proxy's
        # config is untouched and the proxy was not restarted.
        assert yaml.safe_load(rig.policy.read_text())["routes"][ROUTE]["max_output_tokens"] == CAP
        assert rig.config.read_bytes() == config_before
        assert len(rig.proxy.start_times) == 1 and rig.control.restarts == 0
        resp = rig.chat()
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] == CAP  # the upstream still says LONG
        assert rig.upstream.seen[-1].max_tokens == CAP

        stage("the token rate back under the threshold in the proxy's metrics",
              lambda: (r := token_rate()) is not None and r < THRESHOLD)
        stage("Alertmanager's resolved notification",
              lambda: all(a.status == "resolved" for a in bot.store.alerts_for(incident_id)))
        stage(f"verification of {run.id} passed",
              lambda: bot.store.mitigation(run.id).verify_state == "passed")
        stage(f"{incident_id} resolved", lambda: bot.incident(incident_id).status == "resolved")
        statuses = bot.statuses(incident_id)
        assert statuses.index("mitigated") < statuses.index("resolved"), statuses
        assert slack.refusals() == []
    finally:
        traffic.cancel()
        rig.upstream.default_tokens = SHORT
