"""Where messages go: the ``Notifier`` protocol and the non-Slack notifiers.

The engine publishes neutral ``Message``s (``bot.core.messages``). A notifier that
fails must never block the engine or the other notifiers: ``FanoutNotifier``
logs the failure and carries on, and the engine itself also logs and swallows
whatever a lone notifier raises.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Protocol, TextIO, runtime_checkable

from bot.base.text_safety import neutralise, one_line
from bot.core.messages import Button, Message, button_command

log = logging.getLogger(__name__)


@runtime_checkable
class Notifier(Protocol):
    async def publish(self, msg: Message) -> None: ...


def render_text(msg: Message) -> str:
    """A readable plain-text block: head line, sections, fields, buttons as commands."""
    marks = [f"[{msg.severity.upper()}]" if msg.severity else "", "[DRILL]" if msg.is_drill and "[DRILL]" not in msg.title else ""]
    head = " ".join(m for m in (*marks, msg.title) if m)
    lines = [f"== {head} ==", *msg.text.splitlines()]
    for sec in msg.sections:
        if sec.title:
            lines.append(f"-- {sec.title}")
        lines += [f"   {line}" for line in sec.text.splitlines()]
        lines += [f"   {f.label}: {f.value}" for f in sec.fields]
    for b in msg.buttons:
        lines.append(f"   {_button_hint(b)}")
    return "\n".join(lines)


def _button_hint(b: Button) -> str:
    try:
        return f"[{b.label}]  llm-incident {button_command(b)}"
    except Exception:  # a malformed value must not stop the rest of the message
        return f"[{b.label}]"


class ConsoleNotifier:
    """Prints each message as a text block (the CLI demo and `serve` without Slack)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    async def publish(self, msg: Message) -> None:
        self.stream.write(neutralise(render_text(msg)) + "\n\n")
        self.stream.flush()


class LogNotifier:
    """One log record per message (the fallback text), at WARNING for critical ones."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("llm_incident.messages")

    async def publish(self, msg: Message) -> None:
        level = logging.WARNING if msg.severity == "critical" else logging.INFO
        drill = " [DRILL]" if msg.is_drill else ""
        self.log.log(level, "%s%s %s: %s", msg.kind, drill, one_line(msg.title),
                     one_line(msg.text),
                     extra={"incident_id": msg.incident_id, "message_kind": msg.kind})


class FanoutNotifier:
    """Publishes to every notifier at once; one failing or hanging is logged, not raised.

    ``timeout`` (seconds) bounds each notifier, so a stuck chat API cannot hold
    up the engine's loop for the others.
    """

    def __init__(self, *notifiers: Notifier, timeout: float | None = 30.0) -> None:
        self.notifiers = list(notifiers)
        self.timeout = timeout

    async def publish(self, msg: Message) -> None:
        results = await asyncio.gather(
            *(asyncio.wait_for(n.publish(msg), self.timeout) for n in self.notifiers),
            return_exceptions=True,
        )
        for n, res in zip(self.notifiers, results, strict=True):
            if isinstance(res, BaseException):
                log.error("notifier %s failed on %s message %r: %s", type(n).__name__,
                          msg.kind, msg.title, res or type(res).__name__)


class DrillRouter:
    """Drill messages to their own notifier (a drills channel), everything else to the real one.

    A rehearsal must never land where real pages land; with no drill notifier
    configured both go to the real one, still marked DRILL.
    """

    def __init__(self, real: Notifier, drill: Notifier) -> None:
        self.real = real
        self.drill = drill

    async def publish(self, msg: Message) -> None:
        await (self.drill if msg.is_drill else self.real).publish(msg)

    def start(self) -> None:
        for n in (self.real, self.drill):
            if start := getattr(n, "start", None):
                start()

    async def aclose(self) -> None:
        for n in (self.real, self.drill):
            if aclose := getattr(n, "aclose", None):
                await aclose()


async def publish_safely(notifier: Notifier | None, msg: Message) -> bool:
    """Publish, logging any failure; False when it failed. For callers that must go on."""
    if notifier is None:
        return True
    try:
        await notifier.publish(msg)
    except Exception as exc:
        log.error("publishing %s message %r failed: %s", msg.kind, msg.title,
                  exc or type(exc).__name__)
        return False
    return True
