"""Fluent Bit's msgpack: the `http` output's `format msgpack` body into records.

With `format msgpack` Fluent Bit posts its chunk as it holds it (`Content-Type:
application/msgpack`): a stream of events, each `[[timestamp, metadata], record]` (Fluent Bit
2.1 and later) or `[timestamp, record]` (earlier, and the Forward protocol). The timestamp is the
EventTime extension (type 0: big-endian uint32 seconds, uint32 nanoseconds), an integer or a
float. Group markers, whose EventTime seconds are 0xFFFFFFFF (start) and 0xFFFFFFFE (end), are
not events and are skipped. The record's own time field wins; Fluent Bit's timestamp is the
event time of a record without one, as its JSON formats add it under `date`.
"""

from __future__ import annotations

import struct

import msgpack

from collector.event import ALIASES
from collector.payload import PayloadError, Record

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack"})
TIME_NAMES = ALIASES["ts"]
EVENT_TIME = 0  # Fluent Bit's msgpack extension type for a timestamp
GROUP_MARKERS = (0xFFFFFFFF, 0xFFFFFFFE)
# Per msgpack container: an event is a 2-array of a 2-array and two maps; no service logs a
# thousand fields, and a hostile length header must not make the decoder allocate for it.
MAX_CONTAINER = 1000
_EVENT_TIME = struct.Struct(">II")


class _EventTime:
    """A decoded EventTime: seconds and nanoseconds."""

    __slots__ = ("nanos", "seconds")

    def __init__(self, seconds: int, nanos: int) -> None:
        self.seconds = seconds
        self.nanos = nanos


def _ext(code: int, data: bytes) -> object:
    if code == EVENT_TIME and len(data) == _EVENT_TIME.size:
        return _EventTime(*_EVENT_TIME.unpack(data))
    return msgpack.ExtType(code, data)


def _seconds(value: object) -> float | None:
    """The event's time in epoch seconds; None for a group marker. Raises ValueError."""
    if isinstance(value, _EventTime):
        if value.seconds in GROUP_MARKERS:
            return None
        return value.seconds + value.nanos / 1e9
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"timestamp must be an EventTime, integer or float, got {value!r:.40}")
    return float(value)


def _record(index: int, event: object) -> Record | None:
    if not (isinstance(event, list | tuple) and len(event) == 2):
        return Record(index, error="event: must be [[timestamp, metadata], record]")
    header, body = event
    if isinstance(header, list | tuple):
        if len(header) != 2 or not isinstance(header[1], dict):
            return Record(index, error="event: header must be [timestamp, metadata]")
        header = header[0]
    try:
        seconds = _seconds(header)
    except ValueError as exc:
        return Record(index, error=f"event: {exc}")
    if seconds is None:
        return None
    if not isinstance(body, dict):
        return Record(index, error=f"event: record must be a map, got {type(body).__name__}")
    if any(isinstance(value, _EventTime) for value in body.values()):
        # A record's own time may be an EventTime too: epoch seconds, as parse_event reads.
        body = {
            key: value.seconds + value.nanos / 1e9 if isinstance(value, _EventTime) else value
            for key, value in body.items()
        }
    if not any(name in body for name in TIME_NAMES):
        body = {**body, "ts": seconds}
    return Record(index, body)


def split_msgpack(body: bytes) -> list[Record]:
    """A stream of Fluent Bit events into records indexed in order (group markers skipped).

    Raises PayloadError (400) for a stream that cannot be read to its end."""
    unpacker = msgpack.Unpacker(
        ext_hook=_ext,
        raw=False,
        max_buffer_size=max(len(body), 1),
        max_array_len=MAX_CONTAINER,
        max_map_len=MAX_CONTAINER,
        max_ext_len=64,
    )
    unpacker.feed(body)
    records: list[Record] = []
    events = 0
    complete = 0  # where the last whole event ended
    try:
        for event in unpacker:
            complete = unpacker.tell()
            found = _record(events, event)
            events += 1
            if found is not None:
                records.append(found)
    except (ValueError, msgpack.UnpackException, UnicodeDecodeError, TypeError) as exc:
        # ValueError covers the limits above, a map key that is not a string, a nesting too deep;
        # OutOfData a stream cut short.
        raise PayloadError(
            400, f"msgpack body is unreadable after {events} events: {type(exc).__name__}: {exc}"
        ) from None
    if complete != len(body):
        # The streaming unpacker waits for the rest of a cut-short event instead of failing.
        raise PayloadError(400, f"msgpack body is truncated after {events} events")
    return records
