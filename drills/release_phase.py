"""A release drill: the fault ships as a canary release, and the bot's release guard must
catch it before it reaches all of the route.

The scenario's ``injection.release`` names the canary (a prompt version or model)
and the sandbox fault applies only to requests that version serves. The drill
starts the release through the release guard's own use case, on the drill's target
(``drill:DRILL-n``, the drill's sandbox policy file: never production), and then
only judges it, at every tick, as the leader's scheduler would. The bot's own
scheduler leaves drill releases alone; people can still promote, hold or roll it
back from Slack or the CLI, and that reaches the same sandbox file.

Without Prometheus the judge reads its samples from the drill's own scrapes of the
sandbox (``ScrapeSamples``): the same per-version histograms and counters, cut to
the step's window. ``exposure`` turns the sandbox's per-version counters into what
the report prints: the share of the route's traffic that saw the bad version, the
tokens it wasted, and what the same fault would have cost on all traffic until a
post-rollout alert fired.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import httpx

from bot.core.canary_judge import Histogram, Sample
from bot.core.canary_samples import Version, collect
from bot.core.engine import Engine
from bot.core.release_cases import ReleaseGuard
from bot.store.releases import Release
from drills.scenario import ReleaseSpec
from drills.signals import Labels, Scrape, increase, parse_scrape

# The sandbox's per-version counters the exposure figures read.
_COUNTED = {
    "requests": "llm_app_responses_total",
    "tokens": "llm_app_output_tokens_sum",
    "invalid": "llm_app_output_invalid_total",
    "refused": "llm_app_refusals_total",
}


def _matches(labels: Labels, v: Version) -> bool:
    d = dict(labels)
    return all(d.get(k) == want for k, want in (
        ("route", v.route), ("prompt_version", v.prompt_version), ("model", v.model))
        if want is not None)


def _delta(first: Scrape, last: Scrape, name: str, v: Version) -> dict[Labels, float]:
    """Per series of ``name`` matching ``v``: its increase between the two scrapes."""
    before = first.samples.get(name, {})
    out = {}
    for labels, value in last.samples.get(name, {}).items():
        if _matches(labels, v):
            out[labels] = increase(before.get(labels, 0.0), value)
    return out


class ScrapeSamples:
    """The judge's ``Reader`` over the drill's own scrapes of the target, each kept with
    the real time it was taken (the release guard's windows are real time)."""

    def __init__(self) -> None:
        self.history: list[tuple[datetime, Scrape]] = []

    def record(self, at: datetime, scrape: Scrape) -> None:
        if not self.history or self.history[-1][1] is not scrape:
            self.history.append((at, scrape))

    async def __call__(self, canary: Version, baseline: Version,
                       window: timedelta) -> dict[str, tuple[Sample, Sample]]:
        if len(self.history) < 2:
            return {}
        now, last = self.history[-1]
        # The last scrape at or before the window's start (the first one if none is).
        first = next((s for at, s in reversed(self.history) if at <= now - window),
                     self.history[0][1])

        async def histogram(metric: str, v: Version) -> Histogram | None:
            by_le: dict[float, float] = {}
            for labels, inc in _delta(first, last, f"{metric}_bucket", v).items():
                le = float(dict(labels)["le"])
                by_le[le] = by_le.get(le, 0.0) + inc
            buckets = sorted(by_le.items())
            if not buckets or not math.isinf(buckets[-1][0]):
                return None
            return Histogram(buckets)

        async def count(metric: str, v: Version) -> float | None:
            series = _delta(first, last, metric, v)
            return sum(series.values()) if series else None  # no series: unknown, not 0

        return await collect(histogram, count, canary, baseline)


# --- exposure: what the bad version cost, and what it would have ---------------------


@dataclass(frozen=True)
class Exposure:
    canary_requests: float
    route_requests: float
    wasted_tokens: float  # beyond the baseline's mean, plus answers that failed beyond its rate
    bad_answers: float  # invalid or refused beyond the baseline's rate
    # The same fault on all of the route's traffic until a post-rollout alert fired:
    alert_delay_s: float
    alert_wasted_tokens: float
    alert_bad_answers: float

    @property
    def share(self) -> float:
        return self.canary_requests / self.route_requests if self.route_requests else 0.0

    def as_data(self) -> dict[str, float]:
        return {**asdict(self), "share": self.share}

    def text(self) -> str:
        return (f"{self.canary_requests:.0f} of {self.route_requests:.0f} requests "
                f"({self.share:.1%}) saw the bad version; it wasted {self.wasted_tokens:,.0f} "
                f"tokens and gave {self.bad_answers:.0f} failed answers, against about "
                f"{self.alert_wasted_tokens:,.0f} tokens and {self.alert_bad_answers:,.0f} failed "
                f"answers had it gone to all traffic for the "
                f"{self.alert_delay_s / 60:g} minutes a post-rollout alert takes")


Counts = dict[str, dict[str, float]]  # version -> {requests, tokens, invalid, refused}


def version_counts(scrape: Scrape, route: str, key: str) -> Counts:
    """The sandbox's per-version counters of ``route``, by the ``key`` label."""
    out: Counts = {}
    for what, name in _COUNTED.items():
        for labels, value in scrape.samples.get(name, {}).items():
            d = dict(labels)
            if d.get("route") == route:
                side = out.setdefault(d.get(key, ""), dict.fromkeys(_COUNTED, 0.0))
                side[what] += value
    return out


def exposure(before: Counts, after: Counts, canary: str, *, drill_seconds: float,
             alert_delay_s: float) -> Exposure:
    """What the canary ``canary`` cost between two reads of ``version_counts``."""
    def diff(version: str) -> dict[str, float]:
        a, b = after.get(version, {}), before.get(version, {})
        return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in _COUNTED}

    c = diff(canary)
    base = {k: sum(diff(v)[k] for v in after if v != canary) for k in _COUNTED}
    n, n_base = c["requests"], base["requests"]
    base_mean = base["tokens"] / n_base if n_base else 0.0
    canary_mean = c["tokens"] / n if n else 0.0
    base_bad = (base["invalid"] + base["refused"]) / n_base if n_base else 0.0
    bad = max(0.0, c["invalid"] + c["refused"] - base_bad * n)
    wasted = max(0.0, c["tokens"] - n * base_mean) + bad * canary_mean
    # Per bad-version request, times the route's rate, for as long as an alert takes.
    per_s = (n + n_base) / drill_seconds if drill_seconds > 0 else 0.0
    alert_requests = per_s * alert_delay_s
    return Exposure(n, n + n_base, wasted, bad, alert_delay_s,
                    wasted / n * alert_requests if n else 0.0,
                    bad / n * alert_requests if n else 0.0)


class ReleaseDrill:
    """Starts the scenario's release through the release guard and judges it each tick."""

    def __init__(self, engine: Engine, spec: ReleaseSpec, route: str, *, drill_id: str,
                 speed: float, reader: ScrapeSamples | None, client: httpx.AsyncClient,
                 target_url: str) -> None:
        self.spec, self.route, self.drill_id, self.speed = spec, route, drill_id, speed
        self.guard = ReleaseGuard(engine, reader=reader)
        self.reader = reader
        self.client, self.target_url = client, target_url
        self.key = "prompt_version" if spec.prompt_version else "model"
        self.canary = str(spec.prompt_version or spec.model)
        self.release_id: str | None = None
        self._before: Counts = {}

    async def counts(self) -> Counts:
        resp = await self.client.get(f"{self.target_url}/metrics", timeout=10)
        resp.raise_for_status()
        return version_counts(parse_scrape(resp.text, 0.0), self.route, self.key)

    async def start(self, actor: str) -> Release:
        self._before = await self.counts()
        release = await self.guard.start(
            self.route, actor=actor, prompt_version=self.spec.prompt_version,
            model=self.spec.model, steps=self.spec.steps, owner=actor,
            bake=self.spec.bake / self.speed,  # the guard's clock is real time
            auto_promote=self.spec.auto_promote, target=f"drill:{self.drill_id}")
        self.release_id = release.id
        return release

    async def judge(self) -> Release:
        """One poll of the guard, for this release only."""
        assert self.release_id is not None
        await self.guard.check_due(only=[self.release_id])
        return self.guard.store.release(self.release_id)

    async def exposure(self, drill_seconds: float) -> Exposure:
        return exposure(self._before, await self.counts(), self.canary,
                        drill_seconds=drill_seconds,
                        alert_delay_s=self.spec.alert_delay.total_seconds())


def reached(release: Release) -> str:
    """How far the release went, for the drill's log and score."""
    top = release.steps[release.step]
    if release.state == "promoted":
        return f"reached all of {release.route} (promoted)"
    return f"{release.state.replace('_', ' ')} at {top}% of {release.route}"
