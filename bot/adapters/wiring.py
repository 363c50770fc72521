"""The composition root: settings -> store, playbooks, drivers, runner, engine.

The only place that picks concrete drivers. Everything it builds is handed to
the core through the narrow interfaces in ``actions.base``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from actions.base import MetricsSource, ServingDriver
from actions.drivers.http import HttpDriver, HttpTargetConfig
from actions.drivers.litellm import LiteLLMTargetConfig, build_litellm_driver
from actions.drivers.policy_file import PolicyFileDriver
from actions.drivers.prometheus import PrometheusSource
from bot.adapters.settings import Settings
from bot.base.errors import InputError
from bot.core.engine import Engine
from bot.core.playbook_loading import load_at_start
from bot.core.runner import Runner, RunnerSettings
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store

log = logging.getLogger("llm_incident.store")


def build_driver(name: str, cfg: dict[str, Any], settings: Settings) -> ServingDriver:
    kind = cfg.get("driver")
    if kind == "policy_file":
        if "path" not in cfg:
            raise InputError(f"target '{name}': policy_file needs `path`")
        # The default target's file is created on first use, so a fresh machine works.
        return PolicyFileDriver(Path(cfg["path"]), create_missing=True, actor="llm-incident")
    if kind == "http":
        body = {k: v for k, v in cfg.items() if k != "driver"}
        body.setdefault("name", name)
        try:
            config = HttpTargetConfig.model_validate(body)
        except ValidationError as exc:
            raise InputError(f"target '{name}': {exc}") from None
        return HttpDriver(config, env=settings.env)
    if kind == "litellm":
        try:
            litellm_cfg = LiteLLMTargetConfig.model_validate(cfg)
        except ValidationError as exc:
            raise InputError(f"target '{name}': {exc}") from None
        return build_litellm_driver(litellm_cfg, env=settings.env)
    raise InputError(
        f"target '{name}': unknown driver {kind!r}", hint="drivers: policy_file, http, litellm"
    )


def build_engine(settings: Settings) -> Engine:
    registry = PlaybookRegistry()
    drivers = {
        name: build_driver(name, cfg, settings)
        for name, cfg in settings.target_configs().items()
    }
    metrics: MetricsSource | None = (
        PrometheusSource(settings.prometheus_url) if settings.prometheus_url else None
    )
    local = not settings.db_url and str(settings.db_path) != ":memory:"
    created = local and not settings.db_path.exists()
    if local and settings.db_path.parent:
        settings.db_path.parent.mkdir(parents=True, exist_ok=True)
    # Replicas compare times (leases, claims, TTLs): on Postgres, the database's clock.
    store = Store(settings.store_location, database_clock=True)
    if created:
        log.info("created a new store at %s", settings.db_path.resolve())
    from drills.targets import drill_targets  # a drill incident acts on its drill's target

    runner = Runner(
        store,
        drivers,
        metrics,
        drill_targets=drill_targets(store),
        settings=RunnerSettings(
            approval_ttl=settings.approval_ttl,
            max_active_mitigations=settings.max_active_mitigations,
            self_approval=settings.self_approval,
        ),
    )
    window = settings.flap_window if settings.flap_window.total_seconds() > 0 else None
    # The store's clock: on Postgres the database's, which every replica shares.
    engine = Engine(store, registry, runner, flap_window=window, clock=store.clock)
    # Never raises for a bad playbook: a broken directory runs on the last good set
    # stored (or none), so pause, revert and status always work.
    engine.playbook_load = load_at_start(registry, store, settings.playbooks_dir)
    return engine
