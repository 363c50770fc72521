"""Who answers the drill's incident: the scripted responder, or humans watched in the store.

``ScriptedResponder`` (``--auto-respond``: the demo and the tests) acknowledges,
plans the scenario's expected step, approves it as a *second* user (so two-person
steps pass their guard honestly) and applies it. Every action is made through the
engine and runner like a person's, under actor names that say they are scripted,
and every line it logs says so.

``wait_for_humans`` (scheduled drills) does nothing itself: it reads the
incident's state changes from the store - acknowledged, a step applied - which
people make from Slack or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.base.errors import GuardRefused, IncidentBotError
from bot.core.engine import Engine
from bot.store import Run

SCRIPTED_1 = "scripted-responder-1"
SCRIPTED_2 = "scripted-responder-2"
ACTIVE = ("applied", "verified")


@dataclass
class Response:
    acknowledged_at: datetime | None = None
    mitigated_at: datetime | None = None
    run_id: str | None = None
    step: str | None = None
    problem: str | None = None


def applied_run(engine: Engine, incident_id: str) -> Run | None:
    """The first run of the incident that reached the target (a person's or the bot's own)."""
    for run in engine.store.runs(incident_id=incident_id):
        if run.state in ACTIVE or (run.state == "reverted" and engine.store.mitigation(run.id)):
            return run
    return None


def observe(engine: Engine, incident_id: str, into: Response) -> Response:
    """Fill in what people (or the bot's auto steps) have done so far."""
    if into.acknowledged_at is None:
        # A person's ack (the bot's own auto step moving the status is not one).
        for ev in engine.store.timeline(incident_id):
            if ev.kind == "acknowledged" or (ev.kind == "status" and "-> acknowledged" in ev.text):
                into.acknowledged_at = ev.at
                break
    if into.mitigated_at is None and (run := applied_run(engine, incident_id)):
        mit = engine.store.mitigation(run.id)
        into.mitigated_at = mit.applied_at if mit else run.updated_at
        into.run_id, into.step = run.id, run.step_id
    return into


class ScriptedResponder:
    def __init__(self, engine: Engine, log) -> None:
        self.engine = engine
        self.log = log  # (phase, text) -> None

    async def respond(self, incident_id: str, playbook: str, step: str | None) -> Response:
        out = Response()
        await self.engine.acknowledge(incident_id, SCRIPTED_1)
        out.acknowledged_at = self.engine.store.now()
        self.log("acknowledged", f"scripted responder ({SCRIPTED_1}) acknowledged {incident_id}")
        observe(self.engine, incident_id, out)
        if out.mitigated_at is not None:  # the bot's own auto step already ran
            self.log("mitigated", f"the bot applied {out.step} on its own ({out.run_id}); "
                     "the scripted responder only watches")
            return out
        try:
            run = await self.engine.plan_step(incident_id, playbook, step, actor=SCRIPTED_1)
            self.log("planned", f"scripted responder ({SCRIPTED_1}) planned {playbook} "
                     f"step {run.step_id} as {run.id}:\n{run.plan.diff()}")
            if run.state == "awaiting_approval":
                run = await self.engine.approve(run.id, SCRIPTED_2)
                self.log("approved", f"scripted second responder ({SCRIPTED_2}) approved {run.id}")
            if run.state in ("refused", "dry_run"):
                raise GuardRefused("plan", run.error or f"{run.id} is {run.state}")
            run = await self.engine.apply(run.id, SCRIPTED_1)
        except IncidentBotError as exc:
            out.problem = f"the scripted responder could not apply {playbook}/{step}: {exc}"
            self.log("failed", out.problem)
            return out
        observe(self.engine, incident_id, out)
        self.log("mitigated", f"scripted responder ({SCRIPTED_1}) applied {run.id} "
                 f"({run.plan.summary or run.action}); state {run.state}")
        return out
