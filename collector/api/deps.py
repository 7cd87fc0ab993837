"""Request dependencies: the running collector and ingest authentication.

Both are `async def`: FastAPI runs a plain `def` dependency in a worker thread, two thread
hand-offs per request for nothing that blocks.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from collector.runtime import Collector


async def get_collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


CollectorDep = Annotated[Collector, Depends(get_collector)]


async def require_token(request: Request, collector: CollectorDep) -> None:
    """401 unless the bearer token is one of PW_INGEST_TOKENS (when that is set)."""
    tokens = collector.settings.tokens()
    if not tokens:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    candidate = presented.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every token, always, so timing does not tell which prefix matched.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(candidate, token)
    if not candidate or not matched:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="precondition-watch"'},
        )


IngestAuth = Depends(require_token)
