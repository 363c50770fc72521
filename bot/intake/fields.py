"""Field checks shared by the intake parsers: each error names the exact field path.

Kept apart from ``bot.intake.parse`` so the parsers read as the formats they parse.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from bot.base.errors import AlertParseError
from bot.base.text_safety import CONTROL, neutralise

MAX_VALUE_CHARS = 4096
"""Longest label/annotation value (and any string kept in ``Alert.raw``), marker included."""
MAX_KEY_CHARS = 128
"""Longest label or annotation name; longer is refused (Prometheus names are identifiers)."""

STATUSES = ("firing", "resolved")
_GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)  # Alertmanager's "no end time"
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MARKER_RESERVE = len("…[truncated 999.9 MB]")
TS_HINT = "use an RFC 3339 timestamp with an offset, e.g. 2026-11-29T10:00:00Z"


def require_object(value: Any, path: str, what: str) -> None:
    if not isinstance(value, dict):
        raise AlertParseError(
            f"must be {what} (a JSON object), got {kind_of(value)}", field=path or "<body>"
        )


def string_map(value: Any, path: str, limit: int) -> dict[str, str]:
    if not isinstance(value, dict):
        raise AlertParseError(
            f"must be an object of strings, got {kind_of(value)}",
            field=path,
            hint='e.g. {"route": "chat"}',
        )
    if len(value) > limit:
        raise AlertParseError(
            f"has {len(value)} entries; at most {limit} are accepted",
            field=path,
            hint="drop high-cardinality labels in the alert rule or the relabelling config",
        )
    for key, v in value.items():
        if len(key) > MAX_KEY_CHARS:
            raise AlertParseError(
                f"has a name of {len(key)} characters ({key[:40]!r}...); at most "
                f"{MAX_KEY_CHARS} are accepted",
                field=path,
                hint="label and annotation names are short identifiers",
            )
        if not key or CONTROL.search(key) or "\n" in key or "\t" in key:
            raise AlertParseError(
                f"has a name that is empty or holds control characters: {key[:40]!r}",
                field=path,
                hint="label and annotation names are short identifiers",
            )
        if not isinstance(v, str):
            raise AlertParseError(
                f"must be a string, got {kind_of(v)}",
                field=join_path(path, key),
                hint="quote the value in the alert rule",
            )
    return value


def check_status(value: Any, path: str) -> Any:
    if value not in STATUSES:
        raise AlertParseError(
            f"unknown status {value!r}", field=path, hint="status is 'firing' or 'resolved'"
        )
    return value


def parse_timestamp(value: Any, path: str) -> datetime | None:
    """RFC 3339 -> aware UTC datetime; None, "" and Go's zero time mean "no time"."""
    if value is None or value == "":
        return None
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        raise AlertParseError(f"not an RFC 3339 timestamp: {value!r}", field=path, hint=TS_HINT)
    frac = (m.group(7) or "")[:7]  # Go sends nanoseconds; datetime keeps microseconds
    zone = "+00:00" if m.group(8) in ("Z", "z") else m.group(8)
    text = f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}:{m.group(5)}:{m.group(6)}"
    try:
        parsed = datetime.fromisoformat(f"{text}{frac}{zone}")
        if parsed == _GO_ZERO_TIME:
            return None
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise AlertParseError(
            f"invalid timestamp {value!r}: {exc}", field=path, hint=TS_HINT
        ) from None


def optional_str(value: Any, path: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise AlertParseError(f"must be a string, got {kind_of(value)}", field=path)
    return cap(value)


def cap(text: str) -> str:
    if len(text) <= MAX_VALUE_CHARS:
        return text
    # Reserve room for the longest marker so value + marker stays within the limit.
    keep = MAX_VALUE_CHARS - _MARKER_RESERVE
    cut = len(text[keep:].encode("utf-8", "replace"))
    return f"{text[:keep]}…[truncated {human_size(cut)}]"


def cap_map(values: dict[str, str]) -> dict[str, str]:
    """Values as stored: control characters removed, length capped. (The fingerprint
    is taken before, of the labels as sent, so it still equals Alertmanager's.)"""
    return {k: cap(neutralise(v)) for k, v in values.items()}


def cap_tree(value: Any) -> Any:
    if isinstance(value, str):
        return cap(neutralise(value))
    if isinstance(value, list):
        return [cap_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: cap_tree(v) for k, v in value.items()}
    return value


def human_size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1000:.1f} KB"
    return f"{n / 1_000_000:.1f} MB"


def join_path(path: str, key: str) -> str:
    # Keys that are not identifiers (dots, spaces) are quoted so the path stays unambiguous.
    if not _IDENT.match(key):
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}.{key}" if path else key


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
