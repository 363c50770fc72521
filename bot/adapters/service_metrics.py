"""The service's own Prometheus metrics, on a registry of their own (not the global one).

Two kinds:

* request metrics the web layer updates as it goes (alerts received, webhooks
  rejected, webhook duration); they start at zero with the process, as counters do;
* state metrics computed from the store at scrape time by ``StoreCollector``, so
  they are the same after a restart: incidents by class and state, action
  outcomes, guard refusals and the pause switch.

``llm_incident_actions_total{action,result}`` counts the run-state events in the
timeline (every time a run of ``action`` reached ``result``: applied, reverted,
failed...), not the runs currently in each state: the timeline only grows, so the
counter never goes down when a run moves on from ``applied`` to ``reverted``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bot.playbook.schema import INCIDENT_CLASSES
from bot.store import PAUSE_FLAG, Store, from_text, required_time
from bot.store.migrations import RUN_STATES

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Webhooks answer in milliseconds; the upper buckets catch a store stuck on a lock.
_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


KNOWN_CLASSES = frozenset({*INCIDENT_CLASSES, "unclassified"})


def _flag(value: object) -> str:
    return "true" if value else "false"


class StoreCollector(Collector):
    """Reads the store on every scrape. A store that cannot answer yields no state
    metrics (and ``llm_incident_store_up 0``) rather than failing the whole scrape."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    def describe(self) -> list[Any]:
        return []  # computed at scrape time; no fixed description to check at register

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "llm_incident_store_up", "1 when the store answered the last scrape's queries."
        )
        try:
            families = list(self._families(self._store()))
        except Exception:  # noqa: BLE001 - a scrape must not fail because the store did
            log.exception("metrics: reading the store failed")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, store: Store) -> Iterator[Any]:
        db = store.db
        # Every label's values are bounded: classes come from the playbook schema
        # ("other" beyond: an unmatched alert's own incident_class label never makes a
        # series), and `drill` keeps rehearsals apart from production.
        incidents = GaugeMetricFamily(
            "llm_incident_incidents", "Incidents by class, state and whether a drill.",
            labels=["class", "state", "drill"],
        )
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for klass, state, is_drill, n in db.execute(
            "SELECT class, status, is_drill, COUNT(*) FROM incidents "
            "GROUP BY class, status, is_drill"
        ).fetchall():
            counts[(klass if klass in KNOWN_CLASSES else "other", state, _flag(is_drill))] += n
        for labels, n in sorted(counts.items()):
            incidents.add_metric(list(labels), n)
        yield incidents

        actions = CounterMetricFamily(
            "llm_incident_actions",
            "Times a run of an action reached a state (planned, applied, reverted, failed...), "
            "production and drill runs apart.",
            labels=["action", "result", "drill"],
        )
        states = ", ".join("?" for _ in RUN_STATES)
        result = db.json_field("e.data", "state")
        # On SQLite, CROSS JOIN keeps runs as the outer loop: each run's few events come
        # from idx_events_run, instead of a scan of every event (alerts included).
        # Postgres plans the join itself (and takes no ON after CROSS JOIN).
        join = "CROSS JOIN" if db.dialect == "sqlite" else "JOIN"
        for action, result_, scope, n in db.execute(
            f"SELECT r.action, {result}, r.scope, COUNT(*) "  # noqa: S608 - our constants
            f"FROM runs r {join} events e ON e.run_id = r.id "
            f"WHERE {result} IN ({states}) GROUP BY r.action, {result}, r.scope",
            list(RUN_STATES),
        ).fetchall():
            actions.add_metric([action, result_, _flag(scope == "drill")], n)
        yield actions

        refusals = CounterMetricFamily(
            "llm_incident_guard_refusals",
            "Steps a guard refused, by guard: at apply (guard_refused) and at plan time "
            "(a run planned as refused, e.g. by cooldown).",
            labels=["guard"],
        )
        refused: collections.Counter[str] = collections.Counter()
        for guard, n in db.execute(
            f"SELECT COALESCE({db.json_field('data', 'guard')}, 'unknown'), COUNT(*) "
            "FROM events WHERE kind = 'guard_refused' GROUP BY 1"
        ).fetchall():
            refused[guard] += n
        for guard, n in db.execute(
            f"SELECT COALESCE({db.json_field('data', 'refusals', 0, 'guard')}, 'unknown'), "
            "COUNT(*) FROM events WHERE kind = 'refused' GROUP BY 1"
        ).fetchall():
            refused[guard] += n
        for guard, n in sorted(refused.items()):
            refusals.add_metric([guard], n)
        yield refusals

        failures = CounterMetricFamily(
            "llm_incident_background_failures",
            "Work after a webhook's answer that failed (and is retried, up to 3 times), by "
            "kind: opened (announce, automatic steps), reopened, resolved, joined.",
            labels=["kind"],
        )
        for kind, n in db.execute(
            f"SELECT COALESCE({db.json_field('data', 'kind')}, 'unknown'), COUNT(*) "
            "FROM events WHERE kind = 'background_failed' GROUP BY 1"
        ).fetchall():
            failures.add_metric([kind], n)
        yield failures

        paused = GaugeMetricFamily(
            "llm_incident_paused", "1 while the global pause (kill switch) holds actions."
        )
        paused.add_metric([], 0 if store.flag(PAUSE_FLAG) is None else 1)
        yield paused
        from drills.store import DRILL_SCHEMA  # the drills' own tables, read here

        store.ensure_schema("drills", DRILL_SCHEMA)
        yield from _drill_families(db)


def _drill_families(db: Any) -> Iterator[Any]:
    """Drills by class and outcome, and per class the last score and when the last drill
    finished (so a team can alert on "no drill of this class for 45 days")."""
    drills = CounterMetricFamily("llm_incident_drills", "Drills by class and outcome.",
                                 labels=["class", "outcome"])
    runs: collections.Counter[tuple[str, str]] = collections.Counter()
    for klass, status, n in db.execute(
        "SELECT class, status, COUNT(*) FROM drills GROUP BY class, status"
    ).fetchall():
        runs[(klass if klass in KNOWN_CLASSES else "other", status)] += n
    for labels, n in sorted(runs.items()):
        drills.add_metric(list(labels), n)
    yield drills
    score = GaugeMetricFamily("llm_incident_drill_last_score",
                              "Score (0-100) of the last scored drill of each class.",
                              labels=["class"])
    when = GaugeMetricFamily("llm_incident_drill_last_timestamp_seconds",
                             "When the last drill of each class finished (Unix time).",
                             labels=["class"])
    last_score: dict[str, float] = {}
    last_time: dict[str, float] = {}
    for klass, finished, value in db.execute(
        "SELECT class, finished_at, score FROM drills WHERE finished_at IS NOT NULL "
        "ORDER BY finished_at"
    ).fetchall():
        klass = klass if klass in KNOWN_CLASSES else "other"
        last_time[klass] = required_time(finished).timestamp()
        if value is not None:
            last_score[klass] = float(value)
    for klass, v in sorted(last_score.items()):
        score.add_metric([klass], v)
    for klass, v in sorted(last_time.items()):
        when.add_metric([klass], v)
    yield score
    yield when


class ServiceMetrics:
    """The metrics of one ``serve`` process. ``render()`` is the /metrics body."""

    def __init__(self, store: Callable[[], Store] | Store | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.alerts_received = Counter(
            "llm_incident_alerts_received",
            "Alerts accepted from webhooks, by source and alert status (firing, resolved).",
            ["source", "status"],
            registry=self.registry,
        )
        self.webhook_rejected = Counter(
            "llm_incident_webhook_rejected",
            "Webhook requests refused, by source and reason.",
            ["source", "reason"],
            registry=self.registry,
        )
        self.webhook_duration = Histogram(
            "llm_incident_webhook_duration_seconds",
            "Time to answer a webhook request, whatever the answer.",
            ["source"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.channel_messages_ignored = Counter(
            "llm_incident_channel_messages_ignored",
            "Messages in the alert channels not read as alerts, by reason "
            "(not_a_poster: not from LLM_INCIDENT_ALERT_POSTERS; not_an_alert).",
            ["reason"],
            registry=self.registry,
        )
        self.playbook_reloads = Counter(
            "llm_incident_playbook_reloads",
            "Playbook reloads at runtime, by result (ok, refused: the last good set stays).",
            ["result"],
            registry=self.registry,
        )
        if store is not None:
            self.attach_store(store)

    def attach_store(self, store: Callable[[], Store] | Store) -> None:
        getter = store if callable(store) else (lambda: store)
        self.registry.register(StoreCollector(getter))

    def attach_slack(self, stats: Callable[[], dict[str, int]],
                     store: Store, channel: str) -> None:
        """Slack delivery: calls by method and outcome (this process), and what waits in
        the store for Slack (any process): its depth and the age of the oldest, so a
        team can alert on "Slack has not taken our messages for 5 minutes"."""
        self.registry.register(_SlackCollector(stats, store, channel))

    def attach_leadership(self, leadership: Any) -> None:
        """This replica's role and the fencing token it acts with."""
        self.registry.register(_LeaseCollector(leadership))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LeaseCollector:
    def __init__(self, leadership: Any) -> None:
        self.leadership = leadership

    def collect(self) -> Iterator[Any]:
        lead = GaugeMetricFamily("llm_incident_leader",
                                 "1 on the replica holding the leader lease, 0 on the others.",
                                 labels=["replica"])
        lead.add_metric([self.leadership.holder], 1 if self.leadership.is_leader else 0)
        yield lead
        token = GaugeMetricFamily("llm_incident_fencing_token",
                                  "The fencing token of this replica's last lease (0: never led).")
        token.add_metric([], self.leadership.token or 0)
        yield token


class _SlackCollector:
    def __init__(self, stats: Callable[[], dict[str, int]], store: Store, channel: str) -> None:
        self.stats, self.store, self.channel = stats, store, channel

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        calls = CounterMetricFamily("llm_incident_slack_calls",
                                    "Slack Web API calls and retries, by method and outcome "
                                    "(ok, rate_limited, transient, permanent).",
                                    labels=["method", "outcome"])
        stats = self.stats()
        for key, n in sorted(stats.items()):
            if key.startswith("chat_"):
                calls.add_metric([key.replace("_", "."), "ok"], n)
        for outcome in ("rate_limited", "transient", "permanent"):
            calls.add_metric(["any", outcome], stats.get(outcome, 0))
        yield calls
        depth = GaugeMetricFamily("llm_incident_slack_outbox_depth",
                                  "Messages waiting for Slack to take them.")
        oldest = GaugeMetricFamily("llm_incident_slack_outbox_oldest_seconds",
                                   "Age of the oldest message Slack has not taken (0: none).")
        try:
            n, first = self.store.db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM chat_deliveries "
                "WHERE channel = ? AND delivered_at IS NULL", [self.channel]).fetchone()
        except Exception:  # noqa: BLE001 - no table yet: nothing waits
            n, first = 0, None
        depth.add_metric([], n)
        since = from_text(first)
        age = (self.store.now() - since).total_seconds() if since else 0.0
        oldest.add_metric([], max(age, 0.0))
        yield depth
        yield oldest
