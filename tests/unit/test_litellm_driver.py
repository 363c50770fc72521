"""The LiteLLM driver's config mapping, with a fake proxy and a fake reload (no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from actions.catalog import get_action
from actions.drivers.litellm import LiteLLMDriver, LiteLLMTargetConfig
from actions.drivers.litellm_config import expected_deployments
from actions.drivers.policy_file import PolicyFileDriver
from bot.base.errors import DriverError, InputError

BASE_CONFIG: dict[str, Any] = {
    "model_list": [
        {"model_name": "chat", "litellm_params": {"model": "openai/large", "max_parallel_requests": 4}},
        {"model_name": "chat-small", "litellm_params": {"model": "openai/small"}},
        {"model_name": "chat", "litellm_params": {"model": "openai/large-b", "max_parallel_requests": 8}},
    ],
    "litellm_settings": {"callbacks": ["bot_litellm_hook.policy_hook"]},
    "router_settings": {
        "num_retries": 0,
        "fallbacks": [{"chat": ["chat-small", "chat-backup"]}],
    },
}


class FakeProxy:
    """A proxy that loads the config file when reloaded; ``refuse`` keeps it down."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.loaded: dict[str, Any] = yaml.safe_load(config_path.read_text())
        self.reloads = 0
        self.up = True
        self.refuse = lambda config: False
        self.fail_reload = False

    async def reload(self) -> None:
        self.reloads += 1
        if self.fail_reload:
            raise DriverError("injected: restart command exited 1")
        self.loaded = yaml.safe_load(self.config_path.read_text())
        self.up = not self.refuse(self.loaded)

    async def healthy(self) -> bool:
        return self.up

    async def deployments(self) -> dict[str, list[int | None]]:
        return expected_deployments(self.loaded)

    async def fallbacks(self) -> list[dict[str, list[Any]]] | None:
        return list((self.loaded.get("router_settings") or {}).get("fallbacks") or [])


@pytest.fixture
def setup(tmp_path: Path) -> tuple[LiteLLMDriver, FakeProxy, Path, Path]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(BASE_CONFIG, sort_keys=False))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nroutes:\n  chat:\n    prompt_version: v42\n")
    proxy = FakeProxy(config)
    driver = LiteLLMDriver(
        config,
        PolicyFileDriver(policy, add_routes=True),
        proxy,
        reload=proxy.reload,
        ready_timeout=0.5,
        poll_interval=0.01,
    )
    return driver, proxy, config, policy


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_read_combines_config_and_policy_file(setup) -> None:
    driver, _, _, _ = setup
    policy = run(driver.read())
    chat = policy.route("chat")
    assert chat.max_concurrency == 4  # two deployments (4 and 8) read as the tighter
    assert chat.fallback == "chat-small"
    assert chat.prompt_version == "v42"
    assert chat.enabled is True
    assert policy.route("chat-small").max_concurrency is None


def test_concurrency_goes_to_every_deployment_and_reloads(setup) -> None:
    driver, proxy, config, policy = setup
    run(driver.write({"chat": {"max_concurrency": 2}}, reason="INC-1", action="lower_concurrency"))
    params = [e["litellm_params"] for e in load(config)["model_list"] if e["model_name"] == "chat"]
    assert [p["max_parallel_requests"] for p in params] == [2, 2]
    assert proxy.reloads == 1
    assert load(policy)["routes"]["chat"]["max_concurrency"] == 2
    assert load(config.with_name("config.yaml.prev")) == BASE_CONFIG
    assert run(driver.read()).route("chat").max_concurrency == 2


def test_cap_and_prompt_touch_only_the_policy_file(setup) -> None:
    driver, proxy, config, policy = setup
    before = config.read_bytes()
    run(driver.write({"chat": {"max_output_tokens": 64, "prompt_version": "v41"}},
                     reason="INC-2", action="cap_output_length"))
    assert config.read_bytes() == before
    assert proxy.reloads == 0  # no reload: the hook reads the policy file per request
    route = load(policy)["routes"]["chat"]
    assert (route["max_output_tokens"], route["prompt_version"]) == (64, "v41")


def test_revert_of_lower_concurrency_restores_each_deployment_exactly(setup) -> None:
    driver, _, config, _ = setup
    action = get_action("lower_concurrency")
    plan = action.plan({"route": "chat", "max_concurrency": 1}, run(driver.read()), target="gw")
    run(action.apply(plan, driver, reason="INC-3"))
    assert run(action.verify(plan, driver)) == []
    assert run(action.revert(plan, driver, reason="INC-3 revert")) == []
    assert load(config) == BASE_CONFIG


def test_disable_removes_entries_and_enable_restores_them_in_place(setup) -> None:
    driver, proxy, config, policy = setup
    action = get_action("disable_route")
    plan = action.plan({"route": "chat"}, run(driver.read()), target="gw")
    run(action.apply(plan, driver, reason="INC-4"))
    names = [e["model_name"] for e in load(config)["model_list"]]
    assert names == ["chat-small"]
    assert load(policy)["routes"]["chat"]["enabled"] is False
    assert run(driver.read()).route("chat").enabled is False
    assert proxy.loaded["model_list"] == load(config)["model_list"]
    run(action.revert(plan, driver, reason="INC-4 revert"))
    assert load(config) == BASE_CONFIG  # same entries, same positions, same params
    assert run(driver.read()).route("chat").enabled is True


def test_fallback_sets_router_fallbacks_and_revert_restores_the_chain(setup) -> None:
    driver, _, config, _ = setup
    base = {**BASE_CONFIG, "model_list": [*BASE_CONFIG["model_list"],
                                          {"model_name": "chat-tiny",
                                           "litellm_params": {"model": "openai/tiny"}}]}
    config.write_text(yaml.safe_dump(base, sort_keys=False))
    action = get_action("fallback")
    plan = action.plan({"route": "chat", "to": "chat-tiny"}, run(driver.read()), target="gw")
    run(action.apply(plan, driver, reason="INC-5"))
    assert load(config)["router_settings"]["fallbacks"] == [{"chat": ["chat-tiny"]}]
    assert run(driver.read()).route("chat").fallback == "chat-tiny"
    run(action.revert(plan, driver, reason="INC-5 revert"))
    assert load(config) == base


def test_fallback_to_a_model_the_proxy_does_not_serve_is_refused(setup) -> None:
    driver, _, config, _ = setup
    action = get_action("fallback")
    with pytest.raises(InputError, match="route 'attacker-route' is not served by target 'gw'"):
        action.plan({"route": "chat", "to": "attacker-route"}, run(driver.read()), target="gw")
    assert load(config) == BASE_CONFIG


def test_fallback_on_a_route_without_one_is_added_then_removed(setup) -> None:
    driver, _, config, _ = setup
    run(driver.write({"chat-small": {"fallback": "chat"}}, reason="x", action="fallback"))
    assert {"chat-small": ["chat"]} in load(config)["router_settings"]["fallbacks"]
    run(driver.write({"chat-small": {"fallback": None}}, reason="x", action="fallback"))
    assert load(config) == BASE_CONFIG


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"model_list: [unclosed\n", "not valid YAML"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"model_list: {chat: 1}\n", "model_list must be a list"),
        (b"model_list:\n  - litellm_params: {}\n", "model_list[0] needs a string model_name"),
    ],
)
def test_unparseable_config_is_refused_and_nothing_changes(setup, content, problem) -> None:
    driver, proxy, config, policy = setup
    config.write_bytes(content)
    policy_before = policy.read_bytes()
    with pytest.raises(DriverError) as err:
        run(driver.write({"chat": {"max_concurrency": 1}}, reason="x", action="lower_concurrency"))
    assert problem in str(err.value) and str(config) in str(err.value)
    assert config.read_bytes() == content
    assert policy.read_bytes() == policy_before
    assert proxy.reloads == 0


def test_invalid_update_is_refused_before_any_write(setup) -> None:
    driver, proxy, config, _ = setup
    before = config.read_bytes()
    with pytest.raises(DriverError, match="max_concurrency"):
        run(driver.write({"chat": {"max_concurrency": 0}}, reason="x", action="lower_concurrency"))
    assert config.read_bytes() == before and proxy.reloads == 0


def test_failed_reload_rolls_the_config_back(setup) -> None:
    driver, proxy, config, policy = setup
    before, policy_before = config.read_bytes(), policy.read_bytes()
    proxy.fail_reload = True
    with pytest.raises(DriverError) as err:
        run(driver.write({"chat": {"enabled": False}}, reason="x", action="disable_route"))
    assert "restart command exited 1" in str(err.value)
    assert config.read_bytes() == before
    assert not driver.stash_path.exists()
    assert policy.read_bytes() == policy_before  # the policy file is written only after


def test_proxy_that_does_not_come_back_is_rolled_back(setup) -> None:
    driver, proxy, config, policy = setup
    before = config.read_bytes()
    # The new config (concurrency 1) kills the proxy; the restored one brings it back.
    proxy.refuse = lambda cfg: any(
        (e.get("litellm_params") or {}).get("max_parallel_requests") == 1 for e in cfg["model_list"]
    )
    with pytest.raises(DriverError) as err:
        run(driver.write({"chat": {"max_concurrency": 1}}, reason="x", action="lower_concurrency"))
    assert "did not come back" in str(err.value) and "previous config was restored" in str(err.value)
    assert config.read_bytes() == before
    assert proxy.reloads == 2 and proxy.up
    assert "max_concurrency" not in load(policy)["routes"]["chat"]


def test_a_proxy_reporting_stale_state_is_not_confirmed(setup) -> None:
    driver, proxy, config, _ = setup
    before = config.read_bytes()

    async def no_op_reload() -> None:  # the proxy never picks the file up
        proxy.reloads += 1

    driver.reload = no_op_reload
    with pytest.raises(DriverError, match="expected"):
        run(driver.write({"chat": {"max_concurrency": 3}}, reason="x", action="lower_concurrency"))
    assert config.read_bytes() == before


def test_wiring_builds_the_litellm_driver(tmp_path: Path) -> None:
    from bot.adapters.settings import Settings
    from bot.adapters.wiring import build_driver

    cfg = {
        "driver": "litellm",
        "config_path": str(tmp_path / "config.yaml"),
        "policy_file": str(tmp_path / "policy.yaml"),
        "base_url": "http://127.0.0.1:4000",
        "master_key_env": "PROXY_KEY",
        "reload_command": ["systemctl", "restart", "litellm"],
    }
    driver = build_driver("gw", cfg, Settings(env={"PROXY_KEY": "sk-1"}))
    assert isinstance(driver, LiteLLMDriver) and driver.reload is not None
    with pytest.raises(InputError, match="gw"):
        build_driver("gw", {**cfg, "base_url": "not a url"}, Settings(env={"PROXY_KEY": "k"}))
    with pytest.raises(DriverError, match="PROXY_KEY"):
        build_driver("gw", cfg, Settings(env={}))
    assert LiteLLMTargetConfig.model_validate(cfg).ready_timeout > 0
