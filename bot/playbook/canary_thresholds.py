"""The canary thresholds file: how much worse a release's canary may be than its
baseline, per signal, before the release guard's judge says so.

One typed model is the schema (``thresholds_json_schema()`` exports it); the file
is read with the playbook loader's YAML machinery, so a mistake is reported as
``file:line: field: what`` and a bad file never replaces the thresholds in force.
The shipped defaults (``canary_thresholds.yaml`` beside this module) hold for
every route; a route may override single signals.

Each threshold is *relative*: ``max_change: 0.25`` on ``output_tokens`` fails a
canary whose mean output is more than 25% above the baseline's, if the
difference is also statistically significant (``alpha``) and both sides have at
least ``min_samples`` requests. What each signal measures, and which direction is
worse, is fixed in ``bot.core.canary_judge.SIGNALS``.

The same file holds the release policy's approval rules (``approvals``): whether
promoting past a step, or rolling back, needs a second person, by default and per
route. Rolling back needs nobody by default: it is the safe direction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.base.errors import PlaybookError, Problem
from bot.playbook.yamlsource import parse_yaml, validation_problems

SignalName = Literal[
    "output_tokens", "cost_per_request", "schema_valid", "refusal", "safety_flag",
    "ttft_p95", "latency_p95", "error", "fallback", "quality_score",
]
SHIPPED = Path(__file__).with_name("canary_thresholds.yaml")


class Threshold(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_change: float = Field(gt=0, description="relative change in the worse direction "
                                                 "that fails the signal (0.25 = 25%)")
    min_samples: int = Field(default=200, ge=1, description="requests each side needs")
    critical: bool = Field(default=False, description="a failure rolls back at once")


class ThresholdOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_change: float | None = Field(default=None, gt=0)
    min_samples: int | None = Field(default=None, ge=1)
    critical: bool | None = None


Approval = Literal["none", "two_person"]


class RouteApprovals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promote: Approval | None = None
    rollback: Approval | None = None


class Approvals(BaseModel):
    """Who must agree before a release's run moves traffic. Past that, the ``release``
    verb and the Slack buttons already need the owner or an on-call engineer."""

    model_config = ConfigDict(extra="forbid")

    promote: Approval = Field(default="none", description="two_person: a second person "
                              "confirms each promotion (and auto_promote is refused)")
    rollback: Approval = Field(default="none", description="two_person: a person confirms a "
                               "rollback someone else (or the judge) asked for")
    routes: dict[str, RouteApprovals] = Field(default_factory=dict)

    def for_route(self, route: str) -> tuple[Approval, Approval]:
        """(promote, rollback) on ``route``."""
        o = self.routes.get(route, RouteApprovals())
        return o.promote or self.promote, o.rollback or self.rollback


class CanaryThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    alpha: float = Field(default=0.01, gt=0, lt=0.5,
                         description="one-sided significance level of each signal's test")
    signals: dict[SignalName, Threshold]
    routes: dict[str, dict[SignalName, ThresholdOverride]] = Field(default_factory=dict)
    approvals: Approvals = Field(default_factory=Approvals)

    def for_route(self, route: str) -> dict[str, Threshold]:
        """Every signal's threshold on ``route``: the defaults, with its overrides."""
        out: dict[str, Threshold] = {str(k): v for k, v in self.signals.items()}
        for name, override in self.routes.get(route, {}).items():
            base = out.get(name) or Threshold(max_change=override.max_change or 1.0)
            out[name] = base.model_copy(update=override.model_dump(exclude_none=True))
        return out


class ThresholdsError(PlaybookError):
    what = "canary thresholds file"
    next_step = "fix the file; the thresholds in force stay until it loads"


def load_thresholds_text(text: str, file: str = "<string>") -> CanaryThresholds:
    try:
        doc = parse_yaml(text, file)
    except PlaybookError as exc:
        raise ThresholdsError(problems=list(exc.problems)) from None
    if not isinstance(doc.data, dict):
        raise ThresholdsError(problems=[Problem(file, 1, "", "the thresholds file is a YAML "
                                                "mapping (version, alpha, signals, routes)")])
    try:
        return CanaryThresholds.model_validate(doc.data)
    except ValidationError as exc:
        raise ThresholdsError(problems=validation_problems(exc, doc, CanaryThresholds)) from None


def load_thresholds(path: str | Path | None = None) -> CanaryThresholds:
    """The thresholds at ``path``, or the shipped defaults."""
    where = Path(path) if path is not None else SHIPPED
    try:
        text = where.read_text()
    except OSError as exc:
        raise ThresholdsError(problems=[Problem(str(where), None, "",
                                                f"cannot read it: {exc.strerror or exc}")]) from None
    return load_thresholds_text(text, str(where))


def thresholds_json_schema() -> dict[str, Any]:
    return CanaryThresholds.model_json_schema()
