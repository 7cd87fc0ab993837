"""Settling: once a service's watermark passes a failure, classify it and store the decision.

Any replica may settle any failure; the store hands each one to a single claimer and keeps the
first decision. The script that ends the claim also keeps what counting it needs (`Counted`),
and a serving process takes that from the store and counts it (counting.py): so a decided
failure is counted exactly once, in one replica's metrics, even when the process that decided
it dies right after. A Settler holds no metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from collector.classify import (
    Cause,
    Context,
    Decision,
    classify_failure,
    decided_alone,
)
from collector.counting import counted_of
from collector.deploys import count_key
from collector.etag import is_high_entropy, parse_precondition
from collector.keys import PendingFailure, decode_event, encode_counted
from collector.logs import get_logger
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


def _needs_lineage(failure: PendingFailure, record: dict[str, Any]) -> bool:
    """Whether classifying this failure reads its lineage: not when the failure alone decides
    (a rewritten If-Match, say, is never in the timeline: its walk would go to the limit)."""
    event = decode_event(failure.service, failure.resource_id, failure.request_id, record)
    return not decided_alone(event)


class Settler:
    """Claims due failures, classifies them and records the decisions exactly once."""

    def __init__(
        self,
        store: Store,
        *,
        window: float,
        lateness: float,
        batch_size: int = 500,
        lanes: int = SETTLE_LANES,
    ) -> None:
        self.store = store
        self.window = window
        self.lateness = lateness
        self.batch_size = batch_size
        self.lanes = lanes
        self._wake = asyncio.Event()
        # Runs after each periodic sweep (deploy verdicts, backlog gauges); set by the runtime.
        self.after_sweep: Callable[[], Awaitable[None]] | None = None
        self._woken: set[str] = set()
        self._lock = asyncio.Lock()
        # Awaited with a service after its failures were decided: a serving process that
        # settles counts them at once (counting.py). None in a settle worker.
        self.after_decide: Callable[[str], Awaitable[object]] | None = None
        # Set in a settle worker: awaited before each claim (it gives way to a busy ingest).
        self.before_claim: Callable[[], Awaitable[object]] | None = None

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
            service, claimed, window=self.window, needs_lineage=_needs_lineage
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
        log.debug("settled", service=service, claimed=len(claimed), counted=counted)
        if self.after_decide is not None:
            await self.after_decide(service)
        return counted

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
            except StoreUnavailableError as exc:  # the store's observer marks Redis down
                log.warning("settle_failed", error=str(exc))
                await asyncio.sleep(interval)
            except Exception:  # a bug must not stop settling for good
                log.exception("settle_crashed")
                await asyncio.sleep(interval)
