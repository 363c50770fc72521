"""`drill list | run CLASS_OR_ID [--auto-respond] [--target sandbox|staging] | history [CLASS]
| report DRILL_ID`: the same on the CLI and in Slack.

The backend (``ctx.drills``, a ``drills.harness.DrillService``) is injected by the
composition root, so this module imports nothing of the drills' sandbox, web stack
or drivers. In Slack (``ctx.local`` False) ``drill run`` starts the drill in the
background and answers at once; its progress arrives as DRILL messages.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.base.errors import InputError
from bot.core.postmortem import md_escape

log = logging.getLogger(__name__)

SUBCOMMANDS = ("list", "run", "history", "report")
USAGE = ("drill list | drill run CLASS_OR_ID [--auto-respond] [--target sandbox|staging] | "
         "drill history [CLASS] | drill report DRILL_ID")
# Drills started from chat; kept so the tasks are not garbage-collected mid-run.
_BACKGROUND: set[asyncio.Task[Any]] = set()


def _drill_data(d: Any) -> dict[str, Any]:
    return {"id": d.id, "scenario": d.scenario_id, "class": d.klass, "status": d.status,
            "score": d.score, "incident": d.incident_id, "detector": d.detector,
            "started_at": d.started_at.isoformat(), "reason": d.reason}


def _when(value: Any) -> str:
    return f"{value:%Y-%m-%d %H:%M %Z}".strip() if value else "not scheduled"


async def drill_verb(ctx: Context, cmd: Command) -> Result:
    sub = (cmd.args.get("sub") or "list").lower()
    arg = cmd.args.get("arg")
    if sub not in SUBCOMMANDS:
        raise InputError(f"no drill command '{sub[:40]}'", hint=USAGE)
    service = ctx.drills
    if sub == "list":
        return _list(service)
    if sub == "history":
        return _history(service, arg)
    if sub == "report":
        if not arg:
            raise InputError("drill report needs a DRILL_ID", hint="`drill history` lists them")
        text = service.report(arg)
        return Result(text, {"id": arg.upper(), "report": text}, markdown=text)
    if not arg:
        raise InputError("drill run needs a class or scenario id", hint="`drill list` names them")
    scenario = service.find(arg)  # a bad name fails here, before anything starts
    auto = cmd.flag("--auto-respond")
    target = cmd.opt("--target")
    if not ctx.local:
        async def background() -> None:
            try:
                await service.run(scenario.id, auto_respond=auto, target=target,
                                  say=lambda line: log.info("%s", line))
            except Exception:
                log.exception("drill %s failed", scenario.id)

        task = asyncio.create_task(background(), name=f"drill-{scenario.id}")
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        return Result(f"drill of {scenario.id} ({scenario.class_}) started by {ctx.actor}; "
                      "its messages are marked DRILL", {"scenario": scenario.id, "started": True})
    lines: list[str] = [f"drill of {scenario.id} ({scenario.class_}) started by {ctx.actor}"]
    drill = await service.run(scenario.id, auto_respond=auto, target=target, say=lines.append)
    report = service.report(drill.id)
    code = 0 if drill.status == "completed" else 1
    # For the CLI, the progress lines as a list, then the report: one Markdown document.
    progress = "\n".join(f"- {md_escape(line)}" for line in lines)
    return Result("\n".join(lines) + "\n\n" + report, {**_drill_data(drill), "report": report},
                  exit_code=code, markdown=progress + "\n\n" + report)



def _list(service: Any) -> Result:
    scenarios = service.scenarios()
    trends = service.trends()
    rows, data = [], []
    for s in sorted(scenarios.values(), key=lambda s: s.class_):
        t = trends.get(s.class_)
        last = f"last {t.last}, {t.direction}" if t and t.scores else "never drilled"
        rows.append(f"{s.class_:<20} {s.id:<20} {last:<28} {s.title}")
        data.append({"class": s.class_, "id": s.id, "title": s.title,
                     "scores": list(t.scores) if t else [], "trend": t.direction if t else None})
    nxt = service.next_run()
    text = "\n".join(rows) + f"\n\nnext scheduled drill: {_when(nxt)}"
    firings = service.drills.firings()
    if firings:
        # Who ran each scheduled drill, and which ones nobody was up for.
        text += "\nscheduled drills: " + ", ".join(
            f"{when:%Y-%m-%d %H:%M} {'MISSED' if who == 'missed' else 'ran'}"
            for when, who in firings)
    return Result(text, {"scenarios": data, "next_run": nxt.isoformat() if nxt else None,
                         "firings": [{"at": when.isoformat(), "by": who}
                                     for when, who in firings]})


def _history(service: Any, klass: str | None) -> Result:
    drills = service.history(klass)
    if not drills:
        return Result("no drills yet" + (f" of {klass}" if klass else ""), [])
    lines = [
        f"{d.id:<9} {d.started_at:%Y-%m-%d %H:%M} {d.klass:<20} {d.status:<9} "
        f"{'-' if d.score is None else d.score:>3}  {d.detector}"
        for d in drills
    ]
    trends = service.trends()
    if klass and (t := trends.get(drills[0].klass)):
        lines.append(f"trend ({drills[0].klass}): {t.direction}; last scores "
                     f"{', '.join(map(str, t.scores))}")
    return Result("\n".join(lines), [_drill_data(d) for d in drills])
