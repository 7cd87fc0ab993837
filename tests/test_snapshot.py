"""The timeline walk settling does in Python (collector/snapshot.py), fed reads by hand."""

from __future__ import annotations

import random

import pytest

from collector.snapshot import FIRST_READ, Walk, needles

US = "\x1f"


def member(kind: str, rid: str, etag: str = "", if_match: str = "") -> bytes:
    return US.join((kind, rid, etag, "", if_match, "")).encode()


def walk_all(walk: Walk, timeline: list[tuple[bytes, bytes]]) -> list[tuple[object, ...]]:
    """Feed `walk` the reads it asks for from `timeline` (newest first), as Redis would answer
    ZREVRANGEBYSCORE max -inf WITHSCORES LIMIT offset count; the reads it made."""
    reads: list[tuple[object, ...]] = []
    while not walk.done:
        (_, _, top, _, _, _, offset, count), size = walk.more("z")
        reads.append((top, offset, count))
        below = [(m, s) for m, s in timeline if float(s) <= float(top)][offset : offset + count]
        walk.feed([m for m, _ in below], [s for _, s in below], size)
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
    walk = Walk(100.0, '"needle"', writes_limit=100, span_limit=32, skew=1.0)
    reads = walk_all(walk, timeline)
    assert reads == [
        ("101.0", 0, FIRST_READ),
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
    walk = Walk(100.0, '"a"', writes_limit=100, span_limit=32, skew=1.0)
    walk_all(walk, timeline)
    kept = {m.split(US.encode())[1] for m in walk.kept}
    assert kept == {b"after", b"before"}
    assert walk.walked == 1


def test_a_tag_never_found_stops_after_writes_limit_writes() -> None:
    timeline = [(member("w", f"w{i}", f'"t{i}"'), str(1000 - i).encode()) for i in range(500)]
    walk = Walk(1000.0, '"nowhere"', writes_limit=100, span_limit=32, skew=1.0)
    walk_all(walk, timeline)
    assert walk.writes == 100 and walk.done


def test_reads_without_a_needle_walked_in_c_keep_what_the_member_loop_keeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Walk._skip` counts the reads no needle occurs in without looping over their members:
    on random timelines (writes, failures, others, shared scores, the tag present or not) it
    keeps the same sightings, reads the same stretches and ends where the loop ends."""
    used = [_compare(seed, monkeypatch) for seed in range(60)]
    assert sum(used) >= 20  # the timelines exercise the path, not only the loop


def _compare(seed: int, monkeypatch: pytest.MonkeyPatch) -> bool:
    """One random timeline walked with `_skip` and without; whether `_skip` took a read."""
    rng = random.Random(seed)
    timeline = []
    score = 10_000.0
    for i in range(rng.randrange(5, 600)):
        kind = rng.choice("wwwwffo")
        score -= rng.choice([0.0, 0.0, 1.0, 2.5])  # equal scores across read boundaries
        tag = f'"t{rng.randrange(400)}"'
        if kind == "o":
            item = f"o{US}r{i}".encode()
        else:
            item = member(kind, f"r{i}", tag, f'"t{rng.randrange(400)}"' if kind == "w" else "")
        timeline.append((item, repr(score).encode()))
    if_match = rng.choice(['"t7"', '"nowhere"', '"t3", "t5"', '"t399"'])
    limit = rng.choice([5, 20, 100])

    def walked() -> tuple[object, ...]:
        walk = Walk(10_000.0, if_match, writes_limit=limit, span_limit=8, skew=1.0)
        reads = walk_all(walk, timeline)
        return (list(walk.kept.items()), walk.writes, walk.walked, reads)

    skipped: list[bool] = []
    skip = Walk._skip

    def spying(self: Walk, members: list[bytes], scores: list[bytes]) -> bool:
        skipped.append(skip(self, members, scores))
        return skipped[-1]

    monkeypatch.setattr(Walk, "_skip", spying)
    with_c = walked()
    monkeypatch.setattr(Walk, "_skip", lambda self, members, scores: False)
    assert walked() == with_c, f"seed {seed}"
    monkeypatch.undo()
    return any(skipped)
