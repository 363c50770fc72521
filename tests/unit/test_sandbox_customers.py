"""The sandbox gateway's per-caller limits (the serving policy's ``customers`` section)
and its per-caller metrics in LiteLLM's names (``end_user``)."""

from __future__ import annotations

from pathlib import Path

from test_sandbox import Sandbox

POLICY = """\
version: 1
routes:
  chat: {max_output_tokens: 400}
customers:
  runaway: {max_output_tokens: 16, max_requests_per_minute: 5}
  gone: {blocked: true}
  quiet: {max_output_tokens: null}
"""


def _tokens(responses) -> list[int]:
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json()["usage"]["completion_tokens"] for r in responses]


def test_a_customer_cap_applies_to_that_caller_only(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    sb.write_policy(POLICY)
    capped = _tokens(sb.chat(n=5, user="runaway"))
    others = _tokens(sb.chat(n=20, user="acme")) + _tokens(sb.chat(n=5, user="quiet"))
    assert max(capped) <= 16
    assert max(others) > 16 and max(others) <= 400  # the route's cap still holds


def test_requests_per_minute_and_block_answer_429_and_403_naming_the_customer(
        tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    sb.write_policy(POLICY)
    answers = sb.chat(n=7, user="runaway")
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 2
    assert "'runaway' is over its limit of 5 requests per minute" in answers[-1].json()[
        "error"]["message"]
    sb.clock.now += 61  # the window slides
    assert sb.chat(user="runaway")[0].status_code == 200
    blocked = sb.chat(user="gone")[0]
    assert blocked.status_code == 403 and "'gone' is blocked" in blocked.text
    assert sb.chat()[0].status_code == 200  # no caller named: no caller limits


def test_tokens_per_minute_counts_input_and_output(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    sb.write_policy("version: 1\nroutes: {chat: {}}\ncustomers:\n"
                    "  big: {max_tokens_per_minute: 500}\n")
    codes = [r.status_code for r in sb.chat(n=6, user="big")]
    # Each request is ~100 input tokens plus its answer: a few fit, then 429.
    assert codes[0] == 200 and 429 in codes and codes.index(429) <= 5
    assert all(c == 429 for c in codes[codes.index(429):])


def test_per_caller_metrics_carry_end_user(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path)
    sb.write_policy(POLICY)
    sb.chat(n=3, user="acme")
    sb.chat(n=2, user="gone")
    sb.chat(n=1)
    assert sb.metric("litellm_proxy_total_requests_metric_total", end_user="acme",
                     status_code="200") == 3
    assert sb.metric("litellm_proxy_total_requests_metric_total", end_user="gone",
                     status_code="403") == 2
    assert sb.metric("litellm_spend_metric_total", end_user="acme") > 0
    assert sb.metric("litellm_spend_metric_total", end_user="gone") == 0
    assert sb.metric("litellm_output_tokens_metric_total", end_user="") > 0  # no caller
    assert sb.metric("litellm_proxy_failed_requests_metric_total", exception_status="403") == 2
