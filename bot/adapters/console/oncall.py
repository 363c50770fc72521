"""Who may approve through a link, at the moment it is used: Slack's own on-call check.

A link names one person; between its issue and its use that person may have left
the on-call group. The console asks the same ``OncallAuthorizer`` Slack's buttons
ask (``bot.adapters.slack.auth``): membership of ``LLM_INCIDENT_ONCALL_GROUP``
(read with ``usergroups.users.list``, cached as for Slack) when a group is set, the
ids in ``LLM_INCIDENT_ONCALL_USERS`` otherwise. In ``serve`` it is the very instance
the Slack app uses, so both front ends see one membership and one cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bot.adapters.settings import Settings


class Decision(Protocol):
    @property
    def allowed(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class OncallCheck(Protocol):
    """``OncallAuthorizer`` as the console sees it."""

    async def check(self, user_id: str) -> Decision: ...


def console_oncall(settings: Settings, slack_app: Any = None) -> OncallCheck | None:
    """The check for ``serve``'s console; ``None`` when nobody is named on call (then the
    person who issued the link decided, as on the CLI)."""
    if not settings.oncall_users and not settings.oncall_group:
        return None
    handlers = getattr(slack_app, "handlers", None)
    if handlers is not None:
        authorizer: OncallCheck = handlers.authorizer
        return authorizer
    from bot.adapters.slack.auth import OncallAuthorizer

    client = None
    if settings.oncall_group and settings.slack_bot_token:
        from bot.adapters.slack.app import web_client

        client = web_client(settings)
    # A group without a Slack token cannot be read: the check fails closed, saying so.
    return OncallAuthorizer(settings.oncall_users, settings.oncall_group, client)
