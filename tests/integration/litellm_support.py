"""The real LiteLLM proxy for the integration and e2e tiers: started through
``litellm_proxy``'s launcher (imports once, forks a fresh proxy per start).

Test modules import these as ``integration.litellm_support``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from integration.services import free_port

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("litellm_proxy.py")
READY_TIMEOUT = 120.0  # a cold import of the proxy is slow on a loaded 2-core machine


def require_litellm() -> None:
    # find_spec of "litellm" does not import it (importing without the offline
    # cost-map setting would try the network); the proxy ships as a subpackage.
    spec = importlib.util.find_spec("litellm")
    if spec and spec.origin and (Path(spec.origin).parent / "proxy" / "proxy_cli.py").exists():
        return
    message = (
        "litellm[proxy] is not installed; `pip install -e '.[litellm]'` "
        "(tests/run.sh does) to run the LiteLLM integration tests"
    )
    if os.environ.get("LLM_INCIDENT_REQUIRE_INTEGRATION") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class Proxy:
    """The launcher process and the proxy child it forks; ``restart()`` is the driver's reload."""

    def __init__(self, workdir: Path, config: Path, key: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = workdir / "litellm.log"
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no cost-map download
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        }
        self.launcher = subprocess.Popen(
            [sys.executable, str(LAUNCHER), str(config), "127.0.0.1", str(self.port), str(self.log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(workdir / "launcher.log", "wb"),  # noqa: SIM115 - lives as long as the launcher
            env=env,
            cwd=workdir,
            text=True,
        )
        self.child: int | None = None
        self.start_times: list[float] = []

    def _say(self, command: str) -> str:
        assert self.launcher.stdin is not None and self.launcher.stdout is not None
        self.launcher.stdin.write(command + "\n")
        self.launcher.stdin.flush()
        answer = self.launcher.stdout.readline()
        if not answer:
            pytest.fail(f"the LiteLLM launcher died:\n{self.log_tail()}", pytrace=False)
        return answer.strip()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        began = time.monotonic()
        self.child = int(self._say("start").split()[1])
        deadline = began + READY_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/readiness", timeout=2).status_code == 200:
                    self.start_times.append(time.monotonic() - began)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"LiteLLM proxy not ready after {READY_TIMEOUT:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.child is not None:
            self._say("stop")
            self.child = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.launcher.stdin:
            self.launcher.stdin.close()  # EOF: the launcher stops the child and exits
        try:
            self.launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.launcher.kill()
            self.launcher.wait(timeout=10)
            if self.child is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child, 9)
