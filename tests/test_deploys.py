"""The post-deploy detector: honest on sparse counts, fires on real regressions only."""

from __future__ import annotations

import math

import pytest

from collector.deploys import Counts, assess_deploy, binomial_tail, dominant_cause, split_counts


def test_binomial_tail_matches_known_values() -> None:
    """P(X >= k) agrees with hand-computed binomial tails."""
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_tail(1, 3, 0.5) == pytest.approx(1 - 0.125)
    assert binomial_tail(500, 1000, 0.1) < 1e-100
    assert math.isfinite(binomial_tail(5, 100_000, 0.00001))


def test_format_change_regression_fires_and_names_the_cause() -> None:
    """1% failures before, 20% after, mostly format_change: a regression of format_change."""
    before = Counts(2000, {"stale_etag": 20, "concurrent_write": 100})
    after = Counts(300, {"format_change": 55, "stale_etag": 3, "concurrent_write": 15})
    found = assess_deploy(before, after)
    assert found is not None
    assert found.cause == "format_change"
    assert found.baseline_ratio == pytest.approx(0.01)
    assert found.ratio == pytest.approx(58 / 300, abs=1e-6)


def test_no_op_deploy_does_not_fire() -> None:
    """The same ratio before and after a deploy is no regression."""
    before = Counts(3000, {"stale_etag": 60, "proxy_rewrite": 30})
    after = Counts(600, {"stale_etag": 13, "proxy_rewrite": 6})
    assert assess_deploy(before, after) is None


def test_race_storm_is_not_a_bad_deploy() -> None:
    """A surge of concurrent writes and blind retries after a deploy does not page as one."""
    before = Counts(2000, {"concurrent_write": 20})
    after = Counts(800, {"concurrent_write": 300, "blind_retry": 120, "stale_etag": 2})
    assert assess_deploy(before, after) is None


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (Counts(0, {}), Counts(400, {"format_change": 200})),  # no baseline at all
        (Counts(5, {}), Counts(400, {"format_change": 60})),  # too sparse to trust
        (Counts(2000, {}), Counts(30, {"format_change": 20})),  # too few requests after
        (Counts(2000, {}), Counts(400, {"format_change": 5})),  # too few failures after
    ],
)
def test_sparse_counts_stay_quiet(before: Counts, after: Counts) -> None:
    """Without enough evidence on either side of the deploy, no verdict."""
    assert assess_deploy(before, after) is None


def test_zero_failures_before_still_allows_a_verdict() -> None:
    """A clean baseline with plenty of requests makes a clear jump significant."""
    before = Counts(3000, {})
    after = Counts(400, {"weak_etag": 40})
    found = assess_deploy(before, after)
    assert found is not None and found.cause == "weak_etag"


def test_dominant_cause_is_the_one_that_grew() -> None:
    """A cause that was already common but did not grow is not blamed."""
    before = Counts(1000, {"stale_etag": 100})
    after = Counts(1000, {"stale_etag": 100, "missing_precondition": 80})
    assert dominant_cause(before, after) == "missing_precondition"


def test_split_counts_uses_the_minutes_around_the_deploy() -> None:
    """Minutes before the deploy are the baseline, minutes from it on are `after`."""
    deploy = 60 * 1000 + 30.0
    minutes = {
        989: {"req": 100, "c:stale_etag": 1},  # 11 minutes before: outside the baseline
        995: {"req": 10, "c:stale_etag": 2},
        999: {"req": 20},
        1000: {"req": 30, "c:format_change": 5},
        1003: {"req": 40, "c:format_change": 7},
    }
    before, after = split_counts(minutes, deploy, until=60 * 1003 + 1)
    assert before == Counts(30, {"stale_etag": 2})
    assert after == Counts(70, {"format_change": 12})
