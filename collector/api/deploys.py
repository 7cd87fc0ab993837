"""Deploy endpoints: markers in, and each service's deploys with formats and verdicts out."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from collector.api.deps import AdminAuth, CollectorDep, ServiceName

router = APIRouter(tags=["deploys"])


class DeployMarker(BaseModel):
    """`POST /v1/deploys` body."""

    service: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=128)
    ts: float | None = Field(default=None, gt=0, description="epoch seconds; default now")


@router.post("/v1/deploys", dependencies=[AdminAuth])
async def post_deploy(marker: DeployMarker, collector: CollectorDep) -> dict[str, Any]:
    """Record that `service` started running `version` at `ts`."""
    ts = marker.ts if marker.ts is not None else time.time()
    if ts > time.time() + collector.settings.max_clock_skew_seconds:
        raise HTTPException(422, "ts: in the future, past PW_MAX_CLOCK_SKEW_SECONDS")
    await collector.store.record_deploy(marker.service, marker.version, ts)
    return {"service": marker.service, "version": marker.version, "ts": ts}


@router.get("/v1/services/{service}")
async def get_service(service: ServiceName, collector: CollectorDep) -> dict[str, Any]:
    """A service: its watermark and its deploys with ETag formats and regression verdicts."""
    deploys = await collector.deploys.deploys(service)
    newest = await collector.store.watermark(service)
    if newest is None and not deploys:
        raise HTTPException(404, f"service {service!r} is not known")
    return {
        "service": service,
        "newest_event_ts": newest,
        "deploys": [
            {
                "version": d.version,
                "ts": d.ts,
                "source": d.source,
                "formats": list(d.formats),
                "regression": d.regression,
            }
            for d in deploys
        ],
    }
