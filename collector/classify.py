"""Why a precondition failed: an ordered list of small pure rules over the failure and its context.

Every failure gets exactly one cause. The rules run in this order and the first that matches
wins; the order is the precedence, from the most certain and most actionable to the least:

1. missing_precondition  428: the client sent no precondition at all.
2. business_conflict     409 without If-Match or current ETag: a state conflict, not a validator.
3. resource_gone         `If-Match: *` failed: the resource no longer exists.
4. create_conflict       `If-None-Match: *` failed: the resource already exists.
5. weak_etag             the current ETag is weak: strong comparison can never succeed.
6. proxy_rewrite         If-Match equals the current ETag once an intermediary's rewrite is undone.
7. format_change         If-Match has the ETag format of an earlier deploy, the current ETag the
                         format of the deploy that answered.
8. blind_retry           the same client got a 412 for the same resource and If-Match within W.
9. concurrent_write      If-Match was this resource's ETag until another write at most W before.
10. cross_resource       If-Match belongs to a different resource of the service, never this one
                         (high-entropy formats only: "1" on two resources is a coincidence).
11. stale_etag           If-Match was superseded more than W before, or is an unknown ETag of the
                         current format.
12. unknown              not enough evidence.

The systemic causes (5-7) come before blind_retry on purpose: a client behind a rewriting proxy
retries into the same wall, and on-call must see the proxy, not the retries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from collector.etag import (
    EntityTag,
    Precondition,
    detect_rewrite,
    fingerprint,
    is_high_entropy,
    parse_etag,
    parse_precondition,
    strong_match,
    weak_match,
)
from collector.event import Event


class Cause(StrEnum):
    """The bounded set of reasons a precondition failed."""

    CONCURRENT_WRITE = "concurrent_write"
    STALE_ETAG = "stale_etag"
    FORMAT_CHANGE = "format_change"
    PROXY_REWRITE = "proxy_rewrite"
    WEAK_ETAG = "weak_etag"
    CROSS_RESOURCE = "cross_resource"
    BLIND_RETRY = "blind_retry"
    RESOURCE_GONE = "resource_gone"
    CREATE_CONFLICT = "create_conflict"
    MISSING_PRECONDITION = "missing_precondition"
    BUSINESS_CONFLICT = "business_conflict"
    UNKNOWN = "unknown"


# Not frozen: settling builds thousands of these a second, and a frozen __init__ costs twice
# as much. Nothing mutates them.
@dataclass(slots=True)
class LineageWrite:
    """A successful write that made `etag` current at `ts`."""

    ts: float
    request_id: str
    etag: str
    client_id: str | None = None


@dataclass(slots=True)
class PriorFailure:
    """An earlier failure on the same resource (for blind retries)."""

    ts: float
    request_id: str
    status: int
    client_id: str | None
    if_match: str | None


@dataclass(frozen=True)
class Context:
    """What the store knows around the failure; every field may be empty."""

    writes: Sequence[LineageWrite] = ()
    prior_failures: Sequence[PriorFailure] = ()
    # ETag (canonical form) -> the resource of the service that last had it.
    etag_owners: Mapping[str, str] = field(default_factory=dict)
    # deploy version -> {fingerprint: first event time seen}; versions ordered by first seen.
    formats: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    versions: Sequence[tuple[str, float]] = ()
    window: float = 300.0


@dataclass(frozen=True, slots=True)
class Decision:
    """A cause and the evidence that led to it (never the raw event)."""

    cause: Cause
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"cause": str(self.cause), "evidence": self.evidence}


@dataclass
class _Facts:
    """The failure with its headers parsed once, shared by every rule."""

    failure: Event
    context: Context
    if_match: Precondition
    if_none_match: Precondition
    current: EntityTag | None

    @cached_property
    def supersession(self) -> _Supersession | None:
        """Computed once: three rules (race, cross-resource, stale) look at it."""
        return _supersession(self)


Rule = Callable[[_Facts], Decision | None]


def _missing_precondition(f: _Facts) -> Decision | None:
    if f.failure.status == 428:
        return Decision(Cause.MISSING_PRECONDITION, {})
    return None


def _business_conflict(f: _Facts) -> Decision | None:
    has_validator = bool(f.if_match.tags or f.if_match.any) and f.current is not None
    if f.failure.status == 409 and not has_validator:
        reason = (f.failure.reason or "")[:200]
        return Decision(Cause.BUSINESS_CONFLICT, {"reason": reason} if reason else {})
    return None


def _resource_gone(f: _Facts) -> Decision | None:
    if f.if_match.any:
        return Decision(Cause.RESOURCE_GONE, {})
    return None


def _create_conflict(f: _Facts) -> Decision | None:
    if f.if_none_match.any and not f.if_match.tags:
        evidence = {"current_etag": str(f.current)} if f.current else {}
        return Decision(Cause.CREATE_CONFLICT, evidence)
    return None


def _weak_etag(f: _Facts) -> Decision | None:
    if f.current is not None and f.current.weak and f.if_match.tags:
        return Decision(Cause.WEAK_ETAG, {"current_etag": str(f.current)})
    return None


def _proxy_rewrite(f: _Facts) -> Decision | None:
    if f.current is None:
        return None
    for tag in f.if_match.tags:
        kinds = detect_rewrite(tag, f.current)
        if kinds:
            return Decision(
                Cause.PROXY_REWRITE,
                {
                    "rewrite": [str(k) for k in kinds],
                    "if_match": _raw(tag),
                    "current_etag": str(f.current),
                },
            )
    return None


def _format_change(f: _Facts) -> Decision | None:
    version = f.failure.deploy_version
    formats = f.context.formats
    if f.current is None or not f.if_match.tags or not version or version not in formats:
        return None
    current_format = fingerprint(f.current)
    if current_format not in formats[version]:
        return None
    first_seen = dict(f.context.versions)
    started = first_seen.get(version)
    for tag in f.if_match.tags:
        old_format = fingerprint(tag)
        if old_format == current_format or old_format in formats[version]:
            continue
        for earlier, seen in formats.items():
            first = first_seen.get(earlier)
            is_earlier = earlier != version and (
                started is None or first is None or first < started
            )
            if is_earlier and old_format in seen:
                return Decision(
                    Cause.FORMAT_CHANGE,
                    {
                        "if_match_format": old_format,
                        "current_format": current_format,
                        "previous_version": earlier,
                        "current_version": version,
                    },
                )
    return None


def _same_precondition(a: str | None, b: Precondition) -> bool:
    if a is None:
        return False
    other = parse_precondition(a)
    return set(other.tags) == set(b.tags) and bool(other.tags)


def _blind_retry(f: _Facts) -> Decision | None:
    client = f.failure.client_id
    if not client or not f.if_match.tags:
        return None
    earlier = [
        p
        for p in f.context.prior_failures
        if p.client_id == client
        and p.request_id != f.failure.request_id
        and p.status in (409, 412)
        and p.ts < f.failure.ts
        and f.failure.ts - p.ts <= f.context.window
        and _same_precondition(p.if_match, f.if_match)
    ]
    if not earlier:
        return None
    first = min(earlier, key=lambda p: p.ts)
    return Decision(
        Cause.BLIND_RETRY,
        {
            "retry_count": len(earlier),
            "first_failure": first.request_id,
            "first_failure_seconds_ago": round(f.failure.ts - first.ts, 3),
        },
    )


@dataclass(frozen=True, slots=True)
class _Supersession:
    """When and by whom the If-Match ETag stopped being current."""

    became_current: LineageWrite
    superseded_by: LineageWrite | None
    age: float  # seconds from the superseding write (or the last sighting) to the failure


def _is_written_tag(raw: str, tag: EntityTag) -> bool:
    """Whether a lineage ETag (raw, as logged) is `tag`, ignoring the weak flag."""
    # A tag's opaque always appears in its raw form: most writes are ruled out without parsing.
    if tag.opaque not in raw:
        return False
    written = parse_etag(raw)
    return written is not None and weak_match(written, tag)


def _supersession(f: _Facts) -> _Supersession | None:
    """The latest-superseded If-Match tag found in this resource's lineage, if any."""
    writes = sorted((w for w in f.context.writes if w.ts <= f.failure.ts), key=lambda w: w.ts)
    best: _Supersession | None = None
    for tag in f.if_match.tags:
        for index in range(len(writes) - 1, -1, -1):
            if not _is_written_tag(writes[index].etag, tag):
                continue
            successor = next(
                (w for w in writes[index + 1 :] if not _is_written_tag(w.etag, tag)), None
            )
            anchor = successor or writes[index]
            found = _Supersession(writes[index], successor, f.failure.ts - anchor.ts)
            if best is None or found.age < best.age:
                best = found
            break
    return best


def _concurrent_write(f: _Facts) -> Decision | None:
    found = f.supersession
    if found is None or found.age > f.context.window:
        return None
    winner = found.superseded_by
    evidence: dict[str, Any] = {"race_seconds": round(found.age, 3)}
    if winner is not None:
        evidence["winner"] = {
            "request_id": winner.request_id,
            "client_id": winner.client_id,
            "ts": winner.ts,
        }
        evidence["superseded_seconds_ago"] = round(found.age, 3)
    else:
        # The lineage ends at If-Match: the winning write was not logged, but it came after.
        evidence["winner"] = None
    return Decision(Cause.CONCURRENT_WRITE, evidence)


def _cross_resource(f: _Facts) -> Decision | None:
    if f.supersession is not None:
        return None
    for tag in f.if_match.tags:
        owner = f.context.etag_owners.get(str(tag))
        if owner is not None and owner != f.failure.resource_id and is_high_entropy(tag):
            return Decision(Cause.CROSS_RESOURCE, {"other_resource": owner, "if_match": _raw(tag)})
    return None


def _stale_etag(f: _Facts) -> Decision | None:
    found = f.supersession
    if found is not None:
        if found.superseded_by is None:
            return None  # superseded by an unlogged write, longer ago than W: cannot tell
        return Decision(
            Cause.STALE_ETAG,
            {
                "superseded_seconds_ago": round(found.age, 3),
                "superseded_by": found.superseded_by.request_id,
            },
        )
    if f.current is None:
        return None
    current_format = fingerprint(f.current)
    if any(fingerprint(tag) == current_format for tag in f.if_match.tags):
        return Decision(Cause.STALE_ETAG, {"superseded_seconds_ago": None, "unknown_etag": True})
    return None


RULES: tuple[Rule, ...] = (
    _missing_precondition,
    _business_conflict,
    _resource_gone,
    _create_conflict,
    _weak_etag,
    _proxy_rewrite,
    _format_change,
    _blind_retry,
    _concurrent_write,
    _cross_resource,
    _stale_etag,
)


def _raw(tag: EntityTag) -> str:
    return str(tag) if tag.quoted else ("W/" if tag.weak else "") + tag.opaque


def _unknown(f: _Facts) -> Decision:
    evidence: dict[str, Any] = {}
    if f.if_match.malformed:
        evidence["malformed_if_match"] = True
    if f.current is not None and any(strong_match(t, f.current) for t in f.if_match.tags):
        evidence["if_match_equals_current"] = True
    if not f.if_match.tags and not f.if_match.any and not f.if_none_match.any:
        evidence["no_precondition_logged"] = True
    return Decision(Cause.UNKNOWN, evidence)


def classify_failure(failure: Event, context: Context) -> Decision:
    """The cause of one failure: the first rule of RULES that matches, else unknown."""
    facts = _Facts(
        failure=failure,
        context=context,
        if_match=parse_precondition(failure.if_match),
        if_none_match=parse_precondition(failure.if_none_match),
        current=parse_etag(failure.current_etag) if failure.current_etag else None,
    )
    for rule in RULES:
        decision = rule(facts)
        if decision is not None:
            return decision
    return _unknown(facts)
