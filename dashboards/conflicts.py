"""Conflicts: how races and stale ETags are distributed, who retries, and where they pile up."""

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
    heatmap,
    query,
    row,
    service_page,
    table,
    table_service_page,
    timeseries,
    with_service_variables,
)

UID = "precondition-conflicts"

CONFLICTS = f'precondition_failures_total{{{SERVICE}, {ROUTE}, status=~"409|412"}}'


def _buckets(metric: str) -> str:
    return f"sum by (le) (rate({metric}_bucket{{{SERVICE}}}[$__rate_interval]))"


def build() -> dm.Dashboard:
    board = with_service_variables(
        dashboard(
            UID,
            "Precondition Watch / Conflicts",
            "Race times and ETag staleness, blind retries, proxy rewrites and hot resources.",
        )
    )
    board = deploy_annotations(board)
    board = (
        board.with_row(row("How old was the If-Match?"))
        .with_panel(
            heatmap(
                "Race time",
                "Seconds between the write that won and the 412 that lost to it "
                "(concurrent_write). Races within a second are contention on hot resources; "
                "races of minutes are users editing for long. Exemplars open the request.",
                "s",
                query(
                    _buckets("precondition_race_seconds"),
                    "{{le}}",
                    exemplar=True,
                    fmt=pm.PromQueryFormat.HEATMAP,
                ),
            )
        )
        .with_panel(
            heatmap(
                "ETag staleness",
                "How long before the failure its If-Match had been superseded, for races and "
                "stale ETags. A band at hours or days is stale tabs and caches that never "
                "refetch.",
                "s",
                query(
                    _buckets("precondition_etag_staleness_seconds"),
                    "{{le}}",
                    fmt=pm.PromQueryFormat.HEATMAP,
                ),
            )
        )
        .with_row(row("Who and where"))
        .with_panel(
            cause_overrides(
                timeseries(
                    "Conflicts by cause",
                    "412 and 409 responses per second by cause, stacked. Exemplar marks open "
                    "the drill-down page of one request: the competing write, the ages, the "
                    "client.",
                    "reqps",
                    [
                        query(
                            f"sum by (cause) (rate({CONFLICTS}[$__rate_interval]))",
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
                "Blind retries by route",
                "412s that repeat an If-Match the same client had already been refused for, "
                "without refetching. Clients are not metric labels: the exemplars and the "
                "request pages name the client and count its retries.",
                "reqps",
                [
                    query(
                        "sum by (service, route) (rate(precondition_failures_total"
                        f'{{{SERVICE}, {ROUTE}, cause="blind_retry"}}[$__rate_interval]))',
                        "{{service}} {{route}}",
                        exemplar=True,
                    )
                ],
                links=[service_page()],
            )
        )
        .with_panel(
            timeseries(
                "ETag rewrites by kind",
                "If-Match values an intermediary had rewritten (W/ added, -gzip or -br "
                "appended, quotes stripped), per second by service and kind: the proxy or CDN "
                "in front of that service needs fixing.",
                "reqps",
                [
                    query(
                        "sum by (service, kind) (rate(precondition_etag_rewrites_total"
                        f"{{{SERVICE}}}[$__rate_interval]))",
                        "{{service}} {{kind}}",
                    )
                ],
                links=[service_page()],
            )
        )
        .with_panel(
            table(
                "Hot resources",
                "Conflicts (412 and 409) of each service over the dashboard's time range. "
                "Resource ids are never metric labels: open a row for the service's most "
                "contended resources in the collector, each with its timeline.",
                "none",
                [
                    query(
                        f"sum by (service) (increase({CONFLICTS}[$__range]))",
                        instant=True,
                        fmt=pm.PromQueryFormat.TABLE,
                    )
                ],
                links=[table_service_page("#hot")],
            )
        )
    )
    return finish(board)
