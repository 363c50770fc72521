"""Fault injection: the incidents the sandbox can suffer, and the mitigation that cures each.

A fault applies to requests that match its scope. ``route`` matches the route the
caller asked for; ``model`` matches the model that actually serves the request
(after traffic split and fallback); ``prompt_version`` matches the prompt version
in force on the requested route; ``customer`` matches the caller (the body's
``user``: one customer's agent loop asking for long answers is a ``token_blowup``
scoped to that customer). A null scope field matches everything. Scoping is
what makes the right mitigation work, exactly as in production:

``token_blowup`` (``factor``)
    Answers get ``factor`` times longer: output tokens and spend go up.
    Cure: ``cap_output_length`` (the policy cap clips every answer), or roll back
    the prompt when scoped to a ``prompt_version``.
``latency_spike`` (``seconds``, optional ``saturation_concurrency``)
    Time to first token grows by ``seconds``. With ``saturation_concurrency`` the
    engine only thrashes while the route admits more than that many concurrent
    requests (no ``max_concurrency`` counts as unlimited).
    Cure: ``lower_concurrency`` to at most ``saturation_concurrency``, or
    ``fallback`` to a route whose model is outside the fault's ``model`` scope.
``malformed_output`` (``ratio``)
    That share of answers to callers asking ``response_format: json_object`` is
    not valid JSON; counted in ``llm_app_output_invalid_total``.
    Cure: ``rollback_prompt`` when scoped to a prompt version (v42 -> v41), or
    ``fallback`` when scoped to a model.
``context_overflow`` (``ratio``, optional ``extra_input_tokens``)
    Without ``extra_input_tokens`` that share of requests is rejected 400
    ``context_length_exceeded``. With it, the prompt grows by that many tokens and
    the gateway rejects requests whose input plus reserved output exceeds the
    model's window - so a longer window or a smaller output reservation fits again.
    Cure: ``fallback`` to the long-context route, ``rollback_prompt``, or (with
    ``extra_input_tokens``) ``cap_output_length``.
``safety_flags`` / ``refusals`` (``ratio``)
    That share of answers is flagged by the safety classifier (``finish_reason:
    content_filter``) or is a refusal. Cure: ``rollback_prompt`` or ``fallback``.
``provider_errors`` (``ratio``, ``statuses``)
    That share of requests fails with one of ``statuses`` (500, 503, 429).
    Cure: ``fallback`` to a route served by another model (scope it to a model).
``bad_routing`` (``ratio``, optional ``to_model``)
    That share of requests meant for the scoped ``model`` is sent to ``to_model``
    (default: a configured model outside the route's split); counted in
    ``llm_app_misrouted_total``. Cure: ``shift_traffic`` away from the affected
    model, or ``fallback``/``disable_route``.
``quality_drop`` (``drop``)
    The sampled quality score falls by ``drop`` (``llm_app_quality_score``).
    Cure: ``rollback_prompt`` or ``fallback``.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

Ratio = Annotated[float, Field(gt=0, le=1)]


class _Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""  # assigned by the FaultBook
    route: str | None = None
    model: str | None = None
    prompt_version: str | None = None
    customer: str | None = None
    note: str | None = None

    def matches(self, route: str, model: str | None, prompt_version: str,
                customer: str | None = None) -> bool:
        return (
            (self.route is None or self.route == route)
            and (self.model is None or model is None or self.model == model)
            and (self.prompt_version is None or self.prompt_version == prompt_version)
            and (self.customer is None or self.customer == customer)
        )


class TokenBlowup(_Fault):
    kind: Literal["token_blowup"]
    factor: float = Field(default=4.0, gt=1, le=100)


class LatencySpike(_Fault):
    kind: Literal["latency_spike"]
    seconds: float = Field(default=5.0, gt=0, le=600)
    saturation_concurrency: int | None = Field(default=None, gt=0)

    def active_at(self, max_concurrency: int | None) -> bool:
        if self.saturation_concurrency is None:
            return True
        return max_concurrency is None or max_concurrency > self.saturation_concurrency


class MalformedOutput(_Fault):
    kind: Literal["malformed_output"]
    ratio: Ratio = 0.5


class ContextOverflow(_Fault):
    kind: Literal["context_overflow"]
    ratio: Ratio = 1.0
    extra_input_tokens: int = Field(default=0, ge=0, le=10_000_000)


class SafetyFlags(_Fault):
    kind: Literal["safety_flags"]
    ratio: Ratio = 0.2


class Refusals(_Fault):
    kind: Literal["refusals"]
    ratio: Ratio = 0.2


class ProviderErrors(_Fault):
    kind: Literal["provider_errors"]
    ratio: Ratio = 0.5
    statuses: list[Literal[429, 500, 503]] = Field(
        default_factory=lambda: [503],  # type: ignore[arg-type]  # 503 is one of the literals
        min_length=1)


class BadRouting(_Fault):
    kind: Literal["bad_routing"]
    ratio: Ratio = 0.5
    to_model: str | None = None

    @model_validator(mode="after")
    def _distinct(self) -> BadRouting:
        if self.to_model is not None and self.to_model == self.model:
            raise ValueError("to_model must differ from the scoped model")
        return self


class QualityDrop(_Fault):
    kind: Literal["quality_drop"]
    drop: float = Field(default=0.3, gt=0, le=1)


Fault = Annotated[
    TokenBlowup
    | LatencySpike
    | MalformedOutput
    | ContextOverflow
    | SafetyFlags
    | Refusals
    | ProviderErrors
    | BadRouting
    | QualityDrop,
    Field(discriminator="kind"),
]
FAULT_ADAPTER: TypeAdapter[Fault] = TypeAdapter(Fault)
FAULT_KINDS: tuple[str, ...] = (
    "token_blowup",
    "latency_spike",
    "malformed_output",
    "context_overflow",
    "safety_flags",
    "refusals",
    "provider_errors",
    "bad_routing",
    "quality_drop",
)


class FaultBook:
    """The active faults, in the order they were added."""

    def __init__(self) -> None:
        self._faults: dict[str, _Fault] = {}
        self._ids = itertools.count(1)

    def add(self, fault: _Fault) -> _Fault:
        stored = fault.model_copy(update={"id": f"f{next(self._ids)}"})
        self._faults[stored.id] = stored
        return stored

    def remove(self, fault_id: str) -> bool:
        return self._faults.pop(fault_id, None) is not None

    def clear(self) -> int:
        n = len(self._faults)
        self._faults.clear()
        return n

    def all(self) -> list[_Fault]:
        return list(self._faults.values())

    def matching(
        self, kind: str, route: str, model: str | None, prompt_version: str,
        customer: str | None = None,
    ) -> list[_Fault]:
        return [
            f
            for f in self._faults.values()
            if getattr(f, "kind", None) == kind
            and f.matches(route, model, prompt_version, customer)
        ]
