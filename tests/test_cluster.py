"""The collector on a real Redis Cluster: three primaries with a replica each, built from
Debian's redis-server with `redis-cli --cluster create` on loopback ports.

The same demo stream goes to one collector on one Redis and to two collectors sharing the
cluster (each gets every other batch): every failure must get the same cause, and the two
collectors' metrics must add up to the single one's, cause by cause. Then a primary is killed
mid-stream and its replica promoted: nothing that was acknowledged may be lost.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter

import httpx
import pytest

from collector import demo
from tests.conftest import free_port, wait_for
from tests.faults import Collector, Sender, audit, batches_of, counts_by_cause, flush
from tests.redis_cluster import RedisCluster

pytestmark = pytest.mark.e2e
# Nothing settles before the flush: causes then depend only on what was stored, not on how
# the two collectors' batches interleaved.
HOLD = {"PW_ALLOWED_LATENESS_SECONDS": "100000", "PW_CONCURRENCY_WINDOW_SECONDS": "300"}


def stream(duration: float = 300.0) -> tuple[list[dict[str, object]], dict[tuple[str, str], str]]:
    events = demo.generate(demo.DemoConfig(duration=duration, deploy_at=duration / 2))
    return demo.deliver(events, max_delay=2.5, duplicate_ratio=0.02), demo.truth(events)


def start_collector(redis_url: str, env: dict[str, str]) -> Collector:
    collector = Collector(redis_url, free_port(), env)
    collector.start()
    return collector


def causes(url: str, failures: dict[tuple[str, str], str]) -> dict[tuple[str, str], str]:
    out = {}
    with httpx.Client(timeout=10) as client:
        for service, request_id in failures:
            answer = client.get(f"{url}/v1/services/{service}/requests/{request_id}")
            out[(service, request_id)] = answer.json().get("cause") if answer.is_success else ""
    return out


def send_all(urls: list[str], batches: list[bytes]) -> list[Sender]:
    """Batch i goes to collector i % len(urls), each collector fed by its own sender."""
    senders = [
        Sender(functools.partial(str, u), batches[i :: len(urls)]) for i, u in enumerate(urls)
    ]
    threads = [threading.Thread(target=s.run, args=(time.monotonic() + 120,)) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=130)
    assert all(s.sent == len(s.batches) for s in senders)
    return senders


def test_two_collectors_on_a_cluster_decide_and_count_like_one_on_one_redis(
    redis_url: str, redis_cluster_url: str
) -> None:
    events, failures = stream()
    batches = batches_of(events, 500)

    single = start_collector(redis_url, HOLD)
    try:
        send_all([single.url], batches)
        flush(single.url)
        expected = causes(single.url, failures)
        expected_counts = counts_by_cause(single.url)
    finally:
        single.stop()

    cluster = {"PW_REDIS_CLUSTER": "true", **HOLD}
    first = start_collector(redis_cluster_url, cluster)
    second = start_collector(redis_cluster_url, cluster)
    try:
        send_all([first.url, second.url], batches)
        flush(first.url)
        flush(second.url)  # each counts what it drains; the flush drains what is left
        got = causes(second.url, failures)
        got_counts = counts_by_cause(first.url) + counts_by_cause(second.url)
    finally:
        first.stop()
        second.stop()

    print(f"\ncluster: {len(failures)} failures, by cause {dict(sorted(got_counts.items()))}")
    assert sum(expected_counts.values()) == len(failures)
    assert got == expected
    assert got_counts == expected_counts


def test_a_primary_killed_mid_stream_loses_nothing_acknowledged(
    redis_cluster: RedisCluster, redis_cluster_url: str
) -> None:
    """The primary holding the busiest service's keys is SIGKILLed ten batches in; its replica
    takes over. Every acknowledged failure is classified and counted exactly once."""
    events, failures = stream(560.0)
    busiest = Counter(str(e["service"]) for e in events).most_common(1)[0][0]
    collector = start_collector(
        redis_cluster_url, {"PW_REDIS_CLUSTER": "true", "PW_ALLOWED_LATENESS_SECONDS": "2"}
    )
    try:
        sender = Sender(lambda: collector.url, batches_of(events, 200))
        with sender.running(deadline_seconds=180):
            wait_for(lambda: sender.sent >= 10, timeout=60, what="ten batches acknowledged")
            victim = redis_cluster.node_for_key(f"pw:s:{{{busiest}}}:p")
            redis_cluster.kill_primary(victim)
            promoted = redis_cluster.wait_for_failover(victim)
        assert sender.sent == len(sender.batches)
        flush(collector.url)
        seen = audit(collector.url, failures)
        counted = sum(counts_by_cause(collector.url).values())
        print(
            f"\nfailover: {victim.port} -> {promoted.port}; batches {len(sender.batches)} "
            f"attempts {sender.attempts} statuses {dict(sender.statuses)}; "
            f"failures {len(failures)} {dict(seen)} counted {counted}"
        )
        assert sender.attempts > len(sender.batches), "the failover never reached a request"
        assert seen == {"classified": len(failures)}
        assert counted == len(failures)
    finally:
        collector.stop()
        redis_cluster.restart(victim)  # back as a replica: the next test finds it healthy
