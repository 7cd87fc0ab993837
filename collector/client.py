"""Sending log lines to a collector: batching, gzip, retries on 503/429, progress."""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import httpx


class SendError(Exception):
    """The collector refused a batch for good (4xx other than 429), or never came back."""


@dataclass
class Progress:
    """Running totals of what the collector answered."""

    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"{self.lines} lines, {self.accepted} accepted, {self.duplicates} duplicates, "
            f"{self.rejected} rejected, {self.lines / elapsed:,.0f} lines/s"
        )


class Sender:
    """Posts NDJSON batches to `POST /v1/events`, retrying what the collector asks to retry."""

    def __init__(
        self,
        url: str,
        *,
        service: str | None = None,
        token: str | None = None,
        batch_lines: int = 500,
        max_attempts: int = 8,
        progress_every: float = 2.0,
        out: IO[str] = sys.stderr,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/v1/events"
        self.params = {"service": service} if service else {}
        headers = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(headers=headers, timeout=30, transport=transport)
        self.batch_lines = batch_lines
        self.max_attempts = max_attempts
        self.progress = Progress()
        self.progress_every = progress_every
        self.out = out
        self._last_report = 0.0

    def close(self) -> None:
        self.client.close()

    def send_lines(self, lines: Iterable[bytes]) -> Progress:
        """Send every line, in batches; report progress on `out` while going."""
        batch: list[bytes] = []
        for line in lines:
            if not line:  # the source is idle: send what we have instead of waiting
                if batch:
                    self.send_batch(batch)
                    batch = []
                continue
            if line.strip():
                batch.append(line.rstrip(b"\r\n"))
            if len(batch) >= self.batch_lines:
                self.send_batch(batch)
                batch = []
        if batch:
            self.send_batch(batch)
        self.report(final=True)
        return self.progress

    def send_batch(self, lines: list[bytes]) -> None:
        body = gzip.compress(b"\n".join(lines), compresslevel=1)
        delay = 0.5
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.post(self.endpoint, content=body, params=self.params)
            except httpx.TransportError as exc:
                if attempt == self.max_attempts:
                    raise SendError(f"collector unreachable: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            if response.status_code in (429, 503) and attempt < self.max_attempts:
                retry_after = response.headers.get("retry-after", "")
                time.sleep(float(retry_after) if retry_after.isdigit() else delay)
                delay = min(delay * 2, 10)
                continue
            if response.status_code != 200:
                raise SendError(f"collector answered {response.status_code}: {response.text[:300]}")
            answer = response.json()
            p = self.progress
            p.lines += len(lines)
            p.batches += 1
            p.accepted += answer["accepted"]
            p.duplicates += answer["duplicates"]
            p.rejected += len(answer["rejected"])
            for item in answer["rejected"][:3]:
                p.errors.append(f"line {p.lines - len(lines) + item['index'] + 1}: {item['error']}")
            self.report()
            return
        raise SendError("collector kept answering 503")  # pragma: no cover

    def report(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - self._last_report >= self.progress_every:
            self._last_report = now
            print(("done: " if final else "") + self.progress.line(), file=self.out, flush=True)
            for error in self.progress.errors[:5]:
                print(f"  rejected {error}", file=self.out, flush=True)
            self.progress.errors.clear()


def read_lines(stream: IO[bytes], *, follow: bool = False, poll: float = 0.25) -> Iterator[bytes]:
    """Lines of a file; with `follow`, keep waiting for new ones like `tail -f` (yielding b""
    whenever it has to wait)."""
    pending = b""
    while True:
        chunk = stream.readline()
        if chunk:
            pending += chunk
            if pending.endswith(b"\n"):
                yield pending
                pending = b""
            continue
        if not follow:
            if pending:
                yield pending
            return
        yield b""  # idle: lets the sender flush a partial batch
        time.sleep(poll)
