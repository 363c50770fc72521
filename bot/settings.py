"""Settings: the only module that reads environment variables.

Every value has a default that works on a fresh machine: a SQLite file and a
serving-policy file under ``./var``, the shipped playbooks, no Prometheus
(verification then waits for its deadline and escalates or reverts per playbook).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.errors import InputError
from bot.playbook.schema import parse_duration

SHIPPED_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"

ENV_VARS = {
    "LLM_INCIDENT_DB": "SQLite file (default ./var/llm-incident.db)",
    "LLM_INCIDENT_PLAYBOOKS": "playbook directory (default: the shipped playbooks)",
    "LLM_INCIDENT_POLICY": "serving policy file of the default target (default ./var/serving-policy.yaml)",
    "LLM_INCIDENT_TARGETS": "YAML file naming extra targets (policy_file or http drivers)",
    "LLM_INCIDENT_PROMETHEUS_URL": "Prometheus base URL for verification queries (default: none)",
    "LLM_INCIDENT_APPROVAL_TTL": "how long an approval stays valid (default 15m)",
    "LLM_INCIDENT_MAX_ACTIVE": "most mitigations active at once (default 3)",
    "LLM_INCIDENT_USER": "who the CLI acts as (default: the login name)",
}


@dataclass(frozen=True)
class Settings:
    db_path: Path = Path("var/llm-incident.db")
    playbooks_dir: Path = SHIPPED_PLAYBOOKS
    policy_path: Path = Path("var/serving-policy.yaml")
    targets_file: Path | None = None
    prometheus_url: str | None = None
    approval_ttl: timedelta = timedelta(minutes=15)
    max_active_mitigations: int = 3
    user: str = "cli"
    # Whatever the HTTP driver may template as {{ env.X }} (credentials).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if environ is None else environ)
        s = cls(env=env, user=env.get("LLM_INCIDENT_USER") or _login_name())
        if v := env.get("LLM_INCIDENT_DB"):
            s = replace(s, db_path=Path(v))
        if v := env.get("LLM_INCIDENT_PLAYBOOKS"):
            s = replace(s, playbooks_dir=Path(v))
        if v := env.get("LLM_INCIDENT_POLICY"):
            s = replace(s, policy_path=Path(v))
        if v := env.get("LLM_INCIDENT_TARGETS"):
            s = replace(s, targets_file=Path(v))
        if v := env.get("LLM_INCIDENT_PROMETHEUS_URL"):
            s = replace(s, prometheus_url=v.rstrip("/"))
        if v := env.get("LLM_INCIDENT_APPROVAL_TTL"):
            s = replace(s, approval_ttl=_duration("LLM_INCIDENT_APPROVAL_TTL", v))
        if v := env.get("LLM_INCIDENT_MAX_ACTIVE"):
            if not v.isdigit() or int(v) < 1:
                raise InputError(f"LLM_INCIDENT_MAX_ACTIVE must be a positive integer, got {v!r}")
            s = replace(s, max_active_mitigations=int(v))
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return replace(s, **overrides)

    def target_configs(self) -> dict[str, dict[str, Any]]:
        """Targets by name. ``default`` is the policy file unless the targets file says otherwise."""
        targets: dict[str, dict[str, Any]] = {
            "default": {"driver": "policy_file", "path": str(self.policy_path)}
        }
        if self.targets_file is None:
            return targets
        try:
            doc = yaml.safe_load(self.targets_file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(
                f"cannot read targets file {self.targets_file}: {exc}",
                hint="LLM_INCIDENT_TARGETS must name a YAML file with a `targets:` mapping",
            ) from None
        extra = (doc or {}).get("targets") if isinstance(doc, dict) else None
        if not isinstance(extra, dict):
            raise InputError(f"{self.targets_file}: `targets` must be a mapping of name -> config")
        for name, cfg in extra.items():
            if not isinstance(cfg, dict) or "driver" not in cfg:
                raise InputError(f"{self.targets_file}: targets.{name}: needs a `driver` key")
            targets[str(name)] = cfg
        return targets


def _duration(name: str, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"
