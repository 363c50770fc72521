"""JSON Schemas of the webhook bodies, for the OpenAPI document only.

The handlers read the raw body themselves (``bot.intake.parse`` is the validator, with
its exact field paths and hints), so these schemas describe the accepted shapes
for people and for API fuzzers; they never reject a request on their own.
"""

from __future__ import annotations

from typing import Any

from bot.intake.parse import ALERTMANAGER_VERSIONS, GRAFANA_VERSIONS, MAX_ANNOTATIONS, MAX_LABELS

_STATUS: dict[str, Any] = {"type": "string", "enum": ["firing", "resolved"]}
_TIME: dict[str, Any] = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 with an offset; 0001-01-01T00:00:00Z means none",
}
_OPTIONAL_TIME: dict[str, Any] = {**_TIME, "nullable": True}
_STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
_LABELS: dict[str, Any] = {
    **_STRING_MAP,
    "maxProperties": MAX_LABELS,
    "description": "untrusted text: stored verbatim, escaped before chat, never rendered",
}
_ANNOTATIONS: dict[str, Any] = {**_STRING_MAP, "maxProperties": MAX_ANNOTATIONS}


def _webhook_alert(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "labels", "startsAt"],
        "properties": {
            "status": _STATUS,
            "labels": _LABELS,
            "annotations": _ANNOTATIONS,
            "startsAt": _TIME,
            "endsAt": _OPTIONAL_TIME,
            "generatorURL": {"type": "string"},
            "fingerprint": {"type": "string"},
            **(extra or {}),
        },
    }


_GROUP_FIELDS: dict[str, Any] = {
    "receiver": {"type": "string"},
    "status": _STATUS,
    "groupLabels": _STRING_MAP,
    "commonLabels": _STRING_MAP,
    "commonAnnotations": _STRING_MAP,
    "externalURL": {"type": "string"},
    "groupKey": {"type": "string"},
    "truncatedAlerts": {"type": "integer", "minimum": 0},
}

ALERTMANAGER: dict[str, Any] = {
    "title": "Alertmanager webhook (version 4)",
    "type": "object",
    "required": ["version", "alerts"],
    "properties": {
        "version": {"type": "string", "enum": list(ALERTMANAGER_VERSIONS)},
        **_GROUP_FIELDS,
        "alerts": {"type": "array", "items": _webhook_alert()},
    },
}

GRAFANA: dict[str, Any] = {
    "title": "Grafana unified alerting webhook (version 1)",
    "type": "object",
    "required": ["alerts"],
    "properties": {
        "version": {"type": "string", "enum": list(GRAFANA_VERSIONS)},
        "orgId": {"type": "integer"},
        "title": {"type": "string"},
        "state": {"type": "string"},
        "message": {"type": "string"},
        **_GROUP_FIELDS,
        "alerts": {
            "type": "array",
            "items": _webhook_alert(
                {
                    "silenceURL": {"type": "string"},
                    "dashboardURL": {"type": "string"},
                    "panelURL": {"type": "string"},
                    "values": {"type": "object", "nullable": True},
                    "valueString": {"type": "string"},
                }
            ),
        },
    },
}

_GENERIC_ALERT: dict[str, Any] = {
    "type": "object",
    "required": ["labels"],
    "additionalProperties": False,
    "properties": {
        "labels": {
            **_LABELS,
            "required": ["alertname"],
            "properties": {"alertname": {"type": "string", "minLength": 1}},
        },
        "annotations": _ANNOTATIONS,
        "status": _STATUS,
        "starts_at": {
            **_TIME,
            "description": "default: time of receipt; send it on re-sends, it is the dedup key",
        },
        "ends_at": _OPTIONAL_TIME,
        "fingerprint": {"type": "string", "minLength": 1},
        "generator_url": {"type": "string", "nullable": True},
    },
}

GENERIC: dict[str, Any] = {
    "title": "Generic alert, or a batch of them",
    "oneOf": [
        _GENERIC_ALERT,
        {
            "type": "object",
            "required": ["alerts"],
            "additionalProperties": False,
            "properties": {"alerts": {"type": "array", "items": _GENERIC_ALERT}},
        },
    ],
}

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was refused"},
        "field": {"type": "string", "nullable": True, "description": "dotted path of the bad part"},
        "hint": {"type": "string", "nullable": True, "description": "what to do next"},
    },
}

ACCEPTED: dict[str, Any] = {
    "type": "object",
    "required": ["alerts"],
    "properties": {
        "alerts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "fingerprint": {"type": "string"},
                    "status": _STATUS,
                    "incident_id": {"type": "string"},
                    "new_incident": {"type": "boolean"},
                    "outcome": {
                        "type": "string",
                        "enum": ["opened", "joined", "resolved", "duplicate"],
                        "description": "opened an incident, joined an open one, resolved a "
                        "stored firing, or repeated a known alert (nothing changed)",
                    },
                },
            },
        }
    },
}
