"""Verbs that move an incident through its lifecycle: ack, resolve, cancel, note, assign."""

from __future__ import annotations

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.adapters.commands.incident_verbs import incident_data


def _done(inc, text: str) -> Result:
    return Result(text, incident_data(inc))


async def ack_verb(ctx: Context, cmd: Command) -> Result:
    inc = await ctx.engine.acknowledge(cmd.args["id"], ctx.actor)
    return _done(inc, f"{inc.id} acknowledged by {ctx.actor} (status: {inc.status})")


async def resolve_verb(ctx: Context, cmd: Command) -> Result:
    inc = await ctx.engine.resolve(cmd.args["id"], ctx.actor, cmd.opt("--reason") or "")
    return _done(inc, f"{inc.id} resolved by {ctx.actor}")


async def cancel_verb(ctx: Context, cmd: Command) -> Result:
    inc = await ctx.engine.cancel(cmd.args["id"], ctx.actor, cmd.opt("--reason") or "")
    return _done(inc, f"{inc.id} cancelled by {ctx.actor}")


async def note_verb(ctx: Context, cmd: Command) -> Result:
    inc = await ctx.engine.note(cmd.args["id"], " ".join(cmd.args["text"]), ctx.actor)
    return _done(inc, f"note added to {inc.id}")


async def assign_verb(ctx: Context, cmd: Command) -> Result:
    inc = await ctx.engine.assign(cmd.args["id"], cmd.args["user"], ctx.actor)
    return _done(inc, f"{inc.commander} is the commander of {inc.id}")
