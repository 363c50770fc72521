"""Every PromQL query of a playbook is parsed at lint time, not at the verify deadline.

A query is a template, so it is rendered first with stand-in values: every label
and annotation reads as ``1`` (a valid label value and a valid number), and the
playbook's params are rendered from that. The result is parsed with
``promql-parser`` (the Rust port of Prometheus' own parser): a query Prometheus
would reject is a lint error naming the file, line and field, instead of a
verification that fails mid-incident and reverts a good change.

A verify query must also leave "no data" empty (``no_data_fallback``): ``x or
vector(0)``, ``absent(x)`` and the like turn a series that does not exist yet (one
scrape old, renamed by an upgrade, a wrong label) into a number that passes, so
the change verifies on no evidence. The runner counts an empty answer as "not
known yet" until the deadline, where the step's ``on_fail`` applies. Diagnose
queries may keep ``or vector(0)``: they only show a number to a human, who sees
the query next to it.
"""

from __future__ import annotations

from typing import Any

import promql_parser

from bot.base.errors import IncidentBotError
from bot.playbook.numbers import in_range
from bot.playbook.render import _Annotations, _Labels, _render_value, render_string
from bot.playbook.schema import NumberParam, Playbook

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


Path = tuple[str | int, ...]
NO_DATA_HINT = ("leave no data empty: the runner waits for data until `within` and then "
                "applies on_fail; a real zero comes from a series that exists")


def promql_errors(playbook: Playbook) -> list[tuple[Path, str, str]]:
    """``(key path, what is wrong, hint)`` for each query that is not valid PromQL, and
    each verify query that turns no data into a value."""
    context = _context()
    try:
        params = {k: _stand_in_param(k, v, context) for k, v in playbook.params.items()}
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
            out.append((path, f"not valid PromQL: {problem} (rendered: {rendered.strip()[:200]})",
                        "check the query in Prometheus' expression browser"))
        elif path[0] == "steps" and (why := no_data_fallback(rendered)):
            out.append((path, f"verify query turns no data into a value: {why}", NO_DATA_HINT))
    return out


def _stand_in_param(name: str, value: Any, context: dict[str, Any]) -> Any:
    # A ranged number stands in as its smallest allowed value (the alert's "1" may be
    # outside the range, and the range is what the plan would hold).
    if isinstance(value, NumberParam):
        return in_range(name, value, value.min)
    return _render_value(value, context, f"params.{name}")


def _reads_series(expr: Any) -> bool:
    found = False

    def visit(node: Any) -> bool:
        nonlocal found
        found = found or isinstance(node, promql_parser.VectorSelector | promql_parser.MatrixSelector)
        return not found

    promql_parser.walk(expr, visit, None)
    return found


def _calls(expr: Any, name: str) -> bool:
    found = False

    def visit(node: Any) -> bool:
        nonlocal found
        found = found or (isinstance(node, promql_parser.Call) and node.func.name == name)
        return not found

    promql_parser.walk(expr, visit, None)
    return found


def no_data_fallback(query: str) -> str | None:
    """How ``query`` answers with a value when its series have no data, or None.

    ``or`` with a side that reads no series (``or vector(0)``, ``or on() vector(1)``),
    ``unless`` on such a left side, ``absent``/``absent_over_time``, a ``bool``
    comparison of ``scalar(...)`` (NaN for no data becomes 0), or a query that reads
    no series at all. ``x or 0 * sum(rate(requests[5m]))`` is not one: its zero
    stands on a series that exists."""
    try:
        expr = promql_parser.parse(query)
    except ValueError:
        return None  # parse errors are reported on their own
    if not _reads_series(expr):
        return "it reads no series, so it always answers"
    why: str | None = None

    def visit(node: Any) -> bool:
        nonlocal why
        if isinstance(node, promql_parser.Call) and node.func.name in ("absent",
                                                                       "absent_over_time"):
            why = f"{node.func.name}(...) answers 1 exactly when there is no data"
        elif (isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None
              and node.modifier.return_bool and _calls(node, "scalar")):
            why = ("scalar(...) answers NaN for no data, and a `bool` comparison turns that "
                   "NaN into 0 or 1")
        elif isinstance(node, promql_parser.BinaryExpr) and str(node.op) in ("or", "unless"):
            sides = (node.lhs, node.rhs) if str(node.op) == "or" else (node.lhs,)
            made_up = next((side for side in sides if not _reads_series(side)), None)
            if made_up is not None:
                shown = (f"... or {made_up}" if str(node.op) == "or"
                         else f"{made_up} unless ...")
                why = (f"`{shown}` makes up a value when the series is missing "
                       "(a metric not scraped yet, renamed or mislabelled would pass)")
        return why is None

    promql_parser.walk(expr, visit, None)
    return why


def parse_error(query: str) -> str | None:
    """Why Prometheus would refuse ``query``, or None."""
    try:
        promql_parser.parse(query)
    except ValueError as exc:
        return str(exc) or "cannot be parsed"
    return None
