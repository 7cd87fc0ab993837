"""Fluent Bit's `http` output on `POST /v1/events`: msgpack event shapes, JSON formats, bombs.

The byte layouts come from fluent/fluent-bit's src/flb_log_event_decoder.c and
plugins/out_http/http.c (commit in tests/shippers.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import msgpack
import pytest
from fastapi.testclient import TestClient

from collector.event import Defaults, parse_event
from collector.fluentbit import split_msgpack
from collector.payload import PayloadError
from collector.settings import Settings
from tests import shippers
from tests.api.test_ingest import client_for

RECORD: dict[str, object] = {
    "service": "orders",
    "request_id": "r-1",
    "resource_id": "o-1",
    "status": 412,
}
MSGPACK = {"Content-Type": "application/msgpack", "User-Agent": "Fluent-Bit"}


def pack(*events: object) -> bytes:
    return b"".join(msgpack.packb(e) for e in events)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(Settings(max_body_bytes=64 * 1024)) as c:
        yield c


def test_both_event_shapes_and_every_timestamp_type_are_read() -> None:
    """[[t, meta], record] and [t, record]; EventTime, integer and float times."""
    body = pack(
        [[shippers.event_time(1_790_000_000.5), {"otlp": {}}], RECORD],
        [shippers.event_time(1_790_000_001.0), dict(RECORD, request_id="r-2")],
        [[1_790_000_002, {}], dict(RECORD, request_id="r-3")],
        [1_790_000_003.25, dict(RECORD, request_id="r-4")],
    )
    times = [parse_event(r.value, Defaults(None, 1.8e9)).ts for r in split_msgpack(body)]
    assert times == [1_790_000_000.5, 1_790_000_001.0, 1_790_000_002.0, 1_790_000_003.25]


def test_the_record_time_wins_and_group_markers_are_skipped() -> None:
    """A record's own `ts` beats Fluent Bit's timestamp; group start/end markers are no events."""
    start = msgpack.ExtType(0, struct.pack(">II", 0xFFFFFFFF, 0))
    end = msgpack.ExtType(0, struct.pack(">II", 0xFFFFFFFE, 0))
    body = pack(
        [[start, {}], {"resource": {}}],
        [[shippers.event_time(1_790_000_009.0), {}], dict(RECORD, ts=1_790_000_000.0)],
        [[end, {}], {}],
    )
    [record] = split_msgpack(body)
    assert record.index == 1 and record.value["ts"] == 1_790_000_000.0  # type: ignore[index]


def test_malformed_events_are_rejected_alone() -> None:
    """An event of the wrong shape or timestamp type is a per-record error, the rest pass."""
    body = pack(
        "hello",
        [["soon", {}], RECORD],
        [[1, {}], ["not", "a", "map"]],
        [msgpack.ExtType(5, b"x"), RECORD],
        [[shippers.event_time(1.79e9), {}], RECORD],
    )
    records = split_msgpack(body)
    assert [r.error is None for r in records] == [False, False, False, False, True]
    assert "must be [[timestamp, metadata], record]" in str(records[0].error)
    assert "timestamp must be" in str(records[1].error)
    assert "record must be a map" in str(records[2].error)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),  # an array of 4 billion
        (b"\xdf\x00\x01\x86\xa0" + b"\xa1k\x01" * 10, "exceeds max_map_len"),  # 100,000 keys
        (b"\x91" * 5000, "StackError"),  # nested 5,000 deep
        (pack([[1, {}], RECORD])[:-3], "truncated after 0 events"),
        (pack([[1, {}], {1: 2}]), "not allowed for map key"),
        (b"\x92\xa2\xff\xfe\x80", "UnicodeDecodeError"),
    ],
)
def test_msgpack_bombs_and_broken_streams_are_a_400(body: bytes, problem: str) -> None:
    """Huge length headers, deep nesting, truncation, bad keys or UTF-8: 400 naming it."""
    with pytest.raises(PayloadError) as caught:
        split_msgpack(body)
    assert caught.value.status == 400 and problem in caught.value.message


def test_every_fluent_bit_format_is_accepted_over_http(client: TestClient) -> None:
    """msgpack (both shapes), json and json_lines with `date`: stored with Fluent Bit's time."""
    event = dict(RECORD, ts=1_790_000_000.125)
    requests = [
        shippers.fluentbit_msgpack([{**event, "request_id": "m2"}]),
        shippers.fluentbit_msgpack([{**event, "request_id": "m1"}], legacy=True),
        shippers.fluentbit_json([{**event, "request_id": "j"}]),
        shippers.fluentbit_json([{**event, "request_id": "jl"}], lines=True),
    ]
    collector = client.app.state.collector  # type: ignore[attr-defined]
    for path, headers, body in requests:
        response = client.post(path, content=body, headers=headers)
        assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    for rid in ("m2", "m1", "j", "jl"):
        stored, _ = client.portal.call(collector.store.request, "orders", "o-1", rid)  # type: ignore[union-attr]
        assert stored is not None and abs(stored["ts"] - 1_790_000_000.125) < 1e-6


def test_broken_msgpack_over_http_is_a_400(client: TestClient) -> None:
    """A truncated msgpack body is a 400 with the reason, nothing stored, never a 500."""
    body = pack([[1, {}], RECORD])[:-2]
    response = client.post("/v1/events", content=body, headers=MSGPACK)
    assert response.status_code == 400 and "truncated" in response.json()["error"]
