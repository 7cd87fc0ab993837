"""How the store's commands reach Redis: one protocol, a transport per kind of deployment.

A transport takes a list of commands, sends them in one round trip (per node, on a cluster)
and returns one reply per command, in order, error replies as values (`check` raises on
them). The store builds commands; transports only move them:

- `BulkTransport`: plain TCP or a Unix socket, RESP packed and parsed by hiredis in C, a few
  connections so batches overlap. The production path for one Redis.
- `RedisPyTransport`: redis-py's pipeline, for TLS and for the embedded fakeredis.
- `ClusterTransport` (collector/cluster.py): Redis Cluster, commands routed by slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
from redis.exceptions import NoScriptError, RedisError

Command = tuple[Any, ...]


class StoreUnavailableError(Exception):
    """Redis cannot be reached or answered with an error; nothing was acknowledged."""


class Transport(Protocol):
    # True where every key lives on one server, which runs a round trip's commands in order.
    single_node: bool

    def slot_groups(self, keys: Sequence[Any]) -> list[list[int]]:
        """Indexes of `keys` grouped so that each group may be one script call's or one
        transaction's keys: all of them on one server, one group per slot on a cluster."""
        ...

    async def run(self, commands: Sequence[Command], *, atomic: bool = False) -> list[Any]:
        """One reply per command, error replies as values. With `atomic`, the commands run as
        one MULTI/EXEC transaction: all of them or, if Redis dies first, none (its AOF drops a
        transaction it did not finish writing); on a cluster, one transaction per slot.
        Raises StoreUnavailableError when Redis cannot be reached."""
        ...

    async def close(self) -> None: ...


# What an error reply is, from hiredis or redis-py: a tuple made once, as every reply of a
# batch is checked against it.
ERRORS = (hiredis.ReplyError, RedisError)


# What a Redis Cluster node answers a client that treats it as a standalone server.
_CLUSTER_ERRORS = ("MOVED ", "ASK ", "CROSSSLOT ", "CLUSTERDOWN ")


def check(replies: list[Any]) -> list[Any]:
    """The replies, unless one is an error."""
    for reply in replies:
        if isinstance(reply, ERRORS):
            if str(reply).startswith(_CLUSTER_ERRORS):
                raise StoreUnavailableError(
                    f"Redis answered {str(reply).split()[0]}: PW_REDIS_URL names a node of a "
                    "Redis Cluster; set PW_REDIS_CLUSTER=true"
                )
            raise StoreUnavailableError(f"Redis answered: {reply}")
    return replies


def is_noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError) or (
        isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
    )


def unwrap_exec(replies: list[Any]) -> list[Any]:
    """The replies of `MULTI, commands..., EXEC` as those of the commands: the queued errors or
    the aborted EXEC's error where the transaction did not run."""
    queued, done = replies[1:-1], replies[-1]
    errors = [reply for reply in queued if isinstance(reply, ERRORS)]
    if errors or not isinstance(done, list):
        return [*errors, done] if errors else [done]
    return done


class BulkConnection:
    """One connection that takes many plain commands in one write and reads every reply with
    hiredis in C."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        options = self._options
        if options.get("path"):
            reader, writer = await asyncio.open_unix_connection(options["path"])
        else:
            reader, writer = await asyncio.open_connection(
                options.get("host", "localhost"), options.get("port", 6379)
            )
        self._reader, self._writer = reader, writer
        setup: list[Command] = []
        password, user = options.get("password"), options.get("username")
        if password:
            setup.append(("AUTH", user, password) if user else ("AUTH", password))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        if setup:
            try:
                check(await self._exchange(setup))
            except StoreUnavailableError:
                self.close()  # not authenticated: never use this connection
                raise

    async def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(b"".join([hiredis.pack_command(c) for c in commands]))
        await self._writer.drain()
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            data = await self._reader.read(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the connection")
            parser.feed(data)
            reply = parser.gets()
            while reply is not False:
                replies.append(reply)
                reply = parser.gets()
        return replies

    async def run(self, commands: Sequence[Command], timeout: float) -> list[Any]:
        """Every reply, error replies included: each was read, so the connection stays usable."""
        if self._reader is not None and self._reader.at_eof():
            self.close()  # Redis closed it while it sat idle (a restart): never send on it
        try:
            if self._writer is None:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(timeout):
                    await self._connect()
            async with asyncio.timeout(timeout):
                return await self._exchange(commands)
        except (OSError, TimeoutError, hiredis.ProtocolError) as exc:
            self.close()  # replies may be half read: start over on a new connection
            raise StoreUnavailableError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class BulkConnections:
    """A few `BulkConnection`s to one server; each carries one batch at a time."""

    def __init__(self, options: dict[str, Any], size: int, timeout: float) -> None:
        self.timeout = timeout
        self._idle: asyncio.Queue[BulkConnection] = asyncio.Queue()
        self._all = [BulkConnection(options) for _ in range(size)]
        for connection in self._all:
            self._idle.put_nowait(connection)

    async def run(self, commands: Sequence[Command]) -> list[Any]:
        connection = await self._idle.get()
        try:
            return await connection.run(commands, self.timeout)
        finally:
            self._idle.put_nowait(connection)

    def close(self) -> None:
        for connection in self._all:
            connection.close()


def one_group(keys: Sequence[Any]) -> list[list[int]]:
    """`slot_groups` on one server: every key in one group."""
    return [list(range(len(keys)))] if keys else []


class BulkTransport:
    """Plain commands by the thousand, bypassing redis-py's pipeline.

    redis-py reads a pipeline's replies with one await each, which costs the collector more
    than Redis spends running a small command, and a batch sends a command per event.
    """

    single_node = True
    slot_groups = staticmethod(one_group)

    def __init__(self, options: dict[str, Any], *, size: int = 4, timeout: float = 5.0) -> None:
        self._connections = BulkConnections(options, size, timeout)

    async def run(self, commands: Sequence[Command], *, atomic: bool = False) -> list[Any]:
        if not atomic:
            return await self._connections.run(commands)
        return unwrap_exec(await self._connections.run([("MULTI",), *commands, ("EXEC",)]))

    async def close(self) -> None:
        self._connections.close()


class RedisPyTransport:
    """redis-py's pipeline: TLS connections and the embedded fakeredis."""

    single_node = True
    slot_groups = staticmethod(one_group)

    def __init__(self, client: Any) -> None:
        self.client = client

    async def run(self, commands: Sequence[Command], *, atomic: bool = False) -> list[Any]:
        try:
            pipe = self.client.pipeline(transaction=atomic)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        except (RedisError, OSError) as exc:
            raise StoreUnavailableError(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        await self.client.aclose()


class PackInC:
    """redis-py connection mixin: RESP-encode commands with hiredis instead of redis-py's Python
    loop, which copies its growing buffer once per argument (a batch script has hundreds)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0].encode() if isinstance(args[0], str) else args[0]
        if b" " in name:  # "SCRIPT LOAD": the server wants the words as separate arguments
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]
