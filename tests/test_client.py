"""`precondition-watch ingest`: retries without losing or doubling a line, .gz files, following
through rotation and truncation, progress on a terminal or not, and the summary."""

from __future__ import annotations

import gzip
import io
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from collector.client import (
    Backoff,
    LogFile,
    Progress,
    Reporter,
    Sender,
    SendError,
    follow_file,
    read_lines,
)
from tests.conftest import ROOT, free_port, wait_for


class FlakyCollector:
    """A collector behind a bad network: each batch first meets `faults` (a status to answer,
    "drop" for a connection error, "lost" to store it and lose the answer), then is stored."""

    def __init__(self, *faults: int | str) -> None:
        self.faults = list(faults)
        self.stored: list[str] = []
        self.posts = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        fault = self.faults.pop(0) if self.faults else None
        if fault == "drop":
            raise httpx.ConnectError("connection refused", request=request)
        if isinstance(fault, int):
            headers = {"Retry-After": "3"} if fault == 503 else {}
            return httpx.Response(fault, headers=headers, json={"error": "busy"})
        ids = [orjson.loads(x)["id"] for x in gzip.decompress(request.content).splitlines()]
        new = [i for i in ids if i not in self.stored]
        self.stored += new
        if fault == "lost":
            raise httpx.ReadError("connection reset after the body was sent", request=request)
        answer = {"accepted": len(new), "duplicates": len(ids) - len(new), "rejected": []}
        return httpx.Response(200, json=answer)


def sender_for(collector: FlakyCollector, sleeps: list[float], **options: object) -> Sender:
    return Sender(
        "http://127.0.0.1:1",
        batch_lines=3,
        transport=httpx.MockTransport(collector.handle),
        backoff=Backoff(rng=random.Random(4)),
        sleep=sleeps.append,
        reporter=Reporter(io.StringIO(), tty=False),
        **options,  # type: ignore[arg-type]
    )


def lines(n: int) -> list[bytes]:
    return [orjson.dumps({"id": f"r-{i}"}) + b"\n" for i in range(n)]


def test_retries_lose_no_line_and_store_none_twice() -> None:
    """503, 429, dropped connections and a lost answer: every line stored exactly once."""
    collector = FlakyCollector(503, "drop", 429, "lost", "drop")
    sleeps: list[float] = []
    progress = sender_for(collector, sleeps).send_lines(lines(10))
    assert collector.stored == [f"r-{i}" for i in range(10)]
    assert progress.lines == 10 and progress.batches == 4
    assert progress.accepted + progress.duplicates == 10 and progress.duplicates == 3
    assert progress.retries == 5 == len(sleeps)
    assert sleeps[0] >= 3  # Retry-After is a floor


def test_backoff_is_jittered_capped_and_floored() -> None:
    """Waits are spread out, never above base * 2^attempt or the cap, never below Retry-After."""
    backoff = Backoff(base=0.5, cap=4, rng=random.Random(1))
    waits = [backoff.delay(attempt) for attempt in range(8) for _ in range(20)]
    assert len(set(waits)) == len(waits)
    assert all(0 <= w <= 4 for w in waits) and max(waits) > 2
    assert all(backoff.delay(0) <= 0.5 for _ in range(50))
    assert backoff.delay(0, retry_after=7) == 7


def test_a_retry_after_of_other_digits_is_ignored_not_a_crash() -> None:
    """A hostile `Retry-After: ²` (isdigit() is True for it, float() refuses it) is no floor."""

    def busy(request: httpx.Request) -> httpx.Response:
        if not sleeps:
            return httpx.Response(503, headers={b"Retry-After": "\u00b2".encode("latin-1")})
        return httpx.Response(200, json={"accepted": 1, "duplicates": 0, "rejected": []})

    sleeps: list[float] = []
    sender = Sender(
        "http://127.0.0.1:1",
        transport=httpx.MockTransport(busy),
        backoff=Backoff(rng=random.Random(4)),
        sleep=sleeps.append,
        reporter=Reporter(io.StringIO(), tty=False),
    )
    assert sender.send_lines(lines(1)).accepted == 1
    assert len(sleeps) == 1 and sleeps[0] < 1


def test_gives_up_after_the_attempts_and_never_retries_a_400() -> None:
    """A collector that keeps failing ends in SendError; a 400 is final at once."""
    sleeps: list[float] = []
    with pytest.raises(SendError, match="unreachable"):
        sender_for(FlakyCollector(*["drop"] * 9), sleeps, max_attempts=4).send_lines(lines(1))
    assert len(sleeps) == 3
    refused = FlakyCollector(400)
    with pytest.raises(SendError, match="400"):
        sender_for(refused, sleeps).send_lines(lines(1))
    assert refused.posts == 1


def test_gzip_files_are_read_and_sized_on_disk(tmp_path: Path) -> None:
    """A .gz log is decompressed by its magic bytes; progress counts compressed bytes."""
    path = tmp_path / "orders.log.gz"
    path.write_bytes(gzip.compress(b"".join(lines(1000))))
    with LogFile(str(path)) as log:
        assert log.compressed and log.size == path.stat().st_size
        read = list(read_lines(log.lines))
        assert read == lines(1000) and log.position() == log.size


def drain(source: Iterator[bytes]) -> list[bytes]:
    """Lines until the follower says it is idle."""
    found: list[bytes] = []
    for line in source:
        if not line:
            return found
        found.append(line)
    return found


def test_follow_reads_through_rotation_and_truncation(tmp_path: Path) -> None:
    """tail -F: partial lines wait, a rotated file is finished first, a truncated one restarts."""
    path = tmp_path / "app.log"
    path.write_bytes(b"a\nb\n")
    follower = follow_file(str(path), poll=0)
    assert drain(follower) == [b"a\n", b"b\n"]
    with path.open("ab") as log:
        log.write(b"c\npart")
    assert drain(follower) == [b"c\n"]
    with path.open("ab") as log:
        log.write(b"ial\n")
    assert drain(follower) == [b"partial\n"]
    # logrotate: rename, the service still writes a line to the old file, then a new file.
    rotated = tmp_path / "app.log.1"
    path.rename(rotated)
    with rotated.open("ab") as old:
        old.write(b"d\n")
    path.write_bytes(b"e\n")
    assert drain(follower) == [b"d\n", b"e\n"]
    # copytruncate: the same file emptied and written again from the start.
    with path.open("r+b") as log:
        log.truncate(0)
    assert drain(follower) == []
    with path.open("ab") as log:
        log.write(b"f\n")
    assert drain(follower) == [b"f\n"]
    path.unlink()
    assert drain(follower) == []  # missing: it waits
    path.write_bytes(b"g\n")
    assert drain(follower) == [b"g\n"]
    follower.close()


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    """A TTY gets a redrawn bar with events/s and ETA; a pipe plain lines; both the summary."""
    progress = Progress(lines=500, accepted=490, duplicates=10, bytes_read=50, bytes_total=200)
    progress.started -= 10
    tty, pipe = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (pipe, False)):
        reporter = Reporter(out, tty=is_tty)
        reporter.update(progress)
        reporter.finish(progress)
    assert tty.getvalue().startswith("\r\x1b[K[######")
    assert "25% 500 lines 50 events/s ETA 0:00:30" in tty.getvalue()
    assert "\r" not in pipe.getvalue()
    assert pipe.getvalue().splitlines()[0] == (
        "500 lines, 490 accepted, 10 duplicates, 0 rejected, 50 events/s"
    )
    summary = pipe.getvalue().splitlines()[-1]
    assert summary.startswith("done: 500 lines in 0 batches in 10.0 s (50 events/s): 490 accepted")


def test_ingest_command_sends_a_gz_file_and_prints_a_summary(tmp_path: Path) -> None:
    """`precondition-watch ingest FILE.gz --flush` against a real collector: all stored."""
    events = [
        {"service": "orders", "request_id": f"r-{i}", "resource_id": "o-1", "status": 200,
         "current_etag": f'"e{i}"', "ts": 1_790_000_000 + i}
        for i in range(1200)
    ]  # fmt: skip
    path = tmp_path / "orders.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(orjson.dumps(e) for e in events) + b"\n"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PW_REDIS_URL"}
    server = subprocess.Popen(
        [sys.executable, "-m", "collector", "serve", "--port", str(port)], env=env, cwd=ROOT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(base + "/readyz").status_code == 200, what="collector ready")
        result = subprocess.run(
            [sys.executable, "-m", "collector", "ingest", str(path), "--url", base, "--flush"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        assert "done: 1,200 lines in 3 batches" in result.stderr
        assert "1,200 accepted, 0 duplicates, 0 rejected, 0 retries" in result.stderr
        assert "\r" not in result.stderr  # not a terminal: plain lines
        timeline = httpx.get(base + "/v1/services/orders/resources/o-1/timeline?limit=2000")
        assert len(timeline.json()["events"]) == 1200
    finally:
        server.terminate()
        server.wait(timeout=20)
