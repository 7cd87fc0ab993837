"""Child processes: started with the settings, restarted when dead, never outliving the parent,
always ended by stop()."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from pydantic import SecretStr

from collector.children import Channel, Child, ChildNotStartedError
from collector.settings import Settings
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.anyio


# -- what the children run (module-level: spawn imports them by name) --------------------------


async def sleep_forever(settings: Settings, *args: object) -> None:
    await asyncio.Event().wait()


async def echo(settings: Settings, channel: Channel) -> None:
    """Answer each message with it and the ingest tokens the child was given."""
    assert settings.ingest_tokens is not None
    while True:
        message = await channel.receive()
        channel.send((message, settings.ingest_tokens.get_secret_value()))


async def ignore_sigterm(settings: Settings, channel: Channel) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel.send("ignoring SIGTERM")
    await asyncio.Event().wait()


# -- helpers ----------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- the tests --------------------------------------------------------------------------------


async def test_a_channel_child_gets_the_settings_with_secrets_and_answers() -> None:
    settings = Settings(ingest_tokens=SecretStr("t0ken-a,t0ken-b"))
    child = Child(settings, "pw-test", echo, channel=True)
    child.start()
    try:
        channel = await child.connect()
        assert child.alive()
        channel.send({"n": 1})
        channel.send(b"two")
        assert await channel.receive() == ({"n": 1}, "t0ken-a,t0ken-b")
        assert await channel.receive() == (b"two", "t0ken-a,t0ken-b")
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        with pytest.raises(EOFError):
            await channel.receive()
        assert not child.alive()
    finally:
        child.stop()


async def test_a_child_that_dies_is_restarted() -> None:
    child = Child(Settings(), "pw-test", sleep_forever)
    assert not child.restart_if_dead()  # never started: nothing to restart
    child.start()
    try:
        first = child.pid
        assert first is not None and child.alive()
        assert not child.restart_if_dead()
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: not child.alive(), what="the child's exit")
        assert child.restart_if_dead()
        assert child.alive() and child.pid not in (None, first)
    finally:
        child.stop()
    assert not child.alive()
    assert not child.restart_if_dead()  # stopped means stopped


async def test_a_channel_child_that_dies_before_it_is_ready_is_started_again() -> None:
    child = Child(Settings(ingest_tokens=SecretStr("tok")), "pw-test", echo, channel=True)
    child.start()
    try:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)  # still importing: it never said it was ready
        with pytest.raises(ChildNotStartedError):
            await child.connect()
        assert not child.alive()
        assert child.restart_if_dead()
        assert not child.alive()  # not before connect(): nothing may be sent to it yet
        channel = await child.connect()
        channel.send("again")
        assert await channel.receive() == ("again", "tok")
    finally:
        child.stop()


ORPHAN = """
import asyncio, sys
from collector.children import Child
from collector.settings import Settings
from tests.test_children import sleep_forever

async def main():
    child = Child(Settings(), "pw-orphan", sleep_forever, channel=True)
    child.start()
    if sys.argv[1] == "ready":
        await child.connect()
    print("child", child.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("when", ["ready", "starting"])
def test_a_child_exits_when_its_parent_is_sigkilled(when: str) -> None:
    """SIGKILL gives the parent no chance to stop its child: the child notices and exits, even
    one still importing when its parent died."""
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, when], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        # Past the parent's log lines, also on stdout.
        line = next(line for line in parent.stdout if line.startswith("child "))
        pid = int(line.split()[1])
        assert not gone(pid)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    wait_for(lambda: gone(pid), timeout=30, what="the orphaned child's exit")


async def test_stop_ends_a_child_that_ignores_sigterm() -> None:
    child = Child(Settings(), "pw-test", ignore_sigterm, channel=True)
    child.start()
    channel = await child.connect()
    assert await channel.receive() == "ignoring SIGTERM"
    process = child.process
    assert process is not None
    started = time.monotonic()
    child.stop(timeout=0.5)
    assert time.monotonic() - started < 10
    assert process.exitcode == -signal.SIGKILL
    assert not child.alive()
