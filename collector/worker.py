"""The settle worker: settling in its own process, at a lower CPU priority than ingest.

Ingest and classification both cost Python CPU, and one process has one core's worth. With
Redis as the shared state, a separate process settles while the serving and ingest processes
store batches. Ingest comes first: while the serving process reports more batches in flight than
ingest processes, the worker waits before each claim (up to PW_SETTLE_YIELD_SECONDS), so a
burst is stored at the rate the ingest processes parse it and classified when it ends. What
the worker decides is counted by the serving process, which takes it from the store (see
settle.py), so `/metrics` stays one scrape target with exemplars and a worker that dies takes
no count with it. collector.children starts it, restarts it and ends it with the serving process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from multiprocessing.sharedctypes import Synchronized

from collector.children import Child
from collector.settings import Settings
from collector.settle import Settler
from collector.store import Store

NICENESS = 10
# Small claims, two services at a time: each round trip of a claim's reads and decisions is
# one pipeline of a few commands per failure, which Redis runs before the ingest commands that
# arrive meanwhile; 100 failures keep that to a few hundred commands.
CLAIM_BATCH = 100
LANES = 2
YIELD_POLL_SECONDS = 0.05


async def give_way(
    busy: Callable[[], bool], limit: float, poll: float = YIELD_POLL_SECONDS
) -> float:
    """Wait while `busy()`, at most `limit` seconds; the seconds waited.

    Ingest acknowledges what shippers send and settling only explains it later: while more
    batches arrive than ingest is storing, the settle worker leaves the CPU (and Redis) to
    them. The limit keeps settling going at one claim per lane per `limit` seconds even under
    a load that never lets up; the backlog shows in precondition_collector_pending_failures.
    """
    started = time.monotonic()
    while busy():
        left = limit - (time.monotonic() - started)
        if left <= 0:
            break
        await asyncio.sleep(min(poll, left))
    return time.monotonic() - started


def claim_gate(
    busy: Synchronized[int] | None, limit: float
) -> Callable[[], Awaitable[float]] | None:
    """What the worker awaits before each claim: give way while the serving process says ingest
    is saturated (None when there is no such signal or PW_SETTLE_YIELD_SECONDS is 0)."""
    if busy is None or limit <= 0:
        return None
    flag = busy

    def saturated() -> bool:
        return bool(flag.value)

    return lambda: give_way(saturated, limit)


async def _settle(settings: Settings, busy: Synchronized[int] | None = None) -> None:
    """The worker process's main: settle until the serving process goes away."""
    store = Store.from_settings(settings)
    # No metrics here: what it decides is counted by a serving process, from the store.
    settler = Settler(
        store,
        window=settings.concurrency_window_seconds,
        lateness=settings.allowed_lateness_seconds,
        batch_size=CLAIM_BATCH,
        lanes=LANES,
    )
    settler.before_claim = claim_gate(busy, settings.settle_yield_seconds)
    try:
        await settler.run(settings.settle_interval_seconds)
    finally:
        await store.close()


class SettleWorker:
    """The serving process's handle on its worker: start, restart, stop."""

    def __init__(self, settings: Settings) -> None:
        # Shared memory the worker reads before each claim; one writer, no lock needed.
        self._busy: Synchronized[int] = multiprocessing.get_context("spawn").Value(
            "b", 0, lock=False
        )
        self.child = Child(settings, "pw-settle", _settle, self._busy, niceness=NICENESS)

    def ingest_busy(self, busy: bool) -> None:
        """Tell the worker whether ingest is saturated (it gives way while it is)."""
        self._busy.value = int(busy)

    def start(self) -> None:
        self.child.start()

    def alive(self) -> bool:
        """Whether the settle process is running."""
        return self.child.alive()

    def check(self) -> None:
        """Start a new worker if the last one died (its leased failures are claimed again)."""
        self.child.restart_if_dead()

    def stop(self) -> None:
        self.child.stop()
