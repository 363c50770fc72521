"""The LiteLLM proxy pre-call hook that enforces the serving policy file.

List it in the proxy's config (see the README, "LiteLLM proxy")::

    litellm_settings:
      callbacks: ["bot_litellm_hook.policy_hook"]
      llm_incident_policy_file: /etc/llm-incident/serving-policy.yaml

It lives outside ``bot`` and ``actions`` on purpose: it runs inside the proxy
process, imports only the policy model and litellm, and never the bot.
"""

import logging
import sys

from bot_litellm_hook.hook import SETTING_KEY, PolicyHook, RouteDecision, decide

if "litellm.proxy.proxy_server" in sys.modules and not logging.getLogger().handlers:
    # Inside the proxy nothing shows our log lines (LiteLLM gives only its own loggers a
    # handler); what the hook enforces, and where it counts, must reach the proxy's log.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s - llm-incident hook:%(levelname)s: "
                                            "%(message)s", "%H:%M:%S"))
    _log = logging.getLogger("bot_litellm_hook")
    if not _log.handlers:
        _log.addHandler(_handler)
        _log.setLevel(logging.INFO)

# The instance LiteLLM loads by name (``bot_litellm_hook.policy_hook``).
policy_hook = PolicyHook()

__all__ = ["SETTING_KEY", "PolicyHook", "RouteDecision", "decide", "policy_hook"]
