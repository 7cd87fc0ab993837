"""Deploys: did the latest deploy make precondition failures worse? A pure, event-time test.

The failure ratio after a deploy is compared with the ratio just before it. Causes that measure
client concurrency (concurrent_write, blind_retry, create_conflict) are left out of the ratio:
a deploy does not change how often clients race, and a race storm that spans a deploy must not
page as a bad deploy. The test must be significant against the *upper* confidence bound of the
baseline, so a sparse baseline (few requests, or none) makes the detector more cautious, never
more eager.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# Causes whose rate depends on client behaviour, not on what the service runs.
CONCURRENCY_CAUSES = frozenset({"concurrent_write", "blind_retry", "create_conflict"})
BASELINE_SECONDS = 600.0  # the window just before the deploy
WATCH_SECONDS = 1800.0  # how long after a deploy it is judged
MIN_REQUESTS = 50  # conditional requests after the deploy before any verdict
MIN_FAILURES = 10  # deploy-sensitive failures after the deploy before any verdict
MIN_RATIO_INCREASE = 0.02  # an absolute increase smaller than this is not an incident
P_VALUE = 1e-4


@dataclass(frozen=True, slots=True)
class Counts:
    """Conditional requests and failures by cause in some event-time span."""

    requests: int
    failures: Mapping[str, int]

    def sensitive(self) -> int:
        return sum(n for cause, n in self.failures.items() if cause not in CONCURRENCY_CAUSES)


@dataclass(frozen=True, slots=True)
class Regression:
    """A deploy whose failure ratio is significantly above its baseline."""

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


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact, in log space so large n does not overflow."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0 or k > n:
        return 1.0 if p >= 1.0 else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p
        + (n - i) * log_q
        for i in range(k, n + 1)
    ]  # fmt: skip
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def assess_deploy(before: Counts, after: Counts) -> Regression | None:
    """A Regression when `after` is significantly worse than `before`, else None."""
    sensitive_after = after.sensitive()
    if after.requests < MIN_REQUESTS or sensitive_after < MIN_FAILURES:
        return None
    baseline = before.sensitive() / before.requests if before.requests else 0.0
    ratio = sensitive_after / after.requests
    bound = _upper_bound(before.sensitive(), before.requests)
    if ratio - baseline < MIN_RATIO_INCREASE or ratio <= bound:
        return None
    p_value = binomial_tail(sensitive_after, after.requests, bound)
    if p_value >= P_VALUE:
        return None
    return Regression(
        cause=dominant_cause(before, after),
        baseline_ratio=round(baseline, 6),
        ratio=round(ratio, 6),
        p_value=p_value,
    )


def dominant_cause(before: Counts, after: Counts) -> str:
    """The deploy-sensitive cause whose share of requests grew the most."""

    def share(counts: Counts, cause: str) -> float:
        return counts.failures.get(cause, 0) / counts.requests if counts.requests else 0.0

    causes = {c for c in (*before.failures, *after.failures) if c not in CONCURRENCY_CAUSES}
    return max(sorted(causes), key=lambda c: share(after, c) - share(before, c), default="unknown")


# -- tracking deploys in the store ------------------------------------------------------------
# The verdicts above are pure; the tracker below reads counts from the store and writes the
# verdicts back, so any replica, live or replaying, reaches the same verdict.


@dataclass(frozen=True, slots=True)
class Deploy:
    """One version of a service, with when it started and its verdict."""

    version: str
    ts: float
    source: str
    formats: tuple[str, ...]
    regression: dict[str, object] | None


def _sum(minutes: Mapping[int, Mapping[str, int]], first: int, last: int) -> Counts:
    requests = 0
    failures: dict[str, int] = {}
    for minute in range(first, last + 1):
        for key, n in minutes.get(minute, {}).items():
            if key == "req":
                requests += n
            elif key.startswith("c:"):
                failures[key[2:]] = failures.get(key[2:], 0) + n
    return Counts(requests, failures)


def split_counts(
    minutes: Mapping[int, Mapping[str, int]], deploy_ts: float, until: float
) -> tuple[Counts, Counts]:
    """Counts in the baseline window before a deploy and from the deploy until `until`."""
    deploy_minute = int(deploy_ts // 60)
    first = int((deploy_ts - BASELINE_SECONDS) // 60)
    before = _sum(minutes, first, deploy_minute - 1)
    after = _sum(minutes, deploy_minute, int(until // 60))
    return before, after
