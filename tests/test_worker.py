"""The settle worker: with a real Redis, a separate process settles and the server counts."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from collector.runtime import Collector
from collector.settings import Settings
from collector.worker import claim_gate, give_way
from tests.conftest import ROOT, free_port, process_family, wait_for


def start_serve(redis_url: str, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`precondition-watch serve` on a free port and the real Redis, once it is ready."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)],
        env={**os.environ, "PW_REDIS_URL": redis_url, **env},
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, what="collector")
    except BaseException:
        server.kill()
        server.wait(timeout=30)
        raise
    return server, base


def test_worker_settles_and_the_server_counts(redis_url: str) -> None:
    """A race posted to `serve` is classified by its settle worker and counted in /metrics."""
    server, base = start_serve(redis_url, PW_ALLOWED_LATENESS_SECONDS="1")
    try:
        now = time.time()
        old, new = '"6f1ed002ab5595859014ebf0951522d9"', '"b5c0b187fe309af0f4d35982fd961d7e"'
        lines = [
            {"ts": now - 3, "service": "wk", "request_id": "w1", "resource_id": "r1",
             "status": 200, "current_etag": old},
            {"ts": now - 2, "service": "wk", "request_id": "w2", "resource_id": "r1",
             "status": 200, "if_match": old, "current_etag": new},
            {"ts": now - 2, "service": "wk", "request_id": "f1", "resource_id": "r1",
             "status": 412, "if_match": old, "current_etag": new},
        ]  # fmt: skip
        body = b"\n".join(orjson.dumps(line) for line in lines)
        assert httpx.post(base + "/v1/events", content=body).json()["accepted"] == 3

        def counted() -> bool:
            text = httpx.get(base + "/metrics").text
            return 'cause="concurrent_write"' in text and 'service="wk"' in text

        # No flush: only the worker settles (after the 1 s idle lateness) and ships the count.
        wait_for(counted, what="the worker's decision counted by the server", timeout=30)
        decision = httpx.get(base + "/v1/services/wk/requests/f1").json()
        assert decision["state"] == "classified"
        assert decision["evidence"]["winner"]["request_id"] == "w2"
    finally:
        server.terminate()
        server.wait(timeout=30)


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of `pid` and their names as `ps` shows them."""
    return {child: name for child, name, _ in process_family(pid) if child != pid}


def test_serve_runs_named_processes_and_stops_them_all(redis_url: str) -> None:
    """Two ingest processes and a settle worker, named for `top`; none outlives `serve`."""
    server, _ = start_serve(redis_url, PW_INGEST_PROCESSES="2")
    try:

        def named() -> list[str]:
            return sorted(n for n in children_of(server.pid).values() if n.startswith("pw-"))

        # The worker names itself once its imports are done, maybe after /readyz answered.
        wait_for(lambda: named() == ["pw-ingest", "pw-ingest", "pw-settle"], what=str(named()))
        children = set(children_of(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)

    def all_gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in children)

    wait_for(all_gone, what="the collector's processes to exit")


@pytest.mark.anyio
async def test_give_way_waits_while_busy_and_no_longer_than_its_limit() -> None:
    calls = 0

    def busy_three_times() -> bool:
        nonlocal calls
        calls += 1
        return calls <= 3

    assert await give_way(lambda: False, limit=5) == pytest.approx(0, abs=0.05)
    waited = await give_way(busy_three_times, limit=5, poll=0.01)
    assert calls == 4 and 0.02 <= waited < 1
    assert 0.2 <= await give_way(lambda: True, limit=0.2, poll=0.01) < 1


@pytest.mark.anyio
async def test_the_worker_is_told_while_ingest_is_saturated() -> None:
    """More batches in flight than ingest lanes: busy; all answered: not busy any more."""
    collector = Collector(Settings(), registry=CollectorRegistry())
    told: list[bool] = []

    class Recorder:
        def ingest_busy(self, busy: bool) -> None:
            told.append(busy)

    collector.worker = Recorder()  # type: ignore[assignment]
    line = orjson.dumps({"service": "b", "request_id": "r", "status": 200})
    await asyncio.gather(*(collector.ingest(line, None, None) for _ in range(3)))
    assert collector.ingest_lanes == 1
    assert True in told and told[-1] is False
    await collector.store.close()


@pytest.mark.anyio
async def test_the_claim_gate_reads_the_flag_the_serving_process_sets() -> None:
    """The worker's gate waits on the shared flag, up to PW_SETTLE_YIELD_SECONDS."""
    flag = multiprocessing.get_context("spawn").Value("b", 0, lock=False)
    assert claim_gate(None, 2.0) is None and claim_gate(flag, 0) is None
    gate = claim_gate(flag, 0.2)
    assert gate is not None
    assert await gate() < 0.1
    flag.value = 1
    assert await gate() >= 0.2


def test_the_collectors_processes_exit_when_serve_is_killed(redis_url: str) -> None:
    """SIGKILL gives `serve` no chance to stop them: they notice and exit on their own, even
    while still starting."""
    server, _ = start_serve(redis_url)
    try:
        children = set(children_of(server.pid))
        assert len(children) >= 3  # two ingest processes and the settle worker, maybe starting
    finally:
        server.kill()
        server.wait(timeout=30)

    def all_gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in children)

    wait_for(all_gone, timeout=20, what="the collector's processes to exit after SIGKILL")
