"""The running collector: settings, store, metrics, ingest and settling wired together."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from collector.ingest import Ingestor
from collector.logs import get_logger
from collector.metrics import Metrics
from collector.settings import Settings
from collector.settle import Settler
from collector.store import Store, StoreUnavailableError
from collector.tracker import DeployTracker
from collector.worker import SettleWorker

log = get_logger("collector")


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
        self.store = store or Store.from_url(
            settings.redis_url,
            retention_seconds=settings.retention_seconds,
            timeline_max_events=settings.timeline_max_events,
            lineage_max_writes=settings.lineage_max_writes,
        )
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(
            self.registry,
            max_services=settings.max_services,
            max_routes_per_service=settings.max_routes_per_service,
        )
        self.store.observer = self._observe_redis
        self.settler = Settler(
            self.store,
            self.metrics,
            window=settings.concurrency_window_seconds,
            lateness=settings.allowed_lateness_seconds,
        )
        self.deploys = DeployTracker(
            self.store, self.metrics, lateness=settings.allowed_lateness_seconds
        )
        self.settler.after_sweep = self.deploys.judge_all
        self.ingestor = Ingestor(
            self.store,
            self.metrics,
            max_clock_skew=settings.max_clock_skew_seconds,
            on_stored=self._stored,
        )
        self._tasks: list[asyncio.Task[None]] = []
        # With a real Redis, settling runs in a worker process; the embedded one cannot be shared.
        self.worker = (
            SettleWorker(settings, self.settler)
            if settings.settle_process and not self.store.embedded
            else None
        )

    def _stored(self, services: set[str]) -> None:
        """After every stored batch: the services' watermarks may have moved."""
        if self.worker is None:
            self.settler.wake(services)

    def _observe_redis(self, operation: str, seconds: float, failed: bool) -> None:
        self.metrics.redis_seconds.labels(operation).observe(seconds)
        if failed:
            self.metrics.redis_errors.labels(operation).inc()
        self.metrics.redis_up.set(0 if failed else 1)

    async def start(self) -> None:
        if self.store.embedded:
            log.warning(
                "embedded_redis",
                detail="PW_REDIS_URL is not set: state lives in this process (fakeredis) "
                "and is lost on exit; set PW_REDIS_URL for production",
            )
        up = await self.store.ping()
        self.metrics.redis_up.set(1 if up else 0)
        log.info("collector_started", redis_up=up, embedded=self.store.embedded)
        self._tasks.append(asyncio.create_task(self._watch_redis(), name="watch-redis"))
        interval = self.settings.settle_interval_seconds
        if self.worker is None:
            self._tasks.append(asyncio.create_task(self.settler.run(interval), name="settle"))
        else:
            self.worker.start()
            self._tasks.append(asyncio.create_task(self._oversee(interval), name="oversee"))

    async def _oversee(self, interval: float) -> None:
        """While a worker settles: keep it alive, judge deploys, export the backlog."""
        assert self.worker is not None
        while True:
            await asyncio.sleep(interval)
            self.worker.check()
            try:
                await self.deploys.judge_all()
                self.metrics.pending.set(
                    await self.store.pending_count(await self.store.services())
                )
            except StoreUnavailableError as exc:
                log.warning("oversee_failed", error=str(exc))

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
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
            self.metrics.redis_up.set(1 if up else 0)
