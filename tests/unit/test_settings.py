from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pgcelery
from pgcelery.exceptions import ConfigurationError
from pgcelery.settings import MigrationSettings, Settings


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


URL = "postgresql://u:hunter2@h/db"


@pytest.mark.parametrize(
    ("variable", "text", "field", "value"),
    [
        ("PGCELERY_LISTEN", "off", "listen", False),
        ("PGCELERY_LISTEN", "YES", "listen", True),
        ("PGCELERY_FAIR_TENANTS", "0", "fair_tenants", False),
        ("PGCELERY_DB_POOL_SIZE", " 7 ", "db_pool_size", 7),
        ("PGCELERY_DB_POOL_SIZE", "7.0", "db_pool_size", 7),
        ("PGCELERY_MAX_TASKS_PER_CHILD", "1_000", "max_tasks_per_child", 1000),
        ("PGCELERY_VISIBILITY_TIMEOUT", "1e1", "visibility_timeout", 10.0),
        ("PGCELERY_MATERIALIZED_VIEWS", '["jobs.v", "w"]', "materialized_views", ["jobs.v", "w"]),
        ("PGCELERY_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
        ("pgcelery_db_max_overflow", "9", "db_max_overflow", 9),
    ],
)
def test_environment_text_is_parsed_by_the_field_type(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, field: str, value: object
) -> None:
    monkeypatch.setenv(variable, text)
    assert getattr(Settings(DATABASE_URL=URL), field) == value


@pytest.mark.parametrize(
    ("variable", "text", "rule"),
    [
        ("PGCELERY_LISTEN", "maybe", "PGCELERY_LISTEN must be true or false"),
        ("PGCELERY_DB_POOL_SIZE", "2.5", "PGCELERY_DB_POOL_SIZE must be a whole number"),
        ("PGCELERY_DB_POOL_SIZE", "0", "PGCELERY_DB_POOL_SIZE must be greater than or equal to 1"),
        ("PGCELERY_DB_POOL_SIZE", "101", "PGCELERY_DB_POOL_SIZE must be less than or equal to 100"),
        ("PGCELERY_VISIBILITY_TIMEOUT", "0", "PGCELERY_VISIBILITY_TIMEOUT must be greater than 0"),
        ("PGCELERY_VISIBILITY_TIMEOUT", "nan", "PGCELERY_VISIBILITY_TIMEOUT must be less than"),
        ("PGCELERY_MATERIALIZED_VIEWS", "a,b", "PGCELERY_MATERIALIZED_VIEWS must be a JSON list"),
        ("PGCELERY_MATERIALIZED_VIEWS", '["a b"]', "PGCELERY_MATERIALIZED_VIEWS 'a b' is not a"),
        ("PGCELERY_LOG_FORMAT", "JSON", "PGCELERY_LOG_FORMAT must be 'json' or 'text'"),
        ("PGCELERY_PRODUCER_ROLE", "a-b", "PGCELERY_PRODUCER_ROLE must be a plain SQL identifier"),
    ],
)
def test_each_rule_is_stated_with_its_variable_and_never_the_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, text: str, rule: str
) -> None:
    monkeypatch.setenv(variable, text)
    with pytest.raises(ConfigurationError, match=f"^Invalid configuration: {re.escape(rule)}"):
        Settings(DATABASE_URL=URL)


def test_every_invalid_value_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError) as info:
        Settings(PGCELERY_VISIBILITY_TIMEOUT=0, listen="maybe")
    assert str(info.value) == (
        "Invalid configuration: DATABASE_URL is not set: set it to a PostgreSQL URL such as "
        "postgresql://user:password@host:5432/dbname; "
        "PGCELERY_VISIBILITY_TIMEOUT must be greater than 0; "
        "PGCELERY_LISTEN must be true or false (also 1/0, yes/no, on/off)"
    )


def test_keywords_are_field_names_or_variables_and_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGCELERY_DB_POOL_SIZE", "3")
    settings = Settings(database_url=URL, PGCELERY_SCHEMA="jobs", pgcelery_db_pool_size="4")
    assert (settings.schema_name, settings.db_pool_size) == ("jobs", 4)
    assert Settings(DATABASE_URL=URL, db_pool_size=2, max_tasks_per_child=None) == (
        Settings(DATABASE_URL=URL, PGCELERY_DB_POOL_SIZE=2, PGCELERY_MAX_TASKS_PER_CHILD=None)
    )
    with pytest.raises(ConfigurationError, match=r"^Unknown pgcelery setting\(s\): pool_size$"):
        Settings(DATABASE_URL=URL, PGCELERY_POOL_SIZE=2)


def test_settings_are_frozen_and_their_repr_hides_the_secrets() -> None:
    settings = Settings(
        DATABASE_URL=URL,
        PGCELERY_SIGNING_KEY="key-xyzzy",
        PGCELERY_DASHBOARD_USER="admin",
        PGCELERY_DASHBOARD_PASSWORD="pw-plugh",
    )
    with pytest.raises(AttributeError):
        settings.listen = False  # type: ignore[misc]
    shown = repr(settings)
    assert shown.startswith("Settings(schema_name='public', ")
    assert "dashboard_user='admin'" in shown
    for secret in ("hunter2", "key-xyzzy", "pw-plugh"):
        assert secret not in shown


def test_the_field_registry_describes_every_setting() -> None:
    timeout = Settings.FIELDS["visibility_timeout"]
    assert (timeout.env, timeout.default_value(), timeout.gt, timeout.le) == (
        "PGCELERY_VISIBILITY_TIMEOUT",
        30.0,
        0,
        3600,
    )
    assert Settings.FIELDS["database_url"].required
    assert Settings.FIELDS["materialized_views"].default_value() == []
    assert [f.env for f in Settings.FIELDS.values() if f.secret] == [
        "DATABASE_URL",
        "PGCELERY_SIGNING_KEY",
        "PGCELERY_DASHBOARD_PASSWORD",
    ]


def test_migration_settings_read_only_what_migrations_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PGCELERY_SCHEMA", "jobs")
    monkeypatch.setenv("PGCELERY_WORKER_ROLE", "worker")
    migration = MigrationSettings()
    assert migration.schema_name == "jobs"
    assert migration.roles() == {"producer": "app_user", "worker": "worker", "ops": "app_user"}
    monkeypatch.setenv("PGCELERY_TENANT_GUC", "nodot")
    with pytest.raises(ConfigurationError, match="PGCELERY_TENANT_GUC must be a custom setting"):
        MigrationSettings()


def test_importing_and_reading_the_settings_loads_no_pydantic(tmp_path: Path) -> None:
    """Issue 19: pydantic costs a worker ~14.5 MB of RSS; the settings (and the app, whose
    tenant tasks' typed payloads import it only for a task that declares a model) do without."""
    backend = Path(pgcelery.__file__).resolve().parents[1]
    code = (
        "import sys\n"
        "import pgcelery.settings as s\n"
        "s.Settings(DATABASE_URL='postgresql://u@h/db')\n"
        "import pgcelery.app\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_core', 'pydantic_settings'))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGCELERY_", "DATABASE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(backend), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
