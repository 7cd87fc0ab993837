"""The alert rules, their promtool tests, the runbook, and the Prometheus and Alertmanager
configs."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from alerts.build import JOB, PREFIX, RULES_FILE, Options, build, duration, render
from tests.conftest import ROOT, find_binary, free_port, wait_for
from tests.stack import Receiver, alertmanager_config, alertmanager_process

TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus.yml"
ALERTMANAGER_YML = ROOT / "deploy" / "alertmanager.yml"
SEVERITIES = {"critical", "warning", "info"}
# Labels that say which alert it is rather than which thing is wrong.
STATIC_LABELS = {"alertname", "severity", "cause", "long", "short"}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in build()["groups"] for rule in group["rules"] if "alert" in rule]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in alerts()}


def unit_tests() -> list[dict[str, Any]]:
    return [test for path in TESTS for test in yaml.safe_load(path.read_text())["tests"]]


def series_labels(series: str) -> dict[str, str]:
    """The labels of a promtool input series, `name{a="b", c="d"}`."""
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', series))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_committed_rules_are_what_the_builder_writes() -> None:
    """alerts/rules.yml is exactly `python -m alerts.build` with its defaults (run it after
    editing alerts/build.py)."""
    assert RULES_FILE.read_text() == render()


def test_the_objective_sets_every_burn_rate_threshold() -> None:
    """--objective 0.995 halves the budget in each of the four burn-rate alerts."""
    text = render(Options(objective=0.995))
    assert "Objective: 99.5%" in text
    for factor in ("14.4", "6", "3", "1"):
        assert f"> ({factor} * 0.005)" in text
    with pytest.raises(ValueError, match="objective"):
        Options(objective=1.0)


def test_speed_divides_every_range_and_for() -> None:
    """A render at 60x has 5s where the rules have 5m, and `for: 2s` where they have 2m."""
    fast = render(Options(speed=60))
    assert "[5s]" in fast and "[5m]" not in fast
    assert "for: 2s" in fast and "for: 2m" not in fast
    assert duration(259200) == "3d" and duration(259200 / 60) == "72m"
    assert duration(0.25) == "250ms"


def test_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts the committed rules."""
    result = run(find_binary("promtool"), "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in alerts/tests passes with the real promtool."""
    result = run(find_binary("promtool"), "test", "rules", *map(str, TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TESTS) >= 3


def test_unit_tests_evaluate_recording_rules_first() -> None:
    """Each promtool test file orders every rule group, recording rules first (promtool runs
    unordered groups in any order, and an alert would read the previous minute's ratio)."""
    groups = [group["name"] for group in build()["groups"]]
    assert groups[0] == "precondition-watch.rules"
    for path in TESTS:
        assert yaml.safe_load(path.read_text())["group_eval_order"] == groups, path.name


def test_every_alert_follows_the_conventions() -> None:
    """CamelCase with the prefix, a severity, a `for`, a static summary ending in a period, a
    templated description, and a runbook URL to its anchor."""
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(PREFIX + r"(?:[A-Z][a-z]+|ETags?)+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert re.fullmatch(r"\d+(ms|s|m|h|d)", rule["for"]), name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert notes["summary"].endswith(".") and "{{" not in notes["summary"], name
        assert "{{ $labels." in notes["description"], name
        assert notes["runbook_url"] == f"docs/runbook.md#alert-name-{name.lower()}"


def test_recording_rules_are_named_level_metric_operations() -> None:
    """Every recording rule is `level:metric:operations`, and every one is used by an alert."""
    rules = [rule for group in build()["groups"] for rule in group["rules"] if "record" in rule]
    used = " ".join(rule["expr"] + rule["annotations"]["description"] for rule in alerts())
    for rule in rules:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]
        assert rule["record"] in used, rule["record"]


def test_every_alert_fires_in_one_test_and_stays_silent_in_another() -> None:
    """For each alert, a promtool test expects it to fire, and one expects it silent: no alert
    at all, or none for an input series whose labels differ from those that fire."""
    fires, silent = set(), set()
    for test in unit_tests():
        inputs = [series_labels(s["series"]) for s in test["input_series"]]
        for case in test["alert_rule_test"]:
            name, expected = case["alertname"], case.get("exp_alerts") or []
            if not expected:
                silent.add(name)
                continue
            fires.add(name)
            keys = sorted(set(expected[0]["exp_labels"]) - STATIC_LABELS)
            firing = {tuple(str(e["exp_labels"][k]) for k in keys) for e in expected}
            given = {tuple(s[k] for k in keys) for s in inputs if all(k in s for k in keys)}
            if given - firing:
                silent.add(name)
    assert fires == alert_names()
    assert silent >= alert_names()


def test_descriptions_use_only_labels_the_alert_has() -> None:
    """Every `$labels.x` of a description is a label of the alert when it fires in its test."""
    labelled: dict[str, set[str]] = {}
    for test in unit_tests():
        for case in test["alert_rule_test"]:
            for expected in case.get("exp_alerts") or []:
                labelled.setdefault(case["alertname"], set()).update(expected["exp_labels"])
    for rule in alerts():
        used = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["description"]))
        assert used <= labelled[rule["alert"]] | {"cause"}, rule["alert"]


def test_every_alert_has_a_runbook_entry() -> None:
    """docs/runbook.md has one `Alert Name:` heading per alert, no stale ones, and each entry
    says how to confirm it in PromQL and with a call to an API."""
    text = RUNBOOK.read_text()
    entries = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    by_anchor = {github_anchor(entry.splitlines()[0]): entry for entry in entries}
    wanted = {f"alert-name-{name.lower()}" for name in alert_names()}
    assert wanted <= set(by_anchor)
    assert {a for a in by_anchor if a.startswith("alert-name-")} == wanted
    for anchor in wanted:
        entry = by_anchor[anchor]
        for section in ("Meaning", "Confirm", "Act"):
            assert f"**{section}**" in entry, (anchor, section)
        assert "```promql" in entry and "curl " in entry, anchor


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    """`promtool check config` accepts deploy/prometheus.yml, which loads alerts/rules.yml,
    scrapes the job the rules select and keeps exemplars."""
    result = run(find_binary("promtool"), "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    rule_files = [(PROMETHEUS_YML.parent / f).resolve() for f in config["rule_files"]]
    assert rule_files == [RULES_FILE]
    assert JOB in {job["job_name"] for job in config["scrape_configs"]}
    assert config["storage"]["exemplars"]["max_exemplars"] > 0
    assert config["alerting"]["alertmanagers"]


def test_alertmanager_config_is_valid() -> None:
    """`amtool check-config` accepts deploy/alertmanager.yml."""
    result = run(find_binary("amtool"), "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "service=orders", "cause=format_change"], "page"),
        (["severity=warning", "service=inventory", "cause=blind_retry"], "ticket"),
        (["severity=info", "service=ledger", "cause=concurrent_write"], "none"),
        (["alertname=SomethingElse"], "ticket"),
    ],
)
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    """`amtool config routes test`: critical pages, warning tickets, info notifies nobody, and an
    alert without a severity still reaches a ticket."""
    result = run(
        find_binary("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_YML}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_groups_by_service_and_cause_and_inhibits_warnings(tmp_path: Path) -> None:
    """A real Alertmanager on deploy/alertmanager.yml: a service's critical alert silences its
    warnings but not another service's; warnings of one service and cause share one ticket."""
    receiver = Receiver(free_port())
    receiver.start()
    timing = {"group_wait": "200ms", "group_interval": "200ms"}
    manager = alertmanager_process(
        tmp_path, free_port(), alertmanager_config(receiver.port, timing)
    )
    try:
        manager.start()

        def alert(name: str, severity: str, service: str, **labels: str) -> dict[str, Any]:
            labels = {
                "alertname": PREFIX + name,
                "severity": severity,
                "service": service,
                **labels,
            }
            return {"labels": labels, "annotations": {"summary": "test."}}

        sent = [
            alert("ErrorBudgetBurn", "critical", "carts", long="1h", short="5m"),
            alert("BlindRetryStorm", "warning", "carts", cause="blind_retry", route="/a"),
            alert("BlindRetryStorm", "warning", "inventory", cause="blind_retry", route="/a"),
            alert("BlindRetryStorm", "warning", "inventory", cause="blind_retry", route="/b"),
            alert("HotResourceStorm", "info", "ledger", cause="concurrent_write"),
        ]
        httpx.post(manager.url + "/api/v2/alerts", json=sent).raise_for_status()
        wait_for(lambda: receiver.alerts("page") and receiver.alerts("ticket"), what="delivery")

        def suppressed() -> list[str]:
            listed = httpx.get(manager.url + "/api/v2/alerts").json()
            return [a["labels"]["service"] for a in listed if a["status"]["inhibitedBy"]]

        wait_for(lambda: suppressed() == ["carts"], what="the carts warning inhibited")
        time.sleep(0.5)  # two more group intervals: anything else would have been sent by now
        pages = [a["labels"]["service"] for _, a in receiver.alerts("page")]
        tickets = [
            (a["labels"]["service"], a["labels"]["route"]) for _, a in receiver.alerts("ticket")
        ]
        assert pages == ["carts"]
        assert sorted(tickets) == [("inventory", "/a"), ("inventory", "/b")]
        ticket_calls = [n for n in receiver.notifications if n.receiver == "ticket"]
        assert len(ticket_calls) == 1
        assert all(n.receiver in ("page", "ticket") for n in receiver.notifications)
    finally:
        manager.stop()
        receiver.stop()
