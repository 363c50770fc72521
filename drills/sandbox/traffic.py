"""A bounded traffic generator for the sandbox (loopback only).

``await generate("http://127.0.0.1:4000", routes=["chat"], rate_per_s=5, duration_s=30)``
sends about ``rate_per_s * duration_s`` chat requests spread over the duration,
never more than ``max_in_flight`` at once, and returns how many got each status
(``"error"`` for transport failures). ``python -m drills.sandbox.traffic`` does
the same from a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import random
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import httpx

MAX_REQUESTS = 100_000  # a drill never needs more; a typo in the rate should not flood


def require_loopback(base_url: str) -> None:
    host = urlsplit(base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"traffic generator only targets loopback addresses, not {host!r}")


async def generate(
    base_url: str,
    *,
    routes: list[str],
    rate_per_s: float,
    duration_s: float,
    client: httpx.AsyncClient | None = None,
    max_in_flight: int = 32,
    json_share: float = 0.5,
    max_tokens: int | None = None,
    rng: random.Random | None = None,
    customers: dict[str, float] | None = None,
) -> dict[int | str, int]:
    """Send the requests; return counts by HTTP status. ``customers`` spreads them over
    callers (the body's ``user``) by weight; without it requests name no caller."""
    require_loopback(base_url)
    if not routes:
        raise ValueError("routes: give at least one route")
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate_per_s and duration_s must be > 0")
    total = math.ceil(rate_per_s * duration_s)
    if total > MAX_REQUESTS:
        raise ValueError(f"{total} requests is over the limit of {MAX_REQUESTS}")
    rng = rng or random.Random()
    counts: Counter[int | str] = Counter()
    gate = asyncio.Semaphore(max_in_flight)
    owned = client is None
    http = client or httpx.AsyncClient(timeout=60.0)
    url = base_url.rstrip("/") + "/v1/chat/completions"

    async def one(i: int) -> None:
        body: dict = {
            "model": routes[i % len(routes)],
            "messages": [{"role": "user", "content": f"drill request {i}: " + "context " * 40}],
        }
        if max_tokens:
            body["max_tokens"] = max_tokens
        if customers:
            body["user"] = rng.choices(list(customers), weights=list(customers.values()))[0]
        if rng.random() < json_share:
            body["response_format"] = {"type": "json_object"}
        try:
            resp = await http.post(url, json=body)
            counts[resp.status_code] += 1
        except httpx.HTTPError:
            counts["error"] += 1
        finally:
            gate.release()

    start = time.monotonic()
    tasks = []
    try:
        for i in range(total):
            delay = start + i / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        if owned:
            await http.aclose()
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m drills.sandbox.traffic", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:4000")
    p.add_argument("--route", action="append", dest="routes", help="repeatable (default chat)")
    p.add_argument("--rate", type=float, default=5.0, help="requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="seconds")
    p.add_argument("--max-tokens", type=int)
    args = p.parse_args(argv)
    try:
        counts = asyncio.run(
            generate(args.url, routes=args.routes or ["chat"], rate_per_s=args.rate,
                     duration_s=args.duration, max_tokens=args.max_tokens)
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for status, n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        print(f"{status}\t{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
