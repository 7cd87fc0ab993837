"""Tests for collector.demo: the simulated traffic and its ground-truth causes."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter

import pytest

from collector.demo import CAUSES, DemoConfig, Event, deliver, generate, truth

CANONICAL = {
    "ts",
    "service",
    "route",
    "method",
    "status",
    "request_id",
    "resource_id",
    "if_match",
    "if_none_match",
    "current_etag",
    "client_id",
    "deploy_version",
    "reason",
}
CONFIG = DemoConfig()


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """The default demo traffic, generated once for the module."""
    return generate(CONFIG)


def _failures(events: list[Event]) -> list[Event]:
    return [e for e in events if e["status"] in (409, 412, 428)]


def _ts(event: Event) -> float:
    value = event["ts"]
    assert isinstance(value, float)
    return value


def _undo(tag: str) -> str:
    value = tag[2:] if tag.startswith("W/") else tag
    value = value if value.startswith('"') else f'"{value}"'
    return re.sub(r'-(gzip|br)"$', '"', value)


def _shape(tag: str) -> str:
    return re.sub(r"[0-9a-f]", "h", tag)


def _replicas_disagree(
    span: tuple[bool, list[tuple[object, str]]] | None, version: object, im: str, ce: str
) -> bool:
    """Since the newest write, under this version, the ETag came back to an earlier value or
    moved off the write's one with no write between."""
    if span is None:
        return False
    from_write, seen = span
    values: list[str] = []
    for seen_version, tag in seen:
        if seen_version != version:
            values, from_write = [], False  # another version's values are another span
        elif not values or values[-1] != tag:
            values.append(tag)
    if not values or values[-1] != ce:
        values.append(ce)
    return len(set(values)) < len(values) or (from_write and len(set(values)) > 1)


def _reclassify(events: list[Event], window: float) -> list[str]:
    """An independent reading of the rules, from nothing but the events in time order."""
    writes: dict[tuple[object, object], list[tuple[float, str]]] = {}
    owner: dict[tuple[object, str], tuple[object, int]] = {}
    last412: dict[tuple[object, ...], float] = {}
    shapes: dict[object, dict[object, set[str]]] = {}  # service -> version -> ETag shapes
    # Since each resource's newest write: whether a write began it, and (version, ETag) seen.
    spans: dict[tuple[object, object], tuple[bool, list[tuple[object, str]]]] = {}
    mentioned: set[tuple[object, object, str]] = set()  # ETags the lineage has for a resource
    causes = []
    for e in events:
        svc, res, ts, status = e["service"], e["resource_id"], _ts(e), e["status"]
        im, inm, ce = e.get("if_match"), e.get("if_none_match"), e.get("current_etag")
        assert im is None or isinstance(im, str)
        assert ce is None or isinstance(ce, str)
        if ce is not None:  # any ETag the service answered with shows its version's format
            shapes.setdefault(svc, {}).setdefault(e["deploy_version"], set()).add(_shape(ce))
        if isinstance(status, int) and status < 300:
            assert isinstance(ce, str)
            spans[(svc, res)] = (True, [(e.get("deploy_version"), ce)])
            mentioned.update((svc, res, tag) for tag in (im, ce) if tag)
            history = writes.setdefault((svc, res), [])
            owner[(svc, ce)] = (res, len(history))
            history.append((ts, ce))
            continue
        versions = shapes.get(svc, {})
        now = versions.get(e["deploy_version"], set())
        earlier = set().union(*(s for v, s in versions.items() if v != e["deploy_version"]))
        cause = "unknown"
        if status == 428:
            cause = "missing_precondition"
        elif status == 409 and (im is None or ce is None):
            cause = "business_conflict"
        elif im == "*":
            cause = "resource_gone"
        elif inm == "*" and im is None:
            cause = "create_conflict"
        elif im is None or ce is None:
            cause = "unknown"
        elif ce.startswith("W/"):
            cause = "weak_etag"
        elif im != ce and _undo(im) == ce:
            cause = "proxy_rewrite"
        elif _shape(im) in earlier - now and _shape(ce) in now:
            cause = "format_change"
        elif _replicas_disagree(spans.get((svc, res)), e.get("deploy_version"), im, ce) and (
            im in {tag for _, tag in spans[(svc, res)][1]} | {ce} or (svc, res, im) not in mentioned
        ):
            cause = "unstable_etag"
        elif ts - last412.get((svc, e["client_id"], res, im), -1e18) <= window:
            cause = "blind_retry"
        else:
            where, index = owner.get((svc, im), (None, -1))
            history = writes.get((svc, res), [])
            if where == res and index + 1 < len(history):
                late = ts - history[index + 1][0] > window
                cause = "stale_etag" if late else "concurrent_write"
            elif where not in (None, res) and len(im.strip('"')) >= 16:
                cause = "cross_resource"
        if status == 412 and im is not None:
            last412[(svc, e["client_id"], res, im)] = ts
        if ce is not None:
            spans.setdefault((svc, res), (False, []))[1].append((e.get("deploy_version"), ce))
            mentioned.add((svc, res, ce))
        causes.append(cause)
    return causes


def test_same_seed_gives_the_same_events() -> None:
    """Generation is deterministic for a seed and changes with it."""
    small = DemoConfig(duration=240.0, deploy_at=120.0)
    assert generate(small) == generate(small)
    assert generate(small) != generate(DemoConfig(seed=8, duration=240.0, deploy_at=120.0))


def test_every_cause_appears_at_least_20_times(events: list[Event]) -> None:
    """The default traffic exercises all eleven causes, and failures are 10-25% of events."""
    counts = Counter(e.get("demo_cause") for e in _failures(events))
    assert {c: counts[c] for c in CAUSES if counts[c] < 20} == {}
    assert set(counts) == set(CAUSES)
    assert 0.10 <= sum(counts.values()) / len(events) <= 0.25


def test_events_are_in_time_order_within_the_run(events: list[Event]) -> None:
    """Event times strictly increase and stay inside [start, start + duration]."""
    times = [_ts(e) for e in events]
    assert all(a < b for a, b in itertools.pairwise(times))
    assert CONFIG.start <= times[0] and times[-1] <= CONFIG.start + CONFIG.duration + 1.0
    assert len(events) == pytest.approx(CONFIG.rate * CONFIG.duration, rel=0.25)


def test_request_ids_are_unique_per_service(events: list[Event]) -> None:
    """No service reuses a request id, and ids look like req-<16 hex>."""
    keys = [(e["service"], e["request_id"]) for e in events]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"req-[0-9a-f]{16}", str(rid)) for _, rid in keys)


def test_events_use_canonical_fields_only(events: list[Event]) -> None:
    """Fields are canonical names with no None values; only failures carry demo_cause."""
    for e in events:
        assert set(e) - {"demo_cause"} <= CANONICAL
        assert None not in e.values()
        assert ("demo_cause" in e) == (e["status"] in (409, 412, 428))


def test_status_shapes(events: list[Event]) -> None:
    """2xx carry the new current_etag; 428 carry no precondition or ETag; 409 carry a reason."""
    for e in events:
        status = e["status"]
        assert isinstance(status, int)
        if status < 300:
            assert isinstance(e.get("current_etag"), str)
        elif status == 428:
            assert not {"if_match", "if_none_match", "current_etag"} & set(e)
        elif status == 409:
            assert "reason" in e and "if_match" not in e and "current_etag" not in e


def test_orders_deploys_v2_at_deploy_at(events: list[Event]) -> None:
    """Orders answer as v1 before the deploy and v2 from then on, with the new ETag format."""
    orders = [e for e in events if e["service"] == "orders"]
    versions = [e["deploy_version"] for e in orders]
    switch = versions.index("v2")
    assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
    deploy = CONFIG.start + CONFIG.deploy_at
    assert _ts(orders[switch - 1]) <= deploy + 0.01 < _ts(orders[switch]) + 0.01
    for e in orders:
        if e["status"] in (200, 201, 204):
            v2 = str(e["current_etag"]).startswith('"v2-')
            assert v2 == (e["deploy_version"] == "v2")


def test_truth_maps_each_failure_to_its_cause(events: list[Event]) -> None:
    """truth() keys every failure by (service, request_id)."""
    labels = truth(events)
    failures = _failures(events)
    assert len(labels) == len(failures)
    assert all(
        labels[(str(e["service"]), str(e["request_id"]))] == e["demo_cause"] for e in failures
    )


def test_deliver_keeps_every_event_and_adds_exact_duplicates(events: list[Event]) -> None:
    """Delivery loses nothing and repeats about 2% of the lines as identical copies."""
    delivered = deliver(events)
    sent = Counter(json.dumps(e, sort_keys=True) for e in events)
    got = Counter(json.dumps(e, sort_keys=True) for e in delivered)
    assert set(got) == set(sent)  # nothing invented, nothing lost
    extra = len(delivered) - len(events)
    assert extra == pytest.approx(0.02 * len(events), rel=0.1)
    assert all(n <= 2 for n in got.values())
    assert deliver(events) == delivered


def test_deliver_disorder_is_bounded_by_the_delay(events: list[Event]) -> None:
    """No line arrives after a line more than max_delay newer than it."""
    for max_delay in (0.5, 2.5):
        delivered = deliver(events, max_delay=max_delay, seed=3)
        newest, worst = float("-inf"), 0.0
        for e in delivered:
            newest = max(newest, _ts(e))
            worst = max(worst, newest - _ts(e))
        assert 0 < worst <= max_delay
    assert [e["ts"] for e in deliver(events, max_delay=0.0, duplicate_ratio=0.0)] == [
        e["ts"] for e in events
    ]


def test_concurrent_writes_lost_to_a_recent_write(events: list[Event]) -> None:
    """Each concurrent_write's IM was superseded by a 2xx write on the resource within W."""
    successor: dict[tuple[object, object], float] = {}  # (resource, IM) -> superseding write time
    last: dict[object, object] = {}
    for e in events:
        if e["status"] in (200, 201, 204):
            key = (e["service"], e["resource_id"])
            if key in last:
                successor[(key, last[key])] = _ts(e)
            last[key] = e["current_etag"]
        elif e.get("demo_cause") == "concurrent_write":
            won = successor[((e["service"], e["resource_id"]), e["if_match"])]
            assert 0 < _ts(e) - won <= CONFIG.window


def test_format_change_shapes(events: list[Event]) -> None:
    """Every format_change is an orders v1 md5 If-Match against a v2 current ETag."""
    changed = [e for e in events if e.get("demo_cause") == "format_change"]
    assert changed
    for e in changed:
        assert e["service"] == "orders" and e["deploy_version"] == "v2"
        assert re.fullmatch(r'"[0-9a-f]{32}"', str(e["if_match"]))
        assert re.fullmatch(r'"v2-[0-9a-f]{16}"', str(e["current_etag"]))


def test_blind_retries_repeat_a_recent_412(events: list[Event]) -> None:
    """Every blind_retry repeats a 412 of the same client, resource and If-Match within W."""
    seen: dict[tuple[object, ...], float] = {}
    for e in events:
        key = (e["service"], e.get("client_id"), e["resource_id"], e.get("if_match"))
        if e.get("demo_cause") == "blind_retry":
            assert _ts(e) - seen[key] <= CONFIG.window
        if e["status"] == 412:
            seen[key] = _ts(e)


def test_an_independent_reading_of_the_rules_agrees(events: list[Event]) -> None:
    """Re-deriving every cause from the events alone gives exactly the demo's labels."""
    failures = _failures(events)
    derived = _reclassify(events, CONFIG.window)
    wrong = [(e, c) for e, c in zip(failures, derived, strict=True) if e["demo_cause"] != c]
    assert wrong[:3] == []


@pytest.mark.parametrize("config", [DemoConfig(seed=11, duration=600.0, deploy_at=300.0)])
def test_other_configs_stay_honest(config: DemoConfig) -> None:
    """Another seed and a shorter run still label every failure by the rules."""
    events = generate(config)
    derived = _reclassify(events, config.window)
    assert [e["demo_cause"] for e in _failures(events)] == derived
    assert "unknown" not in derived


def test_no_deploy_means_no_format_change() -> None:
    """With the deploy after the end of the run, orders never changes format."""
    events = generate(DemoConfig(duration=300.0, deploy_at=10_000.0))
    assert {e["deploy_version"] for e in events if e["service"] == "orders"} == {"v1"}
    assert all(e.get("demo_cause") != "format_change" for e in events)
