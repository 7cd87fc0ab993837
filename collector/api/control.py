"""Control endpoints: settle everything now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from collector.api.deps import AdminAuth, CollectorDep

router = APIRouter(tags=["control"])


@router.post("/v1/flush", dependencies=[AdminAuth])
async def flush(collector: CollectorDep) -> dict[str, Any]:
    """Settle every pending failure now, whatever the watermarks say (end of a replay); deploy
    verdicts and gauges are final when it answers."""
    return {"settled": await collector.flush()}
