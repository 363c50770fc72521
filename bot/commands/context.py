"""What a command runs with: who asks, from where, and the engine (opened lazily)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.engine import Engine
from bot.errors import CommandError


@dataclass
class Context:
    actor: str
    playbooks_dir: Path
    open_engine: Callable[[], Engine]
    # True on the CLI. Verbs that read or write files on this machine (lint PATH,
    # match FILE, schema --write) refuse elsewhere: a Slack user must not be able
    # to point the bot at arbitrary server paths.
    local: bool = True
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        # lint/test/match need no database; open the store only when a verb needs it.
        if self._engine is None:
            self._engine = self.open_engine()
        return self._engine

    def require_local(self, what: str) -> None:
        if not self.local:
            raise CommandError(f"{what} reads files on the bot's machine; use the CLI for it")
