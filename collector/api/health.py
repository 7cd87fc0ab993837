"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import choose_encoder

from collector.api.deps import CollectorDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(collector: CollectorDep) -> JSONResponse:
    """Ready when Redis answers."""
    up = await collector.store.ping()
    collector.counts.redis_up(up)
    if up:
        return JSONResponse({"status": "ready", "redis": "up"})
    return JSONResponse(
        {"status": "not ready", "redis": "down"}, status_code=503, headers={"Retry-After": "5"}
    )


@router.get("/metrics")
async def metrics(request: Request, collector: CollectorDep) -> Response:
    """Prometheus text or OpenMetrics (with exemplars), by the Accept header."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(collector.registry), media_type=content_type)
