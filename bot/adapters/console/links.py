"""Signed approval links: the console's only way to change anything.

A link is ``/ui/approve/<token>``. The token carries the run, the person it was
issued for, when it expires and a random nonce, signed with HMAC-SHA256 under the
console's key. Opening it shows the run's diff and guards (nothing changes);
approving it with the form on that page is the same use case as Slack's Approve
button (``Runner.approve_and_apply``): the same two-person rule, the same guards at
apply time, and the person it names as the approver. The nonce is recorded at the
first approval, in the same process that checks it, so a link works once; an
expired, altered or reused link is refused with a page saying which. A link lives
at most ``MAX_TTL`` (24h); one that claims longer is refused at use.

The key is ``LLM_INCIDENT_CONSOLE_SECRET`` when set (rotate it to revoke every link
out there); otherwise one is made at first use and kept in the store, so every
replica checks the links any of them issued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.base.durations import format_duration
from bot.base.errors import InputError
from bot.store import Store, to_text
from bot.store.backend import Db

DEFAULT_TTL = timedelta(minutes=30)
# The longest a link may live. A link is a bearer credential in a URL (chat scrollback,
# browser history, proxy logs): it should die soon. A day covers handing one to the
# next shift or another time zone when Slack is down; past that, ask for a new one.
# (Membership is re-checked at use either way, so rotation off call is not the reason.)
MAX_TTL = timedelta(hours=24)
MAX_TTL_TEXT = f"{MAX_TTL // timedelta(hours=1)}h"
# Replicas' clocks differ a little: a link made on one is not "too long" on another.
_CLOCK_SLACK = timedelta(minutes=5)


def _v1_console(db: Db) -> None:
    db.execute("CREATE TABLE console_keys (id INTEGER PRIMARY KEY, secret TEXT NOT NULL, "
               "created_at TEXT NOT NULL)")
    db.execute("CREATE TABLE console_links_used (nonce TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
               "user_id TEXT NOT NULL, used_at TEXT NOT NULL)")


CONSOLE_SCHEMA = [_v1_console]


class LinkRefused(InputError):
    """The link is not valid (altered, expired, used, or for a run that moved on)."""


@dataclass(frozen=True)
class Grant:
    run_id: str
    user: str
    expires_at: datetime
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ApprovalLinks:
    def __init__(self, store: Store, secret: str | None = None) -> None:
        self.store = store
        store.ensure_schema("console", CONSOLE_SCHEMA)
        self._key = (secret or self._stored_secret()).encode()

    def _stored_secret(self) -> str:
        with self.store.transaction():
            row = self.store.db.execute("SELECT secret FROM console_keys WHERE id = 1").fetchone()
            if row is not None:
                return str(row[0])
            made = secrets.token_urlsafe(32)
            self.store.db.execute("INSERT INTO console_keys (id, secret, created_at) "
                                  "VALUES (1, ?, ?)", [made, to_text(self.store.now())])
            return made

    @property
    def key(self) -> bytes:
        """The signing key, for the console's form tokens (which derive their own)."""
        return self._key

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, run_id: str, user: str, ttl: timedelta = DEFAULT_TTL) -> str:
        """A token for ``user`` to approve ``run_id`` once, within ``ttl``."""
        if not user or not run_id:
            raise InputError("an approval link names a run and the person it is for",
                             hint="link RUN --for USER")
        if ttl > MAX_TTL:
            raise InputError(f"an approval link lives at most {MAX_TTL_TEXT}; "
                             f"--ttl {format_duration(ttl)} is longer",
                             hint=f"--ttl {MAX_TTL_TEXT} or less; ask for a new link when it "
                                  "runs out")
        if ttl <= timedelta(0):
            raise InputError("an approval link must live a while; --ttl 0s expires at once",
                             hint="e.g. --ttl 30m (the default)")
        body = {"run": run_id, "user": user, "nonce": secrets.token_urlsafe(12),
                "exp": int((self.store.now() + ttl).timestamp())}
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._sign(payload)}"

    def check(self, token: str) -> Grant:
        """The grant a token carries; ``LinkRefused`` saying why when it is not good."""
        payload, _, signature = token.partition(".")
        if not payload or not signature or not hmac.compare_digest(
                signature.encode(), self._sign(payload).encode()):
            raise LinkRefused("this approval link is not valid (it was altered or cut short)",
                              hint="ask for a new link: `llm-incident link RUN --for YOU`")
        try:
            body = json.loads(_unb64(payload))
            grant = Grant(str(body["run"]), str(body["user"]),
                          datetime.fromtimestamp(int(body["exp"]), tz=self.store.now().tzinfo),
                          str(body["nonce"]))
        except (ValueError, KeyError, TypeError):
            raise LinkRefused("this approval link is not valid") from None
        if grant.expires_at - self.store.now() > MAX_TTL + _CLOCK_SLACK:
            # Issued before the ceiling existed (or by a key holder who ignored it).
            raise LinkRefused(f"this approval link for {grant.run_id} lives longer than the "
                              f"{MAX_TTL_TEXT} a link may",
                              hint="ask for a new link: `llm-incident link RUN --for YOU`")
        if self.store.now() >= grant.expires_at:
            raise LinkRefused(f"this approval link for {grant.run_id} expired at "
                              f"{grant.expires_at:%H:%M} UTC", hint="ask for a new link")
        if self.used(grant):
            raise LinkRefused(f"this approval link for {grant.run_id} was used already",
                              hint="each link approves once; ask for a new one")
        return grant

    def used(self, grant: Grant) -> bool:
        return self.store.db.execute("SELECT 1 FROM console_links_used WHERE nonce = ?",
                                     [grant.nonce]).fetchone() is not None

    def spend(self, grant: Grant) -> None:
        """Record the link as used; a second use (even racing this one) is refused."""
        with self.store.transaction():
            if self.used(grant):
                raise LinkRefused(f"this approval link for {grant.run_id} was used already")
            self.store.db.execute(
                "INSERT INTO console_links_used (nonce, run_id, user_id, used_at) "
                "VALUES (?, ?, ?, ?)",
                [grant.nonce, grant.run_id, grant.user, to_text(self.store.now())])
