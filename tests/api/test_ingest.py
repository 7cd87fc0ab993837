"""`POST /v1/events`: the ingest contract over HTTP, with its errors."""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.runtime import Collector
from collector.settings import Settings
from tests.conftest import RedisServer, free_port, make_store

NDJSON = {"Content-Type": "application/x-ndjson"}
MINIMAL = {
    "requestId": "r-1",
    "resourceId": "o-9",
    "ifMatch": '"abc"',
    "currentEtag": '"def"',
    "status": 412,
}


def ndjson(*lines: object) -> bytes:
    return b"\n".join(orjson.dumps(line) for line in lines)


def client_for(settings: Settings, url: str | None = None) -> TestClient:
    store = make_store("real", url) if url else make_store("fake")
    collector = Collector(settings, store=store)
    return TestClient(create_app(settings, collector))


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(Settings(max_body_bytes=64 * 1024)) as c:
        yield c


def sample(name: str, client: TestClient) -> float:
    value = client.app.state.collector.registry.get_sample_value(name)  # type: ignore[attr-defined]
    return float(value or 0.0)


def test_minimal_line_with_service_query(client: TestClient) -> None:
    """The minimal line is stored with the service from ?service= and the receive time."""
    before = time.time()
    response = client.post("/v1/events?service=shop", content=ndjson(MINIMAL), headers=NDJSON)
    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    collector: Collector = client.app.state.collector  # type: ignore[attr-defined]
    record, _ = client.portal.call(collector.store.request, "shop", "o-9", "r-1")  # type: ignore[union-attr]
    assert record is not None and before <= record["ts"] <= time.time()


def test_service_header_is_the_default(client: TestClient) -> None:
    """X-Service-Name supplies the service when the lines have none."""
    response = client.post(
        "/v1/events", content=ndjson(MINIMAL), headers={**NDJSON, "X-Service-Name": "cart"}
    )
    assert response.json()["accepted"] == 1
    collector: Collector = client.app.state.collector  # type: ignore[attr-defined]
    assert client.portal.call(collector.store.services) == ["cart"]  # type: ignore[union-attr]


def test_bad_lines_do_not_reject_the_batch(client: TestClient) -> None:
    """Valid lines are stored beside bad ones; each bad one names its index and field."""
    body = b"\n".join(
        [
            orjson.dumps(MINIMAL),
            b'{"requestId": "r-2", "status": "abc"}',
            b"not json",
            orjson.dumps({**MINIMAL, "requestId": "r-3"}),
            b"[1, 2]",
            b'{"status": 412}',
            b'{"requestId": "r-4", "status": 412, "ts": "2999-01-01T00:00:00Z"}',
            b'{"requestId": "r-5", "status": 412, "a": "\xff"}',
        ]
    )
    response = client.post("/v1/events?service=shop", content=body, headers=NDJSON)
    assert response.status_code == 200
    payload = response.json()
    assert payload["accepted"] == 2
    errors = {r["index"]: r["error"] for r in payload["rejected"]}
    assert set(errors) == {1, 2, 4, 5, 6, 7}
    assert errors[1].startswith("status:")
    assert errors[2].startswith("event: not valid JSON")
    assert errors[4].startswith("event: must be a JSON object")
    assert errors[5] == "request_id: missing"
    assert errors[6].startswith("ts:") and "future" in errors[6]
    assert "UTF-8" in errors[7]
    assert sample("precondition_collector_events_total", client) == 0  # labelled only
    registry = client.app.state.collector.registry  # type: ignore[attr-defined]
    assert (
        registry.get_sample_value("precondition_collector_events_total", {"result": "rejected"})
        == 6
    )


def test_duplicates_are_counted_not_stored_twice(client: TestClient) -> None:
    """A retried batch is all duplicates and moves no counter but `duplicate`."""
    body = ndjson(MINIMAL, {**MINIMAL, "requestId": "r-2"}, MINIMAL)
    first = client.post("/v1/events?service=shop", content=body, headers=NDJSON).json()
    second = client.post("/v1/events?service=shop", content=body, headers=NDJSON).json()
    assert (first["accepted"], first["duplicates"]) == (2, 1)
    assert (second["accepted"], second["duplicates"]) == (0, 3)
    registry = client.app.state.collector.registry  # type: ignore[attr-defined]
    labels = {"service": "shop", "route": "", "method": "", "status": "412"}
    assert registry.get_sample_value("precondition_requests_total", labels) == 2


def test_json_array_and_single_object(client: TestClient) -> None:
    """A JSON array and a single JSON object are batches too."""
    array = orjson.dumps([MINIMAL, {**MINIMAL, "requestId": "r-2"}])
    one = orjson.dumps({**MINIMAL, "requestId": "r-3"})
    headers = {"Content-Type": "application/json"}
    assert (
        client.post("/v1/events?service=s", content=array, headers=headers).json()["accepted"] == 2
    )
    assert client.post("/v1/events?service=s", content=one, headers=headers).json()["accepted"] == 1


def test_gzip_body(client: TestClient) -> None:
    """Content-Encoding: gzip is decompressed."""
    body = gzip.compress(ndjson(MINIMAL))
    response = client.post(
        "/v1/events?service=shop", content=body, headers={**NDJSON, "Content-Encoding": "gzip"}
    )
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"\x1f\x8bnot really", {**NDJSON, "Content-Encoding": "gzip"}, 400, "gzip"),
        (b"[{", {"Content-Type": "application/json"}, 400, "JSON array"),
        (b"x" * 70_000, NDJSON, 413, "exceeds"),
        (
            gzip.compress(b" " * 200_000),
            {**NDJSON, "Content-Encoding": "gzip"},
            413,
            "after decompression",
        ),
        (b"a=b", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        (b"{}", {**NDJSON, "Content-Encoding": "compress"}, 415, "Content-Encoding"),
    ],
)
def test_unreadable_bodies(
    client: TestClient, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    """Bodies that cannot be read at all get a clear 4xx, never a 500."""
    response = client.post("/v1/events?service=shop", content=body, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_tokens_are_required_when_configured() -> None:
    """With PW_INGEST_TOKENS set, ingest needs one of them as a bearer token."""
    settings = Settings(ingest_tokens="alpha, beta")  # type: ignore[arg-type]
    with client_for(settings) as c:
        url = "/v1/events?service=shop"
        assert c.post(url, content=ndjson(MINIMAL), headers=NDJSON).status_code == 401
        wrong = {**NDJSON, "Authorization": "Bearer alph"}
        assert c.post(url, content=ndjson(MINIMAL), headers=wrong).status_code == 401
        right = {**NDJSON, "Authorization": "Bearer beta"}
        assert c.post(url, content=ndjson(MINIMAL), headers=right).json()["accepted"] == 1
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_redis_down_is_a_503_and_nothing_is_lost() -> None:
    """With Redis gone the batch gets 503 + Retry-After; retried after recovery it is stored."""
    server = RedisServer()
    server.start()
    try:
        with client_for(Settings(), server.url) as c:
            body = ndjson(MINIMAL, {**MINIMAL, "requestId": "r-2"})
            url = "/v1/events?service=shop"
            assert (
                c.post(
                    url, content=ndjson({**MINIMAL, "requestId": "r-0"}), headers=NDJSON
                ).status_code
                == 200
            )
            server.stop(cleanup=False)
            down = c.post(url, content=body, headers=NDJSON)
            assert down.status_code == 503
            assert down.headers["Retry-After"].isdigit()
            assert c.get("/readyz").status_code == 503
            server.start()
            up = c.post(url, content=body, headers=NDJSON)
            assert up.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
            assert c.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_unreachable_redis_at_start_still_serves_health() -> None:
    """The collector starts without Redis: alive, not ready, ingest answers 503."""
    with client_for(Settings(), f"redis://127.0.0.1:{free_port()}/0") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 503
        response = c.post("/v1/events?service=shop", content=ndjson(MINIMAL), headers=NDJSON)
        assert response.status_code == 503


def test_metrics_negotiates_openmetrics(client: TestClient) -> None:
    """/metrics speaks Prometheus text by default and OpenMetrics when asked."""
    text = client.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
