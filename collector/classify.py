"""Why a precondition failed: an ordered list of small pure rules over the failure and its context.

Every failure gets exactly one cause. The rules run in this order and the first that matches
wins; the order is the precedence, from the most certain and most actionable to the least:

1. missing_precondition  428: the client sent no precondition at all.
2. business_conflict     409 without If-Match or current ETag: a state conflict, not a validator.
3. resource_gone         `If-Match: *` failed: the resource no longer exists.
4. create_conflict       `If-None-Match: *` failed: the resource already exists.
5. weak_etag             the current ETag is weak: strong comparison can never succeed.
6. proxy_rewrite         If-Match equals the current ETag once an intermediary's rewrite is undone.
7. format_change         a deploy changed how ETags are computed: If-Match has the format of an
                         earlier deploy and the current ETag that of the deploy that answered;
                         or If-Match was current under an earlier version, no logged write
                         replaced it, and a later version answered the new value (same shape).
8. unstable_etag         the current ETag went back to an earlier value with no write in between
                         (A, B, A under one version) and If-Match is one of them: replicas or
                         serialisations disagree about the same state.
9. blind_retry           the same client got a 412 for the same resource and If-Match within W.
10. concurrent_write     If-Match was this resource's ETag until another write at most W before.
11. cross_resource       If-Match belongs to a different resource of the service, never this one
                         (high-entropy formats only: "1" on two resources is a coincidence).
12. stale_etag           If-Match was superseded more than W before, or is an unknown ETag of the
                         current format.
13. unknown              not enough evidence.

The systemic causes (5-8) come before blind_retry on purpose: a client behind a rewriting proxy
retries into the same wall, and on-call must see the proxy, not the retries.

Every event of the resource is lineage evidence (`Sighting`): a 2xx write's If-Match (current
until it) and ETag (current from it), a failure's current ETag (current then). So a race is
recognised on a resource first seen mid-life, and its winner named, even when If-Match was
never anyone's logged ETag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Generic, TypeVar, overload

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

# How much later than a failure the write it lost to may be stamped: instances' clocks differ.
CLOCK_SKEW_SECONDS = 2.0


class Cause(StrEnum):
    """The bounded set of reasons a precondition failed."""

    CONCURRENT_WRITE = "concurrent_write"
    STALE_ETAG = "stale_etag"
    FORMAT_CHANGE = "format_change"
    UNSTABLE_ETAG = "unstable_etag"
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
class Sighting:
    """One event of a resource's lineage: which ETag it shows was current, when, and who said so.

    Every event is lineage evidence (DESIGN: "Every event is lineage evidence"):

    - kind `w`, a 2xx write: `if_match` was current until it, `etag` from it (`""` when the
      write logged no ETag);
    - kind `d`, a 2xx DELETE: `if_match` was current until it, and the lineage ends there;
    - kind `f`, a failure: `etag` was current at `ts`.

    `version` is the deploy version that answered (`""` when the event did not say).
    """

    ts: float
    request_id: str
    kind: str
    etag: str
    client_id: str | None = None
    if_match: str = ""
    version: str = ""


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

    # The resource's sightings up to the failure (any order): the ones that mention If-Match,
    # the one after each, and the newest since the last write.
    lineage: Sequence[Sighting] = ()
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


@dataclass(frozen=True, slots=True)
class _Trace:
    """What the lineage says became of one If-Match tag before the failure.

    `held` is the newest sighting showing the tag current (None when the tag is only known as
    the If-Match of the write that superseded it). `superseded_by` is the logged write that
    replaced it; `replaced_by` the first sighting of another value before any such write,
    which no logged write explains (a deploy, a replica, or a write that was not logged).
    Both None: the lineage still has the tag current.
    """

    held: Sighting | None
    superseded_by: Sighting | None
    replaced_by: Sighting | None

    def age(self, now: float) -> float:
        """Seconds since the tag stopped being current, or since it was last seen current."""
        anchor = self.superseded_by or self.held
        assert anchor is not None  # a trace holds at least one of them
        return now - anchor.ts


T = TypeVar("T")


class _once(Generic[T]):
    """functools.cached_property without the lock that Python 3.11 takes on every first read
    (a tenth of settling's time went there): a fact is computed on first use, then kept."""

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__

    @overload
    def __get__(self, facts: None, owner: type) -> _once[T]: ...
    @overload
    def __get__(self, facts: object, owner: type) -> T: ...
    def __get__(self, facts: object, owner: type) -> T | _once[T]:
        if facts is None:
            return self
        value = facts.__dict__[self.name] = self.compute(facts)
        return value


@dataclass
class _Facts:
    """The failure with its headers parsed once, shared by every rule."""

    failure: Event
    context: Context
    if_match: Precondition
    if_none_match: Precondition
    current: EntityTag | None

    @_once
    def lineage(self) -> list[Sighting]:
        """The other events of the resource up to the failure, oldest first.

        A write stamped up to CLOCK_SKEW_SECONDS after the failure whose ETag the failure
        already saw as current happened before it (the instances' clocks differ): it is kept,
        at the failure's time.
        """
        ts, current = self.failure.ts, self.current
        kept = []
        for s in self.context.lineage:
            if s.request_id == self.failure.request_id:
                continue
            if s.ts <= ts:
                kept.append(s)
            elif (
                s.kind == "w"
                and s.ts <= ts + CLOCK_SKEW_SECONDS
                and current is not None
                and _is_tag(s.etag, current)
            ):
                kept.append(replace(s, ts=ts))
        return sorted(kept, key=lambda s: s.ts)

    @_once
    def trace(self) -> tuple[EntityTag, _Trace] | None:
        """The If-Match tag that stopped being current most recently, and its trace; computed
        once: the format, race, cross-resource and stale rules all read it."""
        best: tuple[EntityTag, _Trace] | None = None
        for tag in self.if_match.tags:
            found = _trace(tag, self.lineage)
            if found is not None and (
                best is None or found.age(self.failure.ts) < best[1].age(self.failure.ts)
            ):
                best = (tag, found)
        return best

    @_once
    def first_seen(self) -> dict[str, float]:
        return dict(self.context.versions)


Rule = Callable[[_Facts], Decision | None]


def _is_tag(raw: str, tag: EntityTag) -> bool:
    """Whether a logged ETag (raw) is `tag`, ignoring the weak flag."""
    # A tag's opaque always appears in its raw form: most sightings are ruled out unparsed.
    if not raw or tag.opaque not in raw:
        return False
    seen = parse_etag(raw)
    return seen is not None and weak_match(seen, tag)


def _in_precondition(raw: str, tag: EntityTag) -> bool:
    """Whether a logged If-Match value (raw) lists `tag`."""
    if not raw or tag.opaque not in raw:
        return False
    return any(weak_match(t, tag) for t in parse_precondition(raw).tags)


def _trace(tag: EntityTag, lineage: Sequence[Sighting]) -> _Trace | None:
    """Follow `tag` through the lineage (oldest first): where it was last current, and what
    replaced it. None when the lineage never mentions it."""
    for index in range(len(lineage) - 1, -1, -1):
        sighting = lineage[index]
        if _is_tag(sighting.etag, tag):
            return _after(tag, sighting, lineage[index + 1 :])
        if sighting.kind != "f" and _in_precondition(sighting.if_match, tag):
            # The write's If-Match: current until this write, which superseded it.
            return _Trace(None, sighting, None)
    return None


def _after(tag: EntityTag, held: Sighting, later: Sequence[Sighting]) -> _Trace:
    """What came after the newest sighting of `tag` as current: the write that replaced the
    state it stood for, and any sighting of another value before that write."""
    replaced: Sighting | None = None
    for sighting in later:
        if sighting.kind == "f":
            if replaced is None and sighting.etag and not _is_tag(sighting.etag, tag):
                replaced = sighting  # another value with no write: a replica, or unlogged
            continue
        if _is_tag(sighting.etag, tag):
            continue  # a write that kept the same ETag
        deployed = held.version and sighting.version and held.version != sighting.version
        if deployed and sighting.if_match and not _in_precondition(sighting.if_match, tag):
            # The write's If-Match is another value, under another version: the deploy
            # replaced the tag before this write did anything.
            return _Trace(held, None, replaced or sighting)
        # This write replaced the state the tag stood for (its If-Match may be another
        # replica's ETag for that same state).
        return _Trace(held, sighting, replaced)
    return _Trace(held, None, replaced)


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


def _is_later(version: str, than: str, first_seen: Mapping[str, float]) -> bool:
    """Whether `version` was deployed after `than` (both known, by first event time)."""
    if not version or not than or version == than:
        return False
    a, b = first_seen.get(version), first_seen.get(than)
    return a is not None and b is not None and a > b


def _format_change(f: _Facts) -> Decision | None:
    if f.current is None or not f.if_match.tags:
        return None
    return _new_format(f) or _regenerated(f)


def _new_format(f: _Facts) -> Decision | None:
    """If-Match has the ETag format of an earlier version, the current ETag that of this one."""
    version = f.failure.deploy_version
    formats = f.context.formats
    assert f.current is not None
    if not version or version not in formats:
        return None
    current_format = fingerprint(f.current)
    if current_format not in formats[version]:
        return None
    started = f.first_seen.get(version)
    for tag in f.if_match.tags:
        old_format = fingerprint(tag)
        if old_format == current_format or old_format in formats[version]:
            continue
        for earlier, seen in formats.items():
            first = f.first_seen.get(earlier)
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


def _regenerated(f: _Facts) -> Decision | None:
    """Same shape, new values: If-Match was current under an earlier version, no logged write
    replaced it, and the value that replaced it was answered by a later version."""
    found = f.trace
    if found is None:
        return None
    tag, trace = found
    if trace.held is None:
        return None
    if trace.replaced_by is not None:  # the first other value seen, before any write
        answered = trace.replaced_by.version
    elif trace.superseded_by is None:  # still current in the lineage: this failure says not
        answered = f.failure.deploy_version or ""
    else:
        return None  # a logged write replaced it
    if not _is_later(answered, trace.held.version, f.first_seen):
        return None
    assert f.current is not None
    return Decision(
        Cause.FORMAT_CHANGE,
        {
            "if_match_format": fingerprint(tag),
            "current_format": fingerprint(f.current),
            "previous_version": trace.held.version,
            "current_version": answered,
            "if_match_seen": trace.held.request_id,
            "same_shape": fingerprint(tag) == fingerprint(f.current),
        },
    )


def _unstable_etag(f: _Facts) -> Decision | None:
    """Replicas (or serialisations) disagree about the same state: since the newest logged
    write, under one version, the current ETag went back to an earlier value (A, B, A), or
    moved away from the write's ETag with no write to explain it, and If-Match is one of those
    values, or one no logged write ever replaced.

    A move needs the write that starts the span: only a resource whose writes are logged
    shows that its ETag changed without one (where none are, an unlogged write is likelier).
    """
    if f.current is None or not f.if_match.tags:
        return None
    version = f.failure.deploy_version or ""
    span: list[EntityTag] = [f.current]  # current values, newest first, repeats in a row folded
    from_write = False
    for sighting in reversed(f.lineage):
        if sighting.kind == "d" or (sighting.version and version and sighting.version != version):
            break  # a delete or a deploy starts a new span
        seen = parse_etag(sighting.etag) if sighting.etag else None
        if seen is not None and not weak_match(seen, span[-1]):
            span.append(seen)
        if sighting.kind == "w":
            from_write = seen is not None
            break  # the write made its ETag current: the span starts there
    distinct: list[EntityTag] = []  # oldest first
    for tag in reversed(span):
        if not any(weak_match(tag, d) for d in distinct):
            distinct.append(tag)
    returned = len(distinct) < len(span)
    moved = from_write and len(distinct) > 1
    if not (returned or moved):
        return None
    held = any(weak_match(tag, d) for tag in f.if_match.tags for d in distinct)
    if not held and f.trace is not None:
        return None  # the lineage knows If-Match from elsewhere: not one of these values
    values = [str(tag) for tag in distinct][:6]
    return Decision(Cause.UNSTABLE_ETAG, {"values": values, "flips": len(span) - 1})


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


def _concurrent_write(f: _Facts) -> Decision | None:
    if f.trace is None:
        return None
    trace = f.trace[1]
    age = trace.age(f.failure.ts)
    if age > f.context.window:
        return None
    evidence: dict[str, Any] = {"race_seconds": round(age, 3)}
    winner = trace.superseded_by
    if winner is not None:
        evidence["winner"] = {
            "request_id": winner.request_id,
            "client_id": winner.client_id,
            "ts": winner.ts,
        }
        evidence["superseded_seconds_ago"] = round(age, 3)
    else:
        # No logged write replaced If-Match: the winning write was not logged, but came after.
        evidence["winner"] = None
    return Decision(Cause.CONCURRENT_WRITE, evidence)


def _cross_resource(f: _Facts) -> Decision | None:
    if f.trace is not None:
        return None
    for tag in f.if_match.tags:
        owner = f.context.etag_owners.get(str(tag))
        if owner is not None and owner != f.failure.resource_id and is_high_entropy(tag):
            return Decision(Cause.CROSS_RESOURCE, {"other_resource": owner, "if_match": _raw(tag)})
    return None


def _stale_etag(f: _Facts) -> Decision | None:
    if f.trace is not None:
        trace = f.trace[1]
        if trace.superseded_by is None:
            return None  # replaced by an unlogged write, longer ago than W: cannot tell
        return Decision(
            Cause.STALE_ETAG,
            {
                "superseded_seconds_ago": round(trace.age(f.failure.ts), 3),
                "superseded_by": trace.superseded_by.request_id,
            },
        )
    if f.current is None:
        return None
    current_format = fingerprint(f.current)
    if any(fingerprint(tag) == current_format for tag in f.if_match.tags):
        return Decision(Cause.STALE_ETAG, {"superseded_seconds_ago": None, "unknown_etag": True})
    return None


# The rules that read only the failure itself, never its context: they come first, so a
# failure one of them decides needs no lineage (settling stops reading it: `decided_alone`).
ALONE: tuple[Rule, ...] = (
    _missing_precondition,
    _business_conflict,
    _resource_gone,
    _create_conflict,
    _weak_etag,
    _proxy_rewrite,
)
RULES: tuple[Rule, ...] = (
    *ALONE,
    _format_change,
    _unstable_etag,
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


def _facts(failure: Event, context: Context) -> _Facts:
    return _Facts(
        failure=failure,
        context=context,
        if_match=parse_precondition(failure.if_match),
        if_none_match=parse_precondition(failure.if_none_match),
        current=parse_etag(failure.current_etag) if failure.current_etag else None,
    )


def classify_failure(failure: Event, context: Context) -> Decision:
    """The cause of one failure: the first rule of RULES that matches, else unknown."""
    facts = _facts(failure, context)
    for rule in RULES:
        decision = rule(facts)
        if decision is not None:
            return decision
    return _unknown(facts)


def decided_alone(failure: Event) -> bool:
    """Whether the failure's cause follows from the failure alone (a rule of ALONE matches):
    then `classify_failure` gives it whatever the context holds."""
    facts = _facts(failure, _NO_CONTEXT)
    return any(rule(facts) is not None for rule in ALONE)


_NO_CONTEXT = Context()
