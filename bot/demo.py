"""`llm-incident demo`: the whole guarded loop on the embedded defaults, in one go.

A runaway-cost alert arrives as an Alertmanager webhook; the bot matches it,
plans the first step of the playbook as a diff, refuses to apply it without an
approval, applies it once a second engineer approves, and reverts it. Every
step goes through the same command layer as the CLI and Slack, so what is
printed is what an on-call engineer would see.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import yaml

from bot.commands import Result, execute
from bot.settings import Settings

DEMO_POLICY = {
    "version": 1,
    "routes": {
        "chat": {"max_output_tokens": 1024, "max_concurrency": 32, "fallback": None,
                 "traffic": {"chat-large": 1.0}},
        "chat-small": {"max_output_tokens": 512},
    },
}

DEMO_ALERT = {
    "version": "4",
    "groupKey": '{}:{alertname="LLMCostBurnRateHigh"}',
    "status": "firing",
    "receiver": "llm-incident",
    "groupLabels": {"alertname": "LLMCostBurnRateHigh"},
    "commonLabels": {},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager.local",
    "alerts": [{
        "status": "firing",
        "labels": {"alertname": "LLMCostBurnRateHigh", "route": "chat", "model": "chat-large",
                   "severity": "critical", "incident_class": "runaway_cost"},
        "annotations": {"summary": "chat is spending 5x its hourly budget",
                        "hourly_budget_usd": "20"},
        "startsAt": "2026-11-29T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": "demo-runaway-cost",
    }],
}


async def run_demo(settings: Settings, *, say=print) -> Result:
    from bot.cli import make_context  # the CLI's own context: same verbs, same output

    workdir = Path(tempfile.mkdtemp(prefix="llm-incident-demo-"))
    policy = workdir / "serving-policy.yaml"
    policy.write_text(yaml.safe_dump(DEMO_POLICY, sort_keys=False))
    alert = workdir / "alertmanager-webhook.json"
    alert.write_text(json.dumps(DEMO_ALERT, indent=2))
    settings = replace(settings, db_path=workdir / "llm-incident.db", policy_path=policy,
                       targets_file=None, prometheus_url=None)
    ctx = make_context(settings)

    async def step(title: str, line: str, actor: str) -> Result:
        say(f"\n== {title}\n$ llm-incident {line}   (as {actor})")
        ctx.actor = actor
        result = await execute(line, ctx)
        say(result.text)
        return result

    say(f"Demo workspace: {workdir} (SQLite store, serving-policy file)")
    await step("An Alertmanager webhook arrives; which playbook fits?",
               f"match {alert} --explain", "alice")
    planned = await step("Plan the first step: a diff, nothing applied yet",
                         f"plan runaway-cost --alert {alert}", "alice")
    run_id = planned.data["id"]
    await step("Applying without an approval is refused by the guard",
               f"apply {run_id}", "alice")
    await step("A second on-call engineer approves", f"approve {run_id}", "bob")
    await step("Now it applies, and the serving policy changes", f"apply {run_id}", "bob")
    say(f"\n{policy} now says:\n" + policy.read_text())
    await step("Active mitigations (the TTL would revert it automatically)",
               "mitigations", "bob")
    await step("Spend is back under budget: revert", f"revert {run_id} --reason recovered",
               "bob")
    return await step("The postmortem writes itself", "postmortem INC-1", "bob")
