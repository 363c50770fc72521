"""The sandbox gateway in-process (httpx.ASGITransport, time_scale 0, seeded RNG, fake clock)."""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bot.base.errors import InputError
from drills.sandbox import create_app, load_config
from drills.sandbox.traffic import generate


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Sandbox:
    """One app, a policy file it reads, and helpers to call it synchronously."""

    def __init__(self, tmp_path: Path, policy: dict[str, Any] | None = None, **app_kw: Any):
        self.policy_path = tmp_path / "serving-policy.yaml"
        self.clock = Clock()
        if policy is not None:
            self.write_policy(policy)
        self.app = create_app(
            load_config(time_scale=0), self.policy_path, clock=self.clock,
            rng=random.Random(7), **app_kw,
        )  # fmt: skip

    def write_policy(self, routes: dict[str, Any] | str) -> None:
        # Replace atomically, as the policy-file driver does (a new inode each time).
        text = routes if isinstance(routes, str) else yaml.safe_dump({"version": 1, "routes": routes})
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.policy_path)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://sb")

    def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with self.client() as c:
                return await c.request(method, url, **kw)

        return asyncio.run(go())

    def chat(self, route: str = "chat", n: int = 1, **body: Any) -> list[httpx.Response]:
        payload = {"model": route, "messages": [{"role": "user", "content": "x" * 400}], **body}

        async def go() -> list[httpx.Response]:
            async with self.client() as c:
                return [await c.post("/v1/chat/completions", json=payload) for _ in range(n)]

        return asyncio.run(go())

    def fault(self, **spec: Any) -> dict[str, Any]:
        resp = self.call("POST", "/faults", json=spec)
        assert resp.status_code == 201, resp.text
        return resp.json()

    def metric(self, name: str, **labels: str) -> float:
        text = self.call("GET", "/metrics").text
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


@pytest.fixture
def sb(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path, {"chat": {"enabled": True}})


def ok(responses: list[httpx.Response]) -> list[dict[str, Any]]:
    for r in responses:
        assert r.status_code == 200, r.text
    return [r.json() for r in responses]


# -- basic protocol -------------------------------------------------------------------


def test_completion_is_openai_shaped_with_usage(sb: Sandbox) -> None:
    (body,) = ok(sb.chat())
    usage = body["usage"]
    assert body["object"] == "chat.completion" and body["model"] == "chat-large"
    # 400 characters of prompt are ~100 tokens plus the message framing.
    assert 100 <= usage["prompt_tokens"] <= 110
    content = body["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == len(content.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    routes = [m["id"] for m in sb.call("GET", "/v1/models").json()["data"]]
    assert routes == ["chat", "chat-small", "chat-long"]
    assert sb.metric("litellm_spend_metric_total", requested_model="chat", model="chat-large") > 0


def test_streaming_sends_openai_chunks_and_done(sb: Sandbox) -> None:
    (resp,) = sb.chat(stream=True, stream_options={"include_usage": True}, max_tokens=30)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line for line in resp.text.split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] in ("stop", "length") and all(f is None for f in finish[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] == len(text.split()) <= 30
    assert sum(sb.app.state.gateway.in_flight.values()) == 0  # the slot was released


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not JSON"),
        (json.dumps({"model": "chat"}).encode(), 400, "messages"),
        (json.dumps({"model": "chat", "messages": [{}], "max_tokens": 0}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "nope", "messages": [{}]}).encode(), 404, "route 'nope'"),
    ],
)
def test_bad_chat_requests_say_what_is_wrong(sb: Sandbox, body: bytes, status: int, needle: str) -> None:
    resp = sb.call("POST", "/v1/chat/completions", content=body)
    assert resp.status_code == status
    assert needle in resp.json()["error"]["message"]
    assert sb.metric("llm_app_responses_total") == 0


# -- the serving policy ----------------------------------------------------------------


def test_cap_clips_output_even_when_max_tokens_is_larger(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path, {"chat": {"max_output_tokens": 50}})
    sb.fault(kind="token_blowup", route="chat", factor=10)  # every answer wants > 50
    bodies = ok(sb.chat(n=10, max_tokens=4000))
    assert all(b["usage"]["completion_tokens"] == 50 for b in bodies)
    assert all(b["choices"][0]["finish_reason"] == "length" for b in bodies)
    assert sb.metric("litellm_output_tokens_metric_total", requested_model="chat") == 500


def test_max_concurrency_answers_429_past_the_limit(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def held_sleep(_seconds: float) -> None:
        await gate.wait()

    sb = Sandbox(tmp_path, {"chat": {"max_concurrency": 2}}, sleep=held_sleep)
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}

    async def go() -> tuple[list[int], httpx.Response, int]:
        async with sb.client() as c:
            held = [asyncio.create_task(c.post("/v1/chat/completions", json=body)) for _ in range(2)]
            while sum(sb.app.state.gateway.in_flight.values()) < 2:
                await asyncio.sleep(0)
            rejected = await c.post("/v1/chat/completions", json=body)
            gate.set()
            statuses = [(await t).status_code for t in held]
            after = await c.post("/v1/chat/completions", json=body)
            return statuses, rejected, after.status_code

    statuses, rejected, after = asyncio.run(go())
    assert statuses == [200, 200] and after == 200
    assert rejected.status_code == 429
    assert "max_concurrency of 2" in rejected.json()["error"]["message"]
    assert sb.metric("litellm_proxy_failed_requests_metric_total", exception_status="429") == 1


def test_disabled_route_is_503_unless_a_fallback_serves_it(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path, {"chat": {"enabled": False}})
    (resp,) = sb.chat()
    assert resp.status_code == 503 and "disabled" in resp.json()["error"]["message"]
    sb.write_policy({"chat": {"enabled": False, "fallback": "chat-small"}})
    (resp,) = sb.chat()
    assert resp.status_code == 200
    assert resp.headers["x-llm-sandbox-fallback"] == "chat-small"
    assert resp.json()["model"] == "chat-small"
    assert sb.metric(
        "litellm_deployment_successful_fallbacks_total",
        requested_model="chat", fallback_model="chat-small",
    ) == 1  # fmt: skip
    # The caller's route stays the label, so route-level alerts see the cure.
    assert sb.metric("llm_app_responses_total", route="chat", model="chat-small") == 1


def test_fallback_loop_is_refused_clearly(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path, {"chat": {"fallback": "chat-small"}, "chat-small": {"fallback": "chat"}})
    (resp,) = sb.chat()
    assert resp.status_code == 503 and "chat -> chat-small -> chat" in resp.json()["error"]["message"]


def test_traffic_weights_split_requests_with_a_seeded_rng(tmp_path: Path) -> None:
    policy = {"chat": {"traffic": {"chat-large": 0.7, "chat-small": 0.3}}}
    models = [b["model"] for b in ok(Sandbox(tmp_path, policy).chat(n=300))]
    share = models.count("chat-small") / len(models)
    assert 0.22 < share < 0.38 and set(models) == {"chat-large", "chat-small"}
    # Same seed, same policy: the same sequence of choices.
    again = [b["model"] for b in ok(Sandbox(tmp_path, policy).chat(n=300))]
    assert again == models


def test_prompt_version_is_recorded_on_responses_and_metrics(sb: Sandbox) -> None:
    (first,) = sb.chat()
    sb.write_policy({"chat": {"prompt_version": "v41"}})
    (second,) = sb.chat()
    assert first.headers["x-llm-sandbox-prompt-version"] == "v42"  # the config's current
    assert second.headers["x-llm-sandbox-prompt-version"] == "v41"
    assert sb.metric("llm_app_responses_total", route="chat", prompt_version="v41") == 1


def test_corrupt_policy_keeps_the_last_good_one_and_says_so(sb: Sandbox, caplog: Any) -> None:
    sb.write_policy({"chat": {"max_output_tokens": 5}})
    sb.clock.now += 60
    ok(sb.chat())
    loaded_at = sb.clock.now
    sb.write_policy("version: 1\nroutes: {chat: [unclosed\n")
    sb.clock.now += 60
    bodies = ok(sb.chat(n=3))
    assert all(b["usage"]["completion_tokens"] <= 5 for b in bodies)
    assert sb.metric("llm_sandbox_policy_reload_errors_total") == 1  # once, not per request
    assert sb.metric("llm_sandbox_policy_last_good_timestamp_seconds") == loaded_at
    assert sum("keeping the last good" in r.message for r in caplog.records) == 1
    assert "corrupt YAML" in sb.call("GET", "/health").json()["policy_error"]
    # A schema error is a second bad version; fixing the file takes effect at once.
    sb.write_policy({"chat": {"traffic": {"chat-large": 0.5}}})
    ok(sb.chat())
    assert sb.metric("llm_sandbox_policy_reload_errors_total") == 2
    sb.write_policy({"chat": {"max_output_tokens": 3}})
    assert ok(sb.chat())[0]["usage"]["completion_tokens"] <= 3
    assert sb.call("GET", "/health").json()["policy_error"] is None


# -- faults and their cures -------------------------------------------------------------


def test_token_blowup_raises_tokens_and_cost_and_the_cap_cures_it(sb: Sandbox) -> None:
    base = sum(b["usage"]["completion_tokens"] for b in ok(sb.chat(n=30)))
    spend0 = sb.metric("litellm_spend_metric_total", requested_model="chat")
    sb.fault(kind="token_blowup", route="chat", factor=5)
    blown = sum(b["usage"]["completion_tokens"] for b in ok(sb.chat(n=30)))
    spend1 = sb.metric("litellm_spend_metric_total", requested_model="chat") - spend0
    assert blown > 3 * base and spend1 > 3 * spend0
    sb.write_policy({"chat": {"max_output_tokens": 64}})
    assert all(b["usage"]["completion_tokens"] <= 64 for b in ok(sb.chat(n=30)))


def test_latency_spike_is_cured_by_lowering_concurrency(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path, {"chat": {"max_concurrency": 16}})
    sb.fault(kind="latency_spike", route="chat", seconds=6, saturation_concurrency=4)
    (slow,) = ok(sb.chat())
    assert slow["sandbox"]["ttft_s"] >= 6
    assert sb.metric("vllm:kv_cache_usage_perc", model_name="chat-large") >= 0.98
    slow_count = sb.metric("vllm:time_to_first_token_seconds_bucket", model_name="chat-large", le="5.0")
    assert slow_count == 0
    sb.write_policy({"chat": {"max_concurrency": 4}})
    (fast,) = ok(sb.chat())
    assert fast["sandbox"]["ttft_s"] < 1
    assert sb.metric("vllm:time_to_first_token_seconds_bucket", model_name="chat-large", le="1.0") == 1
    assert sb.metric("vllm:kv_cache_usage_perc", model_name="chat-large") < 0.5


def test_latency_spike_on_a_model_is_cured_by_fallback(sb: Sandbox) -> None:
    sb.fault(kind="latency_spike", model="chat-large", seconds=8)
    assert ok(sb.chat())[0]["sandbox"]["ttft_s"] >= 8
    sb.write_policy({"chat": {"fallback": "chat-small"}})
    assert ok(sb.chat())[0]["sandbox"]["ttft_s"] < 1


def test_malformed_output_on_a_prompt_version_is_cured_by_rollback(sb: Sandbox) -> None:
    sb.fault(kind="malformed_output", prompt_version="v42", ratio=1.0)
    json_mode = {"response_format": {"type": "json_object"}}
    for body in ok(sb.chat(n=5, **json_mode)):
        with pytest.raises(json.JSONDecodeError):
            json.loads(body["choices"][0]["message"]["content"])
    ok(sb.chat(n=2))  # plain-text callers are not counted as invalid
    assert sb.metric("llm_app_output_invalid_total", route="chat", prompt_version="v42") == 5
    sb.write_policy({"chat": {"prompt_version": "v41"}})
    for body in ok(sb.chat(n=5, **json_mode)):
        assert "answer" in json.loads(body["choices"][0]["message"]["content"])
    assert sb.metric("llm_app_output_invalid_total", route="chat") == 5


def test_context_overflow_rejects_and_fallback_to_long_context_cures(sb: Sandbox) -> None:
    sb.fault(kind="context_overflow", route="chat", model="chat-large", ratio=1.0)
    (resp,) = sb.chat()
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "context_length_exceeded"
    assert sb.metric("llm_app_context_overflow_total", route="chat", model="chat-large") == 1
    sb.write_policy({"chat": {"fallback": "chat-long"}})
    assert ok(sb.chat())[0]["model"] == "chat-long"


def test_grown_prompt_overflows_until_output_is_capped(sb: Sandbox) -> None:
    sb.fault(kind="context_overflow", prompt_version="v42", extra_input_tokens=7900)
    (resp,) = sb.chat(max_tokens=1024)
    assert resp.status_code == 400 and "8192" in resp.json()["error"]["message"]
    sb.write_policy({"chat": {"max_output_tokens": 128}})
    (body,) = ok(sb.chat(max_tokens=1024))
    assert body["usage"]["prompt_tokens"] > 7900
    # Without any fault, a prompt larger than the window is rejected too.
    sb.call("DELETE", "/faults")
    (huge,) = sb.chat(messages=[{"role": "user", "content": "x" * 40_000}])
    assert huge.status_code == 400


def test_safety_flags_and_refusals_are_counted_and_cured(sb: Sandbox) -> None:
    sb.fault(kind="safety_flags", prompt_version="v42", ratio=1.0)
    sb.fault(kind="refusals", model="chat-large", ratio=1.0)
    (body,) = ok(sb.chat())
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert "can't help" in body["choices"][0]["message"]["content"]
    assert sb.metric("llm_app_safety_flags_total", route="chat", prompt_version="v42") == 1
    assert sb.metric("llm_app_refusals_total", route="chat", model="chat-large") == 1
    sb.write_policy({"chat": {"prompt_version": "v41", "fallback": "chat-small"}})
    (body,) = ok(sb.chat())
    assert body["choices"][0]["finish_reason"] in ("stop", "length") and not body["sandbox"]["flags"]


def test_provider_errors_on_a_model_are_cured_by_fallback(sb: Sandbox) -> None:
    sb.fault(kind="provider_errors", model="chat-large", ratio=1.0, statuses=[500])
    assert [r.status_code for r in sb.chat(n=3)] == [500, 500, 500]
    assert sb.metric(
        "litellm_proxy_failed_requests_metric_total",
        requested_model="chat", model="chat-large", exception_status="500",
    ) == 3  # fmt: skip
    sb.write_policy({"chat": {"fallback": "chat-small"}})
    ok(sb.chat(n=3))
    assert sb.metric("litellm_proxy_total_requests_metric_total", status_code="200") == 3
    assert sb.metric("litellm_deployment_successful_fallbacks_total", requested_model="chat") == 3


def test_bad_routing_is_cured_by_shifting_traffic(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path, {"chat": {"traffic": {"chat-large": 0.5, "chat-small": 0.5}}})
    sb.fault(kind="bad_routing", route="chat", model="chat-small", to_model="chat-long", ratio=1.0)
    models = [b["model"] for b in ok(sb.chat(n=40))]
    assert "chat-long" in models and "chat-small" not in models
    misrouted = sb.metric("llm_app_misrouted_total", route="chat", model="chat-long")
    assert misrouted == models.count("chat-long")
    sb.write_policy({"chat": {"traffic": {"chat-large": 1.0}}})
    assert {b["model"] for b in ok(sb.chat(n=20))} == {"chat-large"}
    assert sb.metric("llm_app_misrouted_total") == misrouted


def test_quality_drop_lowers_the_score_and_rollback_restores_it(sb: Sandbox) -> None:
    sb.fault(kind="quality_drop", prompt_version="v42", drop=0.5)
    assert ok(sb.chat())[0]["sandbox"]["quality_score"] == pytest.approx(0.4)
    assert sb.metric("llm_app_quality_score", prompt_version="v42") == pytest.approx(0.4)
    sb.write_policy({"chat": {"prompt_version": "v41"}})
    ok(sb.chat())
    assert sb.metric("llm_app_quality_score", prompt_version="v41") == pytest.approx(0.9)
    # The stale v42 series expires, so an average over the route recovers.
    sb.clock.now += 301
    ok(sb.chat())
    assert sb.metric("llm_app_quality_score", prompt_version="v42") == 0  # series gone
    assert sb.metric("llm_app_quality_score", route="chat") == pytest.approx(0.9)


# -- the fault API ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "meteor_strike"}, "kind"),
        ({"kind": "provider_errors", "ratio": 1.5}, "ratio"),
        ({"kind": "provider_errors", "statuses": [404]}, "statuses.0"),
        ({"kind": "token_blowup", "factor": "lots"}, "factor"),
        ({"kind": "refusals", "route": "nope"}, "route"),
        ({"kind": "refusals", "model": "gpt-9"}, "model"),
        ({"kind": "bad_routing", "to_model": "gpt-9"}, "to_model"),
        ({"kind": "refusals", "colour": "red"}, "colour"),
        (["refusals"], "body"),
    ],
)
def test_bad_fault_input_is_422_naming_the_field(sb: Sandbox, spec: Any, field: str) -> None:
    resp = sb.call("POST", "/faults", json=spec)
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == field
    assert sb.call("GET", "/faults").json()["faults"] == []  # nothing half-added


def test_faults_can_be_listed_and_removed(sb: Sandbox) -> None:
    a = sb.fault(kind="refusals", route="chat", ratio=1.0)
    sb.fault(kind="quality_drop")
    assert [f["kind"] for f in sb.call("GET", "/faults").json()["faults"]] == [
        "refusals", "quality_drop",
    ]  # fmt: skip
    assert sb.call("DELETE", f"/faults/{a['id']}").status_code == 204
    assert sb.call("DELETE", f"/faults/{a['id']}").status_code == 404
    assert not ok(sb.chat())[0]["sandbox"]["flags"]
    assert sb.call("DELETE", "/faults").json() == {"removed": 1}


# -- config and traffic ------------------------------------------------------------------


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "sandbox.yaml"
    cfg.write_text(yaml.safe_dump({"models": {"m": {}}, "routes": {"r": {"traffic": {"x": 1.0}}}}))
    with pytest.raises(InputError, match="unknown model 'x'"):
        load_config(cfg)
    cfg.write_text(yaml.safe_dump({"models": {"m": {"ttft_s": -1}}, "routes": {}}))
    with pytest.raises(InputError, match="models.m.ttft_s"):
        load_config(cfg)


def test_traffic_generator_counts_statuses_and_stays_on_loopback(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path, {"chat-small": {"enabled": False}})

    async def go() -> dict[int | str, int]:
        async with sb.client() as c:
            return await generate(
                "http://127.0.0.1:4000", routes=["chat", "chat-small"],
                rate_per_s=400, duration_s=0.05, client=c, rng=random.Random(1),
            )  # fmt: skip

    assert asyncio.run(go()) == {200: 10, 503: 10}
    assert sb.metric("litellm_proxy_total_requests_metric_total", requested_model="chat") == 10
    with pytest.raises(ValueError, match="loopback"):
        asyncio.run(generate("http://example.org", routes=["chat"], rate_per_s=1, duration_s=1))


# -- a release's canary -------------------------------------------------------------------


def _buckets(sb: Sandbox, name: str, **labels: str) -> list[tuple[float, float]]:
    text = sb.call("GET", "/metrics").text
    return sorted(
        (float(s.labels["le"]), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_a_canary_takes_its_share_and_only_it_sees_a_fault_on_its_version(
        tmp_path: Path) -> None:
    from bot.core.canary_judge import Histogram, judge
    from bot.playbook.canary_thresholds import load_thresholds

    # The new prompt v43 doubles output tokens; 10% of chat's traffic tries it.
    sb = Sandbox(tmp_path, {"chat": {"canary": {"prompt_version": "v43", "weight": 0.1,
                                                "release": "REL-1"}}})
    sb.fault(kind="token_blowup", prompt_version="v43", factor=2)
    bodies = ok(sb.chat(n=3000))
    versions = [b["sandbox"]["prompt_version"] for b in bodies]
    share = versions.count("v43") / len(versions)
    assert 0.08 < share < 0.12, share  # 10% +- 2 points over 3,000 requests
    tokens = {v: [b["usage"]["completion_tokens"] for b in bodies
                  if b["sandbox"]["prompt_version"] == v] for v in ("v42", "v43")}
    mean = {v: sum(t) / len(t) for v, t in tokens.items()}
    assert mean["v43"] > 1.6 * mean["v42"]  # only the canary is blown up
    # The judge reads the per-version histograms the gateway exports and says roll back.
    canary = Histogram(_buckets(sb, "llm_app_output_tokens", prompt_version="v43"))
    baseline = Histogram(_buckets(sb, "llm_app_output_tokens", prompt_version="v42"))
    assert canary.n == versions.count("v43") and baseline.n == versions.count("v42")
    verdict = judge(load_thresholds().for_route("chat"),
                    {"output_tokens": (canary, baseline)}, alpha=0.01)
    assert verdict.decision == "rollback", verdict
    # A good canary (no fault on its version) is judged fit to promote.
    (tmp_path / "good").mkdir()
    good = Sandbox(tmp_path / "good", {"chat": {"canary": {"prompt_version": "v43",
                                                           "weight": 0.1}}})
    ok(good.chat(n=3000))
    verdict = judge(load_thresholds().for_route("chat"), {"output_tokens": (
        Histogram(_buckets(good, "llm_app_output_tokens", prompt_version="v43")),
        Histogram(_buckets(good, "llm_app_output_tokens", prompt_version="v42")))},
        alpha=0.01)
    assert verdict.decision == "promote", verdict
