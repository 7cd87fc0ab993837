"""What each log shipper puts on the wire, byte for byte, built from the shippers' sources.

Each encoder takes demo-style events (canonical fields, `ts` in epoch seconds) and returns
`(path, headers, body)` exactly as that shipper, configured as in `examples/`, would POST them.
Where the bytes come from (sources read at the commits named):

- OpenTelemetry Collector `otlphttp` exporter (open-telemetry/opentelemetry-collector 934999fb,
  exporter/otlphttpexporter/otlp.go, factory.go): POST `<endpoint>/v1/logs`, `Content-Type:
  application/x-protobuf` (encoding `proto`, the default; `json` sends `application/json`),
  `Content-Encoding: gzip` (compression defaults to gzip), `User-Agent: OpenTelemetry
  Collector Contrib/<version> (<os>/<arch>)`. The `filelog` receiver without operators puts
  each line in the body as a string, `log.file.name` in the attributes, and only
  `observedTimeUnixNano` (the read time); the `resource` processor adds `service.name`.
- An OpenTelemetry SDK's OTLP/HTTP log exporter: semantic-convention attributes on each record,
  `service.name`/`service.version` on the resource, `timeUnixNano` the event time.
- Loki clients, Promtail and Grafana Alloy's `loki.write` (grafana/loki 65e30f84,
  clients/pkg/util/batch.go: `snappy.Encode(nil, proto.Marshal(PushRequest))`;
  pkg/push/push.proto): `Content-Type: application/x-protobuf`, snappy block format, no
  Content-Encoding; one stream per label set, labels as `{name="value", ...}` sorted by name,
  each entry's timestamp the read time unless a pipeline stage sets it. The JSON push
  (pkg/loghttp/push/push.go) is `{"streams": [{"stream": {...}, "values": [["<ns>", line]]}]}`.
- Fluent Bit `http` output (fluent/fluent-bit d55459d4, plugins/out_http/http.c, http.h,
  src/flb_pack.c, src/flb_log_event_decoder.c): `format msgpack` posts the chunk as it is,
  `Content-Type: application/msgpack`, each event `[[EventTime, {}], record]` (ext type 0,
  big-endian uint32 seconds and nanoseconds); before 2.1 `[EventTime, record]`. `format json`
  is an array and `json_lines` one object a line (`application/json`, `application/x-ndjson`),
  each record with `json_date_key` (`date`) first, a double of epoch seconds by default.
  Every request says `User-Agent: Fluent-Bit`. The `tail` input's `json` parser with
  `Time_Key ts` moves `ts` out of the record into the event's timestamp.
- Vector `http` sink (vectordotdev/vector c3445d42, src/sinks/http/config.rs, encoder.rs):
  `codec: json` frames events as a JSON array (`application/json`), `framing.method:
  newline_delimited` as NDJSON without a final newline (`application/x-ndjson`); objects'
  keys in sorted order (Vector's log events are ordered maps); no compression by default.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterable, Sequence

import cramjam
import msgpack
import orjson
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from collector.loki import PushRequest

Event = dict[str, object]
Request = tuple[str, dict[str, str], bytes]
NS = 1_000_000_000
OTELCOL_AGENT = "OpenTelemetry Collector Contrib/0.131.0 (linux/amd64)"
ALLOY_AGENT = "Alloy/v1.10.0 (linux; binary)"
VECTOR_AGENT = "Vector/0.49.0 (x86_64-unknown-linux-gnu)"
# Event field -> OpenTelemetry semantic-convention attribute (the rest keep their own names).
SEMCONV = {
    "route": "http.route",
    "method": "http.request.method",
    "status": "http.response.status_code",
    "if_match": "http.request.header.if-match",
    "if_none_match": "http.request.header.if-none-match",
    "current_etag": "http.response.header.etag",
}
HEADER_ARRAYS = {"if_match", "if_none_match", "current_etag"}  # string[] in the conventions


def nanos(event: Event) -> int:
    return round(float(str(event["ts"])) * 1000) * 1_000_000  # demo times are whole ms


def line(event: Event) -> bytes:
    """The JSON line a service logs (what a file-tailing shipper reads)."""
    return orjson.dumps({k: v for k, v in event.items() if k != "demo_cause"})


def without(event: Event, *names: str) -> Event:
    return {k: v for k, v in event.items() if k not in names and k != "demo_cause"}


# -- OTLP ---------------------------------------------------------------------------------------


def _any(value: object) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=map(_any, value)))
    return common_pb2.AnyValue(string_value=str(value))


def _attributes(fields: dict[str, object]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=_any(v)) for k, v in fields.items()]


def otlp_sdk_request(events: Sequence[Event]) -> logs_service_pb2.ExportLogsServiceRequest:
    """An SDK's export: one ResourceLogs per (service, version), semantic-convention names."""
    request = logs_service_pb2.ExportLogsServiceRequest()
    groups: dict[tuple[str, str | None], list[Event]] = {}
    for event in events:
        version = event.get("deploy_version")
        key = (str(event["service"]), None if version is None else str(version))
        groups.setdefault(key, []).append(event)
    for (service, version), group in groups.items():
        resource_logs = request.resource_logs.add()
        resource = {"service.name": service, "telemetry.sdk.language": "python"}
        if version is not None:
            resource["service.version"] = version
        resource_logs.resource.attributes.extend(_attributes(dict(resource)))
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = "orders.http"
        for event in group:
            attributes: dict[str, object] = {}
            for name, value in without(event, "ts", "service", "deploy_version").items():
                attributes[SEMCONV.get(name, name)] = [value] if name in HEADER_ARRAYS else value
            record = scope_logs.log_records.add(
                time_unix_nano=nanos(event),
                observed_time_unix_nano=nanos(event) + 40_000_000,
                severity_number=9,
                severity_text="INFO",
                body=common_pb2.AnyValue(string_value=f"{event.get('method')} {event['status']}"),
            )
            record.attributes.extend(_attributes(attributes))
    return request


def otlp_protobuf(events: Sequence[Event]) -> Request:
    body = gzip.compress(otlp_sdk_request(events).SerializeToString())
    headers = {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "gzip",
        "User-Agent": OTELCOL_AGENT,
    }
    return "/v1/logs", headers, body


def otlp_filelog(events: Sequence[Event], read_at: float, *, encoding: str = "proto") -> Request:
    """The Collector's filelog receiver -> resource processor -> otlphttp exporter (examples/)."""
    request = logs_service_pb2.ExportLogsServiceRequest()
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(str(event["service"]), []).append(event)
    for service, group in groups.items():
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.extend(_attributes({"service.name": service}))
        scope_logs = resource_logs.scope_logs.add()
        for event in group:
            record = scope_logs.log_records.add(
                observed_time_unix_nano=int(read_at * NS),
                body=common_pb2.AnyValue(string_value=line(event).decode()),
            )
            record.attributes.extend(_attributes({"log.file.name": f"{service}.log"}))
    if encoding == "json":
        from google.protobuf import json_format

        # The Collector's JSON marshaler: lowerCamelCase, int64 as strings, enums as numbers.
        text = json_format.MessageToJson(request, use_integers_for_enums=True, indent=None)
        body, kind = text.encode(), "application/json"
    else:
        body, kind = request.SerializeToString(), "application/x-protobuf"
    headers = {"Content-Type": kind, "Content-Encoding": "gzip", "User-Agent": OTELCOL_AGENT}
    return "/v1/logs", headers, gzip.compress(body)


# -- Loki ---------------------------------------------------------------------------------------


def _label_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"


def _streams(events: Iterable[Event]) -> dict[str, list[Event]]:
    streams: dict[str, list[Event]] = {}
    for event in events:
        streams.setdefault(str(event["service"]), []).append(event)
    return streams


def loki_protobuf(events: Sequence[Event], read_at: float) -> Request:
    """Alloy's loki.source.file -> loki.write (examples/): lines as logged, read-time stamps."""
    request: PushRequest = PushRequest()  # type: ignore[valid-type]
    for service, group in _streams(events).items():
        labels = {"filename": f"/var/log/{service}/access.log", "service_name": service}
        stream = request.streams.add(labels=_label_text(labels))  # type: ignore[attr-defined]
        for event in group:
            entry = stream.entries.add(line=line(event).decode())
            entry.timestamp.FromNanoseconds(int(read_at * NS))
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))  # type: ignore[attr-defined]
    headers = {"Content-Type": "application/x-protobuf", "User-Agent": ALLOY_AGENT}
    return "/loki/api/v1/push", headers, body


def loki_json(events: Sequence[Event]) -> Request:
    """The JSON push, each line without a time of its own: the entry's timestamp is the time."""
    streams = []
    for service, group in _streams(events).items():
        values = [[str(nanos(e)), line(without(e, "ts", "service")).decode()] for e in group]
        streams.append({"stream": {"service_name": service, "job": "app"}, "values": values})
    headers = {"Content-Type": "application/json", "User-Agent": ALLOY_AGENT}
    return "/loki/api/v1/push", headers, orjson.dumps({"streams": streams})


# -- Fluent Bit ---------------------------------------------------------------------------------


def event_time(ts: float) -> msgpack.ExtType:
    whole_ms = round(ts * 1000)
    return msgpack.ExtType(0, struct.pack(">II", whole_ms // 1000, (whole_ms % 1000) * 1_000_000))


def fluentbit_msgpack(
    events: Sequence[Event], *, legacy: bool = False, read_at: float | None = None
) -> Request:
    """`format msgpack`. With `read_at`, as examples/fluent-bit.yaml sends it: the json parser
    keeps `ts` in the record and the EventTime is the read time. Without, as a parser with
    `Time_Key ts` does: `ts` moved out of the record into the EventTime."""
    packer = msgpack.Packer()
    body = b""
    for event in events:
        if read_at is None:
            stamp, record = event_time(float(str(event["ts"]))), without(event, "ts")
        else:
            stamp, record = event_time(read_at), without(event)
        header: object = stamp if legacy else [stamp, {}]
        body += packer.pack([header, record])
    headers = {"Content-Type": "application/msgpack", "User-Agent": "Fluent-Bit"}
    return "/v1/events", headers, body


def fluentbit_json(events: Sequence[Event], *, lines: bool = False) -> Request:
    """`format json` / `json_lines`: `date` (a double) first, then the record."""
    records = [{"date": float(str(e["ts"])), **without(e, "ts")} for e in events]
    if lines:
        body = b"".join(orjson.dumps(r) + b"\n" for r in records)
        kind = "application/x-ndjson"
    else:
        body, kind = orjson.dumps(records), "application/json"
    return "/v1/events", {"Content-Type": kind, "User-Agent": "Fluent-Bit"}, body


# -- Vector -------------------------------------------------------------------------------------


def vector_http(events: Sequence[Event], *, ndjson: bool = False) -> Request:
    """`codec: json` (a JSON array) or with `framing.method: newline_delimited` (NDJSON)."""
    records = [orjson.dumps(without(e), option=orjson.OPT_SORT_KEYS) for e in events]
    if ndjson:
        body, kind = b"\n".join(records), "application/x-ndjson"
    else:
        body, kind = b"[" + b",".join(records) + b"]", "application/json"
    return "/v1/events", {"Content-Type": kind, "User-Agent": VECTOR_AGENT}, body


def ndjson(events: Sequence[Event]) -> Request:
    """`precondition-watch ingest`: the service's lines as they are, gzip."""
    body = gzip.compress(b"\n".join(line(e) for e in events), compresslevel=1)
    headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    return "/v1/events", headers, body


FORMATS: dict[str, Callable[[Sequence[Event], float], Request]] = {
    "ndjson": lambda events, read_at: ndjson(events),
    "otlp-protobuf": lambda events, read_at: otlp_protobuf(events),
    "otlp-filelog-json": lambda events, read_at: otlp_filelog(events, read_at, encoding="json"),
    "loki-protobuf": loki_protobuf,
    "loki-json": lambda events, read_at: loki_json(events),
    "fluentbit-msgpack": lambda events, read_at: fluentbit_msgpack(events),
    "fluentbit-msgpack-legacy": lambda events, read_at: fluentbit_msgpack(events, legacy=True),
    "fluentbit-json": lambda events, read_at: fluentbit_json(events),
    "fluentbit-json-lines": lambda events, read_at: fluentbit_json(events, lines=True),
    "vector-json": lambda events, read_at: vector_http(events),
    "vector-ndjson": lambda events, read_at: vector_http(events, ndjson=True),
}
