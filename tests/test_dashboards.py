"""The Grafana dashboards: committed JSON is the builder's output, and every panel follows the rules
on-call relies on (in the spirit of Grafana's dashboard-linter)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from collector import demo
from collector.api.causes import CAUSES
from collector.metrics import Metrics
from dashboards import build as builder
from dashboards.panels import BUDGET, DEFAULT_COLLECTOR_URL
from tests.conftest import wait_for
from tests.stack import Stack

Board = dict[str, Any]
SERVICE_BOARDS = ("overview.json", "deploys.json", "conflicts.json")
# Series that Prometheus itself makes, beside the collector's.
PROMETHEUS_SERIES = {"ALERTS", "up"}


def boards() -> dict[str, Board]:
    return {name: json.loads(text) for name, text in builder.rendered().items()}


def panels(board: Board) -> Iterator[Board]:
    """Every panel that shows data (rows are containers), nested ones included."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def expressions(board: Board) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every query: panel targets, annotations, variables."""
    for panel in panels(board):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for annotation in board["annotations"].get("list", []):
        yield f"annotation {annotation['name']}", annotation["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def exported_series() -> dict[str, tuple[str, ...]]:
    """Every series name the collector exports, with the metric's label names."""
    metrics = Metrics(CollectorRegistry())
    found: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        # prometheus_client keeps the name and label names on the wrapper, not in describe().
        name, labels = value._name, tuple(value._labelnames)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        for suffix in suffixes.get(str(value._type), ("",)):
            found[name + suffix] = labels
    return found


# Series selectors: the collector's metrics and Prometheus's own; label names never look so.
SELECTOR = re.compile(r"\b(precondition_[a-z_]+|ALERTS|up)\b(\{[^}]*\})?")


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric, matchers) of each series selector of a query."""
    for match in SELECTOR.finditer(expr):
        yield match.group(1), match.group(2) or ""


@pytest.fixture(scope="module")
def all_boards() -> dict[str, Board]:
    return boards()


def test_committed_json_is_what_the_builder_writes() -> None:
    """dashboards/json/ holds exactly the builder's output: run `make dashboards` after edits."""
    files = {p.name: p.read_text() for p in builder.JSON_DIR.glob("*.json")}
    assert set(files) == set(builder.DASHBOARDS)
    for name, text in builder.rendered().items():
        assert files[name] == text, f"dashboards/json/{name} is stale: run `make dashboards`"


def test_check_mode_reports_a_stale_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m dashboards.build --check` exits 1 when a file differs, and writes nothing."""
    monkeypatch.setattr(builder, "JSON_DIR", tmp_path)
    assert builder.main(["--check"]) == 1
    assert list(tmp_path.iterdir()) == []
    assert builder.main([]) == 0
    assert builder.main(["--check"]) == 0


def test_every_panel_has_title_description_unit_and_datasource(
    all_boards: dict[str, Board],
) -> None:
    """Each panel says what it shows, in which unit, from `$datasource`, and has queries."""
    for name, board in all_boards.items():
        for panel in panels(board):
            where = f"{name}: {panel.get('title')!r}"
            assert panel.get("title"), where
            assert len(panel.get("description", "")) >= 40, f"{where} needs a description"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], f"{where} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs) and all(refs), where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", where


def test_every_range_is_the_rate_interval(all_boards: dict[str, Board]) -> None:
    """rate() and irate() take `$__rate_interval`; only instant tables sum over `$__range`."""
    for name, board in all_boards.items():
        instant = {
            t["expr"] for p in panels(board) for t in p["targets"] if t.get("instant") is True
        }
        for where, expr in expressions(board):
            for function, window in re.findall(r"\b(\w+)\([^()\[]*\[([^\]]+)\]", expr):
                if window == "$__range":
                    assert function == "increase" and expr in instant, f"{name} {where}: {expr}"
                else:
                    assert window == "$__rate_interval", f"{name} {where}: [{window}]"
            assert "rate(" not in expr or "$__rate_interval" in expr, f"{name} {where}"


def test_every_metric_is_one_the_collector_exports(all_boards: dict[str, Board]) -> None:
    """No query names a metric the collector does not export (a typo would graph nothing)."""
    known = exported_series()
    for name, board in all_boards.items():
        for where, expr in expressions(board):
            for metric, _ in selectors(expr):
                assert metric in known or metric in PROMETHEUS_SERIES, f"{name} {where}: {metric}"


def test_selectors_filter_by_the_dashboard_variables(all_boards: dict[str, Board]) -> None:
    """On service dashboards every selector of a metric with a service (route) label matches
    `$service` (`$route`); on the collector dashboard every selector matches `$instance`."""
    known = exported_series()
    for name, board in all_boards.items():
        for where, expr in expressions(board):
            for metric, matchers in selectors(expr):
                labels = known.get(metric, ())
                if name == "collector.json" and not where.startswith("variable"):
                    assert 'instance=~"$instance"' in matchers, f"{name} {where}: {metric}"
                    continue
                if metric == "ALERTS":
                    assert 'service=~"$service|"' in matchers, f"{name} {where}"
                    continue
                if "service" in labels and not where.startswith("variable service"):
                    assert 'service=~"$service"' in matchers, f"{name} {where}: {metric}"
                if "route" in labels and not where.startswith("variable"):
                    assert 'route=~"$route"' in matchers, f"{name} {where}: {metric}"


def test_variables_for_service_route_and_instance(all_boards: dict[str, Board]) -> None:
    """Service dashboards filter by service and route (the route list by the services chosen);
    the collector dashboard by instance; each query variable asks `$datasource` again when the
    time range changes, and All matches any value."""
    for name, board in all_boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        wanted = ("service", "route") if name in SERVICE_BOARDS else ("instance",)
        for key in wanted:
            variable = variables[key]
            assert variable["type"] == "query"
            assert variable["datasource"]["uid"] == "${datasource}"
            assert variable["refresh"] == 2
            assert variable["multi"] and variable["includeAll"]
            assert variable["allValue"] == ".*"
        if name in SERVICE_BOARDS:
            assert 'service=~"$service"' in variables["route"]["query"]["query"]
            assert variables["collector_url"]["query"] == DEFAULT_COLLECTOR_URL


def test_failure_panels_carry_exemplars(all_boards: dict[str, Board]) -> None:
    """Panels that count failures or races (not ratios) ask for exemplars, whose request_id
    opens the request's drill-down page; each service dashboard has some."""
    for name in SERVICE_BOARDS:
        with_exemplars = 0
        for panel in panels(all_boards[name]):
            for target in panel["targets"]:
                expr = target["expr"]
                counts = (
                    "precondition_failures_total" in expr or "precondition_race_seconds" in expr
                )
                if counts and " / " not in expr and not target.get("instant"):
                    assert target["exemplar"] is True, f"{name}: {panel['title']}"
                    with_exemplars += 1
        assert with_exemplars >= 1, name


def test_causes_keep_their_colours(all_boards: dict[str, Board]) -> None:
    """A panel broken down by cause colours every cause as the drill-down pages do."""
    broken_down = 0
    for board in all_boards.values():
        for panel in panels(board):
            if not any("{{cause}}" in t["legendFormat"] for t in panel["targets"]):
                continue
            broken_down += 1
            colours = {}
            for override in panel["fieldConfig"]["overrides"]:
                name = override["matcher"]["options"].removeprefix("^").split("(")[0]
                colours[name] = override["properties"][0]["value"]["fixedColor"]
            assert colours == {cause: text.colour for cause, text in CAUSES.items()}
    assert broken_down >= 3


def test_links_open_the_collector_pages(all_boards: dict[str, Board]) -> None:
    """Data links go to the collector's drill-down pages, with the series' or row's service."""
    links = [
        link["url"]
        for board in all_boards.values()
        for panel in panels(board)
        for link in panel["fieldConfig"]["defaults"].get("links", [])
    ]
    assert len(links) >= 8
    for url in links:
        assert re.fullmatch(
            r"\$\{collector_url\}/ui/services/\$\{__(field\.labels|data\.fields)\.service\}(#\w+)?",
            url,
        ), url


def test_deploys_are_annotations_at_their_event_time(all_boards: dict[str, Board]) -> None:
    """Deploy marks come from precondition_deploy_timestamp_seconds, its value as the time."""
    for name in ("overview.json", "deploys.json"):
        deploys = all_boards[name]["annotations"]["list"][0]
        assert "precondition_deploy_timestamp_seconds" in deploys["expr"]
        assert deploys["expr"].endswith("* 1000")  # Grafana wants milliseconds
        assert deploys["useValueForTime"] is True
        assert deploys["titleFormat"] == "{{service}} deployed {{version}}"


def test_layout_ids_and_uids(all_boards: dict[str, Board]) -> None:
    """Panel ids are unique, every panel fits the 24-column grid, dashboard uids are unique."""
    uids = [board["uid"] for board in all_boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in all_boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids) and 0 not in ids, name
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{name}: {panel['title']}"
        assert board["title"].startswith("Precondition Watch / ")
        assert board["schemaVersion"] >= 39


def test_the_objective_line_is_the_alerts_budget(all_boards: dict[str, Board]) -> None:
    """The failure-ratio panel draws the error budget the burn-rate alerts use."""
    panel = next(p for p in panels(all_boards["overview.json"]) if "objective" in p["title"])
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == BUDGET == 0.01


# -- end to end: a real Prometheus scraping a real collector fed by the demo -------------------

# What Grafana puts in for its variables: a rate interval of four 1 s scrapes and more, the
# test's whole time range, and All for every template variable.
GRAFANA_VARIABLES = {
    "$__rate_interval": "10s",
    "$__range": "5m",
    "$__interval": "1s",
    "$service": ".*",
    "$route": ".*",
    "$instance": ".*",
}


def as_grafana_sends(expr: str) -> str:
    """A query with the dashboard's variables replaced as Grafana replaces them."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def has_values(result: list[dict[str, Any]]) -> bool:
    """A query result with at least one finite sample (NaN is a ratio of nothing)."""
    for series in result:
        samples = series.get("values") or [series.get("value")]
        if any(math.isfinite(float(value)) for _, value in samples):
            return True
    return False


def feed(url: str, events: list[dict[str, object]], chunks: int, scraped: Any) -> None:
    """Send the events in chunks, each after Prometheus scraped what the previous stored, so
    every counter rises between scrapes and rates are positive."""
    size = len(events) // chunks + 1
    sent = 0
    with httpx.Client(base_url=url, timeout=120) as http:
        for first in range(0, len(events), size):
            chunk = events[first : first + size]
            body = b"\n".join(orjson.dumps(e) for e in chunk)
            answer = http.post(
                "/v1/events", content=body, headers={"Content-Type": "application/x-ndjson"}
            ).json()
            assert answer["rejected"] == []
            sent += answer["accepted"]
            wait_for(lambda n=sent: scraped() >= n, timeout=20, what=f"a scrape of {sent} events")
        http.post("/v1/flush").raise_for_status()


def label_values(http: httpx.Client, query: str) -> list[str]:
    """The values of a `label_values(selector, label)` variable, asked as Grafana asks."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match is not None, query
    selector, label = match.groups()
    answer = http.get(f"/api/v1/label/{label}/values", params={"match[]": selector})
    values: list[str] = answer.json()["data"]
    return values


def series(http: httpx.Client, query: str, start: float, end: float) -> list[dict[str, Any]]:
    """An instant query at `end` when start == end, else a range query at 1 s steps."""
    if start == end:
        answer = http.get("/api/v1/query", params={"query": query, "time": end})
    else:
        answer = http.get(
            "/api/v1/query_range", params={"query": query, "start": start, "end": end, "step": 1}
        )
    body = answer.json()
    assert body["status"] == "success", f"{query}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.e2e
def test_every_query_returns_data_from_a_real_prometheus(tmp_path: Path) -> None:
    """With the demo fed to a real collector on Redis and a real Prometheus scraping it with
    the real rules, every panel's and annotation's query returns data over the test's time
    range, and every template variable's query returns values."""
    with Stack(tmp_path, scrape_interval="1s", evaluation_interval="1s") as stack:
        prometheus = stack.prometheus.url
        begin = time.time()
        config = demo.DemoConfig(start=begin - 620, duration=600, deploy_at=300, rate=15)
        events = [{k: v for k, v in e.items() if k != "demo_cause"} for e in demo.generate(config)]

        def scraped() -> float:
            found = stack.prometheus.query('precondition_collector_events_total{result="accepted"}')
            return sum(float(s["value"][1]) for s in found)

        feed(stack.collector.url, events, chunks=4, scraped=scraped)
        # The flush's counts reach Prometheus with the next scrapes: wait until every failure
        # series of the collector has been scraped for a few seconds, so rates exist for it.
        exported = httpx.get(f"{stack.collector.url}/metrics").text
        count = len(re.findall(r"^precondition_failures_total\{", exported, flags=re.MULTILINE))

        def all_scraped() -> bool:
            found = stack.prometheus.query("count(precondition_failures_total offset 3s)")
            return bool(found) and found[0]["value"][1] == str(count)

        wait_for(all_scraped, timeout=20, what=f"{count} failure series scraped")
        wait_for(
            lambda: stack.prometheus.query("precondition_deploy_regression == 1"),
            timeout=20,
            what="the deploy regression in Prometheus",
        )
        wait_for(
            lambda: stack.prometheus.query('ALERTS{alertname=~"PreconditionWatch.*"}'),
            timeout=20,
            what="an alert pending or firing",
        )
        end = time.time()
        missing = []
        with httpx.Client(base_url=prometheus, timeout=30) as http:
            for name, board in boards().items():
                instant = {
                    t["expr"] for p in panels(board) for t in p["targets"] if t.get("instant")
                }
                for where, expr in expressions(board):
                    if where.startswith("variable"):
                        found = bool(label_values(http, as_grafana_sends(expr)))
                    else:
                        at = (end, end) if expr in instant else (begin, end)
                        found = has_values(series(http, as_grafana_sends(expr), *at))
                    if not found:
                        missing.append(f"{name} {where}: {as_grafana_sends(expr)}")
        assert missing == []
