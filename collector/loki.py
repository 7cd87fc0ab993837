"""The Loki push API: `POST /loki/api/v1/push` bodies (JSON, or snappy-compressed protobuf) into
records.

Each log line is one JSON event. The stream's labels, then the entry's structured metadata,
are defaults under the line's own fields: a `service_name` (or `service`) label names the
service of lines that carry none, as Promtail and Grafana Alloy label a file's lines. The
entry's timestamp is the event time of a line without a time of its own.

Promtail and Grafana Alloy send a `logproto.PushRequest` in protobuf, compressed with snappy's
block format, as `application/x-protobuf`. No maintained package ships Loki's generated
Python code, so the message types are built here from the schema of Loki's `pkg/push/push.proto`
(field numbers and types copied; gogoproto options do not change the wire format) with
protobuf's own descriptor API.
"""

from __future__ import annotations

from typing import Any

import cramjam
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from collector.event import ALIASES
from collector.payload import PayloadError, Record, media_type

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TIME_NAMES = ALIASES["ts"]
MAX_LABELS = 1000  # per stream or entry; Loki's own default limit is 15 labels
SERVICE_LABELS = ("service_name", "service")


def _push_request_class() -> type[Message]:
    """logproto.PushRequest, from the field numbers of Loki's push.proto."""
    T = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="pkg/push/push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        added = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = added.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    one, many = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    message(
        "PushRequest",
        ("streams", 1, T.TYPE_MESSAGE, many, ".logproto.StreamAdapter"),
        ("format", 2, T.TYPE_STRING, one, ""),
    )
    message(
        "StreamAdapter",
        ("labels", 1, T.TYPE_STRING, one, ""),
        ("entries", 2, T.TYPE_MESSAGE, many, ".logproto.EntryAdapter"),
        ("hash", 3, T.TYPE_UINT64, one, ""),
    )
    message(
        "LabelPairAdapter",
        ("name", 1, T.TYPE_STRING, one, ""),
        ("value", 2, T.TYPE_STRING, one, ""),
    )
    message(
        "EntryAdapter",
        ("timestamp", 1, T.TYPE_MESSAGE, one, ".google.protobuf.Timestamp"),
        ("line", 2, T.TYPE_STRING, one, ""),
        ("structuredMetadata", 3, T.TYPE_MESSAGE, many, ".logproto.LabelPairAdapter"),
        ("parsed", 4, T.TYPE_MESSAGE, many, ".logproto.LabelPairAdapter"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


PushRequest = _push_request_class()


def unsnappy(body: bytes, limit: int) -> bytes:
    """Undo snappy's block format, refusing (413) a body that says it expands past `limit`.

    The block format starts with the uncompressed length, so a snappy bomb is refused before a
    byte of it is expanded."""
    try:
        size = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as exc:
        raise PayloadError(400, f"snappy body cannot be decompressed: {exc}") from None
    if size > limit:
        raise PayloadError(413, f"body exceeds {limit} bytes after decompression ({size})")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise PayloadError(400, f"snappy body cannot be decompressed: {exc}") from None


def parse_labels(text: str) -> dict[str, str]:
    """A Prometheus label set, `{job="orders", service_name="orders"}`, into a dict.

    Raises ValueError naming the problem."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f'labels {text[:40]!r} are not in {{name="value", ...}} form')
    labels: dict[str, str] = {}
    i, end = 1, len(text) - 1
    while True:
        while i < end and text[i] in " ,":
            i += 1
        if i >= end:
            return labels
        eq = text.find("=", i)
        if eq < 0 or eq + 1 >= end or text[eq + 1] != '"':
            raise ValueError(f'label at {i}: want name="value"')
        name = text[i:eq].strip()
        if not name.replace("_", "a").isalnum():
            raise ValueError(f"label name {name[:40]!r} is not a Prometheus label name")
        value: list[str] = []
        j = eq + 2
        while j < end and text[j] != '"':
            if text[j] == "\\" and j + 1 < end:
                j += 1
                value.append({"n": "\n", "t": "\t"}.get(text[j], text[j]))
            else:
                value.append(text[j])
            j += 1
        if j >= end:
            raise ValueError(f"label {name!r}: value is not closed")
        labels[name] = "".join(value)
        if len(labels) > MAX_LABELS:
            raise ValueError(f"more than {MAX_LABELS} labels")
        i = j + 1


def _defaults(labels: dict[str, Any]) -> dict[str, Any]:
    defaults = dict(labels)
    for name in SERVICE_LABELS:
        if name in labels and "service" not in defaults:
            defaults["service"] = labels[name]
    return defaults


def _record(index: int, line: str, ts_ns: int, defaults: dict[str, Any]) -> Record:
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return Record(index, error=f"line: not a JSON event ({exc})")
    if not isinstance(fields, dict):
        return Record(index, error=f"line: must be a JSON object, got {type(fields).__name__}")
    merged = {**defaults, **fields}
    if ts_ns and not any(name in fields for name in TIME_NAMES):
        merged["ts"] = ts_ns / 1_000_000_000  # int / int rounds once, float(ns) would not
    return Record(index, merged)


def _from_protobuf(body: bytes) -> list[Record]:
    try:
        request: Any = PushRequest.FromString(body)
    except DecodeError as exc:
        raise PayloadError(400, f"body is not a readable Loki PushRequest: {exc}") from None
    records: list[Record] = []
    for s, stream in enumerate(request.streams):
        try:
            labels = _defaults(parse_labels(stream.labels))
        except ValueError as exc:
            raise PayloadError(400, f"streams[{s}].labels: {exc}") from None
        for entry in stream.entries:
            index = len(records)
            if len(entry.structuredMetadata) > MAX_LABELS:
                raise PayloadError(400, f"entry {index}: more than {MAX_LABELS} metadata labels")
            defaults = {**labels, **{p.name: p.value for p in entry.structuredMetadata}}
            ts_ns = entry.timestamp.seconds * 1_000_000_000 + entry.timestamp.nanos
            records.append(_record(index, entry.line, ts_ns, defaults))
    return records


def _json_entry(index: int, value: object, labels: dict[str, Any], where: str) -> Record:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise PayloadError(400, f'{where}: must be ["<unix ns>", "<line>"(, {{metadata}})]')
    ts, line = value[0], value[1]
    # isdigit() alone is also True for '²', which int() refuses; 20 digits hold any uint64.
    if not (isinstance(ts, str) and ts.isascii() and ts.isdigit() and len(ts) <= 20):
        raise PayloadError(400, f"{where}[0]: the timestamp must be a string of Unix nanoseconds")
    if not isinstance(line, str):
        raise PayloadError(400, f"{where}[1]: the line must be a string")
    defaults = labels
    if len(value) == 3:
        metadata = value[2]
        if not isinstance(metadata, dict) or len(metadata) > MAX_LABELS:
            raise PayloadError(400, f"{where}[2]: structured metadata must be a small object")
        defaults = {**labels, **metadata}
    return _record(index, line, int(ts), defaults)


def _from_json(body: bytes) -> list[Record]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(400, f"body is not a readable Loki push request: {exc}") from None
    streams = request.get("streams") if isinstance(request, dict) else None
    if not isinstance(streams, list):
        raise PayloadError(400, 'body: want {"streams": [{"stream": {...}, "values": [...]}]}')
    records: list[Record] = []
    for s, stream in enumerate(streams):
        where = f"streams[{s}]"
        if not isinstance(stream, dict):
            raise PayloadError(400, f"{where}: must be an object")
        labels = stream.get("stream") or {}
        values = stream.get("values") or []
        if not isinstance(labels, dict) or len(labels) > MAX_LABELS:
            raise PayloadError(400, f"{where}.stream: must be an object of at most {MAX_LABELS}")
        if not all(isinstance(v, str) for v in labels.values()):
            raise PayloadError(400, f"{where}.stream: label values must be strings")
        if not isinstance(values, list):
            raise PayloadError(400, f"{where}.values: must be a list")
        defaults = _defaults(labels)
        for e, value in enumerate(values):
            records.append(_json_entry(len(records), value, defaults, f"{where}.values[{e}]"))
    return records


def is_protobuf(content_type: str | None) -> bool:
    """JSON or protobuf (Loki reads a body without a type as protobuf too); 415 otherwise."""
    kind = media_type(content_type)
    if kind not in (JSON, PROTOBUF, ""):
        raise PayloadError(
            415, f"Content-Type {kind!r} is not supported: send {PROTOBUF} or {JSON}"
        )
    return kind != JSON


def decode_push(body: bytes, content_type: str | None) -> list[Record]:
    """A push request (already un-snappied when protobuf) into one record per log line."""
    return _from_protobuf(body) if is_protobuf(content_type) else _from_json(body)
