"""Prometheus as the verification source (``actions.base.MetricsSource``).

Verification asks one question after a mitigation: "is the metric back where
it should be?", so only instant queries (``/api/v1/query``) are supported, with
vector and scalar results. NaN is kept as a float NaN: the runner decides what
"no number" means for a check, we do not turn it into a zero.
"""

from __future__ import annotations

import asyncio
import ssl
from functools import cache

import httpx

from actions.base import Sample
from bot.base.errors import DriverError


class PrometheusSource:
    """Runs instant PromQL queries against one Prometheus server."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._transport = transport
        # One client per event loop (a client cannot outlive its loop): a storm of new
        # incidents runs a few diagnose queries each, and a new client per query was
        # most of an announcement's cost.
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _client_here(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            # trust_env=False: no proxy settings picked up from the process environment.
            self._client = httpx.AsyncClient(timeout=self.timeout, transport=self._transport,
                                             trust_env=False, verify=_tls_context())
            self._client_loop = loop
        return self._client

    @property
    def query_url(self) -> str:
        return f"{self.base_url}/api/v1/query"

    async def query(self, promql: str) -> list[Sample]:
        if not promql.strip():
            raise DriverError("empty PromQL query", hint="give the verification query to run")
        try:
            resp = await self._client_here().get(self.query_url, params={"query": promql})
        except httpx.TimeoutException:
            raise DriverError(
                f"Prometheus at {self.query_url} did not answer within {self.timeout:g}s",
                hint="check that Prometheus is healthy, or simplify the query",
            ) from None
        except httpx.HTTPError as exc:
            raise DriverError(
                f"cannot reach Prometheus at {self.query_url}: {exc}",
                hint="is Prometheus running, and is the configured URL right?",
            ) from None
        try:
            doc = resp.json()
        except ValueError:
            raise DriverError(
                f"Prometheus at {self.query_url} answered {resp.status_code} with a body that "
                "is not JSON",
                hint="the URL may point at something other than the Prometheus API",
            ) from None
        if not isinstance(doc, dict) or doc.get("status") not in ("success", "error"):
            raise DriverError(
                f"Prometheus at {self.query_url} answered {resp.status_code} with an "
                "unexpected document",
                hint="the URL may point at something other than the Prometheus API",
            )
        if doc["status"] == "error":
            raise DriverError(
                f"Prometheus rejected query {promql!r}: "
                f"{doc.get('errorType', 'error')}: {doc.get('error', 'no details')}",
                hint="check the PromQL (try it in the Prometheus UI)",
            )
        return _samples(doc.get("data"), promql)


@cache  # building a TLS context takes ~5 ms; one serves every client
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _samples(data: object, promql: str) -> list[Sample]:
    if not isinstance(data, dict):
        raise DriverError(f"Prometheus answer to {promql!r} has no data section")
    kind, result = data.get("resultType"), data.get("result")
    try:
        if kind == "vector":
            return [
                Sample(labels=dict(item.get("metric", {})), value=_number(item["value"][1]))
                for item in result  # type: ignore[union-attr]
            ]
        if kind == "scalar":
            return [Sample(labels={}, value=_number(result[1]))]  # type: ignore[index]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DriverError(
            f"Prometheus answer to {promql!r} is malformed: {type(exc).__name__}: {exc}"
        ) from None
    raise DriverError(
        f"query {promql!r} returned a {kind} result; verification needs a vector or scalar",
        hint="use an instant query (no range selector like [5m] at the top level)",
    )


def _number(text: str) -> float:
    # Prometheus sends numbers as strings: "1.5", "NaN", "+Inf", "-Inf".
    # float() parses all of them; anything else is a malformed answer.
    if not isinstance(text, str):
        raise ValueError(f"sample value {text!r} is not a string")
    return float(text)
