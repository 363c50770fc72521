"""Paging: when Slack is not enough, the escalation rules page someone, once.

The rules (``EscalationRules``, from settings) decide *that* an incident must page:

- it stayed ``open`` (nobody acknowledged it) for its severity's limit
  (default: critical 5 minutes, high 15, warning 30; info never);
- a run of it waited for approval longer than ``approval_pending``;
- a verification escalated (``on_fail: escalate``), or a revert failed: at once.

The store records each page (``bot.store.pages``): what should be true at the
paging service (triggered, then acknowledged, then resolved) and what the service
last accepted. ``Escalations.round`` (the leader's poll, and ``tick``) first moves
pages forward from the incidents (acknowledged or resolved in llm-incident
acknowledges or resolves the page), then sends what is due through the ``Pager``,
the narrow driver every paging service implements (PagerDuty Events v2, a generic
webhook; a fake in tests). A refused-for-now send (429, 5xx, a network error) is
retried with backoff; an action the service accepted is recorded and never sent
again, across retries, restarts and replicas. The page's ``dedup_key`` is the
incident's, so even a send repeated by a crash between the service's answer and
the store's commit lands on the same page. A drill never pages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from bot.base.errors import IncidentBotError
from bot.playbook.schema import format_duration
from bot.store import Event, Incident, Page

if TYPE_CHECKING:
    from bot.core.engine import Engine

log = logging.getLogger(__name__)

ACTOR = "llm-incident paging"
DEDUP_PREFIX = "llm-incident/"
MAX_BACKOFF = timedelta(minutes=5)
SEND_CLAIM = timedelta(seconds=30)  # a sender that died mid-send is retried after this
# Timeline events that escalate at once, and why.
ESCALATING_EVENTS = {"escalation": "a verification escalated",
                     "revert_failed": "a revert failed"}


class PageRetry(IncidentBotError):
    """The paging service cannot take it now (429, 5xx, no connection): try again later."""


class PageRejected(IncidentBotError):
    """The paging service refused the event for good (400: a bad routing key or body)."""


@dataclass(frozen=True)
class PageEvent:
    """One action on one page, in the service's terms (PagerDuty Events API v2's)."""

    action: str  # trigger | acknowledge | resolve
    dedup_key: str
    summary: str = ""
    severity: str = "critical"  # critical | error | warning | info
    source: str = "llm-incident"
    links: tuple[tuple[str, str], ...] = ()  # (href, text)
    details: Mapping[str, Any] = field(default_factory=dict)


class Pager(Protocol):
    """Sends one event; raises ``PageRetry`` or ``PageRejected`` when it was not taken."""

    async def send(self, event: PageEvent) -> None: ...


@dataclass(frozen=True)
class EscalationRules:
    unacknowledged: Mapping[str, timedelta] = field(default_factory=lambda: {
        "critical": timedelta(minutes=5), "high": timedelta(minutes=15),
        "warning": timedelta(minutes=30)})
    approval_pending: timedelta | None = timedelta(minutes=10)
    console_url: str | None = None  # links in the page point here
    # More (href, text) links for an incident, from a front end (its Slack thread).
    links_for: Callable[[str], list[tuple[str, str]]] | None = None

    @staticmethod
    def parse_unacknowledged(text: str) -> dict[str, timedelta]:
        """``critical=5m,warning=30m`` (``none`` pages for no severity)."""
        from bot.base.durations import parse_duration
        from bot.base.errors import InputError

        if text.strip().lower() == "none":
            return {}
        out: dict[str, timedelta] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            severity, _, limit = part.partition("=")
            if not severity or not limit:
                raise InputError(f"escalation rule {part!r} is not SEVERITY=DURATION",
                                 hint="e.g. LLM_INCIDENT_PAGE_UNACKED=critical=5m,warning=30m")
            out[severity.strip().lower()] = parse_duration(limit.strip())
        return out


# Our severities onto the Events API's four.
SEVERITY = {"critical": "critical", "page": "critical", "error": "error", "high": "error",
            "warning": "warning", "ticket": "warning", "info": "info"}


class Escalations:
    def __init__(self, engine: Engine, pager: Pager, rules: EscalationRules) -> None:
        self.engine = engine
        self.store = engine.store
        self.pager = pager
        self.rules = rules

    async def round(self) -> list[Page]:
        """Decide, then deliver; returns the pages an action was sent for."""
        self.escalate()
        self.follow()
        return await self.deliver()

    # --- deciding -----------------------------------------------------------------------

    def escalate(self) -> list[str]:
        """Start a page for every open incident a rule says must page; returns their ids."""
        paged = []
        now = self.store.now()
        for inc in self.store.open_incidents():
            if inc.is_drill:
                continue  # a drill never pages
            page = self.store.page(inc.id)
            if page is not None and page.wanted != "resolve":
                continue  # paged already: once per opening
            timeline = self.store.timeline(inc.id)
            # A reopened incident (it flapped) is judged from its reopening, and pages anew.
            since = max([inc.created_at] + [e.at for e in timeline if e.kind == "status"
                                            and e.data.get("reopened")])
            if page is not None and page.created_at >= since:
                continue
            why = self._why(inc, now, since, timeline)
            if not why:
                continue
            if page is not None:
                started = self.store.rearm_page(inc.id, why)
            else:
                started = self.store.want_page(inc.id, "trigger", reason=why,
                                               severity=inc.severity,
                                               dedup_key=DEDUP_PREFIX + inc.id)
            if started:
                self.store.add_event(inc.id, "paged", f"paging: {why}", actor=ACTOR,
                                     data={"reason": why})
                paged.append(inc.id)
        return paged

    def _why(self, inc: Incident, now: Any, since: Any, timeline: list[Event]) -> str | None:
        limit = self.rules.unacknowledged.get(inc.severity.lower())
        if inc.status == "open" and limit is not None and now - since >= limit:
            return f"unacknowledged: {inc.severity}, nobody acknowledged it for {_minutes(limit)}"
        pending = self.rules.approval_pending
        if pending is not None:
            for run in self.store.runs(incident_id=inc.id, state="awaiting_approval"):
                if now - max(run.created_at, since) >= pending:
                    return f"approval: {run.id} has waited for approval for {_minutes(pending)}"
        for ev in timeline:
            if ev.kind in ESCALATING_EVENTS and ev.at >= since:
                return f"escalation: {ESCALATING_EVENTS[ev.kind]}: {ev.text}"
        return None

    def follow(self) -> None:
        """Acknowledged or resolved here: the page follows (once; the store says if it did)."""
        for page in self.store.unresolved_pages():
            inc = self.store.incident(page.incident_id)
            if not inc.is_open:
                self.store.want_page(inc.id, "resolve")
            elif page.wanted == "trigger" and self._acknowledged(inc, page):
                self.store.want_page(inc.id, "acknowledge")

    def _acknowledged(self, inc: Incident, page: Page) -> bool:
        """Someone owns it now: the incident was acknowledged after the page (or, for a
        page about nobody acknowledging it, at all)."""
        if inc.status == "open":
            return False
        if page.reason.startswith("unacknowledged"):
            return True
        return any(ev.at > page.created_at and (ev.kind == "acknowledged" or (
            ev.kind == "status" and "-> acknowledged" in ev.text))
            for ev in self.store.timeline(inc.id))

    # --- delivering ---------------------------------------------------------------------

    async def deliver(self) -> list[Page]:
        sent = []
        for page in self.store.due_pages():
            action = page.pending
            assert action is not None
            if page.sent is None and action != "trigger":
                # Acknowledged or resolved before the first send: nobody needs waking.
                self.store.page_sent(page.incident_id, page.wanted)
                continue
            if action == "acknowledge" and page.wanted == "resolve":
                action = "resolve"  # straight to resolved: one event, not two
            if not self.store.claim_page(page.incident_id, self.store.now() + SEND_CLAIM):
                continue  # another round (this process's or another's) is sending it
            try:
                await self.pager.send(self._event(page, action))
            except PageRetry as exc:
                wait = min(MAX_BACKOFF, timedelta(seconds=2 ** min(page.attempts, 8)))
                self.store.page_retry(page.incident_id, str(exc), self.store.now() + wait)
                log.warning("paging %s (%s) not taken, retried in %s: %s", page.incident_id,
                            action, wait, exc)
                continue
            except PageRejected as exc:
                # Permanent: say so where people look, and stop trying this action.
                self.store.page_retry(page.incident_id, str(exc),
                                      self.store.now() + timedelta(days=3650))
                self.store.add_event(page.incident_id, "page_failed",
                                     f"paging refused the {action}: {exc}", actor=ACTOR)
                continue
            self.store.page_sent(page.incident_id, action)
            self.store.add_event(page.incident_id, "page_" + action,
                                 f"page {action} sent ({page.dedup_key})", actor=ACTOR)
            sent.append(page)
        return sent

    def _event(self, page: Page, action: str) -> PageEvent:
        if action != "trigger":
            return PageEvent(action, page.dedup_key)
        inc = self.store.incident(page.incident_id)
        links: list[tuple[str, str]] = []
        if self.rules.console_url:
            base = self.rules.console_url.rstrip("/")
            links.append((f"{base}/ui/incidents/{inc.id}", f"{inc.id} in the llm-incident console"))
        if self.rules.links_for is not None:
            links += self.rules.links_for(inc.id)
        return PageEvent(
            "trigger", page.dedup_key, summary=f"{inc.id}: {inc.title}"[:1024],
            severity=SEVERITY.get(inc.severity.lower(), "critical"), links=tuple(links),
            details={"incident": inc.id, "class": inc.klass, "status": inc.status,
                     "why": page.reason})


def _minutes(d: timedelta) -> str:
    return format_duration(d)  # 5m, 90s: as the settings write it
