"""Two people promote the same release step at once: two real CLI processes, one
store (SQLite, and Postgres like the replicas use). The step moves once; the other
is told it was already promoted and exits non-zero, having changed nothing.

A policy file padded to 1,000 routes makes each write take long enough that the
second process mostly arrives while the first is still changing the target (the
claim makes it wait, then answers from what the first did); when it arrives after,
the compare-and-set on the step it was given (``--from 5%``) refuses it the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("LLM_INCIDENT_TEST_TRIALS", "3"))


class Rig:
    def __init__(self, tmp: Path, db: str) -> None:
        self.tmp = tmp
        self.policy = tmp / "policy.yaml"
        routes: dict[str, dict[str, object]] = {"chat": {"prompt_version": "v42"}}
        for i in range(1000):
            routes[f"pad-{i:04d}"] = {"max_output_tokens": 512, "prompt_version": f"v{i}"}
        self.policy.write_text(yaml.safe_dump({"version": 1, "routes": routes}))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
        # The guard needs a Prometheus to judge on; promoting by hand never asks it.
        self.env |= {"LLM_INCIDENT_DB": db, "LLM_INCIDENT_POLICY": str(self.policy),
                     "LLM_INCIDENT_USER": "alice",
                     "LLM_INCIDENT_PROMETHEUS_URL": "http://127.0.0.1:9/"}

    def start(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "bot.adapters.cli", *argv], env=self.env,
                                cwd=self.tmp, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], env=self.env,
                             cwd=self.tmp, text=True, capture_output=True, timeout=180)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    def canary_weight(self) -> float:
        return float(yaml.safe_load(self.policy.read_text())["routes"]["chat"]["canary"]
                     ["weight"])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_promotes_of_one_step_at_once_advance_it_once(tmp_path, backend, request):
    db = str(tmp_path / "bot.db") if backend == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    rig = Rig(tmp_path, db)
    for trial in range(1, TRIALS + 1):
        rel = f"REL-{trial}"
        rig.cli("release", "start", "chat", "--prompt", f"v{43 + trial}")
        both = [rig.start("release", "promote", rel, "--from", "5%", "--as", who)
                for who in ("bob", "carol")]
        outs = [(p.wait(timeout=180), *p.communicate()) for p in both]
        codes = sorted(code for code, _, _ in outs)
        assert codes[0] == 0 and codes[1] != 0, outs
        (loser,) = [err + out for code, out, err in outs if code != 0]
        assert f"{rel} already promoted to 25% (you saw 5%); nothing changed" in loser, outs
        status = json.loads(rig.cli("release", "status", rel, "--json").stdout)
        assert status["percent"] == 25, status
        kinds = [e["kind"] for e in status["timeline"]]
        assert kinds.count("promoted_step") == 1, kinds
        assert rig.canary_weight() == 0.25
        rig.cli("release", "rollback", rel, "--reason", "next trial")
