"""Shared fixtures: a real redis-server for the session, fake and real stores, an app client."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import fakeredis
import pytest
import redis
from prometheus_client import CollectorRegistry

from collector.store import Store

if TYPE_CHECKING:
    from collector.ingest import BatchResult
    from collector.payload import Record
    from tests.redis_cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent


def find_binary(name: str) -> str:
    """A binary from PATH or the project's `.deps/bin` (where `make deps` unpacks them)."""
    local = ROOT / ".deps" / "bin" / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make deps` (or `make test`) first")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_family(pid: int) -> list[tuple[int, str, list[str]]]:
    """A process and its live children (a collector's ingest and settle processes): pid, name as
    `ps` shows it, and the fields of /proc/<pid>/stat after the name."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                head, _, tail = stat.read().rpartition(")")
        except OSError:
            continue  # gone meanwhile
        fields = tail.split()
        if int(entry) == pid or int(fields[1]) == pid:
            found.append((int(entry), head.split("(", 1)[1], fields))
    return found


def say(request: pytest.FixtureRequest, line: str) -> None:
    """Print `line` on the terminal even while pytest captures output: a count a test
    measured that belongs in the CI log, passing or not."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:  # -p no:capture
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print("\n" + line)


def wait_for(condition: object, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition()` until it is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except Exception:  # not ready yet can be any error
            pass
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A redis-server process on a free loopback port, with no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pw-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                find_binary("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(client.ping, what=f"redis-server on port {self.port}")
        client.close()

    def stop(self, *, cleanup: bool = True) -> None:
        """Stop the server; with cleanup=False it can be started again on the same port."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        if cleanup:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The real redis-server of this test session."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the real Redis, emptied for this test."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real three-primary Redis Cluster (each primary with a replica) for this session."""
    from tests.redis_cluster import running_cluster  # it imports this module's helpers

    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisCluster) -> str:
    """A node of the real cluster, every primary emptied for this test."""
    redis_cluster.wait_until_healthy()
    for node in redis_cluster.primaries():
        node.execute("FLUSHALL")
    return redis_cluster.url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_store(kind: str, url: str | None = None, **options: object) -> Store:
    params: dict[str, object] = {"retention_seconds": 3600, **options}
    if kind == "fake":
        return Store(fakeredis.FakeAsyncRedis(), embedded=True, **params)  # type: ignore[arg-type]
    assert url is not None
    return Store.from_url(url, **params)


@pytest.fixture(params=["fake", "real", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The store on fakeredis, on the real redis-server and on the real Redis Cluster."""
    if request.param == "fake":
        s = make_store("fake")
    elif request.param == "real":
        s = make_store("real", request.getfixturevalue("redis_url"))
    else:
        s = make_store("real", request.getfixturevalue("redis_cluster_url"), cluster=True)
    yield s
    await s.close()


def failures_in(registry: CollectorRegistry) -> float:
    """Every failure a registry counted, whatever its labels."""
    return sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "precondition_failures"
        for sample in metric.samples
        if sample.name == "precondition_failures_total"
    )


os.environ.setdefault("PW_LOG_LEVEL", "warning")


class Node:
    """One collector's parts in this process, wired as the runtime wires them: an ingestor and
    a settler on a store, counting what they did into their own registry."""

    def __init__(
        self, store: Store, *, window: float = 300, lateness: float = 5, batch_size: int = 500
    ) -> None:
        from collector.counting import Counts
        from collector.ingest import Ingestor
        from collector.metrics import Metrics
        from collector.settle import Settler

        self.store = store
        self.counts = Counts(Metrics(CollectorRegistry()))
        self.metrics = self.counts.metrics
        self.registry = self.counts.registry
        self.ingestor = Ingestor(store, max_clock_skew=300)
        self.settler = Settler(store, window=window, lateness=lateness, batch_size=batch_size)
        self.settler.after_decide = self.count_decided

    async def count_decided(self, service: str) -> None:
        await self.counts.drain(self.store, [service])

    async def ingest(
        self, records: Sequence[Record], *, received_at: float, default_service: str | None = None
    ) -> BatchResult:
        stored = await self.ingestor.store_batch(
            records, default_service=default_service, received_at=received_at
        )
        return self.counts.batch(stored, 0.0)

    def failures_counted(self) -> float:
        return failures_in(self.registry)
