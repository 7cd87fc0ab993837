"""Access control: ingest and admin tokens apart, compared in constant time, 401s that say how to
authenticate (RFC 6750), and lookups of resource ids in their stored form."""

from __future__ import annotations

import gzip
import hmac
from collections.abc import Iterator

import orjson
import pytest
from fastapi.testclient import TestClient

from collector.api.deps import Access, BearerTokens, bearer_token
from collector.settings import Settings, SettingsError, load_settings
from tests.api.test_ingest import client_for

INGEST = ["ingest-alpha", "ingest-beta"]
ADMIN = ["admin-gamma"]
EVENT = orjson.dumps({"requestId": "r-1", "resourceId": "o-1", "status": 412, "ifMatch": '"a"'})
OTLP = orjson.dumps({"resourceLogs": []})
LOKI = orjson.dumps({"streams": []})
DEPLOY = orjson.dumps({"service": "shop", "version": "v2"})

# Every endpoint that needs a token: (method, path, body, content type, role).
ENDPOINTS = [
    ("/v1/events?service=shop", EVENT, "application/x-ndjson", "ingest"),
    ("/v1/logs", OTLP, "application/json", "ingest"),
    ("/loki/api/v1/push", LOKI, "application/json", "ingest"),
    ("/v1/flush", b"", "application/json", "admin"),
    ("/v1/deploys", DEPLOY, "application/json", "admin"),
]
CHALLENGE = 'Bearer realm="precondition-watch"'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(ingest_tokens=",".join(INGEST), admin_tokens=",".join(ADMIN))  # type: ignore[arg-type]
    with client_for(settings) as c:
        yield c


def post(client: TestClient, path: str, body: bytes, kind: str, headers: dict[str, str]) -> int:
    response = client.post(path, content=body, headers={"Content-Type": kind, **headers})
    status: int = response.status_code
    return status


@pytest.mark.parametrize(("path", "body", "kind", "role"), ENDPOINTS)
def test_each_role_opens_its_own_endpoints_only(
    client: TestClient, path: str, body: bytes, kind: str, role: str
) -> None:
    """An ingest token opens ingest, an admin token the admin endpoints, and neither the other."""
    own, other = (INGEST[1], ADMIN[0]) if role == "ingest" else (ADMIN[0], INGEST[0])
    assert post(client, path, body, kind, bearer(own)) in (200, 204)
    assert post(client, path, body, kind, bearer(other)) == 401
    assert post(client, path, body, kind, {}) == 401
    assert post(client, path, body, kind, bearer(own + "x")) == 401
    assert post(client, path, body, kind, bearer(own[:-1])) == 401
    assert post(client, path, body, kind, {"Authorization": f"Basic {own}"}) == 401


def test_a_401_says_how_to_authenticate_and_never_echoes_the_token(client: TestClient) -> None:
    """Without a token: the Bearer challenge; with a wrong one: error="invalid_token" too
    (RFC 6750 section 3); the answer names the variable, never the token sent."""
    missing = client.post("/v1/flush")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == CHALLENGE
    assert "PW_ADMIN_TOKENS" in missing.json()["error"]
    wrong = client.post("/v1/flush", headers=bearer("guessed-secret"))
    assert wrong.headers["WWW-Authenticate"] == CHALLENGE + ', error="invalid_token"'
    assert "guessed-secret" not in wrong.text
    ingest = client.post(
        "/v1/events?service=shop",
        content=gzip.compress(EVENT),
        headers={"Content-Encoding": "gzip", **bearer(ADMIN[0])},
    )
    assert ingest.status_code == 401 and "PW_INGEST_TOKENS" in ingest.json()["error"]


def test_reads_and_probes_stay_open(client: TestClient) -> None:
    """Queries, metrics and probes need no token (put them behind the network's own controls)."""
    for path in ("/healthz", "/readyz", "/metrics", "/v1/services"):
        assert client.get(path).status_code == 200


def test_protecting_ingest_alone_locks_the_admin_endpoints() -> None:
    """With PW_INGEST_TOKENS but no PW_ADMIN_TOKENS, flush and deploys refuse every token:
    ingest tokens are handed to every shipper and must not settle or mark deploys."""
    with client_for(Settings(ingest_tokens="ingest-alpha")) as c:  # type: ignore[arg-type]
        assert c.post("/v1/flush", headers=bearer("ingest-alpha")).status_code == 401
        assert c.post("/v1/flush").status_code == 401
        events = c.post("/v1/events?service=s", content=EVENT, headers=bearer("ingest-alpha"))
        assert events.status_code == 200


def test_without_tokens_everything_is_open() -> None:
    """Neither variable set (trying it out): no endpoint asks for a token."""
    with client_for(Settings()) as c:
        assert c.post("/v1/flush").status_code == 200
        assert c.post("/v1/events?service=s", content=EVENT).status_code == 200


def test_admin_tokens_alone_leave_ingest_open() -> None:
    """PW_ADMIN_TOKENS without PW_INGEST_TOKENS protects flush and deploys only."""
    with client_for(Settings(admin_tokens="admin-gamma")) as c:  # type: ignore[arg-type]
        assert c.post("/v1/events?service=s", content=EVENT).status_code == 200
        assert c.post("/v1/flush").status_code == 401
        assert c.post("/v1/flush", headers=bearer("admin-gamma")).status_code == 200


def test_one_token_in_both_roles_fails_at_start() -> None:
    """A token listed in PW_INGEST_TOKENS and PW_ADMIN_TOKENS is a settings error naming both."""
    with pytest.raises(SettingsError, match=r"PW_ADMIN_TOKENS.*PW_INGEST_TOKENS"):
        load_settings(ingest_tokens="a, shared", admin_tokens="shared")


def test_every_token_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check compares the digest of what was sent with the digest of every token, the
    first matching or none: no early exit, and equal lengths, for the timing to give nothing."""
    calls: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    tokens = BearerTokens.of("ingest", [b"first", b"second-token", b"3"], open_without=True)
    for presented, expected in (
        (b"first", True),
        (b"3", True),
        (b"nope", False),
        (b"x" * 999, False),
    ):
        calls.clear()
        assert tokens.accepts(presented) is expected
        assert calls == [(32, 32)] * 3


def test_bearer_tokens_are_read_as_sent() -> None:
    """The scheme is case-insensitive, blanks around the token are not part of it, and a
    header without a token is no token."""
    assert bearer_token("Bearer abc") == b"abc"
    assert bearer_token("bearer  abc ") == b"abc"
    assert bearer_token("Bearer") is None
    assert bearer_token("Bearer   ") is None
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None
    assert bearer_token("Bearer caf\u00c3\u00a9") == "café".encode()  # UTF-8 bytes, as latin-1


def test_a_non_ascii_token_matches_its_utf8_bytes() -> None:
    """A token configured with non-ASCII characters matches the UTF-8 bytes a client sends."""
    access = Access.from_settings(Settings(ingest_tokens="café-token"))  # type: ignore[arg-type]
    assert access.ingest.accepts("café-token".encode())
    assert not access.ingest.accepts(b"cafe-token")
