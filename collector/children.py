"""The serving process's child processes (ingest, settle): started, watched, restarted, stopped.

A `Child` is started with `multiprocessing`'s spawn (a fresh interpreter, nothing of the serving
process's event loop or sockets) and gets the collector's settings as JSON, secrets included
(`Settings.child_json`). In the child, `main(settings, *args)` runs on uvloop until it returns
or the serving process goes away: a child started with `channel=True` also gets a `Channel`,
the parent's way to send it messages and read its answers.

A child never outlives the serving process, even one SIGKILLed while the child was starting:
spawn leaves the child the read end of a pipe whose write end only the parent holds, so the
kernel closes it when the parent dies and the child's loop sees end of file. That beats
polling `getppid()`, which names the adopter already if the parent died during the imports.

Channel frames: a 4-byte length, then a pickle; both ends are this program.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable, Coroutine
from multiprocessing.process import BaseProcess
from typing import Any

import uvloop

from collector.logs import configure_logging, get_logger
from collector.processes import name_process, tune_gc
from collector.settings import Settings

log = get_logger("collector.children")
Main = Callable[..., Coroutine[Any, Any, None]]
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 5.0
_LENGTH = struct.Struct("!I")
_READY = "ready"  # a channel child's first frame: imports done, taking messages


class Channel:
    """Pickled messages over a stream socket, in order, for one event loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ended = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: object) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> Any:
        """The next message; EOFError once the other end is gone."""
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            return pickle.loads(await self._reader.readexactly(length))
        except EOFError:  # asyncio.IncompleteReadError is one
            self._ended = True
            raise
        except OSError as exc:  # a reset, or the socket closed under the read
            self._ended = True
            raise EOFError(str(exc)) from exc

    @property
    def closed(self) -> bool:
        return self._ended or self._writer.is_closing()

    def close(self) -> None:
        self._writer.close()


class ChildNotStartedError(RuntimeError):
    """A channel child exited or stayed silent before it said it was ready."""


class Child:
    """One child process: `main(settings, [channel,] *args)` in a process of its own."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        main: Main,
        *args: object,
        niceness: int = 0,
        channel: bool = False,
    ) -> None:
        self.settings = settings
        self.name = name  # as `ps` and `top` show it: up to 15 bytes
        self.main = main  # a module-level coroutine function: spawn imports it by name
        self.args = args
        self.niceness = niceness
        self.with_channel = channel
        self.process: BaseProcess | None = None
        self.channel: Channel | None = None  # the parent's end, once `connect` returned
        self._sock: socket.socket | None = None  # the parent's end before that

    def start(self) -> None:
        """Start the process; a channel child then needs `connect()` before it is alive."""
        context = multiprocessing.get_context("spawn")
        args: tuple[object, ...] = self.args
        theirs = None
        if self.with_channel:
            self._sock, theirs = socket.socketpair()
            args = (theirs, *args)
        process = context.Process(
            target=_run,
            args=(self.main, self.settings.child_json(), self.name, self.niceness, args),
            kwargs={"channel": self.with_channel},
            name=f"precondition-watch-{self.name}",
            daemon=True,
        )
        process.start()
        if theirs is not None:
            theirs.close()  # the child has its own copy; ours would hide the child's exit
        self.process = process
        log.info("child_started", process=self.name, pid=process.pid)

    async def connect(self, timeout: float = START_TIMEOUT_SECONDS) -> Channel:
        """Wait until a channel child is ready: a message sent before would wait for its
        imports. Stops the child and raises ChildNotStartedError if it never says so."""
        assert self._sock is not None, "start() a channel child first"
        channel = await Channel.open(self._sock)
        self._sock = None
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see Settler.run
                ready = await channel.receive()
        except (EOFError, TimeoutError) as exc:
            channel.close()
            self._end()
            raise ChildNotStartedError(f"{self.name} did not start: {exc!r}") from exc
        if ready != _READY:
            channel.close()
            self._end()
            raise ChildNotStartedError(f"{self.name} said {ready!r} instead of ready")
        self.channel = channel  # only now alive: nothing is sent before the child is ready
        return channel

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        """Whether the process runs (and, for a channel child, its channel is open)."""
        if self.process is None or not self.process.is_alive():
            return False
        return not self.with_channel or (self.channel is not None and not self.channel.closed)

    def restart_if_dead(self) -> bool:
        """Start a new process if the last one died (or stopped talking); whether it did. A
        channel child counts as dead until `connect()` returned: call it right after."""
        if self.process is None or self.alive():
            return False
        log.warning("child_died", process=self.name, exitcode=self.process.exitcode)
        self._end()
        self.start()
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """End the process (see `_end`); a stopped child is not restarted."""
        self._end(timeout)
        self.process = None

    def _end(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Close the channel; SIGTERM, then SIGKILL if the process is still there after
        `timeout` seconds (one stuck in a C call, or ignoring SIGTERM)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        process = self.process
        if process is None:
            return
        process.terminate()
        process.join(timeout)
        if process.is_alive():
            log.warning("child_killed", process=self.name, pid=process.pid)
            process.kill()
            process.join(timeout)


def _run(
    main: Main,
    settings_json: str,
    name: str,
    niceness: int,
    args: tuple[object, ...],
    *,
    channel: bool,
) -> None:
    """A child process's entry point: its settings, logs, name, GC pace and priority, then
    `main` on uvloop."""
    # Ctrl-C reaches the whole process group: the serving process stops its children in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_format)
    name_process(name)
    tune_gc()
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    # uvloop, as uvicorn picks for the serving process: its sockets and loop run in C.
    uvloop.run(_until_orphaned(main, settings, args, channel))


async def _until_orphaned(
    main: Main, settings: Settings, args: tuple[object, ...], channel: bool
) -> None:
    """Run `main` until it returns or the serving process is gone."""
    parent = multiprocessing.parent_process()
    assert parent is not None and parent.sentinel is not None
    loop = asyncio.get_running_loop()
    orphaned: asyncio.Future[None] = loop.create_future()

    def parent_gone() -> None:  # the pipe stays readable at end of file: set it once
        if not orphaned.done():
            orphaned.set_result(None)

    loop.add_reader(parent.sentinel, parent_gone)
    if channel:  # its socket came first (see Child.start)
        sock, *rest = args
        assert isinstance(sock, socket.socket)
        opened = await Channel.open(sock)
        opened.send(_READY)
        args = (opened, *rest)
    task = asyncio.create_task(main(settings, *args))
    try:
        await asyncio.wait([task, orphaned], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.warning("child_exiting", reason="the serving process is gone")
    finally:
        loop.remove_reader(parent.sentinel)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # its finally blocks close what it opened; a crash is raised here
