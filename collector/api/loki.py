"""`POST /loki/api/v1/push`: the Loki push API, JSON or snappy-compressed protobuf.

Answers as Loki does: 204 when every line was stored (or was a duplicate); 400 when some lines
were not events, with the usual `{"accepted", "duplicates", "rejected"}` body: the other lines
are stored, and Promtail and Alloy drop a batch answered 400 instead of retrying it.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from collector import loki, wire
from collector.api import openapi
from collector.api.deps import CollectorDep, IngestAuth
from collector.api.ingest import default_service, log_batch, read_body
from collector.payload import decompress

router = APIRouter(tags=["ingest"])


@router.post("/loki/api/v1/push", dependencies=[IngestAuth], openapi_extra=openapi.loki_body())
async def push(
    request: Request,
    collector: CollectorDep,
    service: str | None = Query(default=None, max_length=128),
) -> Response:
    """Store a Loki push request; each line is one JSON event."""
    started = time.perf_counter()
    content_type = request.headers.get("content-type")
    encoding = request.headers.get("content-encoding")
    limit = collector.settings.max_body_bytes
    raw = await read_body(request, limit)
    if not loki.is_protobuf(content_type):
        body = decompress(raw, encoding, limit)
    else:
        # Protobuf is always snappy; some clients say so in Content-Encoding (Loki allows it).
        snappy = (encoding or "").strip().lower() == "snappy"
        body = loki.unsnappy(decompress(raw, None if snappy else encoding, limit), limit)
    records, result = await collector.ingest(
        body, content_type, default_service(request, service), wire.LOKI
    )
    log_batch(wire.LOKI, records, result, len(body), started)
    if result.rejected:
        return JSONResponse(result.body(), status_code=400)
    return Response(status_code=204)
