"""One command grammar for `/llm-incident <verb> ...` in Slack and `llm-incident <verb> ...`.

``VERB [POSITIONAL ...] [--option VALUE] [--flag]``. Slack hands us one string
(split with shell quoting rules); the CLI hands us argv. Both end up here, so a
verb parses, errs and answers the same way in both places.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.base.errors import CommandError

if TYPE_CHECKING:
    from bot.adapters.commands.context import Context

# Options every listing verb takes; `--as` is taken by every verb that changes things.
JSON = "--json"
AS = "--as"


@dataclass
class Result:
    """A neutral answer: text for humans, data for --json, and the exit code."""

    text: str
    data: Any = None
    exit_code: int = 0
    # Said besides the data, e.g. "showing 50 of 312": part of ``text``, and printed
    # to stderr by the CLI with --json so the JSON stays a plain list.
    note: str | None = None
    # The answer as a Markdown document (reports, postmortems, timelines), for the CLI:
    # rendered for a terminal, printed as is when piped. Chat shows ``text``.
    markdown: str | None = None
    # False when a verb that changes things found the change already made (a double
    # click, a second approver a moment late): chat tells only the asker.
    changed: bool = True

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


Handler = Callable[["Context", "Command"], Awaitable[Result]]


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    args: tuple[str, ...] = ()  # required positionals; a trailing "..." takes the rest
    optional: tuple[str, ...] = ()  # optional positionals
    options: tuple[str, ...] = ()  # "--name" takes a value
    flags: tuple[str, ...] = ()  # "--name" is a boolean
    changes_state: bool = False  # needs the on-call group in Slack
    private: bool = False  # its result is a secret for the asker (never in the channel)
    handler: Handler | None = field(default=None, compare=False, repr=False)

    @property
    def usage(self) -> str:
        parts = [self.name]
        parts += [a.upper() for a in self.args]
        parts += [f"[{a.upper()}]" for a in self.optional]
        parts += [f"[{o} {o.lstrip('-').upper()}]" for o in self.options]
        parts += [f"[{f}]" for f in self.flags]
        return " ".join(parts)


@dataclass(frozen=True)
class Command:
    verb: Verb
    args: dict[str, Any]
    options: dict[str, str]
    flags: frozenset[str]

    def opt(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)

    def flag(self, name: str) -> bool:
        return name in self.flags

    @property
    def as_json(self) -> bool:
        return JSON in self.flags

    def limit(self, default: int) -> int:
        """``--limit N`` (a positive integer), else ``default``."""
        raw = self.options.get("--limit")
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise CommandError(f"--limit must be a positive number, got {raw!r}",
                               hint=f"usage: {self.verb.usage}")
        return int(raw)


def split(text: str) -> list[str]:
    """Split Slack command text like a shell would, with a clear error on bad quoting."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"cannot parse the command: {exc}", hint="check your quotes") from None


def parse(tokens: Sequence[str], verbs: dict[str, Verb]) -> Command:
    if not tokens:
        raise CommandError("no command given", hint=_known(verbs))
    name, rest = tokens[0].lower(), list(tokens[1:])
    verb = verbs.get(name)
    if verb is None:
        raise CommandError(f"unknown command '{_clip(tokens[0])}'", hint=_known(verbs))
    positionals: list[str] = []
    options: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok.startswith("--") and len(tok) > 2:
            key, eq, value = tok.partition("=")
            if key in verb.flags and not eq:
                flags.add(key)
            elif key in verb.options:
                if not eq:
                    i += 1
                    if i >= len(rest):
                        raise CommandError(f"{key} needs a value", hint=f"usage: {verb.usage}")
                    value = rest[i]
                options[key] = value
            else:
                raise CommandError(
                    f"'{verb.name}' has no option {_clip(key)}", hint=f"usage: {verb.usage}"
                )
        else:
            positionals.append(tok)
        i += 1
    return Command(verb, _bind(verb, positionals), options, frozenset(flags))


def _bind(verb: Verb, positionals: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    required = list(verb.args)
    rest_name = required.pop() if required and required[-1].endswith("...") else None
    if len(positionals) < len(required) + (1 if rest_name else 0):
        missing = (required + ([rest_name] if rest_name else []))[len(positionals)]
        raise CommandError(f"missing {missing.rstrip('.').upper()}", hint=f"usage: {verb.usage}")
    for name in required:
        args[name] = positionals.pop(0)
    if rest_name:
        args[rest_name.rstrip(".")] = positionals
        positionals = []
    for name in verb.optional:
        if name.endswith("..."):
            args[name.rstrip(".")] = positionals
            positionals = []
        else:
            args[name] = positionals.pop(0) if positionals else None
    if positionals:
        raise CommandError(
            f"unexpected argument '{_clip(positionals[0])}'", hint=f"usage: {verb.usage}"
        )
    return args


def _known(verbs: dict[str, Verb]) -> str:
    return "commands: " + ", ".join(sorted(verbs)) + " (try `help`)"


def _clip(text: str, limit: int = 40) -> str:
    # Arguments may be 10 KB pastes; error messages quote only the start.
    return text if len(text) <= limit else text[:limit] + "…"
