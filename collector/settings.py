"""The collector's configuration: every `PW_*` environment variable, validated once at start."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# A child process gets its settings as JSON; only then are secrets written out in clear.
_CHILD = {"reveal_secrets": True}
MIN_RESOURCE_ID_KEY_LENGTH = 16


class SettingsError(Exception):
    """A `PW_*` variable has a value the collector cannot run with."""


class Settings(BaseSettings):
    """Collector settings; each field is read from `PW_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="PW_", extra="ignore", frozen=True)

    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://, rediss://, unix://); unset: embedded fakeredis",
    )
    redis_cluster: bool = Field(
        default=False,
        description="PW_REDIS_URL names a node of a Redis Cluster; commands go to each key's "
        "primary, and writes wait for a replica",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` listens on")
    port: int = Field(default=8080, ge=1, le=65535, description="Port `serve` listens on")
    concurrency_window_seconds: float = Field(
        default=300.0, gt=0, description="W: a failure within W of the winning write is a race"
    )
    allowed_lateness_seconds: float = Field(
        default=5.0, ge=0, description="How late an event may arrive and still be correlated"
    )
    retention_seconds: int = Field(
        default=86400, ge=60, description="TTL of every Redis key; nothing outlives it"
    )
    max_clock_skew_seconds: float = Field(
        default=300.0, ge=0, description="Events further in the future are rejected"
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Body limit, also after decompression"
    )
    max_inflight_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=2048,
        description="Request bytes (read and decompressed) held at once; past it ingest "
        "answers 503 with Retry-After",
    )
    redis_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="How long one Redis round trip may take before the request gets a 503",
    )
    ingest_tokens: SecretStr | None = Field(
        default=None, description="Comma-separated bearer tokens; set: ingest needs one"
    )
    admin_tokens: SecretStr | None = Field(
        default=None,
        description="Comma-separated bearer tokens for POST /v1/flush and POST /v1/deploys",
    )
    resource_id_key: SecretStr | None = Field(
        default=None,
        description="Set: resource ids are stored as a keyed hash (HMAC-SHA256) of themselves",
    )
    settle_interval_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often idle services are checked for settling"
    )
    settle_process: bool = Field(
        default=True,
        description="Settle in a separate, lower-priority process (with PW_REDIS_URL only)",
    )
    ingest_processes: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Processes that parse and store batches (with PW_REDIS_URL only); "
        "0: the serving process does",
    )
    settle_yield_seconds: float = Field(
        default=2.0,
        ge=0,
        le=60,
        description="While ingest is saturated, the settle process waits up to this long "
        "before each claim (0: never)",
    )
    timeline_max_events: int = Field(
        default=2000, ge=10, description="Events kept per resource timeline"
    )
    lineage_max_writes: int = Field(
        default=100,
        ge=10,
        description="Newest writes before a failure searched for its If-Match ETag",
    )
    max_services: int = Field(
        default=200, ge=1, description="Distinct `service` label values before `__other__`"
    )
    max_clients_per_service: int = Field(
        default=50,
        ge=1,
        description="Distinct `client` label values per service (on "
        "precondition_client_failures_total) before `__other__`",
    )
    max_routes_per_service: int = Field(
        default=100, ge=1, description="Distinct `route` label values per service"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level"
    )
    log_format: Literal["json", "console"] = Field(default="json", description="Log line format")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("resource_id_key")
    @classmethod
    def _check_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        if len(value.get_secret_value()) < MIN_RESOURCE_ID_KEY_LENGTH:
            # A short key can be guessed, and with it every hashed id.
            raise ValueError(f"must be at least {MIN_RESOURCE_ID_KEY_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _separate_tokens(self) -> Settings:
        if set(self.tokens("ingest")) & set(self.tokens("admin")):
            # One shared token would let every log shipper flush and post deploys.
            raise ValueError("PW_ADMIN_TOKENS: must not repeat a token of PW_INGEST_TOKENS")
        return self

    @field_serializer("ingest_tokens", "admin_tokens", "resource_id_key", when_used="json")
    def _dump_secret(self, value: SecretStr | None, info: SerializationInfo) -> str | None:
        if value is None:
            return None
        context = info.context or {}
        return value.get_secret_value() if context.get("reveal_secrets") else str(value)

    def child_json(self) -> str:
        """The settings for an ingest or settle process, secrets included: the child reads
        them back with `model_validate_json` (plain JSON masks every secret)."""
        return self.model_dump_json(context=_CHILD)

    def tokens(self, role: Literal["ingest", "admin"] = "ingest") -> list[bytes]:
        """The bearer tokens of `role` (PW_INGEST_TOKENS or PW_ADMIN_TOKENS); empty when unset."""
        secret = self.ingest_tokens if role == "ingest" else self.admin_tokens
        if secret is None:
            return []
        raw = secret.get_secret_value()
        return [t.strip().encode() for t in raw.split(",") if t.strip()]


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise SettingsError naming each bad `PW_*` variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates the values
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if error["loc"]:
                problems.append(f"PW_{str(error['loc'][0]).upper()}: {error['msg']}")
            else:  # a check across variables names them in its message
                problems.append(error["msg"].removeprefix("Value error, "))
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
