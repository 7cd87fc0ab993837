"""The `precondition-watch` command as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import orjson

from tests.conftest import ROOT, free_port, wait_for


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_bad_setting_fails_at_start_with_its_name() -> None:
    """`serve` with a bad PW_ value exits 2 and says which variable."""
    result = run_cli("serve", env={"PW_MAX_BODY_BYTES": "lots"})
    assert result.returncode == 2
    assert "PW_MAX_BODY_BYTES" in result.stderr


def test_serve_on_real_redis_logs_batches_without_secrets(redis_url: str) -> None:
    """`serve` starts, is ready on Redis, ingests, and logs one JSON line per batch."""
    port = free_port()
    env = {
        **os.environ,
        "PW_REDIS_URL": redis_url,
        "PW_INGEST_TOKENS": "s3cret-token",
        "PW_LOG_LEVEL": "info",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, what="collector ready")
        line = {"requestId": "r-1", "resourceId": "o-1", "status": 412, "reason": "body-secret"}
        response = httpx.post(
            base + "/v1/events?service=shop",
            content=orjson.dumps(line),
            headers={"Authorization": "Bearer s3cret-token", "Content-Type": "application/json"},
        )
        assert response.json()["accepted"] == 1
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    logs = [orjson.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    batches = [entry for entry in logs if entry["event"] == "batch"]
    assert len(batches) == 1
    assert batches[0]["accepted"] == 1 and batches[0]["records"] == 1
    assert "duration_ms" in batches[0]
    assert "s3cret-token" not in stderr and "body-secret" not in stderr
    assert not any(entry["event"] == "embedded_redis" for entry in logs)


def test_embedded_mode_says_so() -> None:
    """Without PW_REDIS_URL the collector warns that it runs on fakeredis."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PW_REDIS_URL"}
    env["PW_LOG_LEVEL"] = "info"
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
            what="collector ready",
        )
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "embedded_redis" in stderr and "fakeredis" in stderr
