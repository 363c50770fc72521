"""How matching cost grows with the number of playbooks: indexed vs a linear scan.

Run: ``python bench/bench_match.py``. Prints the time per alert for 10, 100 and
1,000 synthetic playbooks and the 1,000/10 ratio for both strategies. The set
looks like a real one: most playbooks key on their own alertnames plus an
``incident_class`` label, some add a route or environment in ``all``, and about
2% are regex-only (the index cannot narrow those; they are checked every time).
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.intake.alert import Alert  # noqa: E402
from bot.playbook.matcher import Matcher  # noqa: E402
from bot.playbook.schema import INCIDENT_CLASSES, Playbook  # noqa: E402

SIZES = (10, 100, 1000)
ROUTES = ("chat", "chat-small", "embed", "summarize", "extract", "rag-answer")


def synthetic_playbooks(n: int, rng: random.Random) -> list[Playbook]:
    books = []
    regex_only = max(1, n // 50)
    for i in range(n):
        cls = INCIDENT_CLASSES[i % len(INCIDENT_CLASSES)]
        if i < regex_only:
            match = {"all": [{"label": "alertname", "regex": f"LLM.*Rule{i}.*"}]}
        else:
            match = {
                "any": [
                    {"alertname": f"LLMRule{i}High"},
                    {"alertname": f"LLMRule{i}Surge"},
                    {"label": "team_rule", "equals": f"rule-{i}"},
                ],
                "all": [],
            }
            if rng.random() < 0.4:
                match["all"].append({"label": "route", "in": rng.sample(ROUTES, 2)})
            if rng.random() < 0.2:
                match["all"].append({"label": "env", "regex": "prod|production"})
        books.append(
            Playbook.model_validate(
                {
                    "id": f"pb-{i:04d}",
                    "title": f"Synthetic {cls} {i}",
                    "class": cls,
                    "severity": rng.choice(["critical", "high", "warning", "info"]),
                    "match": match,
                    "steps": [{"id": "s1", "title": "cap", "action": "cap_output_length"}],
                }
            )
        )
    return books


def realistic_alert() -> Alert:
    labels = {
        "alertname": "LLMRule7High",
        "incident_class": INCIDENT_CLASSES[7 % len(INCIDENT_CLASSES)],
        "route": "chat",
        "requested_model": "chat",
        "env": "prod",
        "severity": "critical",
        "team": "ml-platform",
        "instance": "gateway-3:4000",
        "job": "litellm",
    }
    return Alert(
        source="alertmanager",
        fingerprint="bench",
        status="firing",
        labels=labels,
        starts_at=datetime(2026, 11, 29, tzinfo=UTC),
    )


def per_alert_seconds(fn, alert: Alert, budget: float = 0.5) -> float:
    """Best of 5 rounds, each as many calls as fit the budget (noise-resistant)."""
    calls = 1
    while True:  # calibrate
        start = time.perf_counter()
        for _ in range(calls):
            fn(alert)
        if time.perf_counter() - start > budget / 5:
            break
        calls *= 2
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn(alert)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    rng = random.Random(7)
    alert = realistic_alert()
    indexed: dict[int, float] = {}
    linear: dict[int, float] = {}
    print(f"{'playbooks':>10} {'indexed µs/alert':>18} {'linear µs/alert':>17} {'matches':>8}")
    for n in SIZES:
        matcher = Matcher(synthetic_playbooks(n, rng))
        found = matcher.match(alert)
        assert [r.playbook.id for r in found] == [
            r.playbook.id for r in matcher.match_linear(alert)
        ]
        indexed[n] = per_alert_seconds(matcher.match, alert)
        linear[n] = per_alert_seconds(matcher.match_linear, alert)
        print(f"{n:>10} {indexed[n] * 1e6:>18.1f} {linear[n] * 1e6:>17.1f} {len(found):>8}")
    lo, hi = SIZES[0], SIZES[-1]
    print(f"indexed {hi}/{lo} ratio: {indexed[hi] / indexed[lo]:.1f}x (playbooks: {hi // lo}x)")
    print(f"linear  {hi}/{lo} ratio: {linear[hi] / linear[lo]:.1f}x")


if __name__ == "__main__":
    main()
