"""The timeline walk settling does in Python (collector/snapshot.py), fed reads by hand."""

from __future__ import annotations

from collector.snapshot import FIRST_READ, Walk, needles

US = "\x1f"


def member(kind: str, rid: str, etag: str = "", if_match: str = "") -> bytes:
    return US.join((kind, rid, etag, "", if_match, "")).encode()


def walk_all(
    walk: Walk, timeline: list[tuple[bytes, bytes]], start: str
) -> list[tuple[object, ...]]:
    """Feed `walk` the reads it asks for from `timeline` (newest first), as Redis would answer
    ZREVRANGEBYSCORE max -inf WITHSCORES LIMIT offset count; the reads it made."""
    reads: list[tuple[object, ...]] = []
    while not walk.done:
        (_, _, top, _, _, _, offset, count), size = walk.more("z", start)
        reads.append((top, offset, count))
        below = [(m, s) for m, s in timeline if float(s) <= float(top)]
        walk.feed(below[offset : offset + count], size)
    return reads


def test_needles_of_one_strong_tag_match_the_general_parser() -> None:
    assert needles('"abc"') == ("n", [b"abc"])
    assert needles('W/"abc", "d"') == ("n", [b"abc", b"d"])
    assert needles('""') == ("a", [])
    assert needles("*") == ("", [])
    assert needles("") == ("", [])


def test_a_walk_past_the_first_read_sees_every_member_once_across_equal_scores() -> None:
    """Members sharing one score across the first read's end are each walked once: the next
    read starts at that score, past the ones already read."""
    writes = [(member("w", f"w{i}", f'"t{i}"'), b"100") for i in range(5 * FIRST_READ + 3)]
    older = [(member("w", "old", '"needle"'), b"50"), (member("w", "older", '"x"'), b"40")]
    timeline = sorted(writes, key=lambda p: p[0], reverse=True) + older
    walk = Walk(100.0, '"needle"', writes_limit=100, span_limit=32)
    reads = walk_all(walk, timeline, "101")
    assert reads == [
        ("101", 0, FIRST_READ),
        (b"100", FIRST_READ, 4 * FIRST_READ),
        (b"100", 5 * FIRST_READ, 16 * FIRST_READ),
    ]
    assert walk.walked == len(writes) + 1 and walk.writes == len(writes) + 1
    # found whole as an ETag: the walk stops there, with the write just after it
    kept = [m.split(US.encode())[1] for m in walk.kept]
    assert b"old" in kept and b"older" not in kept
    assert kept[0] == timeline[0][0].split(US.encode())[1]  # the span: the newest write


def test_writes_stamped_just_after_the_failure_are_kept_and_not_walked() -> None:
    timeline = [
        (member("w", "after", '"b"', '"a"'), b"100.5"),
        (member("f", "other", '"b"'), b"100.4"),
        (member("w", "before", '"a"'), b"99"),
    ]
    walk = Walk(100.0, '"a"', writes_limit=100, span_limit=32)
    walk_all(walk, timeline, "101")
    kept = {m.split(US.encode())[1] for m in walk.kept}
    assert kept == {b"after", b"before"}
    assert walk.walked == 1


def test_a_tag_never_found_stops_after_writes_limit_writes() -> None:
    timeline = [(member("w", f"w{i}", f'"t{i}"'), str(1000 - i).encode()) for i in range(500)]
    walk = Walk(1000.0, '"nowhere"', writes_limit=100, span_limit=32)
    walk_all(walk, timeline, "1000")
    assert walk.writes == 100 and walk.done
