"""The README is the user's manual: it documents every setting."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx

from collector.settings import Settings
from tests.conftest import ROOT, free_port, wait_for


def test_every_setting_is_in_the_configuration_table() -> None:
    """Each PW_* variable has a row in the README's configuration table, and no stale ones."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(PW_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    expected = {f"PW_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def readme_commands() -> list[str]:
    """Shell commands of the README's bash blocks that talk to a running collector."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("curl", ".venv/bin/precondition-watch demo",
                                ".venv/bin/precondition-watch ingest")):  # fmt: skip
                commands.append(line)
    return commands


def test_readme_commands_work_against_a_collector(tmp_path: Path) -> None:
    """Every curl, demo and ingest command of the README succeeds when pasted."""
    port = free_port()
    env = {**os.environ, "PW_LOG_LEVEL": "warning"}
    env.pop("PW_REDIS_URL", None)
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/precondition-watch"), "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
    )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200)
        commands = readme_commands()
        assert len(commands) >= 6
        for command in commands:
            command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
            command = command.replace("/tmp/demo.ndjson", str(tmp_path / "demo.ndjson"))
            result = subprocess.run(
                ["bash", "-c", f"set -o pipefail; {command}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            assert "error" not in result.stdout.lower(), (command, result.stdout)
    finally:
        server.terminate()
        server.wait(timeout=20)
