"""The generic HTTP driver, against ``httpx.MockTransport`` (no network)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from actions.base import ServingDriver
from actions.drivers.http import HttpDriver, HttpTargetConfig
from bot.base.errors import DriverError, PartialApplyError

TOKEN = "s3cr3t-token-value"
CONFIG = """
driver: http
name: gateway-api
base_url: https://gateway.test
timeout: 5s
retries: 2
headers: {Authorization: "Bearer {{ env.GATEWAY_TOKEN }}"}
read: {method: GET, url: /policy}
actions:
  cap_output_length:
    method: PUT
    url: "/routes/{{ route }}/limits"
    body: {max_output_tokens: "{{ values.max_output_tokens }}", note: "{{ action }}: {{ reason }}"}
  fallback: {method: POST, url: "/routes/{{ route }}/fallback", json_values: true}
  default: {method: PATCH, url: "/routes/{{ route }}", json_values: true}
"""


def config(**overrides: Any) -> HttpTargetConfig:
    data = yaml.safe_load(CONFIG)
    data.update(overrides)
    return HttpTargetConfig.model_validate(data)


class Recorder:
    """A MockTransport handler: records requests, answers from a script."""

    def __init__(self, answer=None) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = answer or (lambda req, n: httpx.Response(200, json={}))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request, len(self.requests))

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.path) for r in self.requests]


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def driver(handler, cfg: HttpTargetConfig | None = None, sleep: FakeSleep | None = None):
    return HttpDriver(
        cfg or config(),
        env={"GATEWAY_TOKEN": TOKEN},
        transport=httpx.MockTransport(handler),
        sleep=sleep or FakeSleep(),
    )


def run(coro):
    return asyncio.run(coro)


def test_is_a_serving_driver_named_from_config() -> None:
    d = driver(Recorder())
    assert isinstance(d, ServingDriver)
    assert d.name == "gateway-api"


def test_templated_url_body_and_credential_header() -> None:
    rec = Recorder()
    run(
        driver(rec).write(
            {"chat": {"max_output_tokens": 256}}, reason="INC-3", action="cap_output_length"
        )
    )
    (req,) = rec.requests
    assert (req.method, str(req.url)) == ("PUT", "https://gateway.test/routes/chat/limits")
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Content-Type"] == "application/json"
    # A leaf that is one expression keeps its type; mixed text renders to a string.
    assert json.loads(req.content) == {"max_output_tokens": 256, "note": "cap_output_length: INC-3"}


def test_json_values_and_default_action_one_request_per_route_in_order() -> None:
    rec = Recorder()
    updates = {"b": {"enabled": False}, "a": {"enabled": False, "fallback": None}}
    run(driver(rec).write(updates, reason="r", action="disable_route"))
    assert rec.calls() == [("PATCH", "/routes/b"), ("PATCH", "/routes/a")]
    assert [json.loads(r.content) for r in rec.requests] == [updates["b"], updates["a"]]


def test_route_is_percent_encoded_in_the_url() -> None:
    rec = Recorder()
    run(driver(rec).write({"a/../admin": {"enabled": False}}, reason="r", action="disable_route"))
    assert rec.requests[0].url.raw_path == b"/routes/a%2F..%2Fadmin"


def test_server_error_halfway_raises_partial_apply_with_done_routes() -> None:
    rec = Recorder(lambda req, n: httpx.Response(500 if n == 3 else 200, text="boom"))
    updates = {r: {"max_output_tokens": 64} for r in ("r1", "r2", "r3", "r4")}
    with pytest.raises(PartialApplyError) as exc:
        run(driver(rec).write(updates, reason="r", action="cap_output_length"))
    assert exc.value.applied == ["r1", "r2"]
    assert "route 'r3'" in exc.value.message
    assert "PUT https://gateway.test/routes/r3/limits" in exc.value.message
    assert "500" in exc.value.message
    assert len(rec.requests) == 3  # 500 is not retried, r4 never sent


def test_first_route_failing_reports_nothing_applied() -> None:
    rec = Recorder(lambda req, n: httpx.Response(400, text="bad field"))
    with pytest.raises(PartialApplyError) as exc:
        run(driver(rec).write({"x": {"enabled": False}}, reason="r", action="disable_route"))
    assert exc.value.applied == []
    assert "400" in exc.value.message and "bad field" in exc.value.message


def test_timeout_is_retried_then_reported_for_idempotent_method() -> None:
    def slow(req, n):
        raise httpx.ReadTimeout("timed out", request=req)

    rec, sleep = Recorder(slow), FakeSleep()
    with pytest.raises(PartialApplyError, match="timed out after 5s") as exc:
        run(
            driver(rec, sleep=sleep).write(
                {"chat": {"max_output_tokens": 9}}, reason="r", action="cap_output_length"
            )
        )
    assert exc.value.applied == []
    assert len(rec.requests) == 3  # 1 + retries
    assert sleep.delays == sorted(sleep.delays) and len(sleep.delays) == 2
    assert sleep.delays[1] > sleep.delays[0]  # backoff grows


@pytest.mark.parametrize("status", [502, 503, 504])
def test_retryable_status_then_success_on_put(status: int) -> None:
    rec = Recorder(lambda req, n: httpx.Response(status if n == 1 else 200))
    run(
        driver(rec).write(
            {"chat": {"max_output_tokens": 9}}, reason="r", action="cap_output_length"
        )
    )
    assert rec.calls() == [("PUT", "/routes/chat/limits")] * 2


@pytest.mark.parametrize(("action", "method"), [("disable_route", "PATCH"), ("fallback", "POST")])
def test_non_idempotent_methods_are_never_retried(action: str, method: str) -> None:
    rec = Recorder(lambda req, n: httpx.Response(503))
    with pytest.raises(PartialApplyError, match="503"):
        run(driver(rec).write({"chat": {"fallback": "small"}}, reason="r", action=action))
    assert [m for m, _ in rec.calls()] == [method]


def test_connect_error_on_put_is_retried_and_named() -> None:
    def refused(req, n):
        raise httpx.ConnectError("Connection refused", request=req)

    rec = Recorder(refused)
    with pytest.raises(PartialApplyError, match="could not connect") as exc:
        run(
            driver(rec).write(
                {"c": {"max_output_tokens": 1}}, reason="r", action="cap_output_length"
            )
        )
    assert len(rec.requests) == 3
    assert "base_url" in (exc.value.hint or "")


def test_credentials_never_appear_in_error_messages() -> None:
    cfg = config(
        actions={"default": {"method": "PUT", "url": "/r/{{ route }}?key={{ env.GATEWAY_TOKEN }}"}}
    )
    # The gateway echoes the credentials back in its error body.
    rec = Recorder(lambda req, n: httpx.Response(401, text=f"bad token {TOKEN} in {req.url}"))
    with pytest.raises(DriverError) as exc:
        run(
            driver(rec, cfg).write({"chat": {"enabled": False}}, reason="r", action="disable_route")
        )
    text = str(exc.value)
    assert TOKEN not in text
    assert "/r/chat?key=***" in text  # the method and URL are still named, masked
    assert rec.requests[0].url.params["key"] == TOKEN  # ...while the request had it


def test_missing_env_variable_is_a_template_error_without_side_effects() -> None:
    rec = Recorder()
    d = HttpDriver(config(), env={}, transport=httpx.MockTransport(rec))
    with pytest.raises(DriverError, match="GATEWAY_TOKEN"):
        run(d.write({"a": {"enabled": False}, "b": {"enabled": False}}, reason="r", action="x"))
    assert rec.requests == []


def test_undefined_value_in_body_fails_before_any_request() -> None:
    rec = Recorder()
    updates = {"a": {"max_output_tokens": 5}, "b": {"enabled": False}}
    with pytest.raises(DriverError, match="max_output_tokens"):
        run(driver(rec).write(updates, reason="r", action="cap_output_length"))
    assert rec.requests == []


def test_no_request_for_action_without_default() -> None:
    cfg = config(actions={"cap_output_length": {"method": "PUT", "url": "/x"}})
    with pytest.raises(DriverError, match="no request configured for action 'fallback'"):
        run(driver(Recorder(), cfg).write({"a": {"fallback": "b"}}, reason="r", action="fallback"))


def test_read_validates_the_policy_document() -> None:
    doc = {"version": 1, "routes": {"chat": {"max_output_tokens": 100}}}
    rec = Recorder(lambda req, n: httpx.Response(200, json=doc))
    policy = run(driver(rec).read())
    assert policy.get("chat", "max_output_tokens") == 100
    assert rec.calls() == [("GET", "/policy")]
    assert rec.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("response", "needle"),
    [
        (httpx.Response(200, text="<html>"), "not JSON"),
        (
            httpx.Response(200, json={"routes": {"c": {"max_concurrency": 0}}}),
            "routes.c.max_concurrency",
        ),
        (httpx.Response(404, text="nope"), "404"),
    ],
)
def test_read_rejects_anything_but_a_policy(response: httpx.Response, needle: str) -> None:
    with pytest.raises(DriverError, match=needle) as exc:
        run(driver(Recorder(lambda req, n: response)).read())
    assert "GET https://gateway.test/policy" in exc.value.message


def test_read_retries_on_503() -> None:
    rec = Recorder(lambda req, n: httpx.Response(503) if n < 3 else httpx.Response(200, json={}))
    assert run(driver(rec).read()).routes == {}
    assert len(rec.requests) == 3


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"base_url": "gateway.test"}, "base_url"),
        ({"retries": -1}, "retries"),
        ({"timeout": "soon"}, "timeout"),
        ({"verbose": True}, "verbose"),
        ({"read": {"url": "/p/{{ oops"}}, "template syntax"),
        ({"actions": {"default": {"url": "/x", "body": {}, "json_values": True}}}, "not both"),
        ({"actions": {"default": {"method": "TRACE", "url": "/x"}}}, "method"),
    ],
)
def test_bad_config_is_rejected_naming_the_field(override: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        config(**override)


def test_a_fenced_write_sends_an_idempotency_key_per_run_op_and_route() -> None:
    from actions.fencing import Fence, fenced

    rec = Recorder()

    async def go() -> None:
        with fenced(Fence(7, "RUN-3", "apply")):
            await driver(rec).write({"a": {"enabled": False}, "b": {"enabled": False}},
                                    reason="r", action="disable_route")
        await driver(rec).write({"a": {"enabled": True}}, reason="r", action="disable_route")
    run(go())
    keys = [r.headers.get("Idempotency-Key") for r in rec.requests]
    assert keys == ["RUN-3:apply:a", "RUN-3:apply:b", None]  # unfenced: no key
    assert rec.requests[0].headers["X-LLM-Incident-Fencing-Token"] == "7"


def test_caller_limits_are_refused_before_any_request() -> None:
    rec = Recorder()
    with pytest.raises(DriverError, match="route changes only, not caller limits") as exc:
        run(driver(rec).write({"chat": {"enabled": False},
                               "customer/acme": {"blocked": True}},
                              reason="r", action="block_customer"))
    assert rec.requests == [] and "policy_file or litellm" in (exc.value.hint or "")
