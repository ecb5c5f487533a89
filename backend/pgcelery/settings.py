"""All configuration, read from the environment in one place and validated at start.

``DATABASE_URL`` is the only required variable; everything else is ``PGCELERY_*`` with a
production default. Invalid values raise :class:`~pgcelery.exceptions.ConfigurationError` naming
the variable and the rule, and never echo the value (it may hold a password).

Where a value comes from, first match wins: keyword arguments to ``Settings(...)``, the process
environment, a ``.env`` file in the working directory (when there is one), the default. A
``PGCELERY_*`` variable that is no setting is reported once per process with a
:class:`~pgcelery.exceptions.ConfigurationWarning` naming the closest valid one.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgcelery import dsn, variables
from pgcelery.exceptions import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery

_PREFIX = variables.PREFIX
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_GUC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_.]*$")
_VIEW = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError("must be a plain SQL identifier (letters, digits, _; ≤ 63 chars)")
    return value


#: A schema or role name: migrations and raw SQL quote it, but only after this check.
SqlIdentifier = Annotated[str, AfterValidator(_identifier)]
#: A role name, or empty for "the app role".
OptionalIdentifier = Annotated[str, AfterValidator(lambda v: v and _identifier(v))]


class Settings(BaseSettings):
    """pgcelery's settings; see docs/reference/settings.md for every variable."""

    model_config = SettingsConfigDict(
        env_prefix=_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        env_file=variables.DOTENV,
        env_file_encoding="utf-8",
    )

    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL URL for the broker, the result backend and pgcelery.db.",
        repr=False,
    )
    schema_name: SqlIdentifier = Field(
        default="public",
        validation_alias=AliasChoices("PGCELERY_SCHEMA", "schema_name"),
        description="Schema that holds the pgcelery tables.",
    )
    app_role: SqlIdentifier = Field(
        default="app_user",
        description="Role granted access to the tables by the migrations, when it exists.",
    )
    producer_role: OptionalIdentifier = Field(
        default="", description="Role that may enqueue and read results (empty: app role)."
    )
    worker_role: OptionalIdentifier = Field(
        default="", description="Role that claims, acks and stores results (empty: app role)."
    )
    ops_role: OptionalIdentifier = Field(
        default="", description="Role for remote control and dead letters (empty: app role)."
    )
    signing_key: str = Field(
        default="", repr=False, description="Secret that signs tenant headers (HMAC-SHA256)."
    )
    max_message_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest serialized task message accepted."
    )
    fair_tenants: bool = Field(
        default=True, description="Claim round-robin across tenants (false: oldest first)."
    )
    visibility_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds a claimed message stays leased."
    )
    polling_interval: float = Field(
        default=1.0, gt=0, le=60, description="Seconds between broker polls when no NOTIFY."
    )
    broker_statement_timeout: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds a broker statement may run before the server cancels it (0: none).",
    )
    max_deliveries: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Deliveries without an ack before a message is dead-lettered (0: no limit).",
    )
    listen: bool = Field(
        default=True, description="Wake workers with LISTEN/NOTIFY; false for PgBouncer."
    )
    events_poll_interval: float = Field(
        default=0.1,
        gt=0,
        le=60,
        description="Seconds between an event receiver's reads of the broadcast log.",
    )
    worker_async_commit: bool = Field(
        default=True,
        description="Workers commit claims, acks and results without waiting for the WAL flush.",
    )
    started_state_delay: float = Field(
        default=0.1,
        ge=0,
        le=3600,
        description="Seconds a task runs before its STARTED state is stored (0: at once).",
    )
    prefetch_multiplier: int = Field(default=1, ge=1, le=1000)
    task_soft_time_limit: float = Field(default=300.0, gt=0)
    task_time_limit: float = Field(default=330.0, gt=0)
    result_expires: int = Field(default=86_400, gt=0, description="Seconds results are kept.")
    soft_shutdown_timeout: float = Field(default=30.0, ge=0)
    max_tasks_per_child: int | None = Field(default=10_000, ge=1)
    max_memory_per_child: int | None = Field(
        default=512_000, ge=1, description="Kilobytes of RSS before a prefork child is replaced."
    )
    db_pool_size: int = Field(default=5, ge=1, le=100)
    db_max_overflow: int = Field(default=5, ge=0, le=100)
    tenant_guc: str = Field(default="app.current_tenant_id")
    correlation_guc: str = Field(default="app.correlation_id")
    materialized_views: list[str] = Field(default_factory=list)
    beat_prune_results_interval: float = Field(
        default=3600.0, ge=0, description="Seconds between scheduled prune_results; 0: never."
    )
    beat_refresh_views_interval: float = Field(
        default=900.0,
        ge=0,
        description="Seconds between scheduled refreshes of materialized_views; 0: never.",
    )
    beat_standby_interval: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds a standby beat waits between attempts to become the leader.",
    )
    beat_lease: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a stalled beat leader keeps leadership before the server ends it.",
    )
    prune_interval: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="Seconds between a worker's prune passes over pgcelery's tables; 0: never.",
    )
    dead_letter_retention: float = Field(
        default=1_209_600.0,
        ge=0,
        description="Seconds dead letters are kept before the workers delete them; 0: for ever.",
    )
    beat_entry_retention: float = Field(
        default=2_592_000.0,
        gt=0,
        description="Seconds after its last run that the row of a removed beat entry is deleted.",
    )
    metrics_enabled: bool = Field(default=True)
    metrics_host: str = Field(default="0.0.0.0")
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    health_timeout: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Seconds a /health check (and a /metrics broker query) may take.",
    )
    log_format: Literal["json", "text"] = Field(default="json")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(default="INFO")
    embedded_dir: str = Field(default=".pgcelery/pgdata")
    worker_heartbeat_interval: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds between a worker's heartbeats into pgcelery_worker.",
    )
    dashboard_host: str = Field(default="127.0.0.1", description="Address the dashboard binds.")
    dashboard_port: int = Field(default=8008, ge=0, le=65535)
    dashboard_user: str = Field(default="", description="HTTP basic auth user; empty: no auth.")
    dashboard_password: str = Field(default="", repr=False)
    dashboard_insecure_no_auth: bool = Field(
        default=False, description="Allow a non-loopback bind without basic auth."
    )
    dashboard_actions: bool = Field(
        default=False, description="Offer retry, revoke and purge (each confirmed and logged)."
    )
    dashboard_refresh: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between the pages' auto-refreshes."
    )
    dashboard_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values the dashboard answers (default: bind address, localhost).",
    )

    def __init__(self, **values: Any) -> None:
        try:
            named = _field_names(values)
            # Keys with a leading underscore are pydantic-settings options (_env_file, …).
            fields = type(self).model_fields
            unknown = sorted(k for k in named if k not in fields and not k.startswith("_"))
            if unknown:
                raise ConfigurationError(f"Unknown pgcelery setting(s): {', '.join(unknown)}")
            super().__init__(**named)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        warn_unknown_variables()

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # sync_url raises ConfigurationError; pydantic would wrap a ValueError with the input,
        # so let it propagate unchanged (it never contains the password).
        dsn.sync_url(value)
        return value

    @field_validator("tenant_guc", "correlation_guc")
    @classmethod
    def _check_guc(cls, value: str) -> str:
        if not _GUC.match(value):
            raise ValueError("must be a custom setting name with a dot, like app.current_tenant_id")
        return value

    @field_validator("materialized_views")
    @classmethod
    def _check_views(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _VIEW.match(name):
                raise ValueError(f"{name!r} is not a view name like schema.view")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError(
                "PGCELERY_TASK_TIME_LIMIT must be greater than PGCELERY_TASK_SOFT_TIME_LIMIT"
            )
        return self

    @model_validator(mode="after")
    def _check_dashboard_auth(self) -> Settings:
        if bool(self.dashboard_user) != bool(self.dashboard_password):
            raise ValueError(
                "PGCELERY_DASHBOARD_USER and PGCELERY_DASHBOARD_PASSWORD must be set together"
            )
        return self

    @property
    def sync_url(self) -> str:
        return dsn.sync_url(self.database_url)

    @property
    def broker_url(self) -> str:
        return dsn.broker_url(self.database_url)

    @property
    def result_backend_url(self) -> str:
        return dsn.result_backend_url(self.database_url)

    @property
    def redacted_url(self) -> str:
        return dsn.redact(self.database_url)


def _field_names(values: dict[str, Any]) -> dict[str, Any]:
    """Accept keyword arguments spelled as the environment variables (``PGCELERY_X=…``) too.

    Without this, pydantic would silently ignore ``Settings(PGCELERY_DB_POOL_SIZE=1)``.
    """
    named: dict[str, Any] = {}
    for key, value in values.items():
        upper = key.upper()
        if upper == "DATABASE_URL":
            key = "database_url"
        elif upper == "PGCELERY_SCHEMA":
            key = "schema_name"
        elif upper.startswith("PGCELERY_"):
            key = upper.removeprefix("PGCELERY_").lower()
        named[key] = value
    return named


def variable_names() -> frozenset[str]:
    """Every environment variable a setting reads, from the :class:`Settings` model itself."""
    return frozenset(env_name(field) for field in Settings.model_fields)


def unknown_variables(names: set[str] | None = None) -> dict[str, str | None]:
    """``PGCELERY_*`` names (default: the environment's and ``.env``'s) that no setting reads,
    each with the closest valid name or ``None``."""
    return variables.unknown(variable_names(), names)


def warn_unknown_variables() -> None:
    """Warn, once per variable and process, about ``PGCELERY_*`` variables no setting reads."""
    variables.warn_unknown(variable_names())


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    if field.lower() == "database_url":
        return "DATABASE_URL"
    if field.lower() in ("schema_name", "pgcelery_schema"):
        return "PGCELERY_SCHEMA"
    return f"PGCELERY_{field.upper()}"


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            problems.append(message)
            continue
        variable = env_name(str(error["loc"][0]))
        if error["type"] == "missing":
            if variable == "DATABASE_URL":
                problems.append(
                    "DATABASE_URL is not set: set it to a PostgreSQL URL such as "
                    "postgresql://user:password@host:5432/dbname"
                )
            else:
                problems.append(f"{variable} is required")
        else:
            problems.append(message if variable in message else f"{variable} {message}")
    return "Invalid configuration: " + "; ".join(problems)


class MigrationSettings(BaseSettings):
    """The subset of settings a migration needs; DATABASE_URL may come from elsewhere there.

    A host application's Alembic run includes pgcelery's revisions without configuring pgcelery,
    so the revisions read only these two variables.
    """

    model_config = SettingsConfigDict(
        env_prefix=_PREFIX,
        case_sensitive=False,
        extra="ignore",
        env_file=variables.DOTENV,
        env_file_encoding="utf-8",
    )

    schema_name: SqlIdentifier = Field(
        default="public", validation_alias=AliasChoices("PGCELERY_SCHEMA", "schema_name")
    )
    app_role: SqlIdentifier = Field(default="app_user")
    producer_role: OptionalIdentifier = ""
    worker_role: OptionalIdentifier = ""
    ops_role: OptionalIdentifier = ""
    tenant_guc: str = Field(default="app.current_tenant_id", pattern=_GUC.pattern)

    def roles(self) -> dict[str, str]:
        """Each set of rights (producer, worker, ops) → the role that holds it."""
        return {
            "producer": self.producer_role or self.app_role,
            "worker": self.worker_role or self.app_role,
            "ops": self.ops_role or self.app_role,
        }

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None


def settings_of(app: Celery) -> Settings:
    """The pgcelery settings an app was created with (environment settings for a plain app)."""
    found = getattr(app, "pgcelery_settings", None)
    return found if isinstance(found, Settings) else Settings()
