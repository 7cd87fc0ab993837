"""The post-deploy detector: cause by cause, honest on sparse counts, fires on real regressions."""

from __future__ import annotations

import math
import random

import pytest

from collector.deploys import (
    DEPLOY_CAUSES,
    STALE_SUPERSEDED,
    Counts,
    assess_deploy,
    baseline_counts,
    binomial_tail,
    count_key,
    first_regression,
)


def test_binomial_tail_matches_known_values() -> None:
    """P(X >= k) agrees with hand-computed binomial tails."""
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_tail(1, 3, 0.5) == pytest.approx(1 - 0.125)
    assert binomial_tail(500, 1000, 0.1) < 1e-100
    assert math.isfinite(binomial_tail(5, 100_000, 0.00001))


def test_binomial_tail_agrees_with_the_sum_of_terms_on_both_sides_of_the_mean() -> None:
    """Summing away from the mode gives the exact tail above and below the mean."""
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(1, 120)
        k, p = rng.randint(0, n + 1), rng.random()
        exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_binomial_tail_of_a_huge_sample_is_cheap() -> None:
    """Far in the tail of n = 10^9 the sum stops after the terms that count (no O(n) walk)."""
    assert binomial_tail(2_000_000, 1_000_000_000, 0.001) < 1e-100


def test_format_change_regression_fires_and_names_the_cause() -> None:
    """1% stale before; 18% format_change after: a regression of format_change, with its own
    baseline and ratio."""
    before = Counts(2000, {"stale_etag": 20, "concurrent_write": 100})
    after = Counts(300, {"format_change": 55, "stale_etag": 3, "concurrent_write": 15})
    found = assess_deploy(before, after)
    assert found is not None
    assert found.cause == "format_change"
    assert found.baseline_ratio == 0.0
    assert found.ratio == pytest.approx(55 / 300, abs=1e-6)


def test_a_burst_of_one_cause_is_not_drowned_by_a_noisy_baseline() -> None:
    """Stale tabs were 15% before; 0 format changes before, 54 of 353 requests after: flagged
    (summed, 74/353 after against 15% before, it was not)."""
    before = Counts(300, {"stale_etag": 45})
    after = Counts(353, {"format_change": 54, "stale_etag": 20})
    found = assess_deploy(before, after)
    assert found is not None and found.cause == "format_change"


def test_stale_tabs_a_write_explains_never_implicate_a_deploy() -> None:
    """ETags superseded by logged writes long before a no-op deploy, saved after it: no verdict."""
    before = Counts(500, {STALE_SUPERSEDED: 5})
    after = Counts(400, {STALE_SUPERSEDED: 80, "concurrent_write": 40})
    assert assess_deploy(before, after) is None


def test_count_key_tells_explained_stale_etags_apart() -> None:
    """A stale ETag with its superseding write is client behaviour; an unknown one is not."""
    assert count_key("stale_etag", {"superseded_by": "w-1"}) == STALE_SUPERSEDED
    assert count_key("stale_etag", {"unknown_etag": True}) == "stale_etag"
    assert count_key("format_change", {}) == "format_change"
    assert STALE_SUPERSEDED not in DEPLOY_CAUSES
    for client in ("concurrent_write", "blind_retry", "create_conflict", "cross_resource"):
        assert client not in DEPLOY_CAUSES


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


def test_the_most_significant_cause_is_named() -> None:
    """A cause that was already common and did not grow is not blamed."""
    before = Counts(1000, {"stale_etag": 100})
    after = Counts(1000, {"stale_etag": 100, "missing_precondition": 80})
    found = assess_deploy(before, after)
    assert found is not None and found.cause == "missing_precondition"


def test_baseline_is_ten_minutes_or_longer_while_sparse() -> None:
    """The baseline is the 10 minutes before the deploy, reaching back while they hold few
    requests."""
    deploy = 60 * 1000 + 30.0
    busy = {m: {"req": 50, "c:stale_etag": 1} for m in range(970, 1000)}
    assert baseline_counts(busy, deploy) == Counts(500, {"stale_etag": 10})
    sparse = {m: {"req": 5} for m in range(930, 1000)}
    assert baseline_counts(sparse, deploy).requests == 200  # 40 minutes back
    quiet = {m: {"req": 2} for m in range(930, 1000)}
    assert baseline_counts(quiet, deploy).requests == 2 * 60  # an hour back at most


def test_first_regression_finds_the_minute_it_became_significant() -> None:
    """Judged minute by minute: the verdict names the first minute whose counts since the
    deploy are significant, however late it is judged."""
    deploy = 60 * 1000 + 10.0
    minutes: dict[int, dict[str, int]] = {m: {"req": 60} for m in range(985, 1000)}
    for m in range(1000, 1030):
        minutes[m] = {"req": 60, "c:format_change": 2 if m < 1004 else 12}
    found = first_regression(minutes, deploy, until=60 * 1030)
    assert found is not None
    regression, detected_at = found
    assert regression.cause == "format_change"
    # Live, a minute's counts are complete once the watermark passes it.
    for until in range(60 * 1000 + 30, 60 * 1030, 30):
        visible = {m: counts for m, counts in minutes.items() if (m + 1) * 60 <= until}
        live = first_regression(visible, deploy, until=until)
        if live is not None:
            assert live[1] == detected_at
            break
    else:
        raise AssertionError("never detected live")
