"""The HTTP face of the bot: alert webhooks in, health and metrics out.

``create_app(engine, settings, metrics=...)`` builds the FastAPI app. Contract with
the senders (Alertmanager retries 5xx and never 4xx):

* 2xx only after every alert of the body is committed to the store;
* 4xx for anything the sender must fix (bad JSON, wrong type, too big, bad
  auth), with ``{"error", "field", "hint"}``;
* 503 when the store could not take the alert, so the sender retries; dedup on
  ``(fingerprint, starts_at)`` makes the retry harmless;
* 500 with a generic message for anything unexpected (logged, never echoed).

Handlers read the raw body themselves so the size limit holds while streaming and
``bot.intake.parse`` gives its exact field paths; the body schemas are declared in the
OpenAPI document through ``openapi_extra``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from bot.adapters import web_schemas
from bot.adapters.core_loop import Inline
from bot.adapters.service_metrics import CONTENT_TYPE, ServiceMetrics
from bot.adapters.settings import DEFAULT_GRAFANA_HMAC_HEADER, Settings
from bot.base.errors import InputError
from bot.core.engine import Engine, Ingested
from bot.intake.parse import parse_body

log = logging.getLogger(__name__)

# Grafana's signing code falls back to this name when the contact point leaves the
# header field empty, while its docs name DEFAULT_GRAFANA_HMAC_HEADER: accept both.
GRAFANA_FALLBACK_HMAC_HEADER = "X-Grafana-Alert-Signature"
HMAC_MAX_SKEW_SECONDS = 300  # a signed timestamp older (or newer) than this is a replay
RETRY_AFTER_SECONDS = "5"


class Rejected(Exception):
    """A request refused with a 4xx/5xx and the JSON error body."""

    def __init__(
        self,
        status: int,
        reason: str,
        error: str,
        *,
        field: str | None = None,
        hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(error)
        self.status, self.reason, self.error = status, reason, error
        self.field, self.hint, self.headers = field, hint, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "field": self.field, "hint": self.hint}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _error_responses() -> dict[int | str, dict[str, Any]]:
    error = {"content": {"application/json": {"schema": web_schemas.ERROR}}}
    return {
        400: {"description": "Malformed payload; not retried", **error},
        401: {"description": "Missing or wrong bearer token or signature", **error},
        413: {"description": "Body over the size limit", **error},
        415: {"description": "Not a JSON body", **error},
        500: {"description": "Unexpected error (logged)", **error},
        503: {"description": "The store could not take the alert; retry", **error},
    }


def _openapi_extra(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def create_app(
    engine: Engine,
    settings: Settings,
    *,
    metrics: ServiceMetrics,
    scheduler: Any | None = None,
    clock: Callable[[], float] = time.time,
    core: Inline | None = None,
) -> FastAPI:
    """The app. ``scheduler`` (anything with a ``running`` attribute) is checked by
    /readyz when given; ``clock`` (epoch seconds) judges Grafana's signed timestamps."""
    app = FastAPI(
        title="llm-incident",
        version="1",
        summary="Alert intake for the LLM incident-response runbook bot",
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine, app.state.metrics, app.state.scheduler = engine, metrics, scheduler
    # Where the engine runs (bot.adapters.core_loop): its own thread in `serve`, so a slow store
    # write never stalls this loop's health checks and acks.
    core = core or Inline()
    app.state.core = core

    async def webhook(request: Request, source: str) -> Response:
        started = time.perf_counter()
        try:
            return await _accept(request, source)
        except Rejected as rej:
            metrics.webhook_rejected.labels(source, rej.reason).inc()
            log.info("webhook %s refused (%s %s): %s", source, rej.status, rej.reason, rej.error)
            return rej.response()
        except Exception:  # noqa: BLE001 - never leak a traceback to the sender
            metrics.webhook_rejected.labels(source, "internal").inc()
            log.exception("webhook %s failed", source)
            return Rejected(500, "internal", "internal error; the failure was logged",
                            hint="see the llm-incident service log").response()
        finally:
            metrics.webhook_duration.labels(source).observe(time.perf_counter() - started)

    async def _accept(request: Request, source: str) -> Response:
        _check_token(request, settings.webhook_token)
        _check_content_type(request)
        body = await _read_body(request, settings.max_body_bytes)
        if source == "grafana" and settings.grafana_hmac_secret:
            _check_grafana_signature(request, body, settings, clock())
        try:
            alerts = parse_body(body, source=source)
        except InputError as err:
            field = getattr(err, "field", "") or None
            message = err.message.removeprefix(f"{field}: ") if field else err.message
            raise Rejected(400, "invalid", message, field=field, hint=err.hint) from None
        except ValidationError as err:  # intake checks first; this is a last line
            raise Rejected(400, "invalid", f"invalid alert: {err.errors()[0]['msg']}") from None
        # A body of repeats (most of a storm) is answered from memory: those alerts
        # are committed already, and the core is not asked at all.
        repeats = engine.answer_repeats(alerts)
        if repeats is not None:
            for alert in alerts:
                metrics.alerts_received.labels(source, alert.status).inc()
            return _accepted(repeats)
        try:
            ingested = await core.call(engine.accept_alerts, alerts)
        except engine.store.failures() as err:
            # A raw database error is a read outside the store's transaction wrapper:
            # the same "could not store, retry" for the sender.
            log.error("webhook %s: store unavailable: %s", source, err)
            raise Rejected(503, "store_unavailable", "the alert could not be stored; retry",
                           hint=getattr(err, "hint", None) or "check the database file and disk",
                           headers={"Retry-After": RETRY_AFTER_SECONDS}) from None
        # Committed: answer now. Suggestions and automatic steps follow on the core,
        # supervised; a crash before they finish leaves them in the outbox.
        if any(i.outcome != "duplicate" for i in ingested) and getattr(scheduler, "leads", True):
            # The leader announces and steps; a follower's items wake it through the
            # store (Postgres NOTIFY at the commit; its once-a-second watch otherwise).
            core.spawn("outbox", engine.drain_outbox)
        for alert in alerts:
            metrics.alerts_received.labels(source, alert.status).inc()
        return _accepted(ingested)

    accepted = {200: {"content": {"application/json": {"schema": web_schemas.ACCEPTED}}}}
    routes = (
        ("/v1/alerts/alertmanager", "alertmanager", web_schemas.ALERTMANAGER),
        ("/v1/alerts/grafana", "grafana", web_schemas.GRAFANA),
        ("/v1/alerts", "generic", web_schemas.GENERIC),
    )
    for path, source, schema in routes:
        app.add_api_route(
            path,
            _bind(webhook, source),
            methods=["POST"],
            name=f"alerts_{source}",
            summary=f"Receive {source} alerts",
            openapi_extra=_openapi_extra(schema),
            responses={**accepted, **_error_responses()},  # type: ignore[dict-item]
            response_description="Every alert committed; per alert its incident and outcome",
            response_class=JSONResponse,
        )

    @app.get("/healthz", summary="The process is alive and its store writes are not stuck",
             responses={503: {"description": "The process cannot write to its store; the "
                                             "body says why (restart it)"}})
    async def healthz() -> JSONResponse:
        # No store call here: it reads what the process's own writes did, so it never
        # waits behind the write lock. 503 means a restart is the way out.
        problem = engine.store.write_problem()
        if problem:
            return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="Store (read and write), playbooks and scheduler are ready",
             responses={503: {"description": "Not ready; the body says why"}})
    async def readyz() -> JSONResponse:
        checks = await _readiness(engine, scheduler)  # store work in a thread
        failed = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"]]
        body: dict[str, Any] = {"ready": not failed, "checks": checks,
                                "playbooks": len(engine.registry)}
        if failed:
            body["reason"] = "; ".join(failed)
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        # Reads the store: off this loop, so a held write lock never stalls it.
        return Response(await asyncio.to_thread(metrics.render), media_type=CONTENT_TYPE)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return Rejected(500, "internal", "internal error; the failure was logged").response()

    return app


def _accepted(ingested: list[Ingested]) -> JSONResponse:
    return JSONResponse({"alerts": [
        {"fingerprint": i.alert.fingerprint, "status": i.alert.status,
         "incident_id": i.incident_id, "new_incident": i.created, "outcome": i.outcome}
        for i in ingested
    ]})


def _bind(
    handler: Callable[[Request, str], Awaitable[Response]], source: str
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await handler(request, source)

    return endpoint


# --- the checks, in the order they run -------------------------------------------------


def _check_token(request: Request, token: str | None) -> None:
    if not token:
        return
    given = request.headers.get("authorization", "")
    scheme, _, credentials = given.partition(" ")
    if not given:
        raise Rejected(401, "unauthorized", "missing Authorization header", field="Authorization",
                       hint="send `Authorization: Bearer <LLM_INCIDENT_WEBHOOK_TOKEN>`",
                       headers={"WWW-Authenticate": 'Bearer realm="llm-incident"'})
    # compare_digest on bytes: constant time whatever the first differing byte.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    ):
        raise Rejected(401, "unauthorized", "wrong bearer token", field="Authorization",
                       hint="check the receiver's http_config.authorization credentials",
                       headers={"WWW-Authenticate":
                                'Bearer realm="llm-incident", error="invalid_token"'})


def _check_content_type(request: Request) -> None:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise Rejected(415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not "
                       "supported", field="Content-Encoding", hint="send the body uncompressed")
    raw = request.headers.get("content-type")
    if raw is None:
        return  # senders that omit it still send JSON; the parser judges the body
    media = raw.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise Rejected(415, "unsupported_media_type", f"Content-Type {media or raw!r} is not JSON",
                       field="Content-Type", hint="send the alerts as application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = Rejected(413, "too_large", f"body is larger than {limit} bytes", field="body",
                       hint="send fewer alerts per request (Alertmanager: max_alerts), "
                            "or raise LLM_INCIDENT_MAX_BODY")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    # Counted while streaming: a chunked body without Content-Length cannot get past it.
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _check_grafana_signature(request: Request, body: bytes, settings: Settings, now: float) -> None:
    """Grafana signs hex(HMAC-SHA256(secret, body)), or of ``timestamp + ":" + body``
    when its contact point names a timestamp header (then required and fresh)."""
    assert settings.grafana_hmac_secret
    header = settings.grafana_hmac_header
    given = request.headers.get(header)
    if given is None and header.lower() == DEFAULT_GRAFANA_HMAC_HEADER.lower():
        header = GRAFANA_FALLBACK_HMAC_HEADER
        given = request.headers.get(header)
    if not given:
        raise Rejected(401, "bad_signature", f"missing {settings.grafana_hmac_header} header",
                       field=settings.grafana_hmac_header,
                       hint="set the HMAC secret on the Grafana contact point")
    message = body
    if ts_header := settings.grafana_hmac_timestamp_header:
        stamp = request.headers.get(ts_header, "").strip()
        if not stamp.isdigit():
            raise Rejected(401, "bad_signature", f"missing or non-numeric {ts_header} header",
                           field=ts_header,
                           hint="set the same timestamp header on the Grafana contact point")
        if abs(now - int(stamp)) > HMAC_MAX_SKEW_SECONDS:
            raise Rejected(401, "bad_signature",
                           f"signed timestamp is more than {HMAC_MAX_SKEW_SECONDS}s away from now",
                           field=ts_header, hint="check both clocks (NTP); replays are refused")
        message = stamp.encode() + b":" + body
    key = settings.grafana_hmac_secret.encode()
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise Rejected(401, "bad_signature", "HMAC signature does not match the body",
                       field=header, hint="check LLM_INCIDENT_GRAFANA_HMAC_SECRET matches Grafana's")


# --- readiness ----------------------------------------------------------------------


async def _readiness(engine: Engine, scheduler: Any | None) -> dict[str, dict[str, Any]]:
    """Each subsystem: ``{"ok": bool, "detail": str}``. Playbooks running on an older
    good set are ready but say so (``degraded``): the bot works, the directory does not."""
    checks: dict[str, dict[str, Any]] = {}
    try:
        # A cheap write: a store that still reads but takes no writes (disk full, a
        # read-only file, a lock held elsewhere) cannot take an alert, so not ready.
        await asyncio.to_thread(engine.store.probe_write)
        checks["store"] = {"ok": True, "detail": "reads and writes"}
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
        checks["store"] = {"ok": False, "detail": f"store does not take writes: {exc}"}
    registry = engine.registry
    if len(registry) == 0:
        why = f" ({len(registry.problems)} problem(s): {registry.problems[0]})" \
            if registry.problems else ""
        checks["playbooks"] = {"ok": False, "detail": f"no playbooks loaded{why}"}
    elif registry.degraded:
        checks["playbooks"] = {
            "ok": True, "degraded": True,
            "detail": f"{len(registry)} in force from {registry.origin}; the directory does not "
                      f"load ({len(registry.problems)} problem(s), first: {registry.problems[0]})"}
    else:
        checks["playbooks"] = {"ok": True, "detail": f"{len(registry)} loaded"}
    if (skew := engine.store.check_clock()) is not None:
        # Ready all the same: leases and timers run on the database's clock.
        checks["clock"] = {"ok": True, "degraded": True, "detail": skew,
                           "offset_seconds": round(engine.store.clock_offset.total_seconds(), 3)}
    if scheduler is not None:
        running = bool(getattr(scheduler, "running", False))
        checks["scheduler"] = {"ok": running, "detail": "running" if running else
                               "scheduler is not running"}
        if (lead := getattr(scheduler, "leadership", None)) is not None:
            # A follower is ready: it takes webhooks and Slack requests.
            checks["lease"] = {"ok": True, "role": lead.role, "fencing_token": lead.token,
                               "replica": lead.holder,
                               "detail": f"{lead.role} (fencing token {lead.token})"
                               if lead.is_leader else "follower: the leader runs the timers"}
    return checks
