"""Wire formats: which decoder turns the body an ingest endpoint received into records.

Every endpoint's body is decoded where `/v1/events` bodies are split (an ingest process, or the
serving process without one), and its records take the same path from there: parse, store,
count. The serving process only reads the body and undoes its compression (gzip, or the snappy
of Loki's protobuf), so the body limit is enforced in one place.
"""

from __future__ import annotations

from collections.abc import Callable

from collector import fluentbit, loki, otlp
from collector.payload import Record, media_type, split_records

EVENTS = "events"  # POST /v1/events: NDJSON, JSON, Fluent Bit's msgpack
OTLP = "otlp"  # POST /v1/logs
LOKI = "loki"  # POST /loki/api/v1/push


def _events(body: bytes, content_type: str | None) -> list[Record]:
    if media_type(content_type) in fluentbit.MSGPACK_TYPES:
        return fluentbit.split_msgpack(body)
    return split_records(body, content_type)


DECODERS: dict[str, Callable[[bytes, str | None], list[Record]]] = {
    EVENTS: _events,
    OTLP: otlp.decode_logs,
    LOKI: loki.decode_push,
}


def decode_body(wire: str, body: bytes, content_type: str | None) -> list[Record]:
    """The records of a decompressed body in the format of the endpoint that received it."""
    return DECODERS[wire](body, content_type)
