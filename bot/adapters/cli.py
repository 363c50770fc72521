"""`llm-incident` on the command line: the same verbs as `/llm-incident` in Slack.

Global options (anywhere on the line): --db PATH, --playbooks DIR, --policy PATH,
--prometheus URL. Everything else goes to the shared command layer, except
`serve [--host HOST] [--port PORT]`, which starts the service (not a chat verb).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from bot.adapters.commands import VERBS, Context, Result, execute
from bot.adapters.commands.grammar import JSON, Verb
from bot.adapters.pagers import build_escalations
from bot.adapters.settings import Settings
from bot.base.errors import IncidentBotError
from bot.core.engine import Engine

GLOBAL_OPTIONS = {
    "--db": "db_path",
    "--playbooks": "playbooks_dir",
    "--policy": "policy_path",
    "--prometheus": "prometheus_url",
}


# Verbs that read playbook or SLO files (and Prometheus) only: they run without a
# database, and never create one.
NO_STORE_VERBS = frozenset({"help", "lint", "test", "match", "schema", "playbooks", "playbook",
                            "slo"})


def missing_store(settings: Settings) -> bool:
    if settings.db_url:
        return False  # a server's database: `Store` says clearly when it cannot connect
    return str(settings.db_path) != ":memory:" and not settings.db_path.exists()


def split_globals(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Pull the global options out of argv; the rest is the command."""
    found: dict[str, str] = {}
    rest: list[str] = []
    it = iter(argv)
    for tok in it:
        key, eq, value = tok.partition("=")
        # `test --playbooks DIR` is the test verb's own option, not the global one.
        if key in GLOBAL_OPTIONS and not (rest and rest[0] == "test" and key == "--playbooks"):
            if not eq:
                value = next(it, "")
            if not value:
                raise IncidentBotError(f"{key} needs a value")
            found[GLOBAL_OPTIONS[key]] = value
        else:
            rest.append(tok)
    return found, rest


def make_context(settings: Settings) -> Context:
    def open_engine() -> Engine:
        from bot.adapters.wiring import build_engine  # drivers are imported only when needed

        new = missing_store(settings)
        engine = build_engine(settings)
        if new:
            print(f"note: created a new store at {settings.db_path}", file=sys.stderr)
        load = engine.playbook_load
        if load is not None and not load.ok:
            # The verb still runs (pause, revert, status need no playbooks): say why
            # the playbooks in force are not the directory's.
            first = load.text(settings.playbooks_dir).partition("\n")[0]
            print(f"warning: {first}\n  first problem: {load.problems[0]}\n"
                  "  `llm-incident lint` shows every problem", file=sys.stderr)
        return engine

    def open_drills(engine: Engine):
        from drills.harness import drill_service  # the sandbox stack only when drilling

        return drill_service(engine, settings)

    return Context(actor=settings.user, playbooks_dir=settings.playbooks_dir,
                   release_gate=settings.release_gate,
                   canary_thresholds=settings.canary_thresholds, slos=settings.slos,
                   open_escalations=lambda engine: build_escalations(engine, settings),
                   console_url=settings.console_base, console_secret=settings.console_secret,
                   open_engine=open_engine, local=True, open_drills=open_drills)


async def run(argv: Sequence[str], settings: Settings | None = None) -> Result:
    overrides, tokens = split_globals(argv)
    where = overrides.pop("db_path", None)
    conv: dict[str, Any] = {k: (v if k == "prometheus_url" else Path(v))
                            for k, v in overrides.items()}
    settings = settings or Settings.from_env(**conv)
    if where is not None:
        settings = settings.with_db(where)
    if not tokens:
        tokens = ["help"]
    if tokens[0] == "demo":
        from bot.adapters.demo import demo_flags, run_demo

        return await run_demo(settings, use_prometheus=demo_flags(tokens[1:]))
    verb_name = tokens[0].lower()
    if verb_name in NO_STORE_VERBS and missing_store(settings):
        # Playbook tools need no database: never create one for them.
        settings = replace(settings, db_path=Path(":memory:"))
    elif missing_store(settings) and verb_name in VERBS and not VERBS[verb_name].changes_state:
        # A read verb never creates a store: a typo in LLM_INCIDENT_DB must not answer
        # "no incidents" from a new empty database.
        message = (f"no store at {settings.db_path} (hint: check LLM_INCIDENT_DB or --db; "
                   "`serve`, `demo` and any verb that records something create it)")
        return Result(message, {"error": message}, exit_code=2)
    ctx = make_context(settings)
    if tokens in (["help"], ["--help"], ["-h"]):
        listing = await execute(["help"], ctx)
        return Result(listing.text + "\n" + CLI_ONLY_HELP, listing.data)
    verb: Verb | None = VERBS.get(tokens[0].lower())
    if verb is not None and verb.changes_state and verb.name != "tick":
        # A CLI-only deployment has no scheduler: before changing anything, settle
        # what a crash left half-done and run the reverts that are overdue.
        try:
            await ctx.engine.runner.reconcile()
            await ctx.engine.runner.run_due()
        except IncidentBotError as err:
            return Result(str(err), {"error": str(err)}, exit_code=4)
    return await execute(tokens, ctx)


SERVE_USAGE = "usage: llm-incident [global options] serve [--host HOST] [--port PORT]"
HELP_WORDS = frozenset({"--help", "-h"})
CLI_ONLY_HELP = """
serve [--host HOST] [--port PORT]   run the service (webhooks, scheduler, Slack)
demo [--prometheus]                 a scored drill on the in-process sandbox
global options: --db PATH, --playbooks DIR, --policy PATH, --prometheus URL; --version"""


def parse_serve_args(tokens: Sequence[str]) -> dict[str, str | int]:
    """`serve`'s own options (tokens after the word serve) -> Settings overrides."""
    out: dict[str, str | int] = {}
    it = iter(tokens)
    for tok in it:
        key, eq, value = tok.partition("=")
        if key not in ("--host", "--port"):
            raise IncidentBotError(f"serve: unknown argument {tok!r}", hint=SERVE_USAGE)
        if not eq:
            value = next(it, "")
        if not value:
            raise IncidentBotError(f"serve: {key} needs a value", hint=SERVE_USAGE)
        if key == "--port":
            if not value.isdigit() or int(value) > 65535:
                raise IncidentBotError(f"serve: --port must be 0-65535, got {value!r}",
                                       hint=SERVE_USAGE)
            out["port"] = int(value)
        else:
            out["host"] = value
    return out


def serve_main(argv: Sequence[str]) -> int:
    from bot.adapters.service import serve  # web stack imported only for this command

    overrides, tokens = split_globals(argv)
    conv: dict[str, Any] = {k: (v if k == "prometheus_url" else Path(v))
                            for k, v in overrides.items()}
    if HELP_WORDS & set(tokens[1:]):
        print(f"{SERVE_USAGE}\n  run the webhook intake, the scheduler and (with tokens) Slack")
        return 0
    serve_args: dict[str, Any] = dict(parse_serve_args(tokens[1:]))
    # environ= stays the process environment; everything else is an override.
    settings = Settings.from_env(None, **conv, **serve_args)
    from bot.base.text_safety import OneLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    # Log lines quote alert text: one line each, no control characters from outside.
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # APScheduler logs every job run and httpx every request at INFO: the 1 s store
    # watch and a drill's traffic would fill the log.
    for noisy in ("apscheduler.executors.default", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(serve(settings))
    return 0


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-incident")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _is_serve(argv: Sequence[str]) -> bool:
    try:
        tokens = split_globals(argv)[1]
    except IncidentBotError:
        return False  # the normal path reports the bad global option
    return bool(tokens) and tokens[0] == "serve"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"llm-incident {package_version()}")
        return 0
    try:
        output_format = pop_format(argv)
        if _is_serve(argv):
            return serve_main(argv)
        # The CLI prints its own warning about broken playbooks (open_engine); the
        # service's log line would say the same thing twice.
        logging.getLogger("llm_incident.playbooks").addHandler(logging.NullHandler())
        result = asyncio.run(run(argv))
    except IncidentBotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    try:
        if JSON in argv:
            print(json.dumps(result.data, indent=2, default=str))
            if result.note:
                print(f"note: {result.note}", file=sys.stderr)
        else:
            out = sys.stdout if result.ok else sys.stderr
            show(result, out, output_format)
        sys.stdout.flush()
    except BrokenPipeError:
        # `llm-incident incidents | head`: the reader left; no traceback, and no second
        # error when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141 if result.ok else result.exit_code
    return result.exit_code


FORMATS = ("auto", "md", "text")


def pop_format(argv: list[str]) -> str:
    """``--format auto|md|text`` (anywhere): how Markdown results print. ``auto`` renders
    them for a terminal when the output is one, and keeps Markdown when piped."""
    for i, tok in enumerate(argv):
        key, eq, value = tok.partition("=")
        if key == "--format":
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
                del argv[i:i + 2]
            else:
                del argv[i]
            if value not in FORMATS:
                raise IncidentBotError(f"--format must be one of {', '.join(FORMATS)}, got "
                                       f"{value!r}")
            return value
    return "auto"


def show(result: Result, out: TextIO, output_format: str) -> None:
    if result.markdown is None or not result.ok:
        print(result.text, file=out)
        return
    terminal = output_format == "text" or (output_format == "auto" and out.isatty())
    if not terminal:
        print(result.markdown, file=out)
        return
    # Headings, tables and lists for people; no Markdown escapes like \( or \_.
    from rich.console import Console
    from rich.markdown import Markdown

    Console(file=out, force_terminal=out.isatty(), soft_wrap=False).print(
        Markdown(result.markdown))


if __name__ == "__main__":
    raise SystemExit(main())
