"""Alerts that arrive as Slack messages: Alertmanager's Slack receiver, default template.

Alertmanager's ``slack.default.title`` is its ``__subject``::

    [FIRING:2] LLMCostBurnRateHigh (chat critical)

the group labels' values, then (in parentheses) the values of the labels all
alerts share beyond those, each sorted by label name. Names are lost on the
way, so the first group value is taken as the alertname and a known severity
word as ``severity``. ``slack.default.text`` is empty; when a team's template
puts ``Labels:`` / ``Annotations:`` lists (`` - name = value``, Alertmanager's
own ``__text_alert_list``) or ``*Name:* value`` lines in the text, they become
labels and annotations: with ``route`` among the labels, the playbooks can act.

Slack escapes ``& < >`` in what it delivers; they are unescaped here, so the
stored alert holds the text as the sender wrote it (it is escaped again on the
way out, like every alert). The bot's own messages and anything that does not
parse are ignored with a debug log: never an error reply in the channel.

Only configured posters are read (``LLM_INCIDENT_ALERT_POSTERS``: Alertmanager's
bot id, app id or user id). A message from anyone else, however much it looks
like an alert, is ignored and counted: a person in the channel must not be able
to open an incident, let alone steer an automatic step, by typing an alert.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from bot.core.engine import Engine
from bot.intake.alert import Alert

log = logging.getLogger(__name__)

TITLE_RE = re.compile(
    r"^\[(?P<status>FIRING|RESOLVED)(?::\d+)?\]\s*(?P<groups>[^()]*?)\s*"
    r"(?:\((?P<common>.*)\))?\s*$",
    re.IGNORECASE,
)
# " - name = value", "• *name:* `value`", "*Summary:* text", "runbook_url: http://..."
KV_RE = re.compile(
    r"^(?:[-•*]\s+)?\*?(?P<key>[A-Za-z_][A-Za-z0-9_ .-]{0,62}?)\*?\s*(?:=|:(?!//)\*?)\s*(?P<value>.*)$"
)
HEADERS = {"labels": "labels", "details": "labels", "annotations": "annotations"}
SEVERITIES = ("critical", "high", "warning", "info", "page", "error")
ACCEPTED_SUBTYPES = (None, "bot_message")  # not edits, joins, deletions...
MAX_TEXT = 4000
MAX_REMEMBERED = 1000


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _key(raw: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", raw.strip().lower()).strip("_")


def parse_text(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations from a message text (see the module docstring)."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    section: str | None = None
    loose: list[str] = []
    for line in text[:MAX_TEXT].splitlines():
        s = line.strip()
        if not s:
            continue
        head = s.strip("*_ ").rstrip(":").strip("*_ ").lower()
        if head in HEADERS and s.rstrip("*_ ").endswith(":"):
            section = HEADERS[head]
            continue
        m = KV_RE.match(s)
        if m and m.group("value").strip() and _key(m.group("key")):
            key, value = _key(m.group("key")), m.group("value").strip().strip("`").strip()
            (labels if section == "labels" else annotations)[key] = value
        else:
            loose.append(s)
    if loose and "description" not in annotations:
        annotations["description"] = "\n".join(loose)
    return labels, annotations


def parse_message(event: dict[str, Any]) -> Alert | None:
    """The alert in one Slack message event, or None when it is not an alert message."""
    attachments = [a for a in event.get("attachments") or [] if isinstance(a, dict)]
    candidates: list[tuple[str, str]] = []  # (title, text)
    for a in attachments:
        title = str(a.get("title") or "") or str(a.get("fallback") or "").split(" | ")[0]
        candidates.append((title, str(a.get("text") or "")))
    text = str(event.get("text") or "")
    if text:
        first, _, rest = text.partition("\n")
        candidates.append((first, rest))
    for title, body in candidates:
        m = TITLE_RE.match(_unescape(title.strip().strip("*")))
        if m and m.group("groups").strip():
            return _build(m, _unescape(body), event)
    return None


def _build(m: re.Match[str], body: str, event: dict[str, Any]) -> Alert:
    groups = m.group("groups").split()
    common = (m.group("common") or "").split()
    labels = {"alertname": groups[0]}
    severity = next((v for v in [*groups, *common] if v.lower() in SEVERITIES), None)
    if severity:
        labels["severity"] = severity.lower()
    text_labels, annotations = parse_text(body)
    labels |= text_labels  # the text names labels; it beats guesses from the title
    if len(groups) > 1 or common:
        annotations.setdefault("group_values", " ".join(groups[1:] + common))
    subject = f"{' '.join(groups)} ({' '.join(common)})"
    fingerprint = hashlib.sha256(f"slack\0{subject}".encode()).hexdigest()[:16]
    ts = datetime.fromtimestamp(float(event.get("ts") or 0), UTC)
    status = "firing" if m.group("status").upper() == "FIRING" else "resolved"
    return Alert(
        source="slack", fingerprint=fingerprint, status=status,  # type: ignore[arg-type]
        labels=labels, annotations=annotations, starts_at=ts,
        ends_at=ts if status == "resolved" else None,
        raw={"channel": event.get("channel"), "ts": event.get("ts")},
    )


class ChannelAlerts:
    """Feeds alert messages of the configured channels to ``engine.handle_alerts``."""

    def __init__(self, engine: Engine, channels: Iterable[str], posters: Iterable[str] = (),
                 *, on_ignored: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.channels = frozenset(channels)
        self.posters = frozenset(posters)
        # Messages ignored, by reason (not_a_poster, not_an_alert); also reported to
        # ``on_ignored`` (the service's metrics).
        self.ignored: Counter[str] = Counter()
        self._on_ignored = on_ignored
        if self.channels and not self.posters:
            log.warning("LLM_INCIDENT_ALERT_CHANNELS is set but LLM_INCIDENT_ALERT_POSTERS is "
                        "not: no channel message is read as an alert until it names the posters")
        # fingerprint -> starts_at of its firing: Alertmanager's repeats and the later
        # [RESOLVED] message carry no start time, and dedup keys on it. Lost on restart:
        # a resolution then is recorded as an alert of its own.
        self._firing: OrderedDict[str, datetime] = OrderedDict()

    async def handle(self, event: dict[str, Any], *, bot_user_id: str | None = None,
                     bot_id: str | None = None) -> list[Any]:
        channel = event.get("channel")
        if channel not in self.channels:
            return []
        if event.get("subtype") not in ACCEPTED_SUBTYPES:
            return []
        if (bot_id and event.get("bot_id") == bot_id) or \
                (bot_user_id and event.get("user") == bot_user_id):
            return []  # our own posts
        if not self._from_poster(event):
            self._ignore("not_a_poster", event)
            return []
        try:
            alert = parse_message(event)
        except (ValueError, TypeError) as exc:
            alert = None
            log.debug("message %s in %s: not an alert (%s)", event.get("ts"), channel, exc)
        if alert is None:
            self._ignore("not_an_alert", event)
            return []
        alert = self._with_start(alert)
        try:
            return await self.engine.handle_alerts([alert])
        except Exception:  # noqa: BLE001 - never an error reply in the channel
            log.exception("alert message %s in %s could not be handled", event.get("ts"), channel)
            return []

    def _from_poster(self, event: dict[str, Any]) -> bool:
        ids = {event.get("bot_id"), event.get("app_id"), event.get("user")}
        profile = event.get("bot_profile")
        if isinstance(profile, dict):
            ids |= {profile.get("id"), profile.get("app_id")}
        return bool(self.posters & {i for i in ids if isinstance(i, str) and i})

    def _ignore(self, reason: str, event: dict[str, Any]) -> None:
        self.ignored[reason] += 1
        if self._on_ignored is not None:
            self._on_ignored(reason)
        log.debug("message %s in %s ignored: %s", event.get("ts"), event.get("channel"), reason)

    def _with_start(self, alert: Alert) -> Alert:
        known = self._firing.get(alert.fingerprint)
        if alert.status == "firing":
            if known is None:
                self._firing[alert.fingerprint] = alert.starts_at
                while len(self._firing) > MAX_REMEMBERED:
                    self._firing.popitem(last=False)
                return alert
            return alert.model_copy(update={"starts_at": known})
        if known is not None:
            del self._firing[alert.fingerprint]
            return alert.model_copy(update={"starts_at": known})
        return alert
