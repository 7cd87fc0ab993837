"""The Redis key schema, and how every value kept under it is encoded and read back.

Keys of one resource share the hash tag `{service:resource}` and keys of one service share
`{service}`, so a script given one of them may derive its siblings (same cluster slot).

Per resource, `pw:r:{s:r}:`  + `e` hash request_id -> event record (`encode_record`); an id
                                     already in it is a duplicate; `c:<request_id>` -> decision
                                     (JSON), set once; `+<request_id>` -> "" once the event is
                                     indexed (its service state written)
                                 `z` zset of every event by event time (the timeline), member
                                     `encode_sighting`: `kind US request_id US etag US client US
                                     if_match US version` for lineage evidence (`w` a 2xx write,
                                     `d` a 2xx DELETE, `f` a failure with a current ETag),
                                     `o US request_id` for the rest
                                 `f` zset 412/409 with If-Match by event time, member
                                     `encode_conflict`: `request_id US status US client US
                                     if_match`
Per service,  `pw:s:{s}:`   + `p` zset pending failure (`encode_pending`) by ts
                                 `i` zset claimed (in-flight) failure by lease expiry
                                 `m` zset `max` = newest event time, `seen` = last receive time
                                 `v` zset deploy version by first event time
                                 `f` zset `version US fingerprint` by first event time
                                 `q:<bucket>` hash request_id -> resource, failures only
                                     (the request lookup)
                                 `x:<bucket>` hash etag -> resource (who had this ETag)
                                 `h:<minute>` zset resource by conflicts in that minute
                                 `n:<minute>` hash `req` and `c:<cause>` counts (event time)
                                 `d` hash version -> how the deploy became known (marker)
                                 `r` hash version -> regression verdict (JSON), set once
                                 `k` list decided failures not yet counted in any replica's
                                     metrics (`encode_counted`)
Global        `pw:services` zset service by last receive time

Index buckets are 15 minutes of receive time and expire `retention` after their start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from collector.classify import PriorFailure, Sighting
from collector.event import FAILURE_STATUSES, Event

US = "\x1f"  # never inside a stored field: event.py rejects control characters
RS = "\x1e"
# A record's field `+<request_id>` says the event was indexed: its service state is written.
INDEXED = "+"
DECISION = "c:"
SERVICES_KEY = "pw:services"
INDEX_BUCKET_SECONDS = 900


def _escape(text: str) -> str:
    # Braces would move the hash tag, colons would make two names collide.
    if "%" not in text and "{" not in text and "}" not in text and ":" not in text:
        return text
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace(":", "%3A")


def resource_prefix(service: str, resource_id: str) -> str:
    """Key prefix shared by every key of one resource."""
    return f"pw:r:{{{_escape(service)}:{_escape(resource_id)}}}:"


def service_prefix(service: str) -> str:
    """Key prefix shared by every key of one service."""
    return f"pw:s:{{{_escape(service)}}}:"


def records_key(service: str, resource_id: str) -> str:
    """A resource's `e` hash: the key every per-resource script is given."""
    return resource_prefix(service, resource_id) + "e"


# -- event records ---------------------------------------------------------------------------


def encode_record(event: Event) -> str:
    """What the timeline keeps of an event: its fields that are set, except the three its key
    and field already say (service, resource, request id); never a raw body."""
    record: dict[str, object] = {"ts": event.ts, "status": event.status}
    # Spelled out: a getattr() loop costs a third more on every event.
    if event.route is not None:
        record["route"] = event.route
    if event.method is not None:
        record["method"] = event.method
    if event.if_match is not None:
        record["if_match"] = event.if_match
    if event.if_none_match is not None:
        record["if_none_match"] = event.if_none_match
    if event.current_etag is not None:
        record["current_etag"] = event.current_etag
    if event.client_id is not None:
        record["client_id"] = event.client_id
    if event.deploy_version is not None:
        record["deploy_version"] = event.deploy_version
    if event.reason is not None:
        record["reason"] = event.reason
    # As str: keeping orjson's bytes instead raised peak RSS in `make bench` from 90 to 120 MiB.
    return orjson.dumps(record).decode()


def decode_json(value: bytes | None) -> dict[str, Any] | None:
    """A stored record or decision as a dict; None where nothing is stored."""
    return orjson.loads(value) if value else None


def decode_event(service: str, resource_id: str, request_id: str, record: dict[str, Any]) -> Event:
    """The event back from `encode_record`'s record: its keys are Event's own field names."""
    return Event(service=service, resource_id=resource_id, request_id=request_id, **record)


# -- timeline and conflicts members ----------------------------------------------------------


def encode_sighting(event: Event) -> str:
    """An event's timeline member: what it shows of the resource's ETag lineage (a `Sighting`,
    read back by `decode_sighting`), or `o US request_id` when it shows nothing."""
    status = event.status
    if 200 <= status < 300:
        kind = "d" if event.method == "DELETE" else "w"
    elif event.current_etag and status in FAILURE_STATUSES:
        kind = "f"
    else:
        return f"o{US}{event.request_id}"
    if_match = event.if_match if kind != "f" and event.if_match else ""
    return US.join(
        (
            kind,
            event.request_id,
            event.current_etag or "",
            event.client_id or "",
            if_match,
            event.deploy_version or "",
        )
    )


def decode_sighting(member: bytes, score: Any) -> Sighting:
    """The `Sighting` an `encode_sighting` member encodes, at its timeline score."""
    kind, request_id, etag, client, if_match, version = member.decode().split(US)
    return Sighting(float(score), request_id, kind, etag, client or None, if_match, version)


def request_of_member(member: bytes) -> str:
    """The request id in a timeline member, whichever its kind."""
    return member.decode().split(US, 2)[1]


def encode_conflict(event: Event) -> str:
    """A 412/409 with If-Match as the resource's conflicts set keeps it."""
    return f"{event.request_id}{US}{event.status}{US}{event.client_id or ''}{US}{event.if_match}"


def decode_conflict(member: bytes, score: Any) -> PriorFailure:
    """The `PriorFailure` an `encode_conflict` member encodes, at its score (event time)."""
    request_id, status, client, if_match = member.decode().split(US, 3)
    return PriorFailure(float(score), request_id, int(status), client or None, if_match)


# -- pending failures ------------------------------------------------------------------------


@dataclass(slots=True)
class PendingFailure:
    """A failure waiting to be (or being) settled; `if_match` and `client_id` say what of its
    resource's timeline settling must read."""

    service: str
    resource_id: str
    request_id: str
    ts: float
    if_match: str = ""
    client_id: str = ""

    @classmethod
    def of(cls, event: Event) -> PendingFailure:
        return cls(
            event.service,
            event.resource_id,
            event.request_id,
            event.ts,
            event.if_match or "",
            event.client_id or "",
        )

    @property
    def member(self) -> str:
        """Its member of the service's `p` and `i` sets (`decode_pending` reads it back)."""
        return US.join(
            (repr(self.ts), self.resource_id, self.request_id, self.if_match, self.client_id)
        )


def decode_pending(service: str, member: bytes) -> PendingFailure:
    """The `PendingFailure` whose `member` this is."""
    ts, resource, request_id, if_match, client = member.decode().split(US)
    return PendingFailure(service, resource, request_id, float(ts), if_match, client)


# -- what counting a decided failure needs ---------------------------------------------------


class Counted(NamedTuple):
    """What the metrics need of one decided failure; kept in its service's `k` list beside its
    decision until a serving process counts it (`encode_counted`, `decode_counted`)."""

    service: str
    route: str | None
    method: str | None
    status: int
    cause: str
    request_id: str
    race_seconds: float | None
    superseded_seconds: float | None
    rewrites: tuple[str, ...]
    client: str | None = None  # only for the causes counted by client


def encode_counted(counted: Counted) -> str:
    """A Counted as the `k` list keeps it (the service is the key it is kept under)."""
    _, route, method, status, cause, request_id, race, superseded, rewrites, client = counted
    return US.join(
        (
            route or "",
            method or "",
            str(status),
            cause,
            request_id,
            "" if race is None else repr(race),
            "" if superseded is None else repr(superseded),
            ",".join(rewrites),
            client or "",
        )
    )


def decode_counted(service: str, entry: bytes) -> Counted:
    """The Counted that `encode_counted` kept for `service`."""
    route, method, status, cause, request_id, race, superseded, rewrites, client = (
        entry.decode().split(US)
    )
    return Counted(
        service,
        route or None,
        method or None,
        int(status),
        cause,
        request_id,
        float(race) if race else None,
        float(superseded) if superseded else None,
        tuple(rewrites.split(",")) if rewrites else (),
        client or None,
    )


# -- deploys ---------------------------------------------------------------------------------


def encode_format(version: str, fingerprint: str) -> str:
    """A member of a service's `f` set: an ETag fingerprint a deploy version answered with."""
    return f"{version}{US}{fingerprint}"


def decode_format(member: bytes) -> tuple[str, str]:
    """(version, fingerprint) of an `encode_format` member."""
    version, _, fingerprint = member.decode().partition(US)
    return version, fingerprint
