"""Counting: what the collector counts, and the one place that writes the metrics.

A decided failure is counted by whichever serving process drains it from the store
(`Counts.drain`): the decision's script keeps what counting needs (`Counted`) next to it, so
settling (in any process or replica) never holds metrics, and nothing it decided is counted
twice or lost with it. An ingested batch is counted by the serving process that answered it
(`Counts.batch`), whichever process stored it. Redis health is written here too: every round
trip's latency and outcome (`Counts.redis`), and the startup and watch checks (`redis_up`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from collector.classify import Cause, Decision
from collector.ingest import BatchResult, StoredBatch
from collector.keys import Counted, PendingFailure, decode_counted
from collector.metrics import Metrics, exemplar
from collector.store import Backlog, Store, StoreUnavailableError

# Causes whose fix is one client's: counted by client too (precondition_client_failures_total).
CLIENT_CAUSES = frozenset({"blind_retry", "missing_precondition", "cross_resource"})


def counted_of(pending: PendingFailure, record: dict[str, Any], decision: Decision) -> Counted:
    """What counting a decided failure needs of it."""
    evidence = decision.evidence
    race = evidence.get("race_seconds") if decision.cause is Cause.CONCURRENT_WRITE else None
    superseded = evidence.get("superseded_seconds_ago")
    return Counted(
        pending.service,
        record.get("route"),
        record.get("method"),
        int(record.get("status") or 0),
        str(decision.cause),
        pending.request_id,
        race if isinstance(race, int | float) else None,
        superseded if isinstance(superseded, int | float) else None,
        tuple(str(kind) for kind in evidence.get("rewrite", ())),
        record.get("client_id") if decision.cause in CLIENT_CAUSES else None,
    )


GroupKey = tuple[str, str | None, str | None, int, str, tuple[str, ...], str | None]


@dataclass(slots=True)
class Group:
    """Decided failures that share their labels: how many, the newest one's request id (the
    exemplar), and their histogram values."""

    count: int
    request_id: str
    race_seconds: list[float]
    superseded_seconds: list[float]


class Tally:
    """Decided failures summed by label set: what a settle worker sends the serving process,
    one message per interval however many failures it decided."""

    def __init__(self) -> None:
        self.groups: dict[GroupKey, Group] = {}

    def add(self, counted: Counted) -> None:
        key = _key_of(counted)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(0, counted.request_id, [], [])
        group.count += 1
        group.request_id = counted.request_id
        if counted.race_seconds is not None:
            group.race_seconds.append(counted.race_seconds)
        if counted.superseded_seconds is not None:
            group.superseded_seconds.append(counted.superseded_seconds)

    def take(self) -> dict[GroupKey, Group]:
        groups, self.groups = self.groups, {}
        return groups


def _key_of(c: Counted) -> GroupKey:
    return (c.service, c.route, c.method, c.status, c.cause, c.rewrites, c.client)


class Counts:
    """Writes the metrics: decided failures, ingested batches, Redis health, the gauges."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._series: dict[tuple[object, ...], Any] = {}
        self._exemplar_at: dict[int, float] = {}

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    async def drain(self, store: Store, services: Iterable[str]) -> int:
        """Count the decided failures the store holds for counting (this process's, a settle
        worker's, or another replica's: whoever drains counts them, once); how many."""
        tally, drained = Tally(), 0
        for service, entries in (await store.take_counted(services)).items():
            drained += len(entries)
            for entry in entries:
                tally.add(decode_counted(service, entry))
        for key, group in tally.take().items():
            self.decided(key, group)
        return drained

    def decided(self, key: GroupKey, group: Group) -> None:
        """Count decided failures that share their labels."""
        service_name, route_name, method, status, cause, rewrites, client = key
        m = self.metrics
        service = m.labels.service(service_name)
        route = m.labels.route(service, route_name)
        labels = (service, route, m.labels.method(method), str(status))
        series = self._series_of(m.failures, *labels, cause)
        series.inc(group.count, exemplar=self._exemplar(series, group.request_id))
        if group.race_seconds:
            race = self._series_of(m.race_seconds, service)
            for seconds in group.race_seconds:
                race.observe(seconds, exemplar=self._exemplar(race, group.request_id))
        if group.superseded_seconds:
            staleness = self._series_of(m.staleness_seconds, service)
            for seconds in group.superseded_seconds:
                staleness.observe(seconds)
        for kind in rewrites:
            m.rewrites.labels(service, kind).inc(group.count)
        if client:
            m.client_failures.labels(service, m.labels.client(service, client), cause).inc(
                group.count
            )

    def _exemplar(self, series: object, request_id: str) -> dict[str, str] | None:
        """A `request_id` exemplar at most once a second per series: a scrape keeps only the
        latest anyway, and validating one costs more than the increment it rides on."""
        now = time.monotonic()
        if now - self._exemplar_at.get(id(series), -1.0) < 1.0:
            return None
        self._exemplar_at[id(series)] = now
        return exemplar(request_id)

    def _series_of(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: labels() validates and locks on every call, and
        the capped label sets keep the cache small."""
        key = (id(metric), *labels)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = metric.labels(*labels)
        return series

    def batch(self, batch: StoredBatch, seconds: float) -> BatchResult:
        """Count a batch in the metrics (one label lookup per distinct label set) and return its
        answer; raises StoreUnavailableError if it was not stored (its rejected lines count)."""
        result = batch.result
        if batch.unavailable is not None:
            self.metrics.events.labels("rejected").inc(len(result.rejected))
            raise StoreUnavailableError(batch.unavailable)
        labels = self.metrics.labels
        for (service, route, method, status), n in batch.requests.items():
            label = labels.service(service)
            self.metrics.requests.labels(
                label, labels.route(label, route), labels.method(method), str(status)
            ).inc(n)
        self.metrics.events.labels("rejected").inc(len(result.rejected))
        self.metrics.events.labels("accepted").inc(result.accepted)
        self.metrics.events.labels("duplicate").inc(result.duplicates)
        self.metrics.ingest_seconds.observe(seconds)
        return result

    def redis(self, operation: str, seconds: float, failed: bool) -> None:
        """One Redis round trip (the store's observer): its latency, and whether Redis is up."""
        self.metrics.redis_seconds.labels(operation).observe(seconds)
        if failed:
            self.metrics.redis_errors.labels(operation).inc()
        self.metrics.redis_up.set(0 if failed else 1)

    def redis_up(self, up: bool) -> None:
        self.metrics.redis_up.set(1 if up else 0)

    def backlog(self, backlog: Backlog) -> None:
        self.metrics.pending.set(backlog.pending)
        self.metrics.oldest_pending.set(backlog.lag_seconds)

    def processes(self, role: str, alive: int) -> None:
        self.metrics.processes.labels(role).set(alive)
