"""End to end on demo traffic: every failure gets its true cause, and is counted exactly once.

The demo's traffic is delivered like a log shipper would: out of order by up to 2.5 s, with 2%
duplicate lines. Events go through the real ingest path and settle in event time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import orjson
import pytest

from collector import demo
from collector.payload import Record
from collector.store import Store
from tests.conftest import Node, make_store

pytestmark = pytest.mark.anyio

TARGET = 0.95


async def replay_live(
    nodes: Sequence[Node],
    delivered: list[dict[str, object]],
    batch: int = 200,
    after_batch: Callable[[Node, float], Awaitable[None]] | None = None,
) -> None:
    """Feed batches round-robin to the nodes at their arrival times, settling as live."""
    arrival = 0.0
    for n, start in enumerate(range(0, len(delivered), batch)):
        lines = delivered[start : start + batch]
        arrival = max(arrival, max(float(str(e["ts"])) for e in lines) + 2.5)
        node = nodes[n % len(nodes)]
        records = [Record(i, orjson.loads(orjson.dumps(e))) for i, e in enumerate(lines)]
        result = await node.ingest(records, received_at=arrival)
        assert not result.rejected
        for service in result.services:
            await node.settler.settle_service(service, now=arrival)
        if after_batch is not None:
            await after_batch(node, arrival)
    for node in nodes:
        await node.settler.settle_all(force=True, now=arrival + 10)


async def decisions(store: Store, events: list[dict[str, object]]) -> dict[tuple[str, str], str]:
    found = {}
    for event in events:
        if "demo_cause" not in event:
            continue
        service, rid = str(event["service"]), str(event["request_id"])
        _, decision = await store.request(service, str(event["resource_id"]), rid)
        found[(service, rid)] = decision["cause"] if decision else "none"
    return found


def score(
    truth: dict[tuple[str, str], str], got: dict[tuple[str, str], str]
) -> dict[str, tuple[float, float, int]]:
    """Per cause: precision, recall, support."""
    table = {}
    for cause in demo.CAUSES:
        tp = sum(1 for k, v in truth.items() if v == cause and got.get(k) == cause)
        predicted = sum(1 for v in got.values() if v == cause)
        actual = sum(1 for v in truth.values() if v == cause)
        table[cause] = (
            tp / predicted if predicted else 0.0,
            tp / actual if actual else 0.0,
            actual,
        )
    return table


def print_table(title: str, table: dict[str, tuple[float, float, int]]) -> None:
    print(f"\n{title}\n{'cause':<22}{'precision':>10}{'recall':>8}{'support':>9}")
    for cause, (precision, recall, support) in table.items():
        print(f"{cause:<22}{precision:>10.3f}{recall:>8.3f}{support:>9}")


async def test_every_cause_meets_precision_and_recall_on_demo_traffic() -> None:
    """Precision and recall >= 0.95 for every cause; each failure counted exactly once."""
    events = demo.generate(demo.DemoConfig())
    delivered = demo.deliver(events, max_delay=2.5, duplicate_ratio=0.02)
    truth = demo.truth(events)
    node = Node(make_store("fake", retention_seconds=86400))
    await replay_live([node], delivered)
    got = await decisions(node.store, events)
    table = score(truth, got)
    print_table("demo traffic, one collector (fakeredis)", table)
    print(
        "confusions:",
        Counter((truth[k], v) for k, v in got.items() if truth[k] != v).most_common(8),
    )
    assert node.failures_counted() == len(truth)
    # Who must fix a client-side cause is counted too: the retry bot, the legacy importer.
    for cause, client in (
        ("blind_retry", "retry-bot"),
        ("missing_precondition", "legacy-importer"),
    ):
        expected = sum(
            1 for e in events if e.get("demo_cause") == cause and e.get("client_id") == client
        )
        labels = {"service": "inventory", "client": client, "cause": cause}
        value = node.registry.get_sample_value("precondition_client_failures_total", labels)
        assert expected > 0 and value == expected, (cause, client, value, expected)
    for cause, (precision, recall, support) in table.items():
        assert support >= 20, cause
        assert precision >= TARGET and recall >= TARGET, (cause, precision, recall)


async def test_two_collectors_on_one_real_redis_agree(redis_url: str) -> None:
    """Two collectors fed halves of one stream on a real Redis: same causes, each counted once."""
    events = demo.generate(demo.DemoConfig(duration=1200, deploy_at=600, seed=11))
    delivered = demo.deliver(events, max_delay=2.5, duplicate_ratio=0.02, seed=11)
    truth = demo.truth(events)
    nodes = [Node(make_store("real", redis_url, retention_seconds=86400)) for _ in range(2)]
    await replay_live(nodes, delivered)
    got = await decisions(nodes[0].store, events)
    table = score(truth, got)
    print_table("demo traffic, two collectors on one real Redis", table)
    assert sum(node.failures_counted() for node in nodes) == len(truth)
    assert all(node.failures_counted() > 0 for node in nodes)
    for cause, (precision, recall, _) in table.items():
        assert precision >= TARGET and recall >= TARGET, (cause, precision, recall)
    for node in nodes:
        await node.store.close()
