"""Every PromQL query of a playbook is parsed at lint time, not at the verify deadline.

A query is a template, so it is rendered first with stand-in values: every label
and annotation reads as ``1`` (a valid label value and a valid number), and the
playbook's params are rendered from that. The result is parsed with
``promql-parser`` (the Rust port of Prometheus' own parser): a query Prometheus
would reject is a lint error naming the file, line and field, instead of a
verification that fails mid-incident and reverts a good change.
"""

from __future__ import annotations

from typing import Any

import promql_parser

from bot.base.errors import IncidentBotError
from bot.playbook.render import _Annotations, _Labels, _render_value, render_string
from bot.playbook.schema import Playbook

STAND_IN = "1"


class _AnyLabels(_Labels):
    def __missing__(self, key: str) -> str:
        return STAND_IN


class _AnyAnnotations(_Annotations):
    def __missing__(self, key: str) -> str:
        return STAND_IN


def _context() -> dict[str, Any]:
    labels, annotations = _AnyLabels(), _AnyAnnotations()
    alert = {"labels": labels, "annotations": annotations, "status": "firing",
             "fingerprint": "0" * 16, "starts_at": "2026-01-01T00:00:00+00:00",
             "source": "generic", "alertname": STAND_IN}
    return {"alert": alert, "labels": labels, "annotations": annotations}


def queries(playbook: Playbook) -> list[tuple[tuple[str | int, ...], str]]:
    """``(key path, query template)`` for every diagnose and verify query."""
    out: list[tuple[tuple[str | int, ...], str]] = [
        (("diagnose", i, "query"), d.query) for i, d in enumerate(playbook.diagnose)]
    out += [(("steps", i, "guard", "verify", "query"), s.guard.verify.query)
            for i, s in enumerate(playbook.steps) if s.guard.verify is not None]
    return out


def promql_errors(playbook: Playbook) -> list[tuple[tuple[str | int, ...], str]]:
    """``(key path, what is wrong)`` for each query that is not valid PromQL."""
    context = _context()
    try:
        params = {k: _render_value(v, context, f"params.{k}") for k, v in playbook.params.items()}
    except IncidentBotError:
        return []  # a param that needs a real alert: the template checks speak for it
    context["params"] = params
    out = []
    for path, text in queries(playbook):
        try:
            rendered = render_string(text, context, where=".".join(map(str, path)))
        except IncidentBotError:
            continue  # not renderable with stand-ins; the template checks judged it
        problem = parse_error(rendered)
        if problem:
            out.append((path, f"not valid PromQL: {problem} (rendered: {rendered.strip()[:200]})"))
    return out


def parse_error(query: str) -> str | None:
    """Why Prometheus would refuse ``query``, or None."""
    try:
        promql_parser.parse(query)
    except ValueError as exc:
        return str(exc) or "cannot be parsed"
    return None
