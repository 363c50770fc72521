"""``slo render``: an SLO file as Prometheus recording rules, burn-rate alerts and tests.

For every objective, one recording rule per window gives its error ratio (the share
of bad requests) as ``llm_incident_slo:error_ratio:rate<window>{slo=...}``. Its
alerts are the SRE workbook's multi-window, multi-burn-rate pairs, a window both
long enough to matter and short enough to reset once fixed:

==========  =================================  ==========  ===========
alert       windows (long and short)           burn rate   severity
==========  =================================  ==========  ===========
page        1h and 5m, or 6h and 30m           14.4, 6     critical
ticket      1d and 2h, or 3d and 6h            3, 1        warning
==========  =================================  ==========  ===========

(14.4 is 2% of a 30-day budget spent in one hour.) Alerts carry ``incident_class``,
``route``, ``slo`` and ``severity`` labels, so the shipped playbooks match them
like any alert of their class. A budget becomes an alert on the route's (or
model's) spend over the last hour or day.

The metrics are the gateway's (LiteLLM's names, which the sandbox speaks) and the
app family's (``llm_app_*``: TTFT by route, schema validity, refusals). Each
objective also gets promtool tests: a bad stretch fires the page and the ticket,
a good one fires nothing. ``scale`` divides every window (a 60x copy turns 1h into
1m) for tests and drills on fast traffic.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from bot.playbook.engine_profiles import Counter, Profile, profile, sample_series
from bot.playbook.engine_rules import normalised_group, normalised_tests
from bot.playbook.render import promql_escape
from bot.playbook.slos import Budget, Objective, SloFile

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# (name, severity, [(long, short, burn rate), ...])
ALERTS = (
    ("LLMErrorBudgetBurnFast", "critical", (("1h", "5m", 14.4), ("6h", "30m", 6.0))),
    ("LLMErrorBudgetBurnSlow", "warning", (("1d", "2h", 3.0), ("3d", "6h", 1.0))),
)
SECONDS = {"m": 60, "h": 3600, "d": 86400}
RATIO = "llm_incident_slo:error_ratio:rate"


def literal(text: str) -> str:
    """``text`` as a Go template that prints it as is: Prometheus expands an alert's
    labels and annotations as templates when it fires, so a ``{{`` in a route, a
    model or an objective's description would run as code (``{{ query "up" }}``).
    A lone ``}}`` outside an action is printed as it is, so ``{{`` is the one to quote."""
    return text.replace("{{", '{{ "{{" }}')


def _literal_values(values: dict[str, str]) -> dict[str, str]:
    return {k: literal(v) for k, v in values.items()}


def _seconds(window: str) -> int:
    return int(window[:-1]) * SECONDS[window[-1]]


def scaled(window: str, scale: float) -> str:
    """``window`` divided by ``scale``, in Prometheus's duration syntax."""
    if scale == 1:
        return window
    return f"{max(1, round(_seconds(window) / scale))}s"


def _le(seconds: float) -> str:
    # Python clients print a bound as 1.0, Go clients as 1: match either.
    text = f"{seconds:g}"
    return text.replace(".", "\\\\.") + ("(\\\\.0+)?" if "." not in text else "0*")


@dataclass(frozen=True)
class Sli:
    """An objective's bad and total request rates over a window, as PromQL."""

    bad: str  # may be "total - good" for histograms
    total: str

    def ratio(self) -> str:
        return f"({self.bad}) / ({self.total})"


def sli(o: Objective, window: str, source: Profile | None = None) -> Sli:
    """The objective's bad and total rates on ``source``'s names (the file's default)."""
    p = source or profile("sandbox")
    r = promql_escape(o.route)
    app = f'route="{r}"'

    def rate(metric: str, matchers: str) -> str:
        return f"sum(rate({metric}{{{matchers}}}[{window}]))"

    def counted(c: Counter | None) -> str:
        assert c is not None  # the file was validated against this source (supports)
        return rate(c.name, ",".join(m for m in (f'{p.route_label}="{r}"', c.matchers) if m))

    if o.sli == "errors":
        return Sli(counted(p.errors), counted(p.requests))
    if o.sli == "fallbacks":
        return Sli(counted(p.fallbacks), counted(p.requests))
    if o.sli in ("latency", "ttft"):
        hist = p.histogram(o.sli)
        assert o.threshold is not None and hist is not None
        m = f'{hist.label or p.route_label}="{r}"'

        def either(suffix: str, matchers: str) -> str:
            # Renamed across releases: whichever spelling the engine exports counts.
            parts = [rate(f"{n}{suffix}", matchers) for n in hist.names]
            return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"

        total = either("_count", m)
        good = either("_bucket", f'{m},le=~"{_le(o.threshold)}"')
        return Sli(f"{total} - {good}", total)
    if o.sli == "ratio":
        assert o.total is not None
        total = f"sum(rate({o.total}[{window}]))"
        bad = f"sum(rate({o.bad}[{window}]))" if o.bad else \
            f"{total} - sum(rate({o.good}[{window}]))"
        return Sli(bad, total)
    judged = {"schema_valid": "llm_app_output_invalid_total",
              "refusals": "llm_app_refusals_total"}[o.sli]
    return Sli(rate(judged, app), rate("llm_app_responses_total", app))


def _labels(name: str, o: Objective) -> dict[str, str]:
    return {"slo": name, "route": o.route, "sli": o.sli}


def objective_rules(name: str, o: Objective, scale: float = 1,
                    source: Profile | None = None) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"record": f"{RATIO}{w}", "expr": sli(o, scaled(w, scale), source).ratio(),
         "labels": _labels(name, o)} for w in WINDOWS]
    budget = round(o.error_budget, 10)
    for alert, severity, pairs in ALERTS:
        sel = f'{{slo="{promql_escape(name)}"}}'
        expr = "\nor\n".join(
            f"({RATIO}{long}{sel} > ({burn:g} * {budget:g})\n"
            f" and {RATIO}{short}{sel} > ({burn:g} * {budget:g}))"
            for long, short, burn in pairs)
        rules.append({
            "alert": alert, "expr": expr,
            "labels": _literal_values({**_labels(name, o), "severity": severity,
                                       "incident_class": o.klass}),
            "annotations": _literal_values(alert_annotations(name, o, severity))})
    return rules


def alert_annotations(name: str, o: Objective, severity: str) -> dict[str, str]:
    """The annotations as the alert carries them once fired (the rule quotes them)."""
    what = {"ttft": f"time to first token over {_thr(o)}",
            "latency": f"responses slower than {_thr(o)}",
            "errors": "failed requests", "fallbacks": "requests a fallback served",
            "schema_valid": "answers that do not parse", "refusals": "refused answers",
            "ratio": "bad requests"}[o.sli]
    return {"summary": f"{name}: {o.route} is burning its error budget "
                       f"({'page' if severity == 'critical' else 'ticket'})",
            "description": f"too many {what} on {o.route} for an objective of "
                           f"{o.target:.4g} good over the period: at this burn rate its "
                           "error budget runs out early",
            **({"slo_description": o.description} if o.description else {})}


def _thr(o: Objective) -> str:
    return f"{o.threshold:g}s" if o.threshold else ""


def spend(b: Budget, window: str) -> str:
    """The budget's spend over ``window``, in dollars, as PromQL. With ``per_customer``,
    one series per caller, labelled ``customer``: the policy's name for it, which on
    LiteLLM is ``KEYHASH/END_USER`` (an end user is somebody only within the key that
    sent it; the body's ``user`` is the caller's to choose) and ``END_USER`` where the
    source has no key hashes (the sandbox)."""
    pairs = [(k, v) for k, v in (("requested_model", b.route), ("model", b.model),
                                 *_customer_matchers(b.customer),
                                 ("environment", b.environment)) if v]
    matchers = ",".join(f'{k}="{promql_escape(v)}"' for k, v in pairs)
    if not b.per_customer:
        return f"sum(increase(litellm_spend_metric_total{{{matchers}}}[{window}]))"
    matchers = ",".join([*([matchers] if matchers else []), 'end_user!=""'])
    joined = (f'label_join(increase(litellm_spend_metric_total{{{matchers}}}[{window}]), '
              '"customer", "/", "hashed_api_key", "end_user")')
    return f'sum by (customer) (label_replace({joined}, "customer", "$1", "customer", "/(.+)"))'


def _customer_matchers(customer: str | None) -> tuple[tuple[str, str | None], ...]:
    """One caller's series: ``KEYHASH/END_USER`` is that key's end user; a plain id is an
    end user as the source names it (the sandbox's ``user``)."""
    if customer and "/" in customer:
        key, end_user = customer.split("/", 1)
        return (("hashed_api_key", key), ("end_user", end_user))
    return (("end_user", customer),)


def budget_labels(name: str, b: Budget) -> dict[str, str]:
    """The labels a budget's alert carries (a per_customer alert adds ``customer``)."""
    return {"budget": name, "incident_class": "runaway_cost",
            **{k: v for k, v in (("route", b.route), ("model", b.model),
                                 ("customer", b.customer), ("environment", b.environment))
               if v}}


CUSTOMER = "{{ $labels.customer }}"


def _whose(b: Budget, quote: Callable[[str], str], customer: str) -> str:
    if not b.per_customer:
        return quote(b.subject)
    return f"customer {customer}" + (f" on {quote(b.subject)}" if b.subject else "")


def budget_annotations(name: str, b: Budget, limit: float, window: str, scale: float = 1, *,
                       quote: Callable[[str], str] = literal,
                       customer: str = CUSTOMER) -> dict[str, str]:
    """As the rule writes them (user text quoted; Prometheus fills the caller in from
    the alert's own label, the one template here), or, with ``quote`` the identity
    and the caller named, as the fired alert carries them."""
    return {"summary": f"{name}: spend over ${limit:g} per "
                       f"{'hour' if window == '1h' else 'day'}",
            "description": f"spend of {_whose(b, quote, customer)} in the last {window} "
                           f"is over its budget of ${limit:g}",
            # The same budget as dollars per (real) hour, for the playbook's
            # verification; a fast copy's short window allows more per hour.
            "hourly_budget_usd": f"{limit * scale / (1 if window == '1h' else 24):g}"}


def budget_rules(name: str, b: Budget, scale: float = 1) -> list[dict[str, Any]]:
    labels = budget_labels(name, b)
    rules = []
    for limit, window, severity in ((b.per_hour_usd, "1h", "critical"),
                                    (b.per_day_usd, "1d", "warning")):
        if limit is None:
            continue
        rules.append({
            "alert": "LLMSpendBudgetExceeded",
            "expr": f"{spend(b, scaled(window, scale))} > {limit:g}",
            "labels": _literal_values({**labels, "severity": severity, "window": window}),
            "annotations": budget_annotations(name, b, limit, window, scale)})
    return rules


def render_rules(slos: SloFile, scale: float = 1) -> dict[str, Any]:
    source = profile(slos.source)
    groups = [{"name": f"llm-incident-slo-{name}",
               "rules": objective_rules(name, o, scale, source)}
              for name, o in slos.objectives.items()]
    if slos.budgets:
        groups.append({"name": "llm-incident-budgets", "rules": [
            r for name, b in slos.budgets.items() for r in budget_rules(name, b, scale)]})
    groups.append(normalised_group(source))  # the same series on every engine
    return {"groups": groups}


# --- promtool tests -----------------------------------------------------------------


def _series(o: Objective, bad_share: float, minutes: int,
            p: Profile) -> list[dict[str, str]]:
    """Input series for ``minutes`` of 600 requests a minute, ``bad_share`` of them bad,
    in the source's own names and labels."""
    per_min, bad = 600, round(600 * bad_share)
    r = o.route

    def feed(name: str, labels: dict[str, str], per: int) -> dict[str, str]:
        return {"series": _series_text(name, labels), "values": f"0+{per}x{minutes}"}

    if o.sli in ("errors", "fallbacks"):
        part = p.errors if o.sli == "errors" else p.fallbacks
        assert part is not None and p.requests is not None
        return [feed(name, labels, n) for name, labels, n in
                sample_series(p.requests, part, {p.route_label: r}, per_min, bad)]
    if o.sli in ("latency", "ttft"):
        hist = p.histogram(o.sli)
        assert o.threshold is not None and hist is not None
        labels = {hist.label or p.route_label: r}
        le = repr(float(o.threshold))  # as Python's client prints it
        name = hist.names[-1]  # the oldest spelling: the rules must read it too
        return [feed(f"{name}_count", labels, per_min),
                feed(f"{name}_bucket", labels | {"le": le}, per_min - bad)]
    if o.sli == "ratio":
        return _ratio_series(o, per_min, bad, minutes)
    metric = "llm_app_output_invalid_total" if o.sli == "schema_valid" else \
        "llm_app_refusals_total"
    return [{"series": f'llm_app_responses_total{{route="{r}",model="m1",prompt_version="v1"}}',
             "values": f"0+{per_min}x{minutes}"},
            {"series": f'{metric}{{route="{r}",model="m1",prompt_version="v1"}}',
             "values": f"0+{bad}x{minutes}"}]


def render_tests(slos: SloFile, rules_file: str) -> dict[str, Any]:
    """promtool tests: per objective, a bad hour pages and tickets; a good one is quiet.
    Written for the unscaled rules."""
    tests = []
    source = profile(slos.source)
    for name, o in slos.objectives.items():
        if o.sli == "ratio" and None in (_parsed(o.total or ""),
                                         _parsed(o.bad or o.good or "")):
            continue  # regex or negative matchers: no one series to feed it
        labels = {**_labels(name, o), "incident_class": o.klass}
        # 20x the budget: over the page's 14.4 burn in both windows after an hour. (With
        # a budget over 1/6, a loose objective, even all requests bad cannot page.)
        bad = min(1.0, o.error_budget * 20)
        pages = min(burn for _, _, burn in ALERTS[0][2]) * o.error_budget < bad
        tests.append({"interval": "1m", "input_series": _series(o, bad, 120, source),
                      "alert_rule_test": [
                          {"eval_time": "70m", "alertname": "LLMErrorBudgetBurnFast",
                           "exp_alerts": [{"exp_labels": {**labels, "severity": "critical"},
                                           "exp_annotations": alert_annotations(name, o, "critical")}]
                           if pages else []},
                          {"eval_time": "70m", "alertname": "LLMErrorBudgetBurnSlow",
                           "exp_alerts": [{"exp_labels": {**labels, "severity": "warning"},
                                           "exp_annotations": alert_annotations(name, o, "warning")}]}]})
        # Half the budget: inside the objective, nothing fires.
        tests.append({"interval": "1m", "input_series": _series(o, o.error_budget / 2, 120, source),
                      "alert_rule_test": [
                          {"eval_time": "70m", "alertname": "LLMErrorBudgetBurnFast",
                           "exp_alerts": []},
                          {"eval_time": "70m", "alertname": "LLMErrorBudgetBurnSlow",
                           "exp_alerts": []}]})
    for name, b in slos.budgets.items():
        tests.append(_budget_test(name, b))
    tests += normalised_tests(source, rules_file)["tests"]
    return {"rule_files": [rules_file], "evaluation_interval": "1m", "tests": tests}


def _budget_test(name: str, b: Budget) -> dict[str, Any]:
    """Spend at 1.5x the hourly budget for two and a half hours: the hourly alert fires,
    the daily one not yet (with only a daily budget: that budget twice an hour)."""
    labels = {k: v for k, v in (("requested_model", b.route), ("model", b.model or "m1"),
                                ("environment", b.environment)) if v}
    hourly = b.per_hour_usd is not None
    per_minute = (b.per_hour_usd or 0) * 1.5 / 60 if hourly else (b.per_day_usd or 0) * 2 / 60
    window = "1h" if hourly else "1d"
    rule = next(r for r in budget_rules(name, b) if r["labels"]["window"] == window)
    expected = {**rule["labels"], **budget_labels(name, b)}  # the labels as fired: unquoted
    limit = b.per_hour_usd if hourly else b.per_day_usd
    assert limit is not None
    annotations = budget_annotations(name, b, limit, window, quote=str, customer="c1")
    if b.per_customer:
        # Two callers: the one over its budget is named; the one at a fifteenth is not,
        # nor is another key's end user of the same name (a caller of its own).
        series = [(labels | {"end_user": "c1"}, per_minute), (labels | {"end_user": "c2"},
                                                             per_minute / 15),
                  (labels | {"hashed_api_key": "k1", "end_user": "c1"}, per_minute / 15)]
        expected = expected | {"customer": "c1"}
    else:
        series = [(labels | {k: v for k, v in _customer_matchers(b.customer) if v},
                   per_minute)]
    return {"interval": "1m",
            "input_series": [{"series": _series_text("litellm_spend_metric_total", ls),
                              "values": f"0+{rate:g}x180"} for ls, rate in series],
            "alert_rule_test": [{"eval_time": "150m", "alertname": "LLMSpendBudgetExceeded",
                                 "exp_alerts": [{"exp_labels": expected,
                                                 "exp_annotations": annotations}]}]}


def _ratio_series(o: Objective, per_min: int, bad: int, minutes: int) -> list[dict[str, str]]:
    """Series for ``sli: ratio``. When the part (good or bad) is the total with more
    matchers (one counter, split by a label), the rest of the total is fed as the same
    counter with those labels set otherwise, so the total selector sees both."""
    total, part = _parsed(o.total or ""), _parsed(o.bad or o.good or "")
    assert total is not None and part is not None  # render_tests checked
    part_count = bad if o.bad else per_min - bad
    if total[0] == part[0] and total[1].items() <= part[1].items():
        rest = {k: (v if k in total[1] else f"{v}-not") for k, v in part[1].items()}
        return [{"series": _series_text(part[0], part[1]), "values": f"0+{part_count}x{minutes}"},
                {"series": _series_text(total[0], rest),
                 "values": f"0+{per_min - part_count}x{minutes}"}]
    return [{"series": _series_text(*total), "values": f"0+{per_min}x{minutes}"},
            {"series": _series_text(*part), "values": f"0+{part_count}x{minutes}"}]


def _series_text(name: str, labels: dict[str, str]) -> str:
    # Values as the selector wrote them (escapes and all), so they read back the same.
    pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{pairs}}}" if pairs else name


_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"((?:[^"\\\\]|\\\\.)*)"\s*,?')


def _parsed(selector: str) -> tuple[str, dict[str, str]] | None:
    """(name, labels) of a selector with only ``=`` matchers; None otherwise."""
    name, _, rest = selector.partition("{")
    if not name.strip():
        return None
    labels: dict[str, str] = {}
    body, pos = rest.rstrip().removesuffix("}"), 0
    while pos < len(body):
        m = _MATCHER.match(body, pos)
        if m is None or m.group(2) != "=":
            return None
        labels[m.group(1)] = m.group(3)
        pos = m.end()
    return name.strip(), labels


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=100)
