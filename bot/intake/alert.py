"""The normalised alert every source is parsed into (see ``bot.intake.parse``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AlertSource = Literal["alertmanager", "grafana", "generic", "slack"]
AlertStatus = Literal["firing", "resolved"]


class Alert(BaseModel):
    """One alert, whatever sent it.

    ``(fingerprint, starts_at)`` identifies one firing: Alertmanager re-sends the
    same pair every repeat interval and on retries, so it is the dedup key.
    Label and annotation values are untrusted text; they are never rendered as
    templates and are escaped before they reach Slack.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: AlertSource
    fingerprint: str = Field(min_length=1)
    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime
    ends_at: datetime | None = None
    generator_url: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def dedup_key(self) -> tuple[str, str]:
        return (self.fingerprint, self.starts_at.isoformat())
