"""Where the files that ship with llm-incident are: a checkout, or an installed wheel.

The owner keeps the playbooks (with their tests, JSON Schema and the alert rules
pack) in the top-level ``playbooks/`` directory. A wheel carries a copy of it
inside the ``bot`` package (``bot/shipped/playbooks``, put there by ``setup.py``
at build time), so an installed ``llm-incident`` finds it from any folder; a
checkout or an editable install reads the top-level directory itself.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # the bot package (this is bot/playbook/)


def shipped_dir(name: str) -> Path:
    """``playbooks`` (or another top-level data directory) as installed or checked out."""
    packaged = _PACKAGE / "shipped" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name
