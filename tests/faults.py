"""Fault injection for the crash-safety tests: a Redis that can be killed and brought back, a
collector that can be killed and restarted, and a sender that retries like a log shipper.

Everything runs as real processes on 127.0.0.1 ports. The sender posts NDJSON batches and
retries each until it gets a 200 (every 503 or lost connection is retried after a pause), so
each batch that returns was acknowledged; the tests then check what the collector says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, find_binary, free_port, wait_for


class DurableRedis:
    """redis-server with AOF fsynced on every write, which can be SIGKILLed and restarted on
    the same port and directory (what it acknowledged survives)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pw-aof-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [find_binary("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--loglevel", "warning", "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        wait_for(client.ping, timeout=30, what=f"redis-server on port {self.port}")
        client.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.kill()


def start_collector(redis_url: str, port: int | None = None, **env: str) -> Collector:
    """`precondition-watch serve` on the Redis, once it answers /readyz."""
    collector = Collector(redis_url, port or free_port(), env)
    collector.start()
    return collector


@dataclass
class Collector:
    """One `serve` process (with its ingest and settle children) on a fixed port."""

    redis_url: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(self.port)],
            env={**os.environ, "PW_REDIS_URL": self.redis_url, **self.env},
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its children share the group: one kill ends them all
        )
        wait_for(
            lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200,
            timeout=60,
            what="collector",
        )

    def kill(self) -> None:
        """SIGKILL the serving process and its children at once, as an OOM kill would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
            self.process = None

    def children(self, name: str) -> list[int]:
        """Pids of the child processes named `name` (`pw-ingest`, `pw-settle`)."""
        from tests.conftest import process_family

        assert self.process is not None
        return [pid for pid, comm, _ in process_family(self.process.pid) if comm == name]


@contextmanager
def durable_collector(**env: str) -> Iterator[tuple[DurableRedis, Collector]]:
    """A DurableRedis and a collector on it, both stopped on the way out."""
    redis_server = DurableRedis()
    redis_server.start()
    try:
        collector = Collector(redis_server.url, free_port(), env)
        collector.start()
        try:
            yield redis_server, collector
        finally:
            collector.stop()
    finally:
        redis_server.stop()


@dataclass
class Sender:
    """Posts batches in order, retrying each until a 200, like a shipper with a disk buffer."""

    url: Callable[[], str]
    batches: list[bytes]
    sent: int = 0  # batches acknowledged
    attempts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    duplicates: int = 0
    done: threading.Event = field(default_factory=threading.Event)

    def run(self, deadline: float) -> None:
        with httpx.Client(timeout=10) as client:
            for body in self.batches:
                while time.monotonic() < deadline:
                    self.attempts += 1
                    try:
                        answer = client.post(
                            self.url() + "/v1/events",
                            content=body,
                            headers={"Content-Type": "application/x-ndjson"},
                        )
                    except httpx.HTTPError as exc:
                        self.statuses[type(exc).__name__] += 1
                        time.sleep(0.05)  # a shipper's backoff, not a wait for a condition
                        continue
                    self.statuses[str(answer.status_code)] += 1
                    if answer.status_code == 200:
                        result = answer.json()
                        self.accepted += result["accepted"]
                        self.duplicates += result["duplicates"]
                        assert not result["rejected"], result["rejected"][:3]
                        self.sent += 1
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError(f"batch {self.sent} not acknowledged in time")
        self.done.set()

    @contextmanager
    def running(self, deadline_seconds: float = 120.0) -> Iterator[threading.Thread]:
        errors: list[BaseException] = []

        def target() -> None:
            try:
                self.run(time.monotonic() + deadline_seconds)
            except BaseException as exc:  # surfaced in the test thread below
                errors.append(exc)
                self.done.set()

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        yield thread
        thread.join(timeout=deadline_seconds + 10)
        if errors:
            raise errors[0]


def batches_of(events: list[dict[str, object]], size: int) -> list[bytes]:
    return [
        b"\n".join(orjson.dumps(e) for e in events[start : start + size])
        for start in range(0, len(events), size)
    ]


def counts_by_cause(url: str) -> Counter[str]:
    """precondition_failures_total on one collector's /metrics, summed by cause."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "precondition_failures_total":
                out[sample.labels["cause"]] += int(sample.value)
    return out


def failures_counted(url: str) -> float:
    """The sum of precondition_failures_total on one collector's /metrics."""
    return sum(counts_by_cause(url).values())


def flush(url: str, timeout: float = 120.0) -> int:
    """POST /v1/flush, retried until it answers 200 (Redis may still be coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.post(url + "/v1/flush", timeout=timeout)
            if answer.status_code == 200:
                settled: int = answer.json()["settled"]
                return settled
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("flush never succeeded")
        time.sleep(0.1)


def audit(url: str, failures: dict[tuple[str, str], str]) -> Counter[str]:
    """How each failure answers on the request API: `classified`, `pending` or `missing`."""
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=10) as client:
        for service, request_id in failures:
            answer = client.get(f"{url}/v1/services/{service}/requests/{request_id}")
            if answer.status_code == 404:
                seen["missing"] += 1
            else:
                seen[answer.json()["state"]] += 1
    return seen


def durable_counts(redis_url: str) -> tuple[int, int]:
    """What the store says was decided and counted: failures in the per-minute counts (each
    decision is added once, by the script that ends its claim), and entries still waiting to be
    counted by a serving process."""
    client = redis.Redis.from_url(redis_url)
    decided = waiting = 0
    for key in client.scan_iter("pw:s:*", count=1000):
        name = key.decode()
        if ":n:" in name:
            counts: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]  # redis-py's sync/async union
            decided += sum(int(v) for f, v in counts.items() if f.startswith(b"c:"))
        elif name.endswith("}:k"):
            waiting += int(client.llen(key))
    client.close()
    return decided, waiting
