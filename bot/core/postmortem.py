"""The postmortem: an incident's timeline, alerts and every change, as Markdown.

Everything that came from an alert is escaped for Markdown before it lands in
the document, and alert text is only ever *data* for the template, never part
of the template itself.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bot.store import Store

# Runs that touched (or tried to touch) the target; proposals and refusals are in the timeline.
CHANGED_STATES = ("applying", "applied", "verified", "reverted", "failed")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def md_escape(value: Any) -> str:
    """Text from outside as inert Markdown on one line (postmortems, reports, `show`)."""
    text = "" if value is None else str(value)
    return _MD_SPECIAL.sub(r"\\\1", text.replace("\n", " "))


def _code(value: Any) -> str:
    text = "" if value is None else str(value)
    return "`" + text.replace("`", "'").replace("\n", " ") + "`"


def _fence(value: Any) -> str:
    # Route names in a diff come from alert labels; a fence in one must not close the block.
    return str(value).replace("`" * 3, "\u2018" * 3)


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
)
_env.filters.update(md=md_escape, code=_code, ts=_ts, fence=_fence)


def render_postmortem(store: Store, incident_id: str) -> str:
    incident = store.incident(incident_id)
    changes = [
        {
            "run": run,
            "approvals": store.approvals(run.id),
            "mitigation": store.mitigation(run.id),
        }
        for run in store.runs(incident_id=incident.id)
        if run.state in CHANGED_STATES
    ]
    return _env.get_template("postmortem.md.j2").render(
        incident=incident,
        klass=incident.klass,
        events=store.timeline(incident.id),
        alerts=store.alerts_for(incident.id),
        changes=changes,
    )
