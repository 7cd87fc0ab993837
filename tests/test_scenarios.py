"""Tests for tests/scenarios.py: labelled streams that are deterministic, complete, unambiguous."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from tests.scenarios import CAUSES, FAILURE_STATUSES, WINDOW, Scenario, deliver, generate, truth

START = 1_790_000_000.0
SYSTEMIC = {"weak_etag", "proxy_rewrite", "format_change", "unstable_etag"}
HEX32 = re.compile(r'^"[0-9a-f]{32}"$')
INODE = re.compile(r'^"([0-9a-f]+)-([0-9a-f]+)-([0-9a-f]+)"$')

Event = dict[str, object]


@pytest.fixture(scope="module")
def scenarios() -> list[Scenario]:
    return generate(seed=1, start=START)


def ts(event: Event) -> float:
    value = event["ts"]
    assert isinstance(value, float | str)
    return float(value)


def status(event: Event) -> int:
    value = event["status"]
    assert isinstance(value, int)
    return value


def named(scenarios: list[Scenario], name: str) -> Scenario:
    return next(s for s in scenarios if s.name == name)


def by_resource(events: list[Event]) -> dict[object, list[Event]]:
    grouped: dict[object, list[Event]] = defaultdict(list)
    for event in events:
        grouped[event["resource_id"]].append(event)
    return grouped


def all_events(scenarios: list[Scenario]) -> list[Event]:
    return [e for s in scenarios for e in s.events]


def test_same_seed_same_streams(scenarios: list[Scenario]) -> None:
    """A seed always gives the same streams; another seed gives others, every cause still there."""
    assert generate(seed=1, start=START) == scenarios
    other = generate(seed=2, start=START)
    assert other != scenarios
    assert min(Counter(truth(other).values()).values()) >= 30


def test_every_cause_has_at_least_30_failures(scenarios: list[Scenario]) -> None:
    """Every cause of DESIGN is the truth of at least 30 failures, and no other label is used."""
    counts = Counter(truth(scenarios).values())
    assert set(counts) == set(CAUSES)
    assert min(counts.values()) >= 30, counts


def test_truth_labels_exactly_the_failures(scenarios: list[Scenario]) -> None:
    """Every 409/412/428 carries a true cause, no successful write does; truth() has them all."""
    events = all_events(scenarios)
    failures = [e for e in events if status(e) in FAILURE_STATUSES]
    assert all("truth_cause" in e for e in failures)
    assert not any("truth_cause" in e for e in events if status(e) < 300)
    assert len(truth(scenarios)) == len(failures)


def test_request_ids_unique_per_service(scenarios: list[Scenario]) -> None:
    """No two events of one service share a request id."""
    for scenario in scenarios:
        ids = [e["request_id"] for e in scenario.events]
        assert len(ids) == len(set(ids)), scenario.name


def test_every_event_has_the_required_fields(scenarios: list[Scenario]) -> None:
    """ts, service, status and request_id are on every event; the scenario names the service."""
    for scenario in scenarios:
        for event in scenario.events:
            assert {"ts", "service", "status", "request_id", "resource_id"} <= event.keys()
            assert event["service"] == scenario.name
            assert None not in event.values()


def test_streams_are_messy_like_real_logs(scenarios: list[Scenario]) -> None:
    """Some events miss optional fields and some carry their time as a numeric string."""
    events = all_events(scenarios)
    assert sum(isinstance(e["ts"], str) for e in events) >= 50
    for name in ("route", "method", "client_id", "deploy_version"):
        assert sum(name not in e for e in events) >= 20, name


def test_events_are_in_event_time_order(scenarios: list[Scenario]) -> None:
    """Each scenario's events come sorted by event time, within about an hour from the start."""
    for scenario in scenarios:
        times = [ts(e) for e in scenario.events]
        assert times == sorted(times), scenario.name
        assert times[0] >= START and times[-1] <= START + 3600, scenario.name


def test_stream_size_replays_quickly(scenarios: list[Scenario]) -> None:
    """The whole lot is 15,000 to 30,000 events."""
    assert 15_000 <= len(all_events(scenarios)) <= 30_000


def test_failures_keep_clear_of_window_edges(scenarios: list[Scenario]) -> None:
    """No failure is within 1 s of W after its superseding write, of W after the same client's
    412 with the same If-Match, or of a deploy."""
    for scenario in scenarios:
        deploys = [d.ts for d in scenario.deploys]
        earlier: dict[tuple[object, ...], list[float]] = defaultdict(list)
        for event in scenario.events:
            if status(event) not in FAILURE_STATUSES:
                continue
            t = ts(event)
            assert all(abs(t - d) > 1.0 for d in deploys)
            if "truth_superseded_at" in event:
                superseded = event["truth_superseded_at"]
                assert isinstance(superseded, float)
                assert abs(t - superseded - WINDOW) > 1.0
            if "if_match" in event:
                key = (event.get("client_id"), event["resource_id"], event["if_match"])
                assert all(abs(t - before - WINDOW) > 1.0 for before in earlier[key])
                earlier[key].append(t)


def test_races_and_stale_etags_follow_the_superseding_write(scenarios: list[Scenario]) -> None:
    """A concurrent_write lost to a write at most W before it, a stale_etag to one longer ago."""
    ages: dict[str, list[float]] = defaultdict(list)
    for event in all_events(scenarios):
        cause = event.get("truth_cause")
        if cause in ("concurrent_write", "stale_etag"):
            superseded = event["truth_superseded_at"]
            assert isinstance(superseded, float)
            ages[str(cause)].append(ts(event) - superseded)
    assert min(ages["concurrent_write"]) > 0 and max(ages["concurrent_write"]) < WINDOW
    assert min(ages["stale_etag"]) > WINDOW


def test_blind_retry_means_the_same_client_already_failed(scenarios: list[Scenario]) -> None:
    """blind_retry exactly when the same client got a 412 on the resource with the If-Match
    within W (unless a systemic cause comes first in DESIGN's precedence)."""
    for scenario in scenarios:
        earlier: dict[tuple[object, ...], list[float]] = defaultdict(list)
        for event in scenario.events:
            if status(event) not in FAILURE_STATUSES or "if_match" not in event:
                continue
            t = ts(event)
            key = (event["client_id"], event["resource_id"], event["if_match"])
            recent = any(t - before <= WINDOW for before in earlier[key])
            cause = event["truth_cause"]
            if cause not in SYSTEMIC and event["if_match"] != "*":
                assert recent == (cause == "blind_retry"), (scenario.name, event)
            earlier[key].append(t)


def test_deploy_truths(scenarios: list[Scenario]) -> None:
    """Only the two ETag-changing deploys must be flagged; the new version answers from its ts."""
    verdicts = {(d.service, d.version): d.regression_cause for s in scenarios for d in s.deploys}
    assert verdicts == {
        ("catalog", "4.3.0"): "format_change",
        ("assets", "3.0.0"): "format_change",
        ("notes", "7.1.1"): None,
        ("tickets", "12.5.0"): None,
        ("sparse", "1.0.0"): None,
        ("sparse-empty", "3.4.0"): None,
    }
    for scenario in scenarios:
        for deploy in scenario.deploys:
            versions = {e["deploy_version"] for e in scenario.events if ts(e) > deploy.ts}
            assert versions == {deploy.version}
            assert deploy.version not in {
                e.get("deploy_version") for e in scenario.events if ts(e) < deploy.ts
            }


def test_ledger_races_on_resources_first_seen_mid_life(scenarios: list[Scenario]) -> None:
    """Many accounts' first event is a write from an unseen If-Match, then a 412 holding it."""
    found = 0
    for events in by_resource(named(scenarios, "ledger").events).values():
        first, *rest = events
        if status(first) != 200 or not rest:
            continue
        loser = rest[0]
        if (
            loser.get("truth_cause") == "concurrent_write"
            and loser.get("if_match") == first.get("if_match")
            and ts(loser) - ts(first) < 30
        ):
            found += 1
    assert found >= 100


def test_billing_clients_hold_etags_the_log_never_showed(scenarios: list[Scenario]) -> None:
    """billing starts mid-life: writes and stale 412s send If-Match values never logged before."""
    unseen: Counter[str] = Counter()
    for events in by_resource(named(scenarios, "billing").events).values():
        shown: set[object] = set()
        for event in events:
            if event.get("if_match") not in shown:
                unseen["write" if status(event) < 300 else str(event["truth_cause"])] += 1
            shown.update({event.get("current_etag"), event.get("if_match")})
    assert unseen["write"] >= 30
    assert unseen["stale_etag"] >= 10


def test_catalog_regenerates_etags_in_the_same_shape(scenarios: list[Scenario]) -> None:
    """catalog's format_change 412s hold the ETag the old version logged, in the new one's shape."""
    catalog = named(scenarios, "catalog")
    changed = 0
    for events in by_resource(catalog.events).values():
        for i, event in enumerate(events):
            if event.get("truth_cause") != "format_change":
                continue
            changed += 1
            assert HEX32.match(str(event["if_match"])) and HEX32.match(str(event["current_etag"]))
            assert event["deploy_version"] == "4.3.0"
            old = [e for e in events[:i] if e.get("current_etag") == event["if_match"]]
            assert old and all(e["deploy_version"] == "4.2.0" for e in old)
            writes = [e for e in events[:i] if status(e) < 300]
            assert not any(e.get("if_match") == event["if_match"] for e in writes)
    assert changed >= 50


def test_assets_format_change_after_a_noisy_baseline(scenarios: list[Scenario]) -> None:
    """assets: stale tabs in the 10 minutes before, a burst of the new format within 2 minutes."""
    assets = named(scenarios, "assets")
    deploy = assets.deploys[0].ts
    before = Counter(e.get("truth_cause") for e in assets.events if deploy - 600 <= ts(e) < deploy)
    after = [e for e in assets.events if e.get("truth_cause") == "format_change"]
    assert before["stale_etag"] >= 20 and before["format_change"] == 0
    assert sum(ts(e) < deploy + 120 for e in after) >= 40
    for event in after:
        assert HEX32.match(str(event["if_match"]))
        assert re.match(r'^"v2-[0-9a-f]{16}"$', str(event["current_etag"]))


def test_files_replicas_disagree_on_the_inode_only(scenarios: list[Scenario]) -> None:
    """files: each unstable_etag 412 has IM and CE of the same size and mtime, another inode,
    and the resource's ETag flips A, B, A by the next logged event."""
    files = named(scenarios, "files")
    assert files.deploys == []
    count = 0
    for events in by_resource(files.events).values():
        seen: list[object] = []  # the logged current ETags since the last write
        for i, event in enumerate(events):
            if status(event) < 300:
                seen = [event["current_etag"]]
            if event.get("truth_cause") != "unstable_etag":
                continue
            count += 1
            im = INODE.match(str(event["if_match"]))
            ce = INODE.match(str(event["current_etag"]))
            assert im and ce and im.group(1) != ce.group(1) and im.groups()[1:] == ce.groups()[1:]
            seen.append(event["current_etag"])
            upcoming = events[i + 1] if i + 1 < len(events) else None
            ahead = list(seen)
            if upcoming is not None:
                ahead.append(upcoming["if_match" if status(upcoming) < 300 else "current_etag"])
            assert flips(ahead, event["if_match"]), event
    assert count >= 150


def flips(seen: list[object], value: object) -> bool:
    """Whether `seen` goes A, B, A somewhere with `value` one of A and B."""
    for p, a in enumerate(seen):
        for q in range(p + 1, len(seen)):
            if seen[q] != a and value in (a, seen[q]) and a in seen[q + 1 :]:
                return True
    return False


def test_sparse_baselines(scenarios: list[Scenario]) -> None:
    """sparse has three requests before its deploy; sparse-empty none in the 10 minutes before."""
    sparse, empty = named(scenarios, "sparse"), named(scenarios, "sparse-empty")
    assert sum(ts(e) < sparse.deploys[0].ts for e in sparse.events) == 3
    assert sum(named_cause == "format_change" for named_cause in truth([sparse]).values()) >= 10
    deploy = empty.deploys[0].ts
    assert not any(deploy - 600 <= ts(e) < deploy for e in empty.events)
    assert any(ts(e) < deploy - 600 for e in empty.events)


def test_notes_stale_tabs_save_after_a_noop_deploy(scenarios: list[Scenario]) -> None:
    """notes: stale tabs superseded long before the deploy fail after it."""
    notes = named(scenarios, "notes")
    deploy = notes.deploys[0].ts
    late = [
        e
        for e in notes.events
        if e.get("truth_cause") == "stale_etag"
        and ts(e) > deploy
        and float(str(e["truth_superseded_at"])) < deploy
    ]
    assert len(late) >= 30
    assert "format_change" not in truth([notes]).values()


def test_tickets_race_storm_spans_the_deploy(scenarios: list[Scenario]) -> None:
    """tickets: hundreds of races on either side of the deploy, some as 409s that carry ETags."""
    tickets = named(scenarios, "tickets")
    deploy = tickets.deploys[0].ts
    races = [e for e in tickets.events if e.get("truth_cause") == "concurrent_write"]
    assert sum(ts(e) < deploy for e in races) >= 100
    assert sum(ts(e) > deploy for e in races) >= 100
    conflicts = [e for e in races if status(e) == 409]
    assert len(conflicts) >= 50 and all("if_match" in e and "current_etag" in e for e in conflicts)


def test_proxies_rewrite_every_way_design_names(scenarios: list[Scenario]) -> None:
    """edge: proxy_rewrite If-Match values are gzip- and br-suffixed, weakened and unquoted."""
    kinds: Counter[str] = Counter()
    for event in named(scenarios, "edge").events:
        if event.get("truth_cause") == "proxy_rewrite":
            im, ce = str(event["if_match"]), str(event["current_etag"])
            kind = next(
                k
                for k, rewritten in (
                    ("gzip", ce[:-1] + '-gzip"'),
                    ("br", ce[:-1] + '-br"'),
                    ("weaken", "W/" + ce),
                    ("unquote", ce.strip('"')),
                )
                if im == rewritten
            )
            kinds[kind] += 1
    assert set(kinds) == {"gzip", "br", "weaken", "unquote"} and min(kinds.values()) >= 10


def test_deliver_reorders_within_max_delay_and_duplicates(scenarios: list[Scenario]) -> None:
    """deliver() sends each line at most max_delay late, about 2% of them twice, nothing lost."""
    events = all_events(scenarios)
    lines = deliver(events, max_delay=2.5, duplicate_ratio=0.02, seed=3)
    newest = -1.0
    reordered = 0
    for line in lines:
        t = ts(line)
        assert t >= newest - 2.5
        reordered += t < newest
        newest = max(newest, t)
    assert reordered > 1000
    copies = Counter((line["service"], line["request_id"]) for line in lines)
    assert set(copies) == {(e["service"], e["request_id"]) for e in events}
    assert max(copies.values()) == 2
    assert 0.015 < (len(lines) - len(events)) / len(events) < 0.025
    assert deliver(events, seed=3) == lines and deliver(events, seed=4) != lines
