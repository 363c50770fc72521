"""The web console at ``/ui``: incidents, runs, mitigations, drills and releases.

Server-rendered HTML (Jinja2, autoescaped: alert text is data, never markup),
one small stylesheet and a few lines of script that refresh the live parts; no
build step. Every page reads the store; nothing here writes it, except the
signed approval link (``links``), which goes through the same use case as
Slack's Approve button. Without a valid link the console is read-only.
"""

from bot.adapters.console.links import ApprovalLinks, LinkRefused
from bot.adapters.console.views import attach_console

__all__ = ["ApprovalLinks", "LinkRefused", "attach_console"]
