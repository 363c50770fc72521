"""What per-customer limits cost a gateway, per request and in memory.

Run: ``python bench/bench_callers.py [--customers 1000] [--requests 20000]
[--redis HOST:PORT]``.

1. **The LiteLLM hook's pre-call decision** (``PolicyHook.async_pre_call_hook``,
   in process, no proxy): a policy with ``--customers`` callers listed (caps and
   requests-per-minute limits on each), requests spread over them; p50 and p99
   per request, against the same hook with no ``customers`` section; and with the
   callers named as end users of one key (``key:HASH/user-N``, the body's ``user``).
   Counted in process (no proxy, so no shared Redis); with ``--redis``, also counted
   in that Redis through LiteLLM's RedisCache, as a proxy with one does.
2. **The limiter's memory** (``actions.caller_limits.CustomerLimits``): every
   listed caller at 600 requests a minute for a full 60-second window, tracked
   with tokens; bytes per caller (tracemalloc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline

import yaml  # noqa: E402

from actions.caller_limits import CustomerLimits  # noqa: E402
from actions.policy import ServingPolicy  # noqa: E402


class Key:
    """What LiteLLM's UserAPIKeyAuth gives the hook: the key's team, hash, owner."""

    def __init__(self, team_id: str | None, token: str | None = None) -> None:
        self.team_id, self.token, self.end_user_id, self.user_id = team_id, token, None, None


def policy_file(folder: Path, customers: int, *, end_users: bool = False) -> Path:
    name = "key:h4sh/user-{}" if end_users else "team-{}"
    data = {"version": 1, "routes": {"chat": {"max_output_tokens": 512}},
            "customers": {name.format(i): {"max_output_tokens": 64 + i % 100,
                                           "max_requests_per_minute": 100_000}
                          for i in range(customers)}}
    path = folder / f"policy-{customers}{'-end-users' if end_users else ''}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def time_hook(path: Path, callers: list[str | None], n: int, *,
                    end_users: bool = False, redis: str | None = None) -> list[float]:
    from bot_litellm_hook.hook import PolicyHook

    cache = None
    if redis:
        from litellm.caching.redis_cache import RedisCache

        host, _, port = redis.rpartition(":")
        cache = RedisCache(host=host, port=int(port))
    hook = PolicyHook(path, seed=1, redis=cache)
    rng = random.Random(3)
    out = []
    for _ in range(n):
        body: dict = {"model": "chat", "max_tokens": 1000,
                      "messages": [{"role": "user", "content": "hi"}]}
        caller = rng.choice(callers)
        if end_users:
            body["user"] = caller
        key = Key(None, "h4sh") if end_users else Key(caller)
        start = time.perf_counter()
        await hook.async_pre_call_hook(key, None, body, "completion")
        out.append(time.perf_counter() - start)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--redis", help="HOST:PORT of a Redis to count in (a throwaway one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        listed = policy_file(folder, args.customers)
        bare = policy_file(folder, 0)
        callers = [f"team-{i}" for i in range(args.customers)]
        with_limits = asyncio.run(time_hook(listed, callers, args.requests))
        without = asyncio.run(time_hook(bare, [None], args.requests))
        users = policy_file(folder, args.customers, end_users=True)
        named = [f"User-{i} " for i in range(args.customers)]  # normalised on the way
        as_end_users = asyncio.run(time_hook(users, named, args.requests, end_users=True))
        in_redis = asyncio.run(time_hook(listed, callers, args.requests, redis=args.redis)) \
            if args.redis else None
    print(f"pre-call hook, {args.requests} requests over {args.customers} listed callers: "
          f"p50 {p(with_limits, 50):.1f} us, p99 {p(with_limits, 99):.1f} us")
    print(f"pre-call hook, no customers section:              "
          f"p50 {p(without, 50):.1f} us, p99 {p(without, 99):.1f} us")
    print(f"pre-call hook, the same as end users of one key:  "
          f"p50 {p(as_end_users, 50):.1f} us, p99 {p(as_end_users, 99):.1f} us")
    if in_redis:
        print(f"pre-call hook, listed callers counted in Redis:   "
              f"p50 {p(in_redis, 50):.1f} us, p99 {p(in_redis, 99):.1f} us")

    policy = ServingPolicy.model_validate(
        {"customers": {c: {"max_requests_per_minute": 1000} for c in callers}})
    now = [0.0]
    limits = CustomerLimits(lambda: now[0])
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for step in range(600):  # 600 requests a minute each, over one minute
        now[0] = step * 0.1
        for c in callers:
            limits.admit(c, policy)
            limits.record_tokens(c, 400)
    used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    print(f"limiter memory, {args.customers} callers at 600 requests/min: "
          f"{used / args.customers / 1024:.1f} KiB per caller, {used / 2**20:.1f} MiB in all")


if __name__ == "__main__":
    main()
