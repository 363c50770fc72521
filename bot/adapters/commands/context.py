"""What a command runs with: who asks, from where, and the engine (opened lazily)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.base.errors import CommandError
from bot.core.engine import Engine


@dataclass
class Context:
    actor: str
    playbooks_dir: Path
    open_engine: Callable[[], Engine]
    # True on the CLI. Verbs that read or write files on this machine (lint PATH,
    # match FILE, schema --write) refuse elsewhere: a Slack user must not be able
    # to point the bot at arbitrary server paths.
    local: bool = True
    # Builds the drill verbs' backend (drills.harness.DrillService) from the engine;
    # injected by the composition root so the command layer never imports the drills'
    # sandbox or drivers. None: this front end offers no drills.
    open_drills: Callable[[Engine], Any] | None = None
    # LLM_INCIDENT_RELEASE_GATE: the eval a release must pass before its first step.
    release_gate: str | None = None
    canary_thresholds: Path | None = None  # LLM_INCIDENT_CANARY_THRESHOLDS
    slos: Path | None = None  # LLM_INCIDENT_SLOS
    # The web console: its public URL (links) and its link-signing key (None: stored).
    console_url: str | None = None
    console_secret: str | None = field(default=None, repr=False)
    # Paging's escalation rules for `tick` (None: no pager configured).
    open_escalations: Callable[[Engine], Any] | None = None
    _engine: Engine | None = field(default=None, repr=False)
    _drills: Any = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        # lint/test/match need no database; open the store only when a verb needs it.
        if self._engine is None:
            self._engine = self.open_engine()
        return self._engine

    @property
    def drills(self) -> Any:
        if self._drills is None:
            if self.open_drills is None:
                raise CommandError("drills are not available here", hint="use the CLI")
            self._drills = self.open_drills(self.engine)
        return self._drills

    def require_local(self, what: str) -> None:
        if not self.local:
            raise CommandError(f"{what} reads files on the bot's machine; use the CLI for it")
