"""Admission: a bound on the request bytes the collector holds at once, so memory stays bounded
however hard senders push.

Every body the collector is reading, decompressing or storing holds its size against one
budget (`PW_MAX_INFLIGHT_BYTES`). A request that would take the total past it is refused at
once with 503 and `Retry-After`, before its body is read, instead of queueing: a shipper
retries it later, and nothing of it was acknowledged. One request is always admitted when
nothing else is in flight, so a body under `PW_MAX_BODY_BYTES` can never be refused forever.
"""

from __future__ import annotations


class OverloadedError(Exception):
    """The collector holds as many request bytes as it may; nothing was stored."""


class Admission:
    """The in-flight byte budget of one process."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self.refused = 0

    def take(self, n: int) -> None:
        """Hold `n` more bytes, or raise OverloadedError (holding nothing more)."""
        if self.held and self.held + n > self.max_bytes:
            self.refused += 1
            raise OverloadedError(
                f"{self.held} request bytes in flight, PW_MAX_INFLIGHT_BYTES is {self.max_bytes}"
            )
        self.held += n

    def give_back(self, n: int) -> None:
        self.held -= n
