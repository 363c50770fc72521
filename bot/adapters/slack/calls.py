"""One Web API call, and every way it can fail turned into one typed error.

Slack answers with JSON ``{"ok": false, "error": ...}``, but what arrives is not
always Slack: a proxy's plain-text 500, a timeout, a reset connection, a body
that is not JSON. ``call`` turns each into ``SlackCallError`` with a readable
reason and a ``kind`` that says what to do next:

- ``rate_limited``: wait ``retry_after`` seconds (Slack's Retry-After), retry;
- ``transient``: 5xx, timeouts, network errors, unreadable bodies: back off, retry;
- ``permanent``: Slack refused this call for good (``channel_not_found``,
  ``not_in_channel``, ``invalid_auth``, ``msg_too_long``...): retrying cannot help.

The notifier and the on-call group lookup both use it, so neither can be killed
by an answer it did not expect.
"""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.base.errors import IncidentBotError

Kind = Literal["rate_limited", "transient", "permanent"]
MAX_RETRY_AFTER = 120.0
# Errors Slack sends with ok=false that a retry may fix (its own documented ones).
RETRYABLE_ERRORS = frozenset({"ratelimited", "internal_error", "fatal_error",
                              "service_unavailable", "request_timeout"})


class SlackCallError(IncidentBotError):
    def __init__(self, method: str, kind: Kind, reason: str, *,
                 retry_after: float | None = None) -> None:
        self.method, self.kind, self.reason = method, kind, reason
        self.retry_after = retry_after
        super().__init__(f"{method}: {reason}", hint=_HINTS[kind])


_HINTS: dict[Kind, str] = {
    "rate_limited": "Slack asked us to slow down; the message is retried after Retry-After",
    "transient": "Slack or the network failed for now; the message is retried with backoff",
    "permanent": "Slack refused the call for good: check the channel, the bot's membership "
                 "and its token",
}


async def call(client: AsyncWebClient, method: str, **kwargs: Any) -> Any:
    """``client.<method>(**kwargs)``; any failure is a ``SlackCallError``."""
    name = method.replace("_", ".")  # chat_postMessage -> chat.postMessage
    try:
        return await getattr(client, method)(**kwargs)
    except SlackApiError as exc:
        raise classify(name, exc) from None
    except TimeoutError:
        raise SlackCallError(name, "transient", "timed out") from None
    except aiohttp.ClientError as exc:
        raise SlackCallError(name, "transient",
                             f"network error: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise SlackCallError(name, "transient", f"network error: {exc}") from None
    except ValueError as exc:  # a body that does not parse
        raise SlackCallError(name, "transient", f"unreadable answer: {exc}") from None


def classify(method: str, exc: SlackApiError) -> SlackCallError:
    response = exc.response
    status = getattr(response, "status_code", None)
    data = getattr(response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    if status == 429 or error == "ratelimited":
        headers = getattr(response, "headers", None) or {}
        return SlackCallError(method, "rate_limited", "rate limited (429)",
                              retry_after=retry_after(headers))
    if not isinstance(data, dict):
        text = " ".join(str(data or "").split())[:120] or "no body"
        return SlackCallError(method, "transient", f"HTTP {status} with a non-JSON body: {text}")
    if (status is not None and status >= 500) or error in RETRYABLE_ERRORS:
        return SlackCallError(method, "transient", f"HTTP {status} {error or ''}".strip())
    return SlackCallError(method, "permanent", str(error or f"HTTP {status}"))


def retry_after(headers: Any, cap: float = MAX_RETRY_AFTER) -> float:
    value = None
    if headers is not None:
        value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else 1.0
    except (TypeError, ValueError):
        seconds = 1.0  # Slack sends whole seconds; anything else: the documented minimum
    return min(max(seconds, 0.0), cap)
