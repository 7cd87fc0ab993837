"""What settling reads of a resource's timeline around one failure, and the walk that picks it.

The reads are plain commands sent with the rest of a settle batch: the record and decision
(`HMGET`), the client's 412/409s in the window before the failure, and the timeline newest
first from a little after the failure, with scores. A Lua script used to walk the timeline
inside Redis; on Redis 7.0 every `redis.call` cost several times the command it made, and that
script was half of Redis's time in `make bench`. Reading and walking here costs Redis only the
commands themselves.

`Walk` is pure: fed the members read, it keeps what the classifier needs of the lineage and
says whether it must read further (a first read is short, as most If-Match tags are among the
newest sightings). Of the timeline's lineage members (`w`, `d`, `f`), newest first from the
failure's time, it keeps:

- the writes stamped up to `skew` after the failure (another instance's clock may put the write
  the failure saw there);
- the ones containing a needle (the opaque part of an If-Match tag), each with the sighting
  just after it (what came next);
- the newest `span_limit` back to the newest write (the replicas' span).

It stops once each needle was found whole, as an ETag (`"x"` or `W/"x"`) or in a write's
If-Match, and the span is read, or after `writes_limit` writes: older sightings cannot be the
newest of that tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.etag import parse_precondition

US, RS = b"\x1f", b"\x1e"
_WRITE, _FAILURE, _OTHER = b"w"[0], b"f"[0], b"o"[0]  # a member's first byte: its kind
# Members read first for a failure: in `make bench`, 86% of walks end within 4 members, and
# each member read costs Redis about 0.7 us to format its score. A longer walk reads four
# times more each time, up to MAX_READ and never more than the writes it may still walk.
FIRST_READ = 4
MAX_READ = 256


def needles(if_match: str) -> tuple[str, list[bytes]]:
    """How a failure's If-Match is looked for: ('', []) nothing to walk (no tag), ('a', [])
    every sighting (a tag with an empty opaque is in every ETag), or ('n', opaques)."""
    tags = parse_precondition(if_match).tags if if_match else ()
    if not tags:
        return "", []
    if any(not tag.opaque for tag in tags):
        return "a", []
    return "n", [tag.opaque.encode() for tag in tags]


class Walk:
    """One failure's walk down its resource's timeline, fed one read at a time."""

    __slots__ = (
        "at_last_score",
        "done",
        "first_max",
        "in_span",
        "kept",
        "last_score",
        "mode",
        "prev",
        "read_size",
        "span_limit",
        "ts",
        "walked",
        "wanted",
        "writes",
        "writes_limit",
    )

    def __init__(
        self, ts: float, if_match: str, *, writes_limit: int, span_limit: int, skew: float
    ) -> None:
        self.ts = ts
        self.first_max = repr(ts + skew)  # the first read starts `skew` after the failure
        self.mode, wanted = needles(if_match)
        self.wanted = wanted
        self.writes_limit = writes_limit
        self.span_limit = span_limit
        self.kept: dict[bytes, Any] = {}  # member -> score, in the order kept
        self.writes = self.walked = 0
        self.prev: tuple[bytes, Any] | None = None
        self.in_span = True
        self.done = self.mode == ""
        # Where the next read starts: at this score, past the members of it already read.
        self.last_score: Any = None
        self.at_last_score = 0
        self.read_size = 0  # members the last read asked for

    def feed(self, members: Sequence[bytes], scores: Sequence[Any], asked: int) -> None:
        """Walk the members of one read (with their scores), newest first, that asked for
        `asked` members; `done` once the walk has what it needs or the timeline ended."""
        ahead = self.last_score is None or float(self.last_score) > self.ts
        if not ahead and not self.in_span and self._skip(members, scores):
            self.done = len(members) < asked
            return
        # Locals: this loop runs for every member read while settling.
        kept, wanted, every = self.kept, self.wanted, self.mode == "a"
        writes, walked, prev, in_span = self.writes, self.walked, self.prev, self.in_span
        writes_limit, walked_limit = self.writes_limit, 4 * self.writes_limit
        done = False
        read = 0
        for member, score in zip(members, scores, strict=True):
            read += 1
            if score == self.last_score:
                self.at_last_score += 1
            else:
                self.last_score, self.at_last_score = score, 1
            kind = member[0]
            if ahead:
                if float(score) > self.ts:  # stamped a little after the failure
                    if kind == _WRITE:
                        kept.setdefault(member, score)
                    continue
                ahead = False
            if kind == _OTHER:
                continue
            walked += 1
            if in_span:
                kept.setdefault(member, score)
                if kind != _FAILURE or walked >= self.span_limit:
                    in_span = False
            match = every
            if wanted:
                for needle in wanted:
                    # `in` first, in C; the kind and its separator are not part of the tag
                    if needle in member and member.find(needle, 2) >= 0:
                        match = True
                        break
                if match:
                    fields = member.split(US)
                    etag = fields[2]
                    for needle in list(wanted):
                        quoted = b'"' + needle + b'"'
                        if (
                            etag == quoted
                            or etag == b"W/" + quoted
                            or (kind != _FAILURE and quoted in fields[4])
                        ):
                            wanted.remove(needle)
            if match:
                # the newer neighbour is what came after this sighting: the classifier needs it
                if prev is not None:
                    kept.setdefault(*prev)
                kept.setdefault(member, score)
            prev = (member, score)
            if kind != _FAILURE:
                writes += 1
            if (
                writes >= writes_limit
                or walked >= walked_limit
                or (not every and not wanted and not in_span)
            ):
                done = True
                break
        self.writes, self.walked, self.prev, self.in_span = writes, walked, prev, in_span
        # the timeline's oldest member was read when a read comes back short
        self.done = done or read < asked

    def _skip(self, members: Sequence[bytes], scores: Sequence[Any]) -> bool:
        """Walk a read in which no needle occurs and the walk cannot end by counting its
        members, in C (a long walk for a tag the lineage does not hold is mostly such reads);
        False, having changed nothing, when the read must be walked member by member."""
        if self.mode != "n" or len(members) < 8:
            return False
        blob = RS.join(members)  # a tag holds no control character: no match spans two
        if any(needle in blob for needle in self.wanted):
            return False
        kinds = bytes([member[0] for member in members])
        lineage = len(kinds) - kinds.count(_OTHER)
        writes = lineage - kinds.count(_FAILURE)
        if (
            self.writes + writes >= self.writes_limit
            or self.walked + lineage >= 4 * self.writes_limit
        ):
            return False  # the walk ends inside this read
        self.writes += writes
        self.walked += lineage
        oldest_sighting = len(kinds.rstrip(b"o")) - 1  # the last member that is not `o`
        if oldest_sighting >= 0:
            self.prev = (members[oldest_sighting], scores[oldest_sighting])
        last, same = scores[-1], 1
        while same < len(scores) and scores[-1 - same] == last:
            same += 1
        if last == self.last_score and same == len(scores):
            self.at_last_score += same
        else:
            self.last_score, self.at_last_score = last, same
        return True

    def more(self, key: str) -> tuple[tuple[Any, ...], int]:
        """The next read of a walk not done, and how many members it asks for."""
        if self.last_score is None:
            start, offset, size = self.first_max, 0, FIRST_READ
        else:
            start, offset = self.last_score, self.at_last_score
            # no more than the writes still to walk, if every member left were a write
            size = min(4 * self.read_size, MAX_READ, max(self.writes_limit - self.writes, 1))
        self.read_size = size
        return ("ZREVRANGEBYSCORE", key, start, "-inf", "WITHSCORES", "LIMIT", offset, size), size
