"""Settings: the only module that reads environment variables.

Every value has a default that works on a fresh machine: a SQLite file and a
serving-policy file under ``./var``, the shipped playbooks, no Prometheus
(verification then waits for its deadline and escalates or reverts per playbook).
"""

from __future__ import annotations

import getpass
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from bot.base.errors import InputError
from bot.playbook.schema import parse_duration
from bot.playbook.shipped import shipped_dir
from bot.store.backend import is_postgres_url

SHIPPED_PLAYBOOKS = shipped_dir("playbooks")

ENV_VARS = {
    "LLM_INCIDENT_DB": "SQLite file (default ./var/llm-incident.db), or a postgresql:// URL "
    "for replicas sharing one Postgres database",
    "LLM_INCIDENT_PLAYBOOKS": "playbook directory (default: the shipped playbooks)",
    "LLM_INCIDENT_POLICY": "serving policy file of the default target (default ./var/serving-policy.yaml)",
    "LLM_INCIDENT_TARGETS": "YAML file naming extra targets (policy_file or http drivers)",
    "LLM_INCIDENT_PROMETHEUS_URL": "Prometheus base URL for verification queries (default: none)",
    "LLM_INCIDENT_APPROVAL_TTL": "how long an approval stays valid (default 15m)",
    "LLM_INCIDENT_MAX_ACTIVE": "most mitigations active at once (default 3)",
    "LLM_INCIDENT_USER": "who the CLI acts as (default: the login name)",
    "LLM_INCIDENT_HOST": "address `serve` listens on (default 127.0.0.1)",
    "LLM_INCIDENT_PORT": "port `serve` listens on (default 8080)",
    "LLM_INCIDENT_WEBHOOK_TOKEN": "bearer token the alert webhooks require (default: none)",
    "LLM_INCIDENT_GRAFANA_HMAC_SECRET": "secret of Grafana's webhook HMAC signature (default: none)",
    "LLM_INCIDENT_GRAFANA_HMAC_HEADER": "header carrying that signature "
    "(default X-Grafana-Alerting-Signature)",
    "LLM_INCIDENT_GRAFANA_HMAC_TIMESTAMP_HEADER": "Grafana's timestamp header, when its contact "
    "point sets one; then required and checked for freshness (default: none)",
    "LLM_INCIDENT_MAX_BODY": "largest webhook body accepted, in bytes (default 1048576)",
    "LLM_INCIDENT_DRILL_TZ": "time zone of the monthly drill schedule (default UTC)",
    "LLM_INCIDENT_DRILL_CRON": "crontab line replacing the drill schedule "
    "(default: first Tuesday of the month, 10:00)",
    "LLM_INCIDENT_DRILL_SPEED": "drill seconds per real second for sandbox drills people "
    "answer (default 1, real time; faster rehearses the mechanics, and tests use it)",
    "LLM_INCIDENT_DRILL_CHANNEL": "Slack channel for drill incidents and announcements "
    "(default: the incident channel, marked DRILL)",
    "SLACK_BOT_TOKEN": "Slack bot token (xoxb-...); with it `serve` posts to Slack (default: none)",
    "SLACK_SIGNING_SECRET": "Slack signing secret; with it `serve` takes POST /slack/events",
    "SLACK_APP_TOKEN": "Slack app-level token (xapp-...); with it `serve` uses Socket Mode",
    "LLM_INCIDENT_SLACK_API_URL": "Slack Web API base URL (default https://slack.com/api/)",
    "LLM_INCIDENT_SLACK_CHANNEL": "channel id incidents are posted in",
    "LLM_INCIDENT_ONCALL_USERS": "comma-separated Slack user ids allowed to change things",
    "LLM_INCIDENT_ONCALL_GROUP": "Slack user group id whose members may change things",
    "LLM_INCIDENT_ALERT_CHANNELS": "comma-separated channel ids whose Alertmanager posts "
    "are read as alerts",
    "LLM_INCIDENT_ALERT_POSTERS": "comma-separated Slack bot, app or user ids whose posts in "
    "those channels are alerts; anything else is ignored and counted (default: none)",
    "LLM_INCIDENT_SELF_APPROVAL": "false: the requester of an oncall step never approves it "
    "alone (default true; a step can say self_approval: false)",
    "LLM_INCIDENT_RELEASE_GATE": "releases: a command (exit 0 passes) or an http(s) URL (a "
    "2xx passes unless it answers {\"pass\": false}) every release must pass before its "
    "first step (default: none)",
    "LLM_INCIDENT_CANARY_THRESHOLDS": "releases: the canary thresholds file (default: the "
    "shipped bot/playbook/canary_thresholds.yaml); `release thresholds` checks one",
    "LLM_INCIDENT_SLOS": "the SLO and budget file `slo status` and `slo render` read (default: "
    "the shipped example, bot/playbook/slos.example.yaml)",
    "LLM_INCIDENT_LEASE_TTL": "replicas: the leader lease; a dead or hung leader is replaced "
    "within it plus a quarter of it, and every store transaction is bounded by it (default 5s)",
    "LLM_INCIDENT_PAGERDUTY_ROUTING_KEY": "paging: a PagerDuty Events API v2 integration key; "
    "with it the escalation rules page (default: none, nothing pages)",
    "LLM_INCIDENT_PAGERDUTY_URL": "paging: the Events API URL (default "
    "https://events.pagerduty.com/v2/enqueue)",
    "LLM_INCIDENT_PAGE_WEBHOOK": "paging: an http(s) URL that gets each page event as JSON, "
    "when PagerDuty is not used (default: none)",
    "LLM_INCIDENT_PAGE_UNACKED": "paging: page when an incident of a severity stays "
    "unacknowledged this long (default critical=5m,high=15m,warning=30m; none: never)",
    "LLM_INCIDENT_PAGE_APPROVAL": "paging: page when a run waits for approval this long "
    "(default 10m; 0: never). Failed verifications that escalate and failed reverts page at once",
    "LLM_INCIDENT_CONSOLE_URL": "the web console's public base URL, for links in pages, Slack "
    "and the CLI (default: http://HOST:PORT of serve)",
    "LLM_INCIDENT_POLL_INTERVAL": "how often serve's leader runs its periodic checks "
    "(verification, approvals, releases, reminders, paging; default 15s)",
    "LLM_INCIDENT_CONSOLE_SECRET": "the key signing the console's approval links; change it "
    "to revoke every link out there (default: a random key kept in the store)",
    "LLM_INCIDENT_CONSOLE_USER_HEADER": "behind an SSO proxy: the header naming the signed-in "
    "person (e.g. X-Forwarded-User); an approval link then works only for that person",
    "LLM_INCIDENT_FLAP_WINDOW": "a group that fires again this soon after it resolved reopens "
    "its incident instead of opening a new one (default 10m; 0 turns it off)",
}

DEFAULT_GRAFANA_HMAC_HEADER = "X-Grafana-Alerting-Signature"


@dataclass(frozen=True)
class Settings:
    db_path: Path = Path("var/llm-incident.db")
    # A postgresql:// URL: replicas share this database instead of a SQLite file.
    db_url: str | None = field(default=None, repr=False)
    playbooks_dir: Path = SHIPPED_PLAYBOOKS
    policy_path: Path = Path("var/serving-policy.yaml")
    targets_file: Path | None = None
    prometheus_url: str | None = None
    approval_ttl: timedelta = timedelta(minutes=15)
    max_active_mitigations: int = 3
    self_approval: bool = True
    flap_window: timedelta = timedelta(minutes=10)
    lease_ttl: timedelta = timedelta(seconds=5)  # bot.store.leases.DEFAULT_LEASE
    poll_interval: timedelta = timedelta(seconds=15)
    release_gate: str | None = None
    canary_thresholds: Path | None = None
    slos: Path | None = None
    user: str = "cli"
    # `llm-incident serve`
    host: str = "127.0.0.1"
    port: int = 8080
    webhook_token: str | None = field(default=None, repr=False)
    # Listening beyond loopback with no webhook token: refused unless this says so.
    allow_unauthenticated_webhooks: bool = False
    grafana_hmac_secret: str | None = field(default=None, repr=False)
    grafana_hmac_header: str = DEFAULT_GRAFANA_HMAC_HEADER
    grafana_hmac_timestamp_header: str | None = None
    max_body_bytes: int = 1024 * 1024
    # Drills (drills/schedule.py)
    drill_tz: str = "UTC"
    drill_cron: str | None = None
    drill_speed: float = 1.0
    drill_channel: str | None = None
    # Slack (bot/slack/): nothing Slack runs unless a token or secret is set.
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str | None = None
    slack_channel: str | None = None
    oncall_users: tuple[str, ...] = ()
    oncall_group: str | None = None
    alert_channels: tuple[str, ...] = ()
    alert_posters: tuple[str, ...] = ()
    # Paging (bot/core/paging.py): nothing pages unless a routing key or webhook is set.
    pagerduty_routing_key: str | None = field(default=None, repr=False)
    pagerduty_url: str | None = None
    page_webhook: str | None = None
    page_unacked: Mapping[str, timedelta] = field(default_factory=lambda: {
        "critical": timedelta(minutes=5), "high": timedelta(minutes=15),
        "warning": timedelta(minutes=30)})
    page_approval: timedelta | None = timedelta(minutes=10)
    console_url: str | None = None
    # The console's signing key for approval links (default: one kept in the store).
    console_secret: str | None = field(default=None, repr=False)
    # Behind an SSO proxy: the header naming the signed-in person (must match a link's).
    console_user_header: str | None = None
    # Whatever the HTTP driver may template as {{ env.X }} (credentials).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def with_db(self, where: str) -> Settings:
        """A SQLite path or a ``postgresql://`` URL (``LLM_INCIDENT_DB``, ``--db``)."""
        if is_postgres_url(where):
            return replace(self, db_url=where)
        return replace(self, db_path=Path(where), db_url=None)

    @property
    def console_base(self) -> str:
        """Where people open the console: LLM_INCIDENT_CONSOLE_URL, or serve's address."""
        return self.console_url or f"http://{self.host}:{self.port}"

    @property
    def store_location(self) -> str:
        """What ``Store`` opens: the Postgres URL when one is set, else the SQLite path."""
        return self.db_url or str(self.db_path)

    @property
    def state_dir(self) -> Path:
        """Where files beside the store go (drill work files): the SQLite file's folder,
        or the policy file's when the store is Postgres."""
        if self.db_url or str(self.db_path) == ":memory:":
            return self.policy_path.parent
        return self.db_path.parent

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if environ is None else environ)
        s = cls(env=env, user=env.get("LLM_INCIDENT_USER") or _login_name())
        if v := env.get("LLM_INCIDENT_DB"):
            s = s.with_db(v)
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
        if v := env.get("LLM_INCIDENT_SELF_APPROVAL"):
            s = replace(s, self_approval=_flag("LLM_INCIDENT_SELF_APPROVAL", v))
        if v := env.get("LLM_INCIDENT_CANARY_THRESHOLDS"):
            s = replace(s, canary_thresholds=Path(v))
        if v := env.get("LLM_INCIDENT_SLOS"):
            s = replace(s, slos=Path(v))
        if v := env.get("LLM_INCIDENT_RELEASE_GATE"):
            s = replace(s, release_gate=v)
        if v := env.get("LLM_INCIDENT_POLL_INTERVAL"):
            s = replace(s, poll_interval=_duration("LLM_INCIDENT_POLL_INTERVAL", v))
        if v := env.get("LLM_INCIDENT_LEASE_TTL"):
            s = replace(s, lease_ttl=_duration("LLM_INCIDENT_LEASE_TTL", v))
        if v := env.get("LLM_INCIDENT_FLAP_WINDOW"):
            # "0" (no unit) turns flap damping off, as the README says.
            window = timedelta(0) if v.strip() == "0" else _duration("LLM_INCIDENT_FLAP_WINDOW", v)
            s = replace(s, flap_window=window)
        s = _serve_settings(s, env)
        s = _drill_settings(s, env)
        s = _slack_settings(s, env)
        s = _paging_settings(s, env)
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


def _serve_settings(s: Settings, env: Mapping[str, str]) -> Settings:
    if v := env.get("LLM_INCIDENT_HOST"):
        s = replace(s, host=v)
    if v := env.get("LLM_INCIDENT_PORT"):
        if not v.isdigit() or not 0 <= int(v) <= 65535:
            raise InputError(f"LLM_INCIDENT_PORT must be a port number 0-65535, got {v!r}")
        s = replace(s, port=int(v))
    if v := env.get("LLM_INCIDENT_WEBHOOK_TOKEN"):
        s = replace(s, webhook_token=v)
    if v := env.get("LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS"):
        s = replace(s, allow_unauthenticated_webhooks=_flag(
            "LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS", v))
    if v := env.get("LLM_INCIDENT_GRAFANA_HMAC_SECRET"):
        s = replace(s, grafana_hmac_secret=v)
    if v := env.get("LLM_INCIDENT_GRAFANA_HMAC_HEADER"):
        s = replace(s, grafana_hmac_header=v)
    if v := env.get("LLM_INCIDENT_GRAFANA_HMAC_TIMESTAMP_HEADER"):
        s = replace(s, grafana_hmac_timestamp_header=v)
    if v := env.get("LLM_INCIDENT_MAX_BODY"):
        if not v.isdigit() or int(v) < 1:
            raise InputError(f"LLM_INCIDENT_MAX_BODY must be a positive number of bytes, got {v!r}")
        s = replace(s, max_body_bytes=int(v))
    return s


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (a name other than localhost may be anything)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def unauthenticated_bind(s: Settings, host: str) -> str | None:
    """The warning to log loudly when webhooks on ``host`` take anyone's alert (the
    operator said so), None when they do not; ``InputError`` when they would and
    nobody said so: any alert posted there can run a playbook's automatic steps."""
    if s.webhook_token or is_loopback(host):
        return None
    if not s.allow_unauthenticated_webhooks:
        raise InputError(
            f"serve: listening on {host} with no LLM_INCIDENT_WEBHOOK_TOKEN would let "
            "anyone who can reach the port post alerts, and alerts run automatic steps",
            hint="set LLM_INCIDENT_WEBHOOK_TOKEN (and the same bearer token in "
                 "Alertmanager/Grafana), listen on 127.0.0.1, or set "
                 "LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS=1 to run so anyway")
    return (f"WEBHOOKS ARE UNAUTHENTICATED: listening on {host} with no "
            "LLM_INCIDENT_WEBHOOK_TOKEN (LLM_INCIDENT_ALLOW_UNAUTHENTICATED_WEBHOOKS is "
            "set): anyone who can reach the port can post alerts, and alerts run "
            "automatic steps")


def _slack_settings(s: Settings, env: Mapping[str, str]) -> Settings:
    def ids(name: str) -> tuple[str, ...]:
        return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())

    s = replace(
        s,
        slack_bot_token=env.get("SLACK_BOT_TOKEN") or None,
        slack_signing_secret=env.get("SLACK_SIGNING_SECRET") or None,
        slack_app_token=env.get("SLACK_APP_TOKEN") or None,
        slack_channel=env.get("LLM_INCIDENT_SLACK_CHANNEL") or None,
        oncall_users=ids("LLM_INCIDENT_ONCALL_USERS"),
        oncall_group=env.get("LLM_INCIDENT_ONCALL_GROUP") or None,
        alert_channels=ids("LLM_INCIDENT_ALERT_CHANNELS"),
        alert_posters=ids("LLM_INCIDENT_ALERT_POSTERS"),
    )
    if v := env.get("LLM_INCIDENT_SLACK_API_URL"):
        if not v.startswith(("http://", "https://")):
            raise InputError(f"LLM_INCIDENT_SLACK_API_URL must be an http(s) URL, got {v!r}")
        # slack_sdk joins method names onto the base URL: it must end with a slash.
        s = replace(s, slack_api_url=v.rstrip("/") + "/")
    if s.slack_app_token and not s.slack_app_token.startswith("xapp-"):
        raise InputError("SLACK_APP_TOKEN must be an app-level token (xapp-...)",
                         hint="Basic Information > App-Level Tokens, scope connections:write")
    return s


def _paging_settings(s: Settings, env: Mapping[str, str]) -> Settings:
    from bot.core.paging import EscalationRules

    for name in ("LLM_INCIDENT_PAGERDUTY_URL", "LLM_INCIDENT_PAGE_WEBHOOK",
                 "LLM_INCIDENT_CONSOLE_URL"):
        if (v := env.get(name)) and not v.startswith(("http://", "https://")):
            raise InputError(f"{name} must be an http(s) URL, got {v!r}")
    s = replace(s, pagerduty_routing_key=env.get("LLM_INCIDENT_PAGERDUTY_ROUTING_KEY") or None,
                pagerduty_url=env.get("LLM_INCIDENT_PAGERDUTY_URL") or None,
                page_webhook=env.get("LLM_INCIDENT_PAGE_WEBHOOK") or None,
                console_url=(env.get("LLM_INCIDENT_CONSOLE_URL") or "").rstrip("/") or None,
                console_secret=env.get("LLM_INCIDENT_CONSOLE_SECRET") or None,
                console_user_header=env.get("LLM_INCIDENT_CONSOLE_USER_HEADER") or None)
    if v := env.get("LLM_INCIDENT_PAGE_UNACKED"):
        s = replace(s, page_unacked=EscalationRules.parse_unacknowledged(v))
    if v := env.get("LLM_INCIDENT_PAGE_APPROVAL"):
        s = replace(s, page_approval=None if v.strip() == "0" else
                    _duration("LLM_INCIDENT_PAGE_APPROVAL", v))
    return s


def _drill_settings(s: Settings, env: Mapping[str, str]) -> Settings:
    if v := env.get("LLM_INCIDENT_DRILL_TZ"):
        s = replace(s, drill_tz=v)
    if v := env.get("LLM_INCIDENT_DRILL_CRON"):
        s = replace(s, drill_cron=v)
    if v := env.get("LLM_INCIDENT_DRILL_SPEED"):
        try:
            speed = float(v)
        except ValueError:
            speed = 0.0
        if not 1 <= speed <= 600:
            raise InputError(f"LLM_INCIDENT_DRILL_SPEED must be a number from 1 to 600, got {v!r}")
        s = replace(s, drill_speed=speed)
    if v := env.get("LLM_INCIDENT_DRILL_CHANNEL"):
        s = replace(s, drill_channel=v)
    return s


def _duration(name: str, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


def _flag(name: str, value: str) -> bool:
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{name} must be true or false, got {value!r}")


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"
