"""The `precondition-watch` command: serve, ingest and demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from collector.settings import SettingsError, load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from collector.api import create_app
    from collector.logs import configure_logging, get_logger

    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    get_logger("collector").info("serving", host=settings.host, port=settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="precondition-watch",
        description="Explain HTTP precondition failures (412, 428, 409) from services' logs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the collector (settings from PW_* variables)")
    serve.add_argument("--host", help="listen address (default PW_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default PW_PORT, 8080)")
    serve.set_defaults(run=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"precondition-watch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
