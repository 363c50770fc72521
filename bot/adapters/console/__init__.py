"""The web console at ``/ui``: incidents, runs, mitigations, drills and releases.

Server-rendered HTML (Jinja2, autoescaped: alert text is data, never markup),
one small stylesheet and a few lines of script that refresh the live parts; no
build step. Every page reads the store; nothing here writes it, except the
signed approval link (``links``), which goes through the same use case as
Slack's Approve button. Without a valid link the console is read-only.

``urls`` is what Slack, the CLI and pages link with; it is imported on every CLI
start, so the web stack (``views``) loads only when asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApprovalLinks", "LinkRefused", "attach_console"]


def __getattr__(name: str) -> Any:
    if name in ("ApprovalLinks", "LinkRefused"):
        from bot.adapters.console import links

        return getattr(links, name)
    if name == "attach_console":
        from bot.adapters.console.views import attach_console

        return attach_console
    raise AttributeError(name)
