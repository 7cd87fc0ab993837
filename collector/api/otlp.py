"""`POST /v1/logs`: OTLP/HTTP logs, protobuf or JSON, gzip either way; OTLP's replies.

Answers in the request's encoding: 200 with an ExportLogsServiceResponse (its `partial_success`
counts and names the rejected records), or a google.rpc.Status with 400, 413 or 415 (not
retryable) or 503 with `Retry-After` (retryable, as 429, 502 and 504 are to an OTLP exporter).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from collector import otlp, wire
from collector.api import openapi
from collector.api.deps import CollectorDep, IngestAuth
from collector.api.ingest import default_service, log_batch, read_body
from collector.payload import PayloadError, decompress
from collector.store import StoreUnavailableError

router = APIRouter(tags=["ingest"])


@router.post("/v1/logs", dependencies=[IngestAuth], openapi_extra=openapi.otlp_body())
async def post_logs(
    request: Request,
    collector: CollectorDep,
    service: str | None = Query(default=None, max_length=128),
) -> Response:
    """Store an OTLP logs export; a record that is not an event is rejected alone."""
    started = time.perf_counter()
    content_type = request.headers.get("content-type")
    protobuf = otlp.is_protobuf(content_type)
    media = otlp.PROTOBUF if protobuf else otlp.JSON
    limit = collector.settings.max_body_bytes
    try:
        raw = await read_body(request, limit)
        body = decompress(raw, request.headers.get("content-encoding"), limit)
        records, result = await collector.ingest(
            body, content_type, default_service(request, service), wire.OTLP
        )
    except PayloadError as exc:
        status = otlp.encode_status(exc.status, exc.message, protobuf=protobuf)
        return Response(status, status_code=exc.status, media_type=media)
    except StoreUnavailableError as exc:
        # The app's handler counts and logs it and says when to retry; OTLP wants a Status body.
        answer = await request.app.exception_handlers[StoreUnavailableError](request, exc)
        message = "Redis is unavailable; nothing was stored, retry later"
        return Response(
            otlp.encode_status(503, message, protobuf=protobuf),
            status_code=503,
            media_type=media,
            headers={"Retry-After": answer.headers["retry-after"]},
        )
    log_batch(wire.OTLP, records, result, len(body), started)
    return Response(otlp.encode_reply(result.rejected, protobuf=protobuf), media_type=media)
