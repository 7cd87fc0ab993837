"""The ingest endpoints' request bodies and headers, described for the OpenAPI document.

The ingest endpoints read their bodies raw (to bound them, undo gzip and split lines without
building a model per event), so FastAPI cannot see what they take: these descriptions are
passed to the routes as `openapi_extra`. The event's schema is built from the field table in
`collector.event`, so the document cannot drift from what the parser reads.
"""

from __future__ import annotations

from typing import Any

from collector.event import MAX_LENGTH

_TEXT_FIELDS = {
    "service": "the service that answered; default: ?service= or X-Service-Name",
    "route": "the route template, e.g. /api/orders/{id}",
    "method": "HTTP method",
    "request_id": "unique per request within a service",
    "resource_id": "the resource written",
    "current_etag": "for a failure the current ETag, for a 2xx write the new one",
    "client_id": "who sent it",
    "deploy_version": "version of the service that answered",
    "reason": "free text for a 409",
}
_HEADER_FIELDS = {
    "if_match": "If-Match as the server received it",
    "if_none_match": "If-None-Match as the server received it",
}


def _text(field: str, description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": MAX_LENGTH[field], "description": description}


def event_schema() -> dict[str, Any]:
    """One event in canonical field names (aliases are accepted too; see the README)."""
    properties: dict[str, Any] = {
        "ts": {
            "description": "when the service answered: RFC 3339, or epoch s/ms/ns",
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
        },
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
    }
    properties.update({name: _text(name, text) for name, text in _TEXT_FIELDS.items()})
    for name, text in _HEADER_FIELDS.items():
        one = _text(name, text)
        properties[name] = {
            "description": f"{text} (a list: repeated header lines)",
            "oneOf": [one, {"type": "array", "items": one, "maxItems": 16}],
        }
    return {"type": "object", "properties": properties, "required": ["status", "request_id"]}


_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _gzip_header() -> dict[str, Any]:
    return {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "description": "gzip, or none; the body limit holds after decompression too",
        "schema": {"type": "string", "enum": ["gzip", "identity"]},
    }


def _service_header() -> dict[str, Any]:
    return {
        "name": "X-Service-Name",
        "in": "header",
        "required": False,
        "description": "the service of events that name none (as ?service= does)",
        "schema": {"type": "string", "maxLength": MAX_LENGTH["service"]},
    }


def events_body() -> dict[str, Any]:
    """`POST /v1/events`: NDJSON, a JSON array or one object, or Fluent Bit's msgpack."""
    event = event_schema()
    batch = {"type": "array", "items": event, "maxItems": 50}
    return {
        "parameters": [_gzip_header(), _service_header()],
        "requestBody": {
            "required": True,
            "description": "one bad line never rejects the batch: it is listed in `rejected`",
            "content": {
                "application/x-ndjson": {"schema": batch},
                "application/json": {"schema": {"oneOf": [event, batch]}},
                # A stream of [[timestamp, metadata], record], as Fluent Bit's http output sends.
                "application/msgpack": {"schema": batch},
            },
        },
    }


def _any_value(depth: int = 2) -> dict[str, Any]:
    """OTLP's AnyValue in the JSON mapping, nested `depth` deep."""
    scalars: list[dict[str, Any]] = [
        {"type": "object", "properties": {"stringValue": {"type": "string"}}},
        {"type": "object", "properties": {"intValue": {"type": ["string", "integer"]}}},
        {"type": "object", "properties": {"doubleValue": {"type": "number"}}},
        {"type": "object", "properties": {"boolValue": {"type": "boolean"}}},
    ]
    if depth > 0:
        inner = _any_value(depth - 1)
        values = {"type": "array", "items": inner, "maxItems": 4}
        scalars.append(
            {
                "type": "object",
                "properties": {"arrayValue": {"type": "object", "properties": {"values": values}}},
            }
        )
    return {"oneOf": scalars}


def _attributes() -> dict[str, Any]:
    pair = {
        "type": "object",
        "properties": {"key": {"type": "string"}, "value": _any_value()},
        "required": ["key", "value"],
    }
    return {"type": "array", "items": pair, "maxItems": 12}


def otlp_body() -> dict[str, Any]:
    """`POST /v1/logs`: an ExportLogsServiceRequest, JSON or protobuf."""
    record = {
        "type": "object",
        "properties": {
            "timeUnixNano": {"type": "string", "pattern": "^[0-9]{1,20}$"},
            "observedTimeUnixNano": {"type": "string", "pattern": "^[0-9]{1,20}$"},
            "body": _any_value(),
            "attributes": _attributes(),
        },
    }
    scope = {
        "type": "object",
        "properties": {
            "scope": {"type": "object", "properties": {"attributes": _attributes()}},
            "logRecords": {"type": "array", "items": record, "maxItems": 8},
        },
    }
    resource = {
        "type": "object",
        "properties": {
            "resource": {"type": "object", "properties": {"attributes": _attributes()}},
            "scopeLogs": {"type": "array", "items": scope, "maxItems": 3},
        },
    }
    request = {
        "type": "object",
        "properties": {"resourceLogs": {"type": "array", "items": resource, "maxItems": 3}},
    }
    return {
        "parameters": [_gzip_header(), _service_header()],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request}, "application/x-protobuf": _BINARY},
        },
    }


def loki_body() -> dict[str, Any]:
    """`POST /loki/api/v1/push`: JSON, or snappy-compressed protobuf."""
    entry = {
        "type": "array",
        "minItems": 2,
        "maxItems": 2,
        "prefixItems": [
            {"type": "string", "pattern": "^[0-9]{1,20}$", "description": "Unix nanoseconds"},
            {"type": "string", "description": "the line: one JSON event"},
        ],
    }
    stream = {
        "type": "object",
        "properties": {
            "stream": {"type": "object", "additionalProperties": {"type": "string"}},
            "values": {"type": "array", "items": entry, "maxItems": 8},
        },
    }
    request = {
        "type": "object",
        "properties": {"streams": {"type": "array", "items": stream, "maxItems": 4}},
        "required": ["streams"],
    }
    return {
        "parameters": [_gzip_header(), _service_header()],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request}, "application/x-protobuf": _BINARY},
        },
    }
