"""`make bench`: the collector end to end, classification included, against mtail.

One run: a fresh redis-server (no persistence: `--save ''`, `--appendonly no`) and a fresh
`precondition-watch serve` on it; four keep-alive senders POST a generated stream (about 90,000
NDJSON lines, a third of them failures: races, stale tabs, a deploy that changes the ETag
format, a rewriting proxy) to `/v1/events` in batches of 500, then `POST /v1/flush`. Measured:

- events/s from the first byte sent to the flush's return, and p50/p99 batch latency (a batch's
  first byte to its acknowledgement, 503 retries included);
- that `precondition_failures_total` on `/metrics` sums to the number of failure lines (a bench
  that counts wrong is worthless);
- peak RSS (VmHWM) and CPU seconds (user + system, during sending and flushing) of every
  process: the serving process, each ingest process, the settle process, redis-server, mtail
  and this client;
- Redis memory per tracked resource (`used_memory` after minus before, over the distinct
  `(service, resource_id)` pairs) and `INFO commandstats` (reset before sending);
- the same lines through mtail (`--one_shot`, counting lines by service and status with
  tests/bench_mtail.mtail), timed whole, start-up included, right after: the ratio is the
  collector's events/s over mtail's lines/s.

Modes: `--runs N` repeats the pair N times and prints a markdown summary (median, min, max);
`--profile` adds one run sampled by py-spy (top functions by self samples per process) that the
summary leaves out; `--embedded` adds one run on the embedded fakeredis (no `PW_REDIS_URL`,
as `make run`); `--soak SECONDS` feeds a collector at a steady rate with ever new resources and
samples every process's RSS every 10 s, to show that the collector's memory stays flat;
`--hold-settling` keeps every failure pending until the flush (the allowed lateness past the
stream's span), so "events/s while sending" is what ingest alone does, the bound that settling
has to fit under.

The client, the collector and Redis share the machine: on two cores absolute numbers move with
whatever else runs, the ratio and the per-event costs less so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from random import Random

import httpx
import orjson
import redis

from tests.conftest import ROOT, RedisServer, find_binary, free_port, process_family, wait_for

BATCH = 500
SENDERS = 4
FAILURE_STATUSES = (409, 412, 428)
WINDOW = 300.0  # PW_CONCURRENCY_WINDOW_SECONDS, the collector's default
MTAIL_PROGRAM = Path(__file__).with_name("bench_mtail.mtail")
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024

Event = dict[str, object]

# -- the stream --------------------------------------------------------------------------------

# service: (share of requests, resources, Zipf exponent, route, ETag format)
_SERVICES: dict[str, tuple[float, int, float, str, str]] = {
    "orders": (0.34, 60_000, 0.85, "/api/orders/{id}", "hex32"),
    "carts": (0.18, 15_000, 0.9, "/api/carts/{id}", "hex16"),
    "profiles": (0.14, 20_000, 0.8, "/api/profiles/{id}", "hex24"),
    "inventory": (0.22, 40_000, 0.9, "/api/inventory/{sku}", "hex40"),
    "billing": (0.12, 12_000, 0.85, "/api/invoices/{id}", "hex32"),
}
_VERSION = {"carts": "2024.11.3", "profiles": "3.14.0", "inventory": "5.2.1", "billing": "9.0.2"}
_ORDERS_BEFORE, _ORDERS_AFTER = "v1.41.0", "v1.42.0"  # the deploy: a new ETag format
# What the gzip proxy in front of carts does to the ETag its proxied clients see.
_PROXIED = (("shop-android/8.1", "gzip"), ("shop-ios/8.0", "weak"))
# How often each kind of request happens (a race is two events: the winner and the loser).
_ACTIONS = ("write", "race", "stale", "missing", "conflict")
_WEIGHTS = (0.52, 0.2, 0.1, 0.03, 0.025)
_PROXIED_SHARE = 0.30  # of carts' conditional writes, sent through the rewriting proxy
_CREATE_SHARE = 0.2  # of first-seen resources, created in the stream (the rest are older)
_FORMAT_CHANGE_SHARE = 0.55  # of orders touched after the deploy, by a client holding a v1 ETag


@dataclass
class _Resource:
    etag: str | None = None  # None: not created yet
    # ETags it had, each with when a write replaced it, oldest first (the last few).
    superseded: list[tuple[str, float]] = field(default_factory=list)
    converted: bool = False  # orders: its ETag was recomputed in the v2 format


class Traffic:
    """Conditional writes of five services, in event time, with the truth of each failure kept
    in `kinds` (what the generator meant: `race`, `stale`, `format_change`, `proxy_rewrite`,
    `missing`, `conflict`; successful writes are `write`, creates `create`).

    Resources are drawn per service from a Zipf distribution (a few hot, a long tail): tens of
    thousands are touched. With `drift`, the popular range slides by that many resource ids per
    event, so new resources keep appearing and old ones go cold (the soak); state of resources
    no longer reachable is dropped, so the generator's memory stays bounded.
    """

    def __init__(self, seed: int, *, deploy_at: float | None, drift: float = 0.0) -> None:
        self.rng = Random(seed)
        self.deploy_at = deploy_at
        self.drift = drift
        self.base = 0.0
        self.sequence = 0
        self.kinds: Counter[str] = Counter()
        self.created = 0
        self.resources: dict[tuple[str, int], _Resource] = {}
        self.names = list(_SERVICES)
        self.shares = list(accumulate(spec[0] for spec in _SERVICES.values()))
        self.popularity = {
            name: list(accumulate(rank ** -spec[2] for rank in range(1, spec[1] + 1)))
            for name, spec in _SERVICES.items()
        }
        self.actions = list(accumulate(_WEIGHTS))

    def _pick(self, cumulative: list[float]) -> int:
        return bisect_left(cumulative, self.rng.random() * cumulative[-1])

    def _etag(self, service: str, deployed: bool) -> str:
        bits = self.rng.getrandbits
        kind = _SERVICES[service][4]
        if service == "orders" and deployed:
            return f'"v2-{bits(64):016x}"'
        width = int(kind.removeprefix("hex"))
        return f'"{bits(width * 4):0{width}x}"'

    def _request_id(self) -> str:
        self.sequence += 1
        return f"req-{self.sequence:08d}-{self.rng.getrandbits(32):08x}"

    def _client(self) -> str:
        return f"web/u{int(self.rng.paretovariate(1.1) * 10) % 20_000:05d}"

    def _event(
        self, ts: float, service: str, resource: str, status: int, **fields: object
    ) -> Event:
        deployed = service == "orders" and self.deploy_at is not None and ts >= self.deploy_at
        version = (_ORDERS_AFTER if deployed else _ORDERS_BEFORE) if service == "orders" else None
        event: Event = {
            "ts": round(ts, 3),
            "service": service,
            "route": _SERVICES[service][3],
            "method": fields.pop("method", "PUT"),
            "status": status,
            "request_id": self._request_id(),
            "resource_id": resource,
        }
        event.update({k: v for k, v in fields.items() if v is not None})
        event.setdefault("client_id", self._client())
        event["deploy_version"] = version or _VERSION[service]
        # Fields shippers add that the collector ignores, as real log lines carry them.
        event["host"] = f"{service}-{self.rng.randrange(6)}"
        event["duration_ms"] = self.rng.randrange(2, 300)
        return event

    def _write(self, ts: float, service: str, rid: str, state: _Resource, deployed: bool) -> Event:
        new = self._etag(service, deployed)
        old = state.etag
        if old is not None:
            state.superseded.append((old, ts))
            del state.superseded[:-6]
        state.etag = new
        return self._event(ts, service, rid, 200, if_match=old, current_etag=new)

    def emit(self, ts: float) -> list[Event]:
        """The events of one request (two for a race: the winning write, the losing 412)."""
        rng = self.rng
        service = self.names[bisect_left(self.shares, rng.random() * self.shares[-1])]
        rank = self._pick(self.popularity[service])
        index = int(self.base) + rank
        self.base += self.drift
        key = (service, index)
        state = self.resources.get(key)
        if state is None:
            state = self.resources[key] = _Resource()
            if self.drift and len(self.resources) > 4 * sum(s[1] for s in _SERVICES.values()):
                low = int(self.base)
                self.resources = {k: v for k, v in self.resources.items() if k[1] >= low}
        rid = f"{service[:3]}-{index:07d}"
        deployed = service == "orders" and self.deploy_at is not None and ts >= self.deploy_at
        if state.etag is None:
            self.created += 1
            state.etag = self._etag(service, deployed)
            state.converted = deployed
            if rng.random() < _CREATE_SHARE:
                self.kinds["create"] += 1
                return [
                    self._event(
                        ts,
                        service,
                        rid,
                        201,
                        method="POST",
                        if_none_match="*",
                        current_etag=state.etag,
                    )
                ]
            # Otherwise it existed before the log began: its ETag is new to the collector.
        if deployed and not state.converted:
            # v1.42.0 computes the same content's ETag differently: a client still holding the
            # v1 ETag fails against the new value of an unchanged resource.
            state.converted = True
            old, state.etag = state.etag, f'"v2-{state.etag.strip(chr(34))[:16]}"'
            if rng.random() < _FORMAT_CHANGE_SHARE:
                self.kinds["format_change"] += 1
                return [self._event(ts, service, rid, 412, if_match=old, current_etag=state.etag)]
        action = _ACTIONS[bisect_left(self.actions, rng.random() * self.actions[-1])]
        if service == "carts" and action == "write" and rng.random() < _PROXIED_SHARE:
            client, rewrite = _PROXIED[rng.randrange(len(_PROXIED))]
            opaque = state.etag.strip('"')
            seen = f'"{opaque}-gzip"' if rewrite == "gzip" else f'W/"{opaque}"'
            self.kinds["proxy_rewrite"] += 1
            return [
                self._event(
                    ts, service, rid, 412, if_match=seen, current_etag=state.etag, client_id=client
                )
            ]
        if action == "race":
            held = state.etag
            winner = self._write(ts, service, rid, state, deployed)
            self.kinds["write"] += 1
            self.kinds["race"] += 1
            loser = self._event(
                ts + rng.uniform(0.02, 1.5),
                service,
                rid,
                412,
                if_match=held,
                current_etag=state.etag,
            )
            return [winner, loser]
        if action == "stale":
            long_ago = [tag for tag, when in state.superseded if when < ts - WINDOW - 30]
            # A tab open for hours, or one whose ETag was replaced before the log began.
            held = long_ago[0] if long_ago else self._etag(service, deployed and state.converted)
            self.kinds["stale"] += 1
            return [self._event(ts, service, rid, 412, if_match=held, current_etag=state.etag)]
        if action == "missing":
            self.kinds["missing"] += 1
            return [self._event(ts, service, rid, 428, current_etag=state.etag)]
        if action == "conflict":
            self.kinds["conflict"] += 1
            return [self._event(ts, service, rid, 409, reason="order already shipped")]
        self.kinds["write"] += 1
        return [self._write(ts, service, rid, state, deployed)]


@dataclass
class Stream:
    """A generated stream as NDJSON lines in delivery order, with its mix."""

    lines: list[bytes]
    failures: int
    resources: int
    kinds: Counter[str]
    seconds: float  # to generate

    @property
    def batches(self) -> list[bytes]:
        lines = self.lines
        return [b"\n".join(lines[i : i + BATCH]) for i in range(0, len(lines), BATCH)]

    def describe(self) -> str:
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.kinds.most_common())
        return (
            f"{len(self.lines):,} events, {self.failures:,} failures "
            f"({self.failures / len(self.lines):.1%}), {self.resources:,} resources; "
            f"by kind: {kinds}; generated in {self.seconds:.1f} s"
        )


def make_stream(events: int, seed: int, rate: float = 40.0) -> Stream:
    """`events` events at `rate` per second of event time, ending a minute ago, delivered as
    shippers deliver them: each up to 2 s late (well within the allowed lateness), so a
    race's losing 412 often arrives before the write that beat it."""
    started = time.perf_counter()
    span = events / rate
    first = time.time() - span - 60
    traffic = Traffic(seed, deploy_at=first + span / 2)
    rng = Random(seed + 1)
    ts = first
    timed: list[tuple[float, int, Event]] = []
    while len(timed) < events:
        ts += rng.expovariate(rate)
        for event in traffic.emit(ts):
            at = float(event["ts"]) + rng.uniform(0, 2.0)  # type: ignore[arg-type]
            timed.append((at, len(timed), event))
    timed.sort(key=lambda item: (item[0], item[1]))
    lines = [orjson.dumps(event) for _, _, event in timed]
    failures = sum(event["status"] in FAILURE_STATUSES for _, _, event in timed)
    resources = len({(event["service"], event["resource_id"]) for _, _, event in timed})
    kinds = traffic.kinds
    return Stream(lines, failures, resources, kinds, time.perf_counter() - started)


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, float]:
    """A process's name and CPU seconds so far (user + system)."""
    with open(f"/proc/{pid}/stat") as stat:
        head, _, tail = stat.read().rpartition(")")
    fields = tail.split()
    return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def roles(serve_pid: int, redis_pid: int | None) -> dict[str, int]:
    """Every process of a run by role: `serving`, `ingest-1`..., `settle`, `redis-server`."""
    found: dict[str, int] = {"serving": serve_pid}
    counts: Counter[str] = Counter()
    for pid, name, _ in sorted(process_family(serve_pid)):
        if pid == serve_pid:
            continue
        role = {"pw-ingest": "ingest", "pw-settle": "settle"}.get(name) or _helper(pid, name)
        counts[role] += 1
        found[f"{role}-{counts[role]}" if role == "ingest" or counts[role] > 1 else role] = pid
    if redis_pid is not None:
        found["redis-server"] = redis_pid
    return found


def _helper(pid: int, name: str) -> str:
    """A child that is not the collector's own: multiprocessing's resource tracker, say."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        if b"resource_tracker" in cmdline.read():
            return "mp-resource-tracker"
    return name


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    seconds = {}
    for role, pid in pids.items():
        with contextlib.suppress(OSError):
            seconds[role] = _stat(pid)[1]
    return seconds


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any PW_* variable of the caller's, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PW_")}
    return {**env, "PW_LOG_LEVEL": "warning", **settings}


class Collector:
    """`precondition-watch serve` on a free port, stopped on exit."""

    def __init__(
        self, redis_url: str | None, expect_children: bool, settings: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = clean_env(**(settings or {}), **({"PW_REDIS_URL": redis_url} if redis_url else {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector", "serve", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
        )
        self.expect_children = expect_children

    def __enter__(self) -> Collector:
        try:
            wait_for(
                lambda: httpx.get(self.base + "/readyz").status_code == 200,
                timeout=60,
                what="the collector's /readyz",
            )
            if self.expect_children:
                # Children name themselves once their imports are done: measure from then.
                def named() -> bool:
                    names = [name for _, name, _ in process_family(self.process.pid)]
                    return "pw-settle" in names and "pw-ingest" in names

                wait_for(named, timeout=60, what="the ingest and settle processes")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metric_sums(self) -> tuple[float, Counter[str], float]:
        """Failures counted (all, by cause) and events accepted, from /metrics."""
        text = httpx.get(self.base + "/metrics", timeout=30).text
        by_cause: Counter[str] = Counter()
        accepted = 0.0
        for line in text.splitlines():
            if line.startswith("precondition_failures_total{"):
                match = re.search(r'cause="([^"]*)"', line)
                by_cause[match.group(1) if match else "?"] += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith('precondition_collector_events_total{result="accepted"'):
                accepted = float(line.rsplit(" ", 1)[1])
        return float(sum(by_cause.values())), by_cause, accepted


# -- sending -----------------------------------------------------------------------------------


@dataclass
class Sent:
    first_byte: float = math.inf  # perf_counter
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    retries: int = 0


class Sender:
    """One keep-alive HTTP/1.1 connection posting NDJSON batches to /v1/events.

    A bare client rather than httpx: the load generator shares two cores with the collector
    and Redis, and a client library costs it several times the CPU. On 503 (and 429) it sends
    the same batch again after Retry-After; on a dropped connection it reconnects and resends
    (a resent batch is stored once: its events are duplicates).
    """

    def __init__(self, port: int, sent: Sent) -> None:
        self.port = port
        self.sent = sent
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    async def post(self, body: bytes) -> None:
        started = time.perf_counter()
        self.sent.first_byte = min(self.sent.first_byte, started)
        for attempt in range(20):
            try:
                if self.writer is None or self.reader is None:
                    await self.connect()
                assert self.writer is not None and self.reader is not None
                self.writer.write(
                    b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-ndjson\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body)
                )
                self.writer.write(body)
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                headers = dict(
                    line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
                )
                headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
                reply = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
                if headers.get(b"connection", b"").lower() == b"close":
                    await self.close()
                    self.writer = self.reader = None
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                self.writer = self.reader = None
                self.sent.retries += 1
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            if status in (429, 503):
                self.sent.retries += 1
                await asyncio.sleep(float(headers.get(b"retry-after", b"1")))
                continue
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {reply[:300]!r}")
            answer = orjson.loads(reply)
            self.sent.latencies.append(time.perf_counter() - started)
            self.sent.accepted += answer["accepted"]
            self.sent.duplicates += answer["duplicates"]
            self.sent.rejected += len(answer["rejected"])
            return
        raise RuntimeError("a batch was refused 20 times")


async def send_all(port: int, batches: Iterable[bytes], senders: int = SENDERS) -> Sent:
    """Every batch, by `senders` connections pulling from one shared queue."""
    sent = Sent()
    pending: Iterator[bytes] = iter(batches)
    connections = [Sender(port, sent) for _ in range(senders)]
    await asyncio.gather(*(c.connect() for c in connections))  # before the first byte

    async def worker(connection: Sender) -> None:
        try:
            for body in pending:
                await connection.post(body)
        finally:
            await connection.close()

    await asyncio.gather(*(worker(c) for c in connections))
    return sent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# -- mtail ---------------------------------------------------------------------------------------


@dataclass
class MtailResult:
    seconds: float
    lines: int
    cpu: float
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


def run_mtail(path: Path, workdir: Path, program: Path = MTAIL_PROGRAM) -> MtailResult:
    """The lines of `path` through `mtail --one_shot` with the bench's program; wall clock of the
    whole run (start-up and compilation included), its CPU and peak RSS, and the lines it
    counted."""
    progs = workdir / "mtail-progs"
    progs.mkdir(exist_ok=True)
    for old in progs.iterdir():
        old.unlink()
    shutil.copy(program, progs / "bench.mtail")
    command = [
        find_binary("mtail"),
        "--one_shot",
        "--one_shot_format=prometheus",
        "--logtostderr",
        f"--progs={progs}",
        f"--logs={path}",
    ]
    out = workdir / "mtail.out"
    with open(out, "wb") as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        # Its own peak, polled: wait4's ru_maxrss would include this forked bench's memory
        # from before the exec.
        peak_kib = 0
        while True:
            with contextlib.suppress(OSError):
                peak_kib = max(peak_kib, _status_kib(process.pid, "VmHWM"))
            waited, status, usage = os.wait4(process.pid, os.WNOHANG)
            if waited:
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"mtail exited {process.returncode}: {errors[-2000:]!r}")
    counted = 0
    for line in out.read_text().splitlines():
        if line.startswith("precondition_bench_lines_total{"):
            counted += int(float(line.rsplit(" ", 1)[1]))
    return MtailResult(seconds, counted, usage.ru_utime + usage.ru_stime, peak_kib / 1024)


# -- one run -------------------------------------------------------------------------------------


@dataclass
class RunResult:
    rate: float
    events: int
    send_seconds: float
    flush_seconds: float
    p50_ms: float
    p99_ms: float
    retries: int
    check: str
    peak_rss_mib: dict[str, float]
    cpu_seconds: dict[str, float]
    # The same, while sending only: with settling held back (PW_ALLOWED_LATENESS_SECONDS past
    # the stream's span) it is what ingest alone costs.
    cpu_sending: dict[str, float] = field(default_factory=dict)
    # CPU seconds of the collector's processes and Redis over each phase's wall time: how many
    # of the machine's cores the phase kept busy.
    cores_sending: float = 0.0
    cores_flushing: float = 0.0
    redis_bytes_per_resource: float | None = None
    commandstats: list[tuple[str, int, int, float]] = field(default_factory=list)
    causes: Counter[str] = field(default_factory=Counter)
    mtail: MtailResult | None = None
    profile: dict[str, Counter[str]] = field(default_factory=dict)
    profile_samples: dict[str, int] = field(default_factory=dict)
    slow: list[tuple[str, int, float, float]] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.rate / self.mtail.rate if self.mtail else None

    def line(self, label: str) -> str:
        mtail = (
            f"; mtail {self.mtail.rate:,.0f} lines/s ({self.mtail.seconds:.2f} s), "
            f"ratio {self.ratio:.3f}"
            if self.mtail
            else ""
        )
        per_resource = (
            f", Redis {self.redis_bytes_per_resource:,.0f} B/resource"
            if self.redis_bytes_per_resource is not None
            else ""
        )
        return (
            f"{label}: {self.rate:,.0f} events/s ({self.send_seconds:.1f} s sending + "
            f"{self.flush_seconds:.1f} s flush; cores busy {self.cores_sending:.2f} sending, "
            f"{self.cores_flushing:.2f} flushing), batch p50 {self.p50_ms:.0f} ms p99 "
            f"{self.p99_ms:.0f} ms, {self.retries} retries{per_resource}, "
            f"failures counted {self.check}{mtail}"
        )


class Profiler:
    """One `py-spy record --format raw --nonblocking` per collector process (Python ones only)."""

    def __init__(self, pids: dict[str, int], workdir: Path) -> None:
        wanted = [r for r in pids if r == "serving" or r.startswith(("ingest", "settle"))]
        self.files = {role: workdir / f"pyspy-{role}.txt" for role in wanted}
        beside = Path(sys.executable).with_name("py-spy")  # pip puts it beside the venv's python
        py_spy = str(beside) if beside.exists() else find_binary("py-spy")
        self.processes = [
            subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(pids[role]),
                    "--format",
                    "raw",
                    "--rate",
                    "100",
                    "--nonblocking",
                    "-o",
                    str(path),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for role, path in self.files.items()
        ]
        time.sleep(1.0)  # attached before the first byte
        for process in self.processes:
            if process.poll() is not None:
                assert process.stderr is not None
                raise RuntimeError(f"py-spy failed: {process.stderr.read()[-1000:]!r}")

    def stop(self) -> tuple[dict[str, Counter[str]], dict[str, int]]:
        """Stop recording; self samples by function (`name (file)`) per role."""
        for process in self.processes:
            process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        tops: dict[str, Counter[str]] = {}
        totals: dict[str, int] = {}
        for role, path in self.files.items():
            counts: Counter[str] = Counter()
            if path.exists():
                for line in path.read_text().splitlines():
                    stack, _, count = line.rpartition(" ")
                    leaf = stack.rsplit(";", 1)[-1]
                    # "function (path/to/file.py:123)": per function, every line of it.
                    counts[re.sub(r":\d+\)$", ")", _shorten(leaf))] += int(count)
            tops[role] = counts
            totals[role] = sum(counts.values())
        return tops, totals


def slow_calls(entries: list[dict[str, object]]) -> list[tuple[str, int, float, float]]:
    """Redis's SLOWLOG (calls over 1 ms) by call shape: count, total ms, max ms. A script is
    named by its SHA prefix, number of keys and the type suffix of its first key (`p` a
    service's pending set, `e` a resource's record hash: see collector/store.py)."""
    shapes: dict[str, list[float]] = {}
    for entry in entries:
        command = entry["command"]
        words = (command.decode() if isinstance(command, bytes) else str(command)).split()
        name = words[0].upper() if words else "?"
        if name in ("EVALSHA", "EVAL", "FCALL") and len(words) >= 3:
            key = words[3] if len(words) > 3 else ""
            name = f"{name} {words[1][:8]} keys={words[2]} first key ...{key[-2:]}"
        duration = int(entry["duration"]) / 1000  # type: ignore[call-overload]
        shapes.setdefault(name, []).append(duration)
    return sorted(
        ((name, len(d), sum(d), max(d)) for name, d in shapes.items()), key=lambda row: -row[2]
    )


def _shorten(frame: str) -> str:
    for prefix in (str(ROOT) + "/", "/root/.pyenv/versions/"):
        frame = frame.replace(prefix, "")
    return re.sub(r"\S*site-packages/", "", frame)


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process used between two `cpu_of` readings."""
    return {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}


def _busy(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU seconds the collector's processes and Redis used between two `cpu_of` readings."""
    return sum(_spent(before, after).values())


def run_once(
    stream: Stream,
    workdir: Path,
    *,
    embedded: bool = False,
    profile: bool = False,
    mtail_program: Path = MTAIL_PROGRAM,
    settings: dict[str, str] | None = None,
    held: bool = False,
) -> RunResult:
    """One collector run over the stream, then (on real Redis) the same lines through mtail.
    `held`: settling was held back until the flush (`--hold-settling`), which the run checks."""
    server: RedisServer | None = None
    if not embedded:
        server = RedisServer()
        server.start()
    try:
        redis_pid = server.process.pid if server and server.process else None
        redis_url = server.url if server else None
        with Collector(redis_url, expect_children=not embedded, settings=settings) as collector:
            pids = roles(collector.process.pid, redis_pid)
            client = redis.Redis(port=server.port) if server else None
            used_before = 0
            if client is not None:
                client.config_resetstat()
                # Every call over 1 ms, to tell which script the time goes to.
                client.config_set("slowlog-log-slower-than", 1000)
                client.config_set("slowlog-max-len", 10_000)
                client.slowlog_reset()
                used_before = int(client.info("memory")["used_memory"])
            profiler = Profiler(pids, workdir) if profile else None
            cpu_before = cpu_of(pids)
            own_before = time.process_time()
            sent = asyncio.run(send_all(collector.port, stream.batches))
            sent_at = time.perf_counter()
            cpu_sent = cpu_of(pids)
            # Read after the sending phase's clock stopped; it delays only the flush's start.
            early = collector.metric_sums()[0] if held else 0
            flush_started = time.perf_counter()
            flushed = httpx.post(collector.base + "/v1/flush", timeout=600)
            flushed_at = time.perf_counter()
            flushed.raise_for_status()
            cpu_after = cpu_of(pids)
            own_cpu = time.process_time() - own_before
            if profiler is not None:
                top, samples = profiler.stop()
            counted, causes, accepted = collector.metric_sums()
            check = "OK" if counted == stream.failures else "MISMATCH"
            if check != "OK":
                check += f" ({counted:.0f} counted of {stream.failures} sent"
                # Does it come right later (a flush that returns before its counts)?
                deadline = time.monotonic() + 30
                while counted != stream.failures and time.monotonic() < deadline:
                    time.sleep(0.5)
                    counted = collector.metric_sums()[0]
                check += f", {counted:.0f} after 30 s more)"
            if early:
                check += f"; {early:.0f} failures settled before the flush, which was held"
            if sent.accepted != len(stream.lines) or accepted != len(stream.lines):
                check += (
                    f"; accepted {sent.accepted} (/metrics {accepted:.0f}) of {len(stream.lines)}"
                )
            peaks = {role: _status_kib(pid, "VmHWM") / 1024 for role, pid in pids.items()}
            result = RunResult(
                rate=len(stream.lines) / (sent_at - sent.first_byte + flushed_at - flush_started),
                events=len(stream.lines),
                send_seconds=sent_at - sent.first_byte,
                flush_seconds=flushed_at - flush_started,
                p50_ms=percentile(sent.latencies, 0.50) * 1000,
                p99_ms=percentile(sent.latencies, 0.99) * 1000,
                retries=sent.retries,
                check=check,
                peak_rss_mib=peaks,
                cpu_seconds=_spent(cpu_before, cpu_after),
                cpu_sending=_spent(cpu_before, cpu_sent),
                causes=causes,
                cores_sending=_busy(cpu_before, cpu_sent) / (sent_at - sent.first_byte),
                cores_flushing=_busy(cpu_sent, cpu_after) / (flushed_at - flush_started),
            )
            result.cpu_seconds["client"] = own_cpu
            if profiler is not None:
                result.profile, result.profile_samples = top, samples
            if client is not None:
                used = int(client.info("memory")["used_memory"]) - used_before
                result.redis_bytes_per_resource = used / stream.resources
                stats = client.info("commandstats")
                result.commandstats = sorted(
                    (
                        (
                            name.removeprefix("cmdstat_"),
                            row["calls"],
                            row["usec"],
                            row["usec_per_call"],
                        )
                        for name, row in stats.items()
                    ),
                    key=lambda row: -row[2],
                )
                result.slow = slow_calls(client.slowlog_get(10_000))
                client.close()
    finally:
        if server is not None:
            server.stop()
    if not embedded:
        path = workdir / "stream.ndjson"
        if not path.exists():
            path.write_bytes(b"\n".join(stream.lines) + b"\n")
        result.mtail = run_mtail(path, workdir, mtail_program)
        if result.mtail.lines != len(stream.lines):
            result.check += f"; mtail counted {result.mtail.lines} of {len(stream.lines)} lines"
        result.peak_rss_mib["mtail"] = result.mtail.peak_rss_mib
        result.cpu_seconds["mtail"] = result.mtail.cpu
    return result


# -- the soak ------------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float  # seconds since the start of sending
    events: int  # acknowledged so far
    resources: int  # created so far
    rss_mib: dict[str, float]
    redis_used_mib: float


async def _soak(
    collector: Collector, server: RedisServer, seconds: float, rate: float, seed: int
) -> tuple[list[Sample], Sent]:
    """Feed the collector `rate` events/s of live traffic for `seconds`, with new resources all
    along; sample every process's RSS (VmRSS) and Redis's used_memory every 10 s."""
    assert server.process is not None
    pids = roles(collector.process.pid, server.process.pid)
    client = redis.Redis(port=server.port)
    # drift 0.1: about 0.4 new resources per event, all along.
    traffic = Traffic(seed, deploy_at=time.time() + seconds / 2, drift=0.1)
    sent = Sent()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
    connections = [Sender(collector.port, sent) for _ in range(SENDERS)]
    await asyncio.gather(*(c.connect() for c in connections))
    samples: list[Sample] = []
    started = time.perf_counter()
    done = asyncio.Event()

    async def pace() -> None:
        interval = BATCH / rate
        due = started
        while time.perf_counter() - started < seconds:
            lines: list[bytes] = []
            while len(lines) < BATCH:
                lines.extend(orjson.dumps(event) for event in traffic.emit(time.time()))
            await queue.put(b"\n".join(lines))
            due += interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        for _ in connections:
            await queue.put(None)

    async def send(connection: Sender) -> None:
        try:
            while (body := await queue.get()) is not None:
                await connection.post(body)
        finally:
            await connection.close()

    def take_sample() -> None:
        rss = {}
        for role, pid in pids.items():
            with contextlib.suppress(OSError):
                rss[role] = _status_kib(pid, "VmRSS") / 1024
        used = int(client.info("memory")["used_memory"]) / MIB
        at = time.perf_counter() - started
        samples.append(Sample(at, sent.accepted, traffic.created, rss, used))
        cells = "  ".join(f"{role} {mib:6.1f}" for role, mib in rss.items())
        print(
            f"  {at:5.0f} s  {sent.accepted:>9,} events  {traffic.created:>8,} resources  "
            f"{cells}  redis used {used:6.1f} MiB",
            flush=True,
        )

    async def sample() -> None:
        take_sample()
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=10.0)
            take_sample()

    sampler = asyncio.create_task(sample())
    await asyncio.gather(pace(), *(send(c) for c in connections))
    done.set()
    await sampler
    client.close()
    return samples, sent


def report_soak(samples: list[Sample], seconds: float) -> bool:
    """Growth from the first window's mean to the last's, per process; True when all flat."""
    window = min(60.0, seconds / 4)
    # The sample at 0 s is taken before any traffic: the first window starts with traffic.
    first = [s for s in samples[1:] if s.at <= window + 1] or samples[:1]
    last = [s for s in samples if s.at >= samples[-1].at - window - 1]
    roles_seen = list(samples[0].rss_mib)
    print()
    print(
        f"| process | first {window:.0f} s mean MiB | last {window:.0f} s mean MiB | growth | "
        "KiB per 1,000 new resources | verdict |"
    )
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    flat = True
    for role in [*roles_seen, "redis used_memory"]:

        def value(s: Sample, role: str = role) -> float:
            return s.redis_used_mib if role == "redis used_memory" else s.rss_mib.get(role, 0.0)

        before = statistics.fmean(value(s) for s in first)
        after = statistics.fmean(value(s) for s in last)
        growth = after - before
        later = [s for s in samples if s.at > window]
        slope = 0.0
        if len(later) >= 3 and later[-1].resources > later[0].resources:
            slope = (
                statistics.linear_regression(
                    [float(s.resources) for s in later], [value(s) for s in later]
                ).slope
                * 1024
                * 1000
            )
        if role in ("redis-server", "redis used_memory"):
            verdict = "(grows by design: every key lives PW_RETENTION_SECONDS)"
        else:
            is_flat = growth < max(0.10 * before, 10.0)
            flat &= is_flat
            verdict = "FLAT" if is_flat else "GROWING"
        print(
            f"| {role} | {before:.1f} | {after:.1f} | {growth:+.1f} MiB ({growth / before:+.1%}) "
            f"| {slope:.1f} | {verdict} |"
        )
    print(
        f"\nthreshold: a collector process is FLAT when its mean RSS over the last {window:.0f} s "
        f"is less than max(10 %, 10 MiB) above its mean over the first {window:.0f} s."
    )
    return flat


def soak(seconds: float, rate: float | None, seed: int, events: int, workdir: Path) -> int:
    if rate is None:
        print("measuring the rate first (one run), to soak at half of it ...", flush=True)
        measured = run_once(make_stream(events, seed), workdir)
        print(measured.line("measuring run"))
        rate = measured.rate / 2
    print(f"soak: {seconds:.0f} s at {rate:,.0f} events/s on real Redis, RSS every 10 s:")
    server = RedisServer()
    server.start()
    try:
        with Collector(server.url, expect_children=True) as collector:
            samples, sent = asyncio.run(_soak(collector, server, seconds, rate, seed))
            flushed = httpx.post(collector.base + "/v1/flush", timeout=600)
            flushed.raise_for_status()
            counted = collector.metric_sums()[0]
    finally:
        server.stop()
    elapsed = samples[-1].at
    print(
        f"\nsent {sent.accepted:,} events ({sent.accepted / elapsed:,.0f}/s, target {rate:,.0f}), "
        f"{samples[-1].resources:,} resources created, {sent.retries} retries, batch p50 "
        f"{percentile(sent.latencies, 0.5) * 1000:.0f} ms p99 "
        f"{percentile(sent.latencies, 0.99) * 1000:.0f} ms; {counted:,.0f} failures counted"
    )
    used = samples[-1].redis_used_mib - samples[0].redis_used_mib
    resources = samples[-1].resources - samples[0].resources
    if resources:
        print(f"Redis: {used * MIB / resources:,.0f} bytes of used_memory per new resource")
    flat = report_soak(samples, seconds)
    print(f"\nsoak verdict: {'FLAT' if flat else 'GROWING'}")
    return 0 if flat else 1


# -- reporting -----------------------------------------------------------------------------------


def _row(name: str, values: list[float], fmt: str) -> str:
    return (
        f"| {name} | {format(statistics.median(values), fmt)} | {format(min(values), fmt)} "
        f"| {format(max(values), fmt)} |"
    )


def summary(results: list[RunResult]) -> None:
    print(f"\n### Summary of {len(results)} run(s)\n")
    print("| metric | median | min | max |")
    print("| --- | ---: | ---: | ---: |")
    print(
        _row("collector events/s (first byte to flush return)", [r.rate for r in results], ",.0f")
    )
    with_mtail = [r for r in results if r.mtail is not None]
    if with_mtail:
        print(
            _row(
                "mtail lines/s (one_shot, whole run)",
                [r.mtail.rate for r in with_mtail if r.mtail],
                ",.0f",
            )
        )
        print(_row("ratio collector / mtail", [r.ratio for r in with_mtail if r.ratio], ".3f"))
        print(
            _row(
                "ratio while sending / mtail",
                [r.events / r.send_seconds / r.mtail.rate for r in with_mtail if r.mtail],
                ".3f",
            )
        )
    print(_row("sending s", [r.send_seconds for r in results], ".1f"))
    print(_row("events/s while sending", [r.events / r.send_seconds for r in results], ",.0f"))
    print(_row("flush s", [r.flush_seconds for r in results], ".2f"))
    print(_row("cores busy sending", [r.cores_sending for r in results], ".2f"))
    print(_row("cores busy flushing", [r.cores_flushing for r in results], ".2f"))
    print(_row("batch latency p50 ms", [r.p50_ms for r in results], ".0f"))
    print(_row("batch latency p99 ms", [r.p99_ms for r in results], ".0f"))
    ordered = list(dict.fromkeys(role for r in results for role in r.peak_rss_mib))
    for role in ordered:
        print(_row(f"peak RSS {role} MiB", [r.peak_rss_mib.get(role, 0.0) for r in results], ".0f"))
    cpu_roles = list(dict.fromkeys(role for r in results for role in r.cpu_seconds))
    for role in cpu_roles:
        print(_row(f"CPU {role} s", [r.cpu_seconds.get(role, 0.0) for r in results], ".2f"))
    for role in cpu_roles:
        if any(role in r.cpu_sending for r in results):
            print(
                _row(
                    f"CPU {role} while sending us/event",
                    [r.cpu_sending.get(role, 0.0) / r.events * 1e6 for r in results],
                    ".1f",
                )
            )
    collector_roles = [
        role for role in cpu_roles if role not in ("redis-server", "client", "mtail")
    ]
    print(
        _row(
            "CPU collector (all processes) us/event",
            [
                sum(r.cpu_seconds.get(x, 0.0) for x in collector_roles) / r.events * 1e6
                for r in results
            ],
            ".0f",
        )
    )
    print(
        _row(
            "CPU redis-server us/event",
            [r.cpu_seconds.get("redis-server", 0.0) / r.events * 1e6 for r in results],
            ".1f",
        )
    )
    with_redis = [
        r.redis_bytes_per_resource for r in results if r.redis_bytes_per_resource is not None
    ]
    if with_redis:
        print(_row("Redis used_memory bytes per tracked resource", with_redis, ",.0f"))


def print_commandstats(result: RunResult, top: int = 12) -> None:
    print(f"\n### Redis INFO commandstats (top {top} by usec, one run)\n")
    print(
        "A script's usec include the commands it calls, which are counted again under their "
        "own names; the percentages are of the sum of both.\n"
    )
    print("| command | calls | usec | usec/call | calls/event | usec/event |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    total = sum(row[2] for row in result.commandstats) or 1
    for name, calls, usec, per_call in result.commandstats[:top]:
        print(
            f"| {name} | {calls:,} | {usec:,} ({usec / total:.0%}) | {per_call:.2f} "
            f"| {calls / result.events:.3f} | {usec / result.events:.2f} |"
        )


def print_slow(result: RunResult, top: int = 10) -> None:
    if not result.slow:
        return
    print("\n### Redis SLOWLOG: calls over 1 ms, by shape (one run)\n")
    print("| call | count | total ms | mean ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, count, total, longest in result.slow[:top]:
        print(f"| `{name}` | {count:,} | {total:,.0f} | {total / count:.1f} | {longest:.1f} |")


def print_profile(result: RunResult, top: int = 25) -> None:
    print(
        "\npy-spy, one recorder per process at 100 Hz, idle samples left out; self = the "
        "innermost Python frame. `Runner.run` as self is time in uvloop's C event loop "
        "(socket reads and writes, callbacks' C parts), below any Python frame."
    )
    for role, counts in result.profile.items():
        total = result.profile_samples.get(role, 0)
        print(f"\n### py-spy: {role}, top {top} functions by self samples ({total:,} samples)\n")
        print("| self | % | function |")
        print("| ---: | ---: | --- |")
        for function, n in counts.most_common(top):
            print(f"| {n:,} | {n / max(total, 1):.1%} | `{function}` |")


def print_causes(stream: Stream, result: RunResult) -> None:
    kinds = ", ".join(
        f"{k} {n:,}" for k, n in stream.kinds.most_common() if k not in ("write", "create")
    )
    causes = ", ".join(f"{k} {n:,}" for k, n in result.causes.most_common())
    print(f"\nfailures generated as: {kinds}")
    print(f"collector's causes:    {causes}")


def header(stream: Stream, settings: dict[str, str]) -> None:
    load = os.getloadavg()
    redis_version = subprocess.run(
        [find_binary("redis-server"), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    print("## precondition-watch end-to-end bench\n")
    print(
        f"machine: {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"redis-server {redis_version.removeprefix('v=')} with persistence off "
        "(--save '', --appendonly no); collector defaults (PW_INGEST_PROCESSES=2, settle process)"
        + "".join(f", {name}={value}" for name, value in settings.items())
    )
    print(f"stream: {stream.describe()}")
    print(f"sending: {SENDERS} keep-alive connections, NDJSON batches of {BATCH}, uncompressed\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=90_000, help="stream size (default 90,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1, help="collector + mtail pairs (default 1)")
    parser.add_argument("--profile", action="store_true", help="one more run under py-spy")
    parser.add_argument("--embedded", action="store_true", help="one run on embedded fakeredis")
    parser.add_argument("--embedded-events", type=int, default=20_000)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PW_NAME=VALUE",
        help="a setting for the collector under test (repeatable); the defaults otherwise",
    )
    parser.add_argument(
        "--hold-settling",
        action="store_true",
        help="settle nothing until the flush: the sending phase measures ingest alone",
    )
    parser.add_argument(
        "--mtail-program",
        type=Path,
        default=MTAIL_PROGRAM,
        help="the mtail baseline's program (default tests/bench_mtail.mtail)",
    )
    parser.add_argument(
        "--soak",
        "--soak-seconds",
        dest="soak",
        type=float,
        metavar="SECONDS",
        help="soak instead: feed a collector for SECONDS at --rate, sampling RSS every 10 s",
    )
    parser.add_argument(
        "--rate", type=float, help="soak rate in events/s (default: half of one measured run)"
    )
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.set)
    if any(not name.startswith("PW_") for name in settings):
        parser.error("--set takes PW_NAME=VALUE")
    if args.hold_settling:
        # No watermark passes a failure, and no service is quiet for long enough, before the
        # flush.
        settings.setdefault("PW_ALLOWED_LATENESS_SECONDS", "86400")
    with tempfile.TemporaryDirectory(prefix="pw-bench-") as tmp:
        workdir = Path(tmp)
        if args.soak is not None:
            return soak(args.soak, args.rate, args.seed, args.events, workdir)
        stream = make_stream(args.events, args.seed)
        header(stream, settings)
        results: list[RunResult] = []
        for n in range(1, args.runs + 1):
            results.append(
                run_once(
                    stream,
                    workdir,
                    mtail_program=args.mtail_program,
                    settings=settings,
                    held=args.hold_settling,
                )
            )
            print(results[-1].line(f"run {n}"), flush=True)
        profiled = None
        if args.profile:
            profiled = run_once(
                stream,
                workdir,
                profile=True,
                mtail_program=args.mtail_program,
                settings=settings,
                held=args.hold_settling,
            )
            print(profiled.line("profiled run (py-spy attached; not in the summary)"), flush=True)
        embedded = None
        if args.embedded:
            small = make_stream(args.embedded_events, args.seed)
            embedded = run_once(small, workdir, embedded=True)
            print(
                embedded.line(f"embedded fakeredis ({len(small.lines):,} events, `make run`)"),
                flush=True,
            )
        if results:
            summary(results)
            print_causes(stream, results[0])
            print_commandstats(results[-1])
            print_slow(results[-1])
        if profiled is not None:
            print_commandstats(profiled)
            print_slow(profiled)
            print_profile(profiled)
        if embedded is not None:
            print(
                f"\nembedded default (`make run`, fakeredis, one process): "
                f"{embedded.rate:,.0f} events/s, peak RSS {embedded.peak_rss_mib['serving']:.0f} "
                f"MiB, CPU {embedded.cpu_seconds['serving']:.1f} s, "
                f"failures counted {embedded.check}"
            )
        checks = [r.check for r in [*results, profiled, embedded] if r is not None]
        return 0 if all(check == "OK" for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
