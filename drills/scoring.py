"""Drill scores: 0-100 from what the drill measured against the scenario's deadlines.

Pure functions over explicit numbers, so they are tested without clocks.

Weights (sum 100), and how each component earns its points:

==================  ======  ==========================================================
component           weight  full points when ...
==================  ======  ==========================================================
detect              20      the alert reached the bot within ``deadlines.detect``
acknowledge         15      a human (or the scripted responder) acked within
                            ``deadlines.acknowledge``
playbook            20      the playbook the bot suggested is the scenario's expected one
mitigate            20      the curing step was applied within ``deadlines.mitigate``
recovery            15      the steady state held again after the mitigation
rollback            10      the injection was rolled back (always attempted)
==================  ======  ==========================================================

A timed component loses its points linearly between its deadline and twice the
deadline (late is worth something; twice as late is worth nothing), and gets
nothing when the step never happened. ``PASS_SCORE`` is what a drill needs to
count as passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

WEIGHTS: dict[str, int] = {
    "detect": 20, "acknowledge": 15, "playbook": 20, "mitigate": 20, "recovery": 15, "rollback": 10,
}  # fmt: skip
PASS_SCORE = 70
assert sum(WEIGHTS.values()) == 100


@dataclass(frozen=True)
class Component:
    name: str
    points: float
    max: int
    detail: str

    @property
    def full(self) -> bool:
        return self.points >= self.max


@dataclass(frozen=True)
class Measured:
    """What a drill measured. Times are drill seconds from the injection; None = never."""

    detect_s: float | None
    acknowledge_s: float | None
    mitigate_s: float | None
    suggested_playbook: str | None
    expected_playbook: str
    recovered: bool
    rolled_back: bool
    mitigation: str = ""  # what the mitigation was, when it is not a playbook step


@dataclass(frozen=True)
class Deadlines:
    detect_s: float
    acknowledge_s: float
    mitigate_s: float


@dataclass(frozen=True)
class Score:
    total: int
    components: tuple[Component, ...]

    @property
    def passed(self) -> bool:
        return self.total >= PASS_SCORE

    def as_data(self) -> list[dict]:
        return [asdict(c) for c in self.components]


def _fmt(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}m"


def timed(name: str, took: float | None, deadline: float, what: str = "") -> Component:
    weight = WEIGHTS[name]
    said = f"{what}: " if what else ""
    if took is None:
        return Component(name, 0, weight, f"{said}never happened (deadline {_fmt(deadline)})")
    if took <= deadline:
        return Component(name, weight, weight, f"{said}{_fmt(took)}, within {_fmt(deadline)}")
    share = max(0.0, 1 - (took - deadline) / deadline)
    return Component(name, round(weight * share, 1), weight, f"{said}{_fmt(took)}, "
                     f"{_fmt(took - deadline)} past the {_fmt(deadline)} deadline")


def score(m: Measured, d: Deadlines) -> Score:
    right = m.suggested_playbook == m.expected_playbook
    components = (
        timed("detect", m.detect_s, d.detect_s),
        timed("acknowledge", m.acknowledge_s, d.acknowledge_s),
        Component("playbook", WEIGHTS["playbook"] if right else 0, WEIGHTS["playbook"],
                  f"suggested {m.suggested_playbook or 'nothing'}"
                  + ("" if right else f", expected {m.expected_playbook}")),
        timed("mitigate", m.mitigate_s, d.mitigate_s, m.mitigation),
        Component("recovery", WEIGHTS["recovery"] if m.recovered else 0, WEIGHTS["recovery"],
                  "steady state held again" if m.recovered else "steady state did not return"),
        Component("rollback", WEIGHTS["rollback"] if m.rolled_back else 0, WEIGHTS["rollback"],
                  "injection rolled back" if m.rolled_back else "injection NOT rolled back"),
    )
    return Score(round(sum(c.points for c in components)), components)


def went_well_and_badly(components: Sequence[Component | dict]) -> tuple[list[str], list[str]]:
    """Report lines derived from the components: full marks went well, the rest did not."""
    well: list[str] = []
    badly: list[str] = []
    for c in components:
        c = c if isinstance(c, Component) else Component(**c)
        (well if c.full else badly).append(f"{c.name}: {c.detail}")
    return well, badly


@dataclass(frozen=True)
class Trend:
    scores: tuple[int, ...]  # oldest first
    direction: str  # "improving" | "worsening" | "steady" | "not enough drills"

    @property
    def last(self) -> int | None:
        return self.scores[-1] if self.scores else None


def trend(scores_oldest_first: Sequence[int], *, last_n: int = 6, tolerance: float = 5) -> Trend:
    """Direction of the last ``last_n`` scores: the latest against the mean of those before."""
    recent = tuple(scores_oldest_first[-last_n:])
    if len(recent) < 2:
        return Trend(recent, "not enough drills")
    before = sum(recent[:-1]) / (len(recent) - 1)
    delta = recent[-1] - before
    direction = "improving" if delta > tolerance else "worsening" if delta < -tolerance else "steady"
    return Trend(recent, direction)
