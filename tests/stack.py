"""A local monitoring stack of real processes, for end-to-end tests and `make stack`.

redis-server, the collector (`.venv/bin/precondition-watch serve` on that Redis), Alertmanager,
Prometheus and a webhook receiver, each on a 127.0.0.1 port, each polled until ready, and all
stopped in reverse order on exit, also when one of them fails to start:

    from tests.stack import Stack

    with Stack(tmp_path, scrape_interval="1s", evaluation_interval="1s") as stack:
        stack.collector.url                  # "http://127.0.0.1:<port>"
        stack.prometheus.query("up")         # an instant query's result list
        stack.prometheus.alerts()            # pending and firing alerts
        stack.receiver.alerts("page")        # (received_at, alert) that Alertmanager delivered

Prometheus and Alertmanager run the committed `deploy/prometheus.yml` and
`deploy/alertmanager.yml`, changed only where a local run must differ: scrape targets and webhook
URLs point at this stack's ports, `rule_files` at `rules` (default `alerts/rules.yml`), and the
intervals and Alertmanager's `group_wait`/`group_interval`/`repeat_interval` at what is given.
Each process writes its output to `<workdir>/<name>.log`.

`Stack` takes: `rules` (rule files), `scrape_interval` and `evaluation_interval` (Prometheus
durations, default 15s), `alertmanager_timing` (route timings to override), `ports` (`Ports`,
0 for a free port), `collector_env` (more `PW_*` settings) and `on_notification` (called with
each `Notification`). The parts also start alone: `alertmanager_process(workdir, port,
alertmanager_config(receiver.port, timing))` with a `Receiver`, `prometheus_process`,
`collector_process`, `redis_process`; each has `start()` and `stop()`.

`python -m tests.stack` (`make stack`) runs the stack on the ports the committed configs name,
with `precondition-watch demo --live` sending traffic, prints the URLs and every notification,
and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from tests.conftest import ROOT, find_binary, free_port

DEPLOY = ROOT / "deploy"
RULES = ROOT / "alerts" / "rules.yml"
COLLECTOR_JOB = "precondition-watch"
HOST = "127.0.0.1"


class StackError(Exception):
    """A process of the stack exited or never became ready."""


class ManagedProcess:
    """One child process in a session of its own (Ctrl-C in a terminal reaches only the stack,
    which then stops its children in order), its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        ready: Callable[[], bool],
        env: Mapping[str, str] | None = None,
        url: str = "",
        timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.url = url  # where it answers HTTP, if it does
        self.argv = list(argv)
        self.log = log
        self.env = dict(env) if env is not None else None
        self._ready = ready
        self._timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            try:
                if self._ready():
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.05)
        raise StackError(f"{self.name} not ready after {self._timeout}s: {self.tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its whole session if it has not exited within 15 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the collector's children too
            process.wait(timeout=10)

    def tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _answers(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


@dataclass(frozen=True)
class Notification:
    """One webhook call of Alertmanager: the receiver (URL path) and the alerts of one group."""

    receiver: str
    received_at: float  # wall clock, epoch seconds
    body: dict[str, Any]


class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: records every notification it is sent."""

    def __init__(
        self, port: int, on_notification: Callable[[Notification], None] | None = None
    ) -> None:
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.notifications: list[Notification] = []
        self._lock = threading.Lock()
        self._on_notification = on_notification
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                receiver._record(Notification(self.path.strip("/"), time.time(), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the notifications are the log

        self._server = ThreadingHTTPServer((HOST, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _record(self, notification: Notification) -> None:
        with self._lock:
            self.notifications.append(notification)
        if self._on_notification is not None:
            self._on_notification(notification)

    def alerts(self, receiver: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        """Every alert delivered (to `receiver`, e.g. "page"), with when it was received."""
        with self._lock:
            return [
                (n.received_at, alert)
                for n in self.notifications
                if receiver is None or n.receiver == receiver
                for alert in n.body.get("alerts", [])
            ]


class Prometheus(ManagedProcess):
    """Prometheus, with a few calls of its HTTP API."""

    def _get(self, path: str, **params: str) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: `[{"metric": {...}, "value": [ts, "v"]}, ...]`."""
        result: list[dict[str, Any]] = self._get("/api/v1/query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, with `labels`, `state` and `activeAt`."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return alerts

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """Exemplars of the series `expr` selects between `start` and `end` (epoch seconds)."""
        found: list[dict[str, Any]] = self._get(
            "/api/v1/query_exemplars", query=expr, start=str(start), end=str(end)
        )
        return found

    def last_evaluation(self) -> float:
        """When the oldest of the latest rule group evaluations ran (epoch seconds): every rule
        has been evaluated on the data up to then."""
        groups = self._get("/api/v1/rules")["groups"]
        stamps = [_parse_time(g["lastEvaluation"]) for g in groups]
        return min(stamps) if stamps else 0.0


def _parse_time(text: str) -> float:
    """An RFC 3339 time of Prometheus' API; Python 3.11 reads its nanoseconds and `Z`."""
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the stack; 0 picks a free one."""

    collector: int = 0
    prometheus: int = 0
    alertmanager: int = 0
    receiver: int = 0
    redis: int = 0

    def resolved(self) -> Ports:
        return Ports(
            *(
                port or free_port()
                for port in (
                    self.collector,
                    self.prometheus,
                    self.alertmanager,
                    self.receiver,
                    self.redis,
                )
            )
        )


def prometheus_config(
    ports: Ports, rules: Sequence[Path], scrape_interval: str, evaluation_interval: str
) -> dict[str, Any]:
    """deploy/prometheus.yml pointed at this stack."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=scrape_interval, evaluation_interval=evaluation_interval
    )
    config["rule_files"] = [str(path) for path in rules]
    for manager in config["alerting"]["alertmanagers"]:
        manager["static_configs"] = [{"targets": [f"{HOST}:{ports.alertmanager}"]}]
    jobs = {
        COLLECTOR_JOB: ports.collector,
        "prometheus": ports.prometheus,
        "alertmanager": ports.alertmanager,
    }
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"{HOST}:{jobs[job['job_name']]}"]}]
    return config


def alertmanager_config(receiver_port: int, timing: Mapping[str, str]) -> dict[str, Any]:
    """deploy/alertmanager.yml with its webhooks on a local receiver (same paths) and the route
    timings (`group_wait`, `group_interval`, `repeat_interval`) given."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    config["route"].update(timing)
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://{HOST}:{receiver_port}{urlsplit(hook['url']).path}"
    return config


def redis_process(workdir: Path, port: int) -> ManagedProcess:
    """redis-server without persistence."""
    argv = [find_binary("redis-server"), "--port", str(port), "--bind", HOST, "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"]
    return ManagedProcess(
        "redis-server", argv, log=workdir / "redis.log", ready=lambda: _redis_ready(port)
    )


def collector_process(
    workdir: Path, port: int, redis_url: str, env: Mapping[str, str]
) -> ManagedProcess:
    """`precondition-watch serve` on the given Redis, with `env` added to its environment."""
    url = f"http://{HOST}:{port}"
    return ManagedProcess(
        "collector",
        [str(ROOT / ".venv" / "bin" / "precondition-watch"), "serve", "--port", str(port)],
        log=workdir / "collector.log",
        url=url,
        ready=_answers(url + "/readyz"),
        env={
            **os.environ,
            "PW_LOG_LEVEL": "warning",
            **env,
            "PW_REDIS_URL": redis_url,
            "PW_HOST": HOST,
        },
    )


def alertmanager_process(workdir: Path, port: int, config: Mapping[str, Any]) -> ManagedProcess:
    """Alertmanager with `config`, without clustering (which would listen beyond loopback)."""
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(dict(config)))
    url = f"http://{HOST}:{port}"
    argv = [find_binary("alertmanager"), f"--config.file={workdir / 'alertmanager.yml'}"]
    argv += [f"--storage.path={workdir / 'alertmanager'}", f"--web.listen-address={HOST}:{port}"]
    argv += ["--cluster.listen-address=", "--log.level=warn"]
    return ManagedProcess(
        "alertmanager",
        argv,
        log=workdir / "alertmanager.log",
        url=url,
        ready=_answers(url + "/-/ready"),
    )


def prometheus_process(workdir: Path, port: int, config: Mapping[str, Any]) -> Prometheus:
    """Prometheus with `config` and exemplar storage."""
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(dict(config)))
    url = f"http://{HOST}:{port}"
    argv = [find_binary("prometheus"), f"--config.file={workdir / 'prometheus.yml'}"]
    argv += [f"--storage.tsdb.path={workdir / 'prometheus'}", f"--web.listen-address={HOST}:{port}"]
    argv += ["--enable-feature=exemplar-storage", "--log.level=warn"]
    return Prometheus(
        "prometheus",
        argv,
        log=workdir / "prometheus.log",
        url=url,
        ready=_answers(url + "/-/ready"),
    )


@dataclass
class Stack:
    """The processes of a local Precondition Watch installation; a context manager."""

    workdir: Path
    rules: Sequence[Path] = (RULES,)
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    # e.g. {"group_wait": "1s", "group_interval": "1s"}; empty: the committed timings
    alertmanager_timing: Mapping[str, str] = field(default_factory=dict)
    ports: Ports = field(default_factory=Ports)
    collector_env: Mapping[str, str] = field(default_factory=dict)
    on_notification: Callable[[Notification], None] | None = None

    def __post_init__(self) -> None:
        self.ports = self.ports.resolved()
        self.workdir.mkdir(parents=True, exist_ok=True)
        p, w = self.ports, self.workdir
        self.redis_url = f"redis://{HOST}:{p.redis}/0"
        self.redis = redis_process(w, p.redis)
        self.collector = collector_process(w, p.collector, self.redis_url, self.collector_env)
        self.receiver = Receiver(p.receiver, self.on_notification)
        self.alertmanager = alertmanager_process(
            w, p.alertmanager, alertmanager_config(p.receiver, self.alertmanager_timing)
        )
        self.prometheus = prometheus_process(
            w,
            p.prometheus,
            prometheus_config(p, self.rules, self.scrape_interval, self.evaluation_interval),
        )

    def start(self) -> Stack:
        """Start everything in dependency order; on any failure stop what did start."""
        try:
            for part in self._parts():
                part.start()
            self._wait_for_first_scrape()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_first_scrape(self, timeout: float = 30.0) -> None:
        """Prometheus applies discovered targets every 5 s: ready is when it scraped the
        collector once."""
        expr = f'up{{job="{COLLECTOR_JOB}"}} == 1'
        deadline = time.monotonic() + timeout
        while not self.prometheus.query(expr):
            if time.monotonic() > deadline:
                raise StackError(f"Prometheus has not scraped the collector in {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every part, newest first; safe to call twice."""
        for part in reversed(self._parts()):
            part.stop()

    def _parts(self) -> list[ManagedProcess | Receiver]:
        return [self.redis, self.collector, self.receiver, self.alertmanager, self.prometheus]

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _redis_ready(port: int) -> bool:
    import redis

    client = redis.Redis(host=HOST, port=port, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# -- make stack --------------------------------------------------------------------------------


def _print_notification(notification: Notification) -> None:
    for alert in notification.body.get("alerts", []):
        labels = alert.get("labels", {})
        where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
        stamp = time.strftime("%H:%M:%S", time.localtime(notification.received_at))
        print(
            f"{stamp} {notification.receiver:<6} {alert.get('status', '?'):<8} "
            f"{labels.get('alertname', '?')} {{{where}}}",
            flush=True,
        )


def _run_until_interrupted(stack: Stack, *, demo: bool) -> None:
    """Print where everything is, start the demo, and wait for Ctrl-C (or SIGTERM)."""
    print(f"collector     {stack.collector.url}  (on {stack.redis_url})")
    print(f"prometheus    {stack.prometheus.url}/alerts")
    print(f"alertmanager  {stack.alertmanager.url}")
    print(f"notifications {stack.receiver.url}/page and /ticket, printed below")
    print(f"logs          {stack.workdir}")
    traffic = None
    if demo:
        with (stack.workdir / "demo.log").open("wb") as log:
            traffic = subprocess.Popen(
                [
                    str(ROOT / ".venv" / "bin" / "precondition-watch"),
                    "demo",
                    "--url",
                    stack.collector.url,
                    "--live",
                ],
                cwd=ROOT,
                start_new_session=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        print("demo          precondition-watch demo --live (orders deploys v2 after 15 min)")
    print("Ctrl-C stops everything.", flush=True)
    try:
        while True:
            time.sleep(1)
            if traffic is not None and traffic.poll() is not None:
                print(f"the demo ended (exit {traffic.returncode}); the stack runs on", flush=True)
                traffic = None
    finally:
        if traffic is not None and traffic.poll() is None:
            traffic.terminate()
            traffic.wait(timeout=10)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the stack the way Ctrl-C does


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.stack",
        description="Run redis-server, the collector, Prometheus with the rules, Alertmanager "
        "and the demo on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--collector-port", type=int, default=8080)
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument("--receiver-port", type=int, default=9095, help="the webhooks' port")
    parser.add_argument("--no-demo", action="store_true", help="send no demo traffic")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="pw-stack-"))
    ports = Ports(
        args.collector_port, args.prometheus_port, args.alertmanager_port, args.receiver_port
    )
    try:
        with Stack(workdir, ports=ports, on_notification=_print_notification) as stack:
            _run_until_interrupted(stack, demo=not args.no_demo)
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    except StackError as exc:
        print(f"make stack: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
