"""Query endpoints: services, one request's decision, a resource's timeline, hot resources."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from collector.api.deps import CollectorDep, RequestId, ServiceName, StoredResourceId

router = APIRouter(tags=["query"])


@router.get("/v1/services")
async def list_services(collector: CollectorDep) -> dict[str, Any]:
    """Services seen within the retention, most recently active first."""
    return {"services": await collector.store.services()}


@router.get("/v1/services/{service}/requests/{request_id}")
async def get_request(
    service: ServiceName,
    request_id: RequestId,
    collector: CollectorDep,
) -> dict[str, Any]:
    """The decision for one request: cause, state (pending or classified) and evidence."""
    store = collector.store
    resource_id = await store.find_request(service, request_id)
    record, decision = (
        await store.request(service, resource_id, request_id)
        if resource_id is not None
        else (None, None)
    )
    if record is None or resource_id is None:
        raise HTTPException(
            404,
            f"no failure {request_id!r} of service {service!r} is retained (only 412, 428 and "
            "409 requests have a decision; others are in their resource's timeline)",
        )
    body: dict[str, Any] = {
        "service": service,
        "request_id": request_id,
        "resource_id": resource_id,
        "ts": record["ts"],
        "status": record["status"],
    }
    if decision is not None:
        body.update(state="classified", cause=decision["cause"], evidence=decision["evidence"])
    else:
        body.update(state="pending", cause=None, evidence=None)
    return body


@router.get("/v1/services/{service}/resources/{resource_id}/timeline")
async def get_timeline(
    service: ServiceName,
    resource_id: StoredResourceId,
    collector: CollectorDep,
    limit: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> dict[str, Any]:
    """The resource's newest writes and failures in event-time order, with causes (the raw
    resource id or its hashed form, with PW_RESOURCE_ID_KEY)."""
    entries = await collector.store.timeline(service, resource_id, limit=limit)
    events = []
    for request_id, record, decision in entries:
        item = {"request_id": request_id, **record}
        if decision is not None:
            item["cause"] = decision["cause"]
            item["evidence"] = decision["evidence"]
        events.append(item)
    return {"service": service, "resource_id": resource_id, "events": events}


@router.get("/v1/services/{service}/hot")
async def get_hot(
    service: ServiceName,
    collector: CollectorDep,
    window: Annotated[float, Query(gt=0, le=86400, description="seconds of event time")] = 900,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """The resources with the most conflicts (412/409) in the last `window` seconds of event
    time, counted back from the service's newest event (so a replay answers like live)."""
    newest = await collector.store.watermark(service)
    if newest is None:
        raise HTTPException(404, f"service {service!r} is not known")
    hot = await collector.store.hot(service, since=newest - window, until=newest, limit=limit)
    return {
        "service": service,
        "window_seconds": window,
        "until": newest,
        "resources": [{"resource_id": r, "conflicts": int(n)} for r, n in hot],
    }
