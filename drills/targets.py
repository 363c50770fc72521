"""Which target a drill incident's steps act on: the drill's own, never production.

A drill on the sandbox records its serving-policy file in the store when it sets
up (``drills.injection.policy_path``). Any process that acts on the drill's
incident (the CLI, Slack's buttons, a second ``serve``) finds that file here, so a
responder's step is planned against the sandbox's values, applied to it, and
reverted by the drill's rollback. A release the drill rolls out names its
target ``drill:DRILL-n``, found here by the drill's id. A staging drill records no file: its steps use
the target named in the playbook, as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from actions.base import ServingDriver
from actions.drivers.policy_file import PolicyFileDriver
from bot.store import Store


def drill_targets(store: Store) -> Callable[[str], tuple[str, ServingDriver] | None]:
    """A resolver for ``Runner(drill_targets=...)`` over the drills table of ``store``."""
    from drills.store import DRILL_SCHEMA

    store.ensure_schema("drills", DRILL_SCHEMA)  # this reads the drills' own table

    def resolve(incident_or_target: str) -> tuple[str, ServingDriver] | None:
        # "drill:DRILL-3" names the drill itself (its release has no incident yet).
        by_id = incident_or_target.startswith("drill:")
        key = incident_or_target.removeprefix("drill:") if by_id else incident_or_target
        row = store.db.execute(
            f"SELECT id, injection FROM drills WHERE {'id' if by_id else 'incident_id'} = ? "
            "AND (status = 'running' OR injection_active = 1) ORDER BY seq DESC LIMIT 1",
            [key],
        ).fetchone()
        if row is None:
            return None
        path = json.loads(row[1] or "{}").get("policy_path")
        if not path:
            return None
        return f"drill:{row[0]}", PolicyFileDriver(Path(path), actor="llm-incident drill")

    return resolve
