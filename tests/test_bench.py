"""`make bench` runs end to end: a small run stores every event and classifies every failure."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_bench_stores_and_settles_a_small_run() -> None:
    """The bench's own collector and redis-server start, take every batch and settle them."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench_ingest", "--events", "3000", "--batch", "100"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "events stored:      3000" in done.stdout
    assert "all settled:" in done.stdout
    assert "throughput:" in done.stdout
