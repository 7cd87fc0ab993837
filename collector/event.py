"""The event: one conditional request a service answered, read from any shipper's field names."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Canonical field -> accepted names, canonical first. Dotted names are also looked up as nested
# objects, so `{"http": {"route": ...}}` works like `{"http.route": ...}`.
ALIASES: dict[str, tuple[str, ...]] = {
    "ts": ("ts", "timestamp", "time", "@timestamp", "date"),
    "service": ("service", "service.name", "serviceName"),
    "route": ("route", "http.route"),
    "method": ("method", "http.request.method"),
    "status": ("status", "http.response.status_code", "statusCode"),
    "request_id": ("request_id", "requestId", "http.request.id", "req_id"),
    "resource_id": ("resource_id", "resourceId"),
    "if_match": ("if_match", "ifMatch", "http.request.header.if-match"),
    "if_none_match": ("if_none_match", "ifNoneMatch", "http.request.header.if-none-match"),
    "current_etag": ("current_etag", "currentEtag", "etag", "http.response.header.etag"),
    "client_id": ("client_id", "clientId", "client", "user_agent.original"),
    "deploy_version": ("deploy_version", "deployVersion", "service.version", "version"),
    "reason": ("reason",),
}

# Longest accepted value per text field, in characters.
MAX_LENGTH: dict[str, int] = {
    "service": 128,
    "route": 256,
    "method": 16,
    "request_id": 256,
    "resource_id": 512,
    "if_match": 2048,
    "if_none_match": 2048,
    "current_etag": 512,
    "client_id": 256,
    "deploy_version": 128,
    "reason": 1024,
}

FAILURE_STATUSES = frozenset({409, 412, 428})


class EventError(ValueError):
    """A line that cannot be an event; `field` names the culprit."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(slots=True)
class Event:
    """One conditional request, in canonical fields. `ts` is epoch seconds of event time.

    Treated as immutable; not frozen because a frozen __init__ costs 1.6 us more per event.
    """

    ts: float
    service: str
    status: int
    request_id: str
    resource_id: str = ""
    route: str | None = None
    method: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    current_etag: str | None = None
    client_id: str | None = None
    deploy_version: str | None = None
    reason: str | None = None

    @property
    def is_failure(self) -> bool:
        """412, 428 and 409 are the failures the collector explains."""
        return self.status in FAILURE_STATUSES

    @property
    def is_write(self) -> bool:
        """A 2xx that returned an ETag moves the resource's lineage."""
        return 200 <= self.status < 300 and bool(self.current_etag)


@dataclass(frozen=True, slots=True)
class Defaults:
    """What the request supplies when a line does not: service name and receive time."""

    service: str | None
    received_at: float
    max_clock_skew: float = 300.0


_MISSING = object()
# Integers wider than this are no field's value; Python will not even print them past 4,300
# digits. 64 bits would do, but OTLP's unsigned nanoseconds need one more.
_MAX_INT_BITS = 128
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _lookup(obj: dict[str, Any], name: str) -> Any:
    value = obj.get(name, _MISSING)
    if value is not _MISSING or "." not in name:
        return value
    node: Any = obj
    for part in name.split("."):
        if not isinstance(node, dict):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _first(obj: dict[str, Any], field: str) -> tuple[str, Any]:
    """The first name of `field` that holds a value, and the value (`_MISSING` for none).

    An object is a value only where it cannot be a namespace: `{"service": {"name": ...}}` is
    the nested form of `service.name`, but `{"route": {...}}` is a route of the wrong type,
    returned so that the caller names it."""
    value = obj.get(field)  # fast path: the canonical name, as most shippers send
    if value is not None and not isinstance(value, dict):
        return field, value
    wrong = (field, value) if value is not None and field not in _NAMESPACES else None
    for name in ALIASES[field][1:]:
        value = _lookup(obj, name)
        if value is _MISSING or value is None:
            continue
        if not isinstance(value, dict):
            return name, value
        wrong = wrong or (name, value)
    return wrong or (field, _MISSING)


# The first parts of dotted names, where an object is the nested form of those names.
_NAMESPACES = frozenset(
    name.split(".", 1)[0] for names in ALIASES.values() for name in names if "." in name
)


def _text(obj: dict[str, Any], field: str, *, allow_list: bool = False) -> str | None:
    name, value = _first(obj, field)
    if value is _MISSING:
        return None
    if type(value) is not str:
        if allow_list and isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise EventError(name, "must be a string or a list of strings")
            value = ", ".join(value)
        elif type(value) is int:
            if value.bit_length() > _MAX_INT_BITS:  # str() refuses past 4,300 digits
                raise EventError(name, f"must be a string, got an integer of {_size(value)}")
            value = str(value)
        else:
            raise EventError(name, f"must be a string, got {type(value).__name__}")
    limit = MAX_LENGTH[field]
    if len(value) > limit:
        raise EventError(name, f"longer than {limit} characters ({len(value)})")
    if _CONTROL.search(value):
        raise EventError(name, "contains a control character or NUL byte")
    return value


def _status(obj: dict[str, Any]) -> int:
    name, value = _first(obj, "status")
    if value is _MISSING:
        raise EventError("status", "missing")
    if isinstance(value, str):
        text = value.strip()
        # isdigit() is also True for '²' or '٤', which int() refuses or reads as digits.
        if text.isascii() and text.isdigit() and len(text) <= 6:
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise EventError(name, f"must be a 3-digit HTTP status code, got {_preview(value)}")
    return value


def _epoch_from_number(number: float) -> float:
    """Seconds, milliseconds, microseconds or nanoseconds, told apart by magnitude."""
    magnitude = abs(number)
    if magnitude < 1e11:
        return number
    if magnitude < 1e14:
        return number / 1e3
    if magnitude < 1e17:
        return number / 1e6
    return number / 1e9


def _seconds_from_text(name: str, value: str) -> float:
    text = value.strip()
    try:
        return _epoch_from_number(float(text))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise EventError(
            name, f"unreadable time {_preview(value)}: want RFC 3339 or epoch"
        ) from None
    if parsed.tzinfo is None:
        raise EventError(name, f"time {_preview(value)} has no UTC offset")
    return parsed.timestamp()


def _ts(obj: dict[str, Any], defaults: Defaults) -> float:
    name, value = _first(obj, "ts")
    if value is _MISSING:
        return defaults.received_at
    seconds: float
    if isinstance(value, bool):
        raise EventError(name, "must be an RFC 3339 time or epoch number, got a boolean")
    if isinstance(value, int | float):
        try:
            seconds = _epoch_from_number(float(value))
        except OverflowError:  # an int past float's range (OTLP's intValue has no bound)
            raise EventError(name, f"unreadable time {_preview(value)}") from None
    elif isinstance(value, str):
        seconds = _seconds_from_text(name, value)
    else:
        raise EventError(name, f"must be an RFC 3339 time or epoch number, got {_preview(value)}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise EventError(name, f"unreadable time {_preview(value)}")
    if seconds > defaults.received_at + defaults.max_clock_skew:
        ahead = seconds - defaults.received_at
        # An absurd time in full would be hundreds of digits (1e300 s): then 3 say enough.
        told = f"{ahead:.0f}" if ahead < 1e12 else f"{ahead:.3g}"
        raise EventError(
            name,
            f"{told} s in the future, past PW_MAX_CLOCK_SKEW_SECONDS "
            f"({defaults.max_clock_skew:.0f})",
        )
    return seconds


def _size(value: int) -> str:
    return f"{value.bit_length()} bits"


def _preview(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        return f"an integer of {_size(value)}"  # repr() refuses past 4,300 digits
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# Names that only an alias lookup can read: the other aliases, and the first part of the
# dotted ones (their nested form). An event with none of them needs no alias search.
_ALIAS_KEYS = frozenset(
    part
    for names in ALIASES.values()
    for name in names[1:]
    for part in (name, name.split(".", 1)[0])
) - {"service"}


# The text fields, in the order `_parse_canonical` unpacks them (Event's order after `status`).
_PLAIN_FIELDS = tuple(
    (name, MAX_LENGTH[name], name in ("if_match", "if_none_match"))
    for name in (
        "request_id",
        "service",
        "resource_id",
        "route",
        "method",
        "if_match",
        "if_none_match",
        "current_etag",
        "client_id",
        "deploy_version",
        "reason",
    )
)


def _parse_canonical(obj: dict[str, Any], defaults: Defaults) -> Event:
    """The common case, as most shippers send it: canonical names (plus fields the collector
    does not read) and plain values. Anything unusual goes through `_text`, which names the
    field in its error."""
    status = obj.get("status")
    if type(status) is not int or not 100 <= status <= 599:
        status = _status(obj)
    get = obj.get
    texts: list[Any] = []
    for name, limit, allow_list in _PLAIN_FIELDS:
        value = get(name)
        # isprintable() is False for every control character, so True skips the regex.
        if value is not None and not (
            type(value) is str and len(value) <= limit and value.isprintable()
        ):
            value = _text(obj, name, allow_list=allow_list)
        texts.append(value)
    request_id, service, resource_id, route, method, *headers = texts
    if not request_id:
        raise EventError("request_id", "missing")
    service = service or defaults.service
    if not service:
        raise EventError("service", "missing: set it in the event, ?service= or X-Service-Name")
    ts = get("ts")
    if (
        type(ts) is float
        and 1e8 < ts <= defaults.received_at + defaults.max_clock_skew
        and math.isfinite(ts)
    ):
        seconds = ts
    else:
        seconds = _ts(obj, defaults)
    return Event(
        seconds,
        service,
        status,
        request_id,
        resource_id or "",
        route,
        method.upper() if method else None,
        *headers,
    )


def check_request_service(service: str | None) -> str | None:
    """The service a request names for its lines (`?service=`, `X-Service-Name`), held to the
    rules of an event's own `service`; raises EventError naming the problem."""
    if not service:
        return None
    return _text({"service": service}, "service")


def parse_event(obj: object, defaults: Defaults) -> Event:
    """Read one decoded JSON value into an Event, or raise EventError naming the field."""
    if not isinstance(obj, dict):
        raise EventError("event", f"must be a JSON object, got {type(obj).__name__}")
    # `service` is both a name and a namespace (`{"service": {"name": ...}}`).
    if obj.keys().isdisjoint(_ALIAS_KEYS) and type(obj.get("service")) is not dict:
        return _parse_canonical(obj, defaults)
    status = _status(obj)
    request_id = _text(obj, "request_id")
    if not request_id:
        raise EventError("request_id", "missing")
    service = _text(obj, "service") or defaults.service
    if not service:
        raise EventError("service", "missing: set it in the event, ?service= or X-Service-Name")
    method = _text(obj, "method")
    return Event(
        ts=_ts(obj, defaults),
        service=service,
        status=status,
        request_id=request_id,
        resource_id=_text(obj, "resource_id") or "",
        route=_text(obj, "route"),
        method=method.upper() if method else None,
        if_match=_text(obj, "if_match", allow_list=True),
        if_none_match=_text(obj, "if_none_match", allow_list=True),
        current_etag=_text(obj, "current_etag"),
        client_id=_text(obj, "client_id"),
        deploy_version=_text(obj, "deploy_version"),
        reason=_text(obj, "reason"),
    )
