"""The settle worker: settling in its own process, at a lower CPU priority than ingest.

Ingest and classification both cost Python CPU, and one process has one core's worth. With
Redis as the shared state, a separate process settles while the serving and ingest processes
store batches. Ingest comes first: while the serving process reports more batches in flight than
ingest processes, the worker waits before each claim (up to PW_SETTLE_YIELD_SECONDS), so a
burst is stored at the rate the ingest processes parse it and classified when it ends. What
the worker decides is counted by the serving process, which takes it from the store (see
settle.py), so `/metrics` stays one scrape target with exemplars and a worker that dies takes
no count with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable
from multiprocessing.sharedctypes import Synchronized

import uvloop
from prometheus_client import CollectorRegistry

from collector.logs import get_logger
from collector.metrics import Metrics
from collector.processes import start_child
from collector.settings import Settings
from collector.settle import Settler
from collector.store import Store

log = get_logger("collector.worker")
NICENESS = 10
PARENT_CHECK_SECONDS = 0.2
# Small claims, two services at a time: a settling script holds Redis while it runs (about
# 60 us per failure), and every ingest batch waits behind it. A claim of 500 held it for tens
# of milliseconds; 100 lets ingest commands in between.
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


def run(
    settings_json: str,
    busy: Synchronized[int] | None = None,
    parent: int | None = None,
) -> None:
    """The worker process's entry point: settle until the serving process goes away."""
    settings = start_child(settings_json, "pw-settle")
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    # uvloop, as uvicorn picks for the serving process: its sockets and loop run in C. The
    # serving process's pid as it passed it: if it died while this one started, getppid() here
    # would already name the process that adopted this one, and the worker would never stop.
    uvloop.run(_settle(settings, os.getppid() if parent is None else parent, busy))


async def _settle(settings: Settings, parent: int, busy: Synchronized[int] | None = None) -> None:
    store = Store.from_settings(settings)
    # Its own registry: nothing scrapes it; what counts goes to the parent.
    settler = Settler(
        store,
        Metrics(CollectorRegistry()),
        window=settings.concurrency_window_seconds,
        lateness=settings.allowed_lateness_seconds,
        batch_size=CLAIM_BATCH,
        lanes=LANES,
    )
    settler.drains = False
    settler.before_claim = claim_gate(busy, settings.settle_yield_seconds)
    task = asyncio.create_task(settler.run(settings.settle_interval_seconds))
    try:
        while os.getppid() == parent and not task.done():
            await asyncio.sleep(PARENT_CHECK_SECONDS)
        if not task.done():
            log.warning("settle_worker_exiting", reason="the serving process is gone")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await store.close()


class SettleWorker:
    """The serving process's handle on its worker: start, restart, stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: multiprocessing.process.BaseProcess | None = None
        context = multiprocessing.get_context("spawn")
        # Shared memory the worker reads before each claim; one writer, no lock needed.
        self._busy: Synchronized[int] = context.Value("b", 0, lock=False)

    def ingest_busy(self, busy: bool) -> None:
        """Tell the worker whether ingest is saturated (it gives way while it is)."""
        self._busy.value = int(busy)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        process = context.Process(
            target=run,
            args=(self.settings.child_json(), self._busy, os.getpid()),
            name="precondition-watch-settle",
            daemon=True,
        )
        process.start()
        self.process = process
        log.info("settle_worker_started", pid=process.pid)

    def alive(self) -> bool:
        """Whether the settle process is running."""
        return self.process is not None and self.process.is_alive()

    def check(self) -> None:
        """Start a new worker if the last one died (its leased failures are claimed again)."""
        if self.process is not None and not self.process.is_alive():
            log.warning("settle_worker_died", exitcode=self.process.exitcode)
            self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.join(timeout=5)
            self.process = None
