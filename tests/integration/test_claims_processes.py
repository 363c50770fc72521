"""Two processes, one run: real CLI processes racing and killed with SIGKILL.

A policy file padded to 1,000 routes makes each write take long enough for the
races and kills to land inside apply and revert. Each trial checks the store's
timeline and the file: exactly one change, nothing undone, no anomalous event,
and after a kill the next command (``tick``) leaves store and file consistent.

CI runs a few trials of each; ``LLM_INCIDENT_TEST_TRIALS`` sets the races and
``LLM_INCIDENT_TEST_KILLS`` the kills (the issue note quotes 20 races of each pair
and 50 kills each during apply and revert).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("LLM_INCIDENT_TEST_TRIALS", "4"))
KILLS = int(os.environ.get("LLM_INCIDENT_TEST_KILLS", "4"))
HEADER = "# the serving policy: edited by people and by llm-incident\n"


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.policy = tmp / "policy.yaml"
        routes: dict[str, dict[str, object]] = {"chat": {"max_output_tokens": 1024}}
        for i in range(1000):
            routes[f"pad-{i:04d}"] = {"max_output_tokens": 512, "prompt_version": f"v{i}"}
        self.original = HEADER + yaml.safe_dump({"version": 1, "routes": routes})
        self.policy.write_text(self.original)
        self.db = tmp / "bot.db"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
        self.env |= {"LLM_INCIDENT_DB": str(self.db), "LLM_INCIDENT_POLICY": str(self.policy),
                     "LLM_INCIDENT_USER": "alice", "LLM_INCIDENT_MAX_ACTIVE": "1000"}

    def start(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "bot.adapters.cli", *argv], env=self.env,
                                cwd=self.tmp, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], env=self.env,
                              cwd=self.tmp, text=True, capture_output=True, timeout=120)

    def planned(self, tokens: int, *, approve: bool = True) -> str:
        """A fresh run capping route chat (approved, ready to apply)."""
        out = self.cli("do", "cap_output_length", "chat", f"max_output_tokens={tokens}",
                       "--as", "alice", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        run_id = yaml.safe_load(out.stdout)["id"]
        if approve:
            ok = self.cli("approve", run_id, "--as", "bob")
            assert ok.returncode == 0, ok.stdout + ok.stderr
        return str(run_id)

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(sql, args).fetchall()

    def kinds(self, run_id: str) -> Counter[str]:
        return Counter(k for (k,) in self.query(
            "SELECT kind FROM events WHERE run_id = ? ORDER BY id", run_id))

    def state(self, run_id: str) -> str:
        return str(self.query("SELECT state FROM runs WHERE id = ?", run_id)[0][0])

    def active(self, run_id: str) -> bool:
        rows = self.query("SELECT reverted_at FROM mitigations WHERE run_id = ?", run_id)
        return bool(rows) and rows[0][0] is None

    def tokens(self) -> int:
        return int(yaml.safe_load(self.policy.read_text())["routes"]["chat"]["max_output_tokens"])


def _both(a: subprocess.Popen[str], b: subprocess.Popen[str]) -> list[tuple[int, str]]:
    out = []
    for p in (a, b):
        stdout, stderr = p.communicate(timeout=300)
        out.append((p.returncode, stdout + stderr))
    return out


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def _check_one_change(rig: Rig, run_id: str, results: list[tuple[int, str]], tokens: int) -> None:
    for code, text in results:
        assert code == 0, text  # both users see the change in place, neither an error
        assert "applied" in text, text
    kinds = rig.kinds(run_id)
    assert kinds["applying"] == 1 and kinds["applied"] == 1, kinds
    assert not kinds["failed"] and not kinds["reconciled"], kinds
    assert rig.state(run_id) == "applied" and rig.active(run_id)
    assert rig.tokens() == tokens


def test_two_applies_of_one_run_change_the_target_once(rig: Rig):
    for trial in range(TRIALS):
        run_id = rig.planned(200 + trial)
        results = _both(rig.start("apply", run_id, "--as", "bob"),
                        rig.start("apply", run_id, "--as", "carol"))
        _check_one_change(rig, run_id, results, 200 + trial)
        assert rig.cli("revert", run_id, "--as", "bob").returncode == 0


def test_approve_and_apply_twice_at_once(rig: Rig):
    for trial in range(TRIALS):
        run_id = rig.planned(300 + trial, approve=False)
        results = _both(rig.start("approve", run_id, "--as", "bob", "--apply"),
                        rig.start("approve", run_id, "--as", "carol", "--apply"))
        _check_one_change(rig, run_id, results, 300 + trial)
        assert rig.cli("revert", run_id, "--as", "bob").returncode == 0


def test_apply_beside_another_verb_is_never_undone(rig: Rig):
    # `tick` settles crash-left claims: a live process's claim must be left alone.
    for trial in range(TRIALS):
        run_id = rig.planned(400 + trial)
        apply = rig.start("apply", run_id, "--as", "bob")
        time.sleep(random.uniform(0.0, 0.4))
        other = rig.start("tick", "--as", "carol")
        results = _both(apply, other)
        assert results[1][0] == 0, results[1][1]
        _check_one_change(rig, run_id, results[:1], 400 + trial)
        assert rig.cli("revert", run_id, "--as", "bob").returncode == 0


def test_two_reverts_of_one_run_put_it_back_once(rig: Rig):
    for trial in range(TRIALS):
        run_id = rig.planned(500 + trial)
        assert rig.cli("apply", run_id, "--as", "bob").returncode == 0
        results = _both(rig.start("revert", run_id, "--as", "bob"),
                        rig.start("revert", run_id, "--as", "carol"))
        for code, text in results:
            assert code == 0 and "reverted" in text, text
        kinds = rig.kinds(run_id)
        assert kinds["reverting"] == 1 and kinds["reverted"] == 1, kinds
        assert not kinds["revert_failed"] and not kinds["reconciled"], kinds
        assert rig.state(run_id) == "reverted" and not rig.active(run_id)
        assert rig.tokens() == 1024


def _kill_when(rig: Rig, proc: subprocess.Popen[str], run_id: str, state: str) -> bool:
    """SIGKILL ``proc`` once the run is in ``state`` (plus a random slice of the write)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if rig.state(run_id) == state:
                time.sleep(random.uniform(0.0, 0.15))
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                return True
        except sqlite3.OperationalError:
            pass  # the writer holds the lock this instant
        time.sleep(0.002)
    proc.communicate()
    return False


def _consistent(rig: Rig, run_id: str) -> str:
    """After the next command: store and file agree, and the file is whole."""
    state = rig.state(run_id)
    assert state in ("applied", "failed", "reverted"), state
    tokens = rig.tokens()  # parses: a kill never leaves half a file
    if state == "applied":
        assert rig.active(run_id) and tokens != 1024
    else:
        assert not rig.active(run_id) and tokens == 1024
    return state


def test_kill_9_during_apply_is_settled_by_the_next_command(rig: Rig):
    seen: Counter[str] = Counter()
    for trial in range(KILLS):
        run_id = rig.planned(600 + trial)
        killed = _kill_when(rig, rig.start("apply", run_id, "--as", "bob"), run_id, "applying")
        tick = rig.cli("tick", "--as", "carol")
        assert tick.returncode == 0, tick.stdout + tick.stderr
        state = _consistent(rig, run_id)
        seen[f"{'killed' if killed else 'finished'}->{state}"] += 1
        if state == "applied":
            assert rig.cli("revert", run_id, "--as", "bob").returncode == 0
            assert rig.policy.read_text() == rig.original
    print("apply kills:", dict(seen))


def test_kill_9_during_revert_is_finished_by_the_next_command(rig: Rig):
    seen: Counter[str] = Counter()
    for trial in range(KILLS):
        run_id = rig.planned(700 + trial)
        assert rig.cli("apply", run_id, "--as", "bob").returncode == 0
        proc = rig.start("revert", run_id, "--as", "bob")
        killed = _kill_when(rig, proc, run_id, "reverting")
        tick = rig.cli("tick", "--as", "carol")
        assert tick.returncode == 0, tick.stdout + tick.stderr
        state = _consistent(rig, run_id)
        assert state == "reverted"  # the revert was wanted: it is finished, never undone
        assert rig.policy.read_text() == rig.original
        kinds = rig.kinds(run_id)
        assert kinds["reverted"] + kinds["reconciled"] >= 1 and kinds["reverting"] == 1
        seen[f"{'killed' if killed else 'finished'}"] += 1
    print("revert kills:", dict(seen))


@pytest.mark.parametrize("trial", range(TRIALS))
def test_two_processes_promoting_one_release_move_it_one_step(tmp_path: Path, trial: int):
    """CLI processes racing `release promote` on one release: one step, one change."""
    rig = Rig(tmp_path)
    # The padded file (1,000 routes): each write takes long enough for the race to land.
    data = yaml.safe_load(rig.policy.read_text())
    data["routes"]["chat"]["prompt_version"] = "v42"
    rig.policy.write_text(HEADER + yaml.safe_dump(data))
    # The guard needs Prometheus to judge; promote never reads it.
    rig.env["LLM_INCIDENT_PROMETHEUS_URL"] = "http://127.0.0.1:1"
    started = rig.cli("release", "start", "chat", "--prompt", "v43")
    assert started.returncode == 0, started.stderr
    racers = [rig.start("release", "promote", "REL-1", "--as", who) for who in ("alice", "bob")]
    outs = [p.communicate(timeout=120) for p in racers]
    codes = [p.returncode for p in racers]
    status = yaml.safe_load(rig.cli("release", "status", "REL-1", "--json").stdout)
    assert status["percent"] == 25, (codes, outs)  # one step, not two
    assert codes.count(0) >= 1, outs
    canary = yaml.safe_load(rig.policy.read_text())["routes"]["chat"]["canary"]
    assert canary["weight"] == 0.25 and canary["prompt_version"] == "v43"
    with sqlite3.connect(rig.db) as conn:
        applied = conn.execute("SELECT COUNT(*) FROM runs WHERE action = 'set_canary' AND "
                               "state IN ('applied', 'reverted')").fetchone()[0]
    assert applied == 2  # the start (5%) and one promotion (25%)
    moved = [e for e in status["timeline"] if e["kind"] == "promoted_step"]
    assert len(moved) == 1
