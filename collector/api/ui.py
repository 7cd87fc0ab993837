"""Drill-down pages for on-call: a service, one request's decision, a resource's timeline.

Server-rendered HTML (Jinja2 templates beside this module, no JavaScript): Grafana's data links
and exemplar links open these pages. They read only what the query API reads (the store's
timeline, request, hot, versions, formats and minute counts, and the deploy tracker), and turn
it into words: the cause, what on-call does, and the evidence. The page models are built by
pure functions, tested without a server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from collector.api.causes import CAUSES, REWRITES, WRITE_COLOUR, CauseText, describe_cause
from collector.api.deps import CollectorDep, RequestId, ServiceName, StoredResourceId
from collector.deploys import WATCH_SECONDS, Deploy
from collector.event import FAILURE_STATUSES

router = APIRouter(tags=["ui"], include_in_schema=False)

Timeline = Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]

STRIP_WIDTH = 960
HOT_LIMIT = 10


# -- formatting -------------------------------------------------------------------------------


def format_time(ts: float | None) -> str:
    """An event time as on-call reads it: UTC, to the millisecond."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_clock(ts: float | None) -> str:
    """An event time in a table row: the day and the time to the millisecond, UTC."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S.%f")[:-3]


def format_duration(seconds: float | None) -> str:
    """A span of seconds in the unit that reads best: 250 ms, 4.2 s, 6 min, 3.5 h."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    value = abs(seconds)
    if value < 1:
        text = f"{value * 1000:.0f} ms"
    elif value < 120:
        text = f"{value:.1f} s"
    elif value < 7200:
        text = f"{value / 60:.0f} min"
    else:
        text = f"{value / 3600:.1f} h"
    return ("-" if seconds < 0 else "") + text


def ink(colour: str) -> str:
    """Black or white, whichever reads better on a `#RRGGBB` background."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else "#FFFFFF"


def service_href(service: str) -> str:
    return f"/ui/services/{quote(service, safe='')}"


def request_href(service: str, request_id: str) -> str:
    return f"{service_href(service)}/requests/{quote(request_id, safe='')}"


def resource_href(service: str, resource_id: str, request_id: str | None = None) -> str:
    href = f"{service_href(service)}/resources/{quote(resource_id, safe='')}"
    return href if request_id is None else f"{href}#{event_anchor(request_id)}"


def event_anchor(request_id: str) -> str:
    """The id of a timeline row: HTML ids may hold anything but spaces."""
    return "e-" + quote(request_id, safe="")


templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
templates.env.filters["when"] = format_time
templates.env.filters["duration"] = format_duration
templates.env.filters["ink"] = ink
templates.env.globals["service_href"] = service_href


# -- a request's evidence ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a key/value table; `href` makes the value a link."""

    label: str
    value: str
    href: str | None = None


def evidence_rows(service: str, resource_id: str, evidence: Mapping[str, Any] | None) -> list[Row]:
    """The decision's evidence in words, one row per fact; unknown facts are shown as they are."""
    if not evidence:
        return []
    rows: list[Row] = []
    rest = dict(evidence)

    def take(key: str) -> Any:
        return rest.pop(key, None)

    if "winner" in rest:
        winner = take("winner")
        if isinstance(winner, Mapping) and winner.get("request_id"):
            rid = str(winner["request_id"])
            client = winner.get("client_id") or "an unnamed client"
            value = f"{rid} by {client} at {format_time(_number(winner.get('ts')))}"
            rows.append(Row("Competing write", value, resource_href(service, resource_id, rid)))
        else:
            rows.append(Row("Competing write", "not logged: the write that won was not sent here"))
    race = take("race_seconds")
    if race is not None:
        text = f"lost by {format_duration(_number(race))}: the winning write came that long before"
        rows.append(Row("Race", text))
    superseded = take("superseded_seconds_ago")
    by = take("superseded_by")
    if take("unknown_etag"):
        rows.append(Row("If-Match", "an ETag of the current format that this resource never had"))
    elif superseded is not None and race is None:  # a race's age is the race, shown above
        text = f"superseded {format_duration(_number(superseded))} before this request"
        if by:
            text += f", by write {by}"
        href = resource_href(service, resource_id, str(by)) if by else None
        rows.append(Row("If-Match age", text, href))
    kinds = take("rewrite")
    if kinds:
        text = "; ".join(REWRITES.get(str(k), str(k)) for k in kinds)
        rows.append(Row("Rewrite", text))
    for key, label in (("if_match", "If-Match received"), ("current_etag", "Current ETag")):
        value = take(key)
        if value:
            rows.append(Row(label, str(value)))
    old, new = take("if_match_format"), take("current_format")
    before, after = take("previous_version"), take("current_version")
    if old or new:
        rows.append(Row("If-Match format", f"{old} (as version {before or '?'} made them)"))
        rows.append(Row("Current format", f"{new} (as version {after or '?'} makes them)"))
    if take("same_shape"):
        text = "the same shape, other values: the new version computes its ETags from other "
        text += "inputs (a hash salt, a serialiser, the field order)"
        rows.append(Row("Formats", text))
    seen = take("if_match_seen")
    if seen:
        text = f"current as of {seen}, under version {before or '?'}"
        rows.append(Row("If-Match seen", text, resource_href(service, resource_id, str(seen))))
    values = take("values")
    if values:
        rows.append(Row("ETag values", ", then ".join(str(v) for v in values)))
    flips = take("flips")
    if flips:
        text = f"{flips} changes of the current ETag with no write in between"
        rows.append(Row("Flips", text))
    if "retry_count" in rest:
        count = take("retry_count")
        rows.append(Row("Retries", f"{count} earlier 412s for the same If-Match from this client"))
    first = take("first_failure")
    first_ago = take("first_failure_seconds_ago")
    if first:
        text = f"{first}, {format_duration(_number(first_ago))} before"
        rows.append(Row("First failure", text, request_href(service, str(first))))
    other = take("other_resource")
    if other:
        rows.append(Row("Other resource", str(other), resource_href(service, str(other))))
    reason = take("reason")
    if reason:
        rows.append(Row("Reason logged", str(reason)))
    flags = {
        "malformed_if_match": "the If-Match header could not be parsed",
        "if_match_equals_current": "If-Match equals the current ETag, yet the service failed it",
        "no_precondition_logged": "no If-Match or If-None-Match was logged",
    }
    for key, text in flags.items():
        if take(key):
            rows.append(Row("Note", text))
    for key, value in sorted(rest.items()):
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append(Row(key.replace("_", " ").capitalize(), shown))
    return rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def request_rows(service: str, resource_id: str, record: Mapping[str, Any]) -> list[Row]:
    """The request as the service logged it (canonical fields only, never a body)."""
    rows = [
        Row("Service", service, service_href(service)),
        Row("Resource", resource_id, resource_href(service, resource_id)),
        Row("Time", format_time(_number(record.get("ts")))),
        Row("Status", str(record.get("status", "-"))),
    ]
    for key, label in (
        ("method", "Method"),
        ("route", "Route"),
        ("if_match", "If-Match"),
        ("if_none_match", "If-None-Match"),
        ("current_etag", "Current ETag"),
        ("client_id", "Client"),
        ("deploy_version", "Version"),
        ("reason", "Reason"),
    ):
        if record.get(key) is not None:
            rows.append(Row(label, str(record[key])))
    return rows


# -- a resource's timeline as a strip ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """One event on the strip: a write (a tick) or a failure (a dot coloured by cause)."""

    x: float
    kind: Literal["write", "failure", "other"]
    request_id: str
    colour: str
    tooltip: str
    href: str
    cause: str | None
    selected: bool = False


@dataclass(frozen=True, slots=True)
class Strip:
    """The SVG strip of a timeline: marks placed on a time axis."""

    width: int
    height: int
    marks: list[Mark]
    ticks: list[tuple[float, str]]
    start: float
    end: float
    legend: list[tuple[str, CauseText]] = field(default_factory=list)


def event_kind(status: int) -> Literal["write", "failure", "other"]:
    if status in FAILURE_STATUSES:
        return "failure"
    return "write" if 200 <= status < 300 else "other"


def draw_strip(
    service: str,
    resource_id: str,
    timeline: Timeline,
    *,
    width: int = STRIP_WIDTH,
    selected: str | None = None,
) -> Strip:
    """Place a timeline's events on a strip `width` wide, oldest at the left.

    Writes sit on the upper lane, failures on the lower one, coloured by cause (hollow while
    pending). One event alone, or all at one instant, is drawn in the middle.
    """
    margin = 16.0
    times = [float(record.get("ts", 0.0)) for _, record, _ in timeline]
    start, end = (min(times), max(times)) if times else (0.0, 0.0)
    span = end - start
    inner = width - 2 * margin

    def x_of(ts: float) -> float:
        return round(margin + (inner * (ts - start) / span if span > 0 else inner / 2), 1)

    marks = []
    causes: dict[str, CauseText] = {}
    for (request_id, record, decision), ts in zip(timeline, times, strict=True):
        kind = event_kind(int(record.get("status", 0)))
        cause = None if decision is None else str(decision.get("cause"))
        status = record.get("status")
        if kind == "failure":
            text = describe_cause(cause)
            if cause is not None:
                causes[cause] = text
            colour = text.colour
            tooltip = f"{status} {request_id} at {format_time(ts)}: {text.title}"
            href = request_href(service, request_id)
        else:
            colour = WRITE_COLOUR
            etag = record.get("current_etag") or ""
            tooltip = f"{status} {request_id} at {format_time(ts)} {etag}".rstrip()
            href = resource_href(service, resource_id, request_id)
        marks.append(
            Mark(x_of(ts), kind, request_id, colour, tooltip, href, cause, request_id == selected)
        )
    ticks = []
    if span > 0:
        for i in range(5):
            ts = start + span * i / 4
            ticks.append((x_of(ts), _clock(ts, span)))
    elif times:
        ticks.append((x_of(start), _clock(start, 0.0)))
    legend = [(cause, text) for cause, text in CAUSES.items() if cause in causes]
    legend += [(c, t) for c, t in causes.items() if c not in CAUSES]
    return Strip(width, 96, marks, ticks, start, end, legend)


def _clock(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%H:%M:%S.%f")[:-3] if span < 10 else moment.strftime("%H:%M:%S")


# -- a service --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CauseShare:
    """A cause's failures in the window, as a share of failures and of conditional requests."""

    cause: str
    count: int
    of_failures: float
    of_requests: float | None
    text: CauseText


def cause_shares(minutes: Mapping[int, Mapping[str, int]]) -> tuple[int, list[CauseShare]]:
    """Conditional requests, and failures by cause most first, from per-minute counts."""
    requests = 0
    counts: dict[str, int] = {}
    for bucket in minutes.values():
        for key, n in bucket.items():
            if key == "req":
                requests += int(n)
            elif key.startswith("c:"):
                counts[key[2:]] = counts.get(key[2:], 0) + int(n)
    failures = sum(counts.values())
    shares = [
        CauseShare(
            cause,
            n,
            n / failures,
            n / requests if requests else None,
            describe_cause(cause),
        )
        for cause, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]
    return requests, shares


@dataclass(frozen=True, slots=True)
class DeployRow:
    """A deploy as the service page lists it, with its verdict in words."""

    version: str
    ts: float
    source: str
    formats: tuple[str, ...]
    verdict: str
    regressed: bool
    cause: str | None


def deploy_rows(deploys: Sequence[Deploy], newest: float | None) -> list[DeployRow]:
    """Newest deploy first; each with its regression verdict, or where its judging stands."""
    rows = []
    for index, deploy in enumerate(deploys):
        regression = deploy.regression
        cause = None
        if regression is not None:
            cause = str(regression.get("cause"))
            before = _number(regression.get("baseline_ratio")) or 0.0
            after = _number(regression.get("ratio")) or 0.0
            detected = format_time(_number(regression.get("detected_at")))
            verdict = (
                f"regression: {describe_cause(cause).title}, failure ratio {before:.2%} before, "
                f"{after:.2%} after (detected {detected})"
            )
        elif index == 0:
            verdict = "first version seen: nothing to compare with"
        elif index < len(deploys) - 1:
            verdict = "no regression"
        elif newest is not None and newest - deploy.ts <= WATCH_SECONDS:
            verdict = f"being judged until {format_time(deploy.ts + WATCH_SECONDS)}: none so far"
        else:
            verdict = "no regression"
        rows.append(
            DeployRow(
                deploy.version,
                deploy.ts,
                deploy.source,
                deploy.formats,
                verdict,
                regression is not None,
                cause,
            )
        )
    rows.reverse()
    return rows


# -- routes -----------------------------------------------------------------------------------


def _not_found(request: Request, message: str) -> Response:
    return templates.TemplateResponse(
        request, "not_found.html", {"title": "Not found", "message": message}, status_code=404
    )


@router.get("/ui")
async def ui_home() -> Response:
    """The pages start at the list of services."""
    return RedirectResponse("/ui/services")


@router.get("/ui/services", response_class=HTMLResponse)
async def ui_services(request: Request, collector: CollectorDep) -> Response:
    """Every service seen within the retention, most recently active first."""
    services = await collector.store.services()
    items = [(service, service_href(service)) for service in services]
    return templates.TemplateResponse(
        request, "services.html", {"title": "Services", "services": items}
    )


@router.get("/ui/services/{service}", response_class=HTMLResponse)
async def ui_service(
    request: Request,
    service: ServiceName,
    collector: CollectorDep,
    window: Annotated[float, Query(gt=0, le=86400, description="seconds of event time")] = 3600,
) -> Response:
    """A service: its deploys and verdicts, its top causes and its hot resources."""
    store = collector.store
    newest = await store.watermark(service)
    deploys = await collector.deploys.deploys(service)
    if newest is None and not deploys:
        return _not_found(request, f"Service {service!r} is not known (or past the retention).")
    requests, shares, hot = 0, list[CauseShare](), list[tuple[str, int, str]]()
    if newest is not None:
        since = newest - window
        minutes = await store.minute_counts(service, int(since // 60), int(newest // 60))
        requests, shares = cause_shares(minutes)
        found = await store.hot(service, since=since, until=newest, limit=HOT_LIMIT)
        hot = [(r, int(n), resource_href(service, r)) for r, n in found]
    context = {
        "title": service,
        "service": service,
        "newest": newest,
        "window": window,
        "requests": requests,
        "failures": sum(s.count for s in shares),
        "shares": shares,
        "hot": hot,
        "deploys": deploy_rows(deploys, newest),
    }
    return templates.TemplateResponse(request, "service.html", context)


@router.get("/ui/services/{service}/requests/{request_id}", response_class=HTMLResponse)
async def ui_request(
    request: Request, service: ServiceName, request_id: RequestId, collector: CollectorDep
) -> Response:
    """One failure: its cause in words, what on-call does, and the evidence."""
    store = collector.store
    resource_id = await store.find_request(service, request_id)
    record, decision = (
        await store.request(service, resource_id, request_id)
        if resource_id is not None
        else (None, None)
    )
    if record is None or resource_id is None:
        return _not_found(
            request,
            f"No failure {request_id!r} of service {service!r} is retained. Only 412, 428 and "
            "409 requests have a decision; successful writes are in their resource's timeline.",
        )
    cause = None if decision is None else str(decision["cause"])
    timeline = await store.timeline(service, resource_id, limit=100)
    context = {
        "title": f"{request_id} · {service}",
        "service": service,
        "resource_id": resource_id,
        "request_id": request_id,
        "cause": cause,
        "text": describe_cause(cause),
        "facts": request_rows(service, resource_id, record),
        "evidence": evidence_rows(
            service, resource_id, None if decision is None else decision["evidence"]
        ),
        "strip": draw_strip(service, resource_id, timeline, selected=request_id),
        "timeline_href": resource_href(service, resource_id, request_id),
    }
    return templates.TemplateResponse(request, "request.html", context)


@router.get("/ui/services/{service}/resources/{resource_id}", response_class=HTMLResponse)
async def ui_resource(
    request: Request,
    service: ServiceName,
    resource_id: StoredResourceId,
    collector: CollectorDep,
    limit: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> Response:
    """A resource's timeline: a strip of writes and failures over time, then every event."""
    timeline = await collector.store.timeline(service, resource_id, limit=limit)
    if not timeline:
        return _not_found(
            request, f"Resource {resource_id!r} of service {service!r} has no retained events."
        )
    events = []
    for request_id, record, decision in timeline:
        kind = event_kind(int(record.get("status", 0)))
        cause = None if decision is None else str(decision.get("cause"))
        events.append(
            {
                "anchor": event_anchor(request_id),
                "request_id": request_id,
                "href": request_href(service, request_id) if kind == "failure" else None,
                "kind": kind,
                "time": format_clock(_number(record.get("ts"))),
                "record": record,
                "cause": cause,
                "text": describe_cause(cause) if kind == "failure" else None,
            }
        )
    failures = sum(1 for e in events if e["kind"] == "failure")
    context = {
        "title": f"{resource_id} · {service}",
        "service": service,
        "resource_id": resource_id,
        "strip": draw_strip(service, resource_id, timeline),
        "events": events,
        "writes": sum(1 for e in events if e["kind"] == "write"),
        "failures": failures,
        "limit": limit,
    }
    return templates.TemplateResponse(request, "resource.html", context)
