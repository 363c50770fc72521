"""Callers cannot pose as each other in the LiteLLM hook (no proxy: litellm is imported).

Who a request is comes from what the proxy authenticated (key hash, team id, owner);
the body's ``user`` only names an end user inside its key's or team's namespace, and
every id is compared after the same normalisation at the policy and at the request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from actions.caller_ids import normalise, parse_customer_id
from actions.policy import ServingPolicy

if importlib.util.find_spec("litellm") is None:
    message = "litellm is not installed; `pip install -e '.[litellm]'` to test the hook"
    if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline
import litellm  # noqa: E402

from bot_litellm_hook.hook import PolicyHook  # noqa: E402

# How the outside test got past a block of "acme": all must be held to it.
EVASIONS = ["Acme", "acme ", " acme", "\u0430cme", "ac\u200bme", "\uff41\uff43\uff4d\uff45",
            "ACME"]
VICTIM = SimpleNamespace(team_id="victim", token="hash-victim", user_id=None, end_user_id=None)
OTHER = SimpleNamespace(team_id="team-x", token="hash-other", user_id=None, end_user_id=None)


def hook_for(tmp_path: Path, customers: str) -> PolicyHook:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nroutes:\n  chat: {}\ncustomers:\n" + customers)
    return PolicyHook(path, seed=1)


def call(hook: PolicyHook, key: Any, **body: Any) -> dict:
    data = {"model": "chat", "messages": [], **body}
    return asyncio.run(hook.async_pre_call_hook(key, None, data, "acompletion"))


def status(hook: PolicyHook, key: Any, **body: Any) -> int:
    try:
        call(hook, key, **body)
    except litellm.PermissionDeniedError:
        return 403
    except litellm.RateLimitError:
        return 429
    return 200


@pytest.mark.parametrize("spelling", EVASIONS)
def test_every_spelling_of_a_blocked_end_user_is_blocked(tmp_path: Path, spelling: str) -> None:
    hook = hook_for(tmp_path, "  key:hash-victim/acme: {blocked: true}\n"
                              "  key:hash-victim/capped: {max_output_tokens: 5}\n")
    with pytest.raises(litellm.PermissionDeniedError, match="'key:hash-victim/acme' is blocked"):
        call(hook, VICTIM, user=spelling)
    capped = spelling.replace("acme", "capped").replace("Acme", "Capped").replace(
        "ACME", "CAPPED")
    if capped != spelling:  # the plain-ASCII spellings: the cap holds for them too
        assert call(hook, VICTIM, user=capped, max_tokens=500)["max_tokens"] == 5
    assert status(hook, VICTIM, user="acme-2") == 200  # someone else is not blocked


@pytest.mark.parametrize("spelling", EVASIONS)
def test_every_spelling_of_a_blocked_team_is_blocked(tmp_path: Path, spelling: str) -> None:
    hook = hook_for(tmp_path, "  acme: {blocked: true}\n")
    key = SimpleNamespace(team_id=spelling, token="h", user_id=None, end_user_id=None)
    assert status(hook, key) == 403


def test_an_end_user_id_in_another_script_gets_the_strictest_of_its_namespace(
        tmp_path: Path) -> None:
    # No table of lookalikes is complete: what is still not ASCII after folding the
    # known ones cannot evade a block in its namespace (and is no one else's problem).
    hook = hook_for(tmp_path, "  key:hash-victim/acme: {blocked: true}\n"
                              "  key:hash-other/bob: {max_output_tokens: 7}\n")
    for lookalike in ("\u0561cme", "\u13aacme", "\u674e\u96f7"):  # Armenian, Cherokee, Han
        assert status(hook, VICTIM, user=lookalike) == 403, lookalike
    assert call(hook, OTHER, user="\u674e\u96f7", max_tokens=500)["max_tokens"] == 7
    assert status(hook, SimpleNamespace(team_id=None, token="h3", user_id=None,
                                        end_user_id=None), user="\u674e\u96f7") == 200


def test_another_key_sending_the_victims_name_does_not_spend_its_limit(tmp_path: Path) -> None:
    hook = hook_for(tmp_path, "  victim: {max_requests_per_minute: 2}\n")
    # The other key names the victim (its team id): that is not who it is, so the
    # victim's limit is not its to spend.
    assert [status(hook, OTHER, user="victim") for _ in range(5)] == [200] * 5
    assert [status(hook, VICTIM) for _ in range(3)] == [200, 200, 429]
    hook = hook_for(tmp_path, "  key:hash-victim/alice: {max_requests_per_minute: 1}\n")
    assert [status(hook, OTHER, user="alice") for _ in range(3)] == [200] * 3
    assert status(hook, VICTIM, user="alice") == 200
    assert status(hook, VICTIM, user="Alice ") == 429  # the same end user, spelt otherwise
    assert status(hook, VICTIM, user="bob") == 200  # another end user of the same key


def test_tokens_are_counted_for_who_the_key_is_not_what_the_metadata_says(
        tmp_path: Path) -> None:
    hook = hook_for(tmp_path, "  victim: {max_tokens_per_minute: 100}\n")
    usage = SimpleNamespace(usage=SimpleNamespace(total_tokens=500))
    forged = call(hook, OTHER, metadata={"llm_incident": {"customer": "victim"}})
    assert "customer" not in forged["metadata"]["llm_incident"]  # only the hook writes it
    asyncio.run(hook.async_post_call_success_hook(
        {**forged, "metadata": {"llm_incident": {"customer": "victim"}}}, OTHER, usage))
    assert status(hook, VICTIM) == 200  # the other key's 500 tokens are not the victim's
    asyncio.run(hook.async_post_call_success_hook({"model": "chat"}, VICTIM, usage))
    assert status(hook, VICTIM) == 429  # its own are


def test_the_hook_says_when_limits_are_counted_per_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hook = hook_for(tmp_path, "  victim: {max_requests_per_minute: 2}\n")
    with caplog.at_level(logging.INFO, logger="bot_litellm_hook"):
        call(hook, VICTIM)
        call(hook, VICTIM)
    said = [r.getMessage() for r in caplog.records if "counted in" in r.getMessage()]
    assert len(said) == 1 and "this proxy process only" in said[0], said


@pytest.mark.parametrize("name", ["team:acme/alice", "key:ab12/alice@example.com",
                                  "user:u-1", "team-acme/alice", "acme", "TEAM:Acme"])
def test_the_policy_takes_namespaced_ids(name: str) -> None:
    assert name in ServingPolicy.model_validate({"customers": {name: {"blocked": True}}}
                                                ).customers


@pytest.mark.parametrize("name", ["x/../y", "a/b/c", "acme/", "/alice", "\u0430cme",
                                  "team:/alice", "ac me", "ac\u200bme"])
def test_the_policy_refuses_what_is_no_caller_id(name: str) -> None:
    with pytest.raises(ValueError, match="a caller id is ID, team:ID"):
        ServingPolicy.model_validate({"customers": {name: {"blocked": True}}})


def test_two_spellings_of_one_caller_in_a_policy_are_refused() -> None:
    with pytest.raises(ValueError, match="'team:acme/Bob' and 'TEAM:ACME/bob' name the same"):
        ServingPolicy.model_validate({"customers": {"team:acme/Bob": {}, "TEAM:ACME/bob": {}}})


def test_policy_and_request_are_normalised_the_same_way() -> None:
    for spelling in EVASIONS:
        assert normalise(spelling) == ("acme", True), spelling
    assert parse_customer_id("Team:ACME/Alice") == parse_customer_id("team:acme/alice")
    assert normalise("\u674e") == ("\u674e", False)
    assert normalise("\u200b \t") is None


class _BrokenRedis:
    """What LiteLLM's RedisCache gives when its server is gone: scripts that raise."""

    redis_kwargs = {"host": "127.0.0.1", "port": 1}

    def async_register_script(self, script: str) -> Any:
        async def run(keys: Any, args: Any, client: Any = None) -> Any:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return run


def test_a_failing_redis_counts_in_the_process_and_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nroutes:\n  chat: {}\ncustomers:\n"
                    "  victim: {max_requests_per_minute: 2}\n  blocked: {blocked: true}\n")
    hook = PolicyHook(path, redis=_BrokenRedis())
    with caplog.at_level(logging.INFO, logger="bot_litellm_hook"):
        assert [status(hook, VICTIM) for _ in range(3)] == [200, 200, 429]
    failed = [r for r in caplog.records if "shared Redis failed" in r.getMessage()]
    assert len(failed) == 1 and "Connection refused" in failed[0].getMessage()
    assert status(hook, SimpleNamespace(team_id="blocked", token="t", user_id=None,
                                        end_user_id=None)) == 403  # blocks need no Redis


def test_customer_actions_take_namespaced_ids() -> None:
    from actions.catalog import get_action
    from bot.base.errors import InputError

    act = get_action("throttle_customer")
    plan = act.plan({"customer": "key:ab12/alice", "max_requests_per_minute": 5},
                    ServingPolicy(), target="litellm")
    assert "customer/key:ab12/alice" in str(plan.model_dump())
    with pytest.raises(InputError, match="not a caller id"):
        act.plan({"customer": "key:ab12/ali ce", "max_requests_per_minute": 5},
                 ServingPolicy(), target="litellm")
