"""The drill lifecycle: steady state -> setup -> inject -> detect -> respond -> recover -> roll back.

Like a chaos experiment, every phase is recorded (the ``drills`` row and its
``drill_events``, and the incident's timeline marked DRILL once there is one):

1. steady state before: the scenario's query must hold, or the drill aborts with
   nothing touched (the target is already unhealthy).
2. setup: the serving policy is snapshotted *and recorded* before anything is
   written (so a killed drill can be undone), the setup patch applied, traffic
   started, the warm-up run.
3. inject: ``POST /faults`` on the target (the sandbox, or a staging gateway's
   same API at ``target.base_url``) plus the injection's policy change. A release
   drill (``injection.release``) instead ships the change as a canary release
   through the bot's release guard (``drills.release_phase``): detect is the judge
   catching it, respond is someone owning the incident its rollback opened, and a
   promotion to all traffic fails the drill.
4. detect: the observer (Prometheus, or the drill's own stand-in detector) must
   see the expected alert; it goes to ``engine.handle_alerts(..., is_drill=True)``
   and the bot suggests a playbook through its notifier.
5. respond: the scripted responder (``auto_respond``) or people, watched in the store.
6. recover: the steady state must hold again within ``rollback.within``; with
   Prometheus, the runner's own verification of the step is checked too.
7. roll back, always (``finally``, also on abort or failure): traffic stops, the
   fault is deleted, the bot's mitigation is reverted, the policy file is put
   back byte for byte. Then the drill is scored (``drills.scoring``).

Stop conditions are checked on every tick from the injection to the rollback;
one tripping aborts the drill (and rolls back at once). The rollback is
``drills.undo``, also run for a drill whose process died half way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bot.base.errors import IncidentBotError, InputError
from bot.core.engine import Engine
from bot.playbook.schema import format_duration
from drills.detector import STAND_IN_NOTE, Observer, StandInDetector
from drills.release_phase import ReleaseDrill, ScrapeSamples, reached
from drills.responders import SCRIPTED_1, Response, ScriptedResponder, observe
from drills.sandbox.traffic import generate, require_loopback
from drills.scenario import Scenario
from drills.scoring import Deadlines, Measured, score
from drills.store import Drill, DrillStore
from drills.undo import DRILL_ACTOR, undo_injection

log = logging.getLogger(__name__)


class DrillAborted(IncidentBotError):
    """A stop condition tripped, or the target was unhealthy before the drill."""


@dataclass(frozen=True)
class DrillOptions:
    auto_respond: bool = False
    speed: float = 1.0  # drill seconds per real second (traffic is sent this much faster)
    tick_s: float = 1.0  # real seconds between observer ticks
    max_warmup_s: float | None = None  # cap on the scenario's warm-up (drill seconds)
    # Floor on the warm-up: Prometheus extrapolates rates of series younger than its
    # window wildly, so with it the traffic must run one window before the injection.
    min_warmup_s: float = 0.0
    target: str = "default"  # the bot's target the drill's policy changes go through
    # Recovery must hold this long, without a break, before it counts: at least
    # `recovery_ticks` observations spanning `recovery_requests` of the drill's own
    # requests, so one quiet moment of a still-active fault is never "recovered".
    recovery_ticks: int = 5
    recovery_requests: int = 30


class DrillRunner:
    def __init__(
        self,
        engine: Engine,
        drills: DrillStore,
        *,
        target_url: str,
        client: httpx.AsyncClient,
        observer: Observer,
        policy_path: Path | None = None,
        options: DrillOptions = DrillOptions(),  # noqa: B008 - frozen
        say: Callable[[str], None] = print,
        on_phase: Callable[[str, Drill], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.drills = drills
        self.target_url = target_url.rstrip("/")
        self.client = client
        self.observer = observer
        self.policy_path = policy_path
        self.opts = options
        self.say = say
        self.on_phase = on_phase  # a test hook: called after each phase is recorded
        self._drill: Drill | None = None
        self._policy_errors = 0.0
        self._release: ReleaseDrill | None = None  # a release drill's canary, once started

    @property
    def drill(self) -> Drill:
        """The drill being run (set once ``run`` has started it)."""
        assert self._drill is not None, "the drill has not started"
        return self._drill

    # --- recording -----------------------------------------------------------------

    def _log(self, phase: str, text: str, **data: Any) -> None:
        assert self._drill is not None
        d = self._drill = self.drills.get(self._drill.id)
        self.drills.event(d.id, phase, text, data, incident_id=d.incident_id)
        self.say(f"[DRILL {d.id}] {phase}: {text}")
        if self.on_phase is not None:
            self.on_phase(phase, d)

    def _set(self, **values: Any) -> None:
        assert self._drill is not None
        self._drill = self.drills.update(self.drill.id, **values)

    # --- the lifecycle --------------------------------------------------------------

    async def run(self, scenario: Scenario) -> Drill:
        stand_in = isinstance(self.observer, StandInDetector)
        self._drill = self.drills.create(
            scenario_id=scenario.id, klass=scenario.class_, target=scenario.target.kind,
            mode="auto" if self.opts.auto_respond else "humans",
            detector="stand-in" if stand_in else self.observer.description,
            speed=self.opts.speed,
        )
        if stand_in:
            self._log("detector", STAND_IN_NOTE)
        traffic: asyncio.Task | None = None
        status, reason, response = "failed", None, Response()
        drilling = self.engine.drilling(scenario.expect.alertname, scenario.injection.fault.route,
                                        drill_id=self.drill.id)
        try:
            with drilling:  # the drill's alert is a drill alert, by whatever path it arrives
                await self._steady_state_before(scenario)
                traffic = await self._setup(scenario)
                await self._inject(scenario)
                if scenario.injection.release is None:
                    response = await self._respond(scenario, await self._detect(scenario))
                else:
                    response = await self._release_respond(
                        scenario, await self._catch_release(scenario))
                await self._recover(scenario, response)
            status = "completed"
        except DrillAborted as exc:
            status, reason = "aborted", str(exc)
            self._log("aborted", reason)
        except (IncidentBotError, httpx.HTTPError) as exc:
            reason = str(exc)
            self._log("failed", reason)
        finally:
            if traffic is not None:
                traffic.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await traffic
            await self._rollback(scenario)
        return await self._finish(scenario, status, reason)

    async def _tick(self, scenario: Scenario, *, stop_conditions: bool = True) -> None:
        await asyncio.sleep(self.opts.tick_s)
        self.drills.beat(self.drill.id)  # this process still runs the drill
        await self.observer.tick()
        self._notice_policy_errors()
        if self._release is not None and isinstance(self.observer, StandInDetector) and \
                self._release.reader is not None and self.observer.scrapes.history:
            self._release.reader.record(self.drills.now(), self.observer.scrapes.history[-1])
        if not stop_conditions:
            return
        for cond in scenario.stop_conditions:
            value = await self.observer.value(cond.query)
            if value is not None and cond.tripped(value):
                raise DrillAborted(f"stop condition: {cond.query} = {value:.4g} "
                                   f"({cond.abort_if.strip()}): {cond.reason}")

    def _notice_policy_errors(self) -> None:
        """The sandbox keeps its last good policy when the file is corrupt; say so once."""
        if not isinstance(self.observer, StandInDetector) or not self.observer.scrapes.history:
            return
        samples = self.observer.scrapes.history[-1].samples
        errors = sum(samples.get("llm_sandbox_policy_reload_errors_total", {}).values())
        if errors > self._policy_errors:
            self._policy_errors = errors
            self._log("policy-error", "the target could not load the serving policy file "
                      "and keeps serving the last good one (llm_sandbox_policy_reload_errors)")

    async def _steady(self, scenario: Scenario) -> tuple[bool, float | None]:
        value = await self.observer.value(scenario.steady_state.query)
        return value is not None and scenario.steady_state.holds(value), value

    async def _steady_state_before(self, scenario: Scenario) -> None:
        for _ in range(2):  # two scrapes: rates need a pair
            await self._tick(scenario, stop_conditions=False)
        ok, value = await self._steady(scenario)
        if not ok:
            raise DrillAborted(f"the target is unhealthy before the drill: "
                               f"{scenario.steady_state.query} = {value} "
                               f"(expected {scenario.steady_state.expect}); nothing was injected")
        self._log("steady-state", f"before: {scenario.steady_state.query} = {value:.4g} holds")

    def _driver(self):
        return self.engine.runner.drivers[self.opts.target]

    async def _setup(self, scenario: Scenario) -> asyncio.Task | None:
        snapshot: dict[str, Any] = {"base_url": self.target_url, "fault_ids": []}
        if self.policy_path is not None:
            p = self.policy_path
            snapshot["policy_path"] = str(p)
            snapshot["policy_text"] = p.read_text(encoding="utf-8") if p.exists() else None
        else:
            routes = (await self._driver().read()).model_dump(mode="json").get("routes", {})
            snapshot["policy_routes"] = routes
        # Recorded before the first write: from here on a crash is undone at the next start.
        self._set(injection=snapshot, injection_active=True, phase="setup")
        if scenario.setup.policy:
            await self._driver().write(scenario.setup.policy, reason=f"drill {self.drill.id} "
                                       "setup", action="drill_setup")
        traffic = self._start_traffic(scenario)
        warmup = scenario.setup.warmup.total_seconds()
        if self.opts.max_warmup_s is not None:
            warmup = min(warmup, self.opts.max_warmup_s)
        warmup = max(warmup, self.opts.min_warmup_s)
        self._log("setup", f"policy {scenario.setup.policy or 'unchanged'}; traffic "
                  f"{scenario.traffic.rate_per_s}/s on {', '.join(scenario.traffic.routes)}; "
                  f"warm-up {warmup:g}s")
        deadline = asyncio.get_running_loop().time() + warmup / self.opts.speed
        while asyncio.get_running_loop().time() < deadline:
            await self._tick(scenario, stop_conditions=False)
        return traffic

    def _start_traffic(self, scenario: Scenario) -> asyncio.Task | None:
        try:
            require_loopback(self.target_url)
        except ValueError:
            self._log("setup", "the target is not on loopback: the drill sends no traffic of its "
                      "own and relies on the target's real traffic")
            return None

        rate = scenario.traffic.rate_per_s * self.opts.speed
        # Short chunks (cancelling never waits long) of a whole number of requests: the
        # generator rounds a chunk's count up, so 0.5/s in 1s chunks would send 1/s.
        chunk_s = max(1, round(rate)) / rate

        async def loop() -> None:
            clock = asyncio.get_running_loop().time
            next_chunk = clock()
            while True:
                await generate(self.target_url, routes=scenario.traffic.routes,
                               rate_per_s=rate, duration_s=chunk_s, client=self.client,
                               customers=scenario.traffic.customers or None)
                # generate returns once its last request is answered, not at the chunk's end.
                next_chunk += chunk_s
                await asyncio.sleep(max(0.0, next_chunk - clock()))

        return asyncio.create_task(loop(), name="drill-traffic")

    async def _inject(self, scenario: Scenario) -> None:
        body = scenario.injection.fault.body()
        resp = await self.client.post(f"{self.target_url}/faults", json=body, timeout=10)
        if resp.status_code != 201:
            try:
                err = resp.json().get("error", {})
            except ValueError:
                err = {"message": resp.text[:200]}
            raise InputError(
                f"the target refused the fault of scenario {scenario.id}: "
                f"{err.get('field', 'body')}: {err.get('message')}",
                hint="fix the scenario's injection.fault", )
        fault_id = resp.json()["id"]
        injection = {**self.drill.injection, "fault_ids": [fault_id]}
        self._set(injection=injection, injected_at=self.drills.now(), phase="injected")
        if scenario.injection.policy:
            await self._driver().write(scenario.injection.policy,
                                       reason=f"drill {self.drill.id} injection",
                                       action="drill_injection")
        self._log("injected", f"fault {body['kind']} on {body['route']} ({fault_id})"
                  + (f" with policy {scenario.injection.policy}" if scenario.injection.policy
                     else ""), fault=body)
        if scenario.injection.release is not None:
            await self._start_release(scenario)

    # --- a release drill: the fault ships as a canary the release guard must catch ----

    async def _start_release(self, scenario: Scenario) -> None:
        spec = scenario.injection.release
        assert spec is not None
        reader = ScrapeSamples() if isinstance(self.observer, StandInDetector) else None
        self._release = ReleaseDrill(
            self.engine, spec, scenario.injection.fault.route, drill_id=self.drill.id,
            speed=self.opts.speed, reader=reader, client=self.client,
            target_url=self.target_url)
        release = await self._release.start(DRILL_ACTOR)
        self._set(injection={**self.drill.injection, "release": release.id})
        bake = format_duration(spec.bake)
        self._log("released", f"{release.id}: {release.what} on {release.steps[0]}% of "
                  f"{release.route} (steps {release.steps}, bake {bake} of drill time"
                  f"{', auto-promote' if release.auto_promote else ''}), on the drill's target",
                  release=release.id)

    async def _catch_release(self, scenario: Scenario) -> str | None:
        """Judge the release each tick until it leaves canary; a promotion is a miss."""
        assert self._release is not None
        limit = 2 * scenario.deadlines.detect.total_seconds()
        while True:
            await self._tick(scenario)
            release = await self._release.judge()
            if release.held and self.drill.detected_at is None:
                self._set(detected_at=self.drills.now())
                self._log("detected", f"{release.id} held at {release.steps[release.step]}%: "
                          "a signal failed")
                if self.opts.auto_respond:  # a person rolls back what the judge held
                    release = await self._release.guard.rollback(
                        release.id, actor=SCRIPTED_1, reason="held by the judge")
            if release.state != "canary":
                break
            if self._past(limit):
                raise IncidentBotError(f"{release.id} was still in canary {limit:g}s of drill "
                                       "time after its start: the judge never decided",
                                       hint="check the scenario's traffic and thresholds")
        now = self.drills.now()
        spent = await self._release.exposure(self.drill.drill_seconds(now) or 0.0)
        self._log("exposure", spent.text(), **spent.as_data())
        if release.state == "promoted":
            raise IncidentBotError(f"the bad release {release.id} {reached(release)}: the "
                                   "judge never caught it")
        suggested = self.engine.suggested_playbook(release.incident_id) \
            if release.incident_id else None
        self._set(detected_at=self.drill.detected_at or now, incident_id=release.incident_id,
                  suggested_playbook=suggested, phase="detected")
        self._log("detected", f"{release.id} {reached(release)}, before full rollout: "
                  f"incident {release.incident_id or 'none'}, suggested playbook "
                  f"{suggested or 'none'}")
        return release.incident_id

    async def _release_respond(self, scenario: Scenario, incident_id: str | None) -> Response:
        """The rollback was the mitigation; what is left is someone owning the incident."""
        assert self._release is not None and self._release.release_id is not None
        release = self.engine.store.release(self._release.release_id)
        response = Response(mitigated_at=release.updated_at)
        if incident_id and self.opts.auto_respond:
            await self.engine.acknowledge(incident_id, SCRIPTED_1)
            response.acknowledged_at = self.drills.now()
            self._log("acknowledged", f"scripted responder ({SCRIPTED_1}) acknowledged "
                      f"{incident_id}")
        elif incident_id:
            limit = 2 * scenario.deadlines.acknowledge.total_seconds()
            while response.acknowledged_at is None and not self._past(limit):
                await self._tick(scenario)
                observe(self.engine, incident_id, response)
        self._set(acknowledged_at=response.acknowledged_at, mitigated_at=response.mitigated_at,
                  phase="responded")
        return response

    def _past(self, seconds: float) -> bool:
        """Has ``seconds`` of drill time passed since the injection?"""
        s = self.drill.drill_seconds(self.drills.now())
        return s is not None and s > seconds

    async def _detect(self, scenario: Scenario) -> str:
        name = scenario.expect.alertname
        limit = 2 * scenario.deadlines.detect.total_seconds()  # worth nothing after that
        while True:
            await self._tick(scenario)
            alert = await self.observer.firing(name)
            if alert is not None:
                break
            if self._past(limit):
                raise IncidentBotError(f"{name} never fired within {limit:g}s of drill time",
                                       hint="check the alert rule and the scenario's fault")
        self._set(detected_at=self.drills.now(), phase="detected")
        # Grouped within this drill only: a drill of the same class minutes ago is
        # another incident, not one to reopen as flapping.
        ingested = (await self.engine.handle_alerts([alert], is_drill=True,
                                                    drill_id=self.drill.id))[0]
        suggested = self.engine.suggested_playbook(ingested.incident_id)
        self._set(incident_id=ingested.incident_id, suggested_playbook=suggested)
        self._log("detected", f"{name} fired ({self.observer.description}) and reached the bot: "
                  f"incident {ingested.incident_id}, suggested playbook {suggested or 'none'}",
                  labels=alert.labels)
        return ingested.incident_id

    async def _respond(self, scenario: Scenario, incident_id: str) -> Response:
        expect = scenario.expect
        if self.opts.auto_respond:
            responder = ScriptedResponder(self.engine, self._log)
            response = await responder.respond(incident_id, expect.playbook, expect.step)
        else:
            self._log("waiting", f"waiting for the on-call to acknowledge {incident_id} and apply "
                      f"a step (expected: {expect.playbook} {expect.step or ''})")
            response, limit = Response(), 2 * scenario.deadlines.mitigate.total_seconds()
            while response.mitigated_at is None and not self._past(limit):
                await self._tick(scenario)
                observe(self.engine, incident_id, response)
        self._set(acknowledged_at=response.acknowledged_at, mitigated_at=response.mitigated_at,
                  phase="responded")
        if response.mitigated_at is None:
            raise IncidentBotError(response.problem or "no mitigation was applied in time")
        return response

    async def _recover(self, scenario: Scenario, response: Response) -> None:
        limit = (self.drill.drill_seconds(response.mitigated_at) or 0) \
            + scenario.rollback.within.total_seconds()
        # Drill seconds the steady state must hold, sized to the traffic.
        need_s = self.opts.recovery_requests / scenario.traffic.rate_per_s
        held_since: float | None = None
        holding = 0
        while True:
            await self._tick(scenario)
            ok, value = await self._steady(scenario)
            now_s = self.drill.drill_seconds(self.drills.now()) or 0.0
            if ok:
                held_since = now_s if held_since is None else held_since
                holding += 1
                if holding >= self.opts.recovery_ticks and now_s - held_since >= need_s:
                    break
            else:
                held_since, holding = None, 0  # a relapse starts the window again
            if self._past(limit):
                raise IncidentBotError(
                    f"not recovered: the steady state did not hold for {need_s:g}s of drill "
                    f"time ({self.opts.recovery_requests} requests, {self.opts.recovery_ticks} "
                    f"observations) within {scenario.rollback.within} of the mitigation "
                    f"(last {scenario.steady_state.query} = {value})")
        self._set(recovered_at=self.drills.now(), phase="recovered")
        self._log("recovered", f"{scenario.steady_state.query} = {value:.4g} holds again "
                  f"({scenario.steady_state.expect}, tolerance {scenario.steady_state.tolerance:g}) "
                  f"for {need_s:g}s of drill time, {holding} observations in a row")
        runner = self.engine.runner
        if runner.metrics is not None and response.run_id:
            run = await runner.check_verification(response.run_id)
            mit = self.engine.store.mitigation(run.id)
            self._log("verification", f"the bot's verification of {run.id}: "
                      f"{mit.verify_state if mit else run.state}")

    # --- rollback and scoring -------------------------------------------------------

    async def _rollback(self, scenario: Scenario | None) -> None:
        d = self._drill = self.drills.get(self.drill.id)
        if not d.injection_active:
            return
        problems = await undo_injection(self.engine, self.client, d, actor=DRILL_ACTOR)
        self._set(injection_active=False, rolled_back_at=self.drills.now())
        if problems:
            self._log("rollback", "rolled back with problems: " + "; ".join(problems))
        else:
            self._log("rollback", "fault removed, mitigations reverted, serving policy restored")

    def _contained(self) -> str:
        """How far a release drill's bad version got (the mitigate component's detail)."""
        if self._release is None or self._release.release_id is None:
            return ""
        return reached(self.engine.store.release(self._release.release_id))

    async def _finish(self, scenario: Scenario, status: str, reason: str | None) -> Drill:
        d = self._drill = self.drills.get(self.drill.id)
        breakdown, total = [], None
        if status != "aborted":
            dl = scenario.deadlines
            s = score(
                Measured(d.drill_seconds(d.detected_at), d.drill_seconds(d.acknowledged_at),
                         d.drill_seconds(d.mitigated_at), d.suggested_playbook,
                         scenario.expect.playbook, d.recovered_at is not None,
                         d.rolled_back_at is not None and not d.injection_active,
                         mitigation=self._contained()),
                Deadlines(dl.detect.total_seconds(), dl.acknowledge.total_seconds(),
                          dl.mitigate.total_seconds()),
            )
            breakdown, total = s.as_data(), s.total
        if d.incident_id and self.engine.store.incident(d.incident_id).is_open:
            with contextlib.suppress(IncidentBotError):
                if status == "aborted":
                    # Cancelled, not resolved: nothing was fixed; the reason says why.
                    await self.engine.cancel(d.incident_id, DRILL_ACTOR,
                                             f"drill {d.id} aborted: {reason}")
                else:
                    await self.engine.resolve(d.incident_id, DRILL_ACTOR, f"drill {d.id} over")
        self._set(status=status, reason=reason, score=total, breakdown=breakdown,
                  finished_at=self.drills.now(), phase="finished")
        self._log("finished", f"{status}" + (f", score {total}/100" if total is not None else ""))
        return self._drill
