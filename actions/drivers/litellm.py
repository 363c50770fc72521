"""The LiteLLM driver: a LiteLLM proxy driven through its config file plus reload.

The proxy's admin API needs a database, and this LiteLLM version has no config
watch, so a change is: rewrite ``config.yaml`` atomically (temp file, fsync,
the previous kept as ``<name>.prev``), run the configured reload (typically a
service restart), wait until the proxy answers its health check again, and
confirm through ``/model/info`` that the running router has what we wrote
(``/router/settings`` is read as well when the proxy has it). If any of that
fails, the previous config is restored and reloaded, and ``DriverError`` is
raised, so the action is reported failed and nothing half-applied stays.

Fields LiteLLM cannot enforce from its config (``max_output_tokens``: its
``max_tokens`` is only a default; ``traffic``; ``prompt_version``), and the
route switches the pre-call hook acts on, go to the serving policy file read by
``bot_litellm_hook`` on every request (no reload). ``litellm_config`` holds the
mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actions.drivers import litellm_config as lc
from actions.drivers.atomic_file import atomic_replace
from actions.drivers.policy_file import PolicyFileDriver
from actions.policy import ServingPolicy, UnknownRoute
from bot.base.errors import DriverError

Reload = Callable[[], Awaitable[None]]


class ProxyProbe(Protocol):
    """What the driver asks the running proxy (HTTP in production, a fake in unit tests)."""

    async def healthy(self) -> bool: ...

    async def deployments(self) -> dict[str, list[int | None]]: ...

    async def fallbacks(self) -> list[dict[str, list[Any]]] | None: ...


class HttpProbe:
    """Reads a LiteLLM proxy's health, ``/model/info`` and ``/router/settings``."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout

    async def _get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            return await client.get(f"{self.base_url}{path}", headers=self._headers)

    async def healthy(self) -> bool:
        try:
            return (await self._get("/health/readiness")).status_code == 200
        except httpx.HTTPError:
            return False

    async def deployments(self) -> dict[str, list[int | None]]:
        resp = await self._get("/model/info")
        if resp.status_code != 200:
            raise DriverError(
                f"LiteLLM proxy at {self.base_url}: /model/info answered {resp.status_code}",
                hint="check the driver's master key (master_key_env)",
            )
        out: dict[str, list[int | None]] = {}
        for item in resp.json().get("data", []):
            params = item.get("litellm_params") or {}
            out.setdefault(item.get("model_name", ""), []).append(
                params.get("max_parallel_requests")
            )
        return out

    async def fallbacks(self) -> list[dict[str, list[Any]]] | None:
        resp = await self._get("/router/settings")
        if resp.status_code == 404:
            return None  # an older proxy without the endpoint
        if resp.status_code != 200:
            raise DriverError(f"LiteLLM proxy: /router/settings answered {resp.status_code}")
        return list((resp.json().get("current_values") or {}).get("fallbacks") or [])


def command_reload(argv: Sequence[str], *, timeout: float = 120.0) -> Reload:
    """A reload that runs ``argv`` (e.g. a service restart) and fails on a non-zero exit."""

    async def run() -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            raise DriverError(
                f"reload command {argv[0]!r} could not start: {exc.strerror or exc}",
                hint="fix reload_command in the litellm target's config",
            ) from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DriverError(f"reload command {argv[0]!r} did not finish in {timeout:g}s") from None
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-300:]
            raise DriverError(f"reload command {argv[0]!r} exited {proc.returncode}: {tail}")

    return run


class LiteLLMDriver:
    """A ``ServingDriver`` for a LiteLLM proxy (config file + reload + policy file)."""

    name = "litellm"

    def __init__(
        self,
        config_path: Path,
        policy: PolicyFileDriver,
        probe: ProxyProbe,
        *,
        reload: Reload | None,
        ready_timeout: float = 90.0,
        poll_interval: float = 0.25,
    ) -> None:
        self.config_path = Path(config_path)
        self.policy = policy
        self.probe = probe
        self.reload = reload
        self.ready_timeout = ready_timeout
        self.poll_interval = poll_interval
        self._lock = asyncio.Lock()

    @property
    def stash_path(self) -> Path:
        return self.config_path.with_name(self.config_path.name + ".llm-incident-stash.yaml")

    @property
    def prev_path(self) -> Path:
        return self.config_path.with_name(self.config_path.name + ".prev")

    # -- the ServingDriver protocol -------------------------------------------------

    async def read(self) -> ServingPolicy:
        config, stash, _, _ = await asyncio.to_thread(self._load)
        return self._merge(await self.policy.read(), config, stash)

    async def write(self, updates: dict[str, dict[str, Any]], *, reason: str, action: str) -> None:
        async with self._lock:
            fd = await asyncio.to_thread(self._flock)
            try:
                await self._write(updates, reason=reason, action=action)
            finally:
                os.close(fd)  # releases the flock

    # -- implementation ---------------------------------------------------------------

    async def _write(self, updates: dict[str, dict[str, Any]], *, reason: str, action: str) -> None:
        config, stash, raw_config, raw_stash = await asyncio.to_thread(self._load)
        current = self._merge(await self.policy.read(), config, stash)
        try:
            current.with_values(updates)
        except UnknownRoute as exc:
            raise DriverError(
                f"action '{action}': {exc}",
                hint="nothing was written; a mitigation only changes routes that exist",
            ) from None
        except ValidationError as exc:
            err = exc.errors()[0]
            raise DriverError(
                f"action '{action}' would make the policy invalid: "
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}",
                hint="nothing was written; fix the action parameters",
            ) from None
        new_config, new_stash = lc.apply_updates(config, stash, updates)
        changed = new_config != config
        if changed or new_stash != stash:
            await asyncio.to_thread(self._commit, new_config, new_stash)
        if changed:
            try:
                await self._reload_and_confirm(new_config)
            except DriverError as exc:
                await self._roll_back(raw_config, raw_stash, exc)
        try:
            await self.policy.write(updates, reason=reason, action=action)
        except DriverError as exc:
            if changed:
                await self._roll_back(raw_config, raw_stash, exc)
            raise

    async def _reload_and_confirm(self, config: lc.Config) -> None:
        if self.reload is not None:
            await self.reload()
        want = lc.expected_deployments(config)
        want_fb = list((config.get("router_settings") or {}).get("fallbacks") or [])
        deadline = time.monotonic() + self.ready_timeout
        last = "the proxy never answered its health check"
        while time.monotonic() < deadline:
            try:
                if await self.probe.healthy():
                    got = await self.probe.deployments()
                    got_fb = await self.probe.fallbacks()
                    if got == want and (got_fb is None or got_fb == want_fb):
                        return
                    last = f"the proxy reports {got} / fallbacks {got_fb}, expected {want} / {want_fb}"
            except (DriverError, httpx.HTTPError, ValueError) as exc:
                last = str(exc)
            await asyncio.sleep(self.poll_interval)
        raise DriverError(
            f"LiteLLM proxy did not come back with the new config within "
            f"{self.ready_timeout:g}s: {last}",
            hint="the previous config was restored; check the proxy's log",
        )

    async def _roll_back(self, raw_config: bytes, raw_stash: bytes | None, cause: DriverError):
        await asyncio.to_thread(self._restore, raw_config, raw_stash)
        config = lc.parse_yaml_mapping(raw_config, source=str(self.config_path), what="config")
        try:
            await self._reload_and_confirm(config)
        except DriverError as again:
            raise DriverError(
                f"{cause.message}; restoring the previous config failed too: {again.message}",
                hint=f"the previous config is back in {self.config_path}; restart the proxy "
                "by hand and check its log",
            ) from None
        raise DriverError(
            f"{cause.message}; the previous config was restored and reloaded",
            hint=cause.hint or "check the proxy's log",
        ) from None

    # -- files (run in worker threads) ----------------------------------------------------

    def _load(self) -> tuple[lc.Config, lc.Stash, bytes, bytes | None]:
        try:
            raw = self.config_path.read_bytes()
        except OSError as exc:
            raise DriverError(
                f"LiteLLM config {self.config_path} could not be read: {exc.strerror or exc}",
                hint="point the litellm target's config_path at the proxy's config.yaml",
            ) from None
        source = str(self.config_path)
        config = lc.check_config(lc.parse_yaml_mapping(raw, source=source, what="config"), source=source)
        try:
            raw_stash: bytes | None = self.stash_path.read_bytes()
        except FileNotFoundError:
            raw_stash = None
        except OSError as exc:
            raise DriverError(f"{self.stash_path} could not be read: {exc.strerror or exc}") from None
        stash = lc.empty_stash()
        if raw_stash is not None:
            stash.update(
                lc.parse_yaml_mapping(raw_stash, source=str(self.stash_path), what="stash")
            )
        return config, stash, raw, raw_stash

    def _merge(self, policy: ServingPolicy, config: lc.Config, stash: lc.Stash) -> ServingPolicy:
        """The policy file's view, with what the LiteLLM config enforces laid over it."""
        data = policy.model_dump(mode="json")
        for route in lc.routes_in(config, stash):
            seen = lc.view(config, stash, route)
            entry = data["routes"].setdefault(route, {})
            entry["enabled"] = seen["enabled"] and entry.get("enabled", True)
            entry["max_concurrency"] = seen["max_concurrency"]
            entry["fallback"] = seen["fallback"]
        try:
            return ServingPolicy.model_validate(data)
        except ValidationError as exc:
            raise DriverError(f"{self.config_path}: cannot be read as a serving policy: {exc}") from None

    def _flock(self) -> int:
        lock = self.config_path.with_name(self.config_path.name + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DriverError(f"cannot open lock file {lock}: {exc.strerror or exc}") from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _commit(self, config: lc.Config, stash: lc.Stash) -> None:
        # Stash first: if the config replace fails, a stash with extra entries is harmless.
        atomic_replace(self.stash_path, lc.dump_yaml(stash), keep=None)
        atomic_replace(self.config_path, lc.dump_yaml(config), keep=self.prev_path)

    def _restore(self, raw_config: bytes, raw_stash: bytes | None) -> None:
        atomic_replace(self.config_path, raw_config, keep=None)
        if raw_stash is None:
            with contextlib.suppress(FileNotFoundError):
                self.stash_path.unlink()
        else:
            atomic_replace(self.stash_path, raw_stash, keep=None)


class LiteLLMTargetConfig(BaseModel):
    """A ``driver: litellm`` target in the bot's targets file."""

    model_config = ConfigDict(extra="forbid")

    driver: Literal["litellm"] = "litellm"
    config_path: Path
    policy_file: Path
    base_url: str = Field(pattern=r"^https?://")
    # The name of the variable holding the proxy's master key (never the key itself).
    master_key_env: str | None = None
    # argv run to make the proxy load its config (this LiteLLM version has no watch).
    reload_command: list[str] | None = Field(default=None, min_length=1)
    ready_timeout: float = Field(default=90.0, gt=0)


def build_litellm_driver(cfg: LiteLLMTargetConfig, *, env: Mapping[str, str]) -> LiteLLMDriver:
    key = None
    if cfg.master_key_env:
        key = env.get(cfg.master_key_env)
        if not key:
            raise DriverError(
                f"litellm target: {cfg.master_key_env} is not set",
                hint="export the proxy's master key under that name",
            )
    return LiteLLMDriver(
        cfg.config_path,
        PolicyFileDriver(cfg.policy_file, create_missing=True, add_routes=True),
        HttpProbe(cfg.base_url, api_key=key),
        reload=command_reload(cfg.reload_command) if cfg.reload_command else None,
        ready_timeout=cfg.ready_timeout,
    )
