"""OTLP/HTTP logs: an ExportLogsServiceRequest (protobuf or JSON) into records, and its replies.

Each log record becomes one record for `parse_event`, built from (later wins) the resource's
attributes, the scope's attributes, the body (a kvlist, or a string holding a JSON object) and
the record's attributes, so the OpenTelemetry semantic-convention names (`service.name`,
`http.response.status_code`, `http.request.header.if-match`, ...) reach the alias table
unchanged. When none of them carries a time, `timeUnixNano` is the event time, else
`observedTimeUnixNano` (the receive time when both are 0).

The JSON encoding follows OTLP's JSON mapping: lowerCamelCase keys (the proto names are accepted
too), 64-bit integers as strings or numbers, unknown fields ignored. A body whose envelope is
wrong (`resourceLogs` not a list, truncated protobuf, too many attributes, too deep a value) is
a 400 naming the place; a record that is readable but not an event is rejected alone, in
`partial_success`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from collector.event import ALIASES
from collector.payload import PayloadError, Record, media_type

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Far more than any instrumented service sets (semantic conventions name a few dozen), few
# enough that a hostile record cannot make the collector build a huge dict.
MAX_ATTRIBUTES = 1000
MAX_DEPTH = 16  # arrays and kvlists nested inside one attribute value
MAX_ERRORS_IN_MESSAGE = 5
TIME_NAMES = ALIASES["ts"]
HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
# google.rpc.Code values for the Status body of an error reply.
STATUS_CODES = {400: 3, 401: 16, 404: 5, 413: 8, 415: 3, 429: 8, 503: 14}
MAX_INT_DIGITS = 19  # int64
MAX_UINT64 = 2**64 - 1

Attributes = dict[str, object]


# -- protobuf -----------------------------------------------------------------------------------


def _pb_value(value: common_pb2.AnyValue, depth: int, where: str) -> object:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        if depth >= MAX_DEPTH:
            raise PayloadError(400, f"{where}: values nested deeper than {MAX_DEPTH}")
        if kind == "array_value":
            return [_pb_value(v, depth + 1, where) for v in value.array_value.values]
        return _pb_attributes(value.kvlist_value.values, where, depth + 1)
    if kind == "bytes_value":
        return None  # no event field is binary
    return getattr(value, kind)


def _pb_attributes(pairs: Sequence[common_pb2.KeyValue], where: str, depth: int = 0) -> Attributes:
    if len(pairs) > MAX_ATTRIBUTES:
        raise PayloadError(400, f"{where}: {len(pairs)} attributes, more than {MAX_ATTRIBUTES}")
    return {pair.key: _pb_value(pair.value, depth, f"{where}.{pair.key}") for pair in pairs}


# (resource and scope attributes, record attributes, body, timeUnixNano, observedTimeUnixNano)
Decoded = tuple[Attributes, Attributes, object, int, int]


def _from_protobuf(body: bytes) -> Iterator[Decoded]:
    try:
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
    except DecodeError as exc:
        raise PayloadError(400, f"body is not a readable OTLP protobuf request: {exc}") from None
    for r, resource_logs in enumerate(request.resource_logs):
        where = f"resourceLogs[{r}]"
        resource = _pb_attributes(resource_logs.resource.attributes, f"{where}.resource.attributes")
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            at = f"{where}.scopeLogs[{s}]"
            scope = _pb_attributes(scope_logs.scope.attributes, f"{at}.scope.attributes")
            base = {**resource, **scope}
            for n, log in enumerate(scope_logs.log_records):
                here = f"{at}.logRecords[{n}]"
                yield (
                    base,
                    _pb_attributes(log.attributes, f"{here}.attributes"),
                    _pb_value(log.body, 0, f"{here}.body"),
                    log.time_unix_nano,
                    log.observed_time_unix_nano,
                )


# -- JSON ---------------------------------------------------------------------------------------


def _get(obj: Mapping[str, Any], camel: str, snake: str | None = None) -> Any:
    value = obj.get(camel)
    if value is None and snake is not None:
        value = obj.get(snake)
    return value


def _list(obj: Mapping[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = _get(obj, camel, snake)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(400, f"{where}.{camel}: must be a list, got {type(value).__name__}")
    return value


def _object(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(400, f"{where}: must be an object, got {type(value).__name__}")
    return value


def _json_value(value: object, depth: int, where: str) -> object:
    """An AnyValue in the JSON mapping: `{"stringValue": ...}`, `{"intValue": "412"}`, ..."""
    if value is None:
        return None
    obj = _object(value, where)
    if "stringValue" in obj or "string_value" in obj:
        text = _get(obj, "stringValue", "string_value")
        if not isinstance(text, str):
            raise PayloadError(400, f"{where}.stringValue: must be a string")
        return text
    for camel, snake in (("boolValue", "bool_value"), ("doubleValue", "double_value")):
        if camel in obj or snake in obj:
            return _get(obj, camel, snake)
    if "intValue" in obj or "int_value" in obj:
        number = _get(obj, "intValue", "int_value")
        # int64 travels as a string in the JSON mapping. Anything else that claims to be one
        # stays a string, and the event's field names it (isdigit() is also True for '²').
        digits = number.removeprefix("-") if isinstance(number, str) else ""
        if digits.isascii() and digits.isdigit() and len(digits) <= MAX_INT_DIGITS:
            return int(number)
        return number
    nested = [(c, s) for c, s in (("arrayValue", "array_value"), ("kvlistValue", "kvlist_value"))]
    for camel, snake in nested:
        if camel in obj or snake in obj:
            if depth >= MAX_DEPTH:
                raise PayloadError(400, f"{where}: values nested deeper than {MAX_DEPTH}")
            inner = _object(_get(obj, camel, snake), f"{where}.{camel}")
            values = _list(inner, "values", "values", f"{where}.{camel}")
            if camel == "arrayValue":
                return [_json_value(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(values)]
            return _json_attributes(values, f"{where}.{camel}.values", depth + 1)
    return None  # bytesValue, or an empty AnyValue


def _json_attributes(pairs: list[Any], where: str, depth: int = 0) -> Attributes:
    if len(pairs) > MAX_ATTRIBUTES:
        raise PayloadError(400, f"{where}: {len(pairs)} attributes, more than {MAX_ATTRIBUTES}")
    found: Attributes = {}
    for i, pair in enumerate(pairs):
        item = _object(pair, f"{where}[{i}]")
        key = item.get("key")
        if not isinstance(key, str):
            raise PayloadError(400, f"{where}[{i}].key: must be a string")
        found[key] = _json_value(item.get("value"), depth, f"{where}[{i}].value")
    return found


def _nanos(value: object, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        value = int(value)
    if type(value) is int and 0 <= value <= MAX_UINT64:
        return value
    raise PayloadError(400, f"{where}: must be unsigned nanoseconds (64 bits), got {value!r:.40}")


def _from_json(body: bytes) -> Iterator[Decoded]:
    try:
        request = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise PayloadError(400, f"body is not a readable OTLP JSON request: {exc}") from None
    request = _object(request, "body")
    for r, resource_logs in enumerate(_list(request, "resourceLogs", "resource_logs", "body")):
        where = f"resourceLogs[{r}]"
        item = _object(resource_logs, where)
        resource_obj = _object(item.get("resource"), f"{where}.resource")
        resource = _json_attributes(
            _list(resource_obj, "attributes", "attributes", f"{where}.resource"),
            f"{where}.resource.attributes",
        )
        for s, scope_logs in enumerate(_list(item, "scopeLogs", "scope_logs", where)):
            at = f"{where}.scopeLogs[{s}]"
            scope_item = _object(scope_logs, at)
            scope_obj = _object(scope_item.get("scope"), f"{at}.scope")
            scope = _json_attributes(
                _list(scope_obj, "attributes", "attributes", f"{at}.scope"),
                f"{at}.scope.attributes",
            )
            base = {**resource, **scope}
            for n, log in enumerate(_list(scope_item, "logRecords", "log_records", at)):
                here = f"{at}.logRecords[{n}]"
                record = _object(log, here)
                attributes = _json_attributes(
                    _list(record, "attributes", "attributes", here), f"{here}.attributes"
                )
                yield (
                    base,
                    attributes,
                    _json_value(record.get("body"), 0, f"{here}.body"),
                    _nanos(_get(record, "timeUnixNano", "time_unix_nano"), f"{here}.timeUnixNano"),
                    _nanos(
                        _get(record, "observedTimeUnixNano", "observed_time_unix_nano"),
                        f"{here}.observedTimeUnixNano",
                    ),
                )


# -- records ------------------------------------------------------------------------------------


def _event_fields(
    base: Attributes, attributes: Attributes, body: object, time_ns: int, observed_ns: int
) -> Attributes:
    if isinstance(body, str) and body.lstrip()[:1] == "{":
        # A service that logs JSON lines, shipped as they are (the filelog receiver's default).
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = None
    fields = {**base, **body, **attributes} if isinstance(body, dict) else {**base, **attributes}
    for name, value in fields.items():
        # Semantic conventions carry headers as string arrays; repeated headers join with ", ".
        if (
            name.startswith(HEADER_PREFIXES)
            and isinstance(value, list)
            and all(isinstance(v, str) for v in value)
        ):
            fields[name] = ", ".join(value)
    if (time_ns or observed_ns) and not any(name in fields for name in TIME_NAMES):
        # int / int rounds once; float(ns) / 1e9 would be 200 ns off.
        fields["ts"] = (time_ns or observed_ns) / 1_000_000_000
    return fields


def decode_logs(body: bytes, content_type: str | None) -> list[Record]:
    """An ExportLogsServiceRequest into one record per log record, indexed in request order.

    Raises PayloadError (400, 415) for a body that cannot be read at all."""
    kind = media_type(content_type)
    if kind == PROTOBUF:
        decoded = _from_protobuf(body)
    elif kind == JSON:
        decoded = _from_json(body)
    else:
        raise PayloadError(
            415, f"Content-Type {kind!r} is not supported: send {PROTOBUF} or {JSON}"
        )
    return [Record(index, _event_fields(*item)) for index, item in enumerate(decoded)]


def is_protobuf(content_type: str | None) -> bool:
    """Whether the reply should be protobuf: OTLP answers in the request's encoding."""
    return media_type(content_type) == PROTOBUF


def encode_reply(rejected: list[dict[str, object]], *, protobuf: bool) -> bytes:
    """ExportLogsServiceResponse: `partial_success` counts and names the rejected records."""
    message = "; ".join(
        f"log record {item['index']}: {item['error']}" for item in rejected[:MAX_ERRORS_IN_MESSAGE]
    )
    if len(rejected) > MAX_ERRORS_IN_MESSAGE:
        message += f"; and {len(rejected) - MAX_ERRORS_IN_MESSAGE} more"
    if protobuf:
        reply = logs_service_pb2.ExportLogsServiceResponse()
        if rejected:
            reply.partial_success.rejected_log_records = len(rejected)
            reply.partial_success.error_message = message
        return reply.SerializeToString()
    if not rejected:
        return b"{}"
    # int64 is a string in OTLP's JSON mapping.
    partial = {"rejectedLogRecords": str(len(rejected)), "errorMessage": message}
    return orjson.dumps({"partialSuccess": partial})


def encode_status(status: int, message: str, *, protobuf: bool) -> bytes:
    """The google.rpc.Status body OTLP/HTTP sends with every 4xx and 5xx."""
    code = STATUS_CODES.get(status, 2)  # 2: UNKNOWN
    if protobuf:
        encoded: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
        return encoded
    return orjson.dumps({"code": code, "message": message})
