"""The sandbox's HTTP face: an OpenAI-compatible gateway with faults and metrics.

Endpoints: ``POST /v1/chat/completions`` (and ``/chat/completions``, as LiteLLM
serves both), ``GET /v1/models``, ``GET /metrics``, ``GET /health``, and the
fault API ``POST/GET/DELETE /faults``, ``DELETE /faults/{id}``.

``create_app`` is the one constructor, used in-process by tests, drills and the
demo, and by ``python -m drills.sandbox``. Time, randomness and sleeping are
injectable so tests are deterministic and never wait.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from drills.sandbox.exchange import ChatRequest, GatewayError, Served
from drills.sandbox.faults import FAULT_ADAPTER, FAULT_KINDS, FaultBook
from drills.sandbox.gateway import Gateway
from drills.sandbox.metrics import SandboxMetrics
from drills.sandbox.policy import PolicyReader
from drills.sandbox.shape import SandboxConfig, load_config

Sleep = Callable[[float], Awaitable[None]]
# Words per streamed chunk: enough chunks to look like streaming, few enough to be quick.
_WORDS_PER_CHUNK = 8


def create_app(
    config: SandboxConfig | None = None,
    policy_path: Path | str | None = None,
    *,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
) -> FastAPI:
    """A sandbox app. ``policy_path`` None (or a missing file) serves the defaults."""
    config = config or load_config()
    metrics = SandboxMetrics(clock=clock, quality_ttl_s=config.quality_ttl_s)
    reader = PolicyReader(
        Path(policy_path) if policy_path is not None else None,
        clock=clock,
        on_error=metrics.policy_reload_errors.inc,
        on_loaded=metrics.policy_last_good.set,
    )
    faults = FaultBook()
    gateway = Gateway(config, reader, faults, metrics, rng=rng or random.Random(), clock=clock)
    scale = config.time_scale

    app = FastAPI(title="llm-incident sandbox gateway", docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    app.state.faults = faults
    app.state.metrics = metrics
    app.state.policy = reader

    async def pause(seconds: float) -> None:
        await sleep(seconds * scale)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        reader.current()
        return {"status": "ok", "policy_error": reader.last_error}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": r, "object": "model", "owned_by": "sandbox"} for r in config.routes]
        return {"object": "list", "data": data}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        reader.current()  # so a bad file shows up in the metrics even without traffic
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def chat(request: Request) -> Response:
        try:
            req = ChatRequest.model_validate(json.loads(await request.body()))
        except json.JSONDecodeError as exc:
            return _error(GatewayError(400, f"request body is not JSON: {exc.msg}"))
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"])
            return _error(GatewayError(400, f"{param}: {err['msg']}", param=param))
        try:
            served = gateway.admit(req)
        except GatewayError as exc:
            return _error(exc)
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _stream(served, include_usage),
                media_type="text/event-stream",
                headers=served.headers(),
            )
        try:
            await _first_token(served)
            await pause(served.output_tokens * served.per_token_s)
        finally:
            gateway.release(served)
        return JSONResponse(_completion(served), headers=served.headers())

    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_api_route("/chat/completions", chat, methods=["POST"], include_in_schema=False)

    async def _first_token(served: Served) -> None:
        waiting = metrics.waiting.labels(served.model)
        waiting.inc()
        try:
            await pause(served.ttft_s)
        finally:
            waiting.dec()

    async def _stream(served: Served, include_usage: bool) -> AsyncIterator[bytes]:
        try:
            await _first_token(served)
            base = {"id": served.id, "object": "chat.completion.chunk",
                    "created": served.created, "model": served.model}  # fmt: skip
            yield _sse({**base, "choices": [_delta({"role": "assistant", "content": ""})]})
            words = served.content.split(" ")
            for i in range(0, len(words), _WORDS_PER_CHUNK):
                piece = " ".join(words[i : i + _WORDS_PER_CHUNK])
                text = piece if i == 0 else " " + piece
                yield _sse({**base, "choices": [_delta({"content": text})]})
                await pause(len(words[i : i + _WORDS_PER_CHUNK]) * served.per_token_s)
            yield _sse({**base, "choices": [_delta({}, served.finish_reason)]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(served)})
            yield b"data: [DONE]\n\n"
        finally:
            gateway.release(served)

    @app.post("/faults", status_code=201)
    async def add_fault(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            return _invalid("body", f"request body is not JSON: {exc.msg}")
        if not isinstance(data, dict):
            return _invalid("body", "a fault must be a JSON object")
        kind = data.get("kind")
        if kind not in FAULT_KINDS:
            return _invalid("kind", f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        data.pop("id", None)
        try:
            fault = FAULT_ADAPTER.validate_python(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            # Drop the discriminator tag pydantic puts first in the location.
            loc = [str(p) for p in err["loc"]][1:] or ["body"]
            return _invalid(".".join(loc), f"{kind}: {err['msg']}")
        for name, known in (("route", config.routes), ("model", config.models)):
            value = getattr(fault, name)
            if value is not None and value not in known:
                return _invalid(name, f"unknown {name} {value!r}; known: {', '.join(known)}")
        to_model = getattr(fault, "to_model", None)
        if to_model is not None and to_model not in config.models:
            return _invalid("to_model", f"unknown model {to_model!r}")
        stored = faults.add(fault)
        return JSONResponse(stored.model_dump(), status_code=201)

    @app.get("/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": [f.model_dump() for f in faults.all()]}

    @app.delete("/faults/{fault_id}")
    async def delete_fault(fault_id: str) -> Response:
        if not faults.remove(fault_id):
            return JSONResponse({"error": {"message": f"no fault with id {fault_id!r}"}}, 404)
        return Response(status_code=204)

    @app.delete("/faults")
    async def clear_faults() -> dict[str, int]:
        return {"removed": faults.clear()}

    return app


def _error(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _invalid(field: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "field": field},
         "detail": [{"loc": ["body", *field.split(".")], "msg": message}]},
        status_code=422,
    )  # fmt: skip


def _usage(s: Served) -> dict[str, int]:
    return {
        "prompt_tokens": s.input_tokens,
        "completion_tokens": s.output_tokens,
        "total_tokens": s.input_tokens + s.output_tokens,
    }


def _completion(s: Served) -> dict[str, Any]:
    return {
        "id": s.id,
        "object": "chat.completion",
        "created": s.created,
        "model": s.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": s.content},
                "finish_reason": s.finish_reason,
            }
        ],
        "usage": _usage(s),
        # Not in OpenAI's schema (clients ignore it): what the sandbox decided, for drills.
        "sandbox": {
            "route": s.route,
            "requested_route": s.requested_route,
            "fallback": s.fallback_route,
            "prompt_version": s.prompt_version,
            "quality_score": s.quality,
            "flags": s.flags,
            "cost_usd": s.cost,
            "ttft_s": s.ttft_s,
        },
    }


def _delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason}


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
