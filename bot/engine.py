"""The engine: what the bot *does*, over the store, the playbooks and the runner.

Commands (CLI and Slack), the web intake and the scheduler all call these
methods; none of them talks to the store or the runner behind its back. No
Slack, web framework or driver is imported here: the runner arrives with its
drivers already injected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.alert import Alert
from bot.errors import InputError, NotFound
from bot.matcher import Matcher, MatchResult
from bot.playbook.loader import PlaybookRegistry
from bot.playbook.render import render_params, render_query, render_step_args
from bot.playbook.schema import Playbook, Step
from bot.runner import Runner
from bot.store import Run, Store, group_key_for

UNCLASSIFIED = "unclassified"


@dataclass
class Ingested:
    """What happened to one alert: its incident, whether that is new, the suggestions."""

    alert: Alert
    incident_id: str
    created: bool
    matches: list[MatchResult] = field(default_factory=list)

    @property
    def suggestion(self) -> Playbook | None:
        return self.matches[0].playbook if self.matches else None


class Engine:
    def __init__(
        self,
        store: Store,
        registry: PlaybookRegistry,
        runner: Runner,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.registry = registry
        self.runner = runner
        self.clock = clock
        self._matcher: Matcher | None = None
        self._matcher_for: object = None

    @property
    def matcher(self) -> Matcher:
        # Rebuild the index only when the registry swapped in a new good set.
        if self._matcher is None or self._matcher_for is not self.registry.playbooks:
            self._matcher = Matcher(self.registry.playbooks.values())
            self._matcher_for = self.registry.playbooks
        return self._matcher

    # --- intake ---------------------------------------------------------------

    def ingest(self, alerts: Iterable[Alert], *, is_drill: bool = False) -> list[Ingested]:
        out = []
        for alert in alerts:
            matches = self.matcher.match(alert)
            top = matches[0].playbook if matches else None
            klass = top.class_ if top else alert.labels.get("incident_class", UNCLASSIFIED)
            incident_id, created = self.store.record_alert(
                alert,
                group_key=group_key_for(alert, klass),
                title=_title(alert, top),
                klass=klass,
                severity=top.severity if top else alert.labels.get("severity", "warning"),
                is_drill=is_drill,
            )
            if created and top is not None:
                self.store.add_event(
                    incident_id,
                    "suggested",
                    f"suggested playbook {top.id} ({top.title})",
                    actor="llm-incident",
                    data={
                        "playbook": top.id,
                        "why": [r.why for r in matches[0].matched],
                        "others": [m.playbook.id for m in matches[1:]],
                    },
                )
            out.append(Ingested(alert, incident_id, created, matches))
        return out

    def latest_alert(self, incident_id: str) -> Alert:
        alerts = self.store.alerts_for(incident_id)
        if not alerts:
            raise NotFound(f"incident {incident_id} has no alerts")
        firing = [a for a in alerts if a.status == "firing"] or alerts
        a = max(firing, key=lambda a: a.starts_at)
        return Alert(
            source=a.source,
            fingerprint=a.fingerprint,
            status=a.status,
            labels=a.labels,
            annotations=a.annotations,
            starts_at=a.starts_at,
            ends_at=a.ends_at,
            generator_url=a.generator_url,
        )

    def suggested_playbook(self, incident_id: str) -> str | None:
        for ev in reversed(self.store.timeline(incident_id)):
            if ev.kind == "suggested" and ev.data:
                return ev.data.get("playbook")
        return None

    # --- planning -------------------------------------------------------------

    def _step(self, playbook: Playbook, step_id: str | None) -> Step:
        if step_id is None:
            return playbook.steps[0]
        step = playbook.step(step_id)
        if step is None:
            raise InputError(
                f"playbook {playbook.id} has no step '{step_id}'",
                hint=f"steps: {', '.join(s.id for s in playbook.steps)}",
            )
        return step

    async def plan_step(
        self,
        incident_id: str,
        playbook_id: str | None = None,
        step_id: str | None = None,
        *,
        actor: str,
        dry_run: bool = False,
        automatic: bool = False,
    ) -> Run:
        """Render the step against the incident's latest alert and have the runner plan it."""
        self.store.incident(incident_id)  # NotFound early, with a hint
        playbook_id = playbook_id or self.suggested_playbook(incident_id)
        if playbook_id is None:
            raise InputError(
                f"no playbook matched incident {incident_id}",
                hint="name one: plan PLAYBOOK, or run an ad hoc action with `do`",
            )
        playbook = self.registry.get(playbook_id)
        step = self._step(playbook, step_id)
        alert = self.latest_alert(incident_id)
        params = render_params(playbook, alert)
        args = render_step_args(step, params, alert)
        verify = step.guard.verify
        query = render_query(verify.query, params, alert) if verify else None
        return await self.runner.plan(
            incident_id=incident_id,
            playbook_id=playbook.id,
            step_id=step.id,
            action=step.action,
            target=step.target,
            args=args,
            guard=step.guard,
            verify_query=query,
            requested_by=actor,
            dry_run=dry_run or step.guard.dry_run,
            automatic=automatic,
        )

    def diagnose(self, playbook: Playbook, alert: Alert) -> list[tuple[str, str]]:
        """The playbook's diagnose queries, rendered for this alert (title, PromQL)."""
        params = render_params(playbook, alert)
        return [(d.title, render_query(d.query, params, alert)) for d in playbook.diagnose]


def _title(alert: Alert, playbook: Playbook | None) -> str:
    route = alert.labels.get("route") or alert.labels.get("requested_model")
    name = playbook.title if playbook else (alert.alertname or "alert")
    return f"{name} on {route}" if route else name
