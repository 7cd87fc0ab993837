"""Build every dashboard into `dashboards/json/`: `python -m dashboards.build [--check]`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import collector_health, conflicts, deploys, overview

JSON_DIR = Path(__file__).resolve().parent / "json"
# File name (as Grafana provisions it) -> builder.
DASHBOARDS: dict[str, Callable[[], dm.Dashboard]] = {
    "overview.json": overview.build,
    "deploys.json": deploys.build,
    "conflicts.json": conflicts.build,
    "collector.json": collector_health.build,
}


def render(build: Callable[[], dm.Dashboard]) -> str:
    """A dashboard as the committed file holds it: sorted keys, two-space indent, newline."""
    return JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False).encode(build()) + "\n"


def rendered() -> dict[str, str]:
    return {name: render(build) for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a committed file differs, write nothing"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, text in rendered().items():
        path = JSON_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            JSON_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for name in stale:
        print(f"{'stale' if args.check else 'wrote'}: dashboards/json/{name}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
