"""Durations as people write them in playbooks and target configs: ``30s``, ``10m``,
``2h``, ``1d`` (or a number of seconds). ``Duration`` is the pydantic field type."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    """``30s``, ``10m``, ``2h``, ``1d`` (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 2h, 1d)")


def format_duration(td: timedelta) -> str:
    secs = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(s|m|h|d)$", "examples": ["10m"]}),
]
