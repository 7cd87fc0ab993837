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


def test_the_end_to_end_bench_can_hold_settling_to_measure_ingest_alone() -> None:
    """`--hold-settling`: nothing is counted before the flush (the bench checks that), every
    failure is after it, and the sending phase's rate is reported beside mtail's."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench_e2e", "--events", "3000", "--hold-settling"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "PW_ALLOWED_LATENESS_SECONDS=86400" in done.stdout
    assert "failures counted OK" in done.stdout
    assert "| ratio while sending / mtail |" in done.stdout
    assert "| CPU settle while sending us/event |" in done.stdout
