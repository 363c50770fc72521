"""canary_samples.collect: the judge's ratios from counters Prometheus extrapolated."""

from __future__ import annotations

import asyncio

from bot.core.canary_judge import Histogram, Ratio
from bot.core.canary_samples import Version, collect

CANARY, BASELINE = Version("extract", "v2"), Version("extract", "v1")


def test_a_counter_read_a_hair_over_its_total_is_a_share_of_one_not_more() -> None:
    # increase() extrapolates each series alone: on a real proxy, a canary whose every
    # answer broke JSON read 248.0094 invalid of 248 responses (a valid share below 0).
    counts = {("llm_app_output_invalid_total", "v2"): 248.0094,
              ("llm_app_responses_total", "v2"): 248.0,
              ("llm_app_responses_total", "v1"): 259.0}

    async def histogram(metric: str, v: Version) -> Histogram | None:
        return None

    async def count(metric: str, v: Version) -> float | None:
        return counts.get((metric, v.prompt_version or ""))

    samples = asyncio.run(collect(histogram, count, CANARY, BASELINE))
    canary, baseline = samples["schema_valid"]
    assert canary == Ratio(0.0, 248.0) and baseline == Ratio(259.0, 259.0)
    assert set(samples) == {"schema_valid", "refusal", "safety_flag"}
