"""The in-flight byte bound at the HTTP edge: an ASGI middleware around the ingest endpoints.

It holds each ingest request's declared length (then every byte read past it) against the
collector's `Admission` until the response is sent, and answers 503 with `Retry-After` before
reading a body that does not fit. Decompressed bodies are held by `Collector.ingest`.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collector.admission import OverloadedError
from collector.runtime import Collector

INGEST_PATHS = frozenset({"/v1/events", "/v1/logs", "/loki/api/v1/push"})
RETRY_AFTER_SECONDS = "1"


class AdmissionMiddleware:
    """Refuses ingest requests whose bytes would take the collector past its budget."""

    def __init__(self, app: ASGIApp, collector: Collector) -> None:
        self.app = app
        self.admission = collector.admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in INGEST_PATHS:
            await self.app(scope, receive, send)
            return
        admission = self.admission
        declared = 0
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        held = 0
        try:
            admission.take(declared)
            held = declared
        except OverloadedError as exc:
            await _refuse(send, str(exc))
            return
        read = 0

        async def counted() -> Message:
            nonlocal held, read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > held:
                    admission.take(read - held)  # chunked, or longer than declared
                    held = read
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            admission.give_back(held)


async def _refuse(send: Send, reason: str) -> None:
    body = orjson.dumps({"error": f"the collector is at capacity ({reason}); retry later"})
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", RETRY_AFTER_SECONDS.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
