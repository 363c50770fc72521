"""Where a drill's numbers and its alert come from: Prometheus, or the drill's own stand-in.

``Observer`` is what the drill runner asks: ``value(promql)`` for steady-state and
stop-condition queries, and ``firing(alertname)`` for the expected alert as a
normalised ``Alert``. Two implementations:

- ``StandInDetector``: no Prometheus configured. It scrapes the target's
  ``/metrics`` itself, computes the rules pack's signals (``drills.signals``),
  applies the expected alert's threshold (``threshold_of``) with a short ``for``,
  and builds the generic alert the rule would have sent (same labels, same
  annotations, the few Go-template forms the pack uses filled in). Every alert it
  makes says so in its ``drill_detector`` annotation, and the runner says so in
  the drill's output.
- ``PrometheusObserver``: a real Prometheus scrapes the target and evaluates the
  (fast copy of the) rules; the alert is read from ``/api/v1/alerts``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from bot.base.errors import DriverError, InputError
from bot.intake.alert import Alert
from drills.alert_rules import RULES_PATH, alert_rules, load_rules, threshold_of
from drills.signals import Scrapes, evaluate, parse_scrape, signal

STAND_IN_NOTE = (
    "no Prometheus configured: the drill's own detector stood in for Prometheus "
    "(it scraped the target's /metrics and applied the alert rule's threshold itself)"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
}  # fmt: skip
_RECORDED = re.compile(r"^\s*([a-zA-Z_:][\w:]*)\s*(>=|<=|>|<)")


class Observer(Protocol):
    description: str

    async def tick(self) -> None: ...

    async def value(self, promql: str) -> float | None: ...

    async def firing(self, alertname: str) -> Alert | None: ...


def _fingerprint(labels: Mapping[str, str]) -> str:
    text = "\x00".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- annotations: the handful of Go-template forms the rules pack uses ----------------

_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)


def render_annotation(text: str, labels: Mapping[str, str], value: float) -> str:
    def one(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if lm := re.fullmatch(r"\$labels\.(\w+)", expr):
            return labels.get(lm.group(1), "")
        if fm := re.fullmatch(r'printf\s+"(%[-+ #0-9.]*[dfgeE])"\s+\$value', expr):
            return fm.group(1) % value
        if expr == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if expr == "$value":
            return f"{value:g}"
        return ""  # a form the stand-in does not speak (queries): left out, never guessed

    return _TEMPLATE.sub(one, text).strip()


class StandInDetector:
    """Scrape ``base_url``/metrics; compute signals; fire the rule's alert after ``for_s``."""

    description = "the drill's own detector (stand-in for Prometheus)"

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float],
        window_s: float = 30.0,
        for_s: float = 5.0,
        model_routes: Mapping[str, str] | None = None,
        rules: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.clock = clock  # drill seconds
        self.scrapes = Scrapes(window=window_s)
        self.for_s = for_s
        self.model_routes = dict(model_routes or {})
        self.rules = alert_rules(rules if rules is not None else load_rules(RULES_PATH))
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def rule(self, alertname: str) -> Mapping[str, Any]:
        rule = self.rules.get(alertname)
        if rule is None:
            raise InputError(f"no alert rule named {alertname!r} in the rules pack",
                             hint=f"alerts: {', '.join(sorted(self.rules))}")
        return rule

    async def tick(self) -> None:
        """One scrape of the target (call it every scrape interval)."""
        try:
            resp = await self.client.get(f"{self.base_url}/metrics", timeout=10)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise DriverError(f"scraping {self.base_url}/metrics failed: {exc}",
                              hint="is the drill target up?") from exc
        self.scrapes.add(parse_scrape(resp.text, self.clock()))

    async def value(self, promql: str) -> float | None:
        return evaluate(promql, self.scrapes, self.model_routes)

    async def firing(self, alertname: str) -> Alert | None:
        rule = self.rule(alertname)
        m = _RECORDED.match(str(rule["expr"]))
        op, threshold = threshold_of(rule)
        if not m or m.group(2) != op:
            raise InputError(
                f"the drill's own detector cannot evaluate alert {alertname} "
                f"(its expr is not `recorded_signal {op} constant`)",
                hint="configure Prometheus (LLM_INCIDENT_PROMETHEUS_URL) for this scenario",
            )
        now = self.clock()
        series = signal(m.group(1), self.scrapes, self.model_routes)
        hot = {labels: v for labels, v in series.items() if _OPS[op](v, threshold)}
        for key in [k for k in self._pending if k[0] == alertname and k[1] not in hot]:
            del self._pending[key]
        for labels, v in sorted(hot.items(), key=lambda kv: -kv[1]):
            since = self._pending.setdefault((alertname, labels), now)
            if now - since >= self.for_s:
                return self._alert(rule, dict(labels), v)
        return None

    def _alert(self, rule: Mapping[str, Any], series: dict[str, str], value: float) -> Alert:
        labels = {**series, **{k: str(v) for k, v in (rule.get("labels") or {}).items()},
                  "alertname": str(rule["alert"])}
        annotations = {k: render_annotation(str(v), labels, value)
                       for k, v in (rule.get("annotations") or {}).items()}
        if "last_good_prompt_version" in annotations and labels.get("route"):
            annotations["last_good_prompt_version"] = self.last_good_prompt(
                labels["route"], labels.get("prompt_version", ""))
        annotations = {k: v for k, v in annotations.items() if v}
        annotations["drill_detector"] = "stand-in"
        return Alert(
            source="generic",
            fingerprint=_fingerprint(labels),
            status="firing",
            labels=labels,
            annotations=annotations,
            starts_at=datetime.now(UTC),
        )

    def last_good_prompt(self, route: str, bad: str) -> str:
        """The pack's query: the prompt version that served most of the route, other than ``bad``."""
        latest = self.scrapes.history[-1].samples if self.scrapes.history else {}
        totals: dict[str, float] = {}
        for labels, v in latest.get("llm_app_responses_total", {}).items():
            d = dict(labels)
            if d.get("route") == route and d.get("prompt_version") != bad:
                totals[d["prompt_version"]] = totals.get(d["prompt_version"], 0) + v
        return max(totals, key=lambda k: totals[k]) if totals else ""


class PrometheusObserver:
    """A real Prometheus: instant queries and ``/api/v1/alerts``."""

    description = "Prometheus"

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url.rstrip("/")
        self.client = client
        self.active_at: datetime | None = None  # when Prometheus saw the alert's condition

    async def tick(self) -> None:
        return None  # Prometheus scrapes on its own

    async def _get(self, path: str, **params: str) -> Any:
        try:
            resp = await self.client.get(f"{self.url}{path}", params=params, timeout=10)
            resp.raise_for_status()
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise DriverError(f"Prometheus at {self.url}: {path} failed: {exc}") from exc
        if body.get("status") != "success":
            raise DriverError(f"Prometheus at {self.url}: {path}: {body.get('error')}")
        return body["data"]

    async def value(self, promql: str) -> float | None:
        data = await self._get("/api/v1/query", query=promql)
        values = [float(r["value"][1]) for r in data.get("result", [])]
        return max(values) if values else None

    async def firing(self, alertname: str) -> Alert | None:
        data = await self._get("/api/v1/alerts")
        for a in data.get("alerts", []):
            labels = {str(k): str(v) for k, v in a.get("labels", {}).items()}
            if labels.get("alertname") != alertname or a.get("state") != "firing":
                continue
            active = datetime.fromisoformat(a["activeAt"].replace("Z", "+00:00"))
            self.active_at = active
            return Alert(
                source="generic",
                fingerprint=_fingerprint(labels),
                status="firing",
                labels=labels,
                annotations={str(k): str(v) for k, v in a.get("annotations", {}).items()},
                starts_at=active,
            )
        return None
