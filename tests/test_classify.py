"""Classification rules: each cause, the precedence between them, and the edge cases."""

from __future__ import annotations

import pytest

from collector.classify import (
    RULES,
    Cause,
    Context,
    PriorFailure,
    Sighting,
    classify_failure,
    decided_alone,
)
from collector.event import Event

T = 1_790_000_000.0
MD5_A = '"9e107d9d372bb6826bd81d3542a419d6"'
MD5_B = '"e4d909c290d0fb1ca068ffaddf22cbd0"'
MD5_C = '"d41d8cd98f00b204e9800998ecf8427e"'


def failure(**kw: object) -> Event:
    fields: dict[str, object] = {
        "ts": T,
        "service": "shop",
        "request_id": "f-1",
        "resource_id": "ord-1",
        "status": 412,
        "if_match": MD5_A,
        "current_etag": MD5_B,
        "client_id": "web/u1",
    }
    fields.update(kw)
    return Event(**fields)  # type: ignore[arg-type]


def lineage(*writes: tuple[float, str], client: str = "web/u9") -> list[Sighting]:
    return [Sighting(ts, f"w-{i}", "w", etag, client) for i, (ts, etag) in enumerate(writes)]


def seen(ts: float, etag: str, rid: str, *, kind: str = "f", im: str = "", version: str = ""):
    return Sighting(ts, rid, kind, etag, "web/u7", im, version)


def test_rule_order_is_the_documented_precedence() -> None:
    """RULES lists the rules in the order the module docstring documents."""
    names = [rule.__name__.strip("_") for rule in RULES]
    assert names == [
        "missing_precondition",
        "business_conflict",
        "resource_gone",
        "create_conflict",
        "weak_etag",
        "proxy_rewrite",
        "format_change",
        "unstable_etag",
        "blind_retry",
        "concurrent_write",
        "cross_resource",
        "stale_etag",
    ]


def test_concurrent_write_names_the_winner() -> None:
    """If-Match superseded 3 s before the failure by another request: a race, with its winner."""
    context = Context(lineage=lineage((T - 60, MD5_A), (T - 3, MD5_B)))
    decision = classify_failure(failure(), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["race_seconds"] == 3
    assert decision.evidence["winner"]["request_id"] == "w-1"


def test_stale_etag_past_the_window() -> None:
    """If-Match superseded more than W before the failure is a stale ETag."""
    context = Context(lineage=lineage((T - 4000, MD5_A), (T - 3600, MD5_B)))
    decision = classify_failure(failure(), context)
    assert decision.cause is Cause.STALE_ETAG
    assert decision.evidence["superseded_seconds_ago"] == 3600


def test_window_boundary_is_inclusive() -> None:
    """Superseded exactly W before still counts as a race; a millisecond more is stale."""
    at_w = Context(lineage=lineage((T - 900, MD5_A), (T - 300, MD5_B)), window=300)
    past_w = Context(lineage=lineage((T - 900, MD5_A), (T - 300.001, MD5_B)), window=300)
    assert classify_failure(failure(), at_w).cause is Cause.CONCURRENT_WRITE
    assert classify_failure(failure(), past_w).cause is Cause.STALE_ETAG


def test_writes_after_the_failure_are_ignored() -> None:
    """A write logged well after the failure cannot be the one that beat it."""
    context = Context(lineage=[seen(T - 10, MD5_A, "f-0"), *lineage((T + 5, MD5_B))])
    decision = classify_failure(failure(), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["winner"] is None  # superseded by a write that was not logged


def test_a_write_stamped_just_after_the_failure_it_caused_is_the_winner() -> None:
    """Instances' clocks differ: a write stamped 1.5 s after the failure, whose ETag the failure
    already saw as current, happened before it and won the race."""
    context = Context(lineage=lineage((T - 10, MD5_A), (T + 1.5, MD5_B)))
    decision = classify_failure(failure(), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["winner"]["request_id"] == "w-1"
    assert decision.evidence["race_seconds"] == 0


def test_resource_seen_for_the_first_time() -> None:
    """No lineage at all: an If-Match of the current format is an unknown, stale ETag."""
    decision = classify_failure(failure(), Context())
    assert decision.cause is Cause.STALE_ETAG
    assert decision.evidence["unknown_etag"] is True


def test_unknown_when_nothing_fits() -> None:
    """A first-seen resource with an If-Match of another format and no deploys: unknown."""
    decision = classify_failure(failure(if_match='"v3"'), Context())
    assert decision.cause is Cause.UNKNOWN


@pytest.mark.parametrize(
    ("kw", "cause"),
    [
        ({"status": 428, "if_match": None, "current_etag": None}, Cause.MISSING_PRECONDITION),
        (
            {"status": 409, "if_match": None, "current_etag": None, "reason": "stock"},
            Cause.BUSINESS_CONFLICT,
        ),
        ({"if_match": "*", "current_etag": None}, Cause.RESOURCE_GONE),
        ({"if_match": None, "if_none_match": "*"}, Cause.CREATE_CONFLICT),
        ({"current_etag": 'W/"9e107d9d"', "if_match": 'W/"9e107d9d"'}, Cause.WEAK_ETAG),
        ({"if_match": MD5_B[:-1] + '-gzip"'}, Cause.PROXY_REWRITE),
        ({"if_match": "W/" + MD5_B}, Cause.PROXY_REWRITE),
        ({"if_match": MD5_B.strip('"')}, Cause.PROXY_REWRITE),
        ({"if_match": MD5_B + "-br"}, Cause.PROXY_REWRITE),
    ],
)
def test_each_header_driven_cause(kw: dict[str, object], cause: Cause) -> None:
    """Causes decided by the failure's own headers need no context."""
    assert classify_failure(failure(**kw), Context()).cause is cause


def test_version_conflict_409_is_classified_like_412() -> None:
    """A 409 carrying If-Match and a current ETag (Kubernetes style) is a race, not business."""
    context = Context(lineage=lineage((T - 60, MD5_A), (T - 2, MD5_B)))
    assert classify_failure(failure(status=409), context).cause is Cause.CONCURRENT_WRITE


def test_proxy_rewrite_evidence_names_the_kinds() -> None:
    """nginx gzip weakens and Apache appends -gzip: both kinds are in the evidence."""
    decision = classify_failure(failure(if_match="W/" + MD5_B[:-1] + '-gzip"'), Context())
    assert decision.cause is Cause.PROXY_REWRITE
    assert decision.evidence["rewrite"] == ["weakened", "suffix_gzip"]


def test_format_change_after_a_deploy() -> None:
    """If-Match in v1's md5 format, current ETag in v2's format: the deploy changed ETags."""
    context = Context(
        lineage=lineage((T - 600, MD5_A)),
        formats={"v1": {"S:hex32": T - 3600}, "v2": {"S:v{N}-x": T - 100}},
        versions=[("v1", T - 3600), ("v2", T - 100)],
    )
    decision = classify_failure(failure(current_etag='"v2-4f1a"', deploy_version="v2"), context)
    assert decision.cause is Cause.FORMAT_CHANGE
    assert decision.evidence["previous_version"] == "v1"
    assert decision.evidence["current_format"] == "S:v{N}-x"


def test_no_format_change_without_an_earlier_version() -> None:
    """A format never seen under an earlier deploy is not a deploy's doing."""
    context = Context(
        formats={"v2": {"S:v{N}-x": T - 100}},
        versions=[("v2", T - 100)],
    )
    decision = classify_failure(failure(current_etag='"v2-4f1a"', deploy_version="v2"), context)
    assert decision.cause is not Cause.FORMAT_CHANGE


def test_blind_retry_counts_earlier_attempts() -> None:
    """The same client, resource and If-Match failing again within W is a blind retry."""
    prior = [
        PriorFailure(T - 4, "f-0", 412, "bot", MD5_A),
        PriorFailure(T - 2, "f-00", 412, "bot", MD5_A),
        PriorFailure(T - 1, "other", 412, "someone-else", MD5_A),
    ]
    context = Context(lineage=lineage((T - 60, MD5_A), (T - 5, MD5_B)), prior_failures=prior)
    decision = classify_failure(failure(client_id="bot"), context)
    assert decision.cause is Cause.BLIND_RETRY
    assert decision.evidence["retry_count"] == 2
    assert decision.evidence["first_failure"] == "f-0"


def test_first_failure_of_a_retry_loop_keeps_its_own_cause() -> None:
    """The first 412 of a retrying client has no earlier attempt: it is the race."""
    context = Context(lineage=lineage((T - 60, MD5_A), (T - 5, MD5_B)))
    assert classify_failure(failure(client_id="bot"), context).cause is Cause.CONCURRENT_WRITE


def test_cross_resource_with_high_entropy_etag() -> None:
    """A 32-hex If-Match that belongs to another resource, never this one: cross_resource."""
    context = Context(lineage=lineage((T - 60, MD5_C)), etag_owners={MD5_A: "ord-2"})
    decision = classify_failure(failure(current_etag=MD5_C), context)
    assert decision.cause is Cause.CROSS_RESOURCE
    assert decision.evidence["other_resource"] == "ord-2"


def test_low_entropy_etag_is_never_cross_resource() -> None:
    """Counters like "1" repeat across resources by coincidence: not cross_resource."""
    context = Context(lineage=lineage((T - 60, '"2"')), etag_owners={'"1"': "ord-2"})
    decision = classify_failure(failure(if_match='"1"', current_etag='"2"'), context)
    assert decision.cause is Cause.STALE_ETAG


def test_if_match_list_uses_the_most_recently_superseded_tag() -> None:
    """With `"a", "b"`, the tag superseded most recently decides between race and stale."""
    context = Context(lineage=lineage((T - 5000, MD5_C), (T - 4000, MD5_A), (T - 10, MD5_B)))
    decision = classify_failure(failure(if_match=f"{MD5_C}, {MD5_A}"), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["race_seconds"] == 10


@pytest.mark.parametrize("value", ["", "   ", '"unterminated', ",,"])
def test_empty_or_malformed_if_match_is_unknown(value: str) -> None:
    """An If-Match that cannot be read gives unknown, with the reason in the evidence."""
    decision = classify_failure(failure(if_match=value), Context())
    assert decision.cause is Cause.UNKNOWN
    assert decision.evidence.get("malformed_if_match") is True


def test_star_with_tags_is_malformed_not_resource_gone() -> None:
    """`*` mixed with tags is not a valid If-Match and is not read as `*`."""
    decision = classify_failure(failure(if_match=f"*, {MD5_A}"), Context())
    assert decision.cause is not Cause.RESOURCE_GONE


def test_weak_origin_beats_proxy_rewrite() -> None:
    """When the origin itself is weak, the proxy is not blamed."""
    decision = classify_failure(failure(if_match='W/"abc"-gzip', current_etag='W/"abc"'), Context())
    assert decision.cause is Cause.WEAK_ETAG


def test_race_named_from_the_winners_if_match() -> None:
    """If-Match never seen as anyone's ETag, but it was the If-Match of the write 2 s before."""
    context = Context(lineage=[seen(T - 2, MD5_B, "w-1", kind="w", im=MD5_A)])
    decision = classify_failure(failure(), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["winner"]["request_id"] == "w-1"
    assert decision.evidence["race_seconds"] == 2


def test_unstable_etag_when_current_flips_back_without_a_write() -> None:
    """The current ETag went A, B, A with no write between, and If-Match is one of them."""
    a, b = '"1f2e-4d2-5f0a1b2c"', '"3c4d-4d2-5f0a1b2c"'
    context = Context(
        lineage=[
            seen(T - 30, a, "w-1", kind="w", version="1"),
            seen(T - 20, b, "f-a", version="1"),
            seen(T - 10, a, "f-b", version="1"),
        ]
    )
    decision = classify_failure(failure(if_match=b, current_etag=a, deploy_version="1"), context)
    assert decision.cause is Cause.UNSTABLE_ETAG
    assert decision.evidence == {"values": [a, b], "flips": 2}


def test_no_unstable_etag_across_a_write_or_a_deploy() -> None:
    """A value that comes back only across a write, or across a version, is not a flip."""
    a, b, c = '"aaaa-1"', '"bbbb-1"', '"cccc-1"'
    across_write = Context(
        lineage=[
            seen(T - 30, a, "w-1", kind="w"),
            seen(T - 20, b, "w-2", kind="w", im=a),
            seen(T - 10, a, "w-3", kind="w", im=b),
        ]
    )
    decision = classify_failure(failure(if_match=b, current_etag=a), across_write)
    assert decision.cause is not Cause.UNSTABLE_ETAG
    across_deploy = Context(
        lineage=[seen(T - 30, a, "f-1", version="1"), seen(T - 20, c, "f-2", version="2")],
        versions=[("1", T - 3600), ("2", T - 25)],
    )
    decision = classify_failure(
        failure(if_match=c, current_etag=a, deploy_version="2"), across_deploy
    )
    assert decision.cause is not Cause.UNSTABLE_ETAG


def test_format_change_when_a_deploy_regenerates_etags_in_the_same_shape() -> None:
    """If-Match was current under v1, no write replaced it, v2 answers a new value of the same
    shape: the deploy changed how ETags are computed (say, a new hash salt)."""
    context = Context(
        lineage=[seen(T - 900, MD5_A, "w-1", kind="w", version="v1")],
        versions=[("v1", T - 3600), ("v2", T - 120)],
        formats={"v1": {"S:hex32": T - 3600}, "v2": {"S:hex32": T - 120}},
    )
    decision = classify_failure(failure(deploy_version="v2"), context)
    assert decision.cause is Cause.FORMAT_CHANGE
    assert decision.evidence["previous_version"] == "v1"
    assert decision.evidence["current_version"] == "v2"
    assert decision.evidence["same_shape"] is True


def test_a_logged_write_after_the_deploy_is_still_a_race() -> None:
    """If-Match current under v1, then superseded by a logged write under v2 seconds ago: a race
    across the deploy, not a format change."""
    context = Context(
        lineage=[
            seen(T - 900, MD5_A, "w-1", kind="w", version="v1"),
            seen(T - 4, MD5_B, "w-2", kind="w", im=MD5_A, version="v2"),
        ],
        versions=[("v1", T - 3600), ("v2", T - 120)],
    )
    decision = classify_failure(failure(deploy_version="v2"), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["winner"]["request_id"] == "w-2"


def test_a_delete_ends_the_span_of_current_values() -> None:
    """Values seen before a DELETE do not make a value after it come back."""
    a, b = '"aaaa-1"', '"bbbb-1"'
    context = Context(
        lineage=[seen(T - 30, a, "f-1"), seen(T - 25, "", "d-1", kind="d"), seen(T - 20, b, "f-2")]
    )
    decision = classify_failure(failure(if_match=b, current_etag=a), context)
    assert decision.cause is not Cause.UNSTABLE_ETAG


def test_unstable_etag_when_current_moves_off_a_logged_write_without_one() -> None:
    """The write made A current; now the server says C with no write since: replicas disagree,
    for a client holding A and for one holding a value no write ever replaced."""
    a, b, c = '"1f2e-4d2-5f0a"', '"3c4d-4d2-5f0a"', '"5e6f-4d2-5f0a"'
    context = Context(lineage=[seen(T - 30, a, "w-1", kind="w", im=MD5_A)])
    for held in (a, b):
        decision = classify_failure(failure(if_match=held, current_etag=c), context)
        assert decision.cause is Cause.UNSTABLE_ETAG, held
        assert decision.evidence["values"] == [a, c]


def test_a_change_with_no_logged_write_at_all_is_a_race() -> None:
    """Where the resource's writes are not logged, a new current value is an unlogged write."""
    context = Context(lineage=[seen(T - 30, MD5_A, "f-0")])
    decision = classify_failure(failure(), context)
    assert decision.cause is Cause.CONCURRENT_WRITE
    assert decision.evidence["winner"] is None


@pytest.mark.parametrize(
    ("fields", "alone"),
    [
        ({"status": 428, "if_match": None}, True),
        ({"status": 409, "if_match": None, "current_etag": None}, True),
        ({"if_match": "*"}, True),
        ({"if_match": None, "if_none_match": "*"}, True),
        ({"current_etag": 'W/"abc"'}, True),
        ({"if_match": MD5_B[:-1] + '-gzip"'}, True),
        ({}, False),  # a race or a stale tab: only the lineage tells
        ({"if_match": MD5_C}, False),
    ],
)
def test_what_the_failure_alone_decides_no_context_changes(
    fields: dict[str, object], alone: bool
) -> None:
    """Settling stops reading the lineage of a failure `decided_alone` says is decided: its
    cause must then be the same whatever the context holds."""
    event = failure(**fields)
    assert decided_alone(event) is alone
    rich = Context(
        lineage=[
            seen(T - 30, MD5_A, "w-1", kind="w"),
            seen(T - 10, MD5_B, "w-2", kind="w", im=MD5_A),
            seen(T - 5, MD5_C, "f-0"),
        ],
        prior_failures=[PriorFailure(T - 20, "f-0", 412, "web/u1", MD5_A)],
        etag_owners={MD5_A: "ord-2"},
        versions=[("v1", T - 100)],
    )
    if alone:
        assert classify_failure(event, rich) == classify_failure(event, Context())
