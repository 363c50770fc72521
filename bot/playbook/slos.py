"""The SLO and budget file (``slos.yaml``): objectives in user terms, budgets in dollars.

An objective says what a user of a route should get, as a share of good requests
over a period (default 30 days)::

    objectives:
      chat-ttft:   {route: chat, sli: ttft, threshold: 1.5s, target: 95%}   # p95 TTFT < 1.5 s
      chat-errors: {route: chat, sli: errors, target: 99.5%}
      chat-json:   {route: chat, sli: schema_valid, target: 99.5%}

SLIs: ``ttft`` and ``latency`` (a request is good when faster than ``threshold``,
which must be a bucket bound of the histogram, or the count would be a guess),
``errors`` (requests that failed), ``fallbacks`` (requests a fallback served),
``schema_valid`` (answers that parse), ``refusals`` (answers that refuse).
A budget caps spend per hour or per day, by route or model. ``slo render``
(``bot.playbook.slo_rules``) turns the file into Prometheus recording rules,
multi-window multi-burn-rate alerts and promtool tests.

One typed model is the schema (``slos_json_schema()`` exports it); the file is read
with the playbook loader's YAML machinery, so a mistake is reported as
``file:line: field: what`` and nothing half-read is used.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.base.errors import InputError, PlaybookError, Problem
from bot.base.names import check_name
from bot.playbook.engine_profiles import (
    DEFAULT,
    PROFILES,
    Profile,
    profile,
)
from bot.playbook.promql_check import parse_error
from bot.playbook.schema import Duration, IncidentClass
from bot.playbook.yamlsource import parse_yaml, validation_problems

Sli = Literal["ttft", "latency", "errors", "fallbacks", "schema_valid", "refusals", "ratio"]
# A counter selector: a metric name and optional matchers (``sli: ratio`` wraps it in
# ``sum(rate(...[window]))``, so a whole expression would not do).
_SELECTOR = re.compile(r"^\s*[a-zA-Z_:][a-zA-Z0-9_:]*\s*(\{.*\})?\s*$", re.S)
SHIPPED_EXAMPLE = Path(__file__).with_name("slos.example.yaml")

# The class of incident an objective's burn opens: the shipped playbooks match it.
SLI_CLASS: dict[str, str] = {
    "ttft": "latency_spike", "latency": "latency_spike", "errors": "provider_errors",
    "fallbacks": "provider_errors", "schema_valid": "malformed_output",
    "refusals": "quality_degradation",
}
_SECONDS = re.compile(r"^\s*(\d+(\.\d+)?)\s*(ms|s)\s*$")
_PERCENT = re.compile(r"^\s*(\d+(\.\d+)?)\s*%\s*$")
_NAME = r"^[a-z0-9][a-z0-9_-]*$"


def plain_name(v: str | None) -> str | None:
    """A route, model, customer or environment as the alerts will carry it: its labels
    and annotations are Go templates to Prometheus, so ``{{``/``}}`` would run when
    the alert fires; a control character or stray space would be a different name."""
    if v is None:
        return v
    if "{{" in v or "}}" in v:
        raise ValueError(f"{v[:60]!r} holds a template delimiter ({{{{ or }}}}): Prometheus "
                         "would run it as a template when the alert fires; give the plain name")
    return check_name(v)


def _share(value: Any) -> float:
    """``99.5%`` or ``0.995``: a share strictly between 0 and 1."""
    if isinstance(value, str):
        m = _PERCENT.match(value)
        if not m:
            raise ValueError(f"a target is a percent like '99.5%' or a share like 0.995, "
                             f"got {value!r}")
        value = float(m.group(1)) / 100
    if not isinstance(value, int | float) or not 0 < float(value) < 1:
        raise ValueError(f"a target must be above 0% and below 100%, got {value!r}")
    return float(value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(_Strict):
    route: str = Field(min_length=1, description="the route (LiteLLM model_name) it is about")
    sli: Sli
    target: float = Field(description="share of good requests, e.g. '99.5%' or 0.995")
    threshold: float | None = Field(
        default=None, description="ttft and latency: a request is good when faster, in "
        "seconds ('1.5s', '500ms' or a number)")
    incident_class: IncidentClass | None = Field(
        default=None, description="what its burn opens (default: by the SLI)")
    # sli: ratio, your own counters: bad (or good) requests over total requests.
    bad: str | None = Field(default=None, description="ratio: a counter of bad requests")
    good: str | None = Field(default=None, description="ratio: a counter of good requests")
    total: str | None = Field(default=None, description="ratio: a counter of all requests")
    description: str = ""

    @field_validator("route")
    @classmethod
    def _route(cls, v: str) -> str:
        return str(plain_name(v))

    @field_validator("bad", "good", "total")
    @classmethod
    def _selector(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _SELECTOR.match(v):
            raise ValueError(f"{v!r} is not a counter selector like "
                             "'http_requests_total{route=\"chat\"}' (the rules add the rate)")
        problem = parse_error(v)
        if problem:
            raise ValueError(f"not valid PromQL: {problem}")
        return v.strip()

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, v: Any) -> float:
        return _share(v)

    @field_validator("threshold", mode="before")
    @classmethod
    def _seconds(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _SECONDS.match(v)
            if not m:
                raise ValueError(f"a threshold is like '1.5s' or '500ms', got {v!r}")
            return float(m.group(1)) / (1000 if m.group(3) == "ms" else 1)
        return v

    @field_validator("sli")
    @classmethod
    def _countable(cls, v: str, info: ValidationInfo) -> str:
        why = _source(info).supports(v) if v != "ratio" else None
        if why:
            raise ValueError(why)
        return v

    @field_validator("threshold")
    @classmethod
    def _a_bound(cls, v: float | None, info: ValidationInfo) -> float | None:
        sli = info.data.get("sli")
        if v is None or sli not in ("ttft", "latency"):
            return v
        problem = threshold_problem(_source(info), sli, v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _threshold(self) -> Objective:
        if self.sli == "ratio":
            if self.total is None or (self.bad is None) == (self.good is None):
                raise ValueError("a ratio objective needs total and one of bad or good")
            if self.incident_class is None:
                raise ValueError("a ratio objective needs incident_class (what its burn is)")
        elif (self.bad, self.good, self.total) != (None, None, None):
            raise ValueError(f"bad, good and total are for sli: ratio, not {self.sli}")
        timed = self.sli in ("ttft", "latency")
        if timed and self.threshold is None:
            raise ValueError(f"a {self.sli} objective needs a threshold (e.g. 1.5s)")
        if not timed and self.threshold is not None:
            raise ValueError(f"a {self.sli} objective takes no threshold")
        return self

    @property
    def klass(self) -> str:
        return str(self.incident_class or SLI_CLASS[self.sli])

    @property
    def error_budget(self) -> float:
        return 1 - self.target


class Budget(_Strict):
    route: str | None = Field(default=None, description="spend of this route")
    model: str | None = Field(default=None, description="spend on this model (deployment)")
    customer: str | None = Field(default=None, description="spend of this caller (LiteLLM's "
                                 "end_user label)")
    per_customer: bool = Field(default=False, description="the limit holds for each caller "
                               "apart; the alert names the caller (label customer)")
    environment: str | None = Field(default=None, description="only series with this "
                                    "environment label (set by your scrape config)")
    per_hour_usd: float | None = Field(default=None, gt=0)
    per_day_usd: float | None = Field(default=None, gt=0)

    @field_validator("route", "model", "customer", "environment")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return plain_name(v)

    @model_validator(mode="after")
    def _says_something(self) -> Budget:
        if self.per_hour_usd is None and self.per_day_usd is None:
            raise ValueError("a budget needs per_hour_usd, per_day_usd or both")
        if self.route is None and self.model is None and self.customer is None \
                and not self.per_customer:
            raise ValueError("a budget is for a route, a model, a customer, or per_customer")
        if self.customer is not None and self.per_customer:
            raise ValueError("give customer (one caller) or per_customer: true (each), not both")
        return self

    @property
    def subject(self) -> str:
        """What the budget is for, in words (a per_customer alert names its caller too)."""
        parts = [f"route {self.route}" if self.route else "", f"model {self.model}"
                 if self.model else "", f"customer {self.customer}" if self.customer else "",
                 f"in {self.environment}" if self.environment else ""]
        return " ".join(p for p in parts if p)


def _source(info: ValidationInfo) -> Profile:
    """The source a file is validated against (load_slos_text passes the file's own)."""
    return PROFILES.get((info.context or {}).get("source", DEFAULT), PROFILES[DEFAULT])


def threshold_problem(source: Profile, sli: str, v: float) -> str | None:
    """Why ``v`` cannot be counted from ``source``'s ``sli`` histogram (None: it can)."""
    hist = source.histogram(sli)
    if hist is None or hist.bounds is None:
        return None  # supports() says the former; the SDK sets the latter
    if any(abs(v - b) < 1e-9 for b in hist.bounds):
        return None
    return (f"{v:g}s is not a bucket bound of {hist.names[0]} ({source.name}; the count "
            f"would be a guess); use one of {', '.join(f'{b:g}s' for b in hist.bounds)}")


class SloFile(_Strict):
    version: Literal[1] = 1
    source: str = Field(default=DEFAULT, description="whose metrics the rules read: "
                        + ", ".join(PROFILES) + " (bot.playbook.engine_profiles)")
    period: Duration = Field(default=timedelta(days=30), description="the error budget's period")
    objectives: dict[str, Objective] = Field(default_factory=dict)
    budgets: dict[str, Budget] = Field(default_factory=dict)

    @field_validator("objectives", "budgets")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(_NAME, name):
                raise ValueError(f"name {name!r} must be lowercase letters, digits, - or _")
        return v

    @field_validator("budgets")
    @classmethod
    def _a_gateway(cls, v: dict[str, Budget], info: ValidationInfo) -> dict[str, Budget]:
        # The rule `on` applies when another source is asked for on the command line.
        if v and (why := _source(info).supports("spend")):
            raise ValueError(why)
        return v

    @field_validator("source")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"no metrics source {v[:40]!r}; sources: {', '.join(PROFILES)}")
        return v

    @model_validator(mode="after")
    def _something(self) -> SloFile:
        if not self.objectives and not self.budgets:
            raise ValueError("the file has no objectives and no budgets")
        return self

    def on(self, source: str) -> SloFile:
        """This file read against another source: every objective must be countable
        there (InputError naming the objective and why not)."""
        target = profile(source)
        for name, o in self.objectives.items():
            why = target.supports(o.sli) if o.sli != "ratio" else None
            if why is None and o.threshold is not None:
                why = threshold_problem(target, o.sli, o.threshold)
            if why:
                raise InputError(f"objective {name}: {why}",
                                 hint="change the objective, or render it from another source")
        if self.budgets and (why := target.supports("spend")):
            raise InputError(why)
        return self.model_copy(update={"source": target.name})


class SloError(PlaybookError):
    what = "SLO file"
    next_step = "fix the file; nothing was rendered"


def load_slos_text(text: str, file: str = "<string>") -> SloFile:
    try:
        doc = parse_yaml(text, file)
    except PlaybookError as exc:
        raise SloError(problems=list(exc.problems)) from None
    if not isinstance(doc.data, dict):
        raise SloError(problems=[Problem(file, 1, "", "an SLO file is a YAML mapping "
                                         "(version, period, objectives, budgets)")])
    source = doc.data.get("source", DEFAULT)
    try:
        # The source decides which bucket bounds a threshold must be one of.
        return SloFile.model_validate(doc.data, context={
            "source": source if source in PROFILES else DEFAULT})
    except ValidationError as exc:
        raise SloError(problems=validation_problems(exc, doc, SloFile)) from None


def load_slos(path: str | Path) -> SloFile:
    where = Path(path)
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as exc:
        raise SloError(problems=[Problem(str(where), None, "",
                                         f"cannot read it: {exc.strerror or exc}")]) from None
    return load_slos_text(text, str(where))


def slos_json_schema() -> dict[str, Any]:
    return SloFile.model_json_schema()
