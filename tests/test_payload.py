"""Reading bodies: content types, gzip limits, NDJSON, arrays and single objects."""

from __future__ import annotations

import gzip

import pytest

from collector.payload import PayloadError, decompress, split_records


def test_ndjson_indexes_follow_lines() -> None:
    """Record indexes are line numbers minus one, blank lines included."""
    records = split_records(b'{"a":1}\n\n{"b":2}\nnope\n', "application/x-ndjson")
    assert [(r.index, r.value) for r in records[:2]] == [(0, {"a": 1}), (2, {"b": 2})]
    assert records[2].index == 3 and records[2].error is not None
    assert records[2].error.startswith("event: not valid JSON")


def test_array_and_single_object() -> None:
    """A JSON array gives one record per element; one object (even pretty-printed) one record."""
    assert [r.value for r in split_records(b'[{"a":1}, 2]', "application/json")] == [{"a": 1}, 2]
    pretty = b'{\n  "a": 1,\n  "b": 2\n}\n'
    assert [r.value for r in split_records(pretty, "application/json")] == [{"a": 1, "b": 2}]


def test_broken_array_is_a_400() -> None:
    """An array that does not parse cannot be split into lines: the whole body is unreadable."""
    with pytest.raises(PayloadError) as info:
        split_records(b'[{"a":1}, {"b"', "application/json")
    assert info.value.status == 400


def test_unknown_content_type_is_a_415() -> None:
    """Only JSON-ish content types are read."""
    with pytest.raises(PayloadError) as info:
        split_records(b"a=b", "application/x-www-form-urlencoded")
    assert info.value.status == 415


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b'{"a": "\xff\xfe"}', "UTF-8"),
        (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
        (b'{"ts": 1e999}', "infinity"),
        (b"\x00\x00", "not valid JSON"),
    ],
)
def test_hostile_lines_are_per_line_errors(line: bytes, problem: str) -> None:
    """Invalid UTF-8, NUL bytes, deep nesting and huge numbers fail only their own line."""
    records = split_records(line + b'\n{"ok": 1}', "application/x-ndjson")
    assert records[0].error is not None and problem in records[0].error
    assert records[1].value == {"ok": 1}


def test_gzip_round_trip_and_concatenated_members() -> None:
    """gzip bodies, also several members back to back, decompress to the original."""
    body = gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"b":2}\n')
    assert decompress(body, "gzip", 1000) == b'{"a":1}\n{"b":2}\n'


def test_gzip_bomb_stops_at_the_limit() -> None:
    """A small body that inflates past the limit is a 413 without inflating it all."""
    bomb = gzip.compress(b"0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(PayloadError) as info:
        decompress(bomb, "gzip", 1_000_000)
    assert info.value.status == 413


@pytest.mark.parametrize("body", [b"not gzip at all", gzip.compress(b"x" * 1000)[:-10]])
def test_broken_gzip_is_a_400(body: bytes) -> None:
    """Garbage or a truncated stream under Content-Encoding: gzip is unreadable."""
    with pytest.raises(PayloadError) as info:
        decompress(body, "gzip", 100_000)
    assert info.value.status == 400


def test_unknown_encoding_is_a_415() -> None:
    """Encodings other than gzip are refused by name."""
    with pytest.raises(PayloadError, match="br") as info:
        decompress(b"x", "br", 100)
    assert info.value.status == 415


def test_byte_order_mark_is_ignored() -> None:
    """A UTF-8 BOM at the start of a body does not cost the first line."""
    records = split_records(b'\xef\xbb\xbf{"a":1}\n{"b":2}', "application/x-ndjson")
    assert [r.value for r in records] == [{"a": 1}, {"b": 2}]
