"""One set of series, whatever serves the route: the normalised recording rules.

``slo render --source NAME`` writes, beside the SLO rules, a group that maps the
source's own names (``bot.playbook.engine_profiles``) onto series named the same for
every engine, each labelled ``route``:

====================================================  ==================================
``llm_incident:requests:rate5m``                       requests per second
``llm_incident:errors:rate5m``                         failed requests per second
``llm_incident:output_tokens:rate5m``                  output tokens per second
``llm_incident:ttft_seconds:p95``                      time to first token, 95th percentile
``llm_incident:latency_seconds:p95``                   end-to-end latency, 95th percentile
``llm_incident:inter_token_latency_seconds:p95``       time between tokens, 95th percentile
``llm_incident:kv_cache_usage:ratio``                  KV cache in use, 0..1 (the fullest)
``llm_incident:requests_waiting``                      requests queued for the engine
====================================================  ==================================

Dashboards, diagnose queries and verification can read these on any engine. A series a
source does not export is not written. A name two releases spell differently is read
under either spelling (``or``), so vLLM before and after its renames both work; the
generated promtool tests feed the oldest spelling.
"""

from __future__ import annotations

from typing import Any

from bot.playbook.engine_profiles import Histogram, Profile, sample_series

PREFIX = "llm_incident:"


def _routed(expr: str, label: str) -> str:
    # Every engine's route label becomes `route` (a no-op when it already is).
    if label == "route":
        return expr
    return f'label_replace({expr}, "route", "$1", "{label}", "(.+)")'


def _either(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else " or ".join(f"({x})" for x in parts)


def _rate(names: tuple[str, ...], label: str, matchers: str = "") -> str:
    sel = f"{{{matchers}}}" if matchers else ""
    return _either([f"sum by (route) ({_routed(f'rate({n}{sel}[5m])', label)})"
                    for n in names])


def _p95(h: Histogram, label: str) -> str:
    return _either([
        "histogram_quantile(0.95, sum by (route, le) ("
        + _routed(f"rate({n}_bucket[5m])", label) + "))" for n in h.names])


def normalised_rules(p: Profile) -> list[dict[str, Any]]:
    label = p.route_label
    rules: list[tuple[str, str]] = []
    if p.requests is not None:
        rules.append(("requests:rate5m", _rate((p.requests.name,), label)))
    if p.errors is not None:
        rules.append(("errors:rate5m", _rate((p.errors.name,), label, p.errors.matchers)))
    if p.output_tokens:
        rules.append(("output_tokens:rate5m", _rate(p.output_tokens, label)))
    for name, hist in (("ttft_seconds", p.ttft), ("latency_seconds", p.latency),
                       ("inter_token_latency_seconds", p.itl)):
        if hist is not None:
            rules.append((f"{name}:p95", _p95(hist, hist.label or label)))
    engine = p.engine_label or label
    if p.kv_cache:
        rules.append(("kv_cache_usage:ratio", _either(
            [f"max by (route) ({_routed(n, engine)})" for n in p.kv_cache])))
    if p.waiting:
        rules.append(("requests_waiting", _either(
            [f"sum by (route) ({_routed(n, engine)})" for n in p.waiting])))
    return [{"record": PREFIX + name, "expr": expr} for name, expr in rules]


def normalised_group(p: Profile) -> dict[str, Any]:
    return {"name": f"llm-incident-normalised-{p.name}", "rules": normalised_rules(p)}


def normalised_tests(p: Profile, rules_file: str) -> dict[str, Any]:
    """promtool tests in the source's own names: two routes for five minutes, and what
    each normalised series reads then."""
    label = p.route_label
    series: list[dict[str, str]] = []
    expect: list[dict[str, Any]] = []

    def feed(name: str, labels: dict[str, str], values: str) -> None:
        pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
        series.append({"series": f"{name}{{{pairs}}}", "values": values})

    def want(name: str, value: float) -> None:
        # In thousandths, rounded: a rate's extrapolation is not exact to the last bit.
        expect.append({"expr": f"round({PREFIX}{name} * 1000)",
                       "exp_samples": [{"labels": '{route="chat"}',
                                        "value": round(value * 1000)}]})

    chat = {label: "chat"}
    if p.requests is not None:
        # 600 requests a minute on chat, 60 of them failed (10 per second, 1 failed).
        if p.errors is None:
            feed(p.requests.name, chat, "0+600x10")
        for name, labels, n in (sample_series(p.requests, p.errors, chat, 600, 60)
                                if p.errors is not None else ()):
            feed(name, labels, f"0+{n}x10")
        want("requests:rate5m", 10)
        if p.errors is not None:
            want("errors:rate5m", 1)
    if p.output_tokens:
        feed(p.output_tokens[-1], chat, "0+30000x10")
        want("output_tokens:rate5m", 500)
    for name, hist in (("ttft_seconds", p.ttft), ("latency_seconds", p.latency),
                       ("inter_token_latency_seconds", p.itl)):
        if hist is None:
            continue
        bounds = hist.bounds or (0.5, 1.0, 2.5)
        # Every request under the second-highest finite bound: p95 lies in the bucket
        # below it, so the expected value is fixed by interpolation.
        lo, hi = bounds[-3], bounds[-2]
        where = {hist.label or label: "chat"}
        for le, per_min in ((lo, 0), (hi, 600), (float("inf"), 600)):
            text = "+Inf" if le == float("inf") else repr(float(le))
            feed(f"{hist.names[-1]}_bucket", where | {"le": text}, f"0+{per_min}x10")
        if p.requests is None or f"{hist.names[-1]}_count" != p.requests.name:
            feed(f"{hist.names[-1]}_count", where, "0+600x10")  # (OTel: fed above)
        want(f"{name}:p95", lo + (hi - lo) * 0.95)
    engine = {p.engine_label or label: "chat"}
    if p.kv_cache:
        feed(p.kv_cache[-1], engine, "0.25x10")
        want("kv_cache_usage:ratio", 0.25)
    if p.waiting:
        feed(p.waiting[-1], engine, "3x10")
        want("requests_waiting", 3)
    return {"rule_files": [rules_file], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series,
                       "promql_expr_test": [{**e, "eval_time": "9m"} for e in expect]}]}
