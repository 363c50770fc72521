"""The LiteLLM proxy pre-call hook that enforces the serving policy file.

List it in the proxy's config (see the README, "LiteLLM proxy")::

    litellm_settings:
      callbacks: ["bot_litellm_hook.policy_hook"]
      llm_incident_policy_file: /etc/llm-incident/serving-policy.yaml

It lives outside ``bot`` and ``actions`` on purpose: it runs inside the proxy
process, imports only the policy model and litellm, and never the bot.
"""

from bot_litellm_hook.hook import SETTING_KEY, PolicyHook, RouteDecision, decide

# The instance LiteLLM loads by name (``bot_litellm_hook.policy_hook``).
policy_hook = PolicyHook()

__all__ = ["SETTING_KEY", "PolicyHook", "RouteDecision", "decide", "policy_hook"]
