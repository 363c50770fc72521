"""Loading playbooks at start and at runtime, so a bad file never takes a tool away.

At start (``load_at_start``): the directory is loaded; a clean set is stored as
the last good set (``bot.store.playbook_sets``); a broken directory puts the last
stored good set in force instead and says so loudly. Nothing here raises for a
bad playbook: the bot starts, and the verbs that need no playbooks (pause,
revert, status...) work whatever the directory holds.

At runtime (``reload``: a change of the directory seen by ``serve``'s watcher,
SIGHUP, or the ``reload`` verb): all or nothing. A clean directory replaces the
set in force; any problem keeps it. Either way the result is logged and posted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bot.base.errors import IncidentBotError, Problem
from bot.core.messages import Message, Section
from bot.playbook.registry import PlaybookRegistry, sources_digest
from bot.store import Store
from bot.store.playbook_sets import PlaybookSnapshots, StoredSet

log = logging.getLogger("llm_incident.playbooks")

SHOWN_PROBLEMS = 5


@dataclass(frozen=True)
class LoadResult:
    ok: bool  # the directory loaded cleanly
    count: int  # playbooks in force now
    origin: str  # where the set in force came from (the directory, or a stored set)
    changed: bool = False  # a different set is in force than before
    problems: list[Problem] = field(default_factory=list)
    recovered: bool = False  # the directory loads again after it did not

    def text(self, source: Path | None) -> str:
        where = f" from {source}" if source else ""
        if self.ok:
            what = "reloaded" if self.changed else "unchanged"
            again = " (the directory loads again)" if self.recovered else ""
            return f"playbooks {what}: {self.count} in force{where}{again}"
        shown = "\n".join(str(p) for p in self.problems[:SHOWN_PROBLEMS])
        more = len(self.problems) - SHOWN_PROBLEMS
        more_text = f"\n... and {more} more (`llm-incident lint`)" if more > 0 else ""
        keeps = (f"{self.count} playbooks stay in force ({self.origin})" if self.count
                 else "no playbooks are in force")
        return (f"playbooks{where} do not load ({len(self.problems)} problem(s)); {keeps}\n"
                f"{shown}{more_text}")

    def message(self, source: Path | None) -> Message:
        text = self.text(source)
        title, _, rest = text.partition("\n")
        return Message("timeline", None, title, text, severity=None if self.ok else "high",
                       sections=(Section(rest, "Problems"),) if rest else ())


def load_at_start(registry: PlaybookRegistry, store: Store, path: Path) -> LoadResult:
    """Load ``path``; on problems fall back to the last good set in the store."""
    problems = registry.reload(path)
    snapshots = PlaybookSnapshots(store)
    if not problems:
        _remember(snapshots, registry)
        return LoadResult(True, len(registry), registry.origin, True)
    stored = _latest(snapshots)
    if stored is not None and not registry.restore(stored.files, origin=stored.describe()):
        log.error("PLAYBOOKS DO NOT LOAD from %s (%d problem(s), first: %s); running on %s",
                  path, len(problems), problems[0], stored.describe())
    else:
        log.error("PLAYBOOKS DO NOT LOAD from %s (%d problem(s), first: %s) and no good set is "
                  "stored: no playbook is in force until they are fixed", path, len(problems),
                  problems[0])
    return LoadResult(False, len(registry), registry.origin, len(registry) > 0, problems)


def reload(registry: PlaybookRegistry, store: Store) -> LoadResult:
    """All or nothing: a clean directory replaces the set in force, else it stays."""
    before, was_degraded = registry.playbooks, registry.degraded
    digest_before = sources_digest(registry.sources) if registry.sources else None
    problems = registry.reload()
    if problems:
        log.error("playbook reload refused (%d problem(s), first: %s); the set in force stays",
                  len(problems), problems[0])
        return LoadResult(False, len(registry), registry.origin, False, problems)
    changed = registry.playbooks is not before and sources_digest(registry.sources) != digest_before
    _remember(PlaybookSnapshots(store), registry)
    result = LoadResult(True, len(registry), registry.origin, changed, recovered=was_degraded)
    log.info("%s", result.text(registry.source))
    return result


def _remember(snapshots: PlaybookSnapshots, registry: PlaybookRegistry) -> None:
    try:
        snapshots.save(str(registry.source), registry.sources, sources_digest(registry.sources))
    except IncidentBotError as exc:  # the set is in force; storing it is a convenience
        log.warning("could not store the good playbook set: %s", exc)


def _latest(snapshots: PlaybookSnapshots) -> StoredSet | None:
    try:
        return snapshots.latest()
    except (IncidentBotError, ValueError) as exc:
        log.warning("could not read the stored playbook set: %s", exc)
        return None
