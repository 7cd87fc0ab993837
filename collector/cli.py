"""The `precondition-watch` command: serve, ingest and demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence

from collector.settings import SettingsError, load_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from collector.api import create_app
    from collector.logs import configure_logging, get_logger
    from collector.processes import tune_gc

    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    get_logger("collector").info("serving", host=settings.host, port=settings.port)
    app = create_app(settings)
    tune_gc()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from collector.client import LogFile, Sender, SendError, follow_file, read_lines

    sender = Sender(
        args.url,
        service=args.service,
        token=args.token,
        batch_lines=args.batch,
        max_attempts=args.attempts,
    )
    progress = sender.progress
    try:
        if args.file == "-":
            sender.send_lines(read_lines(sys.stdin.buffer, follow=args.follow))
        elif args.follow:
            with LogFile(args.file) as probe:
                if probe.compressed:
                    print("precondition-watch ingest: --follow reads plain files", file=sys.stderr)
                    return 2
            sender.send_lines(follow_file(args.file))
        else:
            with LogFile(args.file) as log:
                progress.bytes_total = log.size

                def advance() -> None:
                    progress.bytes_read = log.position()

                sender.send_lines(read_lines(log.lines, on_read=advance))
    except SendError as exc:
        print(f"precondition-watch ingest: {exc}", file=sys.stderr)
        return 1
    except (OSError, EOFError) as exc:  # EOFError: a .gz file cut short
        print(f"precondition-watch ingest: {exc}", file=sys.stderr)
        return 2
    finally:
        sender.close()
    if args.flush:
        import httpx

        token = args.admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answer = httpx.post(args.url.rstrip("/") + "/v1/flush", headers=headers, timeout=120)
        if answer.status_code != 200:
            print(
                f"precondition-watch ingest: flush answered {answer.status_code}: "
                f"{answer.text[:300]}",
                file=sys.stderr,
            )
            return 1
        print(f"flushed: {answer.json()}", file=sys.stderr)
    return 0 if progress.rejected == 0 else 3


def _demo(args: argparse.Namespace) -> int:
    import time

    import orjson

    from collector import demo

    start = args.start if args.start is not None else time.time() - args.duration - 10
    if args.live:
        start = time.time()
    config = demo.DemoConfig(
        seed=args.seed,
        start=start,
        duration=args.duration,
        rate=args.rate,
        deploy_at=args.duration / 2,
    )
    events = demo.deliver(
        demo.generate(config),
        max_delay=args.max_delay,
        duplicate_ratio=args.duplicates,
        seed=args.seed,
    )
    if not args.truth:
        for event in events:
            event.pop("demo_cause", None)
    lines = (orjson.dumps(event) + b"\n" for event in events)
    if args.url is None:
        out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
        with out:
            for line in lines:
                out.write(line)
        return 0
    from collector.client import Sender, SendError

    sender = Sender(args.url, token=args.token, batch_lines=args.batch)
    try:
        if args.live:
            sender.send_lines(_paced(events, lines))
        else:
            sender.send_lines(lines)
    except SendError as exc:
        print(f"precondition-watch demo: {exc}", file=sys.stderr)
        return 1
    finally:
        sender.close()
    return 0


def _paced(events: list[dict[str, object]], lines: Iterable[bytes]) -> Iterator[bytes]:
    """Yield each line when its event time comes (with b"" while waiting, to flush batches)."""
    import time

    for event, line in zip(events, lines, strict=True):
        wait = float(str(event["ts"])) - time.time()
        if wait > 0:
            yield b""
            time.sleep(min(wait, 1.0))
        yield line


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

    ingest = commands.add_parser(
        "ingest",
        help="send a log file (NDJSON, one event per line; .gz too) or stdin to a collector",
    )
    ingest.add_argument("file", help="path of an NDJSON log file (or .gz), or - for stdin")
    ingest.add_argument("--url", default="http://127.0.0.1:8080", help="collector base URL")
    ingest.add_argument("--service", help="service name for lines that carry none")
    ingest.add_argument("--token", help="bearer token (when the collector sets PW_INGEST_TOKENS)")
    ingest.add_argument("--batch", type=int, default=500, help="lines per request")
    ingest.add_argument(
        "--follow",
        action="store_true",
        help="keep sending new lines, through rotation and truncation (tail -F)",
    )
    ingest.add_argument(
        "--attempts",
        type=int,
        default=8,
        help="tries per batch on 429, 503 and connection errors, with jittered backoff",
    )
    ingest.add_argument(
        "--flush", action="store_true", help="settle every pending failure at the end (a replay)"
    )
    ingest.add_argument(
        "--admin-token", help="bearer token for --flush (when the collector sets PW_ADMIN_TOKENS)"
    )
    ingest.set_defaults(run=_ingest)

    demo = commands.add_parser(
        "demo", help="generate realistic traffic: races, a deploy, a gzip proxy, retry bots"
    )
    demo.add_argument("--output", default="-", help="NDJSON file to write (default: stdout)")
    demo.add_argument("--url", help="post to this collector instead of writing a file")
    demo.add_argument("--token", help="bearer token for --url")
    demo.add_argument("--duration", type=float, default=1800, help="seconds of traffic")
    demo.add_argument("--rate", type=float, default=20, help="conditional requests per second")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--start", type=float, help="epoch seconds of the first event")
    demo.add_argument(
        "--live", action="store_true", help="with --url: send in real time, starting now"
    )
    demo.add_argument("--max-delay", type=float, default=2.5, help="out-of-order delivery, s")
    demo.add_argument("--duplicates", type=float, default=0.02, help="ratio of repeated lines")
    demo.add_argument("--batch", type=int, default=500, help="lines per request with --url")
    demo.add_argument(
        "--truth", action="store_true", help="keep each failure's true cause as `demo_cause`"
    )
    demo.set_defaults(run=_demo)
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
