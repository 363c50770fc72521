"""The release guard on the sandbox: how fast a bad canary is rolled back, what it
cost, and how often the judge is wrong.

Run: ``python bench/bench_release.py [--rate 100] [--trials 20]``.

1. **Time to rollback**, on the whole loop: the sandbox (its own process, real
   time), a real Prometheus scraping it every second, and `llm-incident` (CLI
   `release start`, then `tick` every second as `serve`'s poll would). A prompt
   version that doubles output tokens goes out at the default first step (5%) with
   the default thresholds, under ``--rate`` requests per second of traffic.
   Prints the time from the release's start to the rollback (the bench's loop:
   one second of traffic, then `tick` and `release status` as CLI processes, so
   the real request rate is lower than ``--rate``), the share and number of
   requests that saw the bad version (what the judge needs: ``min_samples`` on
   the canary), and the tokens it wasted, against
   what the same fault would cost if it had gone to all traffic and waited for a
   post-rollout alert (the runaway-cost rule's 10 minutes).
2. **Error rates**: ``--trials`` good and ``--trials`` bad canaries (5% of 8,000
   requests each, a new prompt version per trial) judged on every signal of the sandbox's own
   per-version histograms with the default thresholds: false rollbacks (good
   ones rolled back) and misses (bad ones not rolled back). Goal: 0 and 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from integration.services import free_port, spawn, start_prometheus  # noqa: E402

from bot.core.canary_judge import judge  # noqa: E402
from bot.core.canary_samples import Version  # noqa: E402
from bot.playbook.canary_thresholds import load_thresholds  # noqa: E402
from drills.release_phase import ScrapeSamples  # noqa: E402
from drills.sandbox.traffic import generate  # noqa: E402
from drills.signals import Scrape, parse_scrape  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the two scrapes of a trial: T0 and a minute on
ALERT_DELAY_S = 600  # what a post-rollout runaway-cost alert takes (the rule's `for`)


def counts(url: str, route: str) -> dict[str, tuple[float, float]]:
    """Per prompt version of ``route``: (completions, output tokens) so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("route") != route:
                continue
            pv = s.labels.get("prompt_version", "")
            if s.name == "llm_app_output_tokens_count":
                out.setdefault(pv, [0.0, 0.0])[0] += s.value
            elif s.name == "llm_app_output_tokens_sum":
                out.setdefault(pv, [0.0, 0.0])[1] += s.value
    return {pv: (n, tokens) for pv, (n, tokens) in out.items()}


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.adapters.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def sandbox(work: Path, policy: dict[str, Any], time_scale: str) -> Any:
    path = work / "serving-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    port = free_port()
    return spawn("sandbox", [sys.executable, "-m", "drills.sandbox", "--port", str(port),
                             "--policy", str(path), "--time-scale", time_scale, "--seed", "4"],
                 work, f"http://127.0.0.1:{port}", ready_path="/health", cwd=ROOT), path


def time_to_rollback(rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-release-") as tmp:
        work = Path(tmp)
        box, policy = sandbox(work, {"version": 1, "routes": {
            "chat": {"prompt_version": "v42"}, "chat-small": {}, "chat-long": {}}}, "0")
        try:
            fault = {"kind": "token_blowup", "route": "chat", "prompt_version": "v43",
                     "factor": 2}
            httpx.post(f"{box.url}/faults", json=fault, timeout=5).raise_for_status()
            with start_prometheus(work / "prometheus",
                                  targets=[box.url.removeprefix("http://")]) as prom:
                env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_INCIDENT_")}
                env |= {"LLM_INCIDENT_DB": str(work / "bot.db"),
                        "LLM_INCIDENT_POLICY": str(policy),
                        "LLM_INCIDENT_PROMETHEUS_URL": prom.url, "LLM_INCIDENT_USER": "bench"}
                start = cli(env, "release", "start", "chat", "--prompt", "v43")
                if start.returncode != 0:
                    raise SystemExit(start.stderr + start.stdout)
                t0 = time.time()
                while True:
                    asyncio.run(generate(box.url, routes=["chat"], rate_per_s=rate,
                                         duration_s=1.0))
                    cli(env, "tick")
                    status = json.loads(cli(env, "release", "status", "REL-1", "--json").stdout)
                    if status["state"] != "canary" or time.time() - t0 > 900:
                        break
                took = time.time() - t0
                seen = counts(box.url, "chat")
        finally:
            box.stop()
        canary_n, canary_tokens = seen.get("v43", (0.0, 0.0))
        base_n, base_tokens = seen.get("v42", (0.0, 0.0))
    print(f"time to rollback at 5% (default thresholds, {rate:g} req/s): {took:.1f} s "
          f"(state {status['state']})")
    total = canary_n + base_n
    base_mean = base_tokens / base_n if base_n else 0.0
    wasted = canary_tokens - canary_n * base_mean
    # The same fault on all traffic until a post-rollout alert fires and is acted on.
    alert_wasted = rate * ALERT_DELAY_S * base_mean
    print(f"  requests that saw the bad version: {int(canary_n)} of {int(total)} "
          f"({canary_n / total:.1%})")
    print(f"  tokens wasted: {wasted:,.0f} (vs about {alert_wasted:,.0f} if it had gone to all "
          f"traffic and waited {ALERT_DELAY_S // 60} minutes for the post-rollout alert)")


def error_rates(trials: int) -> None:
    thresholds = load_thresholds()
    false_rollbacks = false_holds = misses = signals = 0
    with tempfile.TemporaryDirectory(prefix="bench-judge-") as tmp:
        work = Path(tmp)
        box, policy = sandbox(work, {"version": 1, "routes": {
            "chat": {"prompt_version": "v42"}, "chat-small": {}, "chat-long": {}}}, "0")
        try:
            for trial in range(2 * trials):
                bad = trial % 2 == 1
                version = f"v{100 + trial}"
                if bad:
                    httpx.post(f"{box.url}/faults", json={
                        "kind": "token_blowup", "route": "chat", "prompt_version": version,
                        "factor": 2}, timeout=5).raise_for_status()
                reader = ScrapeSamples()
                reader.record(T0, _scrape(box.url))
                policy.write_text(yaml.safe_dump({"version": 1, "routes": {
                    "chat": {"prompt_version": "v42", "canary": {
                        "prompt_version": version, "weight": 0.05}},
                    "chat-small": {}, "chat-long": {}}}))
                time.sleep(0.05)
                asyncio.run(generate(box.url, routes=["chat"], rate_per_s=4000,
                                     duration_s=2.0))
                reader.record(T0 + timedelta(minutes=1), _scrape(box.url))
                samples = asyncio.run(reader(Version("chat", version), Version("chat", "v42"),
                                             timedelta(minutes=1)))
                signals = max(signals, len(samples))
                decision = judge(thresholds.for_route("chat"), samples,
                                 alpha=thresholds.alpha).decision
                false_rollbacks += (not bad) and decision == "rollback"
                false_holds += (not bad) and decision == "hold"
                misses += bad and decision != "rollback"
        finally:
            box.stop()
    print(f"judge over {trials} good and {trials} bad canaries (5% of ~8,000 requests, a "
          f"prompt that doubles output tokens; all {signals} signals judged): "
          f"{false_rollbacks} false rollbacks, {false_holds} false holds, {misses} misses")


def _scrape(url: str) -> Scrape:
    return parse_scrape(httpx.get(f"{url}/metrics", timeout=10).text, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    time_to_rollback(args.rate)
    error_rates(args.trials)


if __name__ == "__main__":
    main()
