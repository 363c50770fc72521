"""Publishes the engine's Messages to one Slack channel: one top message per incident.

* ``suggestion`` (a new incident) -> ``chat.postMessage`` in the channel; its ``ts``
  goes to the store (``bot.adapters.slack.thread_store``), so after a restart the bot keeps
  editing the same message and threading under it. A repeated suggestion for
  an incident that already has a top message edits it instead of posting again.
* ``update`` -> ``chat.update`` of the top message in place: the status on top,
  the suggestion (playbook, steps, buttons) kept underneath.
* ``timeline`` / ``result`` / ``reminder`` / ``drill`` -> a reply in the top
  message's thread (``thread_ts``). A message about no incident, or about one
  with no top message yet, is posted to the channel (and becomes the top one).

Slack allows about one message per second per channel, so ``publish`` only
queues; a background task drains the queue, and posts and updates to the channel
together are at least ``min_interval`` apart. New top messages go first (a storm
must not hide a new incident behind thread chatter), then due updates, then
thread replies in order. ``chat.postMessage`` calls to a channel are at least
``min_interval`` apart; a ``429`` is retried after its ``Retry-After``; updates of
one incident within ``coalesce_window`` become a single ``chat.update`` with the
latest content. Nothing is dropped for being queued: suggestions always go out.

Every call goes through ``bot.adapters.slack.calls``: a 429 waits its Retry-After,
a 5xx, a timeout or an unreadable (non-JSON) answer backs off (1, 2, 4... up to 60
seconds) and retries until Slack takes the message; the sender never dies on an
answer it did not expect. A permanent refusal (``channel_not_found``,
``msg_too_long``...) is logged with the method and error, counted, put on the
incident's timeline (``slack_failed``) and does not hold up other messages.
Failures are never raised into the engine.
``clock`` (seconds, monotonic) and ``sleep`` are injectable so tests observe
every wait without sleeping. ``aclose()`` flushes the queue, held updates too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack.blocks import render, render_text
from bot.adapters.slack.calls import SlackCallError, call
from bot.adapters.slack.thread_store import PENDING, ChatMessages
from bot.core.lifecycle import Lifecycle
from bot.core.messages import Message, Section
from bot.store import Store

log = logging.getLogger(__name__)

TOP_CLAIM_WAIT = 10.0  # seconds to wait for another replica posting the same top message
MAX_BACKOFF = 60.0  # seconds between retries of a transient failure, at most
PACED = ("chat_postMessage", "chat_update")
METADATA_EVENT = "llm_incident_message"  # Slack message metadata on every post  # the calls that share a channel's pace


@dataclass
class _Pending:
    msg: Message
    due: float
    row: int  # its chat_deliveries row


def compose_top(base: Message, status: Message | None) -> Message:
    """What the top message shows: the latest status first, the suggestion underneath.

    The status's buttons come first; the base's ``ack`` goes (the status update
    decides whether acknowledging still makes sense), duplicates go.
    """
    if status is None:
        return base
    if base.kind == "update":  # no suggestion was ever posted: the status is all there is
        return status
    status_secs = tuple(
        s if s.title or i else replace(s, title="Status")
        for i, s in enumerate(status.sections)
    ) or (Section(status.text, title="Status"),)
    seen = {(b.action, b.value) for b in status.buttons}
    # A closed incident's message offers nothing more to do (Run, Dry-run, Not this
    # playbook go); the status's own buttons (revert a mitigation still active) stay.
    kept = () if status.closes else tuple(
        b for b in base.buttons if b.action != "ack" and (b.action, b.value) not in seen)
    return replace(
        base, text=status.text, severity=status.severity or base.severity,
        sections=status_secs + base.sections, buttons=status.buttons + kept,
        is_drill=base.is_drill or status.is_drill,
    )


class SlackNotifier:
    """``bot.core.notifier.Notifier`` for one Slack channel through an ``AsyncWebClient``."""

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        store: Store,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        min_interval: float = 1.0,
        coalesce_window: float = 2.0,
        max_retries: int = 5,
        max_retry_after: float = 120.0,
    ) -> None:
        self.client = client
        self.console_url: str | None = None  # set by the wiring: every message links there
        self.channel = channel
        self.store = store
        self.messages = ChatMessages(store)
        self.clock = clock
        self.sleep = sleep
        self.min_interval = min_interval
        self.coalesce_window = coalesce_window
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        # calls by method, "rate_limited" retries, "failed" messages, "coalesced" updates
        self.stats: Counter[str] = Counter()
        self._posts: deque[tuple[Message, int]] = deque()  # new top messages: first
        self._replies: deque[tuple[Message, int]] = deque()  # thread replies, in order
        self._updates: dict[str, _Pending] = {}  # incident -> latest update not yet sent
        self._last_update: dict[str, float] = {}  # incident -> when its last update went
        self._last_post: dict[str, float] = {}  # channel -> when the last post or update went
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._current_row = 0  # the delivery being sent (its row id), for post metadata
        self._maybe_sent: set[int] = set()  # posts a crashed process may have delivered
        self._origin = str(store.created_at() or "")  # tells this store's posts apart
        self._resume()

    def _resume(self) -> None:
        """Queue again what an earlier process took and Slack never got (a crash, a
        restart, a shutdown while Slack was down): the store keeps every message until
        Slack takes it."""
        try:  # bounded: what Slack took more than a week ago is forgotten at each start
            self.messages.prune_deliveries(self.store.now() - timedelta(days=7))
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping
            log.warning("slack: could not prune old deliveries: %s", exc)
        for d in self.messages.undelivered(self.channel):
            self._queue(d.queue, d.message, d.id)
            if d.attempted:
                self._maybe_sent.add(d.id)
        # A change committed just before a crash may never have queued its update: a
        # live message that shows another status than the store gets one now.
        queued = set(self._updates)
        for incident_id in self.messages.stale(self.channel):
            if incident_id not in queued:
                msg = Lifecycle(self.store).alerts_message(incident_id)
                self._queue("update", msg, self.messages.enqueue(self.channel, "update", msg))
        if self.pending:
            log.info("slack: %d messages from before the restart queued again", self.pending)
    # --- the Notifier protocol ------------------------------------------------------

    async def publish(self, msg: Message) -> None:
        """Queue ``msg``; returns at once. Never raises."""
        if self._closing:
            self.stats["failed"] += 1
            try:  # shutting down: the next start sends it
                self.messages.enqueue(self.channel, _queue_of(msg), msg)
                log.warning("slack notifier closing; %s message %r kept for the next start",
                            msg.kind, msg.title)
            except Exception as exc:  # noqa: BLE001
                log.error("slack notifier closed; %s message %r not sent (%s)", msg.kind,
                          msg.title, exc)
            return
        queue = _queue_of(msg)
        held = self._updates.get(msg.incident_id or "") if queue == "update" else None
        try:
            if held is not None:
                self.messages.replace_queued(held.row, msg)
                held.msg = msg  # a storm of updates: only the latest is shown anyway
                self.stats["coalesced"] += 1
            else:
                self._queue(queue, msg, self.messages.enqueue(self.channel, queue, msg))
        except Exception as exc:  # noqa: BLE001 - the store failed: send it anyway
            log.error("slack: could not keep the %s message %r in the store (%s); "
                      "sending it without a durable copy", msg.kind, msg.title, exc)
            if held is None:
                self._queue(queue, msg, 0)
        self._wake.set()
        self.start()

    def _queue(self, queue: str, msg: Message, row: int) -> None:
        if queue == "update" and msg.incident_id:
            held = self._updates.get(msg.incident_id)
            if held is not None:  # two undelivered rows of one live message: the latest
                self._done(held.row, "superseded")
                held.msg, held.row = msg, row
                return
            last = self._last_update.get(msg.incident_id)
            due = self.clock() if last is None else last + self.coalesce_window
            self._updates[msg.incident_id] = _Pending(msg, due, row)
        elif queue == "post":
            self._posts.append((msg, row))
        else:
            self._replies.append((msg, row))

    def _done(self, row: int, outcome: str = "ok") -> None:
        if not row:
            return
        try:
            self.messages.delivered(row, outcome)
        except Exception as exc:  # noqa: BLE001 - at worst it is sent again after a restart
            log.warning("slack: could not mark delivery %d done: %s", row, exc)

    def start(self) -> None:
        """Start the draining task (``publish`` does it on first use); needs a running loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="slack-out")

    @property
    def pending(self) -> int:
        return len(self._posts) + len(self._replies) + len(self._updates)

    async def aclose(self, timeout: float = 60.0) -> None:
        """Send everything queued (held updates at once), then stop the task."""
        self._closing = True
        self._wake.set()
        if self._task is None or self._task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.error("slack notifier: %d messages still queued after %gs; the store keeps "
                      "them for the next start", self.pending, timeout)
            self._task.cancel()

    # --- the queue ------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            job = self._take()
            if job is not None:
                kind, msg, row = job
                self._current_row = row
                try:
                    await (self._send_top(msg) if kind == "post" else
                           self._send_update(msg) if kind == "update" else self._send_reply(msg))
                except Exception as exc:  # one bad message must not stop the rest
                    self._failed(msg, exc)
                    if isinstance(exc, SlackCallError) and exc.kind != "permanent":
                        continue  # given up only because we are closing: kept for next start
                    self._done(row, f"failed: {exc}")
                    continue
                self._done(row)
                continue
            if self._closing:
                return
            due = min((p.due for p in self._updates.values()), default=None)
            await self._idle(None if due is None else max(0.0, due - self.clock()))

    def _failed(self, msg: Message, exc: Exception) -> None:
        self.stats["failed"] += 1
        why = exc.message if isinstance(exc, SlackCallError) else \
            f"{type(exc).__name__}: {exc}"
        log.error("slack: %s message %r for %s not delivered: %s", msg.kind, msg.title,
                  msg.incident_id or "-", why)
        if isinstance(exc, SlackCallError) and exc.kind == "permanent":
            self.stats["permanent"] += 1
        if msg.incident_id:
            try:  # where people look afterwards: the incident's own timeline
                self.store.add_event(msg.incident_id, "slack_failed",
                                     f"Slack did not take the {msg.kind} message "
                                     f"{msg.title!r}: {why}", actor="slack",
                                     data={"kind": msg.kind})
            except Exception as exc2:  # noqa: BLE001 - the log line above already says it
                log.warning("slack: could not record the failure on %s's timeline: %s",
                            msg.incident_id, exc2)

    def _take(self) -> tuple[str, Message, int] | None:
        if self._posts:
            return "post", *self._posts.popleft()
        now = self.clock()
        for incident_id, p in list(self._updates.items()):
            if p.due <= now or self._closing:
                del self._updates[incident_id]
                return "update", p.msg, p.row
        if self._replies:
            return "reply", *self._replies.popleft()
        return None

    async def _idle(self, timeout: float | None) -> None:
        """Wait for a new message or, at most, ``timeout`` seconds (the next held update)."""
        self._wake.clear()
        if self._posts or self._replies or self._closing:
            return
        waiter = asyncio.ensure_future(self._wake.wait())
        if timeout is None:
            await waiter
            return
        timer = asyncio.ensure_future(self.sleep(timeout))
        _, pending = await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    # --- sending --------------------------------------------------------------------

    async def _post_top(self, incident_id: str, msg: Message) -> bool:
        """Post ``msg`` as the incident's top message, once across replicas: the right
        to post is claimed in the store first. False when another replica posted it
        (the caller then edits or threads under that one)."""
        deadline = self.clock() + TOP_CLAIM_WAIT
        while (claim := self.messages.claim_top(incident_id, self.channel, msg)) == PENDING:
            if self.clock() >= deadline:
                raise SlackCallError("chat.postMessage", "transient",
                                     f"{incident_id}: another replica is still posting its "
                                     "top message")
            await asyncio.sleep(0.2)
        if claim is not None:
            return False
        ts = await self._post(msg)
        self.messages.record_post(incident_id, self.channel, ts, msg)
        return True

    async def _send_top(self, msg: Message) -> None:
        top = self.messages.get(msg.incident_id, self.channel) if msg.incident_id else None
        if top is None and msg.incident_id:
            if await self._post_top(msg.incident_id, msg):
                return
            top = self.messages.get(msg.incident_id, self.channel)
        if top is not None:
            # Already posted (a repeat, a restart, a replica): edit it, never a second top.
            shown = compose_top(msg, top.status_message)
            await self._update_or_repost(msg.incident_id, top.ts, shown, base=msg)  # type: ignore[arg-type]
            return
        await self._post(msg)

    async def _send_update(self, msg: Message) -> None:
        incident_id = msg.incident_id
        assert incident_id is not None
        # Rendered again from the store at send time: an update held by a crash (or
        # Slack being down) while the incident moved on shows it as it is now.
        msg = Lifecycle(self.store).refresh(msg)
        top = self.messages.get(incident_id, self.channel)
        if top is not None and top.status_message == msg:
            return  # the live message shows exactly this already: no second edit
        self._last_update[incident_id] = self.clock()
        if top is None:  # no top message yet: the update becomes it
            if await self._post_top(incident_id, msg):
                return
            top = self.messages.get(incident_id, self.channel)
            assert top is not None
        await self._update_or_repost(incident_id, top.ts, compose_top(top.message, msg),
                                     base=top.message, status=msg)

    async def _send_reply(self, msg: Message) -> None:
        top = self.messages.get(msg.incident_id, self.channel) if msg.incident_id else None
        if top is None and msg.incident_id:
            if await self._post_top(msg.incident_id, msg):
                return
            top = self.messages.get(msg.incident_id, self.channel)
        if top is None:
            await self._post(msg)
            return
        await self._post(msg, thread_ts=top.ts)

    async def _update_or_repost(
        self, incident_id: str, ts: str, shown: Message, *, base: Message,
        status: Message | None = None,
    ) -> None:
        try:
            await self._call("chat_update", channel=self.channel, ts=ts,
                             text=render_text(shown), blocks=render(shown, self.console_url))
        except SlackCallError as exc:
            if exc.reason != "message_not_found":
                raise
            # Someone deleted the top message: post it afresh and follow the new one.
            log.warning("slack: top message of %s is gone; posting a new one", incident_id)
            new_ts = await self._post(shown)
            self.messages.record_post(incident_id, self.channel, new_ts, base)
            if status is not None:
                self.messages.record_update(incident_id, self.channel, status_message=status)
            return
        self.messages.record_update(incident_id, self.channel, message=base,
                                    status_message=status)

    async def _post(self, msg: Message, *, thread_ts: str | None = None) -> str:
        row = self._current_row
        if row in self._maybe_sent:
            self._maybe_sent.discard(row)
            if found := await self._find_posted(row, thread_ts):
                self.stats["found_after_restart"] += 1
                return found  # it landed just before the crash: never post it twice
        if row:
            self.messages.attempted(row)
        extra: dict[str, Any] = {"thread_ts": thread_ts} if thread_ts else {}
        if row:
            extra["metadata"] = {"event_type": METADATA_EVENT, "event_payload": {
                "delivery": row, "origin": self._origin, "incident_id": msg.incident_id or ""}}
        # A post that timed out may still have landed: look before posting it again.
        lookup = (lambda: self._find_posted(row, thread_ts)) if row else None
        resp = await self._call(
            "chat_postMessage", channel=self.channel, text=render_text(msg), blocks=render(msg, self.console_url),
            unfurl_links=False, unfurl_media=False, lookup=lookup, **extra,
        )
        return str(resp["ts"])

    async def _find_posted(self, row: int, thread_ts: str | None) -> str | None:
        """The ts of a post of delivery ``row`` already in the channel (or thread), found
        by the metadata every post carries; None when it is not there (or unknown)."""
        method = "conversations_replies" if thread_ts else "conversations_history"
        args: dict[str, Any] = {"channel": self.channel, "limit": 200,
                                "include_all_metadata": True}
        if thread_ts:
            args["ts"] = thread_ts
        try:
            resp = await call(self.client, method, **args)
        except SlackCallError as exc:
            log.warning("slack: could not look for delivery %d after the restart (%s); "
                        "posting it (it may show twice)", row, exc.message)
            return None
        for m in resp.get("messages") or []:
            meta = m.get("metadata") or {}
            payload = meta.get("event_payload") or {}
            if meta.get("event_type") == METADATA_EVENT and payload.get("delivery") == row \
                    and payload.get("origin") == self._origin:
                return str(m["ts"])
        return None

    async def _call(self, method: str, *,
                    lookup: Callable[[], Awaitable[str | None]] | None = None,
                    **kwargs: Any) -> Any:
        """One Web API call, retried until Slack takes it: Retry-After on a 429, backoff
        (1 s doubling to ``MAX_BACKOFF``) on anything transient. A permanent refusal is
        raised at once. While closing, at most ``max_retries`` retries."""
        transient = 0
        for attempt in itertools.count():
            if method in PACED:
                # Posts and updates to a channel share one pace: a storm of 20
                # acknowledgements is 20 updates a second apart, not a burst.
                wait = self._last_post.get(self.channel, float("-inf")) + self.min_interval \
                    - self.clock()
                if wait > 0:
                    await self.sleep(wait)
                self._last_post[self.channel] = self.clock()
            try:
                resp = await call(self.client, method, **kwargs)
            except SlackCallError as exc:
                if exc.kind == "permanent" or (self._closing and attempt >= self.max_retries):
                    raise
                if exc.kind == "rate_limited":
                    wait = min(exc.retry_after or 1.0, self.max_retry_after)
                    self.stats["rate_limited"] += 1
                else:
                    wait = min(MAX_BACKOFF, 2.0 ** transient)
                    transient += 1
                    self.stats["transient"] += 1
                log.warning("slack: %s; retrying in %gs", exc.message, wait)
                await self.sleep(wait)
                if exc.kind == "transient" and lookup is not None and (found := await lookup()):
                    self.stats["found_after_timeout"] += 1
                    return {"ts": found}  # it had landed: never post it twice
                continue
            self.stats[method] += 1
            return resp
        raise AssertionError("unreachable")  # the loop returns or raises


def _queue_of(msg: Message) -> str:
    if msg.kind == "update" and msg.incident_id:
        return "update"
    return "post" if msg.kind == "suggestion" or not msg.incident_id else "reply"
