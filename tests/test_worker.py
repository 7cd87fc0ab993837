"""The settle worker: with a real Redis, a separate process settles and the server counts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import orjson

from tests.conftest import ROOT, free_port, wait_for


def test_worker_settles_and_the_server_counts(redis_url: str) -> None:
    """A race posted to `serve` is classified by its settle worker and counted in /metrics."""
    port = free_port()
    env = {**os.environ, "PW_REDIS_URL": redis_url, "PW_ALLOWED_LATENESS_SECONDS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, what="collector")
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
