"""Request dependencies: the running collector, access control, and resource id lookups.

Two roles, two sets of bearer tokens: ingest (`PW_INGEST_TOKENS`: `/v1/events`, `/v1/logs`, the
Loki push) and admin (`PW_ADMIN_TOKENS`: `POST /v1/flush`, `POST /v1/deploys`). A token of one
role never opens the other's endpoints. A role without tokens is open, except admin once ingest
has tokens: whoever protects ingest would not expect flushing to stay open, so the admin
endpoints then answer 401 until `PW_ADMIN_TOKENS` is set.

The dependencies are `async def`: FastAPI runs a plain `def` dependency in a worker thread,
two thread hand-offs per request for nothing that blocks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Path, Request

from collector.event import MAX_LENGTH
from collector.runtime import Collector
from collector.settings import Settings

REALM = "precondition-watch"

# Nothing stored holds a control character (the event parser refuses them), and the store
# separates the names it looks up with some: a path naming one is refused (422) before any
# lookup.
_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"
ServiceName = Annotated[
    str, Path(min_length=1, max_length=MAX_LENGTH["service"], pattern=_NO_CONTROL)
]
RequestId = Annotated[
    str, Path(min_length=1, max_length=MAX_LENGTH["request_id"], pattern=_NO_CONTROL)
]
ResourceId = Annotated[
    str, Path(min_length=1, max_length=MAX_LENGTH["resource_id"], pattern=_NO_CONTROL)
]


async def get_collector(request: Request) -> Collector:
    collector: Collector = request.app.state.collector
    return collector


CollectorDep = Annotated[Collector, Depends(get_collector)]


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True, slots=True)
class BearerTokens:
    """The tokens of one role, kept as SHA-256 digests so that every comparison takes the same
    time whatever the length and the prefix of the token sent."""

    role: str
    digests: tuple[bytes, ...]
    open: bool  # no token is needed

    @classmethod
    def of(cls, role: str, tokens: Sequence[bytes], *, open_without: bool) -> BearerTokens:
        """`tokens` for `role`; with none, open when `open_without`, else closed to all."""
        return cls(role, tuple(_digest(t) for t in tokens), open=not tokens and open_without)

    def accepts(self, presented: bytes) -> bool:
        """Whether `presented` is one of the tokens, comparing it with every one of them (no
        early exit, so the time does not tell which token, or whether any, came close)."""
        if self.open:
            return True
        candidate = _digest(presented)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(candidate, digest)
        return matched


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call what: the ingest and the admin tokens of one app."""

    ingest: BearerTokens
    admin: BearerTokens

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        ingest = settings.tokens("ingest")
        return cls(
            ingest=BearerTokens.of("ingest", ingest, open_without=True),
            admin=BearerTokens.of("admin", settings.tokens("admin"), open_without=not ingest),
        )


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    # Starlette decodes header bytes as latin-1: this gives back the bytes that were sent.
    return token.encode("latin-1")


def _require(request: Request, role: Literal["ingest", "admin"]) -> None:
    access: Access = request.app.state.access
    tokens = access.ingest if role == "ingest" else access.admin
    if tokens.open:
        return
    presented = bearer_token(request.headers.get("authorization"))
    if presented is not None and tokens.accepts(presented):
        return
    challenge = f'Bearer realm="{REALM}"'
    if presented is not None:
        # RFC 6750 section 3: a token was sent, and it is not one of this role's.
        challenge += ', error="invalid_token"'
    which = "PW_INGEST_TOKENS" if role == "ingest" else "PW_ADMIN_TOKENS"
    detail = "missing bearer token" if presented is None else "invalid bearer token"
    raise HTTPException(
        status_code=401,
        detail=f"{detail}: {request.url.path} needs one of {which}",
        headers={"WWW-Authenticate": challenge},
    )


async def require_ingest_token(request: Request) -> None:
    """401 unless the bearer token is one of PW_INGEST_TOKENS (when that is set)."""
    _require(request, "ingest")


async def require_admin_token(request: Request) -> None:
    """401 unless the bearer token is one of PW_ADMIN_TOKENS (see the module docstring)."""
    _require(request, "admin")


IngestAuth = Depends(require_ingest_token)
AdminAuth = Depends(require_admin_token)


async def stored_resource_id(resource_id: ResourceId, collector: CollectorDep) -> str:
    """The stored form of the resource id in the path: with PW_RESOURCE_ID_KEY, the raw id is
    hashed as ingest hashed it, and a hashed id (as the API returns them) is taken as it is."""
    return collector.ingestor.resource_ids.lookup(resource_id)


StoredResourceId = Annotated[str, Depends(stored_resource_id)]
