"""`make bench`: ingest throughput of a real collector on a real Redis.

Sends 200,000 realistic events (about 350 bytes each) as NDJSON batches of 500 and prints
events/s stored, p50/p99 batch latency and the collector's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time

import httpx
import orjson

from tests.conftest import ROOT, RedisServer, free_port, process_family, wait_for


def realistic_events(count: int, seed: int = 1) -> list[bytes]:
    """Lines shaped like a busy API's conditional writes.

    Five services; resources drawn from a heavy-tailed distribution, so a few are hot. Each
    resource has an ETag lineage: a successful write sends the current ETag as If-Match and
    gets a new one; a 412 sends one of the last few ETags (a race or a stale tab), or now and
    then one never seen; a 409 sends the current one; a 428 sends none. Lines also carry
    fields the collector does not read, as shippers add them.
    """
    rng = random.Random(seed)
    start = time.time() - 3600
    services = ["orders", "carts", "profiles", "inventory", "billing"]
    lineage: dict[str, list[str]] = {}
    lines = []
    for i in range(count):
        service = services[i % len(services)]
        resource = f"{service[:3]}-{int(rng.paretovariate(1.2) * 100) % 50000}"
        status = rng.choices([200, 204, 412, 428, 409], [70, 10, 14, 3, 3])[0]
        history = lineage.setdefault(resource, [])
        event: dict[str, object] = {
            "ts": round(start + i * 0.018, 3),
            "service": service,
            "route": f"/api/{service}/{{id}}",
            "method": "PUT",
            "status": status,
            "request_id": f"req-{i:08d}-{rng.getrandbits(40):010x}",
            "resource_id": resource,
            "client_id": f"web/u{rng.randrange(5000):04d}",
            "deploy_version": "v1.42.0",
            "host": f"{service}-{rng.randrange(8)}",
            "duration_ms": rng.randrange(2, 400),
        }
        if status in (200, 204):
            if history:
                event["if_match"] = history[-1]
            history.append(f'"{rng.getrandbits(128):032x}"')
            del history[:-4]
        elif status == 412:
            if history and rng.random() < 0.9:
                event["if_match"] = rng.choice(history[:-1] or history)
            else:
                event["if_match"] = f'"{rng.getrandbits(128):032x}"'
        elif status == 409 and history:
            event["if_match"] = history[-1]
        if history:
            event["current_etag"] = history[-1]
        lines.append(orjson.dumps(event))
    return lines


def cpu_by_name(pid: int) -> dict[str, float]:
    """User plus system CPU seconds of a process (as "serving") and of its children, summed by
    name (`pw-ingest`, `pw-settle`)."""
    seconds: dict[str, float] = {}
    for child, name, fields in process_family(pid):
        used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        role = "serving" if child == pid else name
        seconds[role] = seconds.get(role, 0.0) + used
    return seconds


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children."""
    return sum(cpu_by_name(pid).values())


def peak_rss_mib(pid: int, *, children: bool = True) -> float:
    """Peak resident memory of a process, plus unless told otherwise that of each of its live
    children."""
    total = 0
    for child, _, _ in process_family(pid):
        if child != pid and not children:
            continue
        with open(f"/proc/{child}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


async def post_batches(port: int, bodies: list[bytes], concurrency: int) -> tuple[list[float], int]:
    """POST every body to /v1/events over `concurrency` keep-alive connections.

    A bare HTTP/1.1 client: the load generator shares the machine's two cores with the
    collector and Redis, and a full client library costs it several times more CPU.
    """
    latencies: list[float] = []
    accepted = 0
    pending = iter(bodies)

    async def worker() -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for body in pending:
                started = time.perf_counter()
                writer.write(
                    b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/x-ndjson\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body)
                )
                writer.write(body)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                reply = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {reply[:200]!r}")
                accepted += orjson.loads(reply)["accepted"]
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, accepted


def print_command_stats(port: int, events: int) -> None:
    """Redis time per command (scripts include the commands they call), per event sent."""
    import redis

    with redis.Redis(port=port) as client:
        stats = client.info("commandstats")
    rows = sorted(stats.items(), key=lambda item: -item[1]["usec"])[:12]
    print("redis commandstats (us per event, calls per event):")
    for name, row in rows:
        command = name.removeprefix("cmdstat_")
        print(f"  {command:20s} {row['usec'] / events:6.2f} us  {row['calls'] / events:6.3f}")


def machine_speed(lines: list[bytes]) -> float:
    """Microseconds this machine takes to read and parse one event, in this process: shared
    hosts run at different speeds from hour to hour, and the other figures move with this one.
    """
    from collector.event import Defaults, parse_event

    sample = lines[:20_000]
    defaults = Defaults(None, time.time(), 300.0)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for line in sample:
            parse_event(orjson.loads(line), defaults)
        best = min(best, time.process_time() - started)
    return best / len(sample) * 1e6


def failures_counted(base: str) -> float:
    """Sum of precondition_failures_total on the collector's /metrics."""
    text = httpx.get(base + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("precondition_failures_total{")
    )


def wait_until_settled(base: str, failures: int, timeout: float = 300) -> float:
    """Seconds until every failure sent is counted with a cause (polled every 0.1 s)."""
    started = time.perf_counter()
    while failures_counted(base) < failures:
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"failures not all settled after {timeout} s")
        time.sleep(0.1)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    # Sixteen batches in flight: a fleet of shippers, enough to keep every core busy.
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--redis-stats", action="store_true", help="print Redis's busiest commands afterwards"
    )
    args = parser.parse_args()

    lines = realistic_events(args.events)
    failures = sum(orjson.loads(line)["status"] in (409, 412, 428) for line in lines)
    mean_size = statistics.fmean(len(line) for line in lines)
    bodies = [b"\n".join(lines[i : i + args.batch]) for i in range(0, len(lines), args.batch)]
    redis_server = RedisServer()
    redis_server.start()
    port = free_port()
    env = {**os.environ, "PW_REDIS_URL": redis_server.url, "PW_LOG_LEVEL": "warning"}
    collector = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)], env=env, cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    print(f"events:             {len(lines)} ({failures} failures), {mean_size:.0f} bytes each")
    print(f"batches:            {len(bodies)} of {args.batch}, {args.concurrency} in flight")
    print(f"machine speed:      {machine_speed(lines):.2f} us to parse an event (lower is faster)")
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, what="collector")
        if os.environ.get("PW_SETTLE_PROCESS", "true").lower() not in ("false", "0"):
            # The settle process names itself once its imports are done: measure from then,
            # not its start-up.
            wait_for(
                lambda: any(name == "pw-settle" for _, name, _ in process_family(collector.pid)),
                what="the settle process",
            )
        assert redis_server.process is not None
        pids = (collector.pid, redis_server.process.pid)
        cpu_before = {pid: cpu_seconds(pid) for pid in pids}
        roles_before = cpu_by_name(collector.pid)
        client_before = time.process_time()
        started = time.perf_counter()
        latencies, accepted = asyncio.run(post_batches(port, bodies, args.concurrency))
        elapsed = time.perf_counter() - started
        cpu = [cpu_seconds(pid) - cpu_before[pid] for pid in pids]
        roles = {
            role: used - roles_before.get(role, 0.0)
            for role, used in cpu_by_name(collector.pid).items()
        }
        client_cpu = time.process_time() - client_before
        settled_during = failures_counted(base)
        latencies.sort()
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        print(f"events stored:      {accepted}")
        print(f"throughput:         {accepted / elapsed:,.0f} events/s ({elapsed:.1f} s)")
        print(f"batch latency:      p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        print(
            f"collector peak RSS: {peak_rss_mib(collector.pid):.0f} MiB in all its processes "
            f"(serving process {peak_rss_mib(collector.pid, children=False):.0f} MiB)"
        )
        print(
            f"CPU while sending:  collector {cpu[0]:.1f} s (serving {roles['serving']:.1f} s, "
            f"ingest processes {roles.get('pw-ingest', 0.0):.1f} s, "
            f"settle worker {roles.get('pw-settle', 0.0):.1f} s), "
            f"redis-server {cpu[1]:.1f} s, this client {client_cpu:.1f} s"
        )
        print(f"settled meanwhile:  {settled_during:.0f} of {failures} failures", flush=True)
        # The bench replays an hour of traffic in seconds: like any replay it ends with a flush
        # (settle what the watermark still holds back) instead of waiting out the lateness.
        flush_started = time.perf_counter()
        httpx.post(base + "/v1/flush", timeout=300).raise_for_status()
        wait_until_settled(base, failures)
        drain = time.perf_counter() - flush_started
        cpu = [cpu_seconds(pid) - cpu_before[pid] for pid in pids]
        print(
            f"all settled:        {drain:.1f} s after the last batch (POST /v1/flush); "
            f"stored and classified: {accepted / (elapsed + drain):,.0f} events/s"
        )
        print(f"CPU until settled:  collector {cpu[0]:.1f} s, redis-server {cpu[1]:.1f} s")
        if args.redis_stats:
            print_command_stats(redis_server.port, len(lines))
    finally:
        collector.terminate()
        collector.wait(timeout=30)
        redis_server.stop()
    return 0 if accepted == len(lines) else 1


if __name__ == "__main__":
    sys.exit(main())
