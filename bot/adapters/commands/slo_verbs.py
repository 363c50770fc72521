"""`slo lint [FILE] | render [FILE] [--out DIR] [--scale N] | status [FILE] | schema`.

FILE is an SLO file, or OpenSLO v1 documents (``bot.playbook.openslo``: what maps is
read, what does not is refused or noted). It defaults to ``LLM_INCIDENT_SLOS`` (or
the shipped example). Naming a file reads
the bot's machine, so from Slack only the configured file is used.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx

from bot.adapters.commands.context import Context
from bot.adapters.commands.grammar import Command, Result
from bot.base.errors import InputError
from bot.core.slo_status import slo_status
from bot.playbook.engine_profiles import PROFILES, detect
from bot.playbook.openslo import load_openslo_text
from bot.playbook.slo_rules import dump, render_rules, render_tests
from bot.playbook.slos import SHIPPED_EXAMPLE, SloFile, load_slos, slos_json_schema

USAGE = "slo lint [FILE] | slo render [FILE] [--out DIR] [--scale N] | slo status [FILE] | " \
        "slo sources | slo schema; lint, render and status take --source NAME, or --source " \
        "auto --metrics URL|FILE"


# A metrics page is a few MB at most; an engine with a cardinality problem, a wrong
# port or a hostile page must not take the machine's memory or hang the command.
MAX_PAGE_BYTES = 32 * 1024 * 1024
PAGE_DEADLINE = 15.0  # seconds for the whole page, not per read


def _file(ctx: Context, path: str | None) -> tuple[Path, SloFile, list[str]]:
    """The SLO file (or OpenSLO documents, where they map) and notes on what was skipped."""
    if path is not None:
        ctx.require_local("slo FILE")
    where = Path(path) if path else (ctx.slos or SHIPPED_EXAMPLE)
    try:
        text = where.read_text(encoding="utf-8")
    except OSError:
        return where, load_slos(where), []  # says it cannot read it, naming the file
    if re.search(r"^apiVersion:\s*openslo/", text, re.M):
        slos, notes = load_openslo_text(text, str(where))
        return where, slos, notes
    return where, load_slos(where), []  # a bad file raises, naming file, line and field


def _sources() -> Result:
    lines = [f"{p.name}: {p.title}; route label {p.route_label}; names from {p.source}"
             + "".join(f"; {n}" for n in p.notes) for p in PROFILES.values()]
    return Result("\n".join(lines), {"sources": {p.name: {"title": p.title, "source": p.source}
                                                  for p in PROFILES.values()}})


async def _metrics_page(ctx: Context, where: str | None) -> str:
    """The text of a ``/metrics`` page: a URL, or a file saved from one."""
    if where is None:
        raise InputError("--source auto reads a metrics page: give --metrics URL or FILE",
                         hint="e.g. --metrics http://vllm:8000/metrics")
    ctx.require_local("slo --metrics")  # a file or the network of the bot's machine
    if not where.startswith(("http://", "https://")):
        try:
            with Path(where).open("rb") as f:
                data = f.read(MAX_PAGE_BYTES + 1)
        except OSError as exc:
            raise InputError(f"cannot read {where}: {exc.strerror or exc}") from None
        return _within_limit(where, data).decode("utf-8", errors="replace")
    try:
        return await asyncio.wait_for(_fetch_page(where), PAGE_DEADLINE)
    except TimeoutError:
        raise InputError(f"{where} did not send its whole page within {PAGE_DEADLINE:g} s "
                         "(the limit for reading a metrics page)",
                         hint="is that the engine's metrics port? Save the page with curl "
                              "and give the file instead") from None
    except httpx.HTTPError as exc:
        raise InputError(f"cannot read {where}: {type(exc).__name__}",
                         hint="is the engine up, and is that its metrics port?") from None


async def _fetch_page(where: str) -> str:
    """The page, streamed: stopped as soon as it passes ``MAX_PAGE_BYTES``."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client, \
            client.stream("GET", where) as resp:
        if resp.status_code != 200:
            raise InputError(f"{where} answered {resp.status_code}",
                             hint="some proxies want a key: save the page with curl and "
                                  "give the file instead")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            _within_limit(where, b"", size)
            chunks.append(chunk)
        return b"".join(chunks).decode(resp.encoding or "utf-8", errors="replace")


def _within_limit(where: str, data: bytes, size: int | None = None) -> bytes:
    if (len(data) if size is None else size) > MAX_PAGE_BYTES:
        raise InputError(f"{where} is larger than {MAX_PAGE_BYTES // 2**20} MB (the limit "
                         "for a metrics page); nothing was read from it",
                         hint="is that the engine's metrics page? Save the part you need to a "
                              "file and give the file instead")
    return data


def _pct(v: float | None) -> str:
    return "n/a (no traffic)" if v is None else f"{v:.1%}"


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


async def slo_verb(ctx: Context, cmd: Command) -> Result:
    sub = (cmd.args.get("sub") or "status").lower()
    arg = cmd.args.get("arg")
    if sub == "schema":
        return Result(json.dumps(slos_json_schema(), indent=2), slos_json_schema())
    if sub == "sources":
        return _sources()
    if sub not in ("lint", "render", "status"):
        raise InputError(f"no slo command '{sub[:40]}'", hint=USAGE)
    where, slos, notes = _file(ctx, arg)
    source = cmd.opt("--source")
    if source is not None:
        if source == "auto":
            found, seen = detect(await _metrics_page(ctx, cmd.opt("--metrics")))
            source = found.name
            notes = [*notes, f"source: {source} ({found.title}), read off the metrics page",
                     *seen]
        slos = slos.on(source)  # every objective must be countable there, or it says why
    elif cmd.opt("--metrics") is not None:
        raise InputError("--metrics is read with --source auto", hint=USAGE)
    if sub == "lint":
        return Result("\n".join([f"{where}: ok: {len(slos.objectives)} objectives on {slos.source}'s metrics, "
                                  f"{len(slos.budgets)} budgets", *notes]),
                      {"objectives": list(slos.objectives), "budgets": list(slos.budgets),
                       "notes": notes})
    if sub == "render":
        ctx.require_local("slo render")  # it writes files
        try:
            scale = float(cmd.opt("--scale") or 1)
        except ValueError:
            raise InputError(f"--scale must be a number, got {cmd.opt('--scale')!r}") from None
        if scale < 1:
            raise InputError(f"--scale must be 1 or more, got {scale:g}")
        rules = dump(render_rules(slos, scale))
        out = cmd.opt("--out")
        if out is None:  # the notes as YAML comments: the output stays a rules file
            return Result("".join(f"# {n}\n" for n in notes) + rules, render_rules(slos, scale))
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "slo-rules.yaml").write_text(rules)
        written = [str(folder / "slo-rules.yaml")]
        if scale == 1:  # the tests are written for the real windows
            (folder / "slo-rules.test.yaml").write_text(
                dump(render_tests(slos, "slo-rules.yaml")))
            written.append(str(folder / "slo-rules.test.yaml"))
        return Result("\n".join(notes + ["wrote " + ", ".join(written)]) +
                      "\ncheck them: promtool check rules "
                      f"{written[0]}" + (f" && (cd {folder} && promtool test rules "
                                         "slo-rules.test.yaml)" if scale == 1 else ""),
                      {"written": written})
    metrics = ctx.engine.runner.metrics
    if metrics is None:
        raise InputError("slo status reads Prometheus; none is set",
                         hint="set LLM_INCIDENT_PROMETHEUS_URL (or --prometheus)")
    objectives, budgets = await slo_status(metrics, slos)
    lines = [f"{s.name}: {s.objective.route} {s.objective.sli} target "
             f"{s.objective.target:.4g}: budget left {_pct(s.budget_left)} of "
             f"{slos.period.days}d; burn {_x(s.burn_1h)} (1h), {_x(s.burn_6h)} (6h)"
             for s in objectives]
    lines += [f"{b.name}: {'the top customer ' if b.budget.per_customer else ''}"
              f"spent ${b.spent_1h or 0:.2f} in 1h"
              + (f" of ${b.budget.per_hour_usd:g}" if b.budget.per_hour_usd else "")
              + f", ${b.spent_1d or 0:.2f} in 1d"
              + (f" of ${b.budget.per_day_usd:g}" if b.budget.per_day_usd else "")
              for b in budgets]
    data = {"objectives": [{"name": s.name, "route": s.objective.route, "sli": s.objective.sli,
                            "target": s.objective.target, "bad_ratio": s.bad_ratio,
                            "budget_left": s.budget_left, "burn_1h": s.burn_1h,
                            "burn_6h": s.burn_6h} for s in objectives],
            "budgets": [{"name": b.name, "spent_1h": b.spent_1h, "spent_1d": b.spent_1d}
                        for b in budgets]}
    return Result("\n".join(lines) or "no objectives", data)
