"""The hook's measuring functions and the families they feed (bot_litellm_hook.measure,
.signals, .metrics), on a private registry."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import litellm
import pytest
from prometheus_client import CollectorRegistry

from actions.policy import ServingPolicy
from bot_litellm_hook import measure
from bot_litellm_hook.hook import PolicyHook
from bot_litellm_hook.metrics import MAX_OLD_VERSIONS, OTHER, HookMetrics
from bot_litellm_hook.signals import Signals

SCHEMA = {"type": "object", "required": ["answer"],
          "properties": {"answer": {"type": "string"}}}
JSON_SCHEMA = {"response_format": {"type": "json_schema",
                                   "json_schema": {"name": "a", "schema": SCHEMA}}}


def reply(content: Any = "hello", finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"choices": [{"message": {"role": "assistant", "content": content, **message},
                         "finish_reason": finish}],
            "usage": {"completion_tokens": 7}}


def test_free_text_requests_have_no_validity_verdict() -> None:
    assert measure.validity({}, reply("not json")) is None


def test_bad_json_is_invalid_and_good_json_valid() -> None:
    params = {"response_format": {"type": "json_object"}}
    assert measure.validity(params, reply('{"answer": "x"')) is False
    assert measure.validity(params, reply('{"answer": "x"}')) is True
    assert measure.validity(params, reply("[1, 2]")) is False  # json_object means an object


def test_a_schema_violation_is_invalid() -> None:
    assert measure.validity(JSON_SCHEMA, reply('{"answer": "yes"}')) is True
    assert measure.validity(JSON_SCHEMA, reply('{"answer": 3}')) is False
    assert measure.validity(JSON_SCHEMA, reply('{"other": "x"}')) is False


def test_tool_call_arguments_are_parsed_and_validated() -> None:
    params = {"tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]}

    def call(arguments: str) -> dict[str, Any]:
        return reply(None, "tool_calls", tool_calls=[
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": arguments}}])

    assert measure.validity(params, call('{"answer": "a"}')) is True
    assert measure.validity(params, call('{"answer": 1}')) is False
    assert measure.validity(params, call('{"answer":')) is False


def test_refusals_by_field_finish_reason_and_pattern() -> None:
    assert measure.refused(reply(None, refusal="I can't help with that."))
    assert measure.refused(reply("", "content_filter"))
    assert measure.refused(reply("I'm sorry, but I can't help with that request."))
    assert not measure.refused(reply("Sure: I can't find any bugs in it, it is fine."))
    assert not measure.refused(reply("hello"), patterns=())


def test_refusal_patterns_come_from_the_proxy_config_or_the_defaults(
        caplog: pytest.LogCaptureFixture) -> None:
    from bot_litellm_hook.signals import refusal_patterns

    assert refusal_patterns(None) == measure.DEFAULT_REFUSAL_PATTERNS
    assert refusal_patterns(["^nope"]) == ("^nope",)
    assert refusal_patterns(["(unclosed"]) == measure.DEFAULT_REFUSAL_PATTERNS
    assert refusal_patterns("^nope") == measure.DEFAULT_REFUSAL_PATTERNS
    assert "llm_incident_refusal_patterns" in caplog.text


def test_content_filter_and_guardrails_are_safety_flags() -> None:
    assert measure.safety_flagged(reply("", "content_filter"))
    assert not measure.safety_flagged(reply("fine"))
    assert measure.safety_flagged(reply("fine"), [{"guardrail_status": "guardrail_intervened"}])
    assert not measure.safety_flagged(reply("fine"), [{"guardrail_status": "success"}])


def test_context_overflow_is_kept_apart_from_provider_errors() -> None:
    overflow = litellm.ContextWindowExceededError(message="too long", model="m",
                                                  llm_provider="openai")
    upstream = litellm.BadRequestError(
        message="This model's maximum context length is 8192 tokens (context_length_exceeded)",
        model="m", llm_provider="openai")
    server = litellm.InternalServerError(message="boom", model="m", llm_provider="openai")
    assert measure.failure_kind(overflow) == "context_overflow"
    assert measure.failure_kind(upstream) == "context_overflow"
    assert measure.failure_kind(server) == "error"


# -- the families --------------------------------------------------------------------

POLICY = ServingPolicy.model_validate({
    "routes": {"chat": {"prompt_version": "v1",
                        "canary": {"prompt_version": "v2", "weight": 0.5}},
               "chat-small": {}},
    "customers": {"acme": {"max_output_tokens": 10}},
})


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    total = 0.0
    for metric in reg.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def label_values(reg: CollectorRegistry, name: str, label: str) -> set[str]:
    return {s.labels[label] for m in reg.collect() for s in m.samples if s.name == name}


def kwargs_for(route: str, served: str, pv: str | None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"llm_incident": {"route": route, "model": route,
                                             "reason": extra.pop("reason", "as requested"),
                                             **extra.pop("decision", {})},
                            "model_group": served}
    if pv is not None:
        meta["prompt_version"] = pv
    return {"litellm_params": {"metadata": meta}, "standard_logging_object":
            {"model_group": served}, **extra}


T0 = datetime(2026, 1, 1)


def test_each_response_is_counted_with_its_version_labels() -> None:
    reg = CollectorRegistry()
    sig = Signals(HookMetrics(reg))
    sig.success(POLICY, kwargs_for("chat", "chat", "v2", reason="canary",
                                   optional_params={"response_format": {"type": "json_object"}},
                                   decision={"customer": "acme"}),
                reply("oops"), T0, T0 + timedelta(seconds=1.2))
    labels = {"route": "chat", "model": "chat", "prompt_version": "v2", "role": "canary"}
    assert value(reg, "llm_app_responses_total", **labels, customer="acme") == 1
    assert value(reg, "llm_app_output_invalid_total", **labels) == 1
    assert value(reg, "llm_app_refusals_total") == 0
    assert value(reg, "llm_app_output_tokens_sum", **labels) == 7
    assert value(reg, "llm_app_request_latency_seconds_sum", **labels) == pytest.approx(1.2)


def test_a_refusal_in_json_mode_is_a_refusal_not_malformed_output() -> None:
    reg = CollectorRegistry()
    Signals(HookMetrics(reg)).success(
        POLICY, kwargs_for("chat", "chat", "v1",
                           optional_params={"response_format": {"type": "json_object"}}),
        reply("I'm sorry, but I can't help with that."), T0, T0)
    assert value(reg, "llm_app_refusals_total") == 1
    assert value(reg, "llm_app_output_invalid_total") == 0


def test_streams_observe_time_to_first_token() -> None:
    reg = CollectorRegistry()
    Signals(HookMetrics(reg)).success(
        POLICY, kwargs_for("chat", "chat", "v1", stream=True,
                           completion_start_time=T0 + timedelta(seconds=0.3)),
        reply(), T0, T0 + timedelta(seconds=2))
    assert value(reg, "llm_app_time_to_first_token_seconds_sum",
                 role="baseline") == pytest.approx(0.3)


def test_a_model_other_than_the_chosen_one_is_misrouted() -> None:
    reg = CollectorRegistry()
    Signals(HookMetrics(reg)).success(POLICY, kwargs_for("chat", "chat-small", "v1"),
                                      reply(), T0, T0)
    assert value(reg, "llm_app_misrouted_total", route="chat", model="chat-small") == 1
    assert value(reg, "llm_app_fallback_responses_total") == 0


def test_a_router_fallback_is_a_fallback_not_a_misroute() -> None:
    reg = CollectorRegistry()
    kw = kwargs_for("chat", "chat-small", "v1")
    kw["litellm_params"]["fallback_depth"] = 1
    Signals(HookMetrics(reg)).success(POLICY, kw, reply(), T0, T0)
    assert value(reg, "llm_app_fallback_responses_total", route="chat") == 1
    assert value(reg, "llm_app_misrouted_total") == 0


def test_unbounded_label_values_fold_to_other() -> None:
    reg = CollectorRegistry()
    sig = Signals(HookMetrics(reg))
    for n in range(50):
        sig.success(POLICY, kwargs_for(f"route-{n}", f"model-{n}", f"v-{n}",
                                       decision={"customer": f"cust-{n}"}), reply(), T0, T0)
    assert label_values(reg, "llm_app_responses_total", "route") == {OTHER}
    assert label_values(reg, "llm_app_responses_total", "model") == {OTHER}
    assert label_values(reg, "llm_app_responses_total", "prompt_version") == {OTHER}
    assert label_values(reg, "llm_app_responses_total", "customer") == {OTHER}
    assert value(reg, "llm_app_responses_total") == 50


def test_another_routes_prompt_version_is_other_on_this_route() -> None:
    reg = CollectorRegistry()
    sig = Signals(HookMetrics(reg))
    sig.success(POLICY, kwargs_for("chat-small", "chat-small", "v2"), reply(), T0, T0)
    assert label_values(reg, "llm_app_responses_total", "prompt_version") == {OTHER}


def test_old_prompt_versions_keep_their_label_up_to_a_cap() -> None:
    reg = CollectorRegistry()
    sig = Signals(HookMetrics(reg))
    for n in range(MAX_OLD_VERSIONS + 3):
        policy = ServingPolicy.model_validate({"routes": {"chat": {"prompt_version": f"v{n}"}}})
        sig.success(policy, kwargs_for("chat", "chat", "v0"), reply(), T0, T0)
    seen = [s.labels["prompt_version"] for m in reg.collect() for s in m.samples
            if s.name == "llm_app_responses_total"]
    assert seen[0] == "v0" and set(seen) == {"v0", OTHER}  # v0 is current, then old, then gone


def test_failures_count_overflow_apart_and_skip_the_hooks_own_refusals() -> None:
    reg = CollectorRegistry()
    sig = Signals(HookMetrics(reg))
    meta = {"metadata": {"prompt_version": "v1",
                         "llm_incident": {"route": "chat", "model": "chat"}}}
    sig.failure(POLICY, meta, litellm.ContextWindowExceededError(
        message="too long", model="chat", llm_provider="openai"))
    sig.failure(POLICY, meta, litellm.InternalServerError(message="500", model="chat",
                                                          llm_provider="openai"))
    sig.failure(POLICY, meta, litellm.RateLimitError(message="over", model="chat",
                                                     llm_provider="llm-incident"))
    assert value(reg, "llm_app_context_overflow_total", route="chat", prompt_version="v1") == 1
    assert value(reg, "llm_app_errors_total", route="chat") == 2
    assert value(reg, "llm_app_requests_total", route="chat") == 2


def test_a_measuring_bug_never_fails_the_request(caplog: pytest.LogCaptureFixture) -> None:
    sig = Signals(HookMetrics(CollectorRegistry()))
    sig.success(POLICY, {"litellm_params": {"metadata": {"llm_incident": "x"}}},
                object(), "not a time", None)  # nonsense in, no exception out


def test_the_hook_measures_through_its_litellm_callbacks(tmp_path: Any) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps(POLICY.model_dump(mode="json", exclude_none=True)))
    reg = CollectorRegistry()
    hook = PolicyHook(policy, seed=1, metrics=HookMetrics(reg))
    data: dict[str, Any] = {"model": "chat-small", "messages": []}
    asyncio.run(hook.async_pre_call_hook(None, None, data, "completion"))
    asyncio.run(hook.async_post_call_failure_hook(data, litellm.BadRequestError(
        message="context_length_exceeded", model="chat-small", llm_provider="openai",
        response=httpx.Response(400, request=httpx.Request("POST", "http://x"))), None))
    asyncio.run(hook.async_log_success_event(
        {"litellm_params": {"metadata": data["metadata"]},
         "standard_logging_object": {"model_group": "chat-small"}},
        litellm.ModelResponse(choices=[{"message": {"content": "ok"}}]), T0, T0))
    assert value(reg, "llm_app_context_overflow_total", route="chat-small") == 1
    assert value(reg, "llm_app_responses_total", route="chat-small", model="chat-small") == 1


@pytest.mark.parametrize("schema", [
    SCHEMA,
    {"type": "object", "properties": {"n": {"type": "integer"}, "tags": {
        "type": "array", "items": {"type": "string", "enum": ["a", "b"]}}},
     "additionalProperties": False},
    {"type": "object", "properties": {"n": {"type": "number", "minimum": 3}}},  # jsonschema's
])
@pytest.mark.parametrize("value", [
    {"answer": "x"}, {"answer": 1}, {}, [], {"n": 1}, {"n": 1.0}, {"n": True}, {"n": 2.5},
    {"tags": ["a", "c"]}, {"tags": ["a"]}, {"extra": 1}, {"n": "1"},
])
def test_the_small_checker_agrees_with_jsonschema(schema: dict[str, Any], value: Any) -> None:
    import jsonschema

    content = json.dumps(value)
    params = {"response_format": {"type": "json_schema",
                                  "json_schema": {"name": "s", "schema": schema}}}
    expected = jsonschema.Draft202012Validator(schema).is_valid(value)
    assert measure.validity(params, reply(content)) is expected
