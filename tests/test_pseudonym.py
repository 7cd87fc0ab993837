"""Personal data: with PW_RESOURCE_ID_KEY the raw resource ids never reach Redis, the API or the
metrics, and the API still finds a resource by its raw id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis

from collector.pseudonym import HashedIds, PlainIds, is_hashed, resource_ids
from collector.settings import Settings, SettingsError, load_settings
from tests.api.test_ingest import client_for
from tests.conftest import RedisServer
from tests.test_worker import start_serve

KEY = "a-key-of-at-least-16-characters"
# Ids as services log them: a customer's email, an account number, a name.
RAW = ["alice@example.com", "acct-0042-7731", "Bob Smith:42"]
HIGH_ENTROPY = ['"9e107d9d372bb6826bd81d3542a419d6"', '"e4d909c290d0fb1ca068ffaddf22cbd0"']


def test_hashed_ids_are_keyed_stable_and_recognisable() -> None:
    """The same id and key give the same `h:` + 32 hex digits; another key another hash; an
    absent id stays absent; a lookup takes the raw id or the hashed form."""
    ids = HashedIds(KEY.encode())
    hashed = ids.stored("alice@example.com")
    assert hashed == ids.stored("alice@example.com") and is_hashed(hashed)
    assert len(hashed) == 34 and hashed.startswith("h:")
    assert HashedIds(b"another-key-of-16-chars").stored("alice@example.com") != hashed
    assert ids.stored("bob@example.com") != hashed
    assert ids.stored("") == ""
    assert ids.lookup("alice@example.com") == hashed and ids.lookup(hashed) == hashed
    assert PlainIds().stored("alice@example.com") == "alice@example.com"


def test_the_key_is_a_secret_with_a_minimum_length() -> None:
    """PW_RESOURCE_ID_KEY shorter than 16 characters fails at start; it never shows in the
    settings' repr, and reaches a child process's settings intact."""
    with pytest.raises(SettingsError, match="PW_RESOURCE_ID_KEY"):
        load_settings(resource_id_key="short")
    settings = Settings(resource_id_key=KEY)  # type: ignore[arg-type]
    assert KEY not in repr(settings) and KEY not in settings.model_dump_json()
    child = Settings.model_validate_json(settings.child_json())
    assert isinstance(resource_ids(child), HashedIds)
    assert resource_ids(child).stored("x") == resource_ids(settings).stored("x")
    assert isinstance(resource_ids(Settings()), PlainIds)


def events(now: float) -> list[dict[str, object]]:
    """Writes, races and a cross-resource failure on the personal ids in RAW."""
    old, new = HIGH_ENTROPY
    lines: list[dict[str, object]] = []
    for n, resource in enumerate(RAW):
        lines += [
            {"requestId": f"w{n}a", "resourceId": resource, "status": 200, "etag": old,
             "ts": now - 30},
            {"requestId": f"w{n}b", "resourceId": resource, "status": 200, "ifMatch": old,
             "etag": new, "ts": now - 20},
            {"requestId": f"f{n}", "resourceId": resource, "status": 412, "ifMatch": old,
             "currentEtag": new, "ts": now - 19, "clientId": "web"},
        ]  # fmt: skip
    # A client caching ETags under the wrong key: the evidence names the other resource.
    lines.append(
        {"requestId": "x1", "resourceId": "carol@example.com", "status": 412,
         "ifMatch": new, "currentEtag": '"d41d8cd98f00b204e9800998ecf8427e"', "ts": now - 10}
    )  # fmt: skip
    return lines


def everything_in(client: redis.Redis) -> bytes:
    """Every key and every value of every type in the Redis, as one blob to search."""
    parts: list[Any] = []
    for key in client.scan_iter(count=1000):
        parts.append(key)
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                parts += [field, value]
        elif kind == b"zset":
            parts += [pair[0] for pair in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        else:
            raise AssertionError(f"a key of type {kind!r}: search it too")
    # Replies are bytes (no decode_responses): Redis keeps exactly what was written.
    assert all(isinstance(part, bytes) for part in parts)
    return b"\n".join(parts)


@pytest.fixture
def hashing_collector(redis_server: RedisServer, redis_url: str) -> Iterator[str]:
    """`serve` with PW_RESOURCE_ID_KEY, two ingest processes and a settle process."""
    server, base = start_serve(
        redis_url, PW_RESOURCE_ID_KEY=KEY, PW_INGEST_PROCESSES="2", PW_LOG_LEVEL="error"
    )
    try:
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_raw_resource_ids_reach_neither_redis_nor_metrics(
    hashing_collector: str, redis_server: RedisServer
) -> None:
    """After ingesting and settling through the ingest and settle processes, no raw resource
    id is in any key or value of Redis, nor in /metrics (with exemplars); lookups by the raw
    id and by its hashed form find the resource, and the API hands out only hashed ids."""
    base = hashing_collector
    body = b"\n".join(orjson.dumps(line) for line in events(time.time()))
    answer = httpx.post(f"{base}/v1/events?service=shop", content=body).json()
    assert answer["accepted"] == len(events(0)) and not answer["rejected"]
    assert httpx.post(f"{base}/v1/flush", timeout=60).json()["settled"] == len(RAW) + 1

    stored = everything_in(redis.Redis(port=redis_server.port))
    assert b"shop" in stored and b"h:" in stored  # the scan sees the collector's keys
    for raw in [*RAW, "carol@example.com"]:
        assert raw.encode() not in stored
    metrics = httpx.get(
        f"{base}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    ).text
    assert "# {request_id=" in metrics  # exemplars are on
    assert not any(raw in metrics for raw in RAW)

    ids = HashedIds(KEY.encode())
    for raw in RAW:
        by_raw = httpx.get(f"{base}/v1/services/shop/resources/{raw}/timeline")
        by_hash = httpx.get(f"{base}/v1/services/shop/resources/{ids.stored(raw)}/timeline")
        assert by_raw.status_code == 200 and len(by_raw.json()["events"]) == 3
        assert by_raw.json() == by_hash.json()
        assert raw not in by_raw.text
    decision = httpx.get(f"{base}/v1/services/shop/requests/x1").json()
    assert decision["cause"] == "cross_resource"
    assert decision["resource_id"] == ids.stored("carol@example.com")
    assert decision["evidence"]["other_resource"] == ids.stored(RAW[-1])
    hot = httpx.get(f"{base}/v1/services/shop/hot").json()["resources"]
    assert {r["resource_id"] for r in hot} == {ids.stored(r) for r in [*RAW, "carol@example.com"]}
    page = httpx.get(f"{base}/ui/services/shop/resources/{RAW[0]}")
    assert page.status_code == 200 and RAW[0] not in page.text


def test_without_a_key_the_raw_ids_are_what_is_stored(
    redis_server: RedisServer, redis_url: str
) -> None:
    """The scan above would find raw ids: without PW_RESOURCE_ID_KEY they are stored as sent."""
    settings = Settings(redis_url=redis_url, ingest_processes=0, settle_process=False)
    with client_for(settings, redis_url) as client:
        body = b"\n".join(orjson.dumps(line) for line in events(time.time()))
        assert client.post("/v1/events?service=shop", content=body).json()["accepted"] > 0
    stored = everything_in(redis.Redis(port=redis_server.port))
    assert all(raw.encode() in stored for raw in RAW)
