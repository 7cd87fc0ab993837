"""Ingest processes: batches parsed and stored beside the serving process.

Splitting, parsing and storing a batch cost about 30 us of Python per event, and a process has
one core's worth: one serving process stored at most about 28,000 events/s with the second
core half idle. With a real Redis, the serving process keeps HTTP and the metrics and hands
each body to one of `PW_INGEST_PROCESSES` processes, which splits, parses and stores it and
sends back the answer and what to count. Nothing is acknowledged that a process did not store:
if one dies, its batches in flight answer 503 and the shipper retries (a retried batch changes
nothing that is already stored).

Each process is a collector.children `Child` with a channel: the serving process sends
`(id, Job)` and the process answers `(id, Done)`, in whatever order batches finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass, field

from collector.children import Channel, Child, ChildNotStartedError
from collector.ingest import Ingestor, StoredBatch
from collector.logs import get_logger
from collector.payload import PayloadError
from collector.pseudonym import resource_ids
from collector.settings import Settings
from collector.store import Store, StoreUnavailableError
from collector.wire import EVENTS, decode_body

log = get_logger("collector.ingest_pool")


@dataclass(slots=True)
class Job:
    """One body to store, as the serving process received it (decompressed)."""

    body: bytes
    content_type: str | None
    default_service: str | None
    received_at: float
    wire: str = EVENTS  # which endpoint's format (collector.wire)


@dataclass(slots=True)
class Done:
    """An ingest process's answer: the stored batch, or the body's error (a 4xx), and the Redis
    round trips it timed meanwhile, for the serving process's latency metrics."""

    records: int = 0
    batch: StoredBatch | None = None
    payload_error: tuple[int, str] | None = None
    crashed: str | None = None  # a bug, not bad input: answered 500
    redis_timings: list[tuple[str, float, bool]] = field(default_factory=list)


# -- the ingest process -----------------------------------------------------------------------


async def _serve(settings: Settings, channel: Channel) -> None:
    """An ingest process's main: store batches until the serving process goes away."""
    store = Store.from_settings(settings)
    # Round trips of every batch in flight; each answer takes what has gathered so far, so
    # each timing reaches the serving process exactly once.
    timings: list[tuple[str, float, bool]] = []
    store.observer = lambda operation, seconds, failed: timings.append((operation, seconds, failed))
    # No metrics here: the serving process counts what comes back.
    ingestor = Ingestor(
        store,
        max_clock_skew=settings.max_clock_skew_seconds,
        resource_ids=resource_ids(settings),
    )

    async def store_job(job_id: int, job: Job) -> None:
        done = Done()
        try:
            records = decode_body(job.wire, job.body, job.content_type)
            done.records = len(records)
            done.batch = await ingestor.store_batch(
                records, default_service=job.default_service, received_at=job.received_at
            )
        except PayloadError as exc:
            done.payload_error = (exc.status, exc.message)
        except Exception as exc:  # never leave the serving process waiting for an answer
            log.exception("ingest_failed")
            done.crashed = repr(exc)
        done.redis_timings = timings[:]
        timings.clear()
        channel.send((job_id, done))

    running: set[asyncio.Task[None]] = set()
    try:
        while True:
            job_id, job = await channel.receive()
            task = asyncio.create_task(store_job(job_id, job))
            running.add(task)
            task.add_done_callback(running.discard)
    except EOFError:
        pass  # the serving process closed its end: it is stopping or gone
    finally:
        for task in running:
            task.cancel()
        await store.close()


# -- the serving process's side ---------------------------------------------------------------


class _Process:
    """One ingest process and the jobs it has not answered yet."""

    def __init__(self, settings: Settings) -> None:
        self.process = Child(settings, "pw-ingest", _serve, channel=True)
        self.waiting: dict[int, asyncio.Future[Done]] = {}
        self._channel: Channel | None = None
        self._reading: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Take batches once the (re)started process is ready; raises ChildNotStartedError."""
        self._channel = await self.process.connect()
        # Each process its own jobs: a reader that ends late fails only those it was sent.
        self.waiting = {}
        self._reading = asyncio.create_task(
            self._read(self._channel, self.waiting), name="ingest-replies"
        )

    async def _read(self, channel: Channel, waiting: dict[int, asyncio.Future[Done]]) -> None:
        try:
            while True:
                job_id, done = await channel.receive()
                future = waiting.pop(job_id, None)
                if future is not None and not future.done():
                    future.set_result(done)
        except EOFError:
            pass
        finally:
            _fail(waiting)

    def send(self, job_id: int, job: Job) -> asyncio.Future[Done]:
        assert self._channel is not None
        future: asyncio.Future[Done] = asyncio.get_running_loop().create_future()
        self.waiting[job_id] = future
        self._channel.send((job_id, job))
        return future

    @property
    def alive(self) -> bool:
        return self.process.alive()

    def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        _fail(self.waiting)
        self.process.stop()


def _fail(waiting: dict[int, asyncio.Future[Done]]) -> None:
    """The process is gone: its unanswered batches were not acknowledged (the shipper retries
    them, and what they did store is deduplicated)."""
    for future in waiting.values():
        if not future.done():
            future.set_exception(StoreUnavailableError("ingest process exited"))
    waiting.clear()


class IngestPool:
    """The serving process's handle on its ingest processes: start, store, restart, stop."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings = settings
        self.size = size
        self._processes: list[_Process] = []
        self._ids = itertools.count()

    async def start(self) -> None:
        for _ in range(self.size):
            process = _Process(self.settings)
            process.process.start()
            await process.connect()
            self._processes.append(process)

    async def store(self, job: Job) -> Done:
        """Store a body in the least busy live process; raises PayloadError for an unreadable
        body, StoreUnavailableError when Redis or the process failed."""
        live = [p for p in self._processes if p.alive]
        if not live:
            raise StoreUnavailableError("no ingest process is running")
        process = min(live, key=lambda p: len(p.waiting))
        done = await process.send(next(self._ids), job)
        if done.payload_error is not None:
            raise PayloadError(*done.payload_error)
        if done.crashed is not None:
            raise RuntimeError(f"ingest process failed: {done.crashed}")
        return done

    def alive(self) -> int:
        """How many ingest processes are running."""
        return sum(1 for process in self._processes if process.alive)

    async def check(self) -> None:
        """Start a new process for each one that died (or try again at the next check)."""
        for process in self._processes:
            if process.process.restart_if_dead():
                try:
                    await process.connect()
                except ChildNotStartedError as exc:
                    log.error("ingest_process_not_started", error=str(exc))

    def stop(self) -> None:
        for process in self._processes:
            with contextlib.suppress(Exception):
                process.stop()
        self._processes.clear()
