"""Settings: defaults, and a bad `PW_*` value fails at start naming the variable."""

from __future__ import annotations

import pytest

from collector.settings import Settings, SettingsError, load_settings


def test_defaults_match_the_design() -> None:
    """The documented defaults: W=300 s, lateness 5 s, retention 24 h, skew 300 s."""
    settings = Settings()
    assert settings.concurrency_window_seconds == 300
    assert settings.allowed_lateness_seconds == 5
    assert settings.retention_seconds == 86400
    assert settings.max_clock_skew_seconds == 300
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PW_REDIS_URL", "http://127.0.0.1:6379"),
        ("PW_PORT", "eighty"),
        ("PW_CONCURRENCY_WINDOW_SECONDS", "-1"),
        ("PW_RETENTION_SECONDS", "5"),
        ("PW_LOG_LEVEL", "loud"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """The error message names the PW_ variable that is wrong."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_tokens_are_split_and_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """PW_INGEST_TOKENS is a comma list, and never shows in the settings' repr."""
    monkeypatch.setenv("PW_INGEST_TOKENS", "alpha, beta,")
    settings = load_settings()
    assert settings.tokens() == [b"alpha", b"beta"]
    assert "alpha" not in repr(settings)
