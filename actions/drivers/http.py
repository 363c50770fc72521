"""A generic HTTP driver for gateways that expose an admin API.

The target is described in config (see ``HttpTargetConfig``): where to read the
serving policy, and one request template per catalog action (``default`` for the
rest). A multi-route change is one request per route, in order; if route N fails
after routes 1..N-1 succeeded we raise ``PartialApplyError`` naming them, so the
runner can put them back. Credentials reach templates only through the ``env``
mapping the composition root hands in, and are scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actions.fencing import current_fence
from actions.policy import ServingPolicy, split_subject
from bot.base.durations import Duration
from bot.base.errors import DriverError, PartialApplyError

Method = Literal["GET", "PUT", "POST", "PATCH", "DELETE"]
# Repeating these cannot apply a change twice, so they are the only ones retried.
IDEMPOTENT: frozenset[str] = frozenset({"GET", "PUT", "DELETE"})
RETRY_STATUS: frozenset[int] = frozenset({502, 503, 504})

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
# A leaf that is exactly one expression keeps its type (an int stays an int in JSON).
_SINGLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}|\{\{).)*)\}\}\s*$", re.S)
_MASK = "***"


class RequestSpec(BaseModel):
    """One request template: method, URL (relative to base_url) and body."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "GET"
    url: str = Field(min_length=1)
    body: dict[str, Any] | None = None
    json_values: bool = False

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> RequestSpec:
        if self.body is not None and self.json_values:
            raise ValueError("give either body or json_values: true, not both")
        for where, text in [("url", self.url), *_string_leaves(self.body, "body")]:
            try:
                _ENV.parse(text)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"{where}: template syntax error: {exc.message}") from None
        return self


class HttpTargetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    driver: Literal["http"] = "http"
    name: str = Field(min_length=1)
    base_url: str
    timeout: Duration = Field(default="5s", validate_default=True)
    retries: int = Field(default=2, ge=0, le=10)
    headers: dict[str, str] = Field(default_factory=dict)
    read: RequestSpec
    actions: dict[str, RequestSpec] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _header_templates(cls, v: dict[str, str]) -> dict[str, str]:
        for key, text in v.items():
            try:
                _ENV.parse(text)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"headers.{key}: template syntax error: {exc.message}") from None
        return v


@dataclass(frozen=True)
class _Request:
    route: str  # "" for the read request
    method: str
    url: str
    shown_url: str  # the URL with credentials masked, for messages
    headers: dict[str, str]
    body: Any  # JSON document or None


Sleep = Callable[[float], Awaitable[None]]


class HttpDriver:
    """Implements ``actions.base.ServingDriver`` over a gateway's admin API."""

    def __init__(
        self,
        config: HttpTargetConfig,
        *,
        env: Mapping[str, str],
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: float = 0.25,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.config = config
        self.name = config.name
        self._env = dict(env)
        self._transport = transport
        self._backoff = backoff
        self._sleep = sleep
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(
            (v for v in self._env.values() if len(v) >= 4), key=len, reverse=True
        )

    async def read(self) -> ServingPolicy:
        req = self._render(self.config.read, route=None, values={}, action="read", reason="")
        async with self._client() as client:
            resp = await self._send(client, req)
        try:
            return ServingPolicy.model_validate(resp.json())
        except (ValueError, ValidationError) as exc:
            detail = _first_error(exc) if isinstance(exc, ValidationError) else "body is not JSON"
            raise DriverError(
                self._redact(
                    f"{self.name}: {req.method} {req.shown_url} did not return a serving "
                    f"policy: {detail}"
                ),
                hint="the read endpoint must answer a ServingPolicy JSON document",
            ) from None

    async def write(self, updates: dict[str, dict[str, Any]], *, reason: str, action: str) -> None:
        spec = self.config.actions.get(action) or self.config.actions.get("default")
        if spec is None:
            raise DriverError(
                f"{self.name}: no request configured for action '{action}'",
                hint=f"add actions.{action} or actions.default to the target config",
            )
        callers = [k for k in updates if split_subject(k)[0] == "customers"]
        if callers:
            # Its requests are templated per route; a caller limit has nowhere to go.
            raise DriverError(
                f"{self.name}: an HTTP target takes route changes only, not caller limits "
                f"({', '.join(callers)}); nothing was written",
                hint="give customer actions a policy_file or litellm target (step `target:`)",
            )
        # Render every request first: a template error must not leave a half-applied change.
        requests = [
            self._render(spec, route=route, values=values, action=action, reason=reason)
            for route, values in updates.items()
        ]
        applied: list[str] = []
        async with self._client() as client:
            for req in requests:
                try:
                    await self._send(client, req)
                except DriverError as exc:
                    done = ", ".join(applied) if applied else "none"
                    raise PartialApplyError(
                        f"{exc.message} (route '{req.route}'; routes already changed: {done})",
                        applied=applied,
                        hint=f"{exc.hint}; the runner puts back the routes already changed, "
                        "and the failed route may need a manual check",
                    ) from None
                applied.append(req.route)

    # -- helpers ---------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        # One client per operation: writes are rare, and nothing outlives an event loop.
        return httpx.AsyncClient(
            base_url=self.config.base_url,
            timeout=self.config.timeout.total_seconds(),
            transport=self._transport,
            # Proxies and CA settings come from config, not from the process environment.
            trust_env=False,
        )

    def _render(
        self,
        spec: RequestSpec,
        *,
        route: str | None,
        values: dict[str, Any],
        action: str,
        reason: str,
    ) -> _Request:
        ctx: dict[str, Any] = {"values": values, "action": action, "reason": reason}
        if route is not None:
            _check_route_name(self.name, route)
            ctx["route"] = route
        masked_env = dict.fromkeys(self._env, _MASK)
        try:
            # In URLs the route is percent-encoded so a name cannot change the path.
            url_ctx = {**ctx, "route": quote(route, safe="")} if route is not None else ctx
            url = _ENV.from_string(spec.url).render(**url_ctx, env=self._env)
            shown = _ENV.from_string(spec.url).render(**url_ctx, env=masked_env)
            if "://" not in shown:  # relative to base_url: name the full URL in messages
                shown = f"{self.config.base_url}/{shown.lstrip('/')}"
            _check_path(self.name, url, shown)
            headers = {
                k: _ENV.from_string(v).render(env=self._env) for k, v in self.config.headers.items()
            }
            if spec.json_values:
                body: Any = values
            elif spec.body is not None:
                body = _render_tree(spec.body, {**ctx, "env": self._env})
            else:
                body = None
        except jinja2.TemplateError as exc:
            raise DriverError(
                self._redact(f"{self.name}: template for action '{action}' failed: {exc}"),
                hint="fix the target config; templates see route, values, action, reason, env",
            ) from None
        return _Request(route or "", spec.method, url, shown, headers, body)

    async def _send(self, client: httpx.AsyncClient, req: _Request) -> httpx.Response:
        attempts = 1 + (self.config.retries if req.method in IDEMPOTENT else 0)
        what = f"{self.name}: {req.method} {req.shown_url}"
        try:
            content = None if req.body is None else json.dumps(req.body).encode()
        except (TypeError, ValueError) as exc:
            raise DriverError(
                f"{what}: the rendered body is not JSON: {exc}",
                hint="body templates must produce strings, numbers, lists or mappings",
            ) from None
        headers = dict(req.headers)
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        if (fence := current_fence()) is not None:
            # One key per run, operation and route: a gateway that deduplicates applies a
            # change once even when a new leader settles what a dead one half did; the
            # token lets a gateway that fences refuse a deposed leader.
            headers["Idempotency-Key"] = f"{fence.run_id}:{fence.op}:{req.route or '-'}"
            headers["X-LLM-Incident-Fencing-Token"] = str(fence.token)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await client.request(req.method, req.url, content=content, headers=headers)
            except httpx.TimeoutException:
                if not last:
                    await self._sleep(self._backoff * 2**attempt)
                    continue
                raise DriverError(
                    f"{what} timed out after {self.config.timeout.total_seconds():g}s"
                    f" ({attempts} attempt{'s' if attempts > 1 else ''})",
                    hint="check the gateway's health; raise `timeout` if it is just slow",
                ) from None
            except httpx.ConnectError as exc:
                if not last:
                    await self._sleep(self._backoff * 2**attempt)
                    continue
                raise DriverError(
                    self._redact(f"{what} could not connect: {exc}"),
                    hint="is the gateway up and base_url right?",
                ) from None
            except httpx.HTTPError as exc:
                raise DriverError(
                    self._redact(f"{what} failed: {type(exc).__name__}: {exc}"),
                    hint="check the target config and the gateway",
                ) from None
            if resp.status_code in RETRY_STATUS and not last:
                await self._sleep(self._backoff * 2**attempt)
                continue
            if resp.is_success:
                return resp
            snippet = resp.text[:200].strip()
            raise DriverError(
                self._redact(
                    f"{what} answered {resp.status_code} {resp.reason_phrase}"
                    + (f": {snippet}" if snippet else "")
                ),
                hint="a 4xx means the request is wrong for this gateway (check the target "
                "config); a 5xx means the gateway failed",
            )
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text


def _check_route_name(target: str, route: str) -> None:
    # Percent-encoding keeps '/' out of the path, but '.' and '..' are left as they
    # are and an HTTP stack resolves them: /routes/.. would reach /admin/v1/policy.
    if route.strip() in ("", ".", ".."):
        raise DriverError(
            f"{target}: route name {route!r} would change the request path",
            hint="route names are never empty, '.' or '..'; nothing was sent",
        )


def _check_path(target: str, url: str, shown: str) -> None:
    """The rendered path has no dot segment and no empty segment (a refused escape)."""
    path = urlsplit(url).path
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    if segments and segments[-1] == "":
        segments = segments[:-1]  # one trailing slash is fine
    for seg in segments:
        if seg in ("", ".", "..") or seg.lower() in ("%2e", "%2e%2e", ".%2e", "%2e."):
            raise DriverError(
                f"{target}: request path of {shown} has a {seg or 'empty'!r} segment",
                hint="a rendered URL may not climb or skip path segments; nothing was sent",
            )


def _render_tree(node: Any, ctx: dict[str, Any]) -> Any:
    if isinstance(node, str):
        if m := _SINGLE_EXPR.match(node):
            value = _ENV.compile_expression(m.group("expr"), undefined_to_none=False)(**ctx)
            if isinstance(value, jinja2.Undefined):
                value._fail_with_undefined_error()  # StrictUndefined: raises UndefinedError
            return value
        return _ENV.from_string(node).render(**ctx)
    if isinstance(node, dict):
        return {k: _render_tree(v, ctx) for k, v in node.items()}
    if isinstance(node, list):
        return [_render_tree(v, ctx) for v in node]
    return node


def _string_leaves(node: Any, where: str) -> list[tuple[str, str]]:
    if isinstance(node, str):
        return [(where, node)]
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _string_leaves(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _string_leaves(v, f"{where}[{i}]")]
    return []


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or '<document>'}: {err['msg']}"
