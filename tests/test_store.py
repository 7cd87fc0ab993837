"""The Redis store, on fakeredis and on a real redis-server."""

from __future__ import annotations

import asyncio
import binascii

import orjson
import pytest

from collector.event import Event
from collector.keys import PendingFailure, resource_prefix, service_prefix
from collector.store import Store

pytestmark = pytest.mark.anyio

NOW = 1_790_000_100.0


def ev(rid: str, ts: float, status: int = 412, resource: str = "o1", **kw: object) -> Event:
    return Event(ts=ts, service="shop", status=status, request_id=rid, resource_id=resource, **kw)  # type: ignore[arg-type]


def slot(key: str) -> int:
    """Redis Cluster's slot of a key: CRC16 of the hash tag."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key.encode(), 0) % 16384


async def test_ingest_stores_and_dedupes(store: Store) -> None:
    """A request id seen before is a duplicate and changes nothing."""
    first = await store.ingest(
        [ev("r1", NOW - 10), ev("r2", NOW - 9, 200, current_etag='"b"')], NOW
    )
    again = await store.ingest([ev("r1", NOW - 10), ev("r3", NOW - 8)], NOW)
    assert first.stored == [True, True]
    assert again.stored == [False, True]
    timeline = await store.timeline("shop", "o1")
    assert [rid for rid, _, _ in timeline] == ["r1", "r2", "r3"]


async def test_failures_become_pending_and_are_claimed_once(store: Store) -> None:
    """Two claimers racing for the same failures each get disjoint sets."""
    events = [ev(f"r{i}", NOW - 100 + i) for i in range(50)]
    await store.ingest(events, NOW)
    a, b = await asyncio.gather(
        store.claim_due("shop", lateness=5, now=NOW, force=True),
        store.claim_due("shop", lateness=5, now=NOW, force=True),
    )
    ids_a = {f.request_id for f in a}
    ids_b = {f.request_id for f in b}
    assert not ids_a & ids_b
    assert ids_a | ids_b == {e.request_id for e in events}


async def test_claim_waits_for_the_watermark(store: Store) -> None:
    """Only failures at or before newest event time minus lateness are due."""
    await store.ingest(
        [ev("old", NOW - 20), ev("new", NOW - 3), ev("w", NOW, 200, current_etag='"x"')], NOW
    )
    due = await store.claim_due("shop", lateness=5, now=NOW)
    assert [f.request_id for f in due] == ["old"]
    assert (await store.backlog(["shop"])).pending == 2  # one in flight, one pending


async def test_idle_service_settles_everything(store: Store) -> None:
    """After `lateness` seconds of wall time without events, every pending failure is due."""
    await store.ingest([ev("a", NOW - 1), ev("b", NOW)], NOW)
    assert await store.claim_due("shop", lateness=5, now=NOW + 1) == []
    due = await store.claim_due("shop", lateness=5, now=NOW + 5.5)
    assert {f.request_id for f in due} == {"a", "b"}


async def test_lost_claims_are_released_after_the_lease(store: Store) -> None:
    """A failure claimed by a settler that died is handed out again after its lease."""
    await store.ingest([ev("a", NOW - 30), ev("b", NOW, 200, current_etag='"x"')], NOW)
    first = await store.claim_due("shop", lateness=5, now=NOW, lease_seconds=10)
    assert [f.request_id for f in first] == ["a"]
    assert await store.claim_due("shop", lateness=5, now=NOW + 5, lease_seconds=10) == []
    again = await store.claim_due("shop", lateness=5, now=NOW + 11, lease_seconds=10)
    assert [f.request_id for f in again] == ["a"]


async def test_decision_is_recorded_once(store: Store) -> None:
    """Only the first decision for a failure sticks; the second caller is told not to count."""
    await store.ingest([ev("a", NOW - 30)], NOW)
    (failure,) = await store.claim_due("shop", lateness=5, now=NOW, force=True)
    assert await store.record_decisions([(failure, {"cause": "stale_etag"})]) == [True]
    assert await store.record_decisions([(failure, {"cause": "unknown"})]) == [False]
    record, decision = await store.request("shop", "o1", "a")
    assert record is not None and record["status"] == 412
    assert decision == {"cause": "stale_etag"}
    # Counted once per minute by cause, for the deploy detector; a vanished record is not.
    minute = int((NOW - 30) // 60)
    gone = PendingFailure("shop", "o7", "b", NOW - 30)
    await store.record_decisions([(gone, {"cause": "stale_etag"})], gone=[True])
    counts = await store.minute_counts("shop", minute, minute)
    assert counts[minute]["c:stale_etag"] == 1 and "c:unknown" not in counts[minute]


async def test_a_decision_stored_by_a_settler_that_died_is_counted_by_the_next(
    store: Store,
) -> None:
    """A settler that stored its decision but died before ending the claim: the claim is taken
    over, the first decision stands, and the next settler counts it, once."""
    await store.ingest([ev("a", NOW - 30)], NOW)
    assert len(await store.claim_due("shop", lateness=5, now=NOW, force=True)) == 1
    key = resource_prefix("shop", "o1") + "e"
    await store.client.hsetnx(key, "c:a", orjson.dumps({"cause": "stale_etag", "evidence": {}}))
    (again,) = await store.claim_due("shop", lateness=5, now=NOW + 3, force=True)
    (context,) = await store.load_contexts([again], window=300)
    assert context.decision == {"cause": "stale_etag", "evidence": {}}
    both = [(again, {"cause": "stale_etag"}), (again, {"cause": "stale_etag"})]
    assert await store.record_decisions(both) == [True, False]
    minute = int((NOW - 30) // 60)
    assert (await store.minute_counts("shop", minute, minute))[minute]["c:stale_etag"] == 1
    assert [len(v) for v in (await store.take_counted(["shop"])).values()] == []


async def test_retry_indexes_a_failure_whose_first_attempt_stopped_halfway(store: Store) -> None:
    """A failure recorded but never indexed (Redis died between the two round trips) is
    indexed whole by the retry: pending, and found by its request id."""
    failure = ev("a", NOW - 30)
    await store.ingest([failure], NOW)
    # As if the second round trip's transaction had never run.
    await store.client.delete(service_prefix("shop") + "p")
    await store.client.delete(*[k async for k in store.client.scan_iter("pw:s:*q:*")])
    await store.client.hdel(resource_prefix("shop", "o1") + "e", "+a")
    result = await store.ingest([failure], NOW)
    assert result.stored == [True]  # acknowledged (and counted) by the call that indexed it
    assert await store.find_request("shop", "a", now=NOW) == "o1"
    due = await store.claim_due("shop", lateness=5, now=NOW, force=True)
    assert [f.request_id for f in due] == ["a"]
    assert (await store.ingest([failure], NOW)).stored == [False]  # now a plain duplicate


async def test_decided_duplicate_is_not_requeued(store: Store) -> None:
    """A retried batch does not resurrect a failure that is already classified."""
    await store.ingest([ev("a", NOW - 30)], NOW)
    claimed = await store.claim_due("shop", lateness=5, now=NOW, force=True)
    await store.record_decisions([(claimed[0], {"cause": "unknown"})])
    await store.ingest([ev("a", NOW - 30)], NOW)
    assert await store.claim_due("shop", lateness=5, now=NOW, force=True) == []


async def test_every_key_has_a_ttl_within_retention(store: Store) -> None:
    """No key outlives the retention."""
    await store.ingest(
        [ev("a", NOW - 30), ev("b", NOW - 20, 200, current_etag='"x"', deploy_version="v1")],
        NOW,
        formats=[("shop", "v1", "S:x", NOW - 20)],
    )
    claimed = await store.claim_due("shop", lateness=5, now=NOW, force=True)
    await store.record_decisions([(claimed[0], {"cause": "unknown"})])
    keys = [k async for k in store.client.scan_iter("*")]
    assert len(keys) >= 9
    for key in keys:
        ttl = await store.client.ttl(key)
        assert 0 < ttl <= store.retention, key


async def test_keys_of_one_resource_share_a_slot(store: Store) -> None:
    """Every key the per-resource script touches hashes to one cluster slot."""
    await store.ingest([ev("a", NOW - 30, resource="weird:{id}%"), ev("b", NOW, resource="x")], NOW)
    prefix = resource_prefix("shop", "weird:{id}%")
    keys = [k.decode() async for k in store.client.scan_iter(prefix + "*")]
    assert len(keys) >= 2
    assert len({slot(k) for k in keys}) == 1
    assert resource_prefix("a:b", "c") != resource_prefix("a", "b:c")


async def test_timeline_and_lineage_are_capped() -> None:
    """A hot resource keeps only the newest events and writes."""
    from tests.conftest import make_store

    store = make_store("fake", timeline_max_events=10, lineage_max_writes=10)
    events = [ev(f"w{i}", NOW - 100 + i, 200, current_etag=f'"{i}"') for i in range(30)]
    await store.ingest(events, NOW)
    timeline = await store.timeline("shop", "o1", limit=100)
    assert [rid for rid, _, _ in timeline] == [f"w{i}" for i in range(20, 30)]
    fields = await store.client.hkeys(resource_prefix("shop", "o1") + "e")
    assert sorted(f.decode() for f in fields if not f.startswith(b"+")) == [
        f"w{i}" for i in range(20, 30)
    ]
    await store.close()


async def test_snapshot_keeps_only_the_lineage_the_if_match_needs(store: Store) -> None:
    """Of the newest writes up to the failure, only the If-Match's, their successors and the
    newest write come back; a tag older than the newest `lineage_max_writes` writes is not
    looked for."""
    writes = [ev(f"w{i}", NOW - 300 + i, 200, current_etag=f'"t{i:03d}"') for i in range(150)]
    await store.ingest(writes, NOW)
    fresh = PendingFailure("shop", "o1", "f1", NOW - 100, if_match='"t140", "t120"')
    old = PendingFailure("shop", "o1", "f2", NOW - 100, if_match='"t020"')
    weird = PendingFailure("shop", "o1", "f3", NOW - 100, if_match="*")
    contexts = await store.load_contexts([fresh, old, weird], window=300)
    found = [w.request_id for w in contexts[0].lineage]
    assert found == ["w120", "w121", "w140", "w141", "w149"]
    assert [w.etag for w in contexts[0].lineage][:2] == ['"t120"', '"t121"']
    # 130 writes back: past the newest 100, only the newest write (the span) comes back
    assert [w.request_id for w in contexts[1].lineage] == ["w149"]
    assert contexts[2].lineage == [] and contexts[2].prior_conflicts == []
    assert [c.record for c in contexts] == [None, None, None]


async def test_context_has_lineage_and_prior_conflicts(store: Store) -> None:
    """A failure's context holds the writes and the 412s in the window before it."""
    await store.ingest(
        [
            ev("w1", NOW - 50, 200, current_etag='"1"', client_id="alice"),
            ev("w2", NOW - 40, 200, current_etag='"2"', client_id="bob"),
            ev("f0", NOW - 35, if_match='"1"', current_etag='"2"', client_id="carol"),
            ev("f1", NOW - 30, if_match='"1"', current_etag='"2"', client_id="carol"),
            ev("f9", NOW - 32, if_match='"1"', current_etag='"2"', client_id="dave"),
        ],
        NOW,
    )
    failure = PendingFailure("shop", "o1", "f1", NOW - 30, if_match='"1"', client_id="carol")
    (context,) = await store.load_contexts([failure], window=300)
    assert context.record is not None and context.record["if_match"] == '"1"'
    # The writes, and every failure since the newest write: each shows the current ETag.
    assert [(w.request_id, w.kind, w.etag, w.client_id) for w in context.lineage] == [
        ("w1", "w", '"1"', "alice"),
        ("w2", "w", '"2"', "bob"),
        ("f0", "f", '"2"', "carol"),
        ("f9", "f", '"2"', "dave"),
        ("f1", "f", '"2"', "carol"),
    ]
    # Only the same client's failures can make this one a blind retry.
    assert {p.request_id for p in context.prior_conflicts} == {"f0", "f1"}
    assert await store.etag_owners("shop", ['"2"', '"nope"'], now=NOW) == {'"2"': "o1"}
    assert await store.find_request("shop", "f1", now=NOW) == "o1"
    assert await store.find_request("shop", "f1", now=NOW + store.retention + 900) is None


async def test_versions_and_formats(store: Store) -> None:
    """Versions and ETag formats remember the earliest event time they were seen."""
    await store.ingest(
        [
            ev("a", NOW - 10, 200, current_etag='"x"', deploy_version="v2"),
            ev("b", NOW - 50, 200, current_etag='"y"', deploy_version="v1"),
        ],
        NOW,
        formats=[("shop", "v2", "S:x", NOW - 10), ("shop", "v1", "S:hex32", NOW - 50)],
    )
    await store.ingest(
        [ev("c", NOW - 60, 200, deploy_version="v2")],
        NOW,
        formats=[("shop", "v2", "S:x", NOW - 60)],
    )
    assert await store.versions("shop") == [("v2", NOW - 60), ("v1", NOW - 50)]
    assert await store.formats("shop") == {"v2": {"S:x": NOW - 60}, "v1": {"S:hex32": NOW - 50}}
    assert await store.services() == ["shop"]
    assert await store.watermark("shop") == NOW - 10
    # What settling reads in one round trip is what the separate reads return.
    await store.ingest([ev("f1", NOW - 5, 412, resource="o9", if_match='"y"')], NOW)
    claimed = await store.claim_due("shop", lateness=0, now=NOW, force=True)
    inputs = await store.settle_inputs("shop", claimed, window=300)
    assert inputs.versions == await store.versions("shop")
    assert inputs.formats == await store.formats("shop")
    assert inputs.contexts == await store.load_contexts(claimed, window=300)
    assert [c.failure.request_id for c in inputs.contexts] == ["f1"]


async def test_unreachable_redis_raises_store_unavailable() -> None:
    """A Redis that does not answer is StoreUnavailableError, and ping says False."""
    from collector.store import StoreUnavailableError
    from tests.conftest import free_port, make_store

    store = make_store("real", f"redis://127.0.0.1:{free_port()}/0")
    assert await store.ping() is False
    with pytest.raises(StoreUnavailableError):
        await store.ingest([ev("a", NOW)], NOW)
    await store.close()


async def test_every_write_gives_a_resources_keys_their_ttl_back(store: Store) -> None:
    """A resource written again keeps living a whole retention after its last write."""
    prefix = resource_prefix("shop", "o1")
    await store.ingest([ev("a", NOW - 5, 412, if_match='"0"')], NOW)
    for key in ("e", "z", "f"):
        assert 0 < await store.client.ttl(prefix + key) <= store.retention
        await store.client.expire(prefix + key, 100)
    await store.ingest([ev("b", NOW - 4, 412, if_match='"0"')], NOW)
    for key in ("e", "z", "f"):
        assert store.retention - 5 <= await store.client.ttl(prefix + key) <= store.retention


async def test_lineage_walk_stops_only_at_the_tag_itself(store: Store) -> None:
    """A newer ETag that merely contains the If-Match does not end the walk; the tag does."""
    await store.ingest(
        [
            ev("w0", NOW - 40, 200, current_etag='"ab"'),
            ev("w1", NOW - 30, 200, current_etag='"ab"'),
            ev("w2", NOW - 20, 200, current_etag='"abc"'),
            ev("w3", NOW - 10, 200, current_etag='"zz"'),
        ],
        NOW,
    )
    failure = PendingFailure("shop", "o1", "f1", NOW - 5, if_match='"ab"')
    (context,) = await store.load_contexts([failure], window=300)
    # w1 holds the tag (newest first, so w0 is never read); w2 superseded it, w3 followed.
    assert [w.request_id for w in context.lineage] == ["w1", "w2", "w3"]


async def test_conflicts_set_is_capped_with_the_timeline() -> None:
    """A resource's conflicts set is trimmed to the timeline cap as well."""
    from tests.conftest import make_store

    store = make_store("fake", timeline_max_events=10)
    events = [ev(f"f{i}", NOW - 100 + i, 412, if_match='"old"') for i in range(30)]
    await store.ingest(events, NOW)
    assert await store.client.zcard(resource_prefix("shop", "o1") + "f") == 10
    await store.close()


async def test_decision_for_a_vanished_resource_gets_a_ttl(store: Store) -> None:
    """Deciding a failure whose resource keys expired must not leave a key without a TTL."""
    failure = PendingFailure("shop", "gone", "f1", NOW - 30)
    await store.record_decisions([(failure, {"cause": "unknown"})], gone=[True])
    _, decision = await store.request("shop", "gone", "f1")
    assert decision == {"cause": "unknown"}
    ttl = await store.client.ttl(resource_prefix("shop", "gone") + "e")
    assert 0 < ttl <= store.retention


async def test_an_empty_if_match_tag_searches_every_write(store: Store) -> None:
    """`""` is inside every ETag's text, so the walk cannot stop early: all writes come back."""
    await store.ingest(
        [ev(f"w{i}", NOW - 50 + i, 200, current_etag=f'"{i}"') for i in range(5)], NOW
    )
    failure = PendingFailure("shop", "o1", "f1", NOW - 1, if_match='""')
    (context,) = await store.load_contexts([failure], window=300)
    assert [w.request_id for w in context.lineage] == [f"w{i}" for i in range(5)]


async def test_concurrent_first_batches_all_find_their_scripts(store: Store) -> None:
    """Batches that arrive together on a fresh store all run, while its scripts load."""
    import asyncio

    batches = [[ev(f"r{i}", NOW - 5, 412, resource=f"o{i}", if_match='"0"')] for i in range(8)]
    results = await asyncio.gather(*(store.ingest(batch, NOW) for batch in batches))
    assert [r.stored for r in results] == [[True]] * 8


async def test_scripts_forgotten_by_redis_are_loaded_again(store: Store) -> None:
    """After a restart Redis has no scripts: the next batch, claim and decision still run."""
    await store.ingest([ev("r1", NOW - 50, 412, if_match='"0"')], NOW)
    await store.client.script_flush()
    # Only the script calls run again: the batch's records are new, not duplicates.
    stored = await store.ingest([ev("r2", NOW - 40, 412, if_match='"0"')], NOW)
    assert stored.stored == [True]
    await store.client.script_flush()
    claimed = await store.claim_due("shop", lateness=5, now=NOW, force=True)
    assert sorted(f.request_id for f in claimed) == ["r1", "r2"]
    await store.client.script_flush()
    assert await store.record_decisions([(f, {"cause": "unknown"}) for f in claimed]) == [
        True,
        True,
    ]


async def test_per_minute_counts_and_hot_resources_add_up_across_batches(store: Store) -> None:
    """Conflicts per resource and requests per minute are summed over batches, retries not."""
    minute = int((NOW - 30) // 60)
    first = [ev("a1", NOW - 30, 412, resource="o1"), ev("a2", NOW - 29, 409, resource="o2")]
    second = [ev("b1", NOW - 28, 412, resource="o1"), ev("b2", NOW - 27, 200, resource="o1")]
    await store.ingest(first, NOW)
    await store.ingest(second, NOW)
    await store.ingest(second, NOW)  # a shipper's retry
    assert await store.hot("shop", since=NOW - 60, until=NOW) == [("o1", 2.0), ("o2", 1.0)]
    counts = await store.minute_counts("shop", minute, minute)
    assert counts[minute]["req"] == 4


async def test_a_flush_takes_over_claims_that_are_stuck(store: Store) -> None:
    """A claim older than a couple of seconds (its settler died with Redis) goes to a flush at
    once; a fresh one, still being settled, does not."""
    await store.ingest([ev("a", NOW - 30)], NOW)
    claimed = await store.claim_due("shop", lateness=5, now=NOW, force=True)
    assert [f.request_id for f in claimed] == ["a"]
    assert await store.claim_due("shop", lateness=5, now=NOW + 1, force=True) == []
    stuck = await store.claim_due("shop", lateness=5, now=NOW + 3, force=True)
    assert [f.request_id for f in stuck] == ["a"]


async def test_a_cluster_node_used_as_one_redis_says_to_set_pw_redis_cluster(
    redis_cluster_url: str,
) -> None:
    """Without PW_REDIS_CLUSTER a cluster node answers MOVED for most keys: the error names the
    setting instead of leaving on-call to decode the reply."""
    from collector.store import StoreUnavailableError
    from tests.conftest import make_store

    store = make_store("real", redis_cluster_url)
    events = [ev(f"r{i}", NOW - 5, 412, resource=f"o{i}", if_match='"0"') for i in range(20)]
    assert await store.is_cluster_node()
    with pytest.raises(StoreUnavailableError, match="set PW_REDIS_CLUSTER=true"):
        await store.ingest(events, NOW)
    await store.close()


async def test_a_store_knows_whether_its_redis_is_a_cluster(store: Store) -> None:
    """fakeredis and one redis-server are not; the cluster's nodes are."""
    assert await store.is_cluster_node() is not store.transport.single_node
