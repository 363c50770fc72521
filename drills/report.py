"""The drill report: scenario, timings against deadlines, score, phases, incident timeline.

Markdown, rendered from ``drills/templates/drill_report.md.j2``. Alert text reaches
the report through the incident timeline; every such value goes through the
postmortem's Markdown escaping (``bot.core.postmortem``), and is only ever template
*data*.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bot.core.postmortem import _code, _ts, md_escape
from drills.scenario import Scenario
from drills.scoring import went_well_and_badly
from drills.store import Drill, DrillStore

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
)
_env.filters.update(md=md_escape, code=_code, ts=_ts)


def _took(drill: Drill, at: object) -> str:
    s = drill.drill_seconds(at)  # type: ignore[arg-type]
    return "-" if s is None else f"{s:.0f}s"


def render_report(drills: DrillStore, drill_id: str, scenario: Scenario | None = None) -> str:
    drill = drills.get(drill_id)
    dl = scenario.deadlines if scenario else None
    rows = [
        ("detect", drill.detected_at, dl.detect if dl else None),
        ("acknowledge", drill.acknowledged_at, dl.acknowledge if dl else None),
        ("mitigate", drill.mitigated_at, dl.mitigate if dl else None),
        ("recover", drill.recovered_at, None),
        ("roll back", drill.rolled_back_at, None),
    ]
    timings = [
        {"name": name, "took": _took(drill, at),
         "deadline": f"{d.total_seconds():.0f}s" if d is not None else "-"}
        for name, at, d in rows
    ]
    well, badly = went_well_and_badly(drill.breakdown)
    timeline = drills.store.timeline(drill.incident_id) if drill.incident_id else []
    events = drills.events(drill.id)
    # A release drill: what the bad version cost, and what a post-rollout alert would have.
    exposure = next((e.text for e in reversed(events) if e.phase == "exposure"), None)
    return _env.get_template("drill_report.md.j2").render(
        drill=drill,
        scenario_id=drill.scenario_id,
        klass=drill.klass,
        title=scenario.title if scenario else "",
        timings=timings,
        breakdown=drill.breakdown,
        well=well,
        badly=badly,
        events=events,
        exposure=exposure,
        timeline=timeline,
    )
