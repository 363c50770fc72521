"""Alert -> ranked playbook matches, with the reasons why (and why not).

Semantics (``bot.playbook.schema.Match``): a playbook matches when every ``all``
condition holds and, if ``any`` is non-empty, at least one ``any`` condition holds.
A label condition on a label the alert lacks is false, except ``absent: true``;
``alertname`` is the ``alertname`` label (missing -> false). ``regex`` is a full
match (compiled once, anchored at both ends).

Score (higher = better; more specific wins)::

    score = sum(weight of every condition that held, in `any` and in `all`)
            + severity bonus

    weights: alertname 3, equals 2, in 1, regex 1, absent/present 0.5
    severity bonus: critical 0.03, high 0.02, warning 0.01, info 0

So a playbook written for the project's own rule that also sees its
``incident_class`` label (3 + 2) outranks a generic one that only sees the class
(2). The bonus is smaller than any weight: it only separates equal specificity.
Equal scores are ordered by severity, then playbook id.

Index: matching must not cost a scan over every playbook. At construction each
playbook is filed under its "key conditions":

* ``any`` non-empty and every ``any`` condition an alertname / equals / in: under
  each of them (a match needs at least one, so one of its keys is in the alert);
* else, if ``all`` has an alertname / equals / in condition: under the most
  selective one (alertname, then equals, then the ``in`` with fewest values);
* else: on an "always check" list.

Keys are ``(label, value)`` pairs, alertname being the ``alertname`` label. ``match``
gathers candidates from the alert's own pairs plus the always-check list and
evaluates only those. ``explain`` evaluates everything: it is for humans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bot.base.errors import InputError
from bot.intake.alert import Alert
from bot.playbook.schema import Condition, Playbook

WEIGHTS = {"alertname": 3.0, "equals": 2.0, "in": 1.0, "regex": 1.0, "absent": 0.5}
SEVERITY_BONUS = {"critical": 0.03, "high": 0.02, "warning": 0.01, "info": 0.0}
_SEVERITY_RANK = {"critical": 0, "high": 1, "warning": 2, "info": 3}
_SHOW = 80  # longest label value quoted in a reason; values can be 4 KB


@dataclass(frozen=True)
class ConditionResult:
    condition: Condition
    held: bool
    why: str


@dataclass(frozen=True)
class MatchResult:
    playbook: Playbook
    score: float
    matched: list[ConditionResult]


@dataclass(frozen=True)
class NearMiss:
    playbook: Playbook
    matched: list[ConditionResult]
    failed: list[ConditionResult]


class _Check:
    """One condition, prepared once: its kind, weight and (for regex) compiled pattern."""

    __slots__ = ("condition", "kind", "weight", "pattern", "values")

    def __init__(self, condition: Condition) -> None:
        self.condition = condition
        self.pattern: re.Pattern[str] | None = None
        self.values: frozenset[str] = frozenset()
        if condition.alertname is not None:
            self.kind = "alertname"
        elif condition.equals is not None:
            self.kind = "equals"
        elif condition.in_ is not None:
            self.kind = "in"
            self.values = frozenset(condition.in_)
        elif condition.regex is not None:
            self.kind = "regex"
            self.pattern = re.compile(condition.regex)  # used with fullmatch: anchored
        else:
            self.kind = "absent"
        self.weight = WEIGHTS[self.kind]

    def index_keys(self) -> list[tuple[str, str]]:
        """Index keys: (label, value) pairs one of which the alert must carry."""
        c = self.condition
        if self.kind == "alertname":
            return [("alertname", c.alertname or "")]
        if self.kind == "equals":
            return [(c.label or "", c.equals or "")]
        if self.kind == "in":
            return [(c.label or "", v) for v in sorted(self.values)]
        return []

    def holds(self, labels: dict[str, str]) -> bool:
        """The verdict alone: ``match`` screens candidates with it before explaining."""
        c = self.condition
        if self.kind == "alertname":
            return labels.get("alertname") == c.alertname
        value = labels.get(c.label or "")
        if self.kind == "absent":
            return (value is None) == bool(c.absent)
        if value is None:
            return False
        if self.kind == "equals":
            return value == c.equals
        if self.kind == "in":
            return value in self.values
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None

    def evaluate(self, labels: dict[str, str]) -> ConditionResult:
        c = self.condition
        name = "alertname" if self.kind == "alertname" else (c.label or "")
        value = labels.get(name)
        if self.kind == "absent":
            want_absent = bool(c.absent)
            held = (value is None) == want_absent
            if value is None:
                why = f"label {name} is absent" + ("" if held else ", wanted present")
            else:
                shown = _show(value)
                why = f"label {name} is present ({shown})" + (
                    ", wanted absent" if want_absent else ""
                )
            return ConditionResult(c, held, why)
        if value is None:
            return ConditionResult(c, False, f"label {name} missing")
        if self.kind == "alertname":
            held = value == c.alertname
            want = f"wanted '{c.alertname}'"
        elif self.kind == "equals":
            held = value == c.equals
            want = f"wanted '{c.equals}'"
        elif self.kind == "in":
            held = value in self.values
            want = f"wanted one of [{', '.join(c.in_ or [])}]"
        else:
            assert self.pattern is not None
            held = self.pattern.fullmatch(value) is not None
            want = f"does not match /{c.regex}/"
        if held:
            why = (
                c.describe()
                if self.kind in ("alertname", "equals")
                else (f"{c.describe()} ({_show(value)})")
            )
            return ConditionResult(c, True, why)
        return ConditionResult(c, False, f"label {name} is {_show(value)}, {want}")


class _Compiled:
    __slots__ = ("playbook", "any", "all", "bonus", "rank")

    def __init__(self, playbook: Playbook) -> None:
        self.playbook = playbook
        self.any = [_Check(c) for c in playbook.match.any]
        self.all = [_Check(c) for c in playbook.match.all]
        self.bonus = SEVERITY_BONUS[playbook.severity]
        self.rank = _SEVERITY_RANK[playbook.severity]

    def index_keys(self) -> list[tuple[str, str]]:
        """Keys to file this playbook under; [] means "always check" (see module doc)."""
        if self.any and all(ch.index_keys() for ch in self.any):
            return [k for ch in self.any for k in ch.index_keys()]
        keyed = [ch for ch in self.all if ch.index_keys()]
        if keyed:
            best = min(keyed, key=lambda ch: (-ch.weight, len(ch.index_keys())))
            return best.index_keys()
        return []

    def holds(self, labels: dict[str, str]) -> bool:
        return all(ch.holds(labels) for ch in self.all) and (
            not self.any or any(ch.holds(labels) for ch in self.any)
        )

    def evaluate(
        self, labels: dict[str, str]
    ) -> tuple[bool, list[ConditionResult], list[ConditionResult], float]:
        """(matched, held conditions, blocking failures, score of the held ones)."""
        any_res = [ch.evaluate(labels) for ch in self.any]
        all_res = [ch.evaluate(labels) for ch in self.all]
        held = [r for r in any_res + all_res if r.held]
        failed = [r for r in all_res if not r.held]
        any_ok = not any_res or any(r.held for r in any_res)
        if not any_ok:
            # Only when none held do the `any` conditions explain the miss.
            failed = any_res + failed
        weights = [
            ch.weight
            for ch, r in zip(self.any + self.all, any_res + all_res, strict=True)
            if r.held
        ]
        return (any_ok and not failed), held, failed, sum(weights)


class Matcher:
    """Ranks playbooks for an alert. Build once per playbook set (it indexes them)."""

    def __init__(self, playbooks: Iterable[Playbook]) -> None:
        self._compiled: list[_Compiled] = []
        seen: set[str] = set()
        for pb in playbooks:
            if pb.id in seen:
                raise InputError(
                    f"duplicate playbook id '{pb.id}'",
                    hint="playbook ids must be unique across the playbook directory",
                )
            seen.add(pb.id)
            self._compiled.append(_Compiled(pb))
        self._index: dict[tuple[str, str], list[int]] = {}
        self._always: list[int] = []
        for pos, comp in enumerate(self._compiled):
            keys = comp.index_keys()
            if not keys:
                self._always.append(pos)
            for key in dict.fromkeys(keys):  # dedupe, keep order
                self._index.setdefault(key, []).append(pos)

    @property
    def playbooks(self) -> list[Playbook]:
        return [c.playbook for c in self._compiled]

    @property
    def always_checked(self) -> list[str]:
        """Ids of playbooks the index cannot narrow (evaluated for every alert)."""
        return [self._compiled[i].playbook.id for i in self._always]

    def _candidates(self, labels: dict[str, str]) -> list[int]:
        found: set[int] = set(self._always)
        for pair in labels.items():
            hits = self._index.get(pair)
            if hits:
                found.update(hits)
        return sorted(found)

    def match(self, alert: Alert) -> list[MatchResult]:
        """Matching playbooks, best first (score, then severity, then id)."""
        labels = alert.labels
        # Screen with bare verdicts; build the reasons only for the playbooks that match.
        hits = [p for p in self._candidates(labels) if self._compiled[p].holds(labels)]
        return self._rank(self._evaluate(labels, hits)[0])

    def match_linear(self, alert: Alert) -> list[MatchResult]:
        """``match`` without the index or the screening: every playbook explained in full.
        The reference for the equivalence test and the benchmark."""
        return self._rank(self._evaluate(alert.labels, range(len(self._compiled)))[0])

    def explain(self, alert: Alert, *, limit: int = 5) -> tuple[list[MatchResult], list[NearMiss]]:
        """All matches (ranked) and at most ``limit`` near misses.

        Near misses are playbooks that did not match but had a condition hold, most
        held weight first; if no playbook had any condition hold, the ones with the
        fewest failed conditions. Each lists the conditions that blocked the match.
        """
        matches, misses = self._evaluate(alert.labels, range(len(self._compiled)))
        close = [m for m in misses if m[1].matched]
        if close:
            close.sort(key=lambda m: (-m[0], len(m[1].failed), m[2].rank, m[2].playbook.id))
        else:
            close = sorted(misses, key=lambda m: (len(m[1].failed), m[2].rank, m[2].playbook.id))
        return self._rank(matches), [m[1] for m in close[: max(limit, 0)]]

    def to_json(self, alert: Alert, *, limit: int = 5) -> dict[str, Any]:
        """``explain`` as plain dicts, for ``--json`` output and the web API."""
        matches, near = self.explain(alert, limit=limit)
        return explanation_to_json(matches, near)

    def _evaluate(
        self, labels: dict[str, str], positions: Iterable[int]
    ) -> tuple[list[tuple[MatchResult, _Compiled]], list[tuple[float, NearMiss, _Compiled]]]:
        matches: list[tuple[MatchResult, _Compiled]] = []
        misses: list[tuple[float, NearMiss, _Compiled]] = []
        for pos in positions:
            comp = self._compiled[pos]
            ok, held, failed, weight = comp.evaluate(labels)
            if ok:
                score = round(weight + comp.bonus, 6)
                matches.append((MatchResult(comp.playbook, score, held), comp))
            else:
                misses.append((weight, NearMiss(comp.playbook, held, failed), comp))
        return matches, misses

    @staticmethod
    def _rank(matches: list[tuple[MatchResult, _Compiled]]) -> list[MatchResult]:
        matches.sort(key=lambda m: (-m[0].score, m[1].rank, m[0].playbook.id))
        return [m[0] for m in matches]


# --- plain-dict output ----------------------------------------------------------------


def condition_to_json(result: ConditionResult) -> dict[str, Any]:
    return {
        "condition": result.condition.model_dump(by_alias=True, exclude_none=True),
        "describe": result.condition.describe(),
        "held": result.held,
        "why": result.why,
    }


def explanation_to_json(
    matches: list[MatchResult], near_misses: list[NearMiss] | None = None
) -> dict[str, Any]:
    """Results as plain dicts: ``{"matches": [...], "near_misses": [...]}``."""
    return {
        "matches": [
            {
                "playbook": m.playbook.id,
                "title": m.playbook.title,
                "class": m.playbook.class_,
                "severity": m.playbook.severity,
                "score": m.score,
                "matched": [condition_to_json(r) for r in m.matched],
            }
            for m in matches
        ],
        "near_misses": [
            {
                "playbook": n.playbook.id,
                "title": n.playbook.title,
                "matched": [condition_to_json(r) for r in n.matched],
                "failed": [condition_to_json(r) for r in n.failed],
            }
            for n in near_misses or []
        ],
    }


def _show(value: str) -> str:
    text = value if len(value) <= _SHOW else value[: _SHOW - 1] + "…"
    return f"'{text}'"
