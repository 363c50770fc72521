"""The playbooks in force: the last set that loaded cleanly, never a partial one.

A reload that finds any problem keeps the current set, so a typo pushed during an
incident never leaves the bot without playbooks. Each good set's file texts are
kept (``sources``) so the composition root can store them; when the directory is
broken at start, the last stored good set is loaded instead (``restore``) and the
problems stay visible in ``problems`` (``/readyz``, logs, Slack). A registry with
no playbooks at all answers ``get`` with the directory's problems, so the verbs
that need playbooks say why, and the ones that do not (pause, revert, status...)
never touch it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.base.errors import NotFound, PlaybookError, Problem
from bot.playbook.loader import load_dir, load_sources, read_sources
from bot.playbook.schema import Playbook


def sources_digest(sources: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(sources.items())).encode()).hexdigest()


class PlaybookRegistry:
    """The current good set of playbooks; a bad reload keeps the last good set."""

    def __init__(
        self,
        playbooks: Mapping[str, Playbook] | None = None,
        *,
        source: str | Path | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._playbooks: dict[str, Playbook] = dict(playbooks or {})
        self.source: Path | None = Path(source) if source is not None else None
        self.loaded_at: datetime | None = clock() if playbooks is not None else None
        # Problems of the last load from the directory; empty when it loaded cleanly.
        self.problems: list[Problem] = []
        # File texts of the set in force (empty when built from Playbook objects).
        self.sources: dict[str, str] = {}
        # Where the set in force came from, for people: the directory load or a stored set.
        self.origin = "the set given at start"

    @classmethod
    def from_path(cls, path: str | Path, **kwargs: Any) -> PlaybookRegistry:
        """A registry loaded from ``path``; raises ``PlaybookError`` so a bad start is loud."""
        return cls(load_dir(path), source=path, **kwargs)

    @property
    def playbooks(self) -> dict[str, Playbook]:
        # The same object until a reload swaps in a new set, so callers may cache by identity.
        return self._playbooks

    @property
    def degraded(self) -> bool:
        """The directory does not load: the set in force is an older good one (or none)."""
        return bool(self.problems)

    def reload(self, path: str | Path | None = None) -> list[Problem]:
        """Load ``path`` (default: the last source); on any problem keep the current set."""
        target = Path(path) if path is not None else self.source
        if target is None:
            problem = Problem("<registry>", None, "", "no playbook path to reload from")
            self.problems = [problem]
            return [problem]
        if self.source is None:
            self.source = target  # remembered even when this first load fails
        texts, problems = read_sources([target])
        playbooks, more = load_sources(texts)
        problems += more
        self.problems = problems
        if problems:
            return problems
        self._playbooks, self.source, self.loaded_at = playbooks, target, self._clock()
        self.sources = texts
        self.origin = f"the set loaded from {target} at {self.loaded_at:%H:%M:%S} UTC"
        return []

    def restore(self, sources: Mapping[str, str], *, origin: str) -> list[Problem]:
        """Put a stored good set in force (the directory's problems stay in ``problems``)."""
        playbooks, problems = load_sources(sources)
        if problems:
            return problems
        self._playbooks, self.loaded_at = playbooks, self._clock()
        self.sources, self.origin = dict(sources), origin
        return []

    def get(self, playbook_id: str) -> Playbook:
        try:
            return self._playbooks[playbook_id]
        except KeyError:
            if not self._playbooks and self.problems:
                raise PlaybookError(problems=self.problems) from None
            known = ", ".join(sorted(self._playbooks)) or "none loaded"
            raise NotFound(
                f"no playbook '{playbook_id}'", hint=f"known playbooks: {known}"
            ) from None

    def __len__(self) -> int:
        return len(self._playbooks)

    def __contains__(self, playbook_id: object) -> bool:
        return playbook_id in self._playbooks
