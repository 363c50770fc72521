"""Injection to mitigation on the end-to-end loop (runaway cost), split where the time goes.

Run: ``python bench/bench_e2e.py [--rounds N]`` (needs the Debian packages
``prometheus`` and ``prometheus-alertmanager``). Each round starts the rig of
``tests/e2e/conftest.py`` afresh (sandbox, real Prometheus with the fast rules:
1s scrapes, 10s rate windows, ``for: 2s``; real Alertmanager with 1s group
wait; the bot serving over HTTP with Slack in HTTP mode against the Web API
stub), warms up, injects the runaway-cost fault, and scripts the two on-call
clicks the moment their buttons appear. It prints, from wall-clock timestamps
(all processes on one machine):

* detection, split in two: injection -> Prometheus' ``activeAt`` for the alert
  (scrapes and the rate window reaching the threshold, rule evaluation), and
  ``activeAt`` -> the bot's ``received_at`` of the alert (the ``for:`` wait,
  Prometheus -> Alertmanager, group wait, the webhook);
* the bot's share: alert received -> suggestion posted to Slack (matching,
  diagnose queries against Prometheus, the notifier's pacing), and the clicks:
  suggestion -> Run step clicked (the script's polling), click -> Approve
  button posted, Approve clicked -> mitigation applied (policy file written).

One round per rig: the playbook's cooldown would refuse a second cap on the
same route within 15 minutes, as it should in production.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # e2e.rig and integration.services

SCENARIO = "runaway-cost"
STEP_TIMEOUT = 90.0
POLL_S = 0.05  # the scripted engineer's reaction time, at most


def load_rig() -> Any:
    """The e2e rig (tests/e2e/rig.py): one implementation of the loop for tests and bench."""
    from e2e import rig

    return rig


def wait(check: Any, what: str) -> Any:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(POLL_S)
    raise SystemExit(f"gave up waiting {STEP_TIMEOUT:g}s for {what}")


def ts(value: str | datetime) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def one_round(e2e: Any, workdir: Path) -> dict[str, float]:
    from drills.scenario import SCENARIOS_DIR, load_scenarios

    sc = load_scenarios(SCENARIOS_DIR)[SCENARIO]
    alertname, playbook, fault = sc.expect.alertname, sc.expect.playbook, sc.injection.fault
    with e2e.SandboxRig(workdir) as rig:
        prom, bot, slack = rig.prometheus.url, rig.bot, rig.slack
        step = sc.expect.step or bot.engine.registry.get(playbook).steps[0].id
        _, limit = e2e.threshold_of_alert(rig.rules, alertname)
        e2e.write_policy(rig.policy, sc.setup.policy)
        traffic = rig.sandbox.traffic(sc.traffic.routes)
        started = time.monotonic()
        try:
            def warm() -> bool:
                value = e2e.prom_value(prom, sc.steady_state.query)
                return (time.monotonic() - started > e2e.WINDOW_S + 2 and value is not None
                        and value < limit and not e2e.prom_alerts(prom, alertname, "pending"))

            wait(warm, "a healthy warm-up")
            e2e.patch_policy(rig.policy, sc.injection.policy)
            t_inject = time.time()
            rig.sandbox.add_fault(fault.body())

            top, run_button = wait(lambda: slack.top_message(playbook, step), "the suggestion")
            t_run_click = time.time()
            slack.click(e2e.ONCALL[0], run_button, top.ts)
            incident_id = run_button.value.split(":")[0]
            (run,) = wait(lambda: bot.store.runs(incident_id=incident_id), "the planned run")
            reply, approve = wait(lambda: slack.thread_button(top.ts, "approve", run.id),
                                  "the Approve button")
            t_approve_click = time.time()
            slack.click(e2e.ONCALL[1], approve, reply.ts)
            mitigation = wait(lambda: bot.store.mitigation(run.id), "the mitigation applied")

            alert = next(a for a in bot.store.alerts_for(incident_id) if a.alertname == alertname)
            fired = wait(lambda: e2e.prom_alerts(prom, alertname), "the alert in Prometheus")
            return {
                "inject": t_inject,
                "active": ts(fired[0]["activeAt"]),
                "received": ts(alert.received_at),
                "suggested": top.at,
                "run_click": t_run_click,
                "approve_posted": reply.at,
                "approve_click": t_approve_click,
                "applied": ts(mitigation.applied_at),
            }
        finally:
            traffic.cancel()
            rig.sandbox.clear_faults()


SPANS = [
    ("detection: injection -> Prometheus activeAt", "inject", "active"),
    ("detection: activeAt -> bot received the alert", "active", "received"),
    ("detection total: injection -> alert received", "inject", "received"),
    ("bot: alert received -> suggestion posted", "received", "suggested"),
    ("script: suggestion posted -> Run step clicked", "suggested", "run_click"),
    ("bot: Run step clicked -> Approve button posted", "run_click", "approve_posted"),
    ("bot: Approve clicked -> mitigation applied", "approve_click", "applied"),
    ("bot total: alert received -> mitigation applied", "received", "applied"),
    ("end to end: injection -> mitigation applied", "inject", "applied"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1, help="fresh rigs, one loop each")
    args = p.parse_args(argv)
    missing = [b for b in ("prometheus", "prometheus-alertmanager") if not shutil.which(b)]
    if missing:
        print(f"error: install the Debian packages {', '.join(missing)}", file=sys.stderr)
        return 2
    e2e = load_rig()
    rounds = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
            rounds.append(one_round(e2e, Path(tmp)))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    print(f"runaway cost, {args.rounds} round(s); fast rules: {e2e.WINDOW} windows, "
          f"for {e2e.FOR}, 1s scrape/evaluation, Alertmanager group_wait 1s")
    for label, start, end in SPANS:
        values = [r[end] - r[start] for r in rounds]
        extra = (f"  (min {min(values):.2f}s, max {max(values):.2f}s)"
                 if len(values) > 1 else "")
        print(f"  {label:<50} {statistics.median(values):6.2f}s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
