"""Ingest processes: a batch stored by one answers and counts as the serving process would."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from prometheus_client import CollectorRegistry

from collector.ingest import Ingestor
from collector.ingest_pool import IngestPool, Job
from collector.payload import PayloadError, split_records
from collector.runtime import Collector
from collector.settings import Settings
from collector.store import StoreUnavailableError
from tests.conftest import RedisServer, make_store, wait_for

pytestmark = pytest.mark.anyio
NOW = time.time()


def body_of(service: str) -> bytes:
    """Writes, failures, a duplicate inside the batch and three bad lines."""
    lines = [
        orjson.dumps(
            {
                "ts": NOW - 60 + i,
                "service": service,
                "request_id": f"req-{i}",
                "resource_id": f"res-{i % 7}",
                "status": (200, 412, 409, 428)[i % 4],
                "route": "/v1/items/{id}",
                "method": "put",
                "if_match": f'"etag-{i}"',
                "current_etag": f'"etag-{i + 1}"',
            }
        )
        for i in range(40)
    ]
    lines += [b"not json", b'{"service": "x", "status": 200}', lines[3], b'{"status": "abc"}']
    return b"\n".join(lines)


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[IngestPool]:
    started = IngestPool(Settings(redis_url=redis_url), size=2)
    await started.start()
    yield started
    started.stop()


async def test_a_batch_stored_by_an_ingest_process_answers_as_in_process(
    pool: IngestPool, redis_url: str
) -> None:
    store = make_store("real", redis_url)
    ingestor = Ingestor(store, max_clock_skew=300)
    try:
        local = await ingestor.store_batch(
            split_records(body_of("local"), "application/x-ndjson"),
            default_service=None,
            received_at=NOW,
        )
        done = await pool.store(Job(body_of("pooled"), "application/x-ndjson", None, NOW))
        assert done.batch is not None
        assert done.records == 44
        assert done.batch.result.body() == local.result.body()
        assert done.batch.result.accepted == 40 and done.batch.result.duplicates == 1
        assert len(done.batch.result.rejected) == 3
        assert {labels[1:]: n for labels, n in done.batch.requests.items()} == {
            labels[1:]: n for labels, n in local.requests.items()
        }
        assert {op for op, _, failed in done.redis_timings if not failed} >= {"ingest"}
        # Stored for real: sent again, every event is a duplicate.
        again = await pool.store(Job(body_of("pooled"), "application/x-ndjson", None, NOW))
        assert again.batch is not None
        assert again.batch.result.accepted == 0 and again.batch.result.duplicates == 41
        assert await store.find_request("pooled", "req-1") == "res-1"
    finally:
        await store.close()


async def test_an_unreadable_body_is_the_same_4xx_from_an_ingest_process(
    pool: IngestPool,
) -> None:
    with pytest.raises(PayloadError) as broken:
        await pool.store(Job(b'[{"status": 200}', "application/json", "svc", NOW))
    assert broken.value.status == 400
    assert "not a readable JSON array" in broken.value.message
    with pytest.raises(PayloadError) as unknown:
        await pool.store(Job(b"<xml/>", "application/xml", "svc", NOW))
    assert unknown.value.status == 415
    # The process is still there for the next batch.
    done = await pool.store(Job(body_of("after"), None, None, NOW))
    assert done.batch is not None and done.batch.result.accepted == 40


async def test_a_dead_ingest_process_answers_503_and_is_replaced(pool: IngestPool) -> None:
    processes = list(pool._processes)
    killed = {process.process.pid for process in processes}
    for pid in killed:
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(StoreUnavailableError):
        # Sent to a process that is dying or dead: never acknowledged.
        await pool.store(Job(body_of("lost"), None, None, NOW))
    wait_for(lambda: not any(p.alive for p in processes), what="the processes' exit")
    await pool.check()
    assert all(p.alive for p in pool._processes)
    assert {p.process.pid for p in pool._processes}.isdisjoint(killed)
    done = await pool.store(Job(body_of("lost"), None, None, NOW))
    assert done.batch is not None and done.batch.result.accepted == 40


async def test_redis_down_means_nothing_acknowledged_through_the_pool() -> None:
    server = RedisServer()
    server.start()
    settings = Settings(redis_url=server.url)
    collector = Collector(settings, registry=CollectorRegistry())
    assert collector.pool is not None
    await collector.pool.start()
    try:
        records, result = await collector.ingest(body_of("up"), None, None)
        assert (records, result.accepted) == (44, 40)
        server.stop()
        with pytest.raises(StoreUnavailableError):
            await collector.ingest(body_of("down"), None, None)
        rejected = collector.registry.get_sample_value(
            "precondition_collector_events_total", {"result": "rejected"}
        )
        assert rejected == 6  # both batches' bad lines, stored or not
        assert collector.in_flight == 0
    finally:
        collector.pool.stop()
        await collector.store.close()
        server.stop()


async def test_the_embedded_store_ingests_in_the_serving_process() -> None:
    collector = Collector(Settings(), registry=CollectorRegistry())
    assert collector.pool is None and collector.worker is None
    records, result = await collector.ingest(body_of("embedded"), None, None)
    assert (records, result.accepted, result.duplicates) == (44, 40, 1)
    await collector.store.close()


async def test_no_ingest_processes_keeps_ingest_in_the_serving_process(redis_url: str) -> None:
    """PW_INGEST_PROCESSES=0: a real Redis, and the serving process stores the batch itself."""
    settings = Settings(redis_url=redis_url, ingest_processes=0)
    collector = Collector(settings, registry=CollectorRegistry())
    assert collector.pool is None and collector.ingest_lanes == 1
    records, result = await collector.ingest(body_of("inline"), None, None)
    assert (records, result.accepted) == (44, 40)
    assert await collector.store.find_request("inline", "req-1") == "res-1"
    await collector.store.close()
