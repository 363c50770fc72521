"""What measuring each response costs the LiteLLM hook, and how many series it adds.

Run: ``python bench/bench_hook_metrics.py [--calls N]``. Prints:

- the added cost per request of ``PolicyHook.async_log_success_event`` (the policy
  file's stat, the label folding, the counters and histograms), p50/p99 in µs, for a
  free-text answer and for a 2 KB JSON answer validated against a ``json_schema``;
- the series the hook's families hold (worst case: every verdict fires) after calls for 50 routes x 3 prompt
  versions (current, canary, one rolled back) x 1,000 customers the policy lists,
  plus 1,000 callers and versions it does not list (folded to ``other``), counted
  from the registry (every exported sample, histogram buckets included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import litellm  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bot_litellm_hook.hook import PolicyHook  # noqa: E402
from bot_litellm_hook.metrics import MAX_CUSTOMERS, HookMetrics  # noqa: E402

ROUTES, CUSTOMERS = 50, 1000
SCHEMA = {"type": "object", "required": ["items"], "properties": {"items": {
    "type": "array", "items": {"type": "object", "required": ["id", "text"],
                               "properties": {"id": {"type": "integer"},
                                              "text": {"type": "string"}}}}}}
T0 = datetime(2026, 1, 1)


def policy_doc(old: bool) -> dict[str, Any]:
    routes = {f"route-{r}": {"prompt_version": f"v{r}-old" if old else f"v{r}-cur",
                             "canary": {"prompt_version": f"v{r}-can", "weight": 0.1}}
              for r in range(ROUTES)}
    return {"version": 1, "routes": routes,
            "customers": {f"cust-{c}": {"max_output_tokens": 1000} for c in range(CUSTOMERS)}}


def call(route: str, pv: str, customer: str | None, canary: bool, params: dict[str, Any]
         ) -> dict[str, Any]:
    decision: dict[str, Any] = {"route": route, "model": route,
                                "reason": "canary" if canary else "as requested"}
    if customer:
        decision["customer"] = customer
    return {"litellm_params": {"metadata": {"prompt_version": pv, "llm_incident": decision}},
            "standard_logging_object": {"model_group": route}, "optional_params": params}


def answer(content: str) -> litellm.ModelResponse:
    return litellm.ModelResponse(choices=[{"message": {"content": content},
                                           "finish_reason": "stop"}],
                                 usage={"prompt_tokens": 5, "completion_tokens": 500,
                                        "total_tokens": 505})


async def timed(hook: PolicyHook, kwargs: dict[str, Any], response: Any, n: int) -> list[float]:
    out = []
    end = T0 + timedelta(seconds=1)
    for _ in range(n):
        began = time.perf_counter_ns()
        await hook.async_log_success_event(kwargs, response, T0, end)
        out.append((time.perf_counter_ns() - began) / 1000)
    return out


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1]


async def main(calls: int) -> None:
    folder = Path(tempfile.mkdtemp())
    policy = folder / "policy.yaml"
    policy.write_text(json.dumps(policy_doc(old=True)))
    reg = CollectorRegistry()
    hook = PolicyHook(policy, seed=1, metrics=HookMetrics(reg))
    hook.signals().success(hook.current(), call("route-0", "v0-old", None, False, {}),
                           answer("x"), T0, T0)  # the old versions are seen once, then
    policy.write_text(json.dumps(policy_doc(old=False)))  # rolled forward to v-cur
    hook.current()

    items = [{"id": i, "text": "lorem ipsum dolor sit amet " * 2} for i in range(26)]
    big = json.dumps({"items": items})
    assert 1900 < len(big) < 2300, len(big)  # a 2 KB answer
    text_kw = call("route-1", "v1-cur", "cust-1", False, {})
    json_kw = call("route-1", "v1-cur", "cust-1", False, {"response_format": {
        "type": "json_schema", "json_schema": {"name": "items", "schema": SCHEMA}}})
    for name, kw, resp in (("free text", text_kw, answer("hello " * 300)),
                           ("2 KB JSON + schema", json_kw, answer(big))):
        await timed(hook, kw, resp, 200)  # warm up (validator cache, label children)
        xs = await timed(hook, kw, resp, calls)
        print(f"{name:>20}: p50 {pct(xs, 50):6.1f} µs  p99 {pct(xs, 99):6.1f} µs  "
              f"({calls} calls)")

    # Series: every route x version x listed customer, then unlisted ones (folded).
    # The worst case: answers refused and filtered, others malformed, requests also
    # overflowing once, a third of them misrouted, so every family holds every series.
    bad = litellm.ModelResponse(choices=[{"message": {"content": "I'm sorry, but I can't"},
                                          "finish_reason": "content_filter"}],
                                usage={"prompt_tokens": 5, "completion_tokens": 3,
                                       "total_tokens": 8})
    broken = answer('{"cut": ')  # a refusal is not also counted malformed: a call of its own
    asks_json = {"response_format": {"type": "json_object"}}
    overflow = litellm.ContextWindowExceededError(message="too long", model="m",
                                                  llm_provider="openai")
    sig, fed = hook.signals(), 0
    began = time.monotonic()
    for r in range(ROUTES):
        route = f"route-{r}"
        for c in range(CUSTOMERS):
            for pv, canary in ((f"v{r}-cur", False), (f"v{r}-can", True), (f"v{r}-old", False)):
                for who, version in ((f"cust-{c}", pv), (f"stranger-{c}", f"x-{c}")):
                    kw = call(route, version, who, canary, asks_json)
                    if c % 3 == 0:
                        kw["standard_logging_object"]["model_group"] = f"route-{(r + 1) % 50}"
                    sig.success(hook.current(), kw, bad, T0, T0 + timedelta(seconds=1))
                    sig.success(hook.current(), kw, broken, T0, T0 + timedelta(seconds=1))
                    sig.failure(hook.current(), kw["litellm_params"], overflow)
                    fed += 3
    # Every exported sample is a series Prometheus stores (``_created`` ones included).
    series = sum(len(m.samples) for m in reg.collect())
    by_family = {m.name: len(m.samples) for m in reg.collect()}
    created = sum(1 for m in reg.collect() for s in m.samples if s.name.endswith("_created"))
    print(f"series after {fed:,} synthetic calls ({ROUTES} routes x 3 versions x {CUSTOMERS:,} "
          f"listed customers + as many unlisted, {time.monotonic() - began:.0f} s): {series:,} "
          f"(customer label capped at {MAX_CUSTOMERS} policy customers); {created:,} of them "
          "are _created samples (off with PROMETHEUS_DISABLE_CREATED_SERIES=True)")
    for name, n in sorted(by_family.items()):
        print(f"  {name}: {n:,}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    asyncio.run(main(parser.parse_args().calls))
