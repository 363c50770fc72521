"""The LiteLLM pre-call hook's decisions, without a proxy (litellm is imported, not run)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import random
from pathlib import Path

import pytest

from actions.policy import ServingPolicy

if importlib.util.find_spec("litellm") is None:
    message = "litellm is not installed; `pip install -e '.[litellm]'` to test the hook"
    if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

# Offline: importing litellm would otherwise try to download its model cost map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # noqa: E402

from bot_litellm_hook.hook import PolicyHook, RouteDisabled, apply_decision, decide  # noqa: E402

POLICY = """\
version: 1
routes:
  chat:
    max_output_tokens: 64
    prompt_version: v41
    traffic: {chat-large: 0.75, chat-small: 0.25}
  chat-large: {}
  chat-small: {max_output_tokens: 32}
  solo: {enabled: false}
  legacy: {enabled: false, fallback: chat-small}
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def call(hook: PolicyHook, **data) -> dict:
    return asyncio.run(hook.async_pre_call_hook(None, None, dict(data), "acompletion"))


def test_cap_clamps_requests_for_more_and_fills_in_a_missing_limit(policy_file: Path) -> None:
    hook = PolicyHook(policy_file, seed=1)
    for _ in range(20):
        out = call(hook, model="chat", max_tokens=500, max_completion_tokens=10)
        # chat-small has a tighter cap of its own; the tighter one wins.
        cap = 64 if out["model"] == "chat-large" else 32
        assert out["max_tokens"] == cap and out["max_completion_tokens"] == 10
    assert "max_tokens" not in call(hook, model="chat-large")  # no cap, nothing added


def test_disabled_route_without_fallback_is_a_clear_503(policy_file: Path) -> None:
    with pytest.raises(litellm.ServiceUnavailableError) as err:
        call(PolicyHook(policy_file), model="solo")
    assert err.value.status_code == 503 and "'solo' is disabled" in str(err.value)


def test_disabled_route_with_fallback_is_rerouted(policy_file: Path) -> None:
    out = call(PolicyHook(policy_file), model="legacy", max_tokens=100)
    assert out["model"] == "chat-small" and out["max_tokens"] == 32
    assert out["metadata"]["llm_incident"]["reason"] == "route disabled: fallback"


def test_traffic_weights_pick_the_model() -> None:
    policy = ServingPolicy.model_validate(
        {"routes": {"chat": {"traffic": {"a": 0.75, "b": 0.25}}, "b": {}}}
    )
    rng = random.Random(7)
    picks = [decide(policy, "chat", rng).model for _ in range(2000)]
    assert 0.70 < picks.count("a") / len(picks) < 0.80
    disabled_b = policy.with_values({"b": {"enabled": False}})
    assert {decide(disabled_b, "chat", rng).model for _ in range(50)} == {"a"}


def test_prompt_version_goes_to_metadata_header_and_managed_prompts(policy_file: Path) -> None:
    out = call(PolicyHook(policy_file, seed=3), model="chat", prompt_id="support", metadata={"k": 1})
    assert out["metadata"]["prompt_version"] == "v41" and out["metadata"]["k"] == 1
    assert out["extra_headers"]["x-prompt-version"] == "v41"
    assert out["prompt_version"] == "v41"


def test_routes_the_policy_does_not_list_pass_unchanged(policy_file: Path) -> None:
    data = {"model": "other", "max_tokens": 9000}
    assert call(PolicyHook(policy_file), **data) == data
    assert decide(ServingPolicy(), "chat", random.Random()) is None


def test_broken_policy_file_keeps_the_last_good_policy_and_logs(
    policy_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = PolicyHook(policy_file)
    assert call(hook, model="chat-small", max_tokens=99)["max_tokens"] == 32
    policy_file.write_text("version: 1\nroutes: [oops\n")
    with caplog.at_level(logging.ERROR, logger="bot_litellm_hook"):
        assert call(hook, model="chat-small", max_tokens=99)["max_tokens"] == 32
        call(hook, model="chat-small")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(policy_file) in errors[0].getMessage()
    policy_file.write_text("version: 1\nroutes:\n  chat-small: {max_output_tokens: 8}\n")
    assert call(hook, model="chat-small", max_tokens=99)["max_tokens"] == 8
    policy_file.unlink()
    assert call(hook, model="chat-small", max_tokens=99)["max_tokens"] == 8


def test_invalid_policy_before_any_good_one_enforces_nothing(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nroutes:\n  chat: {max_output_tokens: -1}\n")
    assert call(PolicyHook(path), model="chat", max_tokens=99)["max_tokens"] == 99


def test_file_is_read_again_only_when_it_changes(policy_file: Path, monkeypatch) -> None:
    hook = PolicyHook(policy_file)
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    for _ in range(5):
        call(hook, model="chat-small")
    assert len(reads) == 1


def test_path_comes_from_litellm_settings(policy_file: Path, monkeypatch) -> None:
    monkeypatch.setattr(litellm, "llm_incident_policy_file", str(policy_file), raising=False)
    assert call(PolicyHook(), model="chat-small", max_tokens=99)["max_tokens"] == 32


def test_route_disabled_message_names_the_change(policy_file: Path) -> None:
    policy = ServingPolicy.model_validate(
        {"routes": {"x": {"enabled": False, "fallback": "y"}, "y": {"enabled": False}},
         "updated_by": "INC-7 step disable"}
    )
    with pytest.raises(RouteDisabled, match="fallback 'y' is disabled too.*INC-7"):
        decide(policy, "x", random.Random())


def test_fallback_on_an_enabled_route_moves_its_traffic_like_the_sandbox() -> None:
    policy = ServingPolicy.model_validate(
        {"routes": {"chat": {"fallback": "chat-small"}, "chat-small": {}}})
    decision = decide(policy, "chat", random.Random(0))
    assert decision is not None and decision.model == "chat-small"
    # A fallback that is itself disabled is no cure: serve the route as asked.
    policy = ServingPolicy.model_validate(
        {"routes": {"chat": {"fallback": "chat-small"}, "chat-small": {"enabled": False}}})
    decision = decide(policy, "chat", random.Random(0))
    assert decision is not None and decision.model == "chat"


def test_a_canary_takes_its_weight_of_the_routes_own_traffic_only() -> None:
    policy = ServingPolicy.model_validate({"routes": {
        "chat": {"prompt_version": "v42",
                 "canary": {"prompt_version": "v43", "weight": 0.05, "release": "REL-3"}},
        "chat-small": {}}})
    rng = random.Random(11)
    decisions = [decide(policy, "chat", rng) for _ in range(4000)]
    canary = [d for d in decisions if d.reason == "canary"]
    assert 0.04 < len(canary) / len(decisions) < 0.06  # 5% +- 1 point over 4,000
    assert {d.prompt_version for d in canary} == {"v43"}
    assert {d.prompt_version for d in decisions if d.reason != "canary"} == {"v42"}
    body = apply_decision({"model": "chat", "messages": []}, canary[0])
    assert body["metadata"]["llm_incident"]["canary"] == "REL-3"
    assert body["metadata"]["prompt_version"] == "v43"
    # A mitigation (fallback) takes the route's traffic: no canary on top of it.
    fallen = policy.with_values({"chat": {"fallback": "chat-small"}})
    assert {decide(fallen, "chat", rng).reason for _ in range(500)} == {"fallback"}


class _Key:
    """The fields of LiteLLM's UserAPIKeyAuth the hook reads."""

    def __init__(self, team_id=None, token=None, end_user_id=None, user_id=None):
        self.team_id, self.token, self.end_user_id = team_id, token, end_user_id
        self.user_id = user_id


def test_a_caller_is_known_by_what_the_proxy_authenticated(tmp_path: Path) -> None:
    from bot_litellm_hook.hook import callers_of
    from bot_litellm_hook.identity import CallerIndex

    policy = ServingPolicy.model_validate({"customers": {
        "team-a": {"max_output_tokens": 8}, "h4sh": {"blocked": True},
        "user:owner": {"max_output_tokens": 6},
        "key:h4sh/bob@example.com": {"max_output_tokens": 4},
        "bob@example.com": {"max_output_tokens": 2}}})
    index = CallerIndex(policy)

    def names(key, data=None):
        return sorted(m.label for m in callers_of(index, key, data or {}))

    # Every entry naming the request holds: its team, and its key's end user.
    assert names(_Key("team-a", "h4sh-2"), {"user": "bob@example.com"}) == ["team-a"]
    assert names(_Key("team-z", "h4sh")) == ["h4sh"]
    assert names(_Key(token="h4sh"), {"user": "bob@example.com"}) == [
        "h4sh", "key:h4sh/bob@example.com"]
    assert names(_Key(token="other", end_user_id="bob@example.com")) == []
    assert names(_Key(user_id="owner")) == ["user:owner"]
    # A plain id is a team id or key hash: never matched from the body's `user`.
    assert names(_Key(), {"user": "bob@example.com"}) == []
    assert names(_Key(), {"user": "team-a"}) == []

    path = tmp_path / "policy.yaml"
    path.write_text(POLICY + "customers:\n  team-a: {max_output_tokens: 8}\n"
                    "  h4sh: {blocked: true}\n")
    hook = PolicyHook(path, seed=1)
    data = asyncio.run(hook.async_pre_call_hook(_Key("team-a"), None,
                                                {"model": "chat", "max_tokens": 500}, None))
    assert data["max_tokens"] == 8 and data["metadata"]["llm_incident"]["customer"] == "team-a"
    unlisted = asyncio.run(hook.async_pre_call_hook(_Key(), None,
                                                    {"model": "other", "max_tokens": 500}, None))
    assert unlisted["max_tokens"] == 500  # neither the route nor the caller is listed
    with pytest.raises(litellm.PermissionDeniedError, match="'h4sh' is blocked"):
        asyncio.run(hook.async_pre_call_hook(_Key(token="h4sh"), None, {"model": "chat"}, None))


def test_the_deployment_hook_clamps_every_deployment_call(tmp_path: Path) -> None:
    # What LiteLLM passes before a deployment call: its model group in the metadata,
    # and the pre-call hook's decision if the request went through it.
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    hook = PolicyHook(path, seed=1)
    fallback = {"max_tokens": 900, "metadata": {"model_group": "chat-small", "llm_incident": {
        "route": "chat", "max_output_tokens": 64}}}
    assert asyncio.run(hook.async_pre_call_deployment_hook(fallback, None))["max_tokens"] == 32
    caller = {"metadata": {"model_group": "chat-large",
                           "llm_incident": {"route": "chat", "max_output_tokens": 5}}}
    assert asyncio.run(hook.async_pre_call_deployment_hook(caller, None))["max_tokens"] == 5
    unknown = {"max_tokens": 900, "metadata": {"model_group": "elsewhere"}}
    assert asyncio.run(hook.async_pre_call_deployment_hook(unknown, None)) is None
    into_disabled = {"metadata": {"model_group": "solo", "llm_incident": {"route": "chat"}}}
    with pytest.raises(litellm.ServiceUnavailableError, match="'solo' is disabled"):
        asyncio.run(hook.async_pre_call_deployment_hook(into_disabled, None))
