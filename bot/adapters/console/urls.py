"""Where the console's pages are, for links from Slack, the CLI and pages.

Only the operator's base URL and our own ids (INC-n, REL-n, a signed token) go into
a link: nothing from an alert.
"""

from __future__ import annotations


def page_url(base: str, key: str) -> str:
    """An incident's page, or the releases page for a release (its live message)."""
    page = "releases" if key.startswith("REL-") else f"incidents/{key}"
    return f"{base.rstrip('/')}/ui/{page}"


def approval_path(token: str) -> str:
    return f"/ui/approve/{token}"


def approval_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}{approval_path(token)}"
