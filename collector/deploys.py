"""Deploys: did the latest deploy make precondition failures worse? Pure, event-time tests.

A deploy is judged cause by cause (DESIGN "Deploy verdicts"). For each cause a deploy can
produce, its rate per conditional request after the deploy is tested against its own rate
before it, and the verdict names the cause that moved: a burst of `format_change` is not
drowned by stale tabs that were already there. Causes of client behaviour (races, blind
retries, create races, cross-resource ETags, and ETags a logged write made stale) never
implicate a deploy: a deploy cannot make a client's ETag stale after the fact, and a race storm
that spans a deploy is not a bad deploy.

Each test must be significant against the *upper* 99% confidence bound of its baseline, so a
sparse baseline (few requests, or none) makes the detector more careful, never more eager; a
Bonferroni correction keeps testing eight causes from making it eager either. A deploy is
judged minute by minute of event time, so a replay finds the same minute a live collector did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The causes a deploy can produce, each tested on its own. `stale_etag` here is only the one
# no logged write explains (an unknown ETag of the current format).
DEPLOY_CAUSES = (
    "format_change",
    "unstable_etag",
    "weak_etag",
    "proxy_rewrite",
    "missing_precondition",
    "business_conflict",
    "unknown",
    "stale_etag",
)
# How a stale ETag that a logged write superseded is counted: client behaviour, not a deploy's.
STALE_SUPERSEDED = "stale_etag_superseded"
BASELINE_SECONDS = 600.0  # the window just before the deploy...
BASELINE_MAX_SECONDS = 3600.0  # ...reaching back up to an hour while it has few requests
BASELINE_MIN_REQUESTS = 200
WATCH_SECONDS = 1800.0  # how long after a deploy it is judged
MIN_REQUESTS = 50  # conditional requests after the deploy before any verdict
MIN_FAILURES = 10  # failures of the cause after the deploy before it can be blamed
MIN_RATIO_INCREASE = 0.02  # an absolute increase smaller than this is not an incident
P_VALUE = 1e-4  # for the whole deploy: each cause is tested at P_VALUE / len(DEPLOY_CAUSES)


def count_key(cause: str, evidence: Mapping[str, Any]) -> str:
    """The name a decided failure is counted under for the deploy detector."""
    if cause == "stale_etag" and evidence.get("superseded_by"):
        return STALE_SUPERSEDED
    return cause


@dataclass(frozen=True, slots=True)
class Counts:
    """Conditional requests and failures by count key in some event-time span."""

    requests: int
    failures: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Regression:
    """A deploy after which one cause's rate is significantly above its baseline."""

    cause: str
    baseline_ratio: float
    ratio: float
    p_value: float


def _upper_bound(failures: int, requests: int, z: float = 2.576) -> float:
    """Wilson score upper bound (99%) of a ratio; 1.0 when nothing was seen."""
    if requests <= 0:
        return 1.0
    p = failures / requests
    denominator = 1 + z * z / requests
    centre = p + z * z / (2 * requests)
    spread = z * math.sqrt(p * (1 - p) / requests + z * z / (4 * requests * requests))
    return min(1.0, (centre + spread) / denominator)


def _log_pmf(i: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(p) + (n - i) * math.log1p(-p)
    )  # fmt: skip


def _sum_away_from_mode(start: int, n: int, p: float, step: int) -> float:
    """Sum of P(X = i) from `start` walking away from the mode (step +1 up, -1 down), each term
    from the one before by their ratio: no list, and it stops once a term no longer counts."""
    odds = p / (1 - p)
    term, total = 1.0, 1.0  # relative to the first term
    i = start
    while (i < n) if step > 0 else (i > 0):
        if step > 0:
            term *= (n - i) / (i + 1) * odds
        else:
            term *= i / (n - i + 1) / odds
        i += step
        total += term
        if term < total * 1e-17:
            break
    return math.exp(_log_pmf(start, n, p)) * total


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact, in log space so large n does not overflow.

    Above the mean the terms only shrink from k upwards, so they are summed from k up; below
    it, one minus the lower tail summed from k - 1 down. Either way the sum walks away from the
    mode and stops after the few terms that count.
    """
    if k <= 0:
        return 1.0
    if p <= 0.0 or k > n:
        return 0.0
    if p >= 1.0:
        return 1.0
    if k > n * p:
        return min(1.0, _sum_away_from_mode(k, n, p, +1))
    return max(0.0, 1.0 - _sum_away_from_mode(k - 1, n, p, -1))


def assess_deploy(before: Counts, after: Counts) -> Regression | None:
    """The cause whose rate after the deploy is most significantly above its own baseline, or
    None when no cause moved significantly."""
    if after.requests < MIN_REQUESTS:
        return None
    threshold = P_VALUE / len(DEPLOY_CAUSES)
    found: Regression | None = None
    for cause in DEPLOY_CAUSES:
        failures = after.failures.get(cause, 0)
        if failures < MIN_FAILURES:
            continue
        earlier = before.failures.get(cause, 0)
        baseline = earlier / before.requests if before.requests else 0.0
        ratio = failures / after.requests
        bound = _upper_bound(earlier, before.requests)
        if ratio - baseline < MIN_RATIO_INCREASE or ratio <= bound:
            continue
        p_value = binomial_tail(failures, after.requests, bound)
        if p_value < threshold and (found is None or p_value < found.p_value):
            found = Regression(cause, round(baseline, 6), round(ratio, 6), p_value)
    return found


# -- tracking deploys in the store ------------------------------------------------------------
# The verdicts above are pure; the tracker reads counts from the store and writes the verdicts
# back, so any replica, live or replaying, reaches the same verdict.


@dataclass(frozen=True, slots=True)
class Deploy:
    """One version of a service, with when it started and its verdict."""

    version: str
    ts: float
    source: str
    formats: tuple[str, ...]
    regression: dict[str, object] | None


def _add(minute: Mapping[str, int], requests: int, failures: dict[str, int]) -> int:
    """Add one minute's counts to `failures`; the requests with the minute's added."""
    for key, n in minute.items():
        if key == "req":
            requests += n
        elif key.startswith("c:"):
            failures[key[2:]] = failures.get(key[2:], 0) + n
    return requests


def baseline_counts(minutes: Mapping[int, Mapping[str, int]], deploy_ts: float) -> Counts:
    """The counts just before a deploy: its last 10 minutes, reaching back a minute at a time
    (up to an hour) while they hold fewer than BASELINE_MIN_REQUESTS requests."""
    deploy_minute = int(deploy_ts // 60)
    shortest = int(BASELINE_SECONDS // 60)
    requests = 0
    failures: dict[str, int] = {}
    for back in range(1, int(BASELINE_MAX_SECONDS // 60) + 1):
        if back > shortest and requests >= BASELINE_MIN_REQUESTS:
            break
        requests = _add(minutes.get(deploy_minute - back, {}), requests, failures)
    return Counts(requests, failures)


def first_regression(
    minutes: Mapping[int, Mapping[str, int]], deploy_ts: float, until: float
) -> tuple[Regression, float] | None:
    """The first minute of event time after the deploy (up to `until`, at most WATCH_SECONDS
    after it) at which the counts since the deploy show a regression, and the regression.

    Judged minute by minute, so a log replayed in one go gets the verdict, and the detection
    time, that a collector judging it live would have given.
    """
    before = baseline_counts(minutes, deploy_ts)
    until = min(until, deploy_ts + WATCH_SECONDS)
    requests = 0
    failures: dict[str, int] = {}
    for minute in range(int(deploy_ts // 60), int(until // 60) + 1):
        if minute not in minutes:
            continue
        requests = _add(minutes[minute], requests, failures)
        found = assess_deploy(before, Counts(requests, dict(failures)))
        if found is not None:
            return found, min(until, (minute + 1) * 60.0)
    return None
