"""Metrics: the names of the design, bounded labels, exemplars, and promtool's approval."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from collector import demo
from collector.api import create_app
from collector.metrics import OTHER, Metrics, clean_label
from collector.runtime import Collector
from collector.settings import Settings
from tests.conftest import find_binary, make_store

NDJSON = {"Content-Type": "application/x-ndjson"}
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
DESIGN_METRICS = {
    "precondition_requests_total": "counter",
    "precondition_failures_total": "counter",
    "precondition_race_seconds": "histogram",
    "precondition_etag_staleness_seconds": "histogram",
    "precondition_etag_rewrites_total": "counter",
    "precondition_deploy_info": "gauge",
    "precondition_deploy_timestamp_seconds": "gauge",
    "precondition_deploy_regression": "gauge",
    "precondition_collector_events_total": "counter",
    "precondition_collector_pending": "gauge",
    "precondition_collector_redis_up": "gauge",
    "precondition_collector_ingest_seconds": "histogram",
    "precondition_collector_label_overflow_total": "counter",
}


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(settle_interval_seconds=60, max_services=5, max_routes_per_service=20)
    collector = Collector(settings, store=make_store("fake", retention_seconds=86400))
    with TestClient(create_app(settings, collector)) as c:
        yield c


def send(client: TestClient, events: list[dict[str, object]]) -> None:
    for start in range(0, len(events), 500):
        body = b"\n".join(orjson.dumps(e) for e in events[start : start + 500])
        assert client.post("/v1/events", content=body, headers=NDJSON).status_code == 200


def test_every_design_metric_has_its_name_and_type() -> None:
    """Each metric of DESIGN.md exists with exactly that name and type."""
    registry = CollectorRegistry()
    Metrics(registry)
    text = generate_latest(registry).decode()
    for name, kind in DESIGN_METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert f"# TYPE {name} {kind}" in text or f"# TYPE {family} {kind}" in text, name


def test_demo_traffic_passes_promtool_with_exemplars(client: TestClient) -> None:
    """After demo traffic, /metrics passes `promtool check metrics`, and failures and races
    carry a request_id exemplar in OpenMetrics."""
    import time

    config = demo.DemoConfig(duration=600, deploy_at=300, start=time.time() - 700)
    events = demo.deliver(demo.generate(config))
    send(client, events)
    assert client.post("/v1/flush").status_code == 200
    text = client.get("/metrics").text
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'precondition_failures_total{cause="format_change"' in text
    assert 'precondition_etag_rewrites_total{kind="suffix_gzip",service="carts"}' in text
    om = client.get("/metrics", headers=OPENMETRICS).text
    failures = [line for line in om.splitlines() if line.startswith("precondition_failures_total")]
    assert failures and all('# {request_id="' in line for line in failures)
    races = [
        line for line in om.splitlines() if line.startswith("precondition_race_seconds_bucket")
    ]
    assert any('# {request_id="' in line for line in races)


def test_hostile_labels_keep_metrics_parseable_and_bounded(client: TestClient) -> None:
    """Quotes, newlines, backslashes and 10,000 routes: /metrics parses, series stay capped."""
    now = __import__("time").time()
    hostile = ['a"b', "new\nline", "back\\slash", "tab\tbed", "ünïcode", "x" * 500, "{}", "="]
    events: list[dict[str, object]] = []
    for i, name in enumerate(hostile * 2):
        events.append({"ts": now - 5, "service": name, "request_id": f"h{i}", "status": 200,
                       "route": name, "resource_id": "r"})  # fmt: skip
    for i in range(10_000):
        events.append({"ts": now - 5, "service": "svc", "request_id": f"r{i}", "status": 412,
                       "route": f"/api/{i}", "method": "PUT", "resource_id": f"o{i}",
                       "if_match": '"a"', "current_etag": '"b"'})  # fmt: skip
    send(client, events)
    client.post("/v1/flush")
    text = client.get("/metrics").text
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    # 5 services x (20 routes + __other__) x a few methods/statuses/causes, plus fixed ones.
    assert len(series) < 1500, len(series)
    assert f'service="{OTHER}"' in text and f'route="{OTHER}"' in text
    overflow = client.app.state.collector.registry.get_sample_value(  # type: ignore[attr-defined]
        "precondition_collector_label_overflow_total", {"label": "route"}
    )
    assert overflow is not None and overflow > 9000


def test_series_count_is_bounded_whatever_arrives() -> None:
    """Label guards hold the number of distinct label sets under a fixed bound."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, max_services=3, max_routes_per_service=4)
    for i in range(2000):
        service = metrics.labels.service(f"s{i % 50}")
        route = metrics.labels.route(service, f"/r/{i}")
        metrics.requests.labels(service, route, metrics.labels.method("BREW"), "412").inc()
    requests = next(m for m in registry.collect() if m.name == "precondition_requests")
    assert len(requests.samples) <= (3 + 1) * (4 + 1)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("a\nb", "a_b"), ("ok", "ok"), ("", ""), ("x" * 200, "x" * 96), ("\x00", "_")],
)
def test_clean_label(raw: str, clean: str) -> None:
    """Unprintable characters are replaced and long values cut."""
    assert clean_label(raw) == clean


def test_client_label_is_capped_per_service() -> None:
    """Clients are labels only on precondition_client_failures_total, capped per service."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, max_clients_per_service=2)
    assert metrics.labels.client("shop", "bot-a") == "bot-a"
    assert metrics.labels.client("shop", "bot-b") == "bot-b"
    assert metrics.labels.client("shop", "bot-c") == "__other__"
    assert metrics.labels.client("cart", "bot-c") == "bot-c"  # another service, its own cap
    value = registry.get_sample_value(
        "precondition_collector_label_overflow_total", {"label": "client"}
    )
    assert value == 1.0
