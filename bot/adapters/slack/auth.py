"""Who may do what from Slack.

Read verbs are open to anyone in the channel. A verb that changes state (and
every button except Dry-run, which can never change the serving stack) needs
the on-call group: the configured user ids, or the members of a Slack user group
read through ``usergroups.users.list`` and cached for ``ttl`` seconds.

Fail closed: no group configured, or a lookup that fails, denies with a message
that says why; a failed lookup is not cached, so the next click asks again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.commands import Command
from bot.adapters.slack.calls import SlackCallError, call

log = logging.getLogger(__name__)

GROUP_TTL_SECONDS = 300.0
# Sub-commands of a state-changing verb that only read.
READ_ONLY_SUBCOMMANDS = {"drill": ("list", "history", "report", None)}
# A dry run plans and records, and can never be applied: anyone may look.
DRY_RUN_VERBS = ("run", "plan", "do")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def needs_oncall(cmd: Command) -> bool:
    """Whether ``cmd`` needs the on-call group (read verbs and dry runs do not)."""
    if not cmd.verb.changes_state:
        return False
    if cmd.verb.name in DRY_RUN_VERBS and cmd.flag("--dry-run"):
        return False
    read_only = READ_ONLY_SUBCOMMANDS.get(cmd.verb.name)
    return not (read_only is not None and cmd.args.get("sub") in read_only)


class OncallAuthorizer:
    """``await check(user_id)`` -> Decision. One instance per app (it holds the cache)."""

    def __init__(
        self,
        users: Iterable[str] = (),
        group: str | None = None,
        client: AsyncWebClient | None = None,
        *,
        ttl: float = GROUP_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = frozenset(users)
        self.group = group
        self.client = client
        self.ttl = ttl
        self.clock = clock
        self._members: frozenset[str] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def check(self, user_id: str) -> Decision:
        if user_id in self.users:
            return Decision(True)
        if not self.group:
            if not self.users:
                return Decision(False, "no on-call group is configured, so nobody may change "
                                "things from Slack (set LLM_INCIDENT_ONCALL_USERS or "
                                "LLM_INCIDENT_ONCALL_GROUP)")
            return Decision(False, f"{user_id} is not on call: only the on-call group may "
                            "change things; read commands (status, show, suggest) are open")
        try:
            members = await self.members()
        except LookupError as exc:
            return Decision(False, f"could not check the on-call group, so the action is "
                            f"refused: {exc}")
        if user_id in members:
            return Decision(True)
        return Decision(False, f"{user_id} is not in the on-call group {self.group}: only "
                        "on-call engineers may change things; read commands are open")

    async def members(self) -> frozenset[str]:
        """The group's members, cached; LookupError when Slack does not say."""
        async with self._lock:  # one lookup for a burst of clicks
            fresh = self._members is not None and self.clock() - self._fetched_at < self.ttl
            if fresh:
                assert self._members is not None
                return self._members
            if self.client is None or self.group is None:
                raise LookupError("no Slack client or group to read the user group with")
            try:
                resp = await call(self.client, "usergroups_users_list", usergroup=self.group)
            except SlackCallError as exc:  # any failure (plain-text 500, timeout): deny
                log.warning("on-call group lookup failed: %s", exc.message)
                raise LookupError(exc.message) from None
            users = resp.get("users")
            if not isinstance(users, list):
                raise LookupError("usergroups.users.list answered without a user list")
            self._members = frozenset(str(u) for u in users)
            self._fetched_at = self.clock()
            return self._members
