"""The collector's OpenAPI, fuzzed by schemathesis: no request it can build gets a 5xx.

The app runs in-process on the embedded fakeredis store. Ingest bodies come from the request
bodies the OpenAPI document describes (`collector.api.openapi`): NDJSON lines, JSON arrays and
objects and Fluent Bit msgpack streams of generated events, OTLP JSON requests, Loki JSON
pushes, random bytes as protobuf, with and without a gzip Content-Encoding header, and
schemathesis's negative cases that break the schema on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from collector.api import create_app
from collector.runtime import Collector
from collector.settings import Settings
from tests.conftest import make_store, say

EXAMPLES = 80  # per operation and phase: about 30 s in all on the 2-core machine
TALLY: dict[str, list[int]] = {}  # operation -> [requests, 5xx answers]


def _ndjson(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """One generated event per line; the standard library writes integers of any size, which
    the collector must then refuse, where orjson would not write them at all."""
    items = value if isinstance(value, list) else [value]
    return b"\n".join(json.dumps(item).encode() for item in items)


def _packable(value: Any) -> Any:
    """msgpack carries 64-bit integers at most: wider ones go as floats."""
    if isinstance(value, dict):
        return {key: _packable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_packable(item) for item in value]
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    return value


def _fluent_bit(_: schemathesis.SerializationContext, value: Any) -> bytes:
    """A Fluent Bit chunk: each generated record as `[[timestamp, metadata], record]`."""
    items = value if isinstance(value, list) else [value]
    return b"".join(msgpack.packb([[1_700_000_000, {}], _packable(item)]) for item in items)


schemathesis.serializer("application/x-ndjson")(_ndjson)
schemathesis.serializer("application/msgpack")(_fluent_bit)
schemathesis.serializer.alias("application/x-protobuf", "application/octet-stream")


# Loaded at import, not from a fixture: schemathesis's lazy loader does not run on pytest 9.
CONFIG = Settings(log_level="error", max_body_bytes=256 * 1024)
APP = create_app(CONFIG, Collector(CONFIG, store=make_store("fake")))
# The coverage phase (every boundary and wrong type the schema allows) for the lookups, not
# for the ingest bodies: enumerating all of the nested body schemas' cases took two minutes at
# collection; the examples and fuzzing phases send them valid and invalid cases alike.
OPTIONS = schemathesis.Config.from_dict(
    {
        "phases": {"stateful": {"enabled": False}},
        "operations": [{"include-method": "POST", "phases": {"coverage": {"enabled": False}}}],
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=OPTIONS)


@pytest.fixture(scope="module", autouse=True)
def tally(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: stop the app (its settling task and store), say what was sent."""
    yield
    asgi.shutdown_lifespans()
    requests = sum(n for n, _ in TALLY.values())
    errors = sum(e for _, e in TALLY.values())
    operations = len(TALLY)
    say(request, f"schemathesis: {requests} requests, {operations} operations, {errors} 5xx")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run, so CI is reproducible
    database=None,
)
def test_no_request_gets_a_server_error(case: schemathesis.Case[Any]) -> None:
    """Whatever schemathesis sends, valid or not, the collector answers below 500."""
    tally = TALLY.setdefault(case.operation.label, [0, 0])
    tally[0] += 1
    try:
        response = case.call()
    except Exception:  # the app raised: what a server would answer with a 500
        tally[1] += 1
        raise
    if response.status_code >= 500:
        tally[1] += 1
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
