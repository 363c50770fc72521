"""The paging services ``bot.core.paging.Pager`` speaks to.

- ``PagerDutyEvents``: PagerDuty's Events API v2 (``POST /v2/enqueue``): one JSON
  event per action, ``routing_key`` (the integration key), ``event_action``
  (trigger / acknowledge / resolve) and the incident's ``dedup_key``; a trigger
  also carries ``payload`` (summary, source, severity, custom_details) and
  ``links``. PagerDuty answers 202 when it took the event, 400 for an invalid
  one, 429 when rate-limited, 5xx when it could not.
- ``WebhookPager``: the same event as JSON to any URL (an escalation bridge of
  your own); 2xx took it, 4xx refused it, 429 and 5xx are retried.

Both take an injected ``httpx.AsyncClient`` (the tests give one that talks to a
local stub speaking the documented protocol).
"""

from __future__ import annotations

from typing import Any

import httpx

from bot.adapters.console.urls import approval_url
from bot.core.paging import (
    EscalationRules,
    Escalations,
    PageEvent,
    Pager,
    PageRejected,
    PageRetry,
)

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


def _body(event: PageEvent) -> dict[str, Any]:
    return {"event_action": event.action, "dedup_key": event.dedup_key}


def _outcome(resp: httpx.Response, what: str) -> None:
    if resp.status_code == 429 or resp.status_code >= 500:
        raise PageRetry(f"{what} answered {resp.status_code}: {resp.text[:200]}")
    if resp.status_code >= 400:
        raise PageRejected(f"{what} refused the event ({resp.status_code}): {resp.text[:200]}",
                           hint="check the routing key and the URL in the settings")


class PagerDutyEvents:
    def __init__(self, routing_key: str, client: httpx.AsyncClient,
                 url: str = PAGERDUTY_EVENTS_URL) -> None:
        self.routing_key = routing_key
        self.client = client
        self.url = url

    async def send(self, event: PageEvent) -> None:
        body = {"routing_key": self.routing_key, **_body(event)}
        if event.action == "trigger":
            body["payload"] = {"summary": event.summary or event.dedup_key,
                               "source": event.source, "severity": event.severity,
                               "custom_details": dict(event.details)}
            body["links"] = [{"href": href, "text": text} for href, text in event.links]
        try:
            resp = await self.client.post(self.url, json=body, timeout=10)
        except httpx.HTTPError as exc:
            raise PageRetry(f"PagerDuty could not be reached: {exc}") from exc
        _outcome(resp, "PagerDuty")


class WebhookPager:
    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.client = client

    async def send(self, event: PageEvent) -> None:
        body = {**_body(event), "summary": event.summary, "severity": event.severity,
                "source": event.source, "details": dict(event.details),
                "links": [{"href": href, "text": text} for href, text in event.links]}
        try:
            resp = await self.client.post(self.url, json=body, timeout=10)
        except httpx.HTTPError as exc:
            raise PageRetry(f"the escalation webhook could not be reached: {exc}") from exc
        _outcome(resp, "the escalation webhook")


def build_escalations(engine: Any, settings: Any,
                      client: httpx.AsyncClient | None = None) -> Escalations | None:
    """The escalation rules with the configured pager; None when nothing is configured."""
    client = client or httpx.AsyncClient()
    pager: Pager
    if settings.pagerduty_routing_key:
        pager = PagerDutyEvents(settings.pagerduty_routing_key, client,
                                settings.pagerduty_url or PAGERDUTY_EVENTS_URL)
    elif settings.page_webhook:
        pager = WebhookPager(settings.page_webhook, client)
    else:
        return None
    rules = EscalationRules(unacknowledged=dict(settings.page_unacked),
                            approval_pending=settings.page_approval,
                            console_url=settings.console_base,
                            links_for=page_links(engine.store, settings))
    return Escalations(engine, pager, rules)


def slack_thread_links(store: Any, settings: Any) -> Any:
    """The incident's Slack thread, when the bot posts to Slack (a permalink by id:
    Slack redirects ``/archives/CHANNEL/pTS`` to the workspace's own address)."""
    channel = settings.slack_channel
    if not (settings.slack_bot_token and channel):
        return None

    def links(incident_id: str) -> list[tuple[str, str]]:
        from bot.adapters.slack.thread_store import ChatMessages

        top = ChatMessages(store).get(incident_id, channel)
        if top is None:
            return []
        return [(f"https://slack.com/archives/{channel}/p{top.ts.replace('.', '')}",
                 f"{incident_id} in Slack")]

    return links


MAX_APPROVERS = 5  # approval links per run in one page


def approval_links(store: Any, settings: Any) -> Any:
    """Signed approval links for the runs of an incident awaiting approval, one per
    on-call person other than the requester (``LLM_INCIDENT_ONCALL_USERS``), so the
    person the page wakes can approve without Slack. Each is bound to that person
    (behind the SSO proxy, only they can use it), expires and works once."""
    people = tuple(settings.oncall_users)
    if not people:
        return None

    def links(incident_id: str) -> list[tuple[str, str]]:
        from bot.adapters.console.links import ApprovalLinks

        signer = ApprovalLinks(store, settings.console_secret)
        out = []
        for run in store.runs(incident_id=incident_id, state="awaiting_approval"):
            for user in [u for u in people if u != run.requested_by][:MAX_APPROVERS]:
                token = signer.issue(run.id, user)
                out.append((approval_url(settings.console_base, token),
                            f"Approve {run.id} as {user}"))
        return out

    return links


def page_links(store: Any, settings: Any) -> Any:
    """Every link a page carries beyond the console page: the Slack thread, and approval
    links for the runs waiting on someone."""
    parts = [f for f in (slack_thread_links(store, settings), approval_links(store, settings))
             if f is not None]
    if not parts:
        return None
    return lambda incident_id: [link for part in parts for link in part(incident_id)]
