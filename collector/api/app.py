"""The FastAPI application: routers, error mapping and the collector's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from collector import __version__
from collector.admission import OverloadedError
from collector.api import control, deploys, health, ingest, loki, otlp, query, ui
from collector.api.admission import RETRY_AFTER_SECONDS as ADMISSION_RETRY_AFTER
from collector.api.admission import AdmissionMiddleware
from collector.api.deps import Access
from collector.logs import get_logger
from collector.payload import PayloadError
from collector.runtime import Collector
from collector.settings import Settings
from collector.store import StoreUnavailableError

log = get_logger("collector.api")
RETRY_AFTER_SECONDS = "2"


def create_app(settings: Settings, collector: Collector | None = None) -> FastAPI:
    """An app for `settings`; tests pass their own collector (store, registry)."""
    runtime = collector or Collector(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="Precondition Watch", version=__version__, lifespan=lifespan)
    app.state.collector = runtime
    app.state.access = Access.from_settings(runtime.settings)
    app.include_router(ingest.router)
    app.include_router(otlp.router)
    app.include_router(loki.router)
    app.include_router(query.router)
    app.include_router(deploys.router)
    app.include_router(control.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    app.add_middleware(AdmissionMiddleware, collector=runtime)

    @app.exception_handler(OverloadedError)
    async def overloaded(_: Request, exc: OverloadedError) -> JSONResponse:
        log.warning("overloaded", error=str(exc))
        return JSONResponse(
            {"error": f"the collector is at capacity ({exc}); retry later"},
            status_code=503,
            headers={"Retry-After": ADMISSION_RETRY_AFTER},
        )

    @app.exception_handler(PayloadError)
    async def payload_error(_: Request, exc: PayloadError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StoreUnavailableError)
    async def store_unavailable(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        runtime.counts.redis_up(False)
        log.warning("redis_unavailable", error=str(exc))
        return JSONResponse(
            {"error": "Redis is unavailable; nothing was stored, retry later"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)

    return app
