"""examples/: each shipper's config, and the exact request that shipper sends with it, accepted
and classified by the collector.

None of these shippers can be installed here, so each test builds the request from the
shipper's source (tests/shippers.py says which files, at which commit) with the settings the
example config makes, checks that the config says what the request assumes, and sends it to
the collector. The scenario is one race: two clients read ETag "e1" of order ord-7, one
writes ("e2"), the other's If-Match "e1" fails with 412: `concurrent_write`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient

from collector.settings import Settings
from tests import shippers
from tests.api.test_ingest import client_for
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
T0 = 1_790_000_000.0
# What the service logs: a create, the winning write, the losing one.
RACE = [
    {"ts": T0, "method": "PUT", "route": "/api/orders/{id}", "status": 201, "request_id": "w-0",
     "resource_id": "ord-7", "current_etag": '"e1"', "client_id": "web", "deploy_version": "v1"},
    {"ts": T0 + 10, "method": "PUT", "route": "/api/orders/{id}", "status": 200,
     "request_id": "w-1", "resource_id": "ord-7", "if_match": '"e1"', "current_etag": '"e2"',
     "client_id": "web", "deploy_version": "v1"},
    {"ts": T0 + 11, "method": "PUT", "route": "/api/orders/{id}", "status": 412,
     "request_id": "f-1", "resource_id": "ord-7", "if_match": '"e1"', "current_etag": '"e2"',
     "client_id": "mobile", "deploy_version": "v1"},
]  # fmt: skip
WITH_SERVICE = [{**event, "service": "orders"} for event in RACE]
READ_AT = T0 + 12


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(Settings()) as c:
        yield c


def classified(client: TestClient) -> str:
    assert client.post("/v1/flush").status_code == 200
    decision = client.get("/v1/services/orders/requests/f-1").json()
    assert decision["state"] == "classified"
    cause: str = decision["cause"]
    assert decision["evidence"]["winner"]["request_id"] == "w-1"
    return cause


def test_vector_http_sink_json_array(client: TestClient) -> None:
    """Vector: a JSON array of the parsed lines to /v1/events?service=orders, 200."""
    config = yaml.safe_load((EXAMPLES / "vector.yaml").read_text())
    sink = config["sinks"]["precondition_watch"]
    assert sink["type"] == "http" and sink["encoding"] == {"codec": "json"}
    assert "framing" not in sink  # default framing for codec json: a JSON array
    assert "parse_json!" in config["transforms"]["orders_events"]["source"]
    url = urlsplit(sink["uri"])
    _, headers, body = shippers.vector_http(RACE)  # lines carry no service: ?service= does
    assert body.startswith(b'[{"client_id":"web","current_etag":"\\"e1\\""')
    response = client.post(f"{url.path}?{url.query}", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert classified(client) == "concurrent_write"


def test_fluent_bit_http_output_msgpack(client: TestClient) -> None:
    """Fluent Bit: its msgpack chunk, [[EventTime, {}], record], to /v1/events, 200."""
    config = yaml.safe_load((EXAMPLES / "fluent-bit.yaml").read_text())
    [output] = config["pipeline"]["outputs"]
    assert (output["name"], output["format"], output["port"]) == ("http", "msgpack", 8080)
    assert config["parsers"][0]["format"] == "json" and "time_key" not in config["parsers"][0]
    _, headers, body = shippers.fluentbit_msgpack(RACE, read_at=READ_AT)
    # fixarray(2), fixarray(2), ext8 of 8 bytes type 0 (EventTime), then the metadata map.
    assert body[:5] == b"\x92\x92\xd7\x00" + (int(READ_AT) >> 24).to_bytes(1, "big")
    assert headers == {"Content-Type": "application/msgpack", "User-Agent": "Fluent-Bit"}
    response = client.post(output["uri"], content=body, headers=headers)
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert classified(client) == "concurrent_write"


def test_opentelemetry_collector_otlphttp_exporter(client: TestClient) -> None:
    """OTel Collector: gzip protobuf from filelog + resource to /v1/logs, 200 with no rejects."""
    config = yaml.safe_load((EXAMPLES / "otelcol.yaml").read_text())
    exporter = config["exporters"]["otlphttp/precondition_watch"]
    assert "encoding" not in exporter and "compression" not in exporter  # proto + gzip
    [attribute] = config["processors"]["resource"]["attributes"]
    assert (attribute["key"], attribute["value"]) == ("service.name", "orders")
    assert config["service"]["pipelines"]["logs"]["exporters"] == ["otlphttp/precondition_watch"]
    path, headers, body = shippers.otlp_filelog(WITH_SERVICE, READ_AT)
    assert urlsplit(exporter["endpoint"]).path + path == "/v1/logs"
    assert headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 200 and response.content == b""  # no partial_success
    assert response.headers["content-type"] == "application/x-protobuf"
    assert classified(client) == "concurrent_write"


def test_grafana_alloy_loki_write(client: TestClient) -> None:
    """Alloy: snappy protobuf PushRequest with the service_name label, 204 as from Loki."""
    text = (EXAMPLES / "config.alloy").read_text()
    [url] = re.findall(r'url\s*=\s*"([^"]+)"', text)
    assert '"service_name" = "orders"' in text
    assert "forward_to = [loki.write.precondition_watch.receiver]" in text
    path, headers, body = shippers.loki_protobuf(WITH_SERVICE, READ_AT)
    assert urlsplit(url).path == path == "/loki/api/v1/push"
    assert headers["Content-Type"] == "application/x-protobuf" and "Content-Encoding" not in headers
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 204
    assert classified(client) == "concurrent_write"
