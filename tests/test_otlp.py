"""OTLP/HTTP logs: decoding both encodings, `POST /v1/logs` replies, and hostile payloads.

The JSON bodies follow the OTLP/HTTP JSON mapping of the OpenTelemetry protocol specification
(lowerCamelCase keys, int64 as strings, hex trace ids, enums as numbers); the protobuf bodies
are built with the `opentelemetry-proto` package, as every OTLP exporter's are.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from collector import otlp
from collector.event import Defaults, parse_event
from collector.payload import PayloadError
from collector.settings import Settings
from tests import shippers
from tests.api.test_ingest import client_for
from tests.conftest import free_port

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
NOW = 1_790_000_100.0


def kv(key: str, **value: object) -> dict[str, object]:
    return {"key": key, "value": value}


def json_request(*records: dict[str, object], resource: list[object] | None = None) -> bytes:
    """A request in OTLP's JSON mapping, as the specification's example writes it."""
    return orjson.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": resource or [kv("service.name", stringValue="orders")]
                    },
                    "scopeLogs": [
                        {"scope": {"name": "orders.http", "version": "1.0"}, "logRecords": records}
                    ],
                    "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
                }
            ]
        }
    )


RECORD = {
    "timeUnixNano": "1790000000500000000",
    "observedTimeUnixNano": "1790000000600000000",
    "severityNumber": 9,
    "severityText": "INFO",
    "traceId": "5b8efff798038103d269b633813fc60c",
    "spanId": "eee19b7ec3c1b174",
    "body": {"stringValue": "PUT /api/orders/ord-1 412"},
    "attributes": [
        kv("http.request.method", stringValue="PUT"),
        kv("http.route", stringValue="/api/orders/{id}"),
        kv("http.response.status_code", intValue="412"),
        kv("http.request.header.if-match", arrayValue={"values": [{"stringValue": '"a1"'}]}),
        kv("http.response.header.etag", arrayValue={"values": [{"stringValue": '"b2"'}]}),
        kv("request_id", stringValue="req-1"),
        kv("resource_id", stringValue="ord-1"),
    ],
}


def event_of(record: object) -> object:
    return parse_event(record, Defaults(None, NOW))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(Settings(max_body_bytes=64 * 1024)) as c:
        yield c


def test_json_mapping_reads_semantic_convention_attributes() -> None:
    """OTLP JSON: resource, attributes and timeUnixNano become the event's fields."""
    [record] = otlp.decode_logs(json_request(RECORD), "application/json")
    event = event_of(record.value)
    assert event == parse_event(
        {
            "ts": 1_790_000_000.5,
            "service": "orders",
            "method": "PUT",
            "route": "/api/orders/{id}",
            "status": 412,
            "if_match": '"a1"',
            "current_etag": '"b2"',
            "request_id": "req-1",
            "resource_id": "ord-1",
        },
        Defaults(None, NOW),
    )


def test_protobuf_and_json_decode_alike() -> None:
    """The same export in protobuf and in the JSON mapping decodes to the same records."""
    events = [
        {"ts": 1_790_000_000.25, "service": "orders", "deploy_version": "v2", "status": 412,
         "request_id": "r-1", "resource_id": "o-1", "if_match": '"x"', "current_etag": '"y"'},
    ]  # fmt: skip
    request = shippers.otlp_sdk_request(events)
    from google.protobuf import json_format

    as_json = json_format.MessageToJson(request, use_integers_for_enums=True).encode()
    from_pb = otlp.decode_logs(request.SerializeToString(), "application/x-protobuf")
    from_json = otlp.decode_logs(as_json, "application/json; charset=utf-8")
    assert [r.value for r in from_pb] == [r.value for r in from_json]
    event = event_of(from_pb[0].value)
    assert (event.deploy_version, event.if_match, event.ts) == ("v2", '"x"', 1_790_000_000.25)  # type: ignore[attr-defined]


def test_json_string_and_kvlist_bodies_are_events() -> None:
    """A body that is a JSON line or a kvlist gives the fields; attributes win over it."""
    line = {"requestId": "r-9", "resourceId": "o-9", "status": 412, "ts": 1_790_000_001.0}
    string_body: dict[str, object] = {"body": {"stringValue": orjson.dumps(line).decode()}}
    kvlist_body: dict[str, object] = {
        "body": {"kvlistValue": {"values": [kv("requestId", stringValue="r-8"),
                                            kv("status", intValue=409)]}},
        "attributes": [kv("status", intValue="412")],
        "observedTimeUnixNano": "1790000002000000000",
    }  # fmt: skip
    first, second = otlp.decode_logs(json_request(string_body, kvlist_body), "application/json")
    assert event_of(first.value).ts == 1_790_000_001.0  # type: ignore[attr-defined]
    event = event_of(second.value)
    assert (event.request_id, event.status, event.ts) == ("r-8", 412, 1_790_000_002.0)  # type: ignore[attr-defined]


def test_unknown_fields_and_snake_case_are_accepted() -> None:
    """Receivers ignore unknown fields and read the proto names as well as lowerCamelCase."""
    body = orjson.dumps(
        {
            "resource_logs": [
                {
                    "resource": {"attributes": [kv("service.name", stringValue="carts")],
                                 "droppedAttributesCount": 0, "futureField": {"x": 1}},
                    "scope_logs": [{"log_records": [
                        {"time_unix_nano": 1790000000000000000, "eventName": "http",
                         "attributes": [kv("status", intValue=412),
                                        kv("request_id", stringValue="r")]},
                    ]}],
                    "somethingNew": [1, 2, 3],
                }
            ]
        }
    )  # fmt: skip
    [record] = otlp.decode_logs(body, "application/json")
    assert event_of(record.value).service == "carts"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"resourceLogs": "x"}', "resourceLogs: must be a list"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [7]}]}]}', "logRecords[0]: must be an"),
        (b'{"resourceLogs": [{"resource": {"attributes": [{"key": 5}]}}]}',
         "key: must be a string"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}',
         "timeUnixNano: must be unsigned nanoseconds"),
        (b'{"resourceLogs": [', "not a readable OTLP JSON request"),
        (b"[1, 2]", "body: must be an object"),
    ],
)  # fmt: skip
def test_json_envelope_of_wrong_types_is_a_400_naming_the_place(body: bytes, problem: str) -> None:
    """A wrong type anywhere in the envelope is a 400 that says where."""
    with pytest.raises(PayloadError) as caught:
        otlp.decode_logs(body, "application/json")
    assert caught.value.status == 400 and problem in caught.value.message


def test_truncated_protobuf_is_a_400() -> None:
    """A protobuf export cut short is refused whole, naming protobuf."""
    body = shippers.otlp_sdk_request(
        [{"ts": 1.7e9, "service": "s", "status": 412, "request_id": "r"}]
    ).SerializeToString()
    with pytest.raises(PayloadError) as caught:
        otlp.decode_logs(body[:-3], "application/x-protobuf")
    assert caught.value.status == 400 and "protobuf" in caught.value.message


def test_hundred_thousand_attributes_is_a_400() -> None:
    """A record with 100,000 attributes is refused with the count and the limit."""
    request = logs_service_pb2.ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add()
    record.attributes.extend(
        common_pb2.KeyValue(key=f"k{i}", value=common_pb2.AnyValue(int_value=i))
        for i in range(100_000)
    )
    with pytest.raises(PayloadError) as caught:
        otlp.decode_logs(request.SerializeToString(), "application/x-protobuf")
    assert caught.value.status == 400
    assert "logRecords[0].attributes: 100000 attributes, more than 1000" in caught.value.message


def test_deeply_nested_values_are_a_400() -> None:
    """An attribute value nested 40 kvlists deep is refused (JSON and protobuf alike)."""
    value: dict[str, object] = {"stringValue": "x"}
    for _ in range(40):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    body = json_request({"attributes": [{"key": "deep", "value": value}]})
    with pytest.raises(PayloadError, match="nested deeper than 16"):
        otlp.decode_logs(body, "application/json")
    pb = logs_service_pb2.ExportLogsServiceRequest()
    attribute = pb.resource_logs.add().scope_logs.add().log_records.add().attributes.add(key="k")
    node = attribute.value
    for _ in range(40):
        node = node.kvlist_value.values.add(key="k").value
    with pytest.raises(PayloadError) as caught:
        otlp.decode_logs(pb.SerializeToString(), "application/x-protobuf")
    assert caught.value.status == 400


def test_http_json_partial_success_names_the_rejected_record(client: TestClient) -> None:
    """One bad record of two: 200, partialSuccess with rejectedLogRecords as a string."""
    bad = {**RECORD, "attributes": [kv("request_id", stringValue="req-2"),
                                    kv("http.response.status_code", boolValue=True)]}  # fmt: skip
    response = client.post("/v1/logs", content=json_request(RECORD, bad), headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    partial = response.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "1"
    assert "log record 1: http.response.status_code: must be a 3-digit" in partial["errorMessage"]
    assert client.post("/v1/logs", content=json_request(RECORD), headers=JSON).json() == {}


def test_http_protobuf_replies_in_protobuf(client: TestClient) -> None:
    """A gzip protobuf export gets an ExportLogsServiceResponse; errors a google.rpc.Status."""
    path, headers, body = shippers.otlp_protobuf(
        [{"ts": 1.79e9, "service": "orders", "status": 412, "request_id": "r-1"},
         {"ts": 1.79e9, "service": "orders", "status": "nope", "request_id": "r-2"}]
    )  # fmt: skip
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    reply = logs_service_pb2.ExportLogsServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_log_records == 1
    broken = client.post(path, content=gzip.compress(b"\x0a\xff\xff"), headers=headers)
    assert broken.status_code == 400
    status = status_pb2.Status.FromString(broken.content)
    assert status.code == 3 and "protobuf" in status.message


def test_http_errors_are_4xx_status_bodies(client: TestClient) -> None:
    """Unknown type 415, gzip bomb 413, broken gzip 400: each a Status, never a 500."""
    kinds = {"Content-Type": "text/csv"}
    assert client.post("/v1/logs", content=b"a,b", headers=kinds).status_code == 415
    bomb = gzip.compress(b"\0" * 10_000_000)
    answer = client.post("/v1/logs", content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert answer.status_code == 413 and "after decompression" in answer.json()["message"]
    broken = client.post(
        "/v1/logs", content=b"\x1f\x8bxx", headers={**JSON, "Content-Encoding": "gzip"}
    )
    assert broken.status_code == 400 and broken.json()["code"] == 3


def test_redis_down_is_a_retryable_503_with_retry_after() -> None:
    """Without Redis an OTLP export gets 503, Retry-After and a Status: the exporter retries."""
    with client_for(Settings(), f"redis://127.0.0.1:{free_port()}/0") as c:
        path, headers, body = shippers.otlp_protobuf(
            [{"ts": 1.79e9, "service": "orders", "status": 412, "request_id": "r-1"}]
        )
        response = c.post(path, content=body, headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert status_pb2.Status.FromString(response.content).code == 14
