"""The practice serving gateway: OpenAI-compatible, policy-driven, with injectable faults.

``create_app(config, policy_path)`` builds it in-process; ``python -m drills.sandbox
--port 4000 --policy FILE`` runs it; ``drills.sandbox.traffic.generate`` feeds it.
"""

from drills.sandbox.app import create_app
from drills.sandbox.shape import SandboxConfig, load_config

__all__ = ["SandboxConfig", "create_app", "load_config"]
