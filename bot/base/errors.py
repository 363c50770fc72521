"""One small error hierarchy.

Every error says what failed and, through ``hint``, what to do next. The CLI and
the Slack layer print ``str(err)``; nothing user-facing shows a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


class IncidentBotError(Exception):
    """Base class. ``str()`` is the message plus the hint, ready for a human."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class InputError(IncidentBotError):
    """Something a person or a system handed us is malformed."""


class AlertParseError(InputError):
    """An alert payload is malformed; ``field`` is the dotted path to the bad part."""

    def __init__(self, message: str, *, field: str = "", hint: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message, hint=hint)


@dataclass(frozen=True)
class Problem:
    """One finding of the playbook linter: where (file, line, field path) and what."""

    file: str
    line: int | None
    field: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.field or '<document>'}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


@dataclass
class PlaybookError(InputError):
    """One or more playbook files are invalid; the last good set stays in force.

    Subclasses for other YAML documents (drill scenarios) set ``what`` and ``next_step``.
    """

    problems: list[Problem] = field(default_factory=list)
    what: ClassVar[str] = "playbook"
    next_step: ClassVar[str] = "run `llm-incident lint PATH` to see every problem"

    def __post_init__(self) -> None:
        n = len(self.problems)
        first = str(self.problems[0]) if self.problems else "no details"
        more = f" (and {n - 1} more)" if n > 1 else ""
        IncidentBotError.__init__(self, f"invalid {self.what}: {first}{more}",
                                  hint=self.next_step)

    def __str__(self) -> str:  # dataclass would otherwise replace Exception.__str__
        return IncidentBotError.__str__(self)


class TemplateError(InputError):
    """A playbook template could not be rendered safely (missing label, forbidden construct)."""


class NotFound(IncidentBotError):
    """An incident, run, playbook or drill id that does not exist."""


class Conflict(InputError):
    """Another request changed the same record first (a compare-and-set lost)."""


class CommandError(InputError):
    """A command (CLI or Slack) with a bad verb or argument; the message carries usage."""


class GuardRefused(IncidentBotError):
    """A guard stopped an action. ``guard`` names it; the message says why."""

    def __init__(self, guard: str, reason: str, *, hint: str | None = None) -> None:
        self.guard = guard
        self.reason = reason
        super().__init__(f"refused by guard '{guard}': {reason}", hint=hint)


class NothingToDo(IncidentBotError):
    """The target already holds every value the step would set: no run, no mitigation."""


class DriverError(IncidentBotError):
    """A target could not be read or changed (timeout, 5xx, unreadable file)."""


class PartialApplyError(DriverError):
    """A multi-route change failed part-way. ``applied`` lists the routes already changed."""

    def __init__(self, message: str, *, applied: list[str], hint: str | None = None) -> None:
        self.applied = list(applied)
        super().__init__(message, hint=hint)


class ActionFailed(IncidentBotError):
    """An action did not take effect; it is never reported as a success."""


class StoreError(IncidentBotError):
    """The SQLite store could not be read or written."""
