"""The neutral message the engine publishes; every notifier renders it its own way.

Nothing here knows Slack: text is plain and *unescaped* (alert labels included),
there are no length limits and no markup. The Slack renderer is the only place
that escapes mrkdwn and knows Block Kit's limits; the console renderer prints
the text as is.

Button values say what a button acts on, in a format the Slack layer parses
back with ``parse_value``:

=====================  ==============================  ===========================
action                 value                           example
=====================  ==============================  ===========================
``run_step``           ``INCIDENT:PLAYBOOK:STEP``      ``INC-3:runaway-cost:cap-output``
``dry_run``            ``INCIDENT:PLAYBOOK:STEP``      ``INC-3:runaway-cost:cap-output``
``approve``            ``RUN``                         ``RUN-7``
``deny``               ``RUN``                         ``RUN-7``
``revert``             ``RUN``                         ``RUN-7``
``ack``                ``INCIDENT``                    ``INC-3``
``not_this_playbook``  ``INCIDENT:PLAYBOOK``           ``INC-3:runaway-cost``
=====================  ==============================  ===========================

``:`` is a safe separator: incident and run ids are ``PREFIX-N`` and playbook and
step ids match ``[a-z0-9][a-z0-9_-]*``. ``button_command`` gives the equivalent
CLI command for each button, so every button can also be typed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from bot.base.errors import InputError, StoreError

ButtonAction = Literal[
    "run_step", "dry_run", "approve", "deny", "revert", "ack", "not_this_playbook",
    "release_promote", "release_hold", "release_rollback",
]
MessageKind = Literal["suggestion", "update", "timeline", "reminder", "result", "drill"]

# How many ``:``-separated parts each action's value has.
VALUE_PARTS: dict[str, int] = {
    "run_step": 3, "dry_run": 3, "approve": 1, "deny": 1, "revert": 1, "ack": 1,
    "not_this_playbook": 2, "release_promote": 2, "release_hold": 1, "release_rollback": 1,
}  # fmt: skip


@dataclass(frozen=True)
class Button:
    action: ButtonAction
    label: str
    value: str
    style: Literal["primary", "danger"] | None = None


@dataclass(frozen=True)
class Field:
    label: str
    value: str


@dataclass(frozen=True)
class Section:
    text: str
    title: str | None = None
    fields: tuple[Field, ...] = ()


@dataclass(frozen=True)
class Message:
    kind: MessageKind
    incident_id: str | None
    title: str
    text: str  # plain fallback summary: what a notification or a log line shows
    severity: str | None = None
    sections: tuple[Section, ...] = ()
    buttons: tuple[Button, ...] = ()
    is_drill: bool = False
    # An update saying the incident is closed (resolved or cancelled): whatever shows
    # it keeps no action buttons from earlier messages, only this one's own.
    closes: bool = False


def message_to_json(msg: Message) -> str:
    """The message as JSON (the outbox keeps it so another process can deliver it)."""
    return json.dumps(asdict(msg), sort_keys=True)


def message_from_json(text: str) -> Message:
    """Rebuild a ``Message`` written by ``message_to_json``; StoreError if it is not one."""
    try:
        d: dict[str, Any] = json.loads(text)
        sections = tuple(
            Section(s["text"], s.get("title"), tuple(Field(f["label"], f["value"])
                                                    for f in s.get("fields", ())))
            for s in d.get("sections", ())
        )
        buttons = tuple(Button(b["action"], b["label"], b["value"], b.get("style"))
                        for b in d.get("buttons", ()))
        return Message(d["kind"], d.get("incident_id"), d["title"], d["text"],
                       severity=d.get("severity"), sections=sections, buttons=buttons,
                       is_drill=bool(d.get("is_drill", False)),
                       closes=bool(d.get("closes", False)))
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"a stored message is not readable: {exc!r}",
                         hint="the outbox item is damaged; it is set aside, the rest go out"
                         ) from exc


# --- button values -------------------------------------------------------------------


def step_value(incident_id: str, playbook_id: str, step_id: str) -> str:
    return f"{incident_id}:{playbook_id}:{step_id}"


def parse_value(action: str, value: str) -> tuple[str, ...]:
    """Split a button value into its parts; InputError if it does not fit ``action``."""
    want = VALUE_PARTS.get(action)
    if want is None:
        raise InputError(f"unknown button action '{action}'",
                         hint=f"one of: {', '.join(VALUE_PARTS)}")
    parts = tuple(value.split(":"))
    if len(parts) != want or not all(parts):
        raise InputError(
            f"button value {value[:80]!r} does not fit action '{action}' "
            f"({want} non-empty ':'-separated part{'s' if want > 1 else ''} expected)",
            hint="see bot/messages.py for the value formats",
        )
    return parts


# The one table of what each button does, as command tokens: Slack runs these, and
# the console prints them as the command to type. A button means the same thing
# wherever it is shown ("Run" runs the step: applied at once when it needs no
# approval, as a human asked for it).
BUTTON_COMMANDS: dict[str, Callable[[tuple[str, ...]], list[str]]] = {
    "run_step": lambda p: ["run", p[0], p[2], "--playbook", p[1]],
    "dry_run": lambda p: ["run", p[0], p[2], "--playbook", p[1], "--dry-run"],
    "approve": lambda p: ["approve", p[0], "--apply"],
    "deny": lambda p: ["deny", p[0], "--reason", "denied by button"],
    "revert": lambda p: ["revert", p[0]],
    "ack": lambda p: ["ack", p[0]],
    "not_this_playbook": lambda p: ["reject", p[0], p[1]],
    # REL:percent shown: a double click or a stale button finds the step moved, refused.
    "release_promote": lambda p: ["release", "promote", p[0], "--from", f"{p[1]}%"],
    "release_hold": lambda p: ["release", "hold", p[0], "--reason", "held from chat"],
    "release_rollback": lambda p: ["release", "rollback", p[0], "--reason",
                                   "rolled back from chat"],
}


def button_tokens(button: Button) -> list[str]:
    """The command tokens a button runs (``BUTTON_COMMANDS``)."""
    return BUTTON_COMMANDS[button.action](parse_value(button.action, button.value))


def button_command(button: Button) -> str:
    """The CLI / slash command that does what the button does."""
    return shlex.join(button_tokens(button))
