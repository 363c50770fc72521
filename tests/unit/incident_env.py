"""A small engine on fakes, shared by the lifecycle, suggestion and scheduler tests.

Everything runs on one injected clock (``Clock``), so tests move time by hand
instead of sleeping: the store, the runner, the engine and the scheduler read it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fakes import FakeMetrics, InMemoryDriver, RecordingNotifier

from actions.policy import ServingPolicy
from bot.core.engine import Engine
from bot.core.lifecycle import LifecyclePolicy
from bot.core.notifier import Notifier
from bot.core.runner import Runner, RunnerSettings
from bot.intake.alert import Alert
from bot.playbook.registry import PlaybookRegistry
from bot.store import Store

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
POLICY = ServingPolicy.model_validate(
    {
        "routes": {
            "chat": {"max_output_tokens": 1024, "max_concurrency": 16, "group": "chat"},
            "chat-small": {"max_output_tokens": 512, "group": "chat"},
        }
    }
)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> datetime:
        self.now += timedelta(**kw)
        return self.now


_REGISTRY: PlaybookRegistry | None = None


def registry() -> PlaybookRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = PlaybookRegistry()
        assert not _REGISTRY.reload(PLAYBOOKS)
    return _REGISTRY


class Env:
    def __init__(
        self,
        *,
        db: str | Path | None = None,
        clock: Clock | None = None,
        driver: InMemoryDriver | None = None,
        notifier: Notifier | None = None,
        policy: LifecyclePolicy | None = None,
        metrics: FakeMetrics | None = None,
        diagnose_timeout: float = 2.0,
    ) -> None:
        self.clock = clock or Clock()
        self.store = Store(db, clock=self.clock)
        self.driver = driver or InMemoryDriver(POLICY, name="default")
        self.metrics = metrics if metrics is not None else FakeMetrics()
        self.runner = Runner(self.store, {"default": self.driver}, self.metrics,
                             settings=RunnerSettings(), clock=self.clock)
        self.notifier = notifier if notifier is not None else RecordingNotifier(self.clock)
        self.engine = Engine(self.store, registry(), self.runner, clock=self.clock,
                             notifier=self.notifier, lifecycle=policy or LifecyclePolicy(),
                             diagnose_timeout=diagnose_timeout)

    @property
    def published(self):
        return self.notifier.messages  # type: ignore[attr-defined]

    def kinds(self, incident_id: str) -> list[str]:
        return [e.kind for e in self.store.timeline(incident_id)]


def alert(
    name: str = "LLMCostBurnRateHigh",
    *,
    status: str = "firing",
    fingerprint: str = "fp-cost",
    route: str = "chat",
    starts_at: datetime = T0,
    **labels: str,
) -> Alert:
    return Alert(
        source="alertmanager", fingerprint=fingerprint, status=status,  # type: ignore[arg-type]
        labels={"alertname": name, "route": route, "severity": "critical", **labels},
        annotations={"summary": f"{name} on {route}"}, starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=30) if status == "resolved" else None,
    )


def provider_alert(**kw) -> Alert:
    return alert("LLMProviderErrorRateHigh", fingerprint="fp-provider", **kw)
