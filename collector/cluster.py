"""Redis Cluster: the store's commands routed to the primary that owns each key's slot.

`ClusterTransport` keeps the slot map (`CLUSTER SLOTS`), sends each node its share of a batch
in one round trip, all nodes at once, and puts the replies back in the batch's order. A
command that Redis did not run (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN` during a failover)
is sent again where it now belongs, until the timeout. A node that cannot be reached makes the
call fail (StoreUnavailableError) after the map is read again: its commands may have run, and
only the store knows which of its writes are safe to repeat (all of an ingest's are; a shipper
retries the batch). A batch that wrote to a primary with replicas ends with `WAIT 1`: it is
acknowledged only once a replica has it, so a failover loses nothing that was acknowledged.
The store splits its scripts and transactions by slot (`slot_groups`); the hash tags of the
key schema keep each resource's keys, and each service's, in one slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from collector.transport import (
    ERRORS,
    BulkConnections,
    Command,
    StoreUnavailableError,
    check,
    unwrap_exec,
)

SLOTS = 16384
# Commands that write nothing: a node's batch of only these needs no WAIT.
_READS = frozenset(
    {"HGETALL", "HMGET", "HEXISTS", "ZRANGE", "ZREVRANGE", "ZSCORE", "ZCARD", "PING"}
)
# Replies that say the command did not run and will run once the cluster settles.
_TRANSIENT = ("TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN")


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of the whole key."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    crc = 0
    for byte in raw:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS


def key_of(command: Command) -> Any:
    """The key a command is routed by: a script's first key, else its first argument ("" for
    a command with none, such as PING: any node will do)."""
    if command[0] in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else ""
    return command[1] if len(command) > 1 else ""


Node = tuple[str, int]


class ClusterTransport:
    """The store's transport on Redis Cluster (PW_REDIS_CLUSTER=true)."""

    single_node = False

    def __init__(
        self, options: dict[str, Any], *, timeout: float = 5.0, connections: int = 2
    ) -> None:
        self._options = options
        self._timeout = timeout
        self._size = connections
        self._seeds: list[Node] = [(options.get("host", "localhost"), options.get("port", 6379))]
        self._owner: list[Node | None] = [None] * SLOTS
        self._replicated: set[Node] = set()
        self._pools: dict[Node, BulkConnections] = {}
        self._slots_of: dict[Any, int] = {}
        self._refreshing: asyncio.Lock | None = None

    # -- the slot map ---------------------------------------------------------------------

    def slot(self, key: Any) -> int:
        slot = self._slots_of.get(key)
        if slot is None:
            if len(self._slots_of) > 200_000:  # bounded: keys come and go with resources
                self._slots_of.clear()
            slot = self._slots_of[key] = key_slot(key)
        return slot

    def slot_groups(self, keys: Sequence[Any]) -> list[list[int]]:
        """Indexes of `keys` grouped by slot: one script call or transaction per group."""
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(self.slot(key), []).append(index)
        return list(groups.values())

    def _pool(self, node: Node) -> BulkConnections:
        pool = self._pools.get(node)
        if pool is None:
            options = {**self._options, "host": node[0], "port": node[1], "db": 0}
            pool = self._pools[node] = BulkConnections(options, self._size, self._timeout)
        return pool

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            errors = []
            for node in [*self._seeds, *self._pools]:
                try:
                    (reply,) = check(await self._pool(node).run([("CLUSTER", "SLOTS")]))
                except StoreUnavailableError as exc:
                    errors.append(f"{node[0]}:{node[1]}: {exc}")
                    continue
                owner: list[Node | None] = [None] * SLOTS
                replicated = set()
                for first, last, primary, *replicas in reply:
                    node_of: Node = (primary[0].decode() or node[0], int(primary[1]))
                    owner[first : last + 1] = [node_of] * (last - first + 1)
                    if replicas:
                        replicated.add(node_of)
                self._owner, self._replicated = owner, replicated
                for known in set(self._pools) - set(owner) - set(self._seeds):
                    self._pools.pop(known).close()
                return
            raise StoreUnavailableError("no cluster node answered: " + "; ".join(errors))

    # -- running commands -----------------------------------------------------------------

    async def run(self, commands: Sequence[Command], *, atomic: bool = False) -> list[Any]:
        if self._owner[0] is None:
            await self.refresh()
        # A unit is what must run together on one node: one command, or a slot's transaction.
        if atomic:
            units = self.slot_groups([key_of(c) for c in commands])
        else:
            units = [[i] for i in range(len(commands))]
        replies: list[Any] = [None] * len(commands)
        asking: dict[int, Node] = {}  # unit -> the node an ASK sent it to
        pending = list(range(len(units)))
        deadline = time.monotonic() + self._timeout
        while True:
            by_node: dict[Node, list[int]] = {}
            for unit in pending:
                node = asking.get(unit) or self._owner[self.slot(key_of(commands[units[unit][0]]))]
                if node is None:
                    raise StoreUnavailableError("a slot has no primary in the cluster map")
                by_node.setdefault(node, []).append(unit)
            sends = [
                self._send(node, [(units[u], u in asking) for u in us], commands, atomic)
                for node, us in by_node.items()
            ]
            results = await asyncio.gather(*sends, return_exceptions=True)
            pending, refresh = [], False
            for (node, us), result in zip(by_node.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, StoreUnavailableError):
                        await self._forget(node)
                    raise result
                for unit, unit_replies in zip(us, result, strict=True):
                    redirect = _redirect(unit_replies)
                    if redirect is None:
                        for index, reply in zip(units[unit], unit_replies, strict=True):
                            replies[index] = reply
                        continue
                    kind, slot, target = redirect
                    asking.pop(unit, None)
                    if kind == "ASK":
                        asking[unit] = target
                    elif kind == "MOVED":
                        self._owner[slot] = target
                        refresh = True  # one slot moved: others likely did too
                    pending.append(unit)
            if not pending:
                return replies
            if time.monotonic() > deadline:
                raise StoreUnavailableError("the cluster did not settle: failover or resharding")
            if refresh:
                await self.refresh()
            elif not asking:
                await asyncio.sleep(0.05)  # TRYAGAIN or CLUSTERDOWN: give the cluster a moment

    async def _send(
        self,
        node: Node,
        units: list[tuple[list[int], bool]],
        commands: Sequence[Command],
        atomic: bool,
    ) -> list[list[Any]]:
        """One node's units (command indexes, and whether an ASK sent them) in one round trip;
        each unit's replies, a transaction's unwrapped."""
        wire: list[Command] = []
        spans: list[tuple[int, int]] = []
        writes = False
        for unit, ask in units:
            if ask:
                wire.append(("ASKING",))
            start = len(wire)
            if atomic:
                wire.append(("MULTI",))
            for index in unit:
                command = commands[index]
                writes = writes or command[0] not in _READS
                wire.append(command)
            if atomic:
                wire.append(("EXEC",))
            spans.append((start, len(wire)))
        wait = writes and node in self._replicated
        if wait:
            wire.append(("WAIT", 1, max(1, int(self._timeout * 500))))
        raw = await self._pool(node).run(wire)
        if wait and not (isinstance(raw[-1], int) and raw[-1] >= 1):
            raise StoreUnavailableError(f"no replica of {node[0]}:{node[1]} acknowledged the write")
        return [unwrap_exec(raw[a:b]) if atomic else raw[a:b] for a, b in spans]

    async def _forget(self, node: Node) -> None:
        """A node stopped answering: drop its connections and read the map again (a replica
        may own its slots by the next call)."""
        pool = self._pools.pop(node, None)
        if pool is not None:
            pool.close()
        with contextlib.suppress(StoreUnavailableError):  # the next call tries again
            await self.refresh()

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _redirect(replies: list[Any]) -> tuple[str, int, Node] | None:
    """Why a unit must be sent again: the first MOVED or ASK with its slot and node, or a
    transient error (TRANSIENT); None when it ran."""
    for reply in replies:
        if isinstance(reply, ERRORS):
            text = str(reply)
            word, _, rest = text.partition(" ")
            if word in ("MOVED", "ASK"):
                slot, _, address = rest.partition(" ")
                host, _, port = address.rpartition(":")
                return word, int(slot), (host, int(port))
            if word in _TRANSIENT:
                return "TRANSIENT", -1, ("", 0)
    return None
