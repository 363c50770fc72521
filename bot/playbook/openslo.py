"""OpenSLO (v1) documents as input to ``slo render``, where the concepts map.

Maps: ``kind: SLO`` with an inline ``indicator`` whose ``ratioMetric`` is a counter
(``counter: true``) with a ``good`` or ``bad`` and a ``total`` Prometheus query
(a counter selector): it becomes an ``sli: ratio`` objective, one per entry of
``objectives`` (its ``target``), over the SLO's rolling ``timeWindow``, budgeted by
``Occurrences``. The route is ``metadata.labels.route`` (else ``spec.service``), the
class of incident its burn opens ``metadata.labels.incident_class``.

Does not map, and is refused naming the document and field: ``thresholdMetric``
(a raw value against a threshold: use a ``ttft`` or ``latency`` objective in
slos.yaml, which counts requests by histogram bucket), ``indicatorRef`` (put the
SLI inline), ``Timeslices`` and ``RatioTimeslices`` budgeting, calendar windows,
a data source other than Prometheus, and raw (``counter: false``) ratios. Other
kinds (``Service``, ``AlertPolicy``, ``DataSource``...) are skipped and said so:
the alerts are the generated burn-rate pair.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import yaml

from bot.base.durations import parse_duration
from bot.base.errors import Problem
from bot.playbook.slos import SloError, SloFile


def _doc_lines(text: str) -> list[tuple[int, str]]:
    """The YAML documents of ``text`` with the line each starts on."""
    docs: list[tuple[int, str]] = []
    start, lines = 1, list[str]()
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if re.match(r"^---\s*$", line):
            docs.append((start, "".join(lines)))
            start, lines = number + 1, []
        else:
            lines.append(line)
    docs.append((start, "".join(lines)))
    return [(s, d) for s, d in docs if d.strip()]


def _get(doc: dict[str, Any], *path: str) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def load_openslo_text(text: str, file: str = "<string>") -> tuple[SloFile, list[str]]:
    """The SLO file the OpenSLO documents describe, and notes on what was skipped."""
    problems: list[Problem] = []
    notes: list[str] = []
    objectives: dict[str, dict[str, Any]] = {}
    periods: dict[timedelta, str] = {}
    for line, body in _doc_lines(text):
        try:
            doc = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            problems.append(Problem(file, line, "", f"not YAML: {exc}"))
            continue
        if not isinstance(doc, dict):
            problems.append(Problem(file, line, "", "an OpenSLO document is a mapping"))
            continue
        name = str(_get(doc, "metadata", "name") or "")
        if doc.get("apiVersion") != "openslo/v1":
            problems.append(Problem(file, line, "apiVersion",
                                    f"{doc.get('apiVersion')!r} is not openslo/v1"))
            continue
        if doc.get("kind") != "SLO":
            notes.append(f"{file}:{line}: {doc.get('kind')} {name}: skipped (only SLOs map; "
                         "the alerts are the generated burn-rate pair)")
            continue

        def bad(field: str, message: str, *, doc_name: str = name, at: int = line) -> None:
            problems.append(Problem(file, at, field, f"SLO {doc_name}: {message}"))

        spec = doc.get("spec") or {}
        if "indicatorRef" in spec:
            bad("spec.indicatorRef", "does not map: put the SLI inline (spec.indicator)")
            continue
        ind = _get(spec, "indicator", "spec") or {}
        if "thresholdMetric" in ind:
            bad("spec.indicator.spec.thresholdMetric", "does not map: a raw value against a "
                "threshold; use a ttft or latency objective in slos.yaml (it counts requests "
                "by histogram bucket)")
            continue
        ratio = ind.get("ratioMetric")
        if not isinstance(ratio, dict):
            bad("spec.indicator.spec", "needs a ratioMetric")
            continue
        if ratio.get("counter") is not True:
            bad("spec.indicator.spec.ratioMetric.counter", "only counters map (counter: true)")
            continue
        queries: dict[str, str] = {}
        for part in ("good", "bad", "total"):
            source = _get(ratio, part, "metricSource")
            if source is None:
                continue
            if str(source.get("type", "")).lower() != "prometheus":
                bad(f"spec.indicator.spec.ratioMetric.{part}.metricSource.type",
                    f"{source.get('type')!r} does not map: only Prometheus")
                continue
            queries[part] = str(_get(source, "spec", "query") or "")
        method = spec.get("budgetingMethod", "Occurrences")
        if method != "Occurrences":
            bad("spec.budgetingMethod", f"{method} does not map: only Occurrences")
            continue
        for window in spec.get("timeWindow") or []:
            if not window.get("isRolling", False):
                bad("spec.timeWindow", "a calendar window does not map: only rolling ones")
                continue
            text = str(window.get("duration", "30d"))
            periods[parse_duration(text)] = text
        labels = _get(doc, "metadata", "labels") or {}
        route = labels.get("route") or spec.get("service")
        for i, objective in enumerate(spec.get("objectives") or [{}]):
            key = name if len(spec.get("objectives") or []) <= 1 else f"{name}-{i + 1}"
            objectives[key] = {
                "route": route, "sli": "ratio", "target": objective.get("target"),
                "incident_class": labels.get("incident_class"),
                "description": str(objective.get("displayName") or spec.get("description") or ""),
                **{k: v for k, v in queries.items() if v}}
    if len(periods) > 1:
        problems.append(Problem(file, None, "spec.timeWindow",
                                "the SLOs name different windows; one file has one period"))
    if problems:
        raise SloError(problems=problems)
    data: dict[str, Any] = {"version": 1, "objectives": objectives}
    if periods:
        data["period"] = next(iter(periods.values()))
    # The objectives are checked as if written in slos.yaml (a named SLO, its fields).
    from bot.playbook.slos import load_slos_text

    return load_slos_text(yaml.safe_dump(data, sort_keys=False), f"{file} (as slos.yaml)"), notes
