"""Properties of the pure core under generated input: the ETag parser, the event parser and the
classifier never raise on hostile values, and say the same thing every time.

Strategies mix the realistic (quoted and weak tags, proxy suffixes, every field name the parser
reads, lineages of writes and failures over a few ETags, so that rules really match) with the
arbitrary (any text, any JSON value, any msgpack value), so both the rules and the error paths
run.
"""

from __future__ import annotations

import math
import random
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector.classify import (
    Cause,
    Context,
    Decision,
    PriorFailure,
    Sighting,
    classify_failure,
)
from collector.etag import (
    EntityTag,
    RewriteKind,
    detect_rewrite,
    fingerprint,
    parse_etag,
    parse_precondition,
    strong_match,
    weak_match,
)
from collector.event import (
    ALIASES,
    FAILURE_STATUSES,
    MAX_LENGTH,
    Defaults,
    Event,
    EventError,
    parse_event,
)

NOW = 1_790_000_000.0
DEFAULTS = Defaults("svc", NOW)
# No example database: every run (and CI's) tries the same way, and leaves nothing behind.
PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- ETags --------------------------------------------------------------------------------------

OPAQUES = st.one_of(
    st.sampled_from(["abc", "5f3e-1a2b3c", "v7", "9e107d9d372bb6826bd81d3542a419d6", ""]),
    st.text(min_size=0, max_size=40),
    st.text(alphabet="0123456789abcdef-", min_size=1, max_size=40),
)
SUFFIXES = ["", "-gzip", "--gzip", "-br", "-gunzip", "-gzip-br"]


@st.composite
def etag_texts(draw: st.DrawFn) -> str:
    """An ETag as a header carries it: mostly well formed, sometimes anything at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=60))
    opaque = draw(OPAQUES.filter(lambda text: '"' not in text))
    weak = draw(st.sampled_from(["", "W/", "w/"]))
    quote = draw(st.sampled_from(['"', '"', ""]))
    space = draw(st.sampled_from(["", " ", "\t", "\r\n"]))
    return f"{space}{weak}{quote}{opaque}{quote}{draw(st.sampled_from(SUFFIXES))}{space}"


tags = st.builds(
    EntityTag,
    opaque=OPAQUES.filter(lambda text: '"' not in text),
    weak=st.booleans(),
    quoted=st.booleans(),
)
printable_tags = st.builds(
    EntityTag,
    opaque=st.text(alphabet="abcdef0123456789-_.:/", min_size=1, max_size=40),
    weak=st.just(False),
)


@PROPERTY
@given(etag_texts())
@example("W/")
@example('"\x00"')
@example('"a"-gzip-gzip')
def test_parse_etag_never_raises_and_renders_back(text: str) -> None:
    """Any text parses to None or a tag free of control characters; a quoted tag's canonical
    form parses back to the same tag."""
    tag = parse_etag(text)
    if tag is None:
        return
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in tag.opaque)
    if tag.quoted:
        assert parse_etag(str(tag)) == tag


@PROPERTY
@given(st.one_of(etag_texts(), st.lists(etag_texts(), max_size=5), st.none()))
@example("*")
@example(", ,")
@example('"a", *')
@example(['"a', 'b"'])
def test_parse_precondition_never_raises(header: str | list[str] | None) -> None:
    """Any If-Match value or list of header lines parses; `*` carries no tags; it is stable."""
    parsed = parse_precondition(header)
    assert not (parsed.any and parsed.tags)
    assert parse_precondition(header) == parsed
    for tag in parsed.tags:
        assert parse_etag(str(tag)) == tag or not tag.quoted


@PROPERTY
@given(tags, tags)
def test_comparisons_are_symmetric_and_strong_implies_weak(a: EntityTag, b: EntityTag) -> None:
    """RFC 9110's comparisons: both symmetric, strong only between strong tags, and a strong
    match is also a weak one."""
    assert strong_match(a, b) == strong_match(b, a)
    assert weak_match(a, b) == weak_match(b, a)
    if strong_match(a, b):
        assert weak_match(a, b) and not a.weak and not b.weak
    assert weak_match(a, a)


@PROPERTY
@given(
    printable_tags,
    st.booleans(),
    st.lists(st.sampled_from(["-gzip", "--gzip", "-br", "-gunzip"]), max_size=3),
    st.booleans(),
)
def test_a_proxy_rewrite_is_recognised_as_exactly_what_was_done(
    current: EntityTag, weaken: bool, suffixes: list[str], unquote: bool
) -> None:
    """Weakening, suffixes and stripped quotes applied to a strong tag are detected as exactly
    those rewrites, in the report order; no rewrite at all is None."""
    sent = EntityTag(current.opaque + "".join(suffixes), weaken, quoted=not unquote)
    kinds = {RewriteKind.WEAKENED} if weaken else set()
    kinds |= {RewriteKind.UNQUOTED} if unquote else set()
    names = {"-gzip": "suffix_gzip", "--gzip": "suffix_gzip", "-br": "suffix_br"}
    kinds |= {RewriteKind(names.get(s, "suffix_gunzip")) for s in suffixes}
    expected = tuple(kind for kind in RewriteKind if kind in kinds) or None
    assert detect_rewrite(sent, current) == expected
    assert detect_rewrite(current, current) is None


@PROPERTY
@given(tags)
def test_fingerprints_are_short_plain_and_stable(tag: EntityTag) -> None:
    """A fingerprint is at most 40 characters of a plain alphabet, the same every time."""
    found = fingerprint(tag)
    assert len(found) <= 40
    assert all(c.isascii() and (c.isalnum() or c in ":{}_/-") for c in found)
    assert fingerprint(EntityTag(tag.opaque, tag.weak, tag.quoted)) == found


# -- events -------------------------------------------------------------------------------------

FIELD_NAMES = sorted({name for names in ALIASES.values() for name in names})
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson and msgpack produce
    st.floats(allow_nan=True, allow_infinity=True),  # msgpack carries NaN and infinities
    st.text(max_size=30),
    st.binary(max_size=8),  # msgpack's bin
    st.sampled_from(["412", " 200 ", "4\u00b22", "\u0664\u0661\u0662", "1e400", "NaN"]),
    st.sampled_from(["2026-09-21T10:00:00Z", "2026-09-21T10:00:00", "1790000000123"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    """An object under the names the parser reads (dotted ones flat or nested), with values
    that are sometimes right and often not."""
    obj: dict[str, Any] = {}
    if draw(st.booleans()):
        obj.update({"request_id": draw(st.text(min_size=1, max_size=12)), "status": 412})
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=8)):
        value = draw(JSON_VALUES)
        head, _, rest = name.partition(".")
        if rest and draw(st.booleans()):
            node = obj.setdefault(head, {})
            if isinstance(node, dict):
                for part in rest.split(".")[:-1]:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        break
                else:
                    node[rest.rsplit(".", 1)[-1]] = value
        else:
            obj[name] = value
    return obj


def _checked(event: Event) -> None:
    """What every parsed event holds, whatever it was parsed from."""
    assert 100 <= event.status <= 599
    assert event.request_id and event.service
    assert math.isfinite(event.ts) and 0 < event.ts <= NOW + DEFAULTS.max_clock_skew
    for name, limit in MAX_LENGTH.items():
        value = getattr(event, name)
        if value is not None:
            assert isinstance(value, str) and len(value) <= limit
            assert not any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value)


@PROPERTY
@given(st.one_of(event_objects(), JSON_VALUES))
@example({"request_id": "r", "status": 412, "ts": 10**400})
@example({"request_id": "r", "status": 10**5000})
@example({"request_id": 10**5000, "status": 412})
@example({"request_id": "r", "status": "9" * 5000})
@example({"request_id": "r", "status": 412, "route": {"a": 1}})
def test_parse_event_raises_only_event_errors_and_is_deterministic(value: object) -> None:
    """Any decoded value is an Event that keeps every limit, or an EventError naming a field;
    parsing it again gives the same answer."""
    try:
        event = parse_event(value, DEFAULTS)
    except EventError as exc:
        assert str(exc).startswith(f"{exc.field}: ")
        try:
            parse_event(value, DEFAULTS)
        except EventError as again:
            assert str(again) == str(exc)
        else:
            raise AssertionError("parsed the second time") from None
        return
    _checked(event)
    assert parse_event(value, DEFAULTS) == event


CANONICAL_VALUES = {
    "ts": st.one_of(st.floats(1e9, NOW), st.sampled_from(["2026-09-21T10:00:00Z", "abc"])),
    "status": st.one_of(st.integers(0, 700), st.sampled_from(["412", "x", True])),
    "request_id": st.one_of(st.text(max_size=10), st.integers(0, 99)),
}


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"request_id": CANONICAL_VALUES["request_id"], "status": CANONICAL_VALUES["status"]},
        optional={
            "ts": CANONICAL_VALUES["ts"],
            **{
                name: st.one_of(st.text(max_size=20), st.none(), st.integers(0, 9), JSON_VALUES)
                for name in MAX_LENGTH
                if name != "request_id"
            },
        },
    ),
    st.randoms(use_true_random=False),
)
def test_aliases_parse_like_canonical_names(canonical: dict[str, Any], rng: random.Random) -> None:
    """An event under other accepted names (camelCase, dotted, nested) parses to what its
    canonical form does, or is refused too: the fast path for canonical names and the general
    one agree."""
    aliased: dict[str, Any] = {}
    for name, value in canonical.items():
        others = [a for a in ALIASES[name][1:] if not (name == "service" and "." in a)]
        alias = rng.choice(others) if others and rng.random() < 0.7 else name
        head, _, rest = alias.partition(".")
        if rest and isinstance(value, str) and rng.random() < 0.5 and head not in aliased:
            node: dict[str, Any] = aliased.setdefault(head, {})
            for part in rest.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[rest.rsplit(".", 1)[-1]] = value
        else:
            aliased[alias] = value
    outcomes: list[Event | str] = []
    for obj in (canonical, aliased):
        try:
            outcomes.append(parse_event(obj, DEFAULTS))
        except EventError as exc:
            outcomes.append(exc.problem)
    if isinstance(outcomes[0], Event) or isinstance(outcomes[1], Event):
        assert outcomes[0] == outcomes[1]
    # Both refused: each path names the first problem it checks, which need not be the same.


# -- the classifier -----------------------------------------------------------------------------

ETAGS = [
    '"9e107d9d372bb6826bd81d3542a419d6"',
    '"e4d909c290d0fb1ca068ffaddf22cbd0"',
    '"v1-d41d8cd98f00"',
    '"17"',
    'W/"17"',
    '"17"-gzip',
    "17",
    '"9e107d9d372bb6826bd81d3542a419d6-gzip"',
    "*",
    "",
    '"a", "b"',
    "junk\x01",
]
VERSIONS = ["", "v1", "v2", "v3"]
CLIENTS = [None, "web/u1", "web/u2", "bot"]
REQUESTS = ["f-1", "w-1", "w-2", "w-3", "f-2", "f-3"]
TIMES = st.floats(NOW - 900, NOW + 5, allow_nan=False)


def _optional(values: list[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(st.none(), st.sampled_from(values))


failures = st.builds(
    Event,
    ts=st.just(NOW),
    service=st.just("shop"),
    status=st.sampled_from(sorted(FAILURE_STATUSES)),
    request_id=st.just("f-1"),
    resource_id=st.sampled_from(["ord-1", "ord-2", ""]),
    if_match=_optional(ETAGS),
    if_none_match=_optional(["*", '"17"']),
    current_etag=_optional(ETAGS),
    client_id=st.sampled_from(CLIENTS),
    deploy_version=_optional(VERSIONS),
    reason=_optional(["out of stock", "x" * 300]),
)
sightings = st.builds(
    Sighting,
    ts=TIMES,
    request_id=st.sampled_from(REQUESTS),
    kind=st.sampled_from(["w", "w", "f", "d"]),
    etag=st.sampled_from(ETAGS),
    client_id=st.sampled_from(CLIENTS),
    if_match=st.sampled_from(ETAGS),
    version=st.sampled_from(VERSIONS),
)
prior_failures = st.builds(
    PriorFailure,
    ts=TIMES,
    request_id=st.sampled_from(REQUESTS),
    status=st.sampled_from([409, 412, 428]),
    client_id=st.sampled_from(CLIENTS),
    if_match=_optional(ETAGS),
)


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    versions = draw(st.lists(st.sampled_from(VERSIONS[1:]), unique=True, max_size=3))
    starts = sorted(draw(st.lists(TIMES, min_size=len(versions), max_size=len(versions))))
    formats: dict[str, dict[str, float]] = {}
    for version, start in zip(versions, starts, strict=True):
        seen = draw(st.lists(st.sampled_from(ETAGS), max_size=3))
        parsed = [tag for tag in map(parse_etag, seen) if tag is not None]
        formats[version] = {fingerprint(tag): start for tag in parsed}
    return Context(
        lineage=draw(st.lists(sightings, max_size=12)),
        prior_failures=draw(st.lists(prior_failures, max_size=6)),
        etag_owners=draw(
            st.dictionaries(st.sampled_from(ETAGS), st.sampled_from(["ord-1", "ord-3"]))
        ),
        formats=formats,
        versions=list(zip(versions, starts, strict=True)),
        window=draw(st.floats(1, 600)),
    )


@PROPERTY
@given(failures, contexts())
def test_every_failure_gets_exactly_one_cause_the_same_every_time(
    failure: Event, context: Context
) -> None:
    """Whatever the failure and its context: no exception, one Decision with one Cause and
    evidence that stores as JSON, and the same decision on a second look."""
    decision = classify_failure(failure, context)
    assert isinstance(decision, Decision) and isinstance(decision.cause, Cause)
    orjson.dumps(decision.as_dict())  # decisions are stored as JSON
    assert classify_failure(failure, context) == decision


@PROPERTY
@given(failures, contexts(), st.randoms(use_true_random=False))
def test_the_lineage_order_does_not_matter(
    failure: Event, context: Context, rng: random.Random
) -> None:
    """The store may return the lineage in any order (the context says so): shuffled, the
    decision is the same, as long as no two sightings share a time."""
    lineage = list(context.lineage)
    if len({s.ts for s in lineage}) < len(lineage):
        lineage = [s for i, s in enumerate(lineage) if s.ts not in {t.ts for t in lineage[:i]}]
    ordered = Context(
        lineage=lineage,
        prior_failures=context.prior_failures,
        etag_owners=context.etag_owners,
        formats=context.formats,
        versions=context.versions,
        window=context.window,
    )
    shuffled = list(lineage)
    rng.shuffle(shuffled)
    mixed = Context(
        lineage=shuffled,
        prior_failures=list(reversed(context.prior_failures)),
        etag_owners=context.etag_owners,
        formats=context.formats,
        versions=context.versions,
        window=context.window,
    )
    assert classify_failure(failure, mixed) == classify_failure(failure, ordered)


@PROPERTY
@given(failures, contexts())
def test_the_certain_rules_win_whatever_the_context(failure: Event, context: Context) -> None:
    """The first rules depend on the failure alone, so no context overrides them: a 428 is a
    missing precondition, a 409 without validators a business conflict, `If-Match: *` a gone
    resource."""
    cause = classify_failure(failure, context).cause
    im = parse_precondition(failure.if_match)
    has_current = bool(failure.current_etag) and parse_etag(failure.current_etag or "") is not None
    if failure.status == 428:
        assert cause is Cause.MISSING_PRECONDITION
    elif failure.status == 409 and not ((im.tags or im.any) and has_current):
        assert cause is Cause.BUSINESS_CONFLICT
    elif im.any:
        assert cause is Cause.RESOURCE_GONE
