"""The Loki push API: labels, JSON and snappy protobuf bodies, replies, and hostile payloads.

Bodies follow grafana/loki's pkg/push/push.proto and pkg/loghttp/push/push.go (see
tests/shippers.py for the commit): protobuf is snappy's block format, never framed.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import cramjam
import orjson
import pytest
from fastapi.testclient import TestClient

from collector import loki
from collector.event import Defaults, parse_event
from collector.payload import PayloadError
from collector.settings import Settings
from tests import shippers
from tests.api.test_ingest import client_for

LINE = {"requestId": "r-1", "resourceId": "o-1", "status": 412, "ifMatch": '"a"', "etag": '"b"'}
JSON = {"Content-Type": "application/json"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def push_json(*values: list[object], stream: dict[str, str] | None = None) -> bytes:
    labels = stream if stream is not None else {"service_name": "orders", "env": "prod"}
    return orjson.dumps({"streams": [{"stream": labels, "values": list(values)}]})


def snappy(data: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(data))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(Settings(max_body_bytes=64 * 1024)) as c:
        yield c


def test_labels_are_parsed_with_escapes() -> None:
    """A Prometheus label set with escaped quotes, backslashes and newlines reads back."""
    text = r'{filename="/var/log/a \"b\".log", job="x\\y", note="1\n2", service_name="orders"}'
    assert loki.parse_labels(text) == {
        "filename": '/var/log/a "b".log',
        "job": "x\\y",
        "note": "1\n2",
        "service_name": "orders",
    }
    assert loki.parse_labels("{}") == {}
    for bad in ("job=x", '{job="x}', '{="x"}', "{job=x}"):
        with pytest.raises(ValueError):
            loki.parse_labels(bad)


def test_labels_and_metadata_are_defaults_under_the_line() -> None:
    """service_name names the service; metadata and labels yield to the line's own fields."""
    other = orjson.dumps({**LINE, "requestId": "r-2", "service": "carts"}).decode()
    body = push_json(
        ["1790000000123000000", orjson.dumps(LINE).decode()],
        ["1790000000200000000", other, {"deploy_version": "v7"}],
    )
    first, second = loki.decode_push(body, "application/json")
    one = parse_event(first.value, Defaults(None, 1.8e9))
    two = parse_event(second.value, Defaults(None, 1.8e9))
    assert (one.service, one.ts, one.current_etag) == ("orders", 1_790_000_000.123, '"b"')
    assert (two.service, two.deploy_version) == ("carts", "v7")


def test_protobuf_entries_use_their_timestamp_when_the_line_has_none() -> None:
    """A protobuf push: labels give the service, the entry's timestamp the time."""
    request = loki.PushRequest()
    stream = request.streams.add(labels='{service_name="orders"}')  # type: ignore[attr-defined]
    entry = stream.entries.add(line=orjson.dumps(LINE).decode())
    entry.timestamp.FromNanoseconds(1_790_000_000_250_000_000)
    [record] = loki.decode_push(loki.unsnappy(snappy(request.SerializeToString()), 10**6), "")
    event = parse_event(record.value, Defaults(None, 1.8e9))
    assert (event.service, event.ts, event.request_id) == ("orders", 1_790_000_000.25, "r-1")


def test_a_line_that_is_not_json_is_rejected_alone(client: TestClient) -> None:
    """One plain-text line among JSON ones: 400 listing it, the others stored."""
    body = push_json(
        ["1790000000000000000", orjson.dumps(LINE).decode()],
        ["1790000000000000001", "GET /healthz 200"],
    )
    response = client.post("/loki/api/v1/push", content=body, headers=JSON)
    assert response.status_code == 400
    answer = response.json()
    assert answer["accepted"] == 1
    assert answer["rejected"][0]["index"] == 1
    assert "line: not a JSON event" in answer["rejected"][0]["error"]


def test_alloy_protobuf_and_gzip_json_are_204(client: TestClient) -> None:
    """Alloy's snappy protobuf and a gzip JSON push are stored and answered 204, as Loki does."""
    events = [{**LINE, "service": "orders", "ts": 1.79e9, "request_id": "r-5"}]
    path, headers, body = shippers.loki_protobuf(events, read_at=1.79e9)
    assert client.post(path, content=body, headers=headers).status_code == 204
    said_snappy = client.post(path, content=body, headers={**headers, "Content-Encoding": "snappy"})
    assert said_snappy.status_code == 204
    path, headers, body = shippers.loki_json([{**events[0], "request_id": "r-6"}])
    zipped = client.post(
        path, content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
    )
    assert zipped.status_code == 204
    metric = "precondition_collector_events_total"
    registry = client.app.state.collector.registry  # type: ignore[attr-defined]
    assert registry.get_sample_value(metric, {"result": "accepted"}) == 2
    assert registry.get_sample_value(metric, {"result": "duplicate"}) == 1


def test_snappy_bomb_is_refused_before_it_expands(client: TestClient) -> None:
    """A snappy body that says it expands past the limit is a 413; a real one too."""
    huge_header = b"\xff\xff\xff\xff\x0f" + b"\x00" * 16  # claims 4 GiB uncompressed
    with pytest.raises(PayloadError) as caught:
        loki.unsnappy(huge_header, 10**6)
    assert caught.value.status == 413
    bomb = snappy(b"\x00" * 1_000_000)
    assert len(bomb) < 64 * 1024  # under the body limit on the wire, 15 times over it expanded
    response = client.post("/loki/api/v1/push", content=bomb, headers=PROTOBUF)
    assert response.status_code == 413
    assert "after decompression" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "headers", "problem"),
    [
        (b"\x05abc", PROTOBUF, "snappy body cannot be decompressed"),
        (snappy(b"\x0a\x09\x0a\x03{a="), PROTOBUF, "not a readable Loki PushRequest"),
        (snappy(b"\x0a\x04\x0a\x02{a"), PROTOBUF, "streams[0].labels"),
        (b'{"streams": {}}', JSON, 'want {"streams"'),
        (b'{"streams": [{"stream": {"a": 1}, "values": []}]}', JSON, "label values must be"),
        (b'{"streams": [{"values": [[1790000000, "{}"]]}]}', JSON, "string of Unix nanoseconds"),
        (b'{"streams": [{"values": [["1", "{}", {}, 4]]}]}', JSON, "must be ["),
        (b'{"streams": [', JSON, "not a readable Loki push request"),
        (b"a=b", {"Content-Type": "text/plain"}, "not supported"),
    ],
)
def test_hostile_pushes_are_4xx_naming_the_problem(
    client: TestClient, body: bytes, headers: dict[str, str], problem: str
) -> None:
    """Truncated or broken snappy and protobuf, wrong JSON types, unknown types: clear 4xx."""
    response = client.post("/loki/api/v1/push", content=body, headers=headers)
    assert 400 <= response.status_code < 500
    assert problem in response.json()["error"]


def test_too_many_labels_is_a_400() -> None:
    """A stream with 100,000 labels is refused with the limit."""
    labels = "{" + ",".join(f'l{i}="v"' for i in range(100_000)) + "}"
    request = loki.PushRequest()
    request.streams.add(labels=labels)  # type: ignore[attr-defined]
    with pytest.raises(PayloadError, match="more than 1000 labels"):
        loki.decode_push(request.SerializeToString(), "application/x-protobuf")
