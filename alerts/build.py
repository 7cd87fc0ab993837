"""The rules that page on-call: recording rules and alerts, built from one source into YAML.

`python -m alerts.build` writes `alerts/rules.yml`, the file Prometheus loads
(`deploy/prometheus.yml`). Edit this module, not the YAML: a test fails when the committed file
differs from what this module builds with its defaults.

Settings, as flags of `python -m alerts.build`:

- `--objective` (default 0.99): the share of conditional requests that must not fail for a
  reason other than a genuine race. The error budget is `1 - objective`; the burn-rate alerts
  page when the budget burns 14.4 times as fast as allowed (1h and 5m agree) or 6 times
  (6h and 30m), and open a ticket at 3 times (1d and 2h) or 1 time (3d and 6h).
- `--job` (default `precondition-watch`): the scrape job of the collector, for `up` and `absent`.
- `--runbook-url` (default `docs/runbook.md`): where the runbook is served; every alert links to
  `<runbook-url>#alert-name-<lowercased alert name>`.

Naming follows the monitoring mixins: recording rules are `level:metric:operations`, alerts are
CamelCase with the `PreconditionWatch` prefix, `severity` is critical (pages), warning (a
ticket) or info (seen on dashboards, notifies nobody).

`build(Options(speed=N))` gives the same rules with every range and `for` divided by N (and
event-time thresholds multiplied by N): an end-to-end test replays event time N times faster
than the wall clock and evaluates exactly these expressions in a real Prometheus. Counts in a
window and ratios do not change under that compression, so no other threshold moves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PREFIX = "PreconditionWatch"
RULES_FILE = Path(__file__).resolve().parent / "rules.yml"
RUNBOOK_URL = "docs/runbook.md"
JOB = "precondition-watch"
OBJECTIVE = 0.99

Rule = dict[str, Any]

# Causes that measure client concurrency, not what a service runs: collector/deploys.py leaves the
# same three out of a deploy's verdict, so naming a regression's cause leaves them out too.
CONCURRENCY_CAUSES = ("concurrent_write", "blind_retry", "create_conflict")
RATIO_WINDOWS = (300, 1800, 3600, 7200, 21600, 86400, 259200)  # every burn-rate window, seconds


@dataclass(frozen=True)
class BurnRate:
    """One multi-window burn-rate alert: both windows must burn `factor` times the budget."""

    long: int
    short: int
    factor: float
    severity: str
    for_seconds: int


# The Google SRE workbook's multi-window, multi-burn-rate table: 2% of a 30-day budget in 1h
# pages, 5% in 6h pages, 10% in 1d and 10% in 3d are tickets.
BURN_RATES = (
    BurnRate(3600, 300, 14.4, "critical", 120),
    BurnRate(21600, 1800, 6, "critical", 900),
    BurnRate(86400, 7200, 3, "warning", 3600),
    BurnRate(259200, 21600, 1, "warning", 10800),
)


@dataclass(frozen=True)
class Options:
    """What the rules are built for; the defaults are the committed `alerts/rules.yml`."""

    objective: float = OBJECTIVE
    job: str = JOB
    runbook_url: str = RUNBOOK_URL
    speed: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.objective < 1:
            raise ValueError(f"objective must be between 0 and 1, got {self.objective}")
        if self.speed <= 0:
            raise ValueError(f"speed must be positive, got {self.speed}")

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 10)  # 1 - 0.99 is 0.010000000000000009 otherwise

    def range(self, seconds: float) -> str:
        """A range or `for` of `seconds` of event time, as the wall clock sees it."""
        return duration(seconds / self.speed)

    def event_seconds(self, seconds: float) -> float:
        """A threshold in seconds of event time, as a compressed replay measures it."""
        return seconds * self.speed


def duration(seconds: float) -> str:
    """A Prometheus duration in its largest exact unit: 300 -> 5m, 259200 -> 3d, 0.5 -> 500ms."""
    millis = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis >= size and millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def _alert(
    o: Options,
    name: str,
    expr: str,
    *,
    for_seconds: float,
    severity: str,
    summary: str,
    description: str,
    labels: dict[str, str] | None = None,
) -> Rule:
    alert = PREFIX + name
    return {
        "alert": alert,
        "expr": expr.strip() + "\n",  # a literal block: PromQL is never folded
        "for": o.range(for_seconds),
        "labels": {"severity": severity, **(labels or {})},
        "annotations": {
            "summary": summary,
            "description": description.strip(),
            "runbook_url": f"{o.runbook_url}#alert-name-{alert.lower()}",
        },
    }


# -- recording rules --------------------------------------------------------------------------


def budget_ratio_name(seconds: int) -> str:
    """The recording rule of the budget-burning failure ratio over a window."""
    return f"service:precondition_budget_failures:ratio_rate{duration(seconds)}"


def cause_ratio_name(seconds: int) -> str:
    return f"service_cause:precondition_failures:ratio_rate{duration(seconds)}"


def recording_rules(o: Options) -> list[Rule]:
    """Per service, the ratio of failures that burn the budget (every cause but a genuine race)
    for each burn-rate window; per service and cause, each cause's share of requests."""
    rules: list[Rule] = []
    for seconds in RATIO_WINDOWS:
        w = o.range(seconds)
        # `or 0 * requests`: a service with no failure at all has ratio 0, not no ratio.
        expr = f"""
(
  sum by (service) (rate(precondition_failures_total{{cause!="concurrent_write"}}[{w}]))
  or
  0 * sum by (service) (rate(precondition_requests_total[{w}]))
)
/
sum by (service) (rate(precondition_requests_total[{w}]))
"""
        rules.append({"record": budget_ratio_name(seconds), "expr": expr.lstrip()})
    for seconds in (900, 21600):
        w = o.range(seconds)
        expr = f"""
sum by (service, cause) (rate(precondition_failures_total[{w}]))
/ on (service) group_left
sum by (service) (rate(precondition_requests_total[{w}]))
"""
        rules.append({"record": cause_ratio_name(seconds), "expr": expr.lstrip()})
    return rules


# -- the symptom: the error budget ------------------------------------------------------------


def burn_rate_alerts(o: Options) -> list[Rule]:
    """Multi-window, multi-burn-rate alerts on the budget-burning failure ratio per service."""
    alerts = []
    for burn in BURN_RATES:
        threshold = f"({burn.factor:g} * {o.budget:g})"
        long, short = duration(burn.long), duration(burn.short)
        expr = f"""
{budget_ratio_name(burn.long)} > {threshold}
and
{budget_ratio_name(burn.short)} > {threshold}
"""
        top_cause = (
            '{{ with printf "topk(1, sum by (cause) (rate(precondition_failures_total'
            '{service=%q, cause!=\\"concurrent_write\\"}['
            + o.range(burn.long)
            + ']))) > 0" $labels.service | query }}{{ with first . }} The largest cause is '
            '{{ label "cause" . }}.{{ end }}{{ end }}'
        )
        description = (
            f"{{{{ $labels.service }}}}: {{{{ $value | humanizePercentage }}}} of conditional "
            f"requests failed over the last {long} for a reason other than a race: the "
            f"{_percent(o.budget)} error budget of the {_percent(o.objective)} objective burns "
            f"at {burn.factor:g}x the sustainable rate (the last {short} agree)." + top_cause
        )
        alerts.append(
            _alert(
                o,
                "ErrorBudgetBurn",
                expr,
                for_seconds=burn.for_seconds,
                severity=burn.severity,
                summary="Conditional writes of a service fail too often for reasons other "
                "than races.",
                description=description,
                labels={"long": long, "short": short},
            )
        )
    return alerts


# -- the causes -------------------------------------------------------------------------------


def _cause_share(o: Options, cause: str, by: str, seconds: int) -> str:
    """A cause's failures as a share of the requests of the same `by` labels."""
    w = o.range(seconds)
    return f"""
sum by ({by}) (rate(precondition_failures_total{{cause="{cause}"}}[{w}]))
/ on ({by})
sum by ({by}) (rate(precondition_requests_total[{w}]))"""


def _cause_count(o: Options, cause: str, by: str, seconds: int) -> str:
    w = o.range(seconds)
    return f'sum by ({by}) (increase(precondition_failures_total{{cause="{cause}"}}[{w}]))'


def _client_alert_expr(o: Options, cause: str, seconds: int, share: float, count: int) -> str:
    """One client's failures of a cause, as a share of all its service's requests (requests
    have no client label), with a floor of failures as for the other causes."""
    w = o.range(seconds)
    failures = f'precondition_client_failures_total{{cause="{cause}"}}'
    return f"""
sum by (service, client) (rate({failures}[{w}]))
/ on (service) group_left
sum by (service) (rate(precondition_requests_total[{w}]))
> {share:g}
and on (service, client)
sum by (service, client) (increase({failures}[{w}])) >= {count}
"""


def _cause_alert_expr(
    o: Options, cause: str, by: str, seconds: int, share: float, count: int
) -> str:
    """At least `share` of the requests, and at least `count` failures, in the window: a floor
    of failures keeps a quiet route's one bad request from paging as a high ratio."""
    return (
        _cause_share(o, cause, by, seconds).strip()
        + f"\n> {share:g}\nand on ({by})\n"
        + _cause_count(o, cause, by, seconds)
        + f" >= {count}"
    )


def deploy_regression_alert(o: Options) -> Rule:
    """The collector's deploy verdict. The description names the cause whose share of requests
    grew most: the last 15m against the 6h before them, or the last 15m alone when those 6h do
    not have it. It is an annotation, not a label: a label that changed as the numbers move
    would resolve the alert and fire a new one."""
    excluded = "|".join(CONCURRENCY_CAUSES)
    recent = cause_ratio_name(900) + '{service=%q, cause!~\\"' + excluded + '\\"}'
    before = cause_ratio_name(21600) + '{service=%q, cause!~\\"' + excluded + '\\"}'
    grown = f"topk(1, ({recent} - {before} offset {o.range(900)}) or {recent}) > 0"
    cause = (
        '{{ with printf "' + grown + '" $labels.service $labels.service $labels.service '
        '| query }}{{ with first . }}; the cause that grew most is {{ label "cause" . }}'
        "{{ end }}{{ end }}"
    )
    return _alert(
        o,
        "DeployRegression",
        "max by (service, version) (precondition_deploy_regression) == 1",
        for_seconds=60,
        severity="critical",
        summary="The latest deploy made precondition failures significantly worse.",
        description="{{ $labels.service }} version {{ $labels.version }} fails conditional "
        "requests significantly more often than before its deploy"
        + cause
        + ". The collector's verdict: GET /v1/services/{{ $labels.service }}.",
    )


def cause_alerts(o: Options) -> list[Rule]:
    """One alert per cause that on-call acts on (DESIGN.md, Causes)."""
    rewrites = o.range(600)
    proxy_expr = f"""
sum by (service, kind) (rate(precondition_etag_rewrites_total[{rewrites}]))
/ on (service) group_left
sum by (service) (rate(precondition_requests_total[{rewrites}]))
> 0.01
and on (service, kind)
sum by (service, kind) (increase(precondition_etag_rewrites_total[{rewrites}])) >= 10
"""
    return [
        deploy_regression_alert(o),
        _alert(
            o,
            "ProxyRewritingETags",
            proxy_expr,
            for_seconds=300,
            severity="critical",
            summary="A proxy or CDN rewrites ETags, so conditional writes through it fail.",
            description="{{ $labels.service }}: {{ $value | humanizePercentage }} of "
            "conditional requests over the last 10m sent an If-Match that an intermediary had "
            "rewritten ({{ $labels.kind }}); they can never match the current ETag.",
            labels={"cause": "proxy_rewrite"},
        ),
        _alert(
            o,
            "UnstableETags",
            _cause_alert_expr(o, "unstable_etag", "service, route", 1800, 0.005, 10),
            for_seconds=900,
            severity="warning",
            summary="A service computes different ETags for the same state of a resource.",
            description="{{ $labels.service }} {{ $labels.route }}: {{ $value | "
            "humanizePercentage }} of conditional requests over the last 30m failed because "
            "the resource's ETag changed with no write in between (replicas disagree).",
            labels={"cause": "unstable_etag"},
        ),
        _alert(
            o,
            "WeakETagsOnWritableRoute",
            _cause_count(o, "weak_etag", "service, route", 3600) + " >= 10",
            for_seconds=900,
            severity="warning",
            summary="A writable route answers with weak ETags, so If-Match can never succeed.",
            description="{{ $labels.service }} {{ $labels.route }}: {{ $value | humanize }} "
            "conditional writes failed in the last 1h because the current ETag is weak (W/); "
            "strong comparison fails every one of them.",
            labels={"cause": "weak_etag"},
        ),
        _alert(
            o,
            "BlindRetryStorm",
            _client_alert_expr(o, "blind_retry", 900, 0.02, 20),
            for_seconds=900,
            severity="warning",
            summary="A client resends the same If-Match after a 412 without refetching.",
            description="{{ $labels.client }} on {{ $labels.service }}: blind retries of "
            "requests that had already failed were {{ $value | humanizePercentage }} of the "
            "service's conditional requests over the last 15m.",
            labels={"cause": "blind_retry"},
        ),
        _alert(
            o,
            "MissingPreconditions",
            _client_alert_expr(o, "missing_precondition", 3600, 0.01, 20),
            for_seconds=1800,
            severity="warning",
            summary="An integration writes without a precondition and gets 428s.",
            description="{{ $labels.client }} writes to {{ $labels.service }} without If-Match: "
            "its 428 Precondition Required answers were {{ $value | humanizePercentage }} of "
            "the service's conditional requests over the last 1h.",
            labels={"cause": "missing_precondition"},
        ),
        _alert(
            o,
            "HotResourceStorm",
            _cause_alert_expr(o, "concurrent_write", "service", 900, 0.2, 100),
            for_seconds=900,
            severity="info",
            summary="Many writers race for the same resources: healthy, but contended.",
            description="{{ $labels.service }}: {{ $value | humanizePercentage }} of "
            "conditional requests over the last 15m lost a race to another write. Concurrency "
            "control works; GET /v1/services/{{ $labels.service }}/hot names the resources.",
            labels={"cause": "concurrent_write"},
        ),
    ]


# -- the collector itself ---------------------------------------------------------------------


def collector_alerts(o: Options) -> list[Rule]:
    """The collector's health: if it is down or behind, nothing above can fire."""
    up = f'up{{job="{o.job}"}}'
    by = "job, instance"
    pending = o.range(900)
    lag = o.event_seconds(120)
    return [
        _alert(
            o,
            "CollectorDown",
            f"{up} == 0",
            for_seconds=300,
            severity="critical",
            summary="Prometheus cannot scrape the collector: precondition alerts are blind.",
            description="{{ $labels.instance }} of job {{ $labels.job }} has not answered "
            "/metrics for 5m.",
        ),
        _alert(
            o,
            "CollectorAbsent",
            f"absent({up})",
            for_seconds=900,
            severity="critical",
            summary="No collector is being scraped: precondition alerts are blind.",
            description="Prometheus has no scrape target of job {{ $labels.job }}: the "
            "collector is not discovered, or the job is misnamed.",
        ),
        _alert(
            o,
            "RedisDown",
            f"max by ({by}) (precondition_collector_redis_up) == 0",
            for_seconds=120,
            severity="critical",
            summary="The collector cannot reach Redis: events are refused with 503.",
            description="{{ $labels.instance }}: the collector's last Redis call failed; "
            "ingest answers 503 and shippers buffer or drop events.",
        ),
        _alert(
            o,
            "RedisErrors",
            f"sum by ({by}, operation) "
            f"(increase(precondition_collector_redis_errors_total[{o.range(600)}])) >= 10",
            for_seconds=600,
            severity="warning",
            summary="Redis operations of the collector keep failing.",
            description="{{ $labels.instance }}: {{ $value | humanize }} Redis "
            "{{ $labels.operation }} operations failed in the last 10m.",
        ),
        _alert(
            o,
            "RedisSlow",
            f"histogram_quantile(0.99, sum by ({by}, operation, le) "
            f"(rate(precondition_collector_redis_seconds_bucket[{o.range(300)}]))) > 0.25",
            for_seconds=900,
            severity="warning",
            summary="Redis answers the collector slowly.",
            description="{{ $labels.instance }}: 99% of Redis {{ $labels.operation }} "
            "operations took up to {{ $value | humanizeDuration }} over the last 5m.",
        ),
        _alert(
            o,
            "IngestRejects",
            f"""
sum by ({by}) (rate(precondition_collector_events_total{{result="rejected"}}[{pending}]))
/ on ({by})
sum by ({by}) (rate(precondition_collector_events_total[{pending}]))
> 0.01
and on ({by})
sum by ({by}) (increase(precondition_collector_events_total{{result="rejected"}}[{pending}])) >= 10
""",
            for_seconds=900,
            severity="warning",
            summary="The collector rejects event lines it cannot read.",
            description="{{ $labels.instance }}: {{ $value | humanizePercentage }} of event "
            "lines over the last 15m were rejected; a shipper sends a field the collector "
            "cannot read.",
        ),
        _alert(
            o,
            "PendingBacklogGrowing",
            f"""
max by ({by}) (precondition_collector_pending) > 1000
and on ({by})
max by ({by}) (delta(precondition_collector_pending[{pending}])) > 0
""",
            for_seconds=900,
            severity="warning",
            summary="Failures wait to be classified faster than the collector settles them.",
            description="{{ $labels.instance }}: {{ $value | humanize }} failures are waiting "
            "for their watermark, more than 15m ago.",
        ),
        _alert(
            o,
            "SettlingLagging",
            f"max by ({by}) (precondition_collector_oldest_pending_seconds) > {lag:g}",
            for_seconds=600,
            severity="warning",
            summary="Settling lags the watermark: failures are classified late.",
            description="{{ $labels.instance }}: the oldest failure still pending is "
            "{{ $value | humanizeDuration }} of event time behind its service's newest event.",
        ),
        _alert(
            o,
            "LabelOverflow",
            f"sum by ({by}, label) "
            f"(increase(precondition_collector_label_overflow_total[{o.range(3600)}])) > 0",
            for_seconds=300,
            severity="warning",
            summary="Label values are folded into __other__: a label cap was reached.",
            description="{{ $labels.instance }}: {{ $value | humanize }} {{ $labels.label }} "
            "values became __other__ in the last 1h.",
        ),
        _alert(
            o,
            "CollectorProcessesMissing",
            f"""
max by ({by}, role) (precondition_collector_processes)
< on ({by}, role)
max by ({by}, role) (max_over_time(precondition_collector_processes[{o.range(3600)}]))
""",
            for_seconds=900,
            severity="warning",
            summary="Fewer collector child processes are alive than an hour ago.",
            description="{{ $labels.instance }}: only {{ $value }} {{ $labels.role }} "
            "processes are alive.",
        ),
    ]


def build(o: Options | None = None) -> dict[str, Any]:
    """Every rule group, as the YAML document Prometheus loads."""
    o = o or Options()
    return {
        "groups": [
            {"name": "precondition-watch.rules", "rules": recording_rules(o)},
            {"name": "precondition-watch.slo", "rules": burn_rate_alerts(o)},
            {"name": "precondition-watch.causes", "rules": cause_alerts(o)},
            {"name": "precondition-watch.collector", "rules": collector_alerts(o)},
        ]
    }


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line strings, and indented lists, as people write rule files."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Long one-line strings (descriptions) fold at the line width instead of running on.
    style = "|" if "\n" in value else (">" if len(value) > 80 else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render(o: Options | None = None) -> str:
    """The rule file's text, with a header that says how it was made."""
    o = o or Options()
    header = (
        "# Generated by `python -m alerts.build`: edit alerts/build.py, not this file.\n"
        f"# Objective: {_percent(o.objective)} of conditional requests do not fail for a reason "
        "other than a race.\n"
    )
    body = yaml.dump(build(o), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alerts.build", description="Write the Prometheus rules of the collector."
    )
    parser.add_argument(
        "--objective",
        type=float,
        default=OBJECTIVE,
        help="share of conditional requests that must not fail for a reason other than a race",
    )
    parser.add_argument("--job", default=JOB, help="the collector's scrape job")
    parser.add_argument("--runbook-url", default=RUNBOOK_URL, help="where runbook.md is served")
    parser.add_argument("--output", default=str(RULES_FILE), help="file to write, - for stdout")
    args = parser.parse_args(argv)
    try:
        options = Options(objective=args.objective, job=args.job, runbook_url=args.runbook_url)
    except ValueError as exc:
        parser.error(str(exc))
    text = render(options)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
