"""Control endpoints: settle everything now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from collector.api.deps import CollectorDep, IngestAuth

router = APIRouter(tags=["control"])


@router.post("/v1/flush", dependencies=[IngestAuth])
async def flush(collector: CollectorDep) -> dict[str, Any]:
    """Settle every pending failure now, whatever the watermarks say (end of a replay)."""
    settled = await collector.settler.settle_all(force=True)
    return {"settled": settled}
