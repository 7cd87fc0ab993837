"""Settling in event time: watermarks, late events, idle services, exactly-once decisions."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from collector.counting import Counts, Tally
from collector.event import Event
from collector.keys import Counted, decode_counted, encode_counted
from collector.metrics import Metrics
from collector.settle import Settler
from collector.store import Store
from tests.conftest import Node, failures_in, make_store

pytestmark = pytest.mark.anyio

T = 1_790_000_000.0
MD5_A = '"9e107d9d372bb6826bd81d3542a419d6"'
MD5_B = '"e4d909c290d0fb1ca068ffaddf22cbd0"'


def write(rid: str, ts: float, etag: str, resource: str = "ord-1") -> Event:
    return Event(ts=ts, service="shop", status=200, request_id=rid, resource_id=resource,
                 current_etag=etag, client_id="web/u9", method="PUT", route="/o/{id}")  # fmt: skip


def conflict(rid: str, ts: float, im: str = MD5_A, ce: str = MD5_B) -> Event:
    return Event(ts=ts, service="shop", status=412, request_id=rid, resource_id="ord-1",
                 if_match=im, current_etag=ce, client_id="web/u1", method="PUT",
                 route="/o/{id}")  # fmt: skip


def failures_counted(node: Node, cause: str) -> float:
    labels = {"service": "shop", "route": "/o/{id}", "method": "PUT", "status": "412"}
    value = node.registry.get_sample_value(
        "precondition_failures_total", {**labels, "cause": cause}
    )
    return value or 0.0


def total_failures(node: Node) -> float:
    """Every failure counted by this node, whatever its labels."""
    return failures_in(node.registry)


async def test_competing_write_arriving_4s_late_still_counts(store: Store) -> None:
    """The 412 arrives first, the write that beat it 4 s later: still a race, with its winner."""
    node = Node(store)
    settler = node.settler
    await store.ingest([write("w0", T - 60, MD5_A), conflict("f1", T)], T)
    await store.ingest([write("w9", T + 3, '"0000"', resource="other")], T + 3)
    assert await settler.settle_service("shop", now=T + 3) == 0  # watermark T-2 < T
    await store.ingest([write("w1", T - 1.5, MD5_B)], T + 4)  # the winner, 4 s late
    await store.ingest([write("w10", T + 6, '"0001"', resource="other")], T + 6)
    assert await settler.settle_service("shop", now=T + 6) == 1
    _, decision = await store.request("shop", "ord-1", "f1")
    assert decision is not None
    assert decision["cause"] == "concurrent_write"
    assert decision["evidence"]["winner"]["request_id"] == "w1"
    assert failures_counted(node, "concurrent_write") == 1


async def test_quiet_service_settles_after_lateness_of_wall_time(store: Store) -> None:
    """With no newer events, a failure is settled once the service has been idle long enough."""
    node = Node(store)
    settler = node.settler
    await store.ingest([write("w0", T - 60, MD5_A), conflict("f1", T)], T)
    assert await settler.settle_all(now=T + 1) == 0
    assert await settler.settle_all(now=T + 5.1) == 1


async def test_flush_settles_everything_now(store: Store) -> None:
    """force=True (POST /v1/flush) ignores the watermark."""
    node = Node(store)
    settler = node.settler
    await store.ingest([write("w0", T - 60, MD5_A), conflict("f1", T)], T)
    assert await settler.settle_all(force=True, now=T) == 1
    assert await settler.settle_all(force=True, now=T) == 0


async def test_two_settlers_count_each_failure_once(redis_url: str) -> None:
    """Two collectors settling one real Redis concurrently count every failure exactly once."""
    stores = [make_store("real", redis_url), make_store("real", redis_url)]
    nodes = [Node(s) for s in stores]
    events = [write("w0", T - 600, MD5_A)]
    events += [conflict(f"f{i}", T - 300 + i) for i in range(200)]
    await stores[0].ingest(events[:100], T)
    await stores[1].ingest(events[100:], T)
    counts = await asyncio.gather(*(n.settler.settle_all(force=True, now=T) for n in nodes))
    assert sum(counts) == 200
    assert sum(total_failures(n) for n in nodes) == 200
    for s in stores:
        await s.close()


async def test_redelivered_failure_is_not_counted_again(store: Store) -> None:
    """A shipper resending a settled failure changes nothing: duplicate, no second count."""
    node = Node(store)
    settler = node.settler
    batch = [write("w0", T - 60, MD5_A), conflict("f1", T)]
    await store.ingest(batch, T)
    await settler.settle_all(force=True, now=T)
    result = await store.ingest(batch, T + 10)
    assert result.stored == [False, False]
    assert await settler.settle_all(force=True, now=T + 10) == 0
    assert total_failures(node) == 1


async def test_replay_gives_the_same_causes_as_live(store: Store) -> None:
    """The same events delivered live (spread over time) or replayed at once: same decisions."""
    events = [write("w0", T - 100, MD5_A), write("w1", T - 50, MD5_B), conflict("f1", T - 40)]
    events += [write(f"x{i}", T + i, f'"{i:032x}"', resource=f"r{i}") for i in range(10)]
    live = make_store("fake")
    for event in events:
        await live.ingest([event], event.ts)
        await Node(live).settler.settle_service("shop", now=event.ts)
    replay = make_store("fake")
    await replay.ingest(events, T + 86400 * 3)
    await Node(replay).settler.settle_all(force=True, now=T + 86400 * 3)
    _, a = await live.request("shop", "ord-1", "f1")
    _, b = await replay.request("shop", "ord-1", "f1")
    assert a is not None and b is not None
    assert (
        (a["cause"], a["evidence"])
        == (b["cause"], b["evidence"])
        == (
            "concurrent_write",
            a["evidence"],
        )
    )


async def test_a_failing_service_does_not_leave_other_lanes_running() -> None:
    """Services settle side by side; when one fails, the others finish first, then it raises."""
    from typing import Any

    from collector.store import StoreUnavailableError

    finished: list[str] = []

    class FlakyStore:
        async def services(self) -> list[str]:
            return ["broken", "slow-1", "slow-2"]

        async def claim_due(self, service: str, **_: Any) -> list[Any]:
            if service == "broken":
                raise StoreUnavailableError("connection refused")
            for _step in range(5):  # still claiming after the broken lane gave up
                await asyncio.sleep(0)
            finished.append(service)
            return []

    settler = Settler(FlakyStore(), window=300, lateness=5)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailableError):
        await settler.settle_all()
    assert sorted(finished) == ["slow-1", "slow-2"]


def test_a_tally_counts_what_each_failure_would() -> None:
    """The worker's summed message leaves /metrics as counting each failure would."""
    decided = [
        Counted("shop", "/o", "PUT", 412, "concurrent_write", "r1", 0.2, None, ()),
        Counted("shop", "/o", "PUT", 412, "concurrent_write", "r2", 0.7, None, ()),
        Counted("shop", "/o", "PUT", 412, "stale_read", "r3", None, 30.0, ()),
        Counted("shop", None, None, 412, "proxy_rewrite", "r4", None, None, ("suffix",)),
        Counted("cart", "/c", "PATCH", 409, "stale_read", "r5", None, 4.0, ()),
    ]
    one_by_one, summed = CollectorRegistry(), CollectorRegistry()
    each = Counts(Metrics(one_by_one))
    for counted in decided:
        alone = Tally()
        alone.add(counted)
        for key, group in alone.take().items():
            each.decided(key, group)
    tally = Tally()
    for counted in decided:
        tally.add(counted)
    groups = tally.take()
    assert len(groups) == 4 and tally.groups == {}
    together = Counts(Metrics(summed))
    for key, group in groups.items():
        together.decided(key, group)

    def samples(registry: CollectorRegistry) -> dict[tuple[object, ...], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")
        }

    assert samples(summed) == samples(one_by_one)
    assert failures_in(summed) == 5


async def test_a_worker_hook_runs_before_each_claim_but_not_for_a_flush(store: Store) -> None:
    """The settle worker gives way to ingest before each claim; a flush never waits."""
    settler = Settler(store, window=300, lateness=5, batch_size=2)
    hooked = 0

    async def before_claim() -> None:
        nonlocal hooked
        hooked += 1

    settler.before_claim = before_claim
    failures = [conflict(f"f{i}", T + i) for i in range(5)]
    await store.ingest([write("w0", T - 60, MD5_A), *failures], T)
    assert await settler.settle_service("shop", now=T + 20) == 5
    assert hooked == 3  # claims of 2, 2 and 1
    await store.ingest([conflict("f9", T + 9)], T + 20)
    assert await settler.settle_all(force=True, now=T + 20) == 1
    assert hooked == 3


async def test_race_on_a_resource_first_seen_mid_life_names_its_winner(store: Store) -> None:
    """First event a write `"v1-ab"` -> `"v2-cd"`, then a 412 holding `"v1-ab"`: it lost a race
    to that write, even though `"v1-ab"` was never anyone's logged ETag."""
    node = Node(store)
    settler = node.settler
    winner = Event(ts=T, service="shop", status=200, request_id="w1", resource_id="ord-1",
                   if_match='"v1-ab"', current_etag='"v2-cd"', client_id="web/u9",
                   method="PUT", route="/o/{id}")  # fmt: skip
    await store.ingest([winner, conflict("f1", T + 3, im='"v1-ab"', ce='"v2-cd"')], T + 3)
    assert await settler.settle_all(force=True, now=T + 3) == 1
    _, decision = await store.request("shop", "ord-1", "f1")
    assert decision is not None
    assert decision["cause"] == "concurrent_write"
    assert decision["evidence"]["winner"]["request_id"] == "w1"
    assert decision["evidence"]["race_seconds"] == 3


async def test_failures_current_etag_is_lineage_evidence(store: Store) -> None:
    """A 412 shows `"1"` current; a write then replaces it: a later 412 holding `"1"` lost a
    race to that write (no logged write ever made `"1"` current)."""
    node = Node(store)
    settler = node.settler
    await store.ingest(
        [
            conflict("f0", T, im='"0"', ce='"1"'),
            write("w1", T + 10, '"2"'),
            conflict("f1", T + 12, im='"1"', ce='"2"'),
        ],
        T + 12,
    )
    await settler.settle_all(force=True, now=T + 12)
    _, decision = await store.request("shop", "ord-1", "f1")
    assert decision is not None and decision["cause"] == "concurrent_write"
    assert decision["evidence"]["winner"]["request_id"] == "w1"


def test_a_counted_failure_survives_the_store_unchanged() -> None:
    """What the store keeps for counting decodes to what was decided."""
    for counted in (
        Counted("shop", "/o/{id}", "PUT", 412, "concurrent_write", "r1", 0.25, None, ()),
        Counted("shop", None, None, 409, "proxy_rewrite", "r2", None, 30.5, ("a", "b")),
    ):
        entry = encode_counted(counted).encode()
        assert decode_counted("shop", entry) == counted


async def test_what_a_settler_that_does_not_count_decided_is_counted_once_by_a_drain(
    store: Store,
) -> None:
    """A settle worker decides but does not count; whoever drains the store counts each
    decided failure once, however often it drains."""
    worker = Settler(store, window=300, lateness=5)  # as in a settle process: no counting
    await store.ingest(
        [write("w0", T - 60, MD5_A), write("w1", T - 2, MD5_B), conflict("f1", T)], T
    )
    assert await worker.settle_all(force=True, now=T) == 1
    server = Node(store)
    assert total_failures(server) == 0
    assert await server.counts.drain(store, ["shop"]) == 1
    assert await server.counts.drain(store, ["shop"]) == 0
    assert failures_counted(server, "concurrent_write") == 1


async def test_flush_waits_for_a_workers_claims_in_flight() -> None:
    """A settle worker claimed failures a moment before the flush and decides them while it
    runs: the flush takes them over only once stuck, so it must wait for them, and count them,
    before it answers (a bench saw 30,415 of 30,515 counted when the flush returned)."""
    import time

    from collector.runtime import Collector
    from collector.settings import Settings

    runtime = Collector(Settings(), store=make_store("fake"))
    now = time.time()
    events = [conflict(f"f{i}", now - 60 + i) for i in range(5)]
    await runtime.store.ingest(events, now)
    worker = Settler(runtime.store, window=300, lateness=5)  # a settle process's: no counting
    claimed = await runtime.store.claim_due("shop", lateness=5, now=now + 60)
    assert len(claimed) == 5

    async def worker_decides() -> None:
        await asyncio.sleep(0.3)  # the worker is classifying while the flush starts
        await worker._settle("shop", claimed, None)

    deciding = asyncio.create_task(worker_decides())
    await runtime.flush()
    await deciding
    assert failures_in(runtime.registry) == 5
    await runtime.store.close()


async def test_a_failure_decided_by_itself_reads_no_more_of_its_timeline(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewritten If-Match (`"x-gzip"`) is in no write's lineage, so its walk would read to
    the writes limit; its record alone says proxy_rewrite, so settling stops after the first
    read of the timeline."""
    writes = [write(f"w{i}", T - 300 + i, f'"{i:032x}"') for i in range(200)]
    await store.ingest(writes, T)
    current = writes[-1].current_etag
    assert current is not None
    await store.ingest([conflict("f1", T, im=current[:-1] + '-gzip"', ce=current)], T)
    reads: list[str] = []
    commands = store._commands

    async def counting(operation: str, batch: list[tuple[object, ...]], **kw: bool) -> object:
        reads.extend(str(c[1]) for c in batch if c[0] == "ZREVRANGEBYSCORE")
        return await commands(operation, batch, **kw)

    monkeypatch.setattr(store, "_commands", counting)
    node = Node(store)
    assert await node.settler.settle_all(force=True, now=T) == 1
    _, decision = await store.request("shop", "ord-1", "f1")
    assert decision is not None and decision["cause"] == "proxy_rewrite"
    assert len([key for key in reads if key.endswith(":z")]) == 1
