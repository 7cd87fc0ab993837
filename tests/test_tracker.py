"""Deploy verdicts in event time, on demo traffic and on a race storm spanning a deploy."""

from __future__ import annotations

import random

import pytest

from collector import demo
from collector.tracker import DeployTracker
from tests.conftest import Node, make_store
from tests.test_accuracy import replay_live

pytestmark = pytest.mark.anyio

START = 1_790_000_000.0


async def test_format_change_deploy_fires_within_five_minutes() -> None:
    """The orders deploy that changes the ETag format is flagged < 5 min of event time after."""
    config = demo.DemoConfig(duration=1500, deploy_at=900)
    events = demo.deliver(demo.generate(config))
    node = Node(make_store("fake", retention_seconds=86400))
    tracker = DeployTracker(node.store, node.metrics, lateness=5)
    seen: dict[str, float] = {}

    batches = 0

    async def judge(_: Node, arrival: float) -> None:
        nonlocal batches
        batches += 1
        if batches % 5:  # the collector judges once per second; a batch is ~10 s here
            return
        for service in await node.store.services():
            latest = await tracker.judge(service)
            if latest is not None and latest.regression and service not in seen:
                seen[service] = float(latest.regression["detected_at"])  # type: ignore[arg-type]

    await replay_live([node], events, after_batch=judge)
    deploy_ts = config.start + config.deploy_at
    assert set(seen) == {"orders"}, seen
    print(f"\norders v2 flagged {seen['orders'] - deploy_ts:.0f} s of event time after deploy")
    assert seen["orders"] - deploy_ts <= 300
    (orders,) = [d for d in await tracker.deploys("orders") if d.version == "v2"]
    assert orders.regression is not None and orders.regression["cause"] == "format_change"
    assert "S:v{N}-hex16" in orders.formats
    value = node.metrics.registry.get_sample_value(
        "precondition_deploy_regression", {"service": "orders", "version": "v2"}
    )
    assert value == 1.0
    info = node.metrics.registry.get_sample_value(
        "precondition_deploy_info", {"service": "orders", "version": "v2"}
    )
    assert info == 1.0
    for version, shape in (("v1", "S:hex32"), ("v2", "S:v{N}-hex16")):
        labels = {"service": "orders", "version": version, "format": shape}
        assert node.metrics.registry.get_sample_value("precondition_etag_format_info", labels) == 1


async def test_no_op_deploy_marker_does_not_fire() -> None:
    """A deploy marker for a service whose behaviour does not change is never flagged."""
    config = demo.DemoConfig(duration=1500, deploy_at=1400)
    events = demo.deliver(demo.generate(config))
    node = Node(make_store("fake", retention_seconds=86400))
    tracker = DeployTracker(node.store, node.metrics, lateness=5)
    marked = False

    async def judge(_: Node, arrival: float) -> None:
        nonlocal marked
        if not marked and arrival > START + 600:
            await node.store.record_deploy("inventory", "5.2.2", START + 600)
            await node.store.record_deploy("carts", "2024.11.4", START + 600)
            marked = True
        if int(arrival) % 30 < 10:
            for service in ("inventory", "carts"):
                await tracker.judge(service)

    await replay_live([node], events, after_batch=judge)
    for service in ("inventory", "carts"):
        latest = (await tracker.deploys(service))[-1]
        assert latest.source == "marker"
        assert latest.regression is None, (service, latest)


def storm_events(deploy_ts: float) -> list[dict[str, object]]:
    """Steady writes on many resources, and a race storm on hot ones from 3 min before a deploy."""
    rng = random.Random(3)
    events: list[dict[str, object]] = []
    etags: dict[str, str] = {}
    previous: dict[str, str] = {}
    ts = deploy_ts - 700
    n = 0
    while ts < deploy_ts + 400:
        ts += rng.expovariate(20)
        n += 1
        storm = deploy_ts - 180 <= ts
        resource = (
            f"r{rng.randrange(3)}" if storm and rng.random() < 0.6 else f"r{rng.randrange(500)}"
        )
        version = "v1" if ts < deploy_ts else "v2"
        current = etags.get(resource)
        new = f'"{rng.getrandbits(128):032x}"'
        base = {"ts": round(ts, 3), "service": "shop", "request_id": f"q{n}", "method": "PUT",
                "route": "/r/{id}", "resource_id": resource, "client_id": f"u{n}",
                "deploy_version": version}  # fmt: skip
        hot = resource in ("r0", "r1", "r2")
        if storm and hot and resource in previous and rng.random() < 0.5:
            # Lost the race: read the ETag a moment before the winner replaced it.
            lost = previous[resource]
            events.append({**base, "status": 412, "if_match": lost, "current_etag": current})
        else:
            events.append({**base, "status": 200, "if_match": current, "current_etag": new})
            if current is not None:
                previous[resource] = current
            etags[resource] = new
    return [{k: v for k, v in e.items() if v is not None} for e in events]


async def test_race_storm_that_started_before_a_deploy_does_not_fire() -> None:
    """Races surging across a deploy are concurrency, not a bad deploy."""
    deploy_ts = START + 1000
    events = demo.deliver(storm_events(deploy_ts))
    node = Node(make_store("fake", retention_seconds=86400))
    tracker = DeployTracker(node.store, node.metrics, lateness=5)

    batches = 0

    async def judge(_: Node, arrival: float) -> None:
        nonlocal batches
        batches += 1
        if batches % 5 == 0:
            await tracker.judge("shop")

    await replay_live([node], events, after_batch=judge)
    failures = node.failures_counted()
    assert failures > 200  # the storm is real
    latest = (await tracker.deploys("shop"))[-1]
    assert latest.version == "v2"
    assert latest.regression is None
