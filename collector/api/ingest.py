"""Ingest endpoints: `POST /v1/events` (NDJSON, JSON array or one object; gzip)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from collector import wire
from collector.api import openapi
from collector.api.deps import CollectorDep, IngestAuth
from collector.ingest import BatchResult
from collector.logs import get_logger
from collector.payload import PayloadError, decompress

router = APIRouter(tags=["ingest"])
log = get_logger("collector.ingest")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing to buffer more than `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadError(413, f"body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadError(413, f"body exceeds {limit} bytes")
    return bytes(body)


def default_service(request: Request, service: str | None) -> str | None:
    """The service of events that name none: `?service=`, else the `X-Service-Name` header."""
    return service or request.headers.get("x-service-name") or None


def log_batch(
    wire: str, records: int, result: BatchResult, body_bytes: int, started: float
) -> None:
    """The one log line per ingested batch: counts and duration, never the body."""
    log.info(
        "batch",
        format=wire,
        records=records,
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=len(result.rejected),
        bytes=body_bytes,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.post("/v1/events", dependencies=[IngestAuth], openapi_extra=openapi.events_body())
async def post_events(
    request: Request,
    collector: CollectorDep,
    service: str | None = Query(default=None, max_length=128),
) -> JSONResponse:
    """Store a batch of events; one bad line never rejects the batch."""
    started = time.perf_counter()
    limit = collector.settings.max_body_bytes
    raw = await read_body(request, limit)
    body = decompress(raw, request.headers.get("content-encoding"), limit)
    records, result = await collector.ingest(
        body, request.headers.get("content-type"), default_service(request, service)
    )
    log_batch(wire.EVENTS, records, result, len(body), started)
    return JSONResponse(result.body())
