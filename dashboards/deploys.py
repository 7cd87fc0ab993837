"""Deploys: when each service deployed, whether the deploy regressed, and which cause moved."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from dashboards.panels import (
    ROUTE,
    SERVICE,
    cause_overrides,
    dashboard,
    deploy_annotations,
    finish,
    query,
    row,
    service_page,
    state_timeline,
    table,
    table_service_page,
    timeseries,
    with_service_variables,
)

UID = "precondition-deploys"

REQUESTS = f"precondition_requests_total{{{SERVICE}, {ROUTE}}}"
FAILURES = f"precondition_failures_total{{{SERVICE}, {ROUTE}}}"


def build() -> dm.Dashboard:
    board = with_service_variables(
        dashboard(
            UID,
            "Precondition Watch / Deploys",
            "Deploys as annotations, the collector's regression verdicts, and the failure "
            "ratio by cause around each deploy.",
        )
    )
    board = deploy_annotations(board)
    board = (
        board.with_row(row("Verdicts"))
        .with_panel(
            state_timeline(
                "Regression state of the latest deploy",
                "1 while the collector judges the service's latest deploy significantly worse "
                "than the 10 minutes before it (cause by cause, exact binomial test); the "
                "verdict and the cause that moved are on the service's page.",
                "none",
                [
                    query(
                        f"max by (service, version) (precondition_deploy_regression{{{SERVICE}}})",
                        "{{service}} {{version}}",
                    )
                ],
                mappings={"0": ("no regression", "green"), "1": ("regressed", "red")},
                height=6,
            ).data_links([service_page()])
        )
        .with_panel(
            state_timeline(
                "Version running",
                "Which version of each service answered, as the collector learnt it from "
                "deploy markers and the events' deploy_version.",
                "none",
                [
                    query(
                        f"max by (service, version) (precondition_deploy_info{{{SERVICE}}}) == 1",
                        "{{service}} {{version}}",
                    )
                ],
                mappings={"1": ("running", "blue")},
                height=6,
            ).data_links([service_page()])
        )
        .with_row(row("Around each deploy"))
        .with_panel(
            cause_overrides(
                timeseries(
                    "Failure ratio by cause",
                    "Failures of each cause per conditional request, by service: compare the "
                    "line of a cause just before a deploy annotation with just after it. "
                    "format_change, unstable_etag, weak_etag and proxy_rewrite are the causes "
                    "a deploy makes; races and retries are the clients'.",
                    "percentunit",
                    [
                        query(
                            f"sum by (service, cause) (rate({FAILURES}[$__rate_interval]))"
                            " / on (service) group_left"
                            f" sum by (service) (rate({REQUESTS}[$__rate_interval]))",
                            "{{cause}} {{service}}",
                        )
                    ],
                    links=[service_page()],
                    width=24,
                ),
                legend_prefix=True,
            )
        )
        .with_panel(
            timeseries(
                "Failures from ETag format changes",
                "412s whose If-Match has the ETag format of an earlier version while the "
                "current ETag has the new one: a deploy changed how ETags are computed. "
                "Exemplars open one such request with both formats.",
                "reqps",
                [
                    query(
                        "sum by (service) (rate(precondition_failures_total"
                        f'{{{SERVICE}, {ROUTE}, cause="format_change"}}[$__rate_interval]))',
                        "{{service}}",
                        exemplar=True,
                    )
                ],
                links=[service_page()],
            )
        )
        .with_panel(
            table(
                "ETag formats per version",
                "The current version of each service and when it was deployed. The ETag "
                "format fingerprints of every version are on the service's page in the "
                "collector: open it from a row.",
                "dateTimeAsIso",
                [
                    query(
                        f"max by (service, version) (precondition_deploy_info{{{SERVICE}}} == 1)"
                        " * on (service) group_left max by (service)"
                        f" (precondition_deploy_timestamp_seconds{{{SERVICE}}}) * 1000",
                        instant=True,
                        fmt=pm.PromQueryFormat.TABLE,
                    )
                ],
                links=[table_service_page("#deploys")],
            )
        )
    )
    return finish(board)
