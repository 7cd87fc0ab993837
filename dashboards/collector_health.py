"""Collector: is the collector keeping up with ingest, settling and Redis?"""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dm

from dashboards.panels import (
    INSTANCE,
    dashboard,
    finish,
    label_variable,
    query,
    row,
    timeseries,
)

UID = "precondition-collector"


def _quantile(q: float, metric: str, by: str = "") -> str:
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"(rate({metric}_bucket{{{INSTANCE}}}[$__rate_interval])))"
    )


def build() -> dm.Dashboard:
    board = dashboard(
        UID,
        "Precondition Watch / Collector",
        "Ingest rate and rejects, batch latency, the settling backlog, Redis, label caps and "
        "the collector's processes.",
    ).with_variable(
        label_variable(
            "instance",
            "Instance",
            "label_values(precondition_collector_events_total, instance)",
            "Collector replicas Prometheus scrapes.",
        )
    )
    events = f"precondition_collector_events_total{{{INSTANCE}}}"
    rejected = f'precondition_collector_events_total{{{INSTANCE}, result="rejected"}}'
    redis_calls = f"precondition_collector_redis_seconds_count{{{INSTANCE}}}"
    board = (
        board.with_row(row("Ingest"))
        .with_panel(
            timeseries(
                "Events by result",
                "Events received per second: accepted (stored), duplicate (already stored, a "
                "shipper's retry) and rejected (a line that is not an event; the answer names "
                "the field).",
                "cps",
                [query(f"sum by (result) (rate({events}[$__rate_interval]))", "{{result}}")],
                stacked=True,
            )
        )
        .with_panel(
            timeseries(
                "Rejected share",
                "Share of received events rejected. A shipper sending a new log format shows "
                "here first; the collector's log names the field of each rejected line.",
                "percentunit",
                [
                    query(
                        f"sum(rate({rejected}[$__rate_interval]))"
                        f" / sum(rate({events}[$__rate_interval]))",
                        "rejected",
                    )
                ],
                lines=[(None, "green"), (0.01, "red")],
            )
        )
        .with_panel(
            timeseries(
                "Batch latency",
                "One ingest batch from receive to stored, p50 and p99 over replicas. A 200 is "
                "only sent once the batch is in Redis, so this is what shippers wait for.",
                "s",
                [
                    query(_quantile(0.5, "precondition_collector_ingest_seconds"), "p50"),
                    query(_quantile(0.99, "precondition_collector_ingest_seconds"), "p99"),
                ],
            )
        )
        .with_panel(
            timeseries(
                "Pending backlog and settling lag",
                "Failures stored but not classified yet (left axis), and how far in event "
                "time the oldest of them lags its service's newest event (right axis, "
                "seconds). Both drain once a burst ends, or at once with POST /v1/flush.",
                "short",
                [
                    query(
                        f"max by (instance) (precondition_collector_pending{{{INSTANCE}}})",
                        "pending {{instance}}",
                    ),
                    query(
                        "max by (instance) "
                        f"(precondition_collector_oldest_pending_seconds{{{INSTANCE}}})",
                        "lag {{instance}}",
                    ),
                ],
            ).override_by_regexp(
                "^lag .*",
                [
                    dm.DynamicConfigValue(id_val="unit", value="s"),
                    dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                ],
            )
        )
        .with_row(row("Redis"))
        .with_panel(
            timeseries(
                "Redis latency by operation",
                "p99 of each kind of Redis call the collector makes. Settling scripts hold "
                "Redis while they run; ingest waits behind them.",
                "s",
                [
                    query(
                        _quantile(0.99, "precondition_collector_redis_seconds", "operation"),
                        "{{operation}}",
                    )
                ],
            )
        )
        .with_panel(
            timeseries(
                "Redis errors by operation",
                "Failed Redis calls per second. Ingest answers 503 with Retry-After while "
                "Redis fails, so shippers retry and nothing is lost; 0 per operation when "
                "all is well.",
                "cps",
                [
                    query(
                        "sum by (operation) (rate(precondition_collector_redis_errors_total"
                        f"{{{INSTANCE}}}[$__rate_interval]))"
                        f" or 0 * sum by (operation) (rate({redis_calls}[$__rate_interval]))",
                        "{{operation}}",
                    )
                ],
            )
        )
        .with_row(row("Limits and processes"))
        .with_panel(
            timeseries(
                "Label overflow",
                "Label values folded into __other__ per second because PW_MAX_SERVICES or "
                "PW_MAX_ROUTES_PER_SERVICE was reached. Anything above 0 hides a service or "
                "route: raise the cap or fix the sender's route templating.",
                "cps",
                [
                    query(
                        "sum by (label) (rate(precondition_collector_label_overflow_total"
                        f"{{{INSTANCE}}}[$__rate_interval]))",
                        "{{label}}",
                    )
                ],
            )
        )
        .with_panel(
            timeseries(
                "Processes up",
                "Whether Prometheus scrapes each replica (up), whether its Redis answers, and "
                "its live ingest and settle processes (with PW_REDIS_URL: PW_INGEST_PROCESSES "
                "ingest, 1 settle when PW_SETTLE_PROCESS).",
                "short",
                [
                    query(f"up{{{INSTANCE}}}", "scraped {{instance}}"),
                    query(
                        f"max by (instance) (precondition_collector_redis_up{{{INSTANCE}}})",
                        "redis up {{instance}}",
                    ),
                    query(
                        f"sum by (instance, role) (precondition_collector_processes{{{INSTANCE}}})",
                        "{{role}} {{instance}}",
                    ),
                ],
            )
        )
    )
    return finish(board)
