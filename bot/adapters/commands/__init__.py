"""The command layer shared by the CLI and Slack: one grammar, one set of results."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.adapters.commands import console_verbs as cv
from bot.adapters.commands import drill_verbs as dv
from bot.adapters.commands import incident_verbs as iv
from bot.adapters.commands import lifecycle_verbs as lv
from bot.adapters.commands import playbook_verbs as pv
from bot.adapters.commands import release_verbs as rv
from bot.adapters.commands import slo_verbs as slv
from bot.adapters.commands import step_verbs as sv
from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import AS, JSON, Command, Result, Verb, parse, split
from bot.base.errors import (
    CommandError,
    GuardRefused,
    IncidentBotError,
    InputError,
    NotFound,
    NothingToDo,
)

log = logging.getLogger(__name__)

__all__ = ["VERBS", "Command", "Context", "Result", "Verb", "execute", "parse", "split"]


async def _help(ctx: Context, cmd: Command) -> Result:
    if topic := cmd.args.get("verb"):
        verb = VERBS.get(topic.lower())
        if verb is None:
            raise CommandError(f"no command '{topic}'", hint="`help` lists them")
        return Result(f"{verb.usage}\n  {verb.summary}")
    width = 36  # long usages put their summary on the next line
    lines = [f"{v.usage:<{width}}  {v.summary}" if len(v.usage) <= width
             else f"{v.usage}\n{'':<{width}}  {v.summary}" for v in VERBS.values()]
    return Result("\n".join(lines), [{"verb": v.name, "usage": v.usage} for v in VERBS.values()])


def _verbs(*verbs: Verb) -> dict[str, Verb]:
    return {v.name: v for v in verbs}


VERBS: dict[str, Verb] = _verbs(
    Verb("help", "show commands, or one command's usage", optional=("verb",), handler=_help),
    Verb("lint", "check playbook files; exits 1 on any problem", optional=("paths...",),
         flags=(JSON,), handler=pv.lint_verb),
    Verb("test", "run playbook tests (like promtool test rules)", optional=("paths...",),
         options=("--playbooks",), handler=pv.test_verb),
    Verb("match", "match every alert in FILE against the playbooks", args=("file",),
         flags=("--explain", JSON), handler=pv.match_verb),
    Verb("schema", "print the playbook JSON Schema (--write updates the shipped file)",
         flags=("--write",), handler=pv.schema_verb),
    Verb("playbooks", "list the loaded playbooks", flags=(JSON,), handler=pv.playbooks_verb),
    Verb("playbook", "show one playbook's match, steps and guards", args=("id",),
         flags=(JSON,), handler=pv.playbook_verb),
    Verb("reload", "reload the playbooks, all or nothing (a bad file keeps the set in force)",
         options=(AS,), flags=(JSON,), changes_state=True, handler=pv.reload_verb),
    Verb("plan", "plan a playbook step as a diff (nothing is applied)", args=("playbook",),
         options=("--alert", "--incident", "--step", AS), flags=("--dry-run", JSON),
         changes_state=True, handler=iv.plan_verb),
    Verb("apply", "apply a planned run; refuses while a guard says no", args=("run",),
         options=(AS,), flags=(JSON,), changes_state=True, handler=iv.apply_verb),
    Verb("approve", "approve a run (two_person: not the requester); --apply applies it too",
         args=("run",), options=(AS,), flags=("--apply", JSON), changes_state=True,
         handler=sv.approve_verb),
    Verb("link", "a signed, single-use web link for one person to approve a run "
         "(when Slack is not there)", args=("run",), options=("--for", "--ttl", AS),
         # It hands out the right to approve: in Slack, on-call only, like Approve.
         flags=(JSON,), changes_state=True, private=True, handler=cv.link_verb),
    Verb("deny", "deny a run", args=("run",), options=("--reason", AS), flags=(JSON,),
         changes_state=True, handler=iv.deny_verb),
    Verb("revert", "revert an applied run", args=("run",), options=("--reason", AS),
         flags=(JSON,), changes_state=True, handler=iv.revert_verb),
    Verb("mitigations", "list active mitigations", flags=(JSON,), handler=iv.mitigations_verb),
    Verb("runs", "list runs (the newest 100; --limit N)", options=("--incident", "--state",
         "--limit"), flags=(JSON,),
         handler=iv.runs_verb),
    Verb("pause", "stop every automatic action (kill switch)", options=("--reason", AS),
         flags=(JSON,), changes_state=True, handler=iv.pause_verb),
    Verb("resume", "allow automatic actions again", options=(AS,), flags=(JSON,),
         changes_state=True, handler=iv.resume_verb),
    Verb("incidents", "list incidents (the newest 50; --limit N)", options=("--status", "--limit"),
         flags=(JSON,),
         handler=iv.incidents_verb),
    Verb("show", "show an incident's timeline", args=("id",), flags=(JSON,),
         handler=iv.show_verb),
    Verb("postmortem", "write an incident's postmortem (Markdown)", args=("id",),
         flags=(JSON,), handler=iv.postmortem_verb),
    Verb("tick", "run what is due now: TTL reverts, verification checks", options=(AS,),
         flags=(JSON,), changes_state=True, handler=iv.tick_verb),
    Verb("ack", "acknowledge an incident (stops the reminders)", args=("id",), options=(AS,),
         flags=(JSON,), changes_state=True, handler=lv.ack_verb),
    Verb("resolve", "resolve an incident", args=("id",), options=("--reason", AS),
         flags=(JSON,), changes_state=True, handler=lv.resolve_verb),
    Verb("cancel", "cancel an incident (false alarm)", args=("id",), options=("--reason", AS),
         flags=(JSON,), changes_state=True, handler=lv.cancel_verb),
    Verb("note", "add a note to an incident's timeline", args=("id", "text..."), options=(AS,),
         flags=(JSON,), changes_state=True, handler=lv.note_verb),
    Verb("assign", "name the incident commander", args=("id", "user"), options=(AS,),
         flags=(JSON,), changes_state=True, handler=lv.assign_verb),
    # Asked for by the Slack app; they work on the CLI too (bot/commands/step_verbs.py).
    Verb("status", "open incidents, active mitigations, and whether the bot is paused",
         flags=(JSON,), handler=sv.status_verb),
    Verb("list", "list incidents (same as incidents)", options=("--status", "--limit"),
         flags=(JSON,),
         handler=iv.incidents_verb),
    Verb("suggest", "the ranked playbooks for an incident's latest alert, with why",
         args=("id",), flags=(JSON,), handler=sv.suggest_verb),
    Verb("run", "plan a step of the suggested playbook (default: its first step); applied at "
         "once if it needs no approval", args=("id",), optional=("step",),
         options=("--playbook", AS), flags=("--dry-run", JSON), changes_state=True,
         handler=sv.run_verb),
    Verb("do", "one ad hoc guarded action (on-call approval, TTL 1h): do ACTION ROUTE key=value "
         "(a customer action: do ACTION CUSTOMER ...)",
         args=("action", "route"), optional=("params...",),
         options=("--incident", "--target", "--ttl", AS), flags=("--dry-run", JSON),
         changes_state=True, handler=sv.do_verb),
    Verb("reject", "not this playbook: record it and suggest the next candidate",
         args=("id", "playbook"), options=(AS,), flags=(JSON,), changes_state=True,
         handler=sv.reject_verb),
    Verb("drill", "drills: list | run CLASS_OR_ID | history [CLASS] | report DRILL_ID",
         optional=("sub", "arg"), options=("--target", AS), flags=("--auto-respond", JSON),
         changes_state=True, handler=dv.drill_verb),
    Verb("release", "release guard: start ROUTE --prompt V | status [REL] | list | "
         "promote REL | hold REL | rollback REL | judge REL",
         optional=("sub", "arg"), options=("--prompt", "--model", "--baseline", "--steps",
                                           "--bake", "--owner", "--reason", "--target", "--from",
                                           AS),
         flags=("--auto-promote", JSON), changes_state=True, handler=rv.release_verb),
    Verb("slo", "SLOs and budgets: status [FILE] (budget left, burn) | lint [FILE] | "
         "render [FILE] [--out DIR] [--scale N] [--source NAME|auto --metrics URL|FILE] | "
         "sources | schema", optional=("sub", "arg"),
         options=("--out", "--scale", "--source", "--metrics"), flags=(JSON,),
         handler=slv.slo_verb),
)

# Exit codes: 0 ok, 1 the check failed (lint/test found problems), 2 bad input,
# 3 a guard refused, 4 a target or the store failed.
EXIT_INPUT, EXIT_REFUSED, EXIT_FAILED = 2, 3, 4
HELP_FLAGS = frozenset({"--help", "-h"})


async def execute(tokens: Sequence[str] | str, ctx: Context) -> Result:
    """Parse and run one command. Errors become a Result with a message, never a traceback."""
    try:
        words = split(tokens) if isinstance(tokens, str) else list(tokens)
        if HELP_FLAGS & set(words):
            # `--help` / `-h` anywhere: the verb's usage (or every verb's), never a run.
            first = words[0] if words and words[0] not in HELP_FLAGS else None
            words = ["help", first] if first else ["help"]
        cmd = parse(words, VERBS)
        if actor := cmd.opt(AS):
            if not ctx.local:
                raise CommandError("--as is for the CLI; in Slack you act as yourself")
            ctx.actor = actor
        assert cmd.verb.handler is not None
        return await cmd.verb.handler(ctx, cmd)
    except NothingToDo as err:
        # Not a failure: what the step would set is already in place.
        return Result(str(err), {"nothing_to_do": True, "message": str(err)})
    except GuardRefused as err:
        return Result(str(err), {"error": str(err), "guard": err.guard}, exit_code=EXIT_REFUSED)
    except (InputError, NotFound) as err:
        return Result(str(err), {"error": str(err)}, exit_code=EXIT_INPUT)
    except IncidentBotError as err:
        return Result(str(err), {"error": str(err)}, exit_code=EXIT_FAILED)
