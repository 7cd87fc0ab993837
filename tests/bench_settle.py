"""`make bench-settle`: the cost of settling alone, per failure, in Python and in Redis.

Stores the end-to-end bench's stream (tests/bench_e2e.py) in a fresh redis-server with nothing
settled yet, then settles every failure in this process and reports wall time, this process's
CPU and Redis's CPU per failure, and Redis's busiest commands. What `make bench` measures
end to end, minus HTTP and ingest: the loop to profile when settling is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import redis

from collector.ingest import Ingestor
from collector.logs import configure_logging
from collector.payload import split_records
from collector.settle import Settler
from collector.store import Store
from tests.bench_e2e import make_stream
from tests.conftest import RedisServer


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run(events: int, seed: int, url: str, client: redis.Redis, profile: bool = False) -> None:
    stream = make_stream(events, seed)
    store = Store.from_url(url, retention_seconds=86400)
    ingestor = Ingestor(store, max_clock_skew=1e9)
    now = time.time()
    for start in range(0, len(stream.lines), 500):
        body = b"\n".join(stream.lines[start : start + 500])
        records = split_records(body, "application/x-ndjson")
        await ingestor.store_batch(records, default_service=None, received_at=now)
    client.config_resetstat()
    settler = Settler(store, window=300, lateness=5)
    cpu, wall, rcpu = time.process_time(), time.perf_counter(), redis_cpu(client)
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    settled = await settler.settle_all(force=True)
    if profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("PW_PROFILE_SORT", "tottime")).print_stats(
            40
        )
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    rcpu = redis_cpu(client) - rcpu
    await store.close()
    print(f"stream: {stream.describe()}")
    print(
        f"settled {settled:,} of {stream.failures:,} failures in {wall:.2f} s "
        f"({settled / wall:,.0f}/s): Python {cpu * 1e6 / settled:.0f} us/failure, "
        f"Redis {rcpu * 1e6 / settled:.0f} us/failure"
    )
    stats = client.info("commandstats")
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:10]
    for name, row in rows:
        print(
            f"  {name.removeprefix('cmdstat_'):18} calls {row['calls']:>8,} "
            f"usec {row['usec']:>10,} per call {row['usec_per_call']:>8.2f} "
            f"per failure {row['usec'] / settled:>7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=90_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the settling")
    args = parser.parse_args()
    configure_logging("warning", "console")
    server = RedisServer()
    server.start()
    try:
        client = redis.Redis(port=server.port)
        asyncio.run(run(args.events, args.seed, server.url, client, args.profile))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
