"""Sending log lines to a collector: reading files (gzip, followed through rotation), batching,
retries with jittered backoff, progress and the summary.

A batch is posted until the collector acknowledges it: on 429 or 503 (after `Retry-After`), and
on connection errors, the same bytes are sent again, so no line is lost; a batch that was
stored before its answer got lost comes back as duplicates, so no line is stored twice. Only
whole lines are sent: a followed file's last line waits for its newline.
"""

from __future__ import annotations

import gzip
import os
import random
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, cast

import httpx

RETRY_STATUSES = frozenset({429, 503})
GZIP_MAGIC = b"\x1f\x8b"


class SendError(Exception):
    """The collector refused a batch for good (4xx other than 429), or never came back."""


@dataclass
class Progress:
    """Running totals of what was read and what the collector answered."""

    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    bytes_read: int = 0  # of the file as it lies on disk (compressed for .gz)
    bytes_total: int | None = None  # None: a stream or a followed file, no ETA
    started: float = field(default_factory=time.monotonic)
    errors: list[str] = field(default_factory=list)

    def rate(self) -> float:
        return self.lines / max(time.monotonic() - self.started, 1e-9)

    def eta(self) -> float | None:
        """Seconds left at the current pace, when the size is known."""
        if not self.bytes_total or not self.bytes_read:
            return None
        elapsed = time.monotonic() - self.started
        left = max(self.bytes_total - self.bytes_read, 0)
        return elapsed * left / self.bytes_read

    def line(self) -> str:
        return (
            f"{self.lines:,} lines, {self.accepted:,} accepted, {self.duplicates:,} duplicates, "
            f"{self.rejected:,} rejected, {self.rate():,.0f} events/s"
        )

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"done: {self.lines:,} lines in {self.batches:,} batches in {elapsed:.1f} s "
            f"({self.rate():,.0f} events/s): {self.accepted:,} accepted, "
            f"{self.duplicates:,} duplicates, {self.rejected:,} rejected, "
            f"{self.retries:,} retries"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Reporter:
    """Progress on `out`: a bar redrawn in place on a terminal, a plain line now and then
    otherwise (a log file or CI has no use for carriage returns)."""

    def __init__(self, out: IO[str], every: float = 2.0, *, tty: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.every = 0.2 if self.tty else every
        self._last = 0.0

    def bar(self, progress: Progress, width: int = 24) -> str:
        eta = progress.eta()
        head = f"{progress.lines:,} lines {progress.rate():,.0f} events/s"
        if progress.bytes_total and eta is not None:
            done = min(progress.bytes_read / progress.bytes_total, 1.0)
            filled = round(done * width)
            bar = "#" * filled + "-" * (width - filled)
            return f"[{bar}] {done:4.0%} {head} ETA {_clock(eta)}"
        return head

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        if self.tty:
            print("\r\x1b[K" + self.bar(progress), end="", file=self.out, flush=True)
        else:
            print(progress.line(), file=self.out, flush=True)
        self._errors(progress)

    def finish(self, progress: Progress) -> None:
        if self.tty:
            print("\r\x1b[K", end="", file=self.out)
        self._errors(progress)
        print(progress.summary(), file=self.out, flush=True)

    def _errors(self, progress: Progress) -> None:
        for error in progress.errors[:5]:
            prefix = "\r\x1b[K" if self.tty else ""
            print(f"{prefix}  rejected {error}", file=self.out, flush=True)
        progress.errors.clear()


@dataclass
class Backoff:
    """Full-jitter exponential backoff (a uniform wait up to base * 2^attempt, capped), so many
    senders that failed together do not retry together; `Retry-After` is a floor."""

    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = self.rng.uniform(0, min(self.cap, self.base * 2**attempt))
        return max(wait, retry_after or 0.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isascii() and value.isdigit() else None


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
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        reporter: Reporter | None = None,
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
        self.reporter = reporter or Reporter(out, progress_every)
        self.backoff = backoff or Backoff()
        self.sleep = sleep

    def close(self) -> None:
        self.client.close()

    def send_lines(self, lines: Iterable[bytes], *, finish: bool = True) -> Progress:
        """Send every line, in batches; b"" from the source means it is idle: send what is
        pending instead of waiting. Reports progress, and the summary at the end."""
        batch: list[bytes] = []
        try:
            for line in lines:
                if not line:
                    if batch:
                        self.send_batch(batch)
                        batch = []
                    continue
                if line.strip():
                    batch.append(line.rstrip(b"\r\n"))
                if len(batch) >= self.batch_lines:
                    self.send_batch(batch)
                    batch = []
        finally:
            # Ctrl-C while following: the lines already read are still sent.
            if batch:
                self.send_batch(batch)
            if finish:
                self.reporter.finish(self.progress)
        return self.progress

    def send_batch(self, lines: list[bytes]) -> None:
        """Post one batch until it is acknowledged; raises SendError when it never is."""
        body = gzip.compress(b"\n".join(lines), compresslevel=1)
        for attempt in range(self.max_attempts):
            last = attempt == self.max_attempts - 1
            try:
                response = self.client.post(self.endpoint, content=body, params=self.params)
            except httpx.TransportError as exc:
                if last:
                    raise SendError(f"collector unreachable: {exc}") from exc
                self._wait(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                self._wait(attempt, _retry_after(response))
                continue
            if response.status_code != 200:
                raise SendError(f"collector answered {response.status_code}: {response.text[:300]}")
            self._count(lines, response.json())
            return
        raise SendError(f"collector kept answering 503 or 429 ({self.max_attempts} attempts)")

    def _wait(self, attempt: int, retry_after: float | None) -> None:
        self.progress.retries += 1
        self.sleep(self.backoff.delay(attempt, retry_after))

    def _count(self, lines: list[bytes], answer: dict[str, object]) -> None:
        p = self.progress
        first_line = p.lines + 1
        p.lines += len(lines)
        p.batches += 1
        p.accepted += int(answer["accepted"])  # type: ignore[call-overload]
        p.duplicates += int(answer["duplicates"])  # type: ignore[call-overload]
        rejected: list[dict[str, object]] = answer["rejected"]  # type: ignore[assignment]
        p.rejected += len(rejected)
        for item in rejected[:3]:
            p.errors.append(f"line {first_line + int(str(item['index']))}: {item['error']}")
        self.reporter.update(p)


class LogFile:
    """A log file to send, decompressed when it is gzip (told by its first bytes, not its
    name); its size and position are those on disk, compressed or not, for the ETA."""

    def __init__(self, path: str) -> None:
        self.raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.compressed = self.raw.read(2) == GZIP_MAGIC
        self.raw.seek(0)
        self.lines: IO[bytes] = (
            cast(IO[bytes], gzip.GzipFile(fileobj=self.raw, mode="rb"))
            if self.compressed
            else self.raw
        )
        self.size = os.fstat(self.raw.fileno()).st_size

    def position(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.lines.close()
        self.raw.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_lines(
    stream: IO[bytes],
    *,
    follow: bool = False,
    poll: float = 0.25,
    on_read: Callable[[], None] | None = None,
) -> Iterator[bytes]:
    """Lines of a stream; with `follow`, keep waiting for new ones like `tail -f` (yielding b""
    whenever it has to wait). `on_read` is called after each line read (for progress)."""
    pending = b""
    while True:
        chunk = stream.readline()
        if chunk:
            pending += chunk
            if pending.endswith(b"\n"):
                yield pending
                pending = b""
            if on_read is not None:
                on_read()
            continue
        if not follow:
            if pending:
                yield pending
            return
        yield b""  # idle: lets the sender flush a partial batch
        time.sleep(poll)


def follow_file(
    path: str,
    *,
    poll: float = 0.25,
    stop: Callable[[], bool] = lambda: False,
    from_start: bool = True,
) -> Generator[bytes, None, None]:
    """Lines of the file at `path` as it grows, like `tail -F`: when the file is replaced
    (rotated: another inode at the path) the old one is read to its end first, then the new one
    from its start; when it shrinks (truncated in place, `copytruncate`) reading restarts at its
    start; while the path is missing it waits. Yields b"" whenever it waits."""
    stream: IO[bytes] | None = None
    inode: tuple[int, int] | None = None
    pending = b""
    try:
        while not stop():
            if stream is None:
                try:
                    stream = open(path, "rb")  # noqa: SIM115 - closed below or on rotation
                except FileNotFoundError:
                    yield b""
                    time.sleep(poll)
                    continue
                info = os.fstat(stream.fileno())
                inode = (info.st_dev, info.st_ino)
                if not from_start:
                    stream.seek(0, os.SEEK_END)
                from_start = True  # every later file is new: read it whole
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending
                    pending = b""
                continue
            # At the end: has the file been rotated or truncated meanwhile?
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) != inode:
                # Rotated: lines written to the old file just before the rename come first.
                rest = pending + stream.read()
                for line in rest.splitlines(keepends=True):
                    yield line if line.endswith(b"\n") else line + b"\n"
                pending = b""
                stream.close()
                stream = None
                continue
            if now is not None and now.st_size < stream.tell():
                stream.seek(0)
                pending = b""
                continue
            yield b""
            time.sleep(poll)
    finally:
        if stream is not None:
            stream.close()
