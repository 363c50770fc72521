"""`link RUN [--for USER] [--ttl 30m]`: a signed, single-use console link that lets one
person approve one run from the web (when Slack is down or rate-limited); at most 24h.

From Slack a person gets a link for themselves only; from the CLI (whoever runs it
is trusted to act) the link names ``--for``, or the CLI user. ``show`` prints the
incident's console page too (see ``console_page``).
"""

from __future__ import annotations

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.adapters.console.urls import approval_url, page_url
from bot.base.durations import format_duration, parse_duration
from bot.base.errors import GuardRefused, InputError


def console_base(ctx: Context) -> str:
    if not ctx.console_url:
        raise InputError("the console's address is not known here",
                         hint="set LLM_INCIDENT_CONSOLE_URL to the console's public URL")
    return ctx.console_url


async def link_verb(ctx: Context, cmd: Command) -> Result:
    from bot.adapters.console.links import DEFAULT_TTL, MAX_TTL, MAX_TTL_TEXT, ApprovalLinks

    run = ctx.engine.store.run(cmd.args["run"])
    user = cmd.opt("--for") or ctx.actor
    if not ctx.local and user != ctx.actor:
        raise GuardRefused("approval", "from Slack a link is only ever for yourself",
                           hint=f"`link {run.id}` (without --for)")
    if run.state not in ("awaiting_approval", "approved", "expired"):
        raise InputError(f"{run.id} is {run.state}; a link approves a run awaiting approval")
    ttl = DEFAULT_TTL
    if raw := cmd.opt("--ttl"):
        try:
            ttl = parse_duration(raw)
        except ValueError as exc:
            raise InputError(f"--ttl: {exc}", hint=f"at most {MAX_TTL_TEXT}, e.g. --ttl 30m") \
                from None
        if ttl > MAX_TTL:  # a link is a bearer secret in a URL: see links.MAX_TTL
            raise InputError(f"--ttl {raw} is longer than the {MAX_TTL_TEXT} an approval link "
                             "may live", hint=f"--ttl {MAX_TTL_TEXT} or less; ask for a new "
                                              "link when it runs out")
    token = ApprovalLinks(ctx.engine.store, ctx.console_secret).issue(run.id, user, ttl)
    url = approval_url(console_base(ctx), token)
    return Result(f"{url}\n(for {user} only, once, within {format_duration(ttl)}: it approves "
                  f"{run.id} as {user} and applies it if every guard passes)",
                  {"url": url, "run": run.id, "user": user, "ttl_seconds": int(ttl.total_seconds())})


def console_page(ctx: Context, incident_id: str) -> str | None:
    return page_url(ctx.console_url, incident_id) if ctx.console_url else None
