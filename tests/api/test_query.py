"""Query and control endpoints: a request's decision, a timeline, hot resources, flush."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.runtime import Collector
from collector.settings import Settings
from tests.conftest import make_store

NDJSON = {"Content-Type": "application/x-ndjson"}
A = '"9e107d9d372bb6826bd81d3542a419d6"'
B = '"e4d909c290d0fb1ca068ffaddf22cbd0"'


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(settle_interval_seconds=60)
    with TestClient(create_app(settings, Collector(settings, store=make_store("fake")))) as c:
        yield c


def post(client: TestClient, *events: dict[str, object]) -> dict[str, object]:
    body = b"\n".join(orjson.dumps(e) for e in events)
    response = client.post("/v1/events?service=shop", content=body, headers=NDJSON)
    assert response.status_code == 200
    result: dict[str, object] = response.json()
    return result


def stream(now: float) -> list[dict[str, object]]:
    return [
        {"ts": now - 30, "request_id": "w0", "resource_id": "o1", "status": 200, "etag": A},
        {"ts": now - 20, "request_id": "w1", "resource_id": "o1", "status": 200, "etag": B},
        {"ts": now - 10, "request_id": "f1", "resource_id": "o1", "status": 412,
         "if_match": A, "current_etag": B, "method": "PUT"},
        {"ts": now - 9, "request_id": "f2", "resource_id": "o2", "status": 412,
         "if_match": A, "current_etag": B},
    ]  # fmt: skip


def test_request_is_pending_then_classified_after_flush(client: TestClient) -> None:
    """A failure is `pending` until settled; after POST /v1/flush it has a cause and evidence."""
    post(client, *stream(time.time()))
    pending = client.get("/v1/services/shop/requests/f1").json()
    assert (pending["state"], pending["cause"]) == ("pending", None)
    assert client.post("/v1/flush").json() == {"settled": 2}
    done = client.get("/v1/services/shop/requests/f1").json()
    assert done["state"] == "classified"
    assert done["cause"] == "concurrent_write"
    assert done["evidence"]["winner"]["request_id"] == "w1"
    assert done["resource_id"] == "o1"


def test_unknown_request_is_404(client: TestClient) -> None:
    """A request id that is not retained is a 404 naming it."""
    response = client.get("/v1/services/shop/requests/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["error"]


def test_a_successful_request_has_no_decision_to_look_up(client: TestClient) -> None:
    """Only failures are looked up by id; a write is a 404 that points at the timeline."""
    post(client, *stream(time.time()))
    response = client.get("/v1/services/shop/requests/w1")
    assert response.status_code == 404
    assert "timeline" in response.json()["error"]
    timeline = client.get("/v1/services/shop/resources/o1/timeline").json()
    assert "w1" in [event["request_id"] for event in timeline["events"]]


def test_timeline_lists_writes_and_failures_in_order(client: TestClient) -> None:
    """The timeline shows the resource's events in event-time order with causes once settled."""
    post(client, *stream(time.time()))
    client.post("/v1/flush")
    events = client.get("/v1/services/shop/resources/o1/timeline").json()["events"]
    assert [e["request_id"] for e in events] == ["w0", "w1", "f1"]
    assert events[2]["cause"] == "concurrent_write"
    assert "cause" not in events[0]


def test_hot_resources_rank_by_conflicts(client: TestClient) -> None:
    """/hot ranks resources by 412/409 count in the window before the newest event."""
    now = time.time()
    extra = [
        {"ts": now - 5 + i * 0.1, "request_id": f"h{i}", "resource_id": "o2", "status": 412,
         "if_match": A, "current_etag": B}
        for i in range(3)
    ]  # fmt: skip
    post(client, *stream(now), *extra)
    hot = client.get("/v1/services/shop/hot?window=60").json()
    assert hot["resources"] == [
        {"resource_id": "o2", "conflicts": 4},
        {"resource_id": "o1", "conflicts": 1},
    ]
    assert client.get("/v1/services/nobody/hot").status_code == 404
    assert client.get("/v1/services/shop/hot?window=-1").status_code == 422


def test_services_lists_what_was_seen(client: TestClient) -> None:
    """GET /v1/services lists services with events in the retention."""
    post(client, *stream(time.time()))
    assert client.get("/v1/services").json() == {"services": ["shop"]}


def test_verdicts_and_gauges_are_final_when_flush_returns(client: TestClient) -> None:
    """A replayed log, then a flush: the deploy verdict and the deploy gauges are there at once
    (the periodic sweep, once a minute here, has not run)."""
    from collector import demo

    events = demo.generate(demo.DemoConfig(duration=1200, deploy_at=600))
    for start in range(0, len(events), 2000):
        body = b"\n".join(orjson.dumps(e) for e in events[start : start + 2000])
        assert client.post("/v1/events", content=body, headers=NDJSON).status_code == 200
    assert client.post("/v1/flush").json()["settled"] > 0
    deploys = client.get("/v1/services/orders").json()["deploys"]
    assert [d["version"] for d in deploys] == ["v1", "v2"]
    assert deploys[1]["regression"]["cause"] == "format_change"
    registry = client.app.state.collector.registry  # type: ignore[attr-defined]
    labels = {"service": "orders", "version": "v2"}
    assert registry.get_sample_value("precondition_deploy_regression", labels) == 1.0
    assert registry.get_sample_value("precondition_deploy_info", labels) == 1.0
    assert registry.get_sample_value("precondition_collector_pending") == 0.0
