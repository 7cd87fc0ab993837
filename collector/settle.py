"""Settling: once a service's watermark passes a failure, classify it, store the decision, count it.

Any replica may settle any failure; the store hands each one to a single claimer and keeps the
first decision. The script that keeps it also keeps what counting it needs (`Counted`), and a
serving process takes that from the store and counts it (`Settler.drain`): so a decided failure
is counted exactly once, in one replica's metrics, even when the process that decided it dies
right after (a settle worker has no metrics of its own to lose).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from collector.classify import (
    Cause,
    Context,
    Decision,
    classify_failure,
)
from collector.deploys import count_key
from collector.etag import is_high_entropy, parse_precondition
from collector.keys import Counted, PendingFailure, decode_counted, decode_event, encode_counted
from collector.logs import get_logger
from collector.metrics import Metrics, exemplar
from collector.store import FailureContext, Store, StoreUnavailableError

log = get_logger("collector.settle")
# Services settled at once: enough to overlap Redis round trips with classification.
SETTLE_LANES = 4


def context_from_store(
    found: FailureContext,
    *,
    window: float,
    etag_owners: dict[str, str],
    formats: dict[str, dict[str, float]],
    versions: list[tuple[str, float]],
) -> Context:
    """The classifier's view of what the store holds around one failure."""
    return Context(
        lineage=found.lineage,
        prior_failures=found.prior_conflicts,
        etag_owners=etag_owners,
        formats=formats,
        versions=versions,
        window=window,
    )


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


class Settler:
    """Claims due failures, classifies them and records the decisions exactly once."""

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        window: float,
        lateness: float,
        batch_size: int = 500,
        lanes: int = SETTLE_LANES,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.window = window
        self.lateness = lateness
        self.batch_size = batch_size
        self.lanes = lanes
        self._wake = asyncio.Event()
        # Runs after each periodic sweep (deploy verdicts, backlog gauges); set by the runtime.
        self.after_sweep: Callable[[], Awaitable[None]] | None = None
        self._woken: set[str] = set()
        self._lock = asyncio.Lock()
        self._series: dict[tuple[object, ...], Any] = {}
        # False in a settle worker: what it decides is counted by the serving process, which
        # drains the store.
        self.drains = True
        # Set in a settle worker: awaited before each claim (it gives way to a busy ingest).
        self.before_claim: Callable[[], Awaitable[object]] | None = None
        self._exemplar_at: dict[int, float] = {}

    def wake(self, services: Iterable[str]) -> None:
        """New events arrived for these services: their watermarks may have moved."""
        self._woken.update(services)
        self._wake.set()

    async def settle_service(
        self, service: str, *, force: bool = False, now: float | None = None
    ) -> int:
        """Settle every failure of `service` that is due; the number this call decided."""
        decided = 0
        while True:
            if self.before_claim is not None and not force:
                await self.before_claim()
            claimed = await self.store.claim_due(
                service, lateness=self.lateness, now=now, force=force, limit=self.batch_size
            )
            if not claimed:
                return decided
            decided += await self._settle(service, claimed, now)
            if len(claimed) < self.batch_size:
                return decided

    async def settle_all(self, *, force: bool = False, now: float | None = None) -> int:
        """Settle every service (the idle check runs inside the claim)."""
        async with self._lock:
            return await self._settle_services(await self.store.services(), force, now)

    async def _settle_services(
        self, services: Iterable[str], force: bool = False, now: float | None = None
    ) -> int:
        """Settle services a few at a time: while one waits for Redis another classifies,
        so neither the event loop nor Redis sits idle (one at a time, each did half the time).
        """
        pending = iter(list(services))

        async def lane() -> int:
            return sum([await self.settle_service(s, force=force, now=now) for s in pending])

        # Every lane finishes before an error is raised: none keeps running outside the lock.
        results = await asyncio.gather(*(lane() for _ in range(self.lanes)), return_exceptions=True)
        total = 0
        for result in results:
            if isinstance(result, BaseException):
                raise result
            total += result
        return total

    async def _settle(
        self, service: str, claimed: Sequence[PendingFailure], now: float | None
    ) -> int:
        contexts, formats, versions = await self.store.settle_inputs(
            service, claimed, window=self.window
        )
        # Only an If-Match missing from the resource's own lineage can be another resource's.
        wanted: set[str] = set()
        for found in contexts:
            if found.record is None or not found.record.get("if_match"):
                continue
            for tag in parse_precondition(found.record["if_match"]).tags:
                if is_high_entropy(tag) and not any(
                    tag.opaque in s.etag or tag.opaque in s.if_match for s in found.lineage
                ):
                    wanted.add(str(tag))
        owners = await self.store.etag_owners(service, wanted, now=now)
        decisions: list[tuple[PendingFailure, dict[str, Any]]] = []
        details: list[tuple[dict[str, Any], Decision]] = []
        for found in contexts:
            if found.record is None:
                # Trimmed from a hot resource's timeline before it settled: nothing to classify.
                decision = Decision(Cause.UNKNOWN, {"evicted": True})
                record: dict[str, Any] = {"status": 0}
            elif found.decision is not None:
                # Re-leased after another settler stored its decision: that one stands, and is
                # counted here if that settler died before it could be.
                record = found.record
                decision = Decision(Cause(found.decision["cause"]), found.decision["evidence"])
            else:
                record = found.record
                decision = classify_failure(
                    decode_event(
                        found.failure.service,
                        found.failure.resource_id,
                        found.failure.request_id,
                        record,
                    ),
                    context_from_store(
                        found,
                        window=self.window,
                        etag_owners=owners,
                        formats=formats,
                        versions=versions,
                    ),
                )
            stored = found.decision or {**decision.as_dict(), "settled_at": round(time.time(), 3)}
            decisions.append((found.failure, stored))
            details.append((record, decision))
        ended = await self.store.record_decisions(
            decisions,
            gone=[found.record is None for found in contexts],
            count_as=[count_key(d.cause, d.evidence) for _, d in details],
            tallies=[
                encode_counted(counted_of(pending, record, decision))
                for (pending, _), (record, decision) in zip(decisions, details, strict=True)
            ],
        )
        counted = sum(
            1
            for (record, _), is_first in zip(details, ended, strict=True)
            if is_first and record.get("status")
        )
        if self.drains:
            await self.drain([service])
        return counted

    async def drain(self, services: Iterable[str]) -> int:
        """Count in the metrics the decided failures the store holds for counting (this
        process's, a settle worker's, or another replica's: whoever drains counts them, once)."""
        tally, drained = Tally(), 0
        for service, entries in (await self.store.take_counted(services)).items():
            drained += len(entries)
            for entry in entries:
                tally.add(decode_counted(service, entry))
        for key, group in tally.take().items():
            self.apply_group(key, group)
        return drained

    def apply_group(self, key: GroupKey, group: Group) -> None:
        """Count decided failures that share their labels (here, or for a settle worker)."""
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

    async def run(self, interval: float) -> None:
        """Settle woken services as events arrive, and every service each `interval`."""
        last_sweep = 0.0
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that lands as its timeout fires, and shutdown then waits for nothing.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            woken, self._woken = self._woken, set()
            try:
                async with self._lock:
                    await self._settle_services(woken)
                if time.monotonic() - last_sweep >= interval:
                    last_sweep = time.monotonic()
                    await self.settle_all()
                    if self.after_sweep is not None:
                        await self.after_sweep()
            except StoreUnavailableError as exc:
                self.metrics.redis_up.set(0)
                log.warning("settle_failed", error=str(exc))
                await asyncio.sleep(interval)
            except Exception:  # a bug must not stop settling for good
                log.exception("settle_crashed")
                await asyncio.sleep(interval)
