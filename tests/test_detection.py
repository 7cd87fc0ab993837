"""Detection on streams the classifier was not designed on: the independent scenarios.

`tests/scenarios.py` simulates worlds from DESIGN alone (resources first seen mid-life, a
service whose first hour is missing, deploys that regenerate ETags in the same shape or change
their format, three replicas with inode ETags, no-op deploys with stale tabs saving after them,
race storms across a deploy, sparse baselines) and labels each failure's cause from what the
simulation did. The stream is delivered late, out of order and with duplicate lines, through
the real ingest and settling path, with deploys judged as a live collector judges them.
"""

from __future__ import annotations

from collections import Counter

import pytest

from collector.tracker import DeployTracker
from tests import scenarios
from tests.conftest import Node, make_store
from tests.test_accuracy import print_table, replay_live

pytestmark = pytest.mark.anyio

TARGET = 0.99
DETECTION_SECONDS = 120.0


async def test_every_cause_and_deploy_verdict_on_independent_scenarios() -> None:
    """Every cause at precision and recall >= 0.99, each failure counted exactly once, and each
    deploy flagged (within 2 minutes of event time, with its cause) exactly when it should be."""
    generated = scenarios.generate(seed=1)
    events = sorted((e for s in generated for e in s.events), key=lambda e: float(str(e["ts"])))
    truth = scenarios.truth(generated)
    node = Node(make_store("fake", retention_seconds=86400))
    tracker = DeployTracker(node.store, node.metrics, lateness=5)
    live: dict[tuple[str, str], float] = {}
    batches = 0

    async def judge(_: Node, arrival: float) -> None:
        nonlocal batches
        batches += 1
        if batches % 3:
            return  # a batch is a few seconds of event time; the collector judges every second
        for service in await node.store.services():
            latest = await tracker.judge(service)
            if latest is not None and latest.regression is not None:
                detected = float(str(latest.regression["detected_at"]))
                live.setdefault((service, latest.version), detected)

    await replay_live([node], scenarios.deliver(events), after_batch=judge)
    await tracker.judge_all(settled=True)

    resources = {(str(e["service"]), str(e["request_id"])): str(e["resource_id"]) for e in events}
    got: dict[tuple[str, str], str] = {}
    for key in truth:
        _, decision = await node.store.request(key[0], resources[key], key[1])
        got[key] = decision["cause"] if decision else "none"
    table = {}
    for cause in sorted(set(truth.values())):
        hits = sum(1 for k, v in truth.items() if v == cause and got[k] == cause)
        predicted = sum(1 for v in got.values() if v == cause)
        support = sum(1 for v in truth.values() if v == cause)
        table[cause] = (hits / predicted if predicted else 0.0, hits / support, support)
    print_table("independent scenarios (tests/scenarios.py, seed 1), one collector", table)
    confusions = Counter((k[0], truth[k], got[k]) for k in truth if truth[k] != got[k])
    print("confusions:", confusions.most_common(10))
    assert node.failures_counted() == len(truth)

    print(f"\n{'deploy':<28}{'should flag':<14}{'verdict':<15}{'delay s':>8}{'live s':>8}")
    for scenario in generated:
        for deploy in scenario.deploys:
            versions = await tracker.deploys(deploy.service)
            (found,) = [d for d in versions if d.version == deploy.version]
            verdict = str(found.regression["cause"]) if found.regression else None
            delay = live_delay = None
            if found.regression is not None:
                delay = float(str(found.regression["detected_at"])) - deploy.ts
                live_delay = live.get((deploy.service, deploy.version), float("nan")) - deploy.ts
            name = f"{deploy.service} {deploy.version}"
            print(f"{name:<28}{deploy.regression_cause or '-':<14}{verdict or '-':<15}"
                  f"{delay if delay is not None else '-':>8}"
                  f"{live_delay if live_delay is not None else '-':>8}")  # fmt: skip
            assert verdict == deploy.regression_cause, (name, found.regression)
            if delay is not None:
                assert 0 <= delay <= DETECTION_SECONDS, (name, delay)
                assert live_delay == delay, (name, "a live collector found another minute")
    for cause, (precision, recall, support) in table.items():
        assert support >= 30, cause
        assert precision >= TARGET and recall >= TARGET, (cause, precision, recall)
    for service, version in live:
        expected = [d for s in generated for d in s.deploys if d.service == service]
        assert any(d.version == version and d.regression_cause for d in expected), (
            f"{service} {version} flagged live but not meant to be"
        )
