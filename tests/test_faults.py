"""Nothing acknowledged is lost: real redis-server and collector processes, killed mid-stream.

Each test sends a demo stream in batches of 200 from one sender that retries every batch until
it gets a 200, injects a fault while it runs, then flushes and checks that every failure is
classified, queryable, and counted exactly once in `precondition_failures_total`.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import httpx
import orjson
import pytest
import redis

from collector import demo
from tests.conftest import wait_for
from tests.faults import (
    DurableRedis,
    Sender,
    audit,
    batches_of,
    durable_collector,
    durable_counts,
    failures_counted,
    flush,
    start_collector,
)

pytestmark = pytest.mark.e2e
T = TypeVar("T")


def stream(duration: float = 560.0) -> tuple[list[dict[str, object]], dict[tuple[str, str], str]]:
    """About 12,000 demo events, delivered late and with duplicates, and their failures."""
    events = demo.generate(demo.DemoConfig(duration=duration, deploy_at=duration / 2))
    return demo.deliver(events, max_delay=2.5, duplicate_ratio=0.02), demo.truth(events)


def report(name: str, sender: Sender, failures: int, seen: dict[str, int], counted: float) -> None:
    print(
        f"\n{name}: batches {len(sender.batches)} attempts {sender.attempts} "
        f"statuses {dict(sender.statuses)} accepted {sender.accepted} "
        f"duplicates {sender.duplicates}; failures {failures} {dict(seen)} counted {counted:.0f}"
    )


def test_redis_killed_and_restarted_mid_stream_loses_nothing_acknowledged() -> None:
    """Redis (AOF, fsync always) SIGKILLed ten batches into the stream and back 3 s later: after a
    flush every failure is classified, queryable and counted once."""
    events, failures = stream()
    with durable_collector(PW_ALLOWED_LATENESS_SECONDS="2") as (redis_server, collector):
        sender = Sender(lambda: collector.url, batches_of(events, 200))
        with sender.running():
            wait_for(lambda: sender.sent >= 10, what="ten batches acknowledged")
            redis_server.kill()
            time.sleep(3.0)
            redis_server.start()
        assert sender.sent == len(sender.batches)
        flush(collector.url)
        seen = audit(collector.url, failures)
        counted = failures_counted(collector.url)
        report("redis killed", sender, len(failures), seen, counted)
        assert sender.statuses["503"] > 0, "the fault never reached a request"
        assert seen == {"classified": len(failures)}
        assert counted == len(failures)


def test_collector_killed_mid_stream_and_restarted_loses_nothing_acknowledged() -> None:
    """The serving, ingest and settle processes SIGKILLed together ten batches into the stream and
    started again 2 s later: every failure is decided once, and counted once."""
    events, failures = stream()
    with durable_collector(PW_ALLOWED_LATENESS_SECONDS="2") as (redis_server, collector):
        sender = Sender(lambda: collector.url, batches_of(events, 200))
        with sender.running():
            wait_for(lambda: sender.sent >= 10, what="ten batches acknowledged")
            collector.kill()
            time.sleep(2.0)
            collector.start()
        flush(collector.url)
        seen = audit(collector.url, failures)
        decided, waiting = durable_counts(redis_server.url)
        after_restart = failures_counted(collector.url)
        report("collector killed", sender, len(failures), seen, decided)
        assert sender.statuses["ConnectError"] > 0, "the fault never reached a request"
        assert seen == {"classified": len(failures)}
        assert (decided, waiting) == (len(failures), 0)
        assert 0 < after_restart <= len(failures)  # the rest died with the first process


@pytest.mark.parametrize("child", ["pw-ingest", "pw-settle"])
def test_one_child_process_killed_mid_stream_loses_nothing_acknowledged(child: str) -> None:
    """An ingest or the settle process SIGKILLed alone mid-stream is replaced; every failure is
    classified and counted exactly once in the serving process's /metrics."""
    events, failures = stream()
    with durable_collector(PW_ALLOWED_LATENESS_SECONDS="2") as (redis_server, collector):
        sender = Sender(lambda: collector.url, batches_of(events, 200))
        with sender.running():
            wait_for(lambda: sender.sent >= 10, what="ten batches acknowledged")
            wait_for(lambda: collector.children(child), what=f"the {child} process")
            (victim, *_) = collector.children(child)
            os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(collector.children(child)) >= 1, what=f"a new {child}")
        flush(collector.url)
        seen = audit(collector.url, failures)
        counted = failures_counted(collector.url)
        report(f"{child} killed", sender, len(failures), seen, counted)
        assert victim not in collector.children(child)
        assert seen == {"classified": len(failures)}
        assert counted == len(failures)
        assert durable_counts(redis_server.url) == (len(failures), 0)


def test_slow_redis_answers_503_in_bounded_time_and_recovers() -> None:
    """Redis blocked (DEBUG SLEEP) for 4 s: a batch gets 503 with Retry-After within about the
    Redis timeout (1 s here), nothing of it is acknowledged, and once Redis answers again the
    retried stream is stored whole, classified and counted once."""
    events, failures = stream(240.0)
    batches = batches_of(events, 200)
    with durable_collector(PW_ALLOWED_LATENESS_SECONDS="2", PW_REDIS_TIMEOUT_SECONDS="1") as (
        redis_server,
        collector,
    ):
        blocker = redis.Redis(port=redis_server.port)
        command = ("DEBUG", "SLEEP", 4)
        sleeping = threading.Thread(target=lambda: blocker.execute_command(*command))  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        sleeping.start()
        wait_for(lambda: httpx.get(collector.url + "/readyz", timeout=5).status_code == 503,
                 what="Redis to be busy")  # fmt: skip
        started = time.monotonic()
        answer = httpx.post(collector.url + "/v1/events", content=batches[0], timeout=30)
        waited = time.monotonic() - started
        print(f"\nslow redis: first answer {answer.status_code} after {waited:.2f} s")
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert waited < 3.0
        sleeping.join()
        blocker.close()
        sender = Sender(lambda: collector.url, batches)
        with sender.running():
            pass
        flush(collector.url)
        seen = audit(collector.url, failures)
        counted = failures_counted(collector.url)
        report("slow redis", sender, len(failures), seen, counted)
        assert seen == {"classified": len(failures)}
        assert counted == len(failures)


def family_rss(pid: int) -> int:
    """Resident bytes of a process and its children (the ingest and settle processes)."""
    from tests.conftest import process_family

    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(fields[21]) * page for _, _, fields in process_family(pid))


def push_hard(url: str, body: bytes, senders: int, seconds: float) -> tuple[Counter[int], set[str]]:
    """`senders` threads posting `body` back to back for `seconds`; the statuses, and the
    Retry-After values of the refusals."""
    statuses: Counter[int] = Counter()
    retry_after: set[str] = set()
    deadline = time.monotonic() + seconds

    def send() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                answer = client.post(url + "/v1/events", content=body)
                statuses[answer.status_code] += 1
                if answer.status_code != 200:
                    retry_after.add(answer.headers.get("Retry-After", ""))

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, retry_after


def rss_growth_while(pid: int, action: Callable[[], T]) -> tuple[int, T]:
    """How far the resident memory of a process family rose above its start while `action`
    ran (sampled every 0.1 s), and what `action` returned."""
    baseline = family_rss(pid)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak.append(family_rss(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return max(peak) - baseline, result


def test_overload_is_refused_with_retry_after_and_memory_stays_bounded() -> None:
    """Sixteen senders posting 2 MiB bodies back to back, several times what the collector can
    store: past PW_MAX_INFLIGHT_BYTES (4 MiB) it answers 503 with Retry-After at once, and the
    collector's memory stays bounded (against an unbounded run in the same test)."""
    events = demo.generate(demo.DemoConfig(duration=600))
    body = b"\n".join(orjson.dumps(e) for e in events[:6000])
    assert 1.5 * 2**20 < len(body) < 2.5 * 2**20
    redis_server = DurableRedis()
    redis_server.start()
    growth = {}
    try:
        for name, budget in (("bounded", 4 * 2**20), ("unbounded", 2**40)):
            collector = start_collector(
                redis_server.url,
                PW_MAX_INFLIGHT_BYTES=str(budget),
                PW_INGEST_PROCESSES="1",
                PW_SETTLE_PROCESS="false",
            )
            assert collector.process is not None
            try:
                growth[name], (statuses, retry_after) = rss_growth_while(
                    collector.process.pid,
                    functools.partial(push_hard, collector.url, body, senders=16, seconds=6.0),
                )
            finally:
                collector.stop()
            print(f"\n{name}: statuses {dict(statuses)} retry-after {retry_after} "
                  f"RSS grew {growth[name] / 2**20:.0f} MiB")  # fmt: skip
            if name == "bounded":
                assert statuses[503] > 0 and statuses[200] > 0
                assert retry_after == {"1"}
                assert set(statuses) <= {200, 503}
        assert growth["bounded"] < 120 * 2**20
        assert growth["bounded"] < growth["unbounded"]
    finally:
        redis_server.stop()
