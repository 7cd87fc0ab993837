"""Overview: is each service within its objective, and why do its conditional writes fail?"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from dashboards.panels import (
    BUDGET,
    ROUTE,
    SERVICE,
    cause_overrides,
    dashboard,
    deploy_annotations,
    finish,
    query,
    row,
    service_page,
    table,
    timeseries,
    with_service_variables,
)

UID = "precondition-overview"

REQUESTS = f"precondition_requests_total{{{SERVICE}, {ROUTE}}}"
# Failures that spend the error budget: everything but healthy concurrency control.
BUDGET_FAILURES = f'precondition_failures_total{{{SERVICE}, {ROUTE}, cause!="concurrent_write"}}'
FAILURES = f"precondition_failures_total{{{SERVICE}, {ROUTE}}}"
MISSING = f'precondition_failures_total{{{SERVICE}, {ROUTE}, status="428"}}'


def _ratio(by: str) -> str:
    return (
        f"sum by ({by}) (rate({BUDGET_FAILURES}[$__rate_interval]))"
        f" / sum by ({by}) (rate({REQUESTS}[$__rate_interval]))"
    )


def build() -> dm.Dashboard:
    percent = f"{BUDGET:.0%}" if BUDGET >= 0.01 else f"{BUDGET:.2%}"
    board = with_service_variables(
        dashboard(
            UID,
            "Precondition Watch / Overview",
            "Failure ratio against the objective, burn rate, and why conditional writes fail.",
        )
    )
    board = deploy_annotations(board)
    board = (
        board.with_row(row("Objective"))
        .with_panel(
            timeseries(
                "Failure ratio against the objective",
                "Share of conditional requests that failed for a reason other than a race "
                f"(concurrent_write is healthy concurrency control). The line is the {percent} "
                "error budget of the burn-rate alerts: above it, the service spends budget "
                "faster than it earns it.",
                "percentunit",
                [query(_ratio("service"), "{{service}}")],
                links=[service_page()],
                lines=[(None, "green"), (BUDGET, "red")],
            )
        )
        .with_panel(
            timeseries(
                "Error-budget burn rate",
                "How many times faster than sustainable each service burns its error budget, "
                "over the panel's rate interval. The alerts page at 14.4 (1 h and 5 m agree) "
                "and 6 (6 h and 30 m), and open tickets at 3 (1 d and 2 h) and 1 (3 d and 6 h): "
                "zoom out to their windows to read them as the alerts do.",
                "suffix:×",  # noqa: RUF001 (the multiplication sign: "times the budget")
                [query(f"({_ratio('service')}) / {BUDGET}", "{{service}}")],
                links=[service_page()],
                lines=[(None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red")],
            )
        )
        .with_row(row("Why conditional writes fail"))
        .with_panel(
            cause_overrides(
                timeseries(
                    "Failures by cause",
                    "412, 428 and 409 responses per second by the cause the collector decided, "
                    "stacked. Each cause keeps its colour on every dashboard and page. Exemplar "
                    "marks open the drill-down page of one such request.",
                    "reqps",
                    [
                        query(
                            f"sum by (cause) (rate({FAILURES}[$__rate_interval]))",
                            "{{cause}}",
                            exemplar=True,
                        )
                    ],
                    stacked=True,
                )
            )
        )
        .with_panel(
            timeseries(
                "Failures by route",
                "Failures that spend the error budget (all but concurrent_write) per second, "
                "by service and route template. A route alone at the top is where to look.",
                "reqps",
                [
                    query(
                        f"sum by (service, route) (rate({BUDGET_FAILURES}[$__rate_interval]))",
                        "{{service}} {{route}}",
                        exemplar=True,
                    )
                ],
                links=[service_page()],
            )
        )
        .with_panel(
            timeseries(
                "428 adoption by route",
                "Share of conditional requests that carried a precondition (1 minus the share "
                "answered 428 Precondition Required), by service and route. Below 100%, an "
                "integration writes without read-then-write; the 428s' exemplars and the "
                "request pages name the client, which is never a metric label.",
                "percentunit",
                [
                    query(
                        f"1 - (sum by (service, route) (rate({MISSING}[$__rate_interval]))"
                        f" or 0 * sum by (service, route) (rate({REQUESTS}[$__rate_interval])))"
                        f" / sum by (service, route) (rate({REQUESTS}[$__rate_interval]))",
                        "{{service}} {{route}}",
                    )
                ],
                links=[service_page()],
            ).max(1)
        )
        .with_panel(
            table(
                "Alerts firing or pending",
                "Precondition Watch alerts Prometheus evaluates now, pending ones included; "
                "severity critical pages, warning opens a ticket. Collector alerts carry no "
                "service. Each alert's runbook entry is in docs/runbook.md.",
                "none",
                [
                    query(
                        "sum by (alertname, alertstate, severity, service) "
                        '(ALERTS{alertname=~"PreconditionWatch.*", service=~"$service|"})',
                        instant=True,
                        fmt=pm.PromQueryFormat.TABLE,
                    )
                ],
                hidden=("Time", "Value"),
            )
        )
    )
    return finish(board)
