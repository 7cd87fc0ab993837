"""End to end: the demo feeds a real collector, a real Prometheus evaluates the real rules, and
a real Alertmanager delivers what pages to a webhook this test runs.

Event time is replayed SPEED times faster than the wall clock, and Prometheus evaluates the
rules rendered from the same source at the same speed (alerts/build.py: every range and `for`
divided by SPEED), so 20 minutes of traffic take 20 seconds and every window means the same
stretch of event time as in production; so do the scrape and evaluation intervals.

Besides the demo (orders deploys v2, which changes its ETag format; a gzip proxy rewrites carts'
ETags), a `ledger` service races all the time (a third of its requests lose a race) and deploys a
version that changes nothing: neither may page anybody.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from alerts.build import Options, duration, render
from collector import demo
from collector.client import Sender
from tests.conftest import wait_for
from tests.stack import Stack

SPEED = 60.0  # event seconds per wall second
DURATION = 1200.0  # event seconds of traffic
DEPLOY_AT = 600.0  # orders deploys v2, ledger deploys 2.3.1, this long after the first event
# Scrapes and rule evaluations every 15 s of event time, as deploy/prometheus.yml has them.
INTERVAL = duration(15 / SPEED)
# The collector's wall-clock pace compressed too: by default it settles and judges deploys every
# second, a minute of replayed event time; 0.1 s is 6 s, about its allowed lateness.
COLLECTOR_ENV = {"PW_SETTLE_INTERVAL_SECONDS": "0.1"}
LEDGER_ROUTE = "/api/ledger/{id}"


def ledger_races(start: float, *, seed: int = 11) -> list[demo.Event]:
    """A service whose only failures are genuine races, with a no-op deploy halfway.

    Every second a teller writes an account, another teller who read the same ETag loses the
    race (412, its If-Match superseded by the winner's write moments before), refetches and
    writes again. Versions 2.3.0 and 2.3.1 compute ETags the same way.
    """
    rng = random.Random(seed)
    current: dict[str, str] = {}
    events: list[demo.Event] = []

    def etag() -> str:
        return f'"{rng.getrandbits(128):032x}"'

    def emit(ts: float, account: str, client: str, status: int, im: str | None, ce: str) -> None:
        event: demo.Event = {
            "ts": round(ts, 3),
            "service": "ledger",
            "route": LEDGER_ROUTE,
            "method": "PUT",
            "status": status,
            "request_id": f"ldg-{len(events):07d}",
            "resource_id": account,
            "current_etag": ce,
            "client_id": client,
            "deploy_version": "2.3.0" if ts < start + DEPLOY_AT else "2.3.1",
        }
        if im is not None:
            event["if_match"] = im
        events.append(event)

    for n in range(int(DURATION) - 5):
        ts = start + n
        account = f"acct-{n % 40:03d}"
        winner, loser = rng.sample([f"teller-{i:02d}" for i in range(12)], 2)
        if account not in current:
            current[account] = etag()
            emit(ts - 0.5, account, winner, 201, None, current[account])
        read, won, again = current[account], etag(), etag()
        emit(ts, account, winner, 200, read, won)
        emit(ts + rng.uniform(0.05, 2.0), account, loser, 412, read, won)
        emit(ts + 2.5, account, loser, 200, won, again)
        current[account] = again
    return sorted(events, key=lambda event: float(str(event["ts"])))


def traffic(start: float) -> list[demo.Event]:
    """The demo and the ledger, delivered as a shipper would: a little late, some twice."""
    config = demo.DemoConfig(start=start, duration=DURATION, deploy_at=DEPLOY_AT)
    events = sorted(
        [*demo.generate(config), *ledger_races(start)], key=lambda e: float(str(e["ts"]))
    )
    for event in events:
        event.pop("demo_cause", None)
    return demo.deliver(events, max_delay=2.5, duplicate_ratio=0.02)


def paced(events: Iterable[demo.Event], start: float, wall0: float) -> Iterator[bytes]:
    """NDJSON lines, each sent once the replayed clock reaches it (b"" while waiting)."""
    newest = start
    for event in events:
        newest = max(newest, float(str(event["ts"])))
        wait = wall0 + (newest - start) / SPEED - time.time()
        while wait > 0:
            yield b""  # lets the sender post what it has
            time.sleep(min(wait, 0.1))
            wait = wall0 + (newest - start) / SPEED - time.time()
        yield orjson.dumps(event) + b"\n"


def delivered(stack: Stack, receiver: str, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [
        alert
        for _, alert in stack.receiver.alerts(receiver)
        if alert["labels"].get("alertname") == alertname
        and all(alert["labels"].get(k) == v for k, v in labels.items())
    ]


def report(stack: Stack, start: float, wall0: float) -> list[str]:
    """One line per alert delivered: receiver, name, labels, and when, in event time after its
    incident began (the deploy for orders and ledger, the first event for the rest)."""
    lines, seen = [], set()
    for received_at, alert in stack.receiver.alerts():
        labels = alert["labels"]
        key = (alert["status"], tuple(sorted(labels.items())))
        if key in seen:
            continue
        seen.add(key)
        began = start + (DEPLOY_AT if labels.get("service") in ("orders", "ledger") else 0.0)
        event_time = start + (received_at - wall0) * SPEED
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
        lines.append(
            f"{labels['alertname']} {{{shown}}} {alert['status']} at event time "
            f"+{(event_time - began) / 60:.1f} min after its incident began"
        )
        if labels["alertname"] == "PreconditionWatchDeployRegression":
            lines.append("  " + alert["annotations"]["description"])
    return lines


@pytest.mark.e2e
def test_deploy_and_proxy_alerts_page_and_healthy_services_do_not(tmp_path: Path) -> None:
    """A format-changing deploy and a rewriting proxy page through Alertmanager; a no-op deploy
    and a storm of healthy races page nobody."""
    rules = tmp_path / "rules.yml"
    rules.write_text(render(Options(speed=SPEED)))
    # deploy/alertmanager.yml's 30s group_wait and 5m group_interval, at the replay's speed.
    timing = {"group_wait": duration(30 / SPEED), "group_interval": duration(300 / SPEED)}
    with Stack(
        tmp_path / "stack",
        rules=[rules],
        scrape_interval=INTERVAL,
        evaluation_interval=INTERVAL,
        alertmanager_timing=timing,
        collector_env=COLLECTOR_ENV,
    ) as stack:
        start = time.time() - DURATION - 60  # every event time is in the past when it is sent
        events = traffic(start)
        wall0 = time.time()  # the replay clock: event time `start` is now
        sender = Sender(stack.collector.url, out=io.StringIO())
        try:
            progress = sender.send_lines(paced(events, start, wall0))
        finally:
            sender.close()
        assert progress.rejected == 0
        sent_until = time.time()

        def regression_and_proxy_paged() -> bool:
            regression = delivered(
                stack, "page", "PreconditionWatchDeployRegression", service="orders"
            )
            proxy = delivered(stack, "page", "PreconditionWatchProxyRewritingETags")
            return bool(regression) and bool(proxy)

        wait_for(regression_and_proxy_paged, timeout=30, what="the deploy and proxy pages")
        # Silence is only evidence once every rule has seen the whole replay.
        wait_for(
            lambda: stack.prometheus.last_evaluation() > sent_until + 3,
            timeout=15,
            what="rules evaluated after the replay",
        )
        for line in report(stack, start, wall0):
            print(line)
        for alert in stack.prometheus.alerts():
            if alert["state"] == "firing" and alert["labels"]["severity"] == "info":
                print(f"(info, notifies nobody) {alert['labels']} firing")

        regression = delivered(stack, "page", "PreconditionWatchDeployRegression")[0]
        assert regression["labels"]["version"] == "v2"
        description = regression["annotations"]["description"]
        assert "the cause that grew most is format_change" in description
        verdict = httpx.get(f"{stack.collector.url}/v1/services/orders").json()["deploys"][-1]
        assert verdict["regression"]["cause"] == "format_change"
        assert regression["annotations"]["runbook_url"].endswith(
            "docs/runbook.md#alert-name-preconditionwatchdeployregression"
        )
        proxy = delivered(stack, "page", "PreconditionWatchProxyRewritingETags")
        assert {a["labels"]["service"] for a in proxy} == {"carts"}
        assert "suffix_gzip" in {a["labels"]["kind"] for a in proxy}

        # ledger: judged (its new version is the current one, with no regression), raced
        # hard, burned nothing, and no alert of it ever reached a human or even went pending.
        query = stack.prometheus.query
        assert query('precondition_deploy_info{service="ledger", version="2.3.1"} == 1')
        assert query('precondition_deploy_regression{service="ledger", version="2.3.1"} == 0')
        assert query(
            "max_over_time(service_cause:precondition_failures:ratio_rate15m"
            '{service="ledger", cause="concurrent_write"}[1m]) > 0.25'
        )
        budget = query(
            'max_over_time(service:precondition_budget_failures:ratio_rate5m{service="ledger"}[1m])'
        )
        assert [sample["value"][1] for sample in budget] == ["0"]
        assert not [a for _, a in stack.receiver.alerts() if a["labels"].get("service") == "ledger"]
        assert not query('max_over_time(ALERTS{service="ledger", severity!="info"}[1m])')

        # The page's confirm step of the runbook: an exemplar's request id, then the collector's
        # decision for that request.
        exemplars = stack.prometheus.exemplars(
            'precondition_failures_total{service="orders", cause="format_change"}',
            wall0,
            time.time(),
        )
        request_ids = [e["labels"]["request_id"] for s in exemplars for e in s["exemplars"]]
        assert request_ids
        decision = httpx.get(
            f"{stack.collector.url}/v1/services/orders/requests/{request_ids[0]}"
        ).json()
        assert decision["cause"] == "format_change"
