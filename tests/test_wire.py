"""One demo stream through every shipper's format: the same causes and the same exact counts.

The stream is delivered as in tests/test_accuracy.py (late by up to 2.5 s, 2% duplicates), in
batches at their arrival times; each batch is encoded as that shipper sends it
(tests/shippers.py), decoded by `collector.wire.decode_body` and stored by the same Ingestor
as `/v1/events`, then settled in event time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import httpx
import pytest

from collector import demo, loki
from collector.event import Defaults, Event
from collector.ingest import parse_records
from collector.payload import decompress
from collector.wire import EVENTS, LOKI, OTLP, decode_body
from tests import shippers
from tests.conftest import ROOT, Node, free_port, make_store, wait_for

pytestmark = pytest.mark.anyio
WIRE_OF_PATH = {"/v1/events": EVENTS, "/v1/logs": OTLP, "/loki/api/v1/push": LOKI}
LIMIT = 64 * 1024 * 1024


def body_of(request: shippers.Request) -> tuple[str, bytes, str]:
    """The wire, decompressed body and content type, as the routers hand them on."""
    path, headers, raw = request
    body = decompress(raw, headers.get("Content-Encoding"), LIMIT)
    wire = WIRE_OF_PATH[path]
    if wire == LOKI and headers["Content-Type"] == loki.PROTOBUF:
        body = loki.unsnappy(body, LIMIT)
    return wire, body, headers["Content-Type"]


async def replay(fmt: str, delivered: list[demo.Event]) -> tuple[dict[str, str], Counter[str]]:
    """Every failure's cause by request id, and the failures counted per cause."""
    store = make_store("fake", retention_seconds=86400)
    node = Node(store)
    settler = node.settler
    arrival = 0.0
    for start in range(0, len(delivered), 200):
        batch = delivered[start : start + 200]
        arrival = max(arrival, max(float(str(e["ts"])) for e in batch) + 2.5)
        wire, body, content_type = body_of(shippers.FORMATS[fmt](batch, arrival))
        records = decode_body(wire, body, content_type)
        result = await node.ingest(records, received_at=arrival)
        assert not result.rejected, (fmt, result.rejected[:3])
        for service in result.services:
            await settler.settle_service(service, now=arrival)
    await settler.settle_all(force=True, now=arrival + 10)
    causes = {}
    for event in delivered:
        if "demo_cause" in event:
            service, rid = str(event["service"]), str(event["request_id"])
            _, decision = await store.request(service, str(event["resource_id"]), rid)
            causes[f"{service}/{rid}"] = decision["cause"] if decision else "none"
    counted: Counter[str] = Counter()
    for metric in node.registry.collect():
        for sample in metric.samples:
            if sample.name == "precondition_failures_total":
                counted[sample.labels["cause"]] += int(sample.value)
    await store.close()
    return causes, counted


@pytest.fixture(scope="module")
def delivered() -> list[demo.Event]:
    events = demo.generate(demo.DemoConfig(duration=100, deploy_at=50, seed=5))
    return demo.deliver(events, max_delay=2.5, duplicate_ratio=0.02, seed=5)


async def test_every_format_gives_the_causes_and_counts_of_plain_ndjson(
    delivered: list[demo.Event],
) -> None:
    """Ten shipper formats of one demo stream: each failure's cause and every count match."""
    expected_causes, expected_counts = await replay("ndjson", delivered)
    truth = Counter(str(e["demo_cause"]) for e in delivered if "demo_cause" in e)
    # Duplicates are counted once; every distinct failure is counted exactly once.
    distinct = {(e["service"], e["request_id"]) for e in delivered if "demo_cause" in e}
    assert sum(expected_counts.values()) == len(distinct) > 200
    assert len(truth) >= 8  # most causes occur in 100 s of demo traffic
    formats = [name for name in shippers.FORMATS if name != "ndjson"]
    assert len(formats) == 10
    for fmt in formats:
        causes, counts = await replay(fmt, delivered)
        assert counts == expected_counts, fmt
        assert causes == expected_causes, fmt


def test_every_format_decodes_to_the_events_of_plain_ndjson(delivered: list[demo.Event]) -> None:
    """Each format's records parse to the very events the NDJSON lines do, field by field."""
    defaults = Defaults(None, 1_790_000_200.0, 300)

    def events(fmt: str) -> list[Event]:
        wire, body, content_type = body_of(shippers.FORMATS[fmt](delivered, 1_790_000_150.0))
        parsed, rejected = parse_records(decode_body(wire, body, content_type), defaults)
        assert not rejected, (fmt, rejected[:3])
        return sorted(parsed, key=lambda e: (e.service, e.request_id, e.ts))

    expected = events("ndjson")
    assert len(expected) == len(delivered)
    for fmt in shippers.FORMATS:
        got = events(fmt)
        assert [replace(e, ts=0) for e in got] == [replace(e, ts=0) for e in expected], fmt
        assert max(abs(a.ts - b.ts) for a, b in zip(got, expected, strict=True)) < 1e-6, fmt


@pytest.mark.redis
def test_ingest_processes_decode_every_format(redis_url: str) -> None:
    """`serve` on a real Redis: its ingest processes decode every format; bad bodies are 4xx."""
    port = free_port()
    env = {**os.environ, "PW_REDIS_URL": redis_url, "PW_INGEST_PROCESSES": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)], env=env, cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, 30, "collector ready")
        events = demo.generate(demo.DemoConfig(duration=20))[:40]
        for n, fmt in enumerate(shippers.FORMATS):
            batch = [{**e, "request_id": f"{e['request_id']}-{n}"} for e in events]
            path, headers, body = shippers.FORMATS[fmt](batch, float(str(events[-1]["ts"])))
            response = httpx.post(base + path, content=body, headers=headers)
            assert response.status_code in (200, 204), (fmt, response.text)
        metric = 'precondition_collector_events_total{result="accepted"}'
        assert f"{metric} {40.0 * len(shippers.FORMATS)}" in httpx.get(base + "/metrics").text
        hostile = [
            ("/v1/logs", {"Content-Type": "application/x-protobuf"}, b"\x0a\xff"),
            ("/loki/api/v1/push", {"Content-Type": "application/x-protobuf"}, b"\x05abc"),
            ("/v1/events", {"Content-Type": "application/msgpack"}, b"\xdd\xff\xff\xff\xff"),
        ]
        for path, headers, body in hostile:
            assert httpx.post(base + path, content=body, headers=headers).status_code == 400
    finally:
        server.terminate()
        server.wait(timeout=20)
