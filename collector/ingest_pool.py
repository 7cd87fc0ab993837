"""Ingest processes: batches parsed and stored beside the serving process.

Splitting, parsing and storing a batch cost about 30 us of Python per event, and a process has
one core's worth: one serving process stored at most about 28,000 events/s with the second
core half idle. With a real Redis, the serving process keeps HTTP and the metrics and hands
each body to one of `PW_INGEST_PROCESSES` processes, which splits, parses and stores it and
sends back the answer and what to count. Nothing is acknowledged that a process did not store:
if one dies, its batches in flight answer 503 and the shipper retries (a retried batch changes
nothing that is already stored).

Frames on a socket pair: a 4-byte length, then a pickle of `(id, payload)`; both ends are this
program, started by the serving process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import pickle
import socket
import struct
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from collector.ingest import Ingestor, StoredBatch
from collector.logs import get_logger
from collector.metrics import Metrics
from collector.payload import PayloadError
from collector.processes import start_child
from collector.pseudonym import resource_ids
from collector.settings import Settings
from collector.store import Store, StoreUnavailableError
from collector.wire import EVENTS, decode_body

log = get_logger("collector.ingest_pool")
_LENGTH = struct.Struct("!I")
READY = (-1, None)  # an ingest process's first frame: imports done, taking batches
START_TIMEOUT_SECONDS = 60.0


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


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))


def _socket_of(conn: Connection) -> socket.socket:
    """The socket under a multiprocessing Pipe end (a socket pair on Unix), for asyncio."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    return sock


# -- the ingest process -----------------------------------------------------------------------


def run(settings_json: str, conn: Connection) -> None:
    """An ingest process's entry point: store batches until the serving process goes away."""
    settings = start_child(settings_json, "pw-ingest")
    uvloop.run(_serve(settings, _socket_of(conn)))


async def _serve(settings: Settings, sock: socket.socket) -> None:
    store = Store.from_settings(settings)
    # Round trips of every batch in flight; each answer takes what has gathered so far, so
    # each timing reaches the serving process exactly once.
    timings: list[tuple[str, float, bool]] = []
    store.observer = lambda operation, seconds, failed: timings.append((operation, seconds, failed))
    # Its own registry: nothing scrapes it; the serving process counts what comes back.
    ingestor = Ingestor(
        store,
        Metrics(CollectorRegistry()),
        max_clock_skew=settings.max_clock_skew_seconds,
        resource_ids=resource_ids(settings),
    )
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(_frame(READY))

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
        writer.write(_frame((job_id, done)))

    running: set[asyncio.Task[None]] = set()
    try:
        while True:
            job_id, job = await _read_frame(reader)
            task = asyncio.create_task(store_job(job_id, job))
            running.add(task)
            task.add_done_callback(running.discard)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the serving process closed its end: it is stopping or gone
    finally:
        for task in running:
            task.cancel()
        await store.close()


# -- the serving process's side ---------------------------------------------------------------


class _Process:
    """One ingest process and the jobs it has not answered yet."""

    def __init__(self, settings: Settings) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        self.process = context.Process(
            target=run,
            args=(settings.child_json(), theirs),
            name="precondition-watch-ingest",
            daemon=True,
        )
        self.process.start()
        theirs.close()
        self.sock = _socket_of(ours)
        self.waiting: dict[int, asyncio.Future[Done]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Wait until the process is ready: a batch sent before would wait for its imports."""
        reader, self.writer = await asyncio.open_connection(sock=self.sock)
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):  # not wait_for: see Settler.run
                ready = await _read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"ingest process did not start: {exc!r}") from exc
        if ready != READY:
            raise RuntimeError(f"ingest process said {ready!r} instead of ready")
        self.reading = asyncio.create_task(self._read(reader), name="ingest-replies")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                job_id, done = await _read_frame(reader)
                future = self.waiting.pop(job_id, None)
                if future is not None and not future.done():
                    future.set_result(done)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.fail_waiting()

    def fail_waiting(self) -> None:
        """The process is gone: its unanswered batches were not acknowledged (the shipper
        retries them, and what they did store is deduplicated)."""
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(StoreUnavailableError("ingest process exited"))
        self.waiting.clear()

    @property
    def alive(self) -> bool:
        return self.reading is not None and not self.reading.done() and self.process.is_alive()

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.reading is not None:
            self.reading.cancel()
        self.fail_waiting()
        self.process.terminate()
        self.process.join(timeout=5)


class IngestPool:
    """The serving process's handle on its ingest processes: start, store, restart, stop."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings = settings
        self.size = size
        self._processes: list[_Process] = []
        self._ids = itertools.count()

    async def start(self) -> None:
        for _ in range(self.size):
            self._processes.append(await self._started())
        log.info("ingest_processes_started", pids=[p.process.pid for p in self._processes])

    async def _started(self) -> _Process:
        process = _Process(self.settings)
        await process.connect()
        return process

    async def store(self, job: Job) -> Done:
        """Store a body in the least busy live process; raises PayloadError for an unreadable
        body, StoreUnavailableError when Redis or the process failed."""
        live = [p for p in self._processes if p.alive]
        if not live:
            raise StoreUnavailableError("no ingest process is running")
        process = min(live, key=lambda p: len(p.waiting))
        assert process.writer is not None
        job_id = next(self._ids)
        future: asyncio.Future[Done] = asyncio.get_running_loop().create_future()
        process.waiting[job_id] = future
        process.writer.write(_frame((job_id, job)))
        done = await future
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
        for index, process in enumerate(self._processes):
            if not process.alive:
                log.warning("ingest_process_died", exitcode=process.process.exitcode)
                process.stop()
                try:
                    self._processes[index] = await self._started()
                except RuntimeError as exc:
                    log.error("ingest_process_not_started", error=str(exc))

    def stop(self) -> None:
        for process in self._processes:
            with contextlib.suppress(Exception):
                process.stop()
        self._processes.clear()
