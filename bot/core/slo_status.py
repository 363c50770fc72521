"""Where each SLO stands now, from Prometheus: its error budget left over the period and
how fast it burns (``slo status``, in the CLI and Slack).

The ratios are computed from the raw metrics with the same expressions the generated
recording rules use (``bot.playbook.slo_rules.sli``), so the answer does not depend
on the rules being loaded. A burn rate of 1 spends the budget exactly over the
period; the page fires at 14.4 over an hour. A ratio with no traffic is unknown
(None), never read as zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from actions.base import MetricsSource
from bot.playbook.engine_profiles import profile
from bot.playbook.slo_rules import sli, spend
from bot.playbook.slos import Budget, Objective, SloFile


@dataclass(frozen=True)
class ObjectiveState:
    name: str
    objective: Objective
    bad_ratio: float | None  # over the period
    budget_left: float | None  # share of the error budget not spent (can go below 0)
    burn_1h: float | None
    burn_6h: float | None


@dataclass(frozen=True)
class BudgetState:
    name: str
    budget: Budget
    spent_1h: float | None
    spent_1d: float | None


async def _value(metrics: MetricsSource, promql: str) -> float | None:
    rows = await metrics.query(promql)
    if not rows or math.isnan(rows[0].value) or math.isinf(rows[0].value):
        return None
    return rows[0].value


async def slo_status(metrics: MetricsSource, slos: SloFile) -> tuple[list[ObjectiveState],
                                                                     list[BudgetState]]:
    period = f"{int(slos.period.total_seconds())}s"
    source = profile(slos.source)
    objectives = []
    for name, o in slos.objectives.items():
        ratio = await _value(metrics, sli(o, period, source).ratio())
        burns = [await _value(metrics, sli(o, w, source).ratio()) for w in ("1h", "6h")]
        budget = o.error_budget
        objectives.append(ObjectiveState(
            name, o, ratio, None if ratio is None else 1 - ratio / budget,
            *(None if b is None else b / budget for b in burns)))
    budgets = []
    for name, b in slos.budgets.items():
        # Per customer: the caller nearest its limit (the highest spend).
        spent = [await _value(metrics, f"max({spend(b, w)})" if b.per_customer else spend(b, w))
                 for w in ("1h", "1d")]
        budgets.append(BudgetState(name, b, *spent))
    return objectives, budgets
