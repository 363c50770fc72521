"""Drills never share an incident: two drills of one class back to back are two incidents.

Issue 25: the second drill's alert reopened the first drill's resolved incident as
"flapping" (same group key, inside the flap window), got no automatic step, scored
85/100 and its report carried the first drill's timeline. Run here as the
`drill run provider_errors --auto-respond` verb runs them: ``DrillService`` on one
store, the sandbox on loopback, the scripted responders.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fakes import RecordingNotifier

from actions.drivers.policy_file import PolicyFileDriver
from bot.adapters.settings import SHIPPED_PLAYBOOKS
from bot.core.engine import Engine
from bot.core.lifecycle import ENGINE_ACTOR
from bot.core.runner import Runner
from bot.intake.alert import Alert
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store
from drills.harness import DrillService
from drills.report import render_report


def test_two_drills_of_one_class_back_to_back_are_two_incidents_both_scoring_100(tmp_path):
    store = Store(tmp_path / "bot.db")
    registry = PlaybookRegistry()
    assert registry.reload(SHIPPED_PLAYBOOKS) == []
    runner = Runner(store, {"default": PolicyFileDriver(tmp_path / "policy.yaml",
                                                        create_missing=True)}, None)
    engine = Engine(store, registry, runner, notifier=RecordingNotifier())
    assert engine.flap_window is not None  # the default 10 minutes: both drills inside it
    service = DrillService(engine, tmp_path / "drills")

    async def twice():
        lines: list[str] = []
        first = await service.run("provider_errors", auto_respond=True, say=lines.append)
        second = await service.run("provider_errors", auto_respond=True, say=lines.append)
        return first, second

    first, second = asyncio.run(twice())
    assert first.status == second.status == "completed", (first.reason, second.reason)
    assert first.incident_id and second.incident_id
    assert first.incident_id != second.incident_id
    for d in (first, second):
        timeline = store.timeline(d.incident_id)
        assert not [e for e in timeline if e.data.get("reopened")], d.incident_id
        auto = [r for r in store.runs(incident_id=d.incident_id) if r.requested_by == ENGINE_ACTOR]
        assert auto, f"{d.id}: no automatic step ran on {d.incident_id}"
        assert d.score == 100, (d.id, d.score, d.breakdown)
    # Each report tells its own drill: the second carries none of the first's incident.
    report = render_report(service.drills, second.id, service.find("provider_errors"))
    assert second.incident_id in report and first.incident_id not in report


def test_a_drills_alerts_group_within_that_drill_and_never_with_production(tmp_path):
    store = Store(None)
    registry = PlaybookRegistry()
    assert registry.reload(SHIPPED_PLAYBOOKS) == []
    runner = Runner(store, {"default": PolicyFileDriver(tmp_path / "policy.yaml",
                                                        create_missing=True)}, None)
    engine = Engine(store, registry, runner)

    def alert(fp: str) -> Alert:
        return Alert(source="generic", fingerprint=fp, status="firing",
                     starts_at=datetime(2026, 12, 6, 10, tzinfo=UTC),
                     labels={"alertname": "LLMProviderErrorRateHigh", "route": "chat",
                             "severity": "critical"})

    async def go():
        with engine.drilling("LLMProviderErrorRateHigh", "chat", drill_id="DRILL-1"):
            a = (await engine.handle_alerts([alert("a")]))[0]  # by the webhook, marked
            b = (await engine.handle_alerts([alert("b")], is_drill=True,
                                            drill_id="DRILL-1"))[0]
        c = (await engine.handle_alerts([alert("c")], is_drill=True, drill_id="DRILL-2"))[0]
        real = (await engine.handle_alerts([alert("d")]))[0]
        return a, b, c, real

    a, b, c, real = asyncio.run(go())
    assert a.incident_id == b.incident_id  # one drill: one incident
    assert len({a.incident_id, c.incident_id, real.incident_id}) == 3
    assert store.incident(a.incident_id).is_drill and store.incident(c.incident_id).is_drill
    assert not store.incident(real.incident_id).is_drill
