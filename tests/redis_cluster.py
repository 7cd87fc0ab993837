"""A real Redis Cluster on loopback for tests: N masters with R replicas each, built with
`redis-cli --cluster create` from the same `redis-server` the rest of the suite uses.

    with RedisCluster() as cluster:          # 3 masters, 1 replica each
        node = cluster.node_for_key("{a:b}:x")
        cluster.kill_primary(node)
        promoted = cluster.wait_for_failover(node)
        cluster.restart(node)                # rejoins as a replica of `promoted`

Everything is inspected with plain `redis.Redis` clients, one per node (`CLUSTER NODES`,
`CLUSTER INFO`, `INFO replication`), so the harness does not depend on redis-py's cluster
client; `cluster_client()` hands one out for tests that want it.

Nothing sleeps a fixed time: every wait polls a condition against a deadline and, when it
times out, says what it last saw.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import find_binary

T = TypeVar("T")

SLOTS = 16384

# How long a node may be unreachable before it is flagged PFAIL. Failover takes roughly this
# long, plus gossip to reach FAIL (a majority of masters), plus the replica's election delay
# (500 ms + up to 500 ms random + 1 s per rank). 1000 ms keeps a failover around 2 s; much
# lower risks spurious failovers when the 2-core machine stalls a node (fsync, a busy
# neighbour) for longer than the timeout.
NODE_TIMEOUT_MS = 1000

# How long start/failover/restart waits before giving up: generous, because the machine is
# shared, while the expected times are a few seconds.
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class NodeView:
    """One line of `CLUSTER NODES`, as one node sees another (or itself)."""

    node_id: str
    host: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # for a replica: the id of its master
    link_state: str  # "connected" or "disconnected"
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """The `CLUSTER NODES` reply: `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent>
    <pong-recv> <config-epoch> <link-state> <slot>...`, slots as `n` or `a-b`; the
    `[slot->-id]` / `[slot-<-id]` entries of a migration in progress are skipped."""
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split(",", 1)[0].split("@", 1)[0]
        host, _, port = address.rpartition(":")
        slots: set[int] = set()
        for item in fields[8:]:
            if item.startswith("["):
                continue
            first, _, last = item.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        views.append(
            NodeView(
                node_id=fields[0],
                host=host,
                port=int(port) if port else 0,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                link_state=fields[7],
                slots=frozenset(slots),
            )
        )
    return views


def parse_info_text(text: str) -> dict[str, str]:
    """`CLUSTER INFO`'s `key:value` lines."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


class NodeExited(RuntimeError):
    """A redis-server the harness waits for has exited: no point polling on."""


def poll(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `condition()` until it returns something truthy, and return that. Errors other
    than `NodeExited` count as not yet (a node still loading, a connection refused). After
    `timeout` seconds, raise with the last error and, if given, `describe()` of the state."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except NodeExited:
            raise
        except Exception as error:  # not ready yet can be any error
            last_error = error
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f"; last error: {last_error!r}" if last_error is not None else ""
    if describe is not None:
        with contextlib.suppress(Exception):
            detail += "\n" + describe()
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def reserve_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: every socket stays bound until all are chosen,
    so the kernel cannot hand the same port out twice."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(eq=False)
class ClusterNode:
    """One redis-server of the cluster: its client port, bus port, directory and process."""

    port: int
    bus_port: int
    dir: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str = ""  # filled in once the server is up (`CLUSTER MYID`)
    _client: redis.Redis | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def client(self) -> redis.Redis:
        """A plain client to this node (replies decoded), shared by the harness's checks."""
        if self._client is None:
            self._client = redis.Redis(
                host="127.0.0.1",
                port=self.port,
                decode_responses=True,
                # redis-py 8 retries a failed command 10 times with exponential backoff by
                # default: seconds per call on a killed node. The harness polls by itself.
                retry=Retry(NoBackoff(), 0),
                socket_timeout=5,
                socket_connect_timeout=2,
            )
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def execute(self, *args: str | bytes | int) -> Any:
        """A raw command on this node (redis-py leaves `execute_command` untyped)."""
        return self.client().execute_command(*args)  # type: ignore[no-untyped-call]

    def cluster_nodes(self) -> list[NodeView]:
        # "CLUSTER", "NODES" as two arguments: redis-py's reply callback is keyed on
        # "CLUSTER NODES", so this way the reply comes back as the raw text parsed above.
        return parse_cluster_nodes(self.execute("CLUSTER", "NODES"))

    def myself(self) -> NodeView:
        return next(view for view in self.cluster_nodes() if "myself" in view.flags)

    def cluster_info(self) -> dict[str, str]:
        return parse_info_text(self.execute("CLUSTER", "INFO"))

    def replication(self) -> dict[str, object]:
        info: dict[str, object] = self.client().info("replication")
        return info

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's stderr and log file."""
        text = []
        for path in (self.dir / "stderr.log", self.log):
            with contextlib.suppress(OSError):
                text.extend(path.read_text(errors="replace").splitlines())
        return "\n".join(text[-lines:]) or "(no log)"

    def __repr__(self) -> str:
        state = "up" if self.alive else "down"
        return f"<ClusterNode {self.port} {self.node_id[:8] or '?'} {state}>"


@dataclass(frozen=True)
class FailoverTiming:
    """What `failover_primary_of` did and how long it took, in seconds from the SIGKILL."""

    killed: ClusterNode
    promoted: ClusterNode
    promoted_after: float  # the replica reported itself master
    ok_after: float  # ...and every live node reported cluster_state:ok with the new owner


class RedisCluster:
    """A Redis Cluster of real `redis-server` processes on 127.0.0.1, each in its own temp dir.

    `start()` returns once every node reports `cluster_state:ok`, all 16384 slots are
    assigned and every master has its replicas connected and in sync. `stop()` (or leaving
    the `with` block) kills every process and removes the directories; a failed `start()`
    stops whatever it had started before raising.
    """

    def __init__(self, *, node_timeout_ms: int = NODE_TIMEOUT_MS) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []
        self.replicas_per_master = 0
        self.started_in: float | None = None  # seconds `start()` took
        self._root: Path | None = None
        # What kill_primary saw just before the kill: the killed node's replicas and slots.
        self._killed: dict[int, tuple[list[ClusterNode], frozenset[int]]] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> RedisCluster:
        if not self.nodes:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(
        self, masters: int = 3, replicas: int = 1, *, timeout: float = DEFAULT_TIMEOUT
    ) -> RedisCluster:
        """Launch masters*(1+replicas) servers, `redis-cli --cluster create` them and wait
        until the cluster is healthy (see `wait_until_healthy`)."""
        if self.nodes:
            raise RuntimeError("cluster already started")
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        began = time.monotonic()
        self.replicas_per_master = replicas
        atexit.register(self.stop)  # a crashed test run must not leave servers behind
        try:
            self._root = Path(tempfile.mkdtemp(prefix="pw-redis-cluster-"))
            count = masters * (1 + replicas)
            ports = reserve_ports(2 * count)
            for index in range(count):
                node_dir = self._root / f"node-{index}"
                node_dir.mkdir()
                node = ClusterNode(
                    port=ports[2 * index], bus_port=ports[2 * index + 1], dir=node_dir
                )
                self.nodes.append(node)
                self._launch(node)
            for node in self.nodes:
                self._wait_until_up(node, timeout)
            self._create(timeout)
            for node in self.nodes:
                node.node_id = node.execute("CLUSTER", "MYID")
            self.wait_until_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _command(self, node: ClusterNode) -> list[str]:
        return [
            find_binary("redis-server"),
            "--port",
            str(node.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--dir",
            str(node.dir),
            "--logfile",
            str(node.log),
            "--loglevel",
            "notice",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            # An explicit bus port (Redis 7+): the default, port + 10000, is past 65535 for
            # half of Linux's ephemeral range and may be taken by anything else.
            "--cluster-port",
            str(node.bus_port),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica always counts as fresh enough to be promoted, however long its link
            # to the master has been down: failover must not be refused because the machine
            # was slow (the default, 10, allows node-timeout * 10 + the ping period).
            "--cluster-replica-validity-factor",
            "0",
            # No replica migration: the topology stays exactly what `start` built, so a test
            # knows which node replicates which (migration only moves a replica off a master
            # with more than the barrier, 1, but an explicit "no" rules it out).
            "--cluster-allow-replica-migration",
            "no",
            # Not set: cluster-allow-reads-when-down (default no). The tests want the real
            # behaviour, where a slot without an owner refuses reads until the failover ends.
            # Full syncs start at once: Redis 7 defaults to diskless sync with a 5 s delay
            # to batch replicas, which would add 5 s to the start and to every rejoin.
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            # Replicas ping their master every second (default 10), so a broken link shows
            # up in INFO replication soon after.
            "--repl-ping-replica-period",
            "1",
            # Durable as a real deployment would be: every write fsynced before the reply.
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]

    def _launch(self, node: ClusterNode) -> None:
        # The log file only takes over once the config is read: a bad option or an
        # unusable port goes to stderr, kept next to it for `log_tail`.
        with open(node.dir / "stderr.log", "ab") as stderr:
            node.process = subprocess.Popen(
                self._command(node),
                cwd=node.dir,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )

    def _wait_until_up(self, node: ClusterNode, timeout: float) -> None:
        def up() -> bool:
            if not node.alive:
                raise NodeExited(f"redis-server on port {node.port} exited:\n{node.log_tail()}")
            return bool(node.client().ping())

        poll(up, timeout=timeout, what=f"redis-server on port {node.port}", interval=0.02)

    def _create(self, timeout: float) -> None:
        result = subprocess.run(
            [
                find_binary("redis-cli"),
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas_per_master),
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def stop(self) -> None:
        """Kill every server (SIGKILL: nothing is kept) and remove the directories. Safe to
        call more than once and on a cluster that only partly started."""
        for node in self.nodes:
            node.close_client()
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
                node.process = None
        self.nodes = []
        self._killed = {}
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        atexit.unregister(self.stop)

    # --- addresses and topology -----------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """redis://127.0.0.1:port of every node, live or not."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """The URL of one live node (a cluster client finds the others from it)."""
        return self._any_live().url

    @property
    def live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive]

    def _any_live(self) -> ClusterNode:
        for node in self.nodes:
            if node.alive:
                return node
        raise RuntimeError("no live node in the cluster")

    def node(self, node_id_or_port: str | int) -> ClusterNode:
        """The node with this id (or a unique prefix of it) or client port."""
        for node in self.nodes:
            if node.port == node_id_or_port or (
                isinstance(node_id_or_port, str)
                and node_id_or_port
                and node.node_id.startswith(node_id_or_port)
            ):
                return node
        raise KeyError(node_id_or_port)

    def _view(self, via: ClusterNode | None = None) -> list[NodeView]:
        """`CLUSTER NODES` as `via` (default: the first live node) sees it."""
        return (via or self._any_live()).cluster_nodes()

    def primaries(self, via: ClusterNode | None = None) -> list[ClusterNode]:
        """The masters that own slots and are not flagged failing, ordered by first slot."""
        views = [v for v in self._view(via) if v.is_master and v.slots and not v.failing]
        return [self.node(v.node_id) for v in sorted(views, key=lambda v: min(v.slots))]

    def replicas_of(
        self, primary: ClusterNode, via: ClusterNode | None = None
    ) -> list[ClusterNode]:
        """The nodes replicating `primary`, failing or not, as a live node sees them."""
        return [
            self.node(v.node_id)
            for v in self._view(via)
            if not v.is_master and v.master_id == primary.node_id
        ]

    def slots_of(self, primary: ClusterNode, via: ClusterNode | None = None) -> frozenset[int]:
        for view in self._view(via):
            if view.node_id == primary.node_id:
                return view.slots
        return frozenset()

    def keyslot(self, key: str | bytes) -> int:
        slot: int = self._any_live().execute("CLUSTER", "KEYSLOT", key)
        return slot

    def node_for_key(self, key: str | bytes) -> ClusterNode:
        """The master that owns `key`'s slot (`CLUSTER KEYSLOT`, then `CLUSTER NODES`)."""
        slot = self.keyslot(key)
        for view in self._view():
            if view.is_master and slot in view.slots:
                return self.node(view.node_id)
        raise LookupError(f"slot {slot} has no owner")

    def cluster_client(self, **options: object) -> redis.cluster.RedisCluster:
        """redis-py's cluster client, started from every live node."""
        startup = [
            redis.cluster.ClusterNode("127.0.0.1", node.port)  # type: ignore[no-untyped-call]
            for node in self.live
        ]
        return redis.cluster.RedisCluster(startup_nodes=startup, **options)  # type: ignore[arg-type]

    # --- health ---------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Why the cluster is not healthy yet; empty when it is. Healthy: every live node
        reports cluster_state:ok with all slots assigned, knows every node, and sees the same
        slot owners, none of them failing; every master has `replicas_per_master` replicas,
        all live, with their link up and reported online by the master."""
        found: list[str] = []
        live = self.live
        owners: dict[int, tuple[tuple[int, str], ...]] = {}
        for node in live:
            try:
                info = node.cluster_info()
                views = node.cluster_nodes()
            except Exception as error:
                found.append(f"{node.port}: {error!r}")
                continue
            if info.get("cluster_state") != "ok":
                found.append(f"{node.port}: cluster_state:{info.get('cluster_state')}")
            if info.get("cluster_slots_assigned") != str(SLOTS):
                found.append(f"{node.port}: slots assigned {info.get('cluster_slots_assigned')}")
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                found.append(f"{node.port}: knows {info.get('cluster_known_nodes')} nodes")
            flagged = [f"{v.port}:{','.join(sorted(v.flags))}" for v in views if v.failing]
            if flagged:
                found.append(f"{node.port}: sees failing {flagged}")
            owners[node.port] = tuple(
                sorted((min(v.slots), v.node_id) for v in views if v.is_master and v.slots)
            )
        if len(set(owners.values())) > 1:
            found.append(f"slot owners differ between nodes: {owners}")
        if found or not live:
            return found or ["no live node"]
        for primary in self.primaries():
            replicas = self.replicas_of(primary)
            if len(replicas) != self.replicas_per_master:
                found.append(f"master {primary.port} has replicas {[r.port for r in replicas]}")
            online = {
                int(value["port"])
                for key, value in primary.replication().items()
                if key.startswith("slave") and isinstance(value, dict)
                if value.get("state") == "online"
            }
            for replica in replicas:
                if not replica.alive:
                    found.append(f"replica {replica.port} of {primary.port} is down")
                    continue
                if replica.replication().get("master_link_status") != "up":
                    found.append(f"replica {replica.port}: link to {primary.port} not up")
                if replica.port not in online:
                    found.append(f"master {primary.port}: replica {replica.port} not online")
        return found

    def describe(self) -> str:
        """The problems and each node's view and log tail: what a timeout reports."""
        lines = [f"problems: {self.problems()}"]
        for node in self.nodes:
            lines.append(f"--- {node!r}")
            if node.alive:
                with contextlib.suppress(Exception):
                    lines.append(node.execute("CLUSTER", "NODES").strip())
            lines.append(node.log_tail(8))
        return "\n".join(lines)

    def wait_until_healthy(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Poll until `problems()` is empty."""
        poll(
            lambda: not self.problems(),
            timeout=timeout,
            what="a healthy cluster",
            describe=self.describe,
        )

    def _all_ok(self, owner_of_slots: ClusterNode, slots: frozenset[int]) -> bool:
        """Every live node reports cluster_state:ok and gives `slots` to `owner_of_slots`."""
        for node in self.live:
            if node.cluster_info().get("cluster_state") != "ok":
                return False
            if not slots <= self.slots_of(owner_of_slots, via=node):
                return False
        return True

    # --- faults ---------------------------------------------------------------------------

    def kill_primary(self, node: ClusterNode) -> None:
        """SIGKILL a master, after noting its replicas and slots for `wait_for_failover`."""
        if not node.alive:
            raise RuntimeError(f"{node!r} is not running")
        watcher = next(other for other in self.live if other is not node)
        slots = self.slots_of(node, via=watcher)
        if not slots:
            raise RuntimeError(f"{node!r} owns no slots: not a primary")
        self._killed[node.port] = (self.replicas_of(node, via=watcher), slots)
        self.kill(node)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL any node and reap it."""
        node.close_client()
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=10)

    def wait_for_failover(
        self, old: ClusterNode, *, timeout: float = DEFAULT_TIMEOUT
    ) -> ClusterNode:
        """Poll until a replica of the killed master `old` reports itself master and every live
        node reports cluster_state:ok with `old`'s slots on it; return the promoted node."""
        return self._await_failover(old, time.monotonic(), timeout).promoted

    def failover_primary_of(
        self, key: str | bytes, *, timeout: float = DEFAULT_TIMEOUT
    ) -> FailoverTiming:
        """Kill the master owning `key`'s slot, wait for its replica to take over, and say how
        long the promotion and the return of cluster_state:ok took."""
        old = self.node_for_key(key)
        began = time.monotonic()
        self.kill_primary(old)
        return self._await_failover(old, began, timeout)

    def _await_failover(self, old: ClusterNode, began: float, timeout: float) -> FailoverTiming:
        replicas, slots = self._killed.get(old.port) or (self.replicas_of(old), self.slots_of(old))
        candidates = [replica for replica in replicas if replica.alive]
        if not candidates:
            raise RuntimeError(f"{old!r} has no live replica to promote")

        def promoted() -> ClusterNode | None:
            for replica in candidates:
                me = replica.myself()
                if me.is_master and slots <= me.slots:
                    return replica
            return None

        winner = poll(
            promoted,
            timeout=timeout,
            what=f"a replica of {old.port} to take over",
            describe=self.describe,
        )
        promoted_after = time.monotonic() - began
        poll(
            lambda: self._all_ok(winner, slots),
            timeout=timeout,
            what=f"every node to agree that {winner.port} took over from {old.port}",
            describe=self.describe,
        )
        return FailoverTiming(old, winner, promoted_after, time.monotonic() - began)

    def restart(self, node: ClusterNode, *, timeout: float = DEFAULT_TIMEOUT) -> ClusterNode:
        """Start a killed node again on its port and directory (its nodes.conf and AOF), and
        wait until it is a replica in sync with whoever owns its old slots, and the whole
        cluster is healthy; return its master."""
        if node.alive:
            raise RuntimeError(f"{node!r} is still running")
        self._killed.pop(node.port, None)
        self._launch(node)
        self._wait_until_up(node, timeout)

        def master() -> ClusterNode | None:
            me = node.myself()
            if me.is_master or me.master_id is None:
                return None
            if node.replication().get("master_link_status") != "up":
                return None
            return self.node(me.master_id)

        primary = poll(
            master,
            timeout=timeout,
            what=f"{node.port} to rejoin as a replica",
            describe=self.describe,
        )
        self.wait_until_healthy(timeout=timeout)
        return primary


@contextlib.contextmanager
def running_cluster(
    masters: int = 3, replicas: int = 1, *, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[RedisCluster]:
    """A started cluster for a `with` block; in a pytest fixture:
    `with running_cluster() as cluster: yield cluster`."""
    cluster = RedisCluster()
    cluster.start(masters, replicas, timeout=timeout)
    try:
        yield cluster
    finally:
        cluster.stop()
