"""Per-customer counters shared by every worker and instance of the proxy, in its Redis.

The proxy already has a Redis for its own rate limits when one is configured
(``general_settings.coordination_redis``, ``litellm_settings.cache`` of type redis, the
REDIS_* environment: LiteLLM's ``redis_usage_cache``; or ``router_settings.redis_host``:
the router's cache). The hook counts there, so N proxy processes give a caller its
limit once, not N times. Without one it counts per process and says so at startup.

Each check-and-count is one Lua script on Redis's own clock (no skew between proxy
hosts): requests in a sorted set per counter, tokens in per-second buckets of a hash,
both over the last 60 seconds. All keys carry one hash tag, so a Redis Cluster runs
the script on one node. If Redis fails, the request is counted in this process (the
limit still holds per process, blocks hold anyway) and the outage is logged once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from actions.caller_limits import Counter, CustomerLimits, over_limit

log = logging.getLogger("bot_litellm_hook")
PREFIX = "{llm-incident}:customer"

ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
for i = 1, n do
  local asked, used = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm, tpm = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', asked, '-inf', now - 60000)
  if rpm > 0 and redis.call('ZCARD', asked) >= rpm then return {i, 1} end
  if tpm > 0 then
    local total = 0
    local buckets = redis.call('HGETALL', used)
    for j = 1, #buckets, 2 do
      if tonumber(buckets[j]) <= sec - 60 then redis.call('HDEL', used, buckets[j])
      else total = total + tonumber(buckets[j + 1]) end
    end
    if total >= tpm then return {i, 2} end
  end
end
for i = 1, n do
  redis.call('ZADD', KEYS[2 * i - 1], now, now .. ':' .. ARGV[#ARGV])
  redis.call('PEXPIRE', KEYS[2 * i - 1], 61000)
end
return {0, 0}
"""

RECORD = """
local sec = redis.call('TIME')[1]
for i = 1, #KEYS do
  redis.call('HINCRBY', KEYS[i], sec, ARGV[1])
  redis.call('EXPIRE', KEYS[i], 61)
end
return 0
"""


def proxy_redis() -> Any | None:
    """The Redis the running proxy shares between its processes, if it has one."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")  # only inside a proxy
    if proxy is None:
        return None
    cache = getattr(proxy, "redis_usage_cache", None)
    if cache is None:
        router_cache = getattr(getattr(proxy, "llm_router", None), "cache", None)
        cache = getattr(router_cache, "redis_cache", None)
    return cache


def describe(cache: Any | None) -> str:
    if cache is None:
        return ("per-customer limits are counted in this proxy process only: no shared "
                "Redis is configured (general_settings.coordination_redis, litellm_settings."
                "cache with type redis, or router_settings.redis_host), so N workers or "
                "instances give a caller N times its limit")
    kw = getattr(cache, "redis_kwargs", None) or {}
    where = kw.get("url") and "a Redis url" or f"{kw.get('host', '?')}:{kw.get('port', 6379)}"
    return (f"per-customer limits are counted in the proxy's shared Redis ({where}): "
            "they hold across its workers and instances")


class SharedLimits:
    """Counters in ``cache`` (LiteLLM's RedisCache), ``local`` when Redis fails."""

    def __init__(self, cache: Any, local: CustomerLimits) -> None:
        self.cache, self._local = cache, local
        self._admit = cache.async_register_script(ADMIT)
        self._record = cache.async_register_script(RECORD)
        self._failing = False

    def _keys(self, c: Counter) -> list[str]:
        return [f"{PREFIX}:requests:{c.key}", f"{PREFIX}:tokens:{c.key}"]

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.error("per-customer limits: the shared Redis failed (%s); counting in this "
                      "process until it answers again", str(exc).splitlines()[0][:200])
            self._failing = True

    async def admit(self, counters: Sequence[Counter]) -> None:
        keys = [k for c in counters for k in self._keys(c)]
        args: list[str | int] = [v or 0 for c in counters for v in (c.rpm, c.tpm)]
        try:
            res = await self._admit(keys=keys, args=[*args, os.urandom(8).hex()])
        except Exception as exc:  # noqa: BLE001 - a Redis outage must not fail every request
            self._failed(exc)
            self._local.admit_counters(counters)
            return
        if self._failing:
            log.warning("per-customer limits: the shared Redis answers again")
            self._failing = False
        which, what = int(res[0]), int(res[1])
        if which:
            raise over_limit(counters[which - 1], "requests" if what == 1 else "tokens")

    async def record(self, counters: Sequence[Counter], tokens: int) -> None:
        mine = [c for c in counters if c.tpm is not None]
        if not mine or tokens <= 0:
            return
        try:
            await self._record(keys=[self._keys(c)[1] for c in mine], args=[tokens])
        except Exception as exc:  # noqa: BLE001 - see admit
            self._failed(exc)
            self._local.record_counters(mine, tokens)
