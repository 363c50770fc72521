"""The canary judge: proper tests on binned and counted samples, thresholds from a
linted file, and its error rates over repeated good and bad canaries."""

from __future__ import annotations

import math
import random

import pytest

from bot.base.errors import PlaybookError
from bot.core.canary_judge import (
    SIGNALS,
    Histogram,
    Ratio,
    judge,
    judge_signal,
    proportion_p,
    rank_p,
)
from bot.playbook.canary_thresholds import (
    Threshold,
    load_thresholds,
    load_thresholds_text,
    thresholds_json_schema,
)

TOKEN_BUCKETS = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, math.inf]


def histogram(values: list[float], bounds: list[float] = TOKEN_BUCKETS) -> Histogram:
    """Prometheus's cumulative buckets for ``values``."""
    return Histogram([(le, float(sum(v <= le for v in values))) for le in bounds])


def tokens(rng: random.Random, n: int, mean: float) -> list[float]:
    return [rng.lognormvariate(math.log(mean) - 0.125, 0.5) for _ in range(n)]


def test_the_proportion_test_matches_the_textbook():
    # 30/1000 vs 10/1000: pooled 0.02, z = 0.02 / sqrt(0.02 * 0.98 * 0.002) = 3.194
    p = proportion_p(Ratio(30, 1000), Ratio(10, 1000), "higher")
    assert p == pytest.approx(7.0e-4, rel=0.01)
    # Few events (an expected count under 5): Fisher's exact test instead. 3/100 vs 0/100:
    # P(X >= 3) for X ~ Hypergeometric(200, 3, 100) = C(100,3) / C(200,3) = 0.1231.
    assert proportion_p(Ratio(3, 100), Ratio(0, 100), "higher") == pytest.approx(0.1231,
                                                                                 rel=0.01)
    assert proportion_p(Ratio(10, 1000), Ratio(30, 1000), "higher") > 0.99  # better, not worse
    assert proportion_p(Ratio(900, 1000), Ratio(990, 1000), "lower") < 1e-9  # fewer valid


def test_the_rank_test_on_buckets_sees_a_shift_and_not_noise():
    rng = random.Random(3)
    base = histogram(tokens(rng, 2000, 300))
    same = histogram(tokens(rng, 300, 300))
    doubled = histogram(tokens(rng, 300, 600))
    assert rank_p(same, base, "higher") > 0.01
    assert rank_p(doubled, base, "higher") < 1e-10
    assert rank_p(base, doubled, "higher") > 0.99
    with pytest.raises(ValueError, match="same buckets"):
        rank_p(histogram([1.0], [1, math.inf]), base, "higher")


def test_histogram_mean_and_p95_follow_prometheus():
    h = Histogram([(10, 50.0), (20, 100.0), (math.inf, 100.0)])
    assert h.n == 100 and h.counts() == [50, 50, 0]
    assert h.mean() == pytest.approx(10.0)  # midpoints 5 and 15
    assert h.quantile(0.95) == pytest.approx(19.0)  # linear inside (10, 20]


def test_a_signal_says_why_in_numbers():
    limit = Threshold(max_change=0.25, min_samples=200, critical=True)
    rng = random.Random(5)
    base, bad = histogram(tokens(rng, 2000, 300)), histogram(tokens(rng, 400, 600))
    v = judge_signal("output_tokens", limit, bad, base, alpha=0.01)
    assert v.outcome == "fail" and v.critical and v.change > 0.6
    assert "output tokens per request +" in v.why and "limit +25%" in v.why
    few = judge_signal("output_tokens", limit, histogram(tokens(rng, 50, 600)), base, alpha=0.01)
    assert few.outcome == "not enough data" and "50 canary / 2000 baseline" in few.why
    # Worse by more than the limit but not significant is a pass (noise), and said so.
    tiny = judge_signal("error", Threshold(max_change=0.5, min_samples=200),
                        Ratio(1, 200), Ratio(1, 1000), alpha=0.01)
    assert tiny.outcome == "pass" and "not significant" in tiny.why
    # Schema validity: lower is worse; a drop from 99.5% to 90% fails.
    schema = judge_signal("schema_valid", Threshold(max_change=0.02), Ratio(450, 500),
                          Ratio(4975, 5000), alpha=0.01)
    assert schema.outcome == "fail" and schema.change == pytest.approx(0.0955, rel=0.01)


def test_the_decision_rolls_back_on_a_critical_failure_and_holds_on_another():
    t = load_thresholds().for_route("chat")
    rng = random.Random(9)
    base = histogram(tokens(rng, 3000, 300))
    good = histogram(tokens(rng, 400, 300))
    ok_ratio = (Ratio(4, 400), Ratio(30, 3000))
    assert judge(t, {"output_tokens": (good, base), "error": ok_ratio},
                 alpha=0.01).decision == "promote"
    bad = histogram(tokens(rng, 400, 700))
    verdict = judge(t, {"output_tokens": (bad, base), "error": ok_ratio}, alpha=0.01)
    assert verdict.decision == "rollback" and [s.signal for s in verdict.failed] == [
        "output_tokens"]
    worse = (Ratio(60, 400), Ratio(150, 3000))  # 15% vs 5%
    assert judge(t, {"fallback": worse}, alpha=0.01).decision == "hold"  # not critical
    # Refusing users is user-visible breakage, and rolling back is the safe direction.
    assert judge(t, {"refusal": worse}, alpha=0.01).decision == "rollback"
    assert judge(t, {"refusal": (Ratio(1, 20), Ratio(5, 100))}, alpha=0.01).decision == "wait"


def test_over_twenty_good_and_twenty_bad_canaries_no_false_rollback_and_no_miss():
    # The sandbox's traffic shape: a 5% canary of 8,000 requests (400) beside the rest.
    t = load_thresholds().for_route("chat")
    rng = random.Random(2026)
    false_rollbacks = misses = 0
    for _ in range(20):
        base = histogram(tokens(rng, 7600, 300))
        good = histogram(tokens(rng, 400, 300))
        bad = histogram(tokens(rng, 400, 600))  # a prompt that doubles output tokens
        samples_good = {"output_tokens": (good, base)}
        samples_bad = {"output_tokens": (bad, base)}
        false_rollbacks += judge(t, samples_good, alpha=0.01).decision == "rollback"
        misses += judge(t, samples_bad, alpha=0.01).decision != "rollback"
    assert (false_rollbacks, misses) == (0, 0)


def test_the_shipped_thresholds_cover_every_signal_and_routes_override_one():
    shipped = load_thresholds()
    assert set(shipped.signals) == set(SIGNALS)
    custom = load_thresholds_text(
        "version: 1\nsignals:\n  output_tokens: {max_change: 0.25}\n"
        "routes:\n  chat-long: {output_tokens: {max_change: 0.6, critical: true}}\n")
    assert custom.for_route("chat-long")["output_tokens"] == Threshold(
        max_change=0.6, min_samples=200, critical=True)
    assert custom.for_route("chat")["output_tokens"].max_change == 0.25
    assert "signals" in thresholds_json_schema()["properties"]


def test_a_bad_thresholds_file_names_file_line_and_field():
    text = ("version: 1\nsignals:\n  output_tokens: {max_change: 0.25}\n"
            "  tokens_out: {max_change: 0.3}\n")
    with pytest.raises(PlaybookError) as err:
        load_thresholds_text(text, "canary.yaml")
    (problem,) = err.value.problems
    assert (problem.file, problem.line) == ("canary.yaml", 4)
    assert "tokens_out" in problem.field
    with pytest.raises(PlaybookError, match="greater than 0"):
        load_thresholds_text("version: 1\nsignals:\n  error: {max_change: -1}\n", "c.yaml")
