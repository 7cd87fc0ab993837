"""Request bodies: size limits, gzip, and splitting NDJSON, arrays and objects into records."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import orjson

NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/json-seq",
    }
)
# Plain JSON (or no type at all): an array, one object, or lines of objects.
JSON_TYPES = frozenset({"application/json", "text/plain", ""}) | NDJSON_TYPES
BOM = b"\xef\xbb\xbf"


class PayloadError(Exception):
    """The body cannot be read at all; `status` is the HTTP answer (400, 413 or 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Record:
    """One record of a batch: the decoded JSON value, or why it could not be decoded."""

    index: int
    value: object = None
    error: str | None = None


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding, never producing more than `limit` bytes (a gzip bomb is a 413)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "x-gzip"):
        raise PayloadError(415, f"Content-Encoding {encoding!r} is not supported: use gzip")
    out = bytearray()
    data = body
    try:
        # Loop over concatenated gzip members, as `cat a.gz b.gz` produces.
        while data:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(data, limit + 1 - len(out))
            out += chunk
            while inflater.unconsumed_tail and len(out) <= limit:
                out += inflater.decompress(inflater.unconsumed_tail, limit + 1 - len(out))
            if len(out) > limit:
                raise PayloadError(413, f"body exceeds {limit} bytes after decompression")
            if not inflater.eof:
                raise PayloadError(400, "gzip body is truncated")
            data = inflater.unused_data.lstrip(b"\x00")
    except zlib.error as exc:
        raise PayloadError(400, f"gzip body cannot be decompressed: {exc}") from None
    return bytes(out)


def split_records(body: bytes, content_type: str | None) -> list[Record]:
    """NDJSON, a JSON array or one JSON object, into records indexed from 0.

    For NDJSON the index is the line number minus one, blank lines included, so a rejected
    index points straight at the line in the shipper's file.
    """
    kind = media_type(content_type)
    if kind not in JSON_TYPES:
        raise PayloadError(
            415, f"Content-Type {kind!r} is not supported: send JSON, NDJSON or msgpack"
        )
    if body.startswith(BOM):
        body = body[len(BOM) :]
    text = body.lstrip(b" \t\r\n")
    if not text:
        return []
    if text[:1] == b"[" and kind not in NDJSON_TYPES:
        try:
            values = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(400, f"body is not a readable JSON array: {exc}") from None
        if not isinstance(values, list):  # pragma: no cover - '[' always decodes to a list
            raise PayloadError(400, "body is not a JSON array")
        return [Record(i, v) for i, v in enumerate(values)]
    lines = body.split(b"\n")
    if len(lines) > 1 and text[:1] == b"{" and kind == "application/json":
        # One pretty-printed object spans lines; NDJSON would see only fragments.
        try:
            return [Record(0, orjson.loads(text))]
        except orjson.JSONDecodeError:
            pass
    records = []
    loads = orjson.loads
    for index, line in enumerate(lines):
        if not line or line.isspace():
            continue
        try:
            records.append(Record(index, loads(line)))  # orjson skips surrounding whitespace
        except orjson.JSONDecodeError as exc:
            records.append(Record(index, error=f"event: not valid JSON ({exc})"))
    return records
