"""Drill scenarios: what a drill breaks, what it expects to happen, and how it stops.

A scenario (``drills/scenarios/<class>.yaml``) rehearses one incident class:

- ``target``: the practice sandbox (default) or a staging gateway (``base_url`` required).
- ``setup``: serving-policy values set before the drill, and a warm-up during which
  traffic runs on them (so, e.g., the alert can name the last good prompt version).
- ``traffic``: the routes, the rate, and optionally the callers (``customers``).
- ``injection``: the fault posted to the target's fault API (``POST /faults``: kind,
  route, optional model / prompt-version / customer scope, the kind's parameters) plus any
  policy change that goes with it (the "release" that introduced the fault).
- ``expect``: the alert that must fire, the playbook the bot must propose, and the
  step that cures it (default: the playbook's first step).
- ``deadlines``: detect, acknowledge, mitigate, measured from the injection.
- ``steady_state``: a PromQL query and expectation that must hold before the
  injection and again after the rollback.
- ``rollback``: how the injection is undone. Required: a drill that cannot be
  undone is not a drill.
- ``stop_conditions``: PromQL bounds that abort the drill (and roll back at once)
  when the target degrades past what the drill may cost.

Queries read the rules pack's recording rules (``llm_incident:*``), so a drill
against a fast copy of the rules (``drills.alert_rules.render_rules``) uses its
short windows too. The pydantic models are the one schema; ``load_scenario``
reports problems with file, line and field, like the playbook loader (it reuses
``bot.playbook.yamlsource``), and raises ``ScenarioError`` (a ``PlaybookError``).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actions.policy import RoutePolicy
from bot.base.errors import PlaybookError, Problem
from bot.playbook.promql_check import parse_error
from bot.playbook.schema import Duration, IncidentClass, format_duration
from bot.playbook.yamlsource import parse_yaml, suggest, validation_problems

FaultKind = Literal[
    "token_blowup",
    "latency_spike",
    "malformed_output",
    "context_overflow",
    "safety_flags",
    "refusals",
    "provider_errors",
    "bad_routing",
    "quality_drop",
]
# The parameters each fault kind takes, besides its scope (route, model, customer,
# prompt_version). The sandbox's fault models (drills/sandbox/faults.py) validate
# the values; a test keeps these names in step with them. Kept here so loading a
# scenario never imports the sandbox's web stack.
FAULT_PARAMS: dict[str, tuple[str, ...]] = {
    "token_blowup": ("factor",),
    "latency_spike": ("seconds", "saturation_concurrency"),
    "malformed_output": ("ratio",),
    "context_overflow": ("ratio", "extra_input_tokens"),
    "safety_flags": ("ratio",),
    "refusals": ("ratio",),
    "provider_errors": ("ratio", "statuses"),
    "bad_routing": ("ratio", "to_model"),
    "quality_drop": ("drop",),
}
_EXPECT = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?\d+(\.\d+)?([eE]-?\d+)?)\s*$")
_OPS = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


def _promql(query: str) -> str:
    # Parsed as Prometheus would, so a typo fails at load, not mid-drill.
    problem = parse_error(query)
    if problem:
        raise ValueError(f"not valid PromQL: {problem}")
    return query


def _comparison(value: str, what: str) -> str:
    """Same form as a playbook's ``verify.expect``: ``'< 0.05'``, ``'>= 1'``."""
    if not isinstance(value, str) or not _EXPECT.match(value):
        raise ValueError(f"{what} must look like '< 0.05' or '>= 1', got {value!r}")
    return value


def _split(expr: str) -> tuple[str, float]:
    m = _EXPECT.match(expr)
    assert m  # validated on load
    return m.group(1), float(m.group(2))


# --- parts -------------------------------------------------------------------------


class _Strict(BaseModel):
    # Unknown keys are errors, as in playbooks: a typo must not be silently ignored.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Target(_Strict):
    kind: Literal["sandbox", "staging"] = "sandbox"
    base_url: str | None = Field(
        default=None, description="gateway URL; the drill runner supplies the sandbox's"
    )

    @model_validator(mode="after")
    def _staging_needs_url(self) -> Target:
        if self.kind == "staging" and not self.base_url:
            raise ValueError("a staging target needs base_url (the gateway to drill against)")
        if self.base_url is not None and not _URL.match(self.base_url):
            raise ValueError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        return self


def _policy_patch(value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{route: {field: value}}``, each field one the serving policy knows."""
    for route, fields in value.items():
        if not isinstance(fields, dict) or not fields:
            raise ValueError(f"policy for route '{route}' must map policy fields to values")
        try:
            RoutePolicy.model_validate(fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = suggest(where, list(RoutePolicy.model_fields), "policy fields")
                raise ValueError(f"policy.{route}: unknown field '{where}' ({hint})") from None
            raise ValueError(f"policy.{route}.{where}: {err['msg']}") from None
    return value


class Setup(_Strict):
    policy: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="{route: {policy field: value}} set before the drill"
    )
    warmup: Duration = Field(
        default=timedelta(0), description="traffic on the setup before injecting"
    )

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return _policy_patch(v)


class Traffic(_Strict):
    routes: list[str] = Field(min_length=1)
    rate_per_s: float = Field(gt=0, le=100, description="requests per second during the drill")
    customers: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="callers (the body's user) and their shares")


class Fault(_Strict):
    kind: FaultKind
    route: str = Field(min_length=1)
    model: str | None = Field(default=None, description="only requests served by this model")
    prompt_version: str | None = Field(default=None, description="only this prompt version")
    customer: str | None = Field(default=None, description="only this caller's requests")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_params(self) -> Fault:
        allowed = FAULT_PARAMS[self.kind]
        for name in self.params:
            if name not in allowed:
                hint = suggest(name, allowed, f"parameters of {self.kind}")
                raise ValueError(f"unknown parameter '{name}' for fault {self.kind} ({hint})")
        return self

    def body(self) -> dict[str, Any]:
        """The JSON body for the target's ``POST /faults``."""
        scope = {"model": self.model, "prompt_version": self.prompt_version,
                 "customer": self.customer}
        return {
            "kind": self.kind,
            "route": self.route,
            **{k: v for k, v in scope.items() if v is not None},
            **self.params,
        }


class ReleaseSpec(_Strict):
    """The fault ships as a release the bot's release guard rolls out as a canary on the
    fault's route; the drill rehearses the judge catching it before full rollout."""

    prompt_version: str | None = Field(default=None, description="the canary's prompt version")
    model: str | None = Field(default=None, description="the canary's model")
    steps: list[int] = Field(default=[5, 25, 50, 100], description="percent per step")
    bake: Duration = Field(default=timedelta(minutes=10), description="per step, drill time")
    auto_promote: bool = Field(
        default=True, description="a passing step moves on by itself, so a miss reaches 100%")
    alert_delay: Duration = Field(
        default=timedelta(minutes=10),
        description="how long a post-rollout alert would take: the report's what-if")

    @model_validator(mode="after")
    def _changes_something(self) -> ReleaseSpec:
        if not (self.prompt_version or self.model):
            raise ValueError("a release changes the prompt_version, the model, or both")
        if self.steps != sorted(set(self.steps)) or self.steps[-1:] != [100] or \
                len(self.steps) < 2 or self.steps[0] <= 0:
            raise ValueError(f"steps must rise from above 0 to 100, got {self.steps}")
        return self


class Injection(_Strict):
    fault: Fault
    policy: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="policy changes that ship with the fault (a release)"
    )
    release: ReleaseSpec | None = Field(
        default=None, description="ship the fault as a canary release the bot judges")

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return _policy_patch(v)


class Expectation(_Strict):
    alertname: str = Field(min_length=1)
    playbook: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    step: str | None = Field(default=None, description="the curing step; default: the first")


class Deadlines(_Strict):
    """Measured from the injection. Each must be after the one before it."""

    detect: Duration
    acknowledge: Duration
    mitigate: Duration

    @model_validator(mode="after")
    def _possible(self) -> Deadlines:
        for name in ("detect", "acknowledge", "mitigate"):
            if getattr(self, name).total_seconds() <= 0:
                raise ValueError(f"deadline '{name}' must be more than zero")
        if self.acknowledge < self.detect:
            raise ValueError(
                f"acknowledge ({format_duration(self.acknowledge)}) comes before detect "
                f"({format_duration(self.detect)}): nobody can acknowledge an undetected incident"
            )
        if self.mitigate <= self.detect:
            raise ValueError(
                f"mitigate ({format_duration(self.mitigate)}) must come after detect "
                f"({format_duration(self.detect)})"
            )
        if self.mitigate < self.acknowledge:
            raise ValueError(
                f"mitigate ({format_duration(self.mitigate)}) comes before acknowledge "
                f"({format_duration(self.acknowledge)})"
            )
        return self


class SteadyState(_Strict):
    query: str = Field(min_length=1, description="PromQL instant query")
    expect: str = Field(description="comparison every sample must pass, e.g. '< 0.05'")
    tolerance: float = Field(default=0.0, ge=0, description="slack added in the metric's favour")

    @field_validator("query")
    @classmethod
    def _check_query(cls, v: str) -> str:
        return _promql(v)

    @field_validator("expect")
    @classmethod
    def _check_expect(cls, v: str) -> str:
        return _comparison(v, "expect")

    def holds(self, value: float) -> bool:
        """Does ``value`` pass ``expect``, allowing ``tolerance`` of slack?"""
        op, bound = _split(self.expect)
        if op in ("<", "<="):
            bound += self.tolerance
        elif op in (">", ">="):
            bound -= self.tolerance
        elif op == "==":
            return abs(value - bound) <= self.tolerance
        return _OPS[op](value, bound)


class StopCondition(_Strict):
    query: str = Field(min_length=1, description="PromQL instant query")
    abort_if: str = Field(description="abort when any sample passes this, e.g. '> 0.5'")
    reason: str = Field(min_length=1, description="what the bound protects, for the report")

    @field_validator("query")
    @classmethod
    def _check_query(cls, v: str) -> str:
        return _promql(v)

    @field_validator("abort_if")
    @classmethod
    def _check_bound(cls, v: str) -> str:
        return _comparison(v, "abort_if")

    def tripped(self, value: float) -> bool:
        op, bound = _split(self.abort_if)
        return _OPS[op](value, bound)


class Rollback(_Strict):
    remove_fault: bool = Field(default=True, description="DELETE the injected fault")
    restore_policy: bool = Field(
        default=True, description="put back the serving policy as it was before the drill"
    )
    within: Duration = Field(
        default=timedelta(minutes=5), description="steady state must return within this"
    )

    @model_validator(mode="after")
    def _undoes(self) -> Rollback:
        if not self.remove_fault:
            raise ValueError("a rollback must remove the injected fault (remove_fault: true)")
        if self.within.total_seconds() <= 0:
            raise ValueError("rollback.within must be more than zero")
        return self


class Scenario(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="default: the file name")
    class_: IncidentClass = Field(alias="class")
    title: str = Field(min_length=1)
    description: str = ""
    target: Target = Field(default_factory=Target)
    setup: Setup = Field(default_factory=Setup)
    traffic: Traffic
    injection: Injection
    expect: Expectation
    deadlines: Deadlines
    steady_state: SteadyState
    rollback: Rollback
    stop_conditions: list[StopCondition] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.injection.fault.route not in self.traffic.routes:
            raise ValueError(
                f"the fault is on route '{self.injection.fault.route}' but traffic only "
                f"goes to {', '.join(self.traffic.routes)}: nothing would trigger it"
            )
        if self.injection.release is not None:
            self._release_consistent(self.injection.release)
        changes_policy = self.setup.policy or self.injection.policy
        if changes_policy and not self.rollback.restore_policy:
            raise ValueError(
                "setup or injection changes the serving policy, so the rollback must "
                "restore it (rollback.restore_policy: true)"
            )
        return self


    def _release_consistent(self, release: ReleaseSpec) -> None:
        fault = self.injection.fault
        if self.target.kind != "sandbox":
            raise ValueError("a release drill runs on the sandbox: its canary is judged on "
                             "the sandbox's own numbers")
        if self.injection.policy:
            raise ValueError("a release drill's policy change is the release itself; "
                             "leave injection.policy empty")
        for key in ("prompt_version", "model"):
            if getattr(release, key) != getattr(fault, key):
                raise ValueError(f"the fault must hit only the canary: injection.fault.{key} "
                                 f"({getattr(fault, key)}) must equal injection.release.{key} "
                                 f"({getattr(release, key)})")
        baseline = self.setup.policy.get(fault.route, {}).get("prompt_version")
        if release.prompt_version and not baseline:
            raise ValueError(f"setup.policy.{fault.route}.prompt_version must name the "
                             "baseline the canary is compared with")
        if release.prompt_version == baseline:
            raise ValueError(f"the release's prompt_version is the baseline ({baseline})")


# --- loading -----------------------------------------------------------------------


@dataclass
class ScenarioError(PlaybookError):
    """One or more drill scenario files are invalid."""

    what: ClassVar[str] = "drill scenario"
    next_step: ClassVar[str] = "fix the file; `.problems` lists every problem with its line"


def load_scenario(path: str | Path) -> Scenario:
    """Parse and validate one scenario file; raise ``ScenarioError`` naming file and line."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(problems=[Problem(file, None, "", f"cannot read: {exc}")]) from None
    try:
        doc = parse_yaml(text, file)
    except PlaybookError as exc:
        raise ScenarioError(problems=exc.problems) from None
    if not isinstance(doc.data, dict):
        raise ScenarioError(
            problems=[
                Problem(file, 1, "", "a scenario must be a mapping of keys (class, title, ...)")
            ]
        )
    data = dict(doc.data)
    data.setdefault("id", path.stem.replace("_", "-"))
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(problems=validation_problems(exc, doc, Scenario)) from None


def load_scenarios(directory: str | Path) -> dict[str, Scenario]:
    """Every ``*.yaml`` scenario under ``directory`` by id; all problems are reported at once."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ScenarioError(problems=[Problem(str(directory), None, "", "not a directory")])
    found: dict[str, Scenario] = {}
    where: dict[str, str] = {}
    problems: list[Problem] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            problems += exc.problems
            continue
        if scenario.id in found:
            problems.append(
                Problem(str(path), 1, "id", f"duplicate scenario id '{scenario.id}' "
                        f"(also in {where[scenario.id]})", "give each scenario its own id")
            )  # fmt: skip
            continue
        found[scenario.id], where[scenario.id] = scenario, str(path)
    if problems:
        raise ScenarioError(problems=problems)
    return found


SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
