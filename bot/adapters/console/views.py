"""The console's pages (``attach_console`` mounts them on the service's FastAPI app).

Each page is a read of the store rendered to HTML in a worker thread (a held
write lock never stalls the web loop). The incident list and an incident's
timeline refresh themselves: the page asks for its own ``?part=`` fragment every
few seconds and swaps it in. The approval page is the one form; its POST spends
the signed link and calls ``Runner.approve_and_apply`` on the core, as Slack does.
Every state-changing request must come from the console's own origin and carry
its page's form token, and every response says it may not be framed (``guard``).
"""

from __future__ import annotations

import asyncio
import html
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from bot.adapters.console.guard import (
    FORM_FIELD,
    MAX_FORM_BYTES,
    SAFE_METHODS,
    ConsoleSecurity,
    FormTokens,
    RequestRefused,
    safe_path,
)
from bot.adapters.console.links import ApprovalLinks, Grant, LinkRefused
from bot.adapters.console.oncall import OncallCheck
from bot.adapters.console.urls import approval_path
from bot.base.errors import IncidentBotError, NotFound
from bot.core.engine import Engine
from bot.playbook.schema import format_duration

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
PAGE_SIZE = 50

_env = Environment(loader=FileSystemLoader(HERE / "templates"),
                   autoescape=select_autoescape(default=True, default_for_string=True),
                   trim_blocks=True, lstrip_blocks=True)


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    s = int((now - at).total_seconds())
    future = s < 0
    s = abs(s)
    text = f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"
    return f"in {text}" if future else f"{text} ago"


_env.filters["ago"] = _ago
_env.filters["ts"] = lambda at: at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"
_env.filters["duration"] = format_duration


def render(name: str, **data: Any) -> str:
    return _env.get_template(name).render(**data)


class Console:
    """The reads behind each page, and the one write (an approval through a link)."""

    def __init__(self, engine: Engine, links: ApprovalLinks, *, core: Any,
                 user_header: str | None = None, oncall: OncallCheck | None = None) -> None:
        self.engine, self.store, self.links, self.core = engine, engine.store, links, core
        self.user_header = user_header
        self.oncall = oncall
        self.forms = FormTokens(links.key, lambda: self.store.now().timestamp())

    def incidents(self, status: str | None, klass: str | None, drill: str | None,
                  part: str | None) -> str:
        # Filters narrow a longer read of the newest (four pages' worth).
        limit = PAGE_SIZE * 4 if klass or drill else PAGE_SIZE
        if status == "open":  # every status but resolved and cancelled
            rows = self.store.open_incidents(limit=limit)
        else:
            rows = self.store.incidents(None if status in (None, "", "any") else status,
                                        limit=limit)
        if klass:
            rows = [i for i in rows if i.klass == klass]
        if drill in ("yes", "no"):
            rows = [i for i in rows if i.is_drill == (drill == "yes")]
        now = self.store.now()
        data = {"incidents": rows[:PAGE_SIZE], "now": now, "status": status or "",
                "klass": klass or "", "drill": drill or ""}
        return render("incident_rows.html.j2" if part == "rows" else "incidents.html.j2", **data)

    def incident(self, incident_id: str, part: str | None) -> str:
        inc = self.store.incident(incident_id)
        now = self.store.now()
        timeline = self.store.timeline(inc.id)
        if part == "timeline":
            return render("timeline.html.j2", timeline=timeline, inc=inc, now=now)
        if part == "status":
            return html.escape(inc.status)
        suggested = next((e for e in reversed(timeline) if e.kind == "suggested" and e.data),
                         None)
        runs = []
        for run in self.store.runs(incident_id=inc.id):
            runs.append({"run": run, "mitigation": self.store.mitigation(run.id),
                         "approvals": self.store.approvals(run.id),
                         "events": self.store.run_events(run.id)})
        release = next((r for r in self.store.releases(limit=200)
                        if r.incident_id == inc.id), None)
        return render("incident.html.j2", inc=inc, alerts=self.store.alerts_for(inc.id),
                      suggested=suggested, runs=runs, timeline=timeline, now=now,
                      release=release, page=self.store.page(inc.id))

    def mitigations(self) -> str:
        now = self.store.now()
        rows = [(m, self.store.run(m.run_id)) for m in self.store.active_mitigations()]
        return render("mitigations.html.j2", rows=rows, now=now)

    def drills(self) -> str:
        from drills.scoring import trend
        from drills.store import DrillStore

        history = DrillStore(self.store).history(None, limit=100)
        by_class: dict[str, list[int]] = {}
        for d in reversed(history):
            if d.score is not None:
                by_class.setdefault(d.klass, []).append(d.score)
        trends = {k: trend(v) for k, v in sorted(by_class.items())}
        return render("drills.html.j2", drills=history, trends=trends, now=self.store.now())

    def releases(self) -> str:
        releases = self.store.releases(limit=100)
        timelines = {r.id: self.store.release_timeline(r.id) for r in releases[:20]}
        return render("releases.html.j2", releases=releases, timelines=timelines,
                      now=self.store.now())

    # --- the signed link --------------------------------------------------------------

    def who(self, request: Request) -> str:
        """The person the auth proxy signed in ('' without one)."""
        return request.headers.get(self.user_header, "") if self.user_header else ""

    async def approval_page(self, token: str, request: Request) -> tuple[int, str]:
        try:
            grant = await asyncio.to_thread(self.links.check, token)
            await self._may_approve(grant, request)  # said now, not after reading the diff
            return 200, await asyncio.to_thread(self._approval_html, grant, token,
                                                self.who(request))
        except (LinkRefused, NotFound) as exc:
            return 403, render("message.html.j2", title="Link refused", text=exc.message,
                               hint=exc.hint)

    def _approval_html(self, grant: Grant, token: str, who: str) -> str:
        run = self.store.run(grant.run_id)
        inc = self.store.incident(run.incident_id) if run.incident_id else None
        return render("approve.html.j2", grant=grant, run=run, inc=inc, token=token,
                      form_token=self.forms.issue(approval_path(token), who),
                      form_field=FORM_FIELD, approvals=self.store.approvals(run.id),
                      now=self.store.now())

    async def approve(self, token: str, request: Request) -> tuple[int, str]:
        # The origin and the page's form token were checked before this runs (guard).
        try:
            grant = await asyncio.to_thread(self.links.check, token)
            await self._may_approve(grant, request)
            await asyncio.to_thread(self.links.spend, grant)  # once, even if what follows fails
        except LinkRefused as exc:
            log.info("console approval link refused: %s", exc.message)
            return 403, render("message.html.j2", title="Link refused", text=exc.message,
                               hint=exc.hint)
        try:
            run = await self.core.call(self.engine.runner.approve_and_apply, grant.run_id,
                                       grant.user)
        except IncidentBotError as exc:
            log.info("console approval of %s by %s refused: %s", grant.run_id, grant.user, exc)
            return 409, render("message.html.j2", title=f"{grant.run_id} was not approved",
                               text=str(exc), hint=exc.hint)
        return 200, render("message.html.j2", title=f"{run.id} approved by {grant.user}",
                           text=f"{run.id} is {run.state}.", run=run, hint=None)

    async def _may_approve(self, grant: Grant, request: Request) -> None:
        if self.user_header:
            # Behind an SSO proxy: the person signed in must be the one the link names.
            who = self.who(request)
            if who != grant.user:
                raise LinkRefused(f"this link is for {grant.user}; you are signed in as "
                                  f"{who or 'nobody'}", hint="ask for a link of your own")
        if self.oncall is not None:
            # On call when issued is not enough: asked again now, as Slack asks on a click.
            decision = await self.oncall.check(grant.user)
            if not decision.allowed:
                raise LinkRefused(f"{grant.user} may not approve any more: {decision.reason}",
                                  hint="ask someone on call now for the approval")


def attach_console(app: FastAPI, engine: Engine, *, core: Any, secret: str | None = None,
                   user_header: str | None = None, oncall: OncallCheck | None = None,
                   external_url: str | None = None) -> Console:
    """Mount ``/ui`` on ``app``. ``external_url`` (LLM_INCIDENT_CONSOLE_URL) is the origin
    a state-changing request must come from (default: the request's own Host);
    ``oncall`` is Slack's on-call check, asked again whenever a link is used."""
    console = Console(engine, ApprovalLinks(engine.store, secret), core=core,
                      user_header=user_header, oncall=oncall)

    def refusal(exc: RequestRefused) -> tuple[int, str]:
        return 403, render("message.html.j2", title="Request refused", text=exc.message,
                           hint=exc.hint)

    async def form_token(request: Request) -> None:
        """Every state-changing route: the page's form token, for this path and person."""
        if request.method in SAFE_METHODS:
            return
        body, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            body.append(chunk)
            if size > MAX_FORM_BYTES:
                break  # enough to refuse it (check says the form is too large)
        console.forms.check(request.url.path, console.who(request), b"".join(body))

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestRefused)
        log.warning("console %s %s refused: %s", request.method, safe_path(request.url.path),
                    exc.message)
        status, html = refusal(exc)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    app.add_exception_handler(RequestRefused, refused)
    # Headers on every /ui response, and the origin check before any state-changing handler.
    app.add_middleware(ConsoleSecurity, external_url=external_url, refused=refusal)
    router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(form_token)])

    async def page(fn: Any, *args: Any) -> Response:
        try:
            html = await asyncio.to_thread(fn, *args)
        except NotFound as exc:
            return HTMLResponse(render("message.html.j2", title="Not found", text=str(exc),
                                       hint=exc.hint), status_code=404)
        except IncidentBotError as exc:  # a bad filter value, say: said, never a 500
            return HTMLResponse(render("message.html.j2", title="Bad request", text=str(exc),
                                       hint=exc.hint), status_code=400)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("")
    async def home() -> Response:
        return RedirectResponse("/ui/incidents", status_code=307)

    @router.get("/incidents")
    async def incidents(status: str | None = None, klass: str | None = None,
                        drill: str | None = None, part: str | None = None) -> Response:
        return await page(console.incidents, status, klass, drill, part)

    @router.get("/incidents/{incident_id}")
    async def incident(incident_id: str, part: str | None = None) -> Response:
        return await page(console.incident, incident_id.upper(), part)

    @router.get("/mitigations")
    async def mitigations() -> Response:
        return await page(console.mitigations)

    @router.get("/drills")
    async def drills() -> Response:
        return await page(console.drills)

    @router.get("/releases")
    async def releases() -> Response:
        return await page(console.releases)

    @router.get("/approve/{token}")
    async def approval(token: str, request: Request) -> Response:
        # Referrer-Policy same-origin (guard.HEADERS) keeps the token from other sites.
        status, html = await console.approval_page(token, request)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    @router.post("/approve/{token}")
    async def approve(token: str, request: Request) -> Response:
        status, html = await console.approve(token, request)
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    @router.get("/static/console.css")
    async def css() -> Response:
        return Response((HERE / "static" / "console.css").read_text(), media_type="text/css")

    @router.get("/static/console.js")
    async def js() -> Response:
        return Response((HERE / "static" / "console.js").read_text(),
                        media_type="text/javascript")

    app.include_router(router)
    return console
