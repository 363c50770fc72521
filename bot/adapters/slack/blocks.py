"""Neutral ``Message`` -> Slack Block Kit. The only place that knows Slack's limits.

Everything in a Message may come from an alert or a user, so every mrkdwn text
is escaped (``escape_mrkdwn``) and marked ``verbatim``: a label holding
``<!channel>`` or ``<http://evil|click>`` shows as exactly that, never as a
ping or a disguised link. Header and button texts are ``plain_text``, which
Slack does not parse.

The blocks are built with ``slack_sdk.models.blocks`` so their own validators
check what they know (header 150, section text 3000, 10 fields, 25 actions
elements, button text 75, value 2000, action_id 255). Limits the SDK does not
check (50 blocks a message, 2000 characters a field) are enforced here. Too much
content is cut with a visible marker that says how to see the rest, never a
failed post.

Button ``action_id``s are ``ACTION#N`` (``run_step#0``, ``approve#3``): Slack
wants action_ids unique within a block and a suggestion has one ``run_step`` per
step. ``action_of(action_id)`` gives the action back; bolt handlers match with
``ACTION_ID_RE`` (or ``re.compile(r"^run_step#\\d+$")`` for one action).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.adapters.console.urls import page_url
from bot.core.messages import Button, Message, Section

MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER = 150
MAX_BUTTON_TEXT = 75
MAX_ACTIONS_ELEMENTS = 25
MAX_ACTION_ID = 255
MAX_BUTTON_VALUE = 2000
MAX_CONTEXT_TEXT = 3000
# Slack truncates a message's top-level ``text`` at 40,000 characters and advises
# under 4,000; it is only the notification and fallback line, so keep it short.
MAX_FALLBACK_TEXT = 3000
# More buttons than this is a wall nobody reads; the commands can still be typed.
MAX_BUTTONS = 2 * MAX_ACTIONS_ELEMENTS
# Buttons about the incident as a whole, kept first when there are too many.
KEEP_ACTIONS = ("ack", "approve", "deny", "revert", "not_this_playbook")

ACTION_ID_RE = re.compile(r"^(?P<action>[a-z_]+)#(?P<index>\d+)$")
DRILL_MARK = "[DRILL]"
ELLIPSIS = "…"
_SEVERITY_ICON = {"critical": ":red_circle:", "warning": ":large_orange_circle:",
                  "info": ":large_blue_circle:"}


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control: ``& < >``.

    With them escaped, ``<!channel>``, ``<!here>``, ``<@U123>``, ``<#C1>`` and
    ``<http://x|y>`` are shown as typed instead of pinging or linking.
    """
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``marker`` when cut.

    Safe on escaped mrkdwn: never leaves half an entity (``&am``) at the cut.
    """
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(marker))
    head = text[:keep]
    amp = head.rfind("&", max(0, keep - 5))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return (head + marker)[:limit]


def action_id(action: str, index: int) -> str:
    return f"{action}#{index}"[:MAX_ACTION_ID]


def action_of(action_id_: str) -> str:
    """The ``Button.action`` behind an action_id built here (``run_step#2`` -> ``run_step``)."""
    m = ACTION_ID_RE.match(action_id_)
    return m.group("action") if m else action_id_


def more_marker(msg: Message) -> str:
    """What a cut says: where to read the whole thing."""
    if msg.incident_id:
        return f"{ELLIPSIS} (truncated; /llm-incident show {msg.incident_id} for the rest)"
    return f"{ELLIPSIS} (truncated)"


def header_text(msg: Message) -> str:
    title = msg.title.strip() or msg.kind
    if msg.is_drill and DRILL_MARK not in title:
        title = f"{DRILL_MARK} {title}"
    return truncate(" ".join(title.split()), MAX_HEADER)  # plain_text header: one line


def render_text(msg: Message) -> str:
    """The message's top-level ``text``: what a notification shows (escaped mrkdwn)."""
    text = msg.text.strip() or msg.title
    if msg.is_drill and DRILL_MARK not in text:
        text = f"{DRILL_MARK} {text}"
    return truncate(escape_mrkdwn(text), MAX_FALLBACK_TEXT, more_marker(msg))


def _mrkdwn(text: str) -> MarkdownTextObject:
    # verbatim: no auto-linking of URLs, channel names or mentions in untrusted text.
    return MarkdownTextObject(text=text, verbatim=True)


def _context(msg: Message, console_url: str | None = None) -> ContextBlock:
    parts = []
    if msg.is_drill:
        parts.append(f"*{DRILL_MARK}* practice, not a real incident")
    if msg.severity:
        icon = _SEVERITY_ICON.get(msg.severity, ":white_circle:")
        parts.append(f"{icon} *{escape_mrkdwn(msg.severity.upper())}*")
    if msg.incident_id:
        parts.append(escape_mrkdwn(msg.incident_id))
    parts.append(escape_mrkdwn(msg.kind))
    if console_url and msg.incident_id:
        parts.append(f"<{page_url(console_url, msg.incident_id)}|open in the console>")
    text = truncate("  |  ".join(parts), MAX_CONTEXT_TEXT)
    return ContextBlock(elements=[_mrkdwn(text)])


def _section_blocks(sec: Section, marker: str) -> list[Block]:
    """One Section -> a text section plus as many field sections as its fields need."""
    blocks: list[Block] = []
    head = f"*{escape_mrkdwn(sec.title.strip())}*" if sec.title and sec.title.strip() else ""
    body = escape_mrkdwn(sec.text.strip())
    text = "\n".join(p for p in (head, body) if p)
    fields = [
        _mrkdwn(truncate(f"*{escape_mrkdwn(f.label)}*\n{escape_mrkdwn(f.value) or '-'}",
                         MAX_FIELD_TEXT, marker))
        for f in sec.fields
    ]
    first = fields[:MAX_FIELDS]
    if text or first:
        blocks.append(SectionBlock(
            text=_mrkdwn(truncate(text, MAX_SECTION_TEXT, marker)) if text else None,
            fields=first or None,
        ))
    for i in range(MAX_FIELDS, len(fields), MAX_FIELDS):
        blocks.append(SectionBlock(fields=fields[i:i + MAX_FIELDS]))
    return blocks


def _pick_buttons(buttons: Iterable[Button]) -> tuple[list[Button], int]:
    """At most MAX_BUTTONS, incident-wide ones first; returns (kept in order, dropped)."""
    buttons = [b for b in buttons if len(b.value) <= MAX_BUTTON_VALUE]
    if len(buttons) <= MAX_BUTTONS:
        return buttons, 0
    keep = {id(b) for b in buttons if b.action in KEEP_ACTIONS}
    room = MAX_BUTTONS - len(keep)
    for b in buttons:
        if room <= 0:
            break
        if id(b) not in keep:
            keep.add(id(b))
            room -= 1
    kept = [b for b in buttons if id(b) in keep][:MAX_BUTTONS]
    return kept, len(buttons) - len(kept)


def _actions_blocks(buttons: list[Button]) -> list[Block]:
    elements = [
        ButtonElement(
            text=PlainTextObject(text=truncate(" ".join(b.label.split()) or b.action,
                                               MAX_BUTTON_TEXT), emoji=True),
            action_id=action_id(b.action, i),
            value=b.value,
            style=b.style,
        )
        for i, b in enumerate(buttons)
    ]
    return [ActionsBlock(elements=elements[i:i + MAX_ACTIONS_ELEMENTS])
            for i in range(0, len(elements), MAX_ACTIONS_ELEMENTS)]


def render_blocks(msg: Message, console_url: str | None = None) -> list[Block]:
    """The Block Kit objects for ``msg`` (validated by slack_sdk when serialised)."""
    marker = more_marker(msg)
    head: list[Block] = [HeaderBlock(text=PlainTextObject(text=header_text(msg), emoji=True)),
                         _context(msg, console_url)]
    text = escape_mrkdwn(msg.text.strip())
    if text:
        head.append(SectionBlock(text=_mrkdwn(truncate(text, MAX_SECTION_TEXT, marker))))
    buttons, dropped = _pick_buttons(msg.buttons)
    tail: list[Block] = _actions_blocks(buttons)
    body: list[Block] = []
    for sec in msg.sections:
        body += _section_blocks(sec, marker)
    # One block kept free for the "truncated" note whenever something does not fit.
    room = MAX_BLOCKS - len(head) - len(tail)
    cut = len(body) > room or dropped
    if cut:
        body = body[:max(0, room - 1)]
        note = marker + (f" ({dropped} more buttons: type the commands)" if dropped else "")
        body.append(ContextBlock(elements=[_mrkdwn(truncate(note, MAX_CONTEXT_TEXT))]))
    if tail and body and len(head) + len(body) + len(tail) < MAX_BLOCKS:
        body.append(DividerBlock())  # sets the buttons apart from long content
    return head + body + tail


def render(msg: Message, console_url: str | None = None) -> list[dict]:
    """``msg`` as Block Kit dicts for ``chat.postMessage`` / ``chat.update`` ``blocks``.

    Raises ``slack_sdk.errors.SlackObjectFormationError`` only on a bug here: every
    limit the SDK checks is respected before it checks.
    """
    return [b.to_dict() for b in render_blocks(msg, console_url)]
