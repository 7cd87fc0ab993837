"""Reading events: every alias, timestamps, defaults and per-field errors."""

from __future__ import annotations

import pytest

from collector.event import ALIASES, MAX_LENGTH, Defaults, EventError, parse_event

NOW = 1_790_000_000.0
DEFAULTS = Defaults(service="shop", received_at=NOW, max_clock_skew=300)
MINIMAL = {
    "requestId": "r-1",
    "resourceId": "o-9",
    "ifMatch": '"abc"',
    "currentEtag": '"def"',
    "status": 412,
}


def test_minimal_line_is_accepted_as_it_is() -> None:
    """The troubleshooting guides' line needs nothing else: service and time come from defaults."""
    event = parse_event(MINIMAL, DEFAULTS)
    assert (event.request_id, event.resource_id, event.status) == ("r-1", "o-9", 412)
    assert (event.if_match, event.current_etag) == ('"abc"', '"def"')
    assert event.service == "shop"
    assert event.ts == NOW
    assert event.is_failure and not event.is_write


SAMPLE = {
    "ts": "2026-09-21T10:00:00Z",
    "service": "orders",
    "route": "/api/orders/{id}",
    "method": "put",
    "status": 412,
    "request_id": "req-1",
    "resource_id": "ord-1",
    "if_match": '"a"',
    "if_none_match": "*",
    "current_etag": '"b"',
    "client_id": "web",
    "deploy_version": "v7",
    "reason": "why",
}


@pytest.mark.parametrize(
    ("field", "alias"),
    [(field, alias) for field, names in ALIASES.items() for alias in names[1:]],
)
def test_every_alias_reads_its_field(field: str, alias: str) -> None:
    """Each accepted alias lands in its canonical field."""
    raw = {k: v for k, v in SAMPLE.items() if k != field}
    raw[alias] = SAMPLE[field]
    event = parse_event(raw, DEFAULTS)
    expected = SAMPLE[field]
    got = getattr(event, field)
    if field == "ts":
        assert got == 1_790_000_000.0 - 1_790_000_000.0 + event.ts  # parsed, checked below
        assert event.ts == parse_event(SAMPLE, DEFAULTS).ts
    elif field == "method":
        assert got == "PUT"
    else:
        assert got == expected


def test_nested_objects_are_read_like_dotted_names() -> None:
    """OpenTelemetry-shaped nesting works: {"http": {"route": ...}}, {"service": {"name": ...}}."""
    raw = {
        "service": {"name": "cart", "version": "2.1"},
        "http": {
            "route": "/c/{id}",
            "request": {"method": "PATCH", "id": "q1"},
            "response": {"status_code": 409},
        },
        "resourceId": "c1",
    }
    event = parse_event(raw, DEFAULTS)
    assert (event.service, event.deploy_version, event.route) == ("cart", "2.1", "/c/{id}")
    assert (event.method, event.request_id, event.status) == ("PATCH", "q1", 409)


def test_if_match_list_is_joined() -> None:
    """A list of If-Match header values (repeated header lines) becomes one list value."""
    event = parse_event({**MINIMAL, "ifMatch": ['"a"', '"b"']}, DEFAULTS)
    assert event.if_match == '"a", "b"'


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-09-21T10:00:00Z", 1_789_984_800.0),
        ("2026-09-21T12:00:00+02:00", 1_789_984_800.0),
        ("2026-09-21T10:00:00.250Z", 1_789_984_800.25),
        (1_789_984_800, 1_789_984_800.0),
        (1_789_984_800.5, 1_789_984_800.5),
        ("1789984800", 1_789_984_800.0),
        (1_789_984_800_123, 1_789_984_800.123),
        (1_789_984_800_000_000_000, 1_789_984_800.0),
        ("1789984800000", 1_789_984_800.0),
    ],
)
def test_timestamps_in_every_accepted_form(value: object, expected: float) -> None:
    """RFC 3339 strings and epoch seconds, milliseconds or nanoseconds all read as seconds."""
    event = parse_event({**MINIMAL, "ts": value}, DEFAULTS)
    assert event.ts == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        ({"status": None}, "status", "missing"),
        ({"status": "abc"}, "status", "3-digit"),
        ({"status": 4120}, "status", "3-digit"),
        ({"status": True}, "status", "3-digit"),
        ({"status": 41.2}, "status", "3-digit"),
        ({"requestId": None}, "request_id", "missing"),
        ({"requestId": ""}, "request_id", "missing"),
        ({"requestId": {"x": 1}}, "requestId", "must be a string"),
        ({"requestId": ["a"]}, "requestId", "must be a string"),
        ({"ts": "yesterday"}, "ts", "unreadable time"),
        ({"ts": "2026-09-21T10:00:00"}, "ts", "no UTC offset"),
        ({"ts": NOW + 301}, "ts", "in the future"),
        ({"ts": -5}, "ts", "unreadable"),
        ({"resourceId": "x" * 513}, "resourceId", "longer than 512"),
        ({"ifMatch": '"a\x00b"'}, "ifMatch", "NUL"),
        ({"ifMatch": [1, 2]}, "ifMatch", "list of strings"),
    ],
)
def test_bad_fields_name_the_field_and_the_problem(
    change: dict[str, object], field: str, problem: str
) -> None:
    """Every per-line error says which field and what is wrong with it."""
    raw = {**MINIMAL, "ts": NOW, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(EventError) as info:
        parse_event(raw, DEFAULTS)
    assert info.value.field.lower().replace("_", "") == field.lower().replace("_", "")
    assert problem in str(info.value)


def test_not_an_object_is_an_error() -> None:
    """An array or a number on a line is not an event."""
    with pytest.raises(EventError, match="must be a JSON object"):
        parse_event([1, 2], DEFAULTS)


def test_service_is_required_somewhere() -> None:
    """Without a service in the event or the request, the line is rejected, naming `service`."""
    with pytest.raises(EventError, match="service: missing"):
        parse_event(MINIMAL, Defaults(None, NOW))


def test_limits_cover_every_text_field() -> None:
    """Every text field has a length limit."""
    assert set(MAX_LENGTH) == set(ALIASES) - {"ts", "status"}


def test_numeric_ids_become_text() -> None:
    """Numeric request and resource ids are kept as their decimal text."""
    event = parse_event({**MINIMAL, "requestId": 42, "resourceId": 7}, DEFAULTS)
    assert (event.request_id, event.resource_id) == ("42", "7")


def test_unknown_fields_are_ignored() -> None:
    """Fields the contract does not name are dropped."""
    event = parse_event({**MINIMAL, "password": "hunter2", "body": "x" * 10_000}, DEFAULTS)
    assert "hunter2" not in repr(event)


def test_canonical_fast_path_matches_alias_path() -> None:
    """Canonical names take a shortcut; the same event under aliases parses to the same Event."""
    canonical = {
        "ts": NOW - 1.5,
        "service": "orders",
        "route": "/o/{id}",
        "method": "put",
        "status": 412,
        "request_id": "r1",
        "resource_id": "o1",
        "if_match": ['"a"', '"b"'],
        "current_etag": '"c"',
        "client_id": 7,
        "deploy_version": "v1",
    }
    aliased = {
        "timestamp": NOW - 1.5,
        "service": {"name": "orders", "version": "v1"},
        "http.route": "/o/{id}",
        "http": {"request": {"method": "put"}},
        "statusCode": "412",
        "requestId": "r1",
        "resourceId": "o1",
        "ifMatch": ['"a"', '"b"'],
        "etag": '"c"',
        "clientId": 7,
    }
    defaults = Defaults(None, NOW)
    assert parse_event(canonical, defaults) == parse_event(aliased, defaults)
    with pytest.raises(EventError, match="route: contains a control character"):
        parse_event({**canonical, "route": "/o/\x01"}, defaults)
    with pytest.raises(EventError, match=r"ts: .* in the future"):
        parse_event({**canonical, "ts": NOW + 3600.5}, defaults)
