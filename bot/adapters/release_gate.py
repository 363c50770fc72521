"""The release guard's optional eval gate: a command or a URL that must pass before a
release's first step (``LLM_INCIDENT_RELEASE_GATE``).

- a command (anything not starting with ``http://`` or ``https://``) runs through
  ``sh -c`` with ``LLM_INCIDENT_RELEASE``, ``..._ROUTE``, ``..._PROMPT_VERSION`` and
  ``..._MODEL`` in its environment; exit 0 passes; its last output line is recorded;
- a URL gets ``POST`` with ``{"release", "route", "change", "baseline"}``; a 2xx
  answer passes unless its JSON says ``{"pass": false}``; the answer is recorded.

A gate that cannot be run (timeout, network error) fails closed: the release does
not start, and the release's timeline says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import httpx

from bot.store.releases import Release

TIMEOUT_S = 300.0


class CommandGate:
    def __init__(self, command: str, timeout: float = TIMEOUT_S) -> None:
        self.command, self.timeout = command, timeout

    async def check(self, release: Release) -> tuple[bool, str]:
        env = {**os.environ, "LLM_INCIDENT_RELEASE": release.id,
               "LLM_INCIDENT_RELEASE_ROUTE": release.route,
               "LLM_INCIDENT_RELEASE_PROMPT_VERSION": release.change.get("prompt_version", ""),
               "LLM_INCIDENT_RELEASE_MODEL": release.change.get("model", "")}
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", self.command, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"eval command timed out after {self.timeout:g}s"
        lines = out.decode(errors="replace").strip().splitlines()
        last = lines[-1][:300] if lines else ""
        return proc.returncode == 0, f"eval command exited {proc.returncode}: {last}".strip()


class UrlGate:
    def __init__(self, url: str, timeout: float = TIMEOUT_S,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.timeout, self._transport = url, timeout, transport

    async def check(self, release: Release) -> tuple[bool, str]:
        body = {"release": release.id, "route": release.route, "change": release.change,
                "baseline": release.baseline}
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport,
                                         trust_env=False) as client:
                resp = await client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            return False, f"eval gate {self.url} unreachable: {type(exc).__name__}"
        verdict: Any = None
        with contextlib.suppress(ValueError):  # not JSON: the status decides
            verdict = resp.json()
        passed = resp.is_success and not (isinstance(verdict, dict)
                                          and verdict.get("pass") is False)
        return passed, f"eval gate answered {resp.status_code}: {resp.text[:300]}"


def build_gate(spec: str | None) -> CommandGate | UrlGate | None:
    if not spec:
        return None
    return UrlGate(spec) if spec.startswith(("http://", "https://")) else CommandGate(spec)
