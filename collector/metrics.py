"""Every Prometheus metric of the collector, built in one place against a registry passed in.

Label values from events are untrusted: they are cleaned, truncated and capped, so `/metrics`
always parses and the series count stays bounded whatever services send.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

OTHER = "__other__"
MAX_LABEL_CHARS = 96
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Exemplar label sets are capped at 128 UTF-8 characters, names included.
MAX_EXEMPLAR_VALUE = 100

RACE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STALENESS_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


def clean_label(value: str | None) -> str:
    """A label value that always renders: printable, valid UTF-8, short."""
    if not value:
        return ""
    if len(value) <= MAX_LABEL_CHARS and value.isascii() and value.isprintable():
        return value  # already clean: the common case, checked in C
    text = "".join(ch if ch.isprintable() else "_" for ch in value)
    text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    return text[:MAX_LABEL_CHARS]


def exemplar(request_id: str) -> dict[str, str]:
    """The `request_id` exemplar, cut to fit the OpenMetrics size limit."""
    return {"request_id": clean_label(request_id)[:MAX_EXEMPLAR_VALUE]}


class LabelGuard:
    """Caps distinct `service` values, and per service distinct `route` and `client` values;
    the rest become `__other__`."""

    def __init__(
        self,
        overflow: Counter,
        *,
        max_services: int,
        max_routes_per_service: int,
        max_clients_per_service: int = 50,
    ):
        self._overflow = overflow
        self._max_services = max_services
        self._caps = {"route": max_routes_per_service, "client": max_clients_per_service}
        self._services: set[str] = set()
        self._known: dict[tuple[str, str], set[str]] = {}  # (label, service) -> values
        # Raw value -> label, for accepted values only (so it is as bounded as the caps):
        # key (None, service) for services, (label, service label, value) for the others.
        self._accepted: dict[tuple[str | None, ...], str] = {}
        self._lock = threading.Lock()

    def service(self, value: str) -> str:
        known = self._accepted.get((None, value))
        if known is not None:  # the hot path: a value seen before, no cleaning again
            return known
        name = clean_label(value) or "unknown"
        with self._lock:
            if name in self._services or len(self._services) < self._max_services:
                self._services.add(name)
                self._remember((None, value), name)
                return name
        self._overflow.labels("service").inc()
        return OTHER

    def route(self, service: str, value: str | None) -> str:
        return self._per_service("route", service, value)

    def client(self, service: str, value: str | None) -> str:
        return self._per_service("client", service, value)

    def _per_service(self, label: str, service: str, value: str | None) -> str:
        if not value:
            return ""
        cached = self._accepted.get((label, service, value))
        if cached is not None:
            return cached
        name = clean_label(value)
        with self._lock:
            known = self._known.setdefault((label, service), set())
            if name in known or len(known) < self._caps[label]:
                known.add(name)
                self._remember((label, service, value), name)
                return name
        self._overflow.labels(label).inc()
        return OTHER

    def _remember(self, key: tuple[str | None, ...], name: str) -> None:
        # Many raw values can clean to one label (long values are cut): bound the cache too.
        if len(self._accepted) >= 100_000:
            self._accepted.clear()
        self._accepted[key] = name

    @staticmethod
    def version(value: str) -> str:
        """Versions are few per service and come from deploys; cleaned, not capped."""
        return clean_label(value) or "unknown"

    @staticmethod
    def method(value: str | None) -> str:
        if not value:
            return ""
        upper = value.upper()
        return upper if upper in KNOWN_METHODS else "OTHER"


class Metrics:
    """The collector's metrics. Tests pass a fresh CollectorRegistry and read samples back."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_services: int = 200,
        max_routes_per_service: int = 100,
        max_clients_per_service: int = 50,
    ) -> None:
        self.registry = registry
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client; `_created` series double the output and nobody graphs them
        base = ("service", "route", "method", "status")
        self.requests = Counter(
            "precondition_requests_total",
            "Conditional requests answered by services, the denominator of failure ratios.",
            base,
            registry=registry,
        )
        self.failures = Counter(
            "precondition_failures_total",
            "Precondition failures (412, 428, 409) by decided cause.",
            (*base, "cause"),
            registry=registry,
        )
        self.client_failures = Counter(
            "precondition_client_failures_total",
            "Failures whose fix is the client's, by client: blind retries, no precondition "
            "(428), ETags cached under the wrong resource. Capped per service.",
            ("service", "client", "cause"),
            registry=registry,
        )
        self.race_seconds = Histogram(
            "precondition_race_seconds",
            "Time between the winning write and the failure it caused (concurrent_write).",
            ("service",),
            buckets=RACE_BUCKETS,
            registry=registry,
        )
        self.staleness_seconds = Histogram(
            "precondition_etag_staleness_seconds",
            "How long before the failure the If-Match ETag had been superseded.",
            ("service",),
            buckets=STALENESS_BUCKETS,
            registry=registry,
        )
        self.rewrites = Counter(
            "precondition_etag_rewrites_total",
            "ETags rewritten by an intermediary, by kind of rewrite.",
            ("service", "kind"),
            registry=registry,
        )
        self.deploy_info = Gauge(
            "precondition_deploy_info",
            "Deployed versions per service; 1 for the current one.",
            ("service", "version"),
            registry=registry,
        )
        self.deploy_timestamp = Gauge(
            "precondition_deploy_timestamp_seconds",
            "Event time of the latest deploy of the service.",
            ("service",),
            registry=registry,
        )
        self.etag_format = Gauge(
            "precondition_etag_format_info",
            "ETag formats (fingerprints, never values) each of the two latest versions of a "
            "service answered with; 1 while known.",
            ("service", "version", "format"),
            registry=registry,
        )
        self.deploy_regression = Gauge(
            "precondition_deploy_regression",
            "1 while the latest deploy's failure ratio is significantly above its baseline.",
            ("service", "version"),
            registry=registry,
        )
        self.events = Counter(
            "precondition_collector_events_total",
            "Events received, by result: accepted, duplicate, rejected.",
            ("result",),
            registry=registry,
        )
        for result in ("accepted", "duplicate", "rejected"):
            self.events.labels(result)
        self.pending = Gauge(
            "precondition_collector_pending",
            "Failures waiting for their service's watermark before being classified.",
            registry=registry,
        )
        self.oldest_pending = Gauge(
            "precondition_collector_oldest_pending_seconds",
            "Event-time seconds between the oldest failure not yet settled and its service's "
            "newest event, the largest over services: how far settling lags the watermark.",
            registry=registry,
        )
        self.processes = Gauge(
            "precondition_collector_processes",
            "Live child processes of the collector by role (ingest, settle).",
            ("role",),
            registry=registry,
        )
        self.redis_up = Gauge(
            "precondition_collector_redis_up",
            "1 when the last Redis call succeeded.",
            registry=registry,
        )
        self.ingest_seconds = Histogram(
            "precondition_collector_ingest_seconds",
            "One ingest batch, from receive to stored.",
            buckets=INGEST_BUCKETS,
            registry=registry,
        )
        self.redis_seconds = Histogram(
            "precondition_collector_redis_seconds",
            "Latency of the collector's Redis operations.",
            ("operation",),
            buckets=REDIS_BUCKETS,
            registry=registry,
        )
        self.redis_errors = Counter(
            "precondition_collector_redis_errors_total",
            "Redis operations that failed.",
            ("operation",),
            registry=registry,
        )
        self.label_overflow = Counter(
            "precondition_collector_label_overflow_total",
            "Label values folded into __other__ because a cap was reached.",
            ("label",),
            registry=registry,
        )
        for label in ("service", "route", "client"):
            self.label_overflow.labels(label)
        self.labels = LabelGuard(
            self.label_overflow,
            max_services=max_services,
            max_routes_per_service=max_routes_per_service,
            max_clients_per_service=max_clients_per_service,
        )
