"""Logs: what a real collector writes at debug level never holds a token, a body or a header
value, whatever the requests carried and however they failed."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import httpx
import orjson

from tests.conftest import ROOT, free_port, wait_for

INGEST_TOKEN = "ingest-tok-5b0e7c"
ADMIN_TOKEN = "admin-tok-91d2aa"
WRONG_TOKEN = "guess-tok-44f1c3"
SECRETS = [
    INGEST_TOKEN,
    ADMIN_TOKEN,
    WRONG_TOKEN,
    "body-mark-e3a1",  # in event fields, known and unknown
    "reason-mark-77c2",
    "field-mark-0f9b",
    "bad-line-mark-2d6e",  # in lines that are refused
    "otlp-mark-c81d",
    "loki-mark-a6b4",
    "header-mark-19ff",  # in header values
    "cookie-mark-5e0a",
    "agent-mark-b372",
    "query-mark-d4e8",
]


def test_no_token_body_or_header_value_reaches_the_logs(redis_url: str) -> None:
    """`serve` on a real Redis with ingest and settle processes, at PW_LOG_LEVEL=debug: after
    accepted, refused, unauthorised and malformed requests on every endpoint, none of their
    tokens, bodies or header values is in its output, while the batches are logged."""
    port = free_port()
    env = {
        **os.environ,
        "PW_REDIS_URL": redis_url,
        "PW_INGEST_TOKENS": INGEST_TOKEN,
        "PW_ADMIN_TOKENS": ADMIN_TOKEN,
        "PW_LOG_LEVEL": "debug",
        "PW_ALLOWED_LATENESS_SECONDS": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {
        "Authorization": f"Bearer {INGEST_TOKEN}",
        "X-Custom": "header-mark-19ff",
        "Cookie": "session=cookie-mark-5e0a",
        "User-Agent": "agent-mark-b372",
    }
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, what="collector ready")
        event = {
            "requestId": "r-1",
            "resourceId": "body-mark-e3a1",
            "status": 412,
            "ifMatch": '"a"',
            "currentEtag": '"b"',
            "reason": "reason-mark-77c2",
            "unknown": "field-mark-0f9b",
        }
        lines = [
            orjson.dumps(event),
            b'{"requestId": "bad-line-mark-2d6e", "status": "bad-line-mark-2d6e"}',
            b"bad-line-mark-2d6e not json",
        ]
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            answer = client.post(
                "/v1/events",
                params={"service": "shop", "q": "query-mark-d4e8"},
                content=gzip.compress(b"\n".join(lines)),
                headers={"Content-Encoding": "gzip"},
            )
            assert answer.json()["accepted"] == 1 and len(answer.json()["rejected"]) == 2
            refused = client.post(
                "/v1/events?service=shop",
                content=b"[bad-line-mark-2d6e",
                headers={"Content-Type": "application/json"},
            )
            assert refused.status_code == 400
            unauthorised = client.post(
                "/v1/events?service=shop",
                content=orjson.dumps(event),
                headers={"Authorization": f"Bearer {WRONG_TOKEN}"},
            )
            assert unauthorised.status_code == 401
            line = '{"request_id": "o-1", "status": "otlp-mark-c81d"}'
            record = {"body": {"stringValue": line}}
            otlp = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}
            assert client.post(
                "/v1/logs?service=shop", content=orjson.dumps(otlp),
                headers={"Content-Type": "application/json"},
            ).status_code == 200  # fmt: skip
            loki = {"streams": [{"stream": {"service_name": "shop", "x": "loki-mark-a6b4"},
                                 "values": [["1", "loki-mark-a6b4"]]}]}  # fmt: skip
            pushed = client.post(
                "/loki/api/v1/push",
                content=orjson.dumps(loki),
                headers={"Content-Type": "application/json"},
            )
            assert pushed.status_code == 400 and "line" in pushed.text  # refused, stored none
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert client.post("/v1/flush", headers=admin).status_code == 200
            assert client.post("/v1/flush").status_code == 401
    finally:
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
    output = stdout + stderr
    logs = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert sum(1 for entry in logs if entry["event"] == "batch") >= 3
    assert any(entry["level"] == "debug" for entry in logs)
    leaked = [secret for secret in SECRETS if secret in output]
    assert not leaked, leaked
