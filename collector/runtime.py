"""The running collector: settings, store, metrics, ingest and settling wired together."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from collector.admission import Admission
from collector.counting import Counts
from collector.ingest import BatchResult, Ingestor
from collector.ingest_pool import IngestPool, Job
from collector.logs import get_logger
from collector.metrics import Metrics
from collector.pseudonym import resource_ids
from collector.settings import Settings
from collector.settle import Settler
from collector.store import STUCK_CLAIM_SECONDS, Store, StoreUnavailableError
from collector.tracker import DeployTracker
from collector.wire import EVENTS, decode_body
from collector.worker import SettleWorker

log = get_logger("collector")
# How often the serving process counts what its settle worker decided.
COUNT_INTERVAL_SECONDS = 0.2


class Collector:
    """Owns the Redis store and the metrics registry for one process; started by the lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(
            self.registry,
            max_services=settings.max_services,
            max_routes_per_service=settings.max_routes_per_service,
            max_clients_per_service=settings.max_clients_per_service,
        )
        self.counts = Counts(self.metrics)
        self.store.observer = self.counts.redis
        self.settler = Settler(
            self.store,
            window=settings.concurrency_window_seconds,
            lateness=settings.allowed_lateness_seconds,
        )
        self.settler.after_decide = self._count_decided
        self.deploys = DeployTracker(
            self.store, self.metrics, lateness=settings.allowed_lateness_seconds
        )
        self.settler.after_sweep = self.review
        self.ingestor = Ingestor(
            self.store,
            max_clock_skew=settings.max_clock_skew_seconds,
            resource_ids=resource_ids(settings),
        )
        self._tasks: list[asyncio.Task[None]] = []
        # With a real Redis, ingest and settling run in processes of their own, which connect
        # to PW_REDIS_URL; the embedded one cannot be shared.
        shared = settings.redis_url is not None and not self.store.embedded
        self.pool = (
            IngestPool(settings, settings.ingest_processes)
            if shared and settings.ingest_processes > 0
            else None
        )
        self.in_flight = 0  # batches being stored now
        self.admission = Admission(settings.max_inflight_bytes)
        # More batches in flight than processes storing them: ingest is saturated.
        self.ingest_lanes = self.pool.size if self.pool else 1
        self.worker = SettleWorker(settings) if shared and settings.settle_process else None

    async def ingest(
        self,
        body: bytes,
        content_type: str | None,
        default_service: str | None,
        wire: str = EVENTS,
    ) -> tuple[int, BatchResult]:
        """Store one request body in `wire`'s format; the number of records in it and the answer.

        Raises OverloadedError past the in-flight byte budget, PayloadError for a body that
        cannot be read, StoreUnavailableError when nothing was acknowledged."""
        started = time.perf_counter()
        received_at = time.time()
        self.admission.take(len(body))  # the body as decompressed, beside what was read
        self._in_flight(+1)
        try:
            if self.pool is None:
                records = decode_body(wire, body, content_type)
                count = len(records)
                batch = await self.ingestor.store_batch(
                    records, default_service=default_service, received_at=received_at
                )
            else:
                job = Job(body, content_type, default_service, received_at, wire)
                done = await self.pool.store(job)
                for operation, seconds, failed in done.redis_timings:
                    self.counts.redis(operation, seconds, failed)
                assert done.batch is not None
                count, batch = done.records, done.batch
        finally:
            self._in_flight(-1)
            self.admission.give_back(len(body))
        result = self.counts.batch(batch, time.perf_counter() - started)
        if result.services and self.worker is None:
            self.settler.wake(result.services)  # their watermarks may have moved
        return count, result

    def _in_flight(self, change: int) -> None:
        """Count batches being stored and tell the settle worker whether ingest is saturated."""
        self.in_flight += change
        if self.worker is not None:
            self.worker.ingest_busy(self.in_flight > self.ingest_lanes)

    async def _count_decided(self, service: str) -> None:
        """What this process's settler just decided, counted now (a flush's counts are final
        when it returns)."""
        await self.counts.drain(self.store, [service])

    async def start(self) -> None:
        if self.store.embedded:
            log.warning(
                "embedded_redis",
                detail="PW_REDIS_URL is not set: state lives in this process (fakeredis) "
                "and is lost on exit; set PW_REDIS_URL for production",
            )
        up = await self.store.ping()
        self.counts.redis_up(up)
        log.info("collector_started", redis_up=up, embedded=self.store.embedded)
        if up and not self.settings.redis_cluster and await self.store.is_cluster_node():
            log.error(
                "redis_is_a_cluster",
                detail="PW_REDIS_URL names a Redis Cluster node: set PW_REDIS_CLUSTER=true, "
                "or most batches will answer 503",
            )
        self._tasks.append(asyncio.create_task(self._watch_redis(), name="watch-redis"))
        interval = self.settings.settle_interval_seconds
        if self.pool is not None:
            await self.pool.start()
            self._tasks.append(asyncio.create_task(self._keep_pool(interval), name="pool"))
        if self.worker is None:
            self._tasks.append(asyncio.create_task(self.settler.run(interval), name="settle"))
        else:
            self.worker.start()
            self._tasks.append(asyncio.create_task(self._oversee(interval), name="oversee"))

    async def _keep_pool(self, interval: float) -> None:
        """Replace ingest processes that died (their batches in flight answered 503)."""
        assert self.pool is not None
        while True:
            await asyncio.sleep(interval)
            await self.pool.check()

    async def _oversee(self, interval: float) -> None:
        """While a worker settles: keep it alive, count what it decided, judge deploys, export
        the backlog."""
        assert self.worker is not None
        last_review = 0.0
        while True:
            await asyncio.sleep(COUNT_INTERVAL_SECONDS)
            try:
                await self.counts.drain(self.store, await self.store.services())
                if time.monotonic() - last_review >= interval:
                    last_review = time.monotonic()
                    self.worker.check()
                    await self.review()
            except StoreUnavailableError as exc:
                log.warning("oversee_failed", error=str(exc))

    async def review(self, *, settled: bool = False) -> None:
        """Judge every service's latest deploy and refresh the deploy, backlog and process
        gauges (after each settling sweep, and at the end of a flush)."""
        await self.deploys.judge_all(settled=settled)
        backlog = await self.store.backlog(await self.store.services())
        self.counts.backlog(backlog)
        if self.pool is not None:
            self.counts.processes("ingest", self.pool.alive())
        if self.worker is not None:
            self.counts.processes("settle", int(self.worker.alive()))

    async def flush(self) -> int:
        """Settle every pending failure now, whatever the watermarks say, then judge the
        deploys and refresh the gauges: when it returns, verdicts and gauges are final. The
        number of failures this call settled."""
        settled = await self.settler.settle_all(force=True)
        services = await self.store.services()
        # A settle worker's claims made just before are not this call's to take (they are
        # milliseconds from decided): wait for them, taking over any that got stuck meanwhile.
        deadline = time.monotonic() + 4 * STUCK_CLAIM_SECONDS
        while (await self.store.backlog(services)).pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            settled += await self.settler.settle_all(force=True)
        await self.counts.drain(self.store, services)  # what a worker decided, too
        await self.review(settled=True)
        return settled

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.pool is not None:
            self.pool.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task stuck in a Redis call must not hold shutdown forever.
            await asyncio.wait(self._tasks, timeout=5)
        self._tasks.clear()
        await self.store.close()

    async def _watch_redis(self, interval: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval)
            up = await self.store.ping()
            self.counts.redis_up(up)
