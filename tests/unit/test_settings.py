from __future__ import annotations

import pytest

from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import Settings


def test_database_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not set"):
        Settings()


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@h/db")
    monkeypatch.setenv("PGCELERY_SCHEMA", "jobs")
    monkeypatch.setenv("PGCELERY_VISIBILITY_TIMEOUT", "12.5")
    settings = Settings()
    assert settings.schema_name == "jobs"
    assert settings.visibility_timeout == 12.5
    assert settings.broker_url.startswith("sqla+postgresql+psycopg://u:p@h/db?connect_timeout=10&")


def test_error_names_the_variable_and_never_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "redis://:topsecret@h:6379")
    with pytest.raises(ConfigurationError) as info:
        Settings()
    assert "DATABASE_URL" in str(info.value)
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("PGCELERY_SCHEMA", "bad name; drop", "PGCELERY_SCHEMA must be a plain SQL identifier"),
        ("PGCELERY_VISIBILITY_TIMEOUT", "0", "PGCELERY_VISIBILITY_TIMEOUT"),
        ("PGCELERY_TENANT_GUC", "nodot", "PGCELERY_TENANT_GUC must be a custom setting name"),
        ("PGCELERY_LOG_FORMAT", "xml", "PGCELERY_LOG_FORMAT"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, rule: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@h/db")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=rule):
        Settings()


def test_repr_hides_the_url() -> None:
    settings = Settings(DATABASE_URL="postgres://u:hunter2@h/db")
    assert "hunter2" not in repr(settings)
    assert settings.redacted_url == "postgres://u:***@h/db"
