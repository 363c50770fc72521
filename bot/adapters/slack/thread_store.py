"""Where each incident's top chat message lives: (incident, channel) -> ts, as plain data.

The Slack notifier posts one top message per incident and keeps it current;
this table is how it finds that message again after a restart. Next to the
``ts`` it keeps the neutral ``Message``s the top message is built from (the
suggestion and the latest status update), so an update after a restart still
shows the playbook, not only the status line. Nothing here imports a chat API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.base.claims import this_process
from bot.base.errors import StoreError
from bot.core.messages import Message, message_to_json
from bot.core.messages import message_from_json as core_message_from_json
from bot.store import Store, from_text, to_text
from bot.store.backend import Db


@dataclass(frozen=True)
class ChatMessage:
    incident_id: str
    channel: str
    ts: str
    message: Message  # what the top message was posted from (normally the suggestion)
    status_message: Message | None  # the latest status update shown on top of it
    posted_at: datetime
    updated_at: datetime


def message_from_json(text: str) -> Message:
    """The core's reader (one format for the outbox and this table), with this table's hint."""
    try:
        return core_message_from_json(text)
    except StoreError as exc:
        raise StoreError(f"a stored chat message is not readable: {exc.__cause__!r}",
                         hint="the chat_messages row is damaged; delete it to post afresh") from exc


# The table, owned here (it was core migration 2; an older database has it).
def _c1_chat_messages(db: Db) -> None:
    # Where each incident's top chat message lives, so a restart keeps updating the
    # same message and threading under it. Plain data: the core knows no chat API.
    # No foreign key to incidents: a chat notifier may be pointed at any store, and
    # this row is only a pointer to a message outside.
    db.execute(
        """CREATE TABLE IF NOT EXISTS chat_messages (
            incident_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            ts TEXT NOT NULL,
            message TEXT NOT NULL,
            status_message TEXT,
            posted_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (incident_id, channel)
        )"""
    )


def _c2_deliveries(db: Db) -> None:
    # Every message the notifier has taken and Slack has not, so a crash or a restart
    # never loses one: a row per queued message (a storm of updates of one incident
    # keeps one row, the latest), delivered_at once Slack took it (or refused it).
    db.execute(
        """CREATE TABLE IF NOT EXISTS chat_deliveries (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            incident_id TEXT,
            queue TEXT NOT NULL CHECK (queue IN ('post', 'update', 'reply')),
            message TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempted_at TEXT,
            delivered_at TEXT,
            outcome TEXT
        )"""
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_chat_deliveries_pending "
               "ON chat_deliveries (channel, delivered_at, id)")


def _c3_top_claims(db: Db) -> None:
    # Replicas: the right to post an incident's top message is claimed here first (a
    # row with an empty ts and its claimer), so two replicas never both post one.
    if "claimed_by" not in db.columns("chat_messages"):
        db.execute("ALTER TABLE chat_messages ADD COLUMN claimed_by TEXT")


CHAT_SCHEMA = [_c1_chat_messages, _c2_deliveries, _c3_top_claims]
PENDING = ""  # the ts of a top message claimed and not posted yet


@dataclass(frozen=True)
class Delivery:
    id: int
    queue: str  # post | update | reply
    message: Message
    created_at: datetime
    attempted: bool  # a post was sent once: it may have reached Slack before a crash


class ChatMessages:
    """The ``chat_messages`` table of a ``Store`` (component ``chat``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.ensure_schema("chat", CHAT_SCHEMA)

    def get(self, incident_id: str, channel: str) -> ChatMessage | None:
        """The incident's top message in ``channel``; None until one is posted."""
        rows = self.store._rows(
            "SELECT * FROM chat_messages WHERE incident_id = ? AND channel = ? AND ts != ?",
            [incident_id, channel, PENDING],
        )
        if not rows:
            return None
        r = rows[0]
        status = r["status_message"]
        return ChatMessage(
            incident_id=r["incident_id"], channel=r["channel"], ts=r["ts"],
            message=message_from_json(r["message"]),
            status_message=message_from_json(status) if status else None,
            posted_at=from_text(r["posted_at"]),  # type: ignore[arg-type]
            updated_at=from_text(r["updated_at"]),  # type: ignore[arg-type]
        )

    def claim_top(self, incident_id: str, channel: str, message: Message, *,
                  owner: str | None = None) -> str | None:
        """May this process post the incident's top message? ``None``: yes, it is
        claimed for it (post, then ``record_post``). Otherwise the posted message's ts,
        or ``PENDING`` while another live process is posting it."""
        me, now = owner or this_process(), to_text(self.store.now())
        with self.store.transaction():
            rows = self.store._rows(
                "SELECT ts, claimed_by, posted_at FROM chat_messages "
                "WHERE incident_id = ? AND channel = ?", [incident_id, channel])
            if rows and rows[0]["ts"] != PENDING:
                return str(rows[0]["ts"])
            if rows and rows[0]["claimed_by"] != me and self.store.holder_alive(
                    rows[0]["claimed_by"], claimed_at=from_text(rows[0]["posted_at"])):
                return PENDING
            self.store.db.upsert("chat_messages", {
                "incident_id": incident_id, "channel": channel, "ts": PENDING,
                "message": message_to_json(message), "status_message": None,
                "posted_at": now, "updated_at": now, "claimed_by": me},
                pk=("incident_id", "channel"))
        return None

    def record_post(self, incident_id: str, channel: str, ts: str, message: Message) -> None:
        """A new top message was posted (replaces any earlier one for this channel)."""
        now = to_text(self.store.now())
        with self.store.transaction():
            self.store.db.upsert("chat_messages", {
                "incident_id": incident_id, "channel": channel, "ts": ts,
                "message": message_to_json(message), "status_message": None,
                "posted_at": now, "updated_at": now, "claimed_by": None},
                pk=("incident_id", "channel"))

    def stale(self, channel: str) -> list[str]:
        """Incidents whose live message in ``channel`` shows another status than the store
        has (a change committed just before a crash, whose update was never queued)."""
        rows = self.store._rows(
            "SELECT m.incident_id, m.message, m.status_message, i.status FROM chat_messages m "
            "JOIN incidents i ON i.id = m.incident_id WHERE m.channel = ? AND m.ts != ?",
            [channel, PENDING])
        out = []
        for r in rows:
            top = message_from_json(r["status_message"] or r["message"])
            # A suggestion shows an open incident; an update shows its status last.
            shown = top.title.rsplit(" ", 1)[-1] if top.kind == "update" else "open"
            if shown != r["status"]:
                out.append(r["incident_id"])
        return out

    # --- the delivery queue ---------------------------------------------------------

    def enqueue(self, channel: str, queue: str, message: Message) -> int:
        with self.store.transaction():
            return int(self.store.db.insert("chat_deliveries", {
                "channel": channel, "incident_id": message.incident_id, "queue": queue,
                "message": message_to_json(message), "created_at": to_text(self.store.now()),
            }, returning="id"))

    def replace_queued(self, delivery_id: int, message: Message) -> None:
        """A newer update of the same live message: only the latest is sent."""
        with self.store.transaction():
            self.store.db.execute("UPDATE chat_deliveries SET message = ? WHERE id = ?",
                                  [message_to_json(message), delivery_id])

    def delivered(self, delivery_id: int, outcome: str = "ok") -> None:
        with self.store.transaction():
            self.store.db.execute(
                "UPDATE chat_deliveries SET delivered_at = ?, outcome = ? WHERE id = ?",
                [to_text(self.store.now()), outcome, delivery_id])

    def undelivered(self, channel: str) -> list[Delivery]:
        rows = self.store._rows("SELECT * FROM chat_deliveries WHERE channel = ? AND "
                                "delivered_at IS NULL ORDER BY id", [channel])
        out = []
        for r in rows:
            try:
                message = message_from_json(r["message"])
            except StoreError as exc:
                # One damaged row must not keep Slack from starting: it is set aside
                # (its outcome says why) and the rest go out.
                self.delivered(r["id"], f"unreadable: {exc.message}")
                continue
            out.append(Delivery(r["id"], r["queue"], message,
                                from_text(r["created_at"]) or self.store.now(),
                                r["attempted_at"] is not None))
        return out

    def prune_deliveries(self, before: datetime) -> int:
        """Forget deliveries Slack took (or refused) before ``before``."""
        with self.store.transaction():
            cur = self.store.db.execute(
                "DELETE FROM chat_deliveries WHERE delivered_at IS NOT NULL AND delivered_at < ?",
                [to_text(before)])
            return cur.rowcount

    def attempted(self, delivery_id: int) -> None:
        """About to post it: if we crash after Slack takes it, the next start looks for it
        (by its metadata) instead of posting it twice."""
        with self.store.transaction():
            self.store.db.execute("UPDATE chat_deliveries SET attempted_at = ? WHERE id = ?",
                                  [to_text(self.store.now()), delivery_id])

    def record_update(
        self,
        incident_id: str,
        channel: str,
        *,
        message: Message | None = None,
        status_message: Message | None = None,
    ) -> None:
        """The top message was edited: keep what it now shows (``None`` = unchanged)."""
        sets, params = ["updated_at = ?"], [to_text(self.store.now())]
        if message is not None:
            sets.append("message = ?")
            params.append(message_to_json(message))
        if status_message is not None:
            sets.append("status_message = ?")
            params.append(message_to_json(status_message))
        with self.store.transaction():
            self.store.db.execute(
                f"UPDATE chat_messages SET {', '.join(sets)} "
                "WHERE incident_id = ? AND channel = ?",
                [*params, incident_id, channel],
            )
