"""Per-customer limits through the REAL LiteLLM proxy: callers cannot pose as each
other, and two proxy processes sharing one Redis give a caller its limit once.

Keys are authenticated by the proxy's own ``general_settings.custom_auth`` hook (a
real LiteLLM path that needs no database): two keys, each with its team. Both proxy
processes (two launchers, two ports) read one policy file and count in one real
``redis-server`` configured as the proxy's ``general_settings.coordination_redis``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from integration.litellm_support import READY_TIMEOUT, Proxy, require_litellm
from integration.litellm_upstream import StubUpstream
from integration.redis_server import RedisServer

pytestmark = pytest.mark.integration

AUTH = '''\
"""Test keys for the proxy's custom_auth: key -> its team (what LiteLLM authenticates)."""
import json, os
from litellm.proxy._types import UserAPIKeyAuth

KEYS = json.loads(open(os.path.join(os.path.dirname(__file__), "keys.json")).read())


async def user_api_key_auth(request, api_key):
    if api_key not in KEYS:
        raise Exception("unknown key")
    return UserAPIKeyAuth(api_key=api_key, team_id=KEYS[api_key])
'''


@dataclass
class Rig:
    proxies: list[Proxy]
    policy: Path
    keys: dict[str, str]  # team -> key

    def chat(self, proxy: int, team: str, **body: Any) -> int:
        resp = httpx.post(
            f"{self.proxies[proxy].url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 5, **body},
            headers={"Authorization": f"Bearer {self.keys[team]}"}, timeout=60)
        assert resp.status_code in (200, 403, 429), resp.text
        return resp.status_code

    def set_customers(self, customers: dict[str, Any]) -> None:
        self.policy.write_text(yaml.safe_dump(
            {"version": 1, "routes": {"chat": {}}, "customers": customers}))
        time.sleep(0.05)  # a new mtime even on a coarse clock: the hooks re-read on change


def hash_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()  # LiteLLM's hash_token


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    require_litellm()
    workdir = tmp_path_factory.mktemp("litellm-callers")
    redis = RedisServer()
    upstream = StubUpstream(default_tokens=20).start()
    keys = {team: "sk-" + secrets.token_hex(16) for team in ("victim", "team-x", "counted", "tokens")}
    (workdir / "keys.json").write_text(json.dumps({k: t for t, k in keys.items()}))
    (workdir / "callers_auth.py").write_text(AUTH)
    policy = workdir / "serving-policy.yaml"
    policy.write_text("version: 1\nroutes:\n  chat: {}\n")
    config = workdir / "config.yaml"
    params = {"model": "openai/large", "api_base": upstream.base_url, "api_key": "stub"}
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": "chat", "litellm_params": params}],
        "litellm_settings": {"callbacks": ["bot_litellm_hook.policy_hook"],
                             "llm_incident_policy_file": str(policy), "num_retries": 0},
        "router_settings": {"num_retries": 0, "disable_cooldowns": True},
        "general_settings": {"master_key": "sk-" + secrets.token_hex(16),
                             "custom_auth": "callers_auth.user_api_key_auth",
                             "coordination_redis": {"host": redis.host, "port": redis.port}},
    }, sort_keys=False))
    proxies: list[Proxy] = []
    try:
        for n in range(2):  # both launchers import the proxy at once
            folder = workdir / f"proxy-{n}"
            folder.mkdir()
            proxies.append(Proxy(folder, config, key=""))
        for proxy in proxies:
            proxy.start()
        yield Rig(proxies, policy, keys)
    finally:
        for proxy in proxies:
            proxy.close()
        upstream.stop()
        redis.stop()


def test_each_proxy_says_at_startup_that_it_counts_in_the_shared_redis(rig: Rig) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    for proxy in rig.proxies:
        while "counted in the proxy's shared Redis" not in proxy.log_tail(400):
            assert time.monotonic() < deadline, proxy.log_tail()
            time.sleep(0.2)


def test_a_spoofed_user_field_neither_spends_nor_escapes_another_callers_limit(
        rig: Rig) -> None:
    rig.set_customers({"victim": {"max_requests_per_minute": 2}})
    # The other key names the victim's team in its `user`: that is not who it is.
    assert [rig.chat(0, "team-x", user="victim") for _ in range(4)] == [200] * 4
    assert [rig.chat(0, "victim") for _ in range(3)] == [200, 200, 429]  # its limit, whole
    victim = hash_of(rig.keys["victim"])
    rig.set_customers({f"key:{victim}/alice": {"blocked": True}})
    assert rig.chat(0, "team-x", user="alice") == 200  # not the victim key's alice
    for spelling in ("alice", "Alice ", "\u0430lice", "al\u200bice"):
        assert rig.chat(1, "victim", user=spelling) == 403, spelling


def test_two_proxy_processes_give_a_caller_its_limit_once(rig: Rig) -> None:
    rig.set_customers({"counted": {"max_requests_per_minute": 2}})
    codes = [rig.chat(n % 2, "counted") for n in range(6)]  # alternating processes
    assert codes == [200, 200, 429, 429, 429, 429], codes


def test_tokens_answered_by_one_process_count_in_the_other(rig: Rig) -> None:
    # Each answer is 5 prompt + 5 completion tokens (the stub's usage): two fill 20.
    rig.set_customers({"tokens": {"max_tokens_per_minute": 20}})
    codes = [rig.chat(n % 2, "tokens") for n in range(4)]
    assert codes == [200, 200, 429, 429], codes
