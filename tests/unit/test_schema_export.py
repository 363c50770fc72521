"""The exported JSON Schema is generated from the typed model and must not go stale."""

import json
from pathlib import Path

from bot.playbook.schema import json_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "playbooks" / "playbook.schema.json"


def test_exported_schema_matches_the_model():
    on_disk = json.loads(SCHEMA_FILE.read_text())
    assert on_disk == json_schema(), (
        "playbooks/playbook.schema.json is stale: run `llm-incident schema --write`"
    )


def test_schema_forbids_unknown_keys_so_editors_flag_typos():
    schema = json_schema()
    guard = schema["$defs"]["Guard"]
    assert guard["additionalProperties"] is False
    assert "approval" in guard["properties"]
