"""Alert intake: webhook bodies -> ``list[Alert]``.

Three sources are understood: the Alertmanager webhook (v4), the Grafana unified
alerting webhook (v1) and the generic shape below. ``parse_body`` is the single
entry point for raw bytes (the web layer and ``llm-incident match FILE`` call it).

Every body is all-or-nothing: one bad alert refuses the whole body with an
``AlertParseError`` whose ``field`` is the exact path (``alerts[2].labels.severity``),
so a half-parsed batch is never stored. Label and annotation values are untrusted
text and are kept verbatim (no escaping here; the Slack layer escapes, templates
never execute label text), except for two storage-safety fixes: lone UTF-16
surrogates (``"\\udc80"`` in JSON) become U+FFFD, and values longer than
``MAX_VALUE_CHARS`` are cut with a visible marker.

Generic JSON shape
------------------
Either one alert object, or ``{"alerts": [<alert object>, ...]}``. An alert object:

=============== ========== ============================================================
key             required   meaning
=============== ========== ============================================================
labels          yes        object of string -> string; must include a non-empty
                           ``alertname``. At most ``MAX_LABELS`` entries.
annotations     no         object of string -> string (summary, description, ...).
status          no         ``"firing"`` (default) or ``"resolved"``.
starts_at       no         RFC 3339 timestamp with an offset, e.g.
                           ``2026-11-29T10:00:00Z``. Default: time of receipt. Send it
                           when you re-send the same alert: ``(fingerprint, starts_at)``
                           is the dedup key, so a defaulted value makes a new firing.
ends_at         no         RFC 3339 timestamp or null.
fingerprint     no         non-empty string. Default: Alertmanager's fingerprint of the
                           labels (64-bit FNV-1a over the sorted names and values, as 16
                           hex digits), so the same labels sent here and through
                           Alertmanager dedupe together.
generator_url   no         string or null: a link back to the source (graph, rule).
=============== ========== ============================================================

Unknown keys are refused, so a typo such as ``startsAt`` never silently becomes "now".
Example::

    {"labels": {"alertname": "LLMCostBurnRateHigh", "route": "chat", "severity": "critical"},
     "annotations": {"summary": "Spend on chat is 6x budget"},
     "starts_at": "2026-11-29T10:00:00Z"}
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bot.base.errors import AlertParseError
from bot.intake.alert import Alert, AlertSource
from bot.intake.fields import (
    MAX_VALUE_CHARS,
    TS_HINT,
    cap_map,
    cap_tree,
    check_status,
    is_int,
    join_path,
    kind_of,
    optional_str,
    parse_timestamp,
    require_object,
    string_map,
)

__all__ = [
    "ALERTMANAGER_VERSIONS", "GRAFANA_VERSIONS", "MAX_ANNOTATIONS", "MAX_LABELS",
    "MAX_VALUE_CHARS", "SOURCES", "detect_source", "label_fingerprint", "parse_alertmanager",
    "parse_body", "parse_generic", "parse_grafana",
]

MAX_LABELS = 200
"""Most labels one alert may carry; beyond it the body is refused (a runaway label set)."""
MAX_ANNOTATIONS = 200
"""Most annotations one alert may carry."""

SOURCES: tuple[str, ...] = ("alertmanager", "grafana", "generic")
ALERTMANAGER_VERSIONS = ("4",)
GRAFANA_VERSIONS = ("1",)

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_GRAFANA_TOP_KEYS = frozenset({"orgId", "title", "state", "message"})
_GRAFANA_ALERT_KEYS = frozenset({"silenceURL", "dashboardURL", "panelURL", "values", "valueString"})
_GENERIC_KEYS = frozenset(
    {"labels", "annotations", "status", "starts_at", "ends_at", "fingerprint", "generator_url"}
)
_CAMEL_TO_GENERIC = {
    "startsAt": "starts_at",
    "endsAt": "ends_at",
    "generatorURL": "generator_url",
    "generatorUrl": "generator_url",
}
_BOM = b"\xef\xbb\xbf"


# --- entry point ---------------------------------------------------------------------


def parse_body(
    body: bytes, *, source: str | None = None, now: datetime | None = None
) -> list[Alert]:
    """Decode ``body`` (UTF-8 JSON) and parse it as ``source``, or auto-detect it.

    Auto-detection: Grafana when the body has ``orgId`` or another Grafana-only key;
    Alertmanager when it has ``groupKey`` (its version is then checked); else generic.
    """
    if source is not None and source not in SOURCES:
        raise AlertParseError(
            f"unknown alert source '{source}'",
            field="source",
            hint=f"use one of {', '.join(SOURCES)}, or leave it out to auto-detect",
        )
    payload = _decode(body)
    chosen = source or detect_source(payload)
    parser: dict[str, Callable[[Any], list[Alert]]] = {
        "alertmanager": parse_alertmanager,
        "grafana": parse_grafana,
        "generic": lambda p: parse_generic(p, now=now),
    }
    return parser[chosen](payload)


def detect_source(payload: Any) -> str:
    """Which parser a decoded body is for: ``alertmanager``, ``grafana`` or ``generic``."""
    if not isinstance(payload, dict):
        return "generic"  # the generic parser gives the clearest error for a non-object
    if _GRAFANA_TOP_KEYS & payload.keys():
        return "grafana"
    alerts = payload.get("alerts")
    if isinstance(alerts, list) and any(
        isinstance(a, dict) and _GRAFANA_ALERT_KEYS & a.keys() for a in alerts
    ):
        return "grafana"
    if "groupKey" in payload:
        return "alertmanager"
    return "generic"


def _decode(body: bytes) -> Any:
    start = len(_BOM) if body.startswith(_BOM) else 0  # a BOM is harmless; tolerate it
    try:
        text = body[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = start + exc.start
        raise AlertParseError(
            f"body is not UTF-8: byte 0x{body[offset]:02x} at offset {offset}",
            field="body",
            hint="send the webhook body as UTF-8 JSON",
        ) from None
    try:
        payload = json.loads(text, parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except _DuplicateKey:
        raise _duplicate_at(text) from None
    except json.JSONDecodeError as exc:
        raise AlertParseError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            field="body",
            hint="check the body with a JSON validator; the position points at the problem",
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # anything else the decoder refuses: still the sender's to fix
        raise AlertParseError(f"invalid JSON: {exc}", field="body") from None
    # Checked without recursion before any recursive pass: json.loads accepts ~1,000
    # levels, more than the passes below could walk.
    if _depth_over(payload, MAX_DEPTH):
        raise _too_deep()
    return _replace_surrogates(payload)


class _DuplicateKey(ValueError):
    """An object of the body has a key twice (the decoder would keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The fast path: one dict() and one length check per object, in C but for the call.
    # Where the duplicate is gets worked out only for a body that has one.
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey
    return d


class _Pairs(list[tuple[str, Any]]):
    """An object decoded with its pairs in order, to find a repeated key's path."""


def _duplicate_at(text: str) -> AlertParseError:
    """Which key is repeated, and where: the path of the first such object, in the
    order of the body (walked without recursion, like ``_depth_over``)."""
    stack: list[tuple[str, Any]] = [("", json.loads(text, object_pairs_hook=_Pairs))]
    while stack:
        path, node = stack.pop()
        children: list[tuple[str, Any]] = []
        if isinstance(node, _Pairs):
            seen: set[str] = set()
            for key, value in node:
                where = join_path(path, key)
                if key in seen:
                    return AlertParseError(
                        f"key '{key[:60]}' appears twice in one object; which value was "
                        "meant is ambiguous", field=where[:200],
                        hint="send each key once per object")
                seen.add(key)
                children.append((where, value))
        elif isinstance(node, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        stack.extend(reversed(children))
    return AlertParseError("a key appears twice in one object", field="body")


MAX_DEPTH = 32
"""Deepest nesting of a body (alerts are about four levels deep; raw Grafana values more)."""
MAX_INT_DIGITS = 40


def _parse_int(text: str) -> int:
    # Python refuses integers over 4,300 digits with a ValueError from deep inside the
    # decoder; no alert field needs more than a few digits, so refuse early and clearly.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise AlertParseError(
            f"a JSON number has {len(text)} digits; at most {MAX_INT_DIGITS} are accepted",
            field="body", hint="send numbers as the alert source writes them",
        )
    return int(text)


def _too_deep() -> AlertParseError:
    return AlertParseError(
        f"JSON is nested more than {MAX_DEPTH} levels deep", field="body",
        hint="alerts are at most a few levels deep",
    )


def _depth_over(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _replace_surrogates(value: Any) -> Any:
    """Lone surrogates are legal in JSON text but cannot be encoded to UTF-8 (SQLite,
    Slack): replace them with U+FFFD everywhere, keys included."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


# --- Alertmanager and Grafana ----------------------------------------------------------


def parse_alertmanager(payload: dict[str, Any]) -> list[Alert]:
    """Alertmanager webhook v4: ``{version: "4", groupKey, status, alerts: [...], ...}``.

    Each alert has ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``
    (``0001-01-01T00:00:00Z`` means none), ``generatorURL`` and ``fingerprint``.
    """
    return _parse_webhook(payload, "alertmanager", ALERTMANAGER_VERSIONS)


def parse_grafana(payload: dict[str, Any]) -> list[Alert]:
    """Grafana unified alerting webhook (``version: "1"``, ``orgId``, ``alerts: [...]``).

    Grafana-only alert fields (``values``, ``valueString``, ``silenceURL``,
    ``dashboardURL``, ``panelURL``) are kept in ``Alert.raw``.
    """
    return _parse_webhook(payload, "grafana", GRAFANA_VERSIONS)


def _parse_webhook(payload: Any, source: AlertSource, versions: tuple[str, ...]) -> list[Alert]:
    name = "Alertmanager" if source == "alertmanager" else "Grafana"
    require_object(payload, "", f"a {name} webhook body")
    version = payload.get("version")
    if version is None and source == "alertmanager":
        raise AlertParseError(
            'missing; an Alertmanager webhook always sends version "4"',
            field="version",
            hint="is this really an Alertmanager webhook? use --source generic otherwise",
        )
    if version is not None and version not in versions:
        raise AlertParseError(
            f"unknown {name} webhook version {version!r} (understood: {', '.join(versions)})",
            field="version",
            hint="upgrade llm-incident, or send the alerts in the generic shape",
        )
    if "status" in payload:
        check_status(payload["status"], "status")
    if source == "grafana" and "orgId" in payload and not is_int(payload["orgId"]):
        raise AlertParseError(f"must be an integer, got {kind_of(payload['orgId'])}", field="orgId")
    alerts = _alert_list(payload)
    return [_webhook_alert(item, f"alerts[{i}]", source) for i, item in enumerate(alerts)]


def _webhook_alert(item: Any, path: str, source: AlertSource) -> Alert:
    require_object(item, path, "an alert")
    for key, hint in (("labels", "every alert has labels"), ("status", "firing or resolved")):
        if key not in item:
            raise AlertParseError("missing", field=f"{path}.{key}", hint=hint)
    if "startsAt" not in item:
        raise AlertParseError("missing", field=f"{path}.startsAt", hint=TS_HINT)
    return _build(source, item, path, ("startsAt", "endsAt", "generatorURL"), now=None)


def _build(
    source: AlertSource,
    item: dict[str, Any],
    path: str,
    names: tuple[str, str, str],
    *,
    now: datetime | None,
) -> Alert:
    """The checks every source shares; ``names`` are the source's spellings of the
    start, end and generator-URL keys. ``now`` (generic only) defaults the start."""
    starts_key, ends_key, url_key = names
    labels = string_map(item["labels"], join_path(path, "labels"), MAX_LABELS)
    raw_annotations = item.get("annotations")
    annotations = string_map(
        {} if raw_annotations is None else raw_annotations,
        join_path(path, "annotations"),
        MAX_ANNOTATIONS,
    )
    status = check_status(item.get("status", "firing"), join_path(path, "status"))
    starts_at = now
    if now is None or item.get(starts_key) is not None:
        starts_at = parse_timestamp(item[starts_key], join_path(path, starts_key))
        if starts_at is None:
            raise AlertParseError("is the zero time", field=join_path(path, starts_key), hint=TS_HINT)
    assert starts_at is not None  # the generic parser passes `now`; webhooks must send it
    fingerprint = optional_str(item.get("fingerprint"), join_path(path, "fingerprint"))
    return Alert(
        source=source,
        # Of the labels as sent (before capping), so it equals Alertmanager's.
        fingerprint=fingerprint or label_fingerprint(labels),
        status=status,
        labels=cap_map(labels),
        annotations=cap_map(annotations),
        starts_at=starts_at,
        ends_at=parse_timestamp(item.get(ends_key), join_path(path, ends_key)),
        generator_url=optional_str(item.get(url_key), join_path(path, url_key)),
        raw=cap_tree(item),
    )


# --- generic ---------------------------------------------------------------------------


def parse_generic(payload: Any, *, now: datetime | None = None) -> list[Alert]:
    """The generic shape (see the module docstring). ``now`` defaults ``starts_at``."""
    if isinstance(payload, list):
        raise AlertParseError(
            "top level is an array",
            field="<body>",
            hint='wrap the alerts in an object: {"alerts": [...]}',
        )
    require_object(payload, "", 'an alert object or {"alerts": [...]}')
    received = now or datetime.now(UTC)
    if received.tzinfo is None:  # a naive "now" is taken as UTC, like every stored time
        received = received.replace(tzinfo=UTC)
    if "labels" not in payload and "alerts" in payload:
        extra = sorted(set(payload) - {"alerts"})
        if extra:
            raise AlertParseError(
                f"unknown key '{extra[0]}' next to 'alerts'",
                field=extra[0],
                hint='a batch is {"alerts": [...]} and nothing else',
            )
        items = _alert_list(payload)
        return [_generic_alert(a, f"alerts[{i}]", received) for i, a in enumerate(items)]
    return [_generic_alert(payload, "", received)]


def _generic_alert(item: Any, path: str, now: datetime) -> Alert:
    require_object(item, path, "an alert object")
    for key in item:
        if key not in _GENERIC_KEYS:
            suggestion = _CAMEL_TO_GENERIC.get(key)
            hint = (
                f"did you mean '{suggestion}'?"
                if suggestion
                else f"known keys: {', '.join(sorted(_GENERIC_KEYS))}"
            )
            raise AlertParseError("unknown key", field=join_path(path, key), hint=hint)
    if "labels" not in item:
        raise AlertParseError(
            "missing", field=join_path(path, "labels"), hint='e.g. {"alertname": "LLMCostBurnRateHigh"}'
        )
    labels = item["labels"]
    if isinstance(labels, dict) and not labels.get("alertname"):
        raise AlertParseError(
            "missing or empty",
            field=join_path(join_path(path, "labels"), "alertname"),
            hint="every alert needs an alertname label; playbooks match on it",
        )
    return _build("generic", item, path, ("starts_at", "ends_at", "generator_url"), now=now)


# --- shared field checks ----------------------------------------------------------------


def label_fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over the sorted names and
    values, each followed by a 0xff separator, printed as 16 hex digits."""
    h = 0xCBF29CE484222325
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ 0xFF) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def _alert_list(payload: dict[str, Any]) -> list[Any]:
    if "alerts" not in payload:
        raise AlertParseError("missing", field="alerts", hint="the body needs an alerts list")
    alerts = payload["alerts"]
    if not isinstance(alerts, list):
        raise AlertParseError(f"must be a list, got {kind_of(alerts)}", field="alerts")
    return alerts
