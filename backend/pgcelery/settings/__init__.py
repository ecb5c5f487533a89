"""All configuration, read from the environment in one place and validated at start.

``DATABASE_URL`` is the only required variable; everything else is ``PGCELERY_*`` with a
production default. Invalid values raise :class:`~pgcelery.exceptions.ConfigurationError` naming
the variable and the rule, and never echo the value (it may hold a password).

Where a value comes from, first match wins: keyword arguments to ``Settings(...)``, the process
environment, a ``.env`` file in the working directory (when there is one), the default. A
``PGCELERY_*`` variable that is no setting is reported once per process with a
:class:`~pgcelery.exceptions.ConfigurationWarning` naming the closest valid one.

Owns ``Settings`` and ``MigrationSettings`` (here: each field declared once) and ``fields``
(how a declared field is read, parsed and checked; ``Settings.FIELDS`` lists every field with
its variable, default, bounds and description). Nothing here imports pydantic: every worker
imports this package (issue 19).

May import: ``pgcelery.exceptions``, ``dsn`` and ``variables``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pgcelery import dsn, variables
from pgcelery.settings.fields import EnvSettings, setting

if TYPE_CHECKING:
    from celery import Celery

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_GUC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_.]*$")
_VIEW = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(value: str) -> None:
    """A schema or role name: migrations and raw SQL quote it, but only after this check."""
    if not _IDENTIFIER.match(value):
        raise ValueError("must be a plain SQL identifier (letters, digits, _; ≤ 63 chars)")


def _role(value: str) -> None:
    """A role name, or empty for "the app role"."""
    if value:
        _identifier(value)


def _guc(value: str) -> None:
    if not _GUC.match(value):
        raise ValueError("must be a custom setting name with a dot, like app.current_tenant_id")


def _views(value: list[str]) -> None:
    for name in value:
        if not _VIEW.match(name):
            raise ValueError(f"{name!r} is not a view name like schema.view")


def _url(value: str) -> None:
    # Raises ConfigurationError naming DATABASE_URL and the rule, never the password.
    dsn.sync_url(value)


# What migrations read too (MigrationSettings): declared once for both classes.
_SCHEMA_NAME: str = setting(
    default="public",
    env="PGCELERY_SCHEMA",
    check=_identifier,
    description="Schema that holds the pgcelery tables.",
)
_APP_ROLE: str = setting(
    default="app_user",
    check=_identifier,
    description="Role granted access to the tables by the migrations, when it exists.",
)
_PRODUCER_ROLE: str = setting(
    default="", check=_role, description="Role that may enqueue and read results (empty: app role)."
)
_WORKER_ROLE: str = setting(
    default="",
    check=_role,
    description="Role that claims, acks and stores results (empty: app role).",
)
_OPS_ROLE: str = setting(
    default="",
    check=_role,
    description="Role for remote control and dead letters (empty: app role).",
)
_TENANT_GUC: str = setting(default="app.current_tenant_id", check=_guc)


class Settings(EnvSettings):
    """pgcelery's settings; see docs/reference/settings.md for every variable."""

    database_url: str = setting(
        env="DATABASE_URL",
        check=_url,
        secret=True,
        missing=(
            "is not set: set it to a PostgreSQL URL such as "
            "postgresql://user:password@host:5432/dbname"
        ),
        description="PostgreSQL URL for the broker, the result backend and pgcelery.db.",
    )
    schema_name: str = _SCHEMA_NAME
    app_role: str = _APP_ROLE
    producer_role: str = _PRODUCER_ROLE
    worker_role: str = _WORKER_ROLE
    ops_role: str = _OPS_ROLE
    signing_key: str = setting(
        default="", secret=True, description="Secret that signs tenant headers (HMAC-SHA256)."
    )
    max_message_bytes: int = setting(
        default=1_048_576, ge=1024, description="Largest serialized task message accepted."
    )
    fair_tenants: bool = setting(
        default=True, description="Claim round-robin across tenants (false: oldest first)."
    )
    visibility_timeout: float = setting(
        default=30.0, gt=0, le=3600, description="Seconds a claimed message stays leased."
    )
    polling_interval: float = setting(
        default=1.0, gt=0, le=60, description="Seconds between broker polls when no NOTIFY."
    )
    broker_statement_timeout: float = setting(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds a broker statement may run before the server cancels it (0: none).",
    )
    max_deliveries: int = setting(
        default=5,
        ge=0,
        le=1000,
        description="Deliveries without an ack before a message is dead-lettered (0: no limit).",
    )
    listen: bool = setting(
        default=True, description="Wake workers with LISTEN/NOTIFY; false for PgBouncer."
    )
    events_poll_interval: float = setting(
        default=0.1,
        gt=0,
        le=60,
        description="Seconds between an event receiver's reads of the broadcast log.",
    )
    worker_async_commit: bool = setting(
        default=True,
        description="Workers commit claims, acks and results without waiting for the WAL flush.",
    )
    started_state_delay: float = setting(
        default=0.1,
        ge=0,
        le=3600,
        description="Seconds a task runs before its STARTED state is stored (0: at once).",
    )
    prefetch_multiplier: int = setting(default=1, ge=1, le=1000)
    task_soft_time_limit: float = setting(default=300.0, gt=0)
    task_time_limit: float = setting(default=330.0, gt=0)
    result_expires: int = setting(default=86_400, gt=0, description="Seconds results are kept.")
    soft_shutdown_timeout: float = setting(default=30.0, ge=0)
    max_tasks_per_child: int | None = setting(default=10_000, ge=1)
    max_memory_per_child: int | None = setting(
        default=512_000, ge=1, description="Kilobytes of RSS before a prefork child is replaced."
    )
    db_pool_size: int = setting(default=5, ge=1, le=100)
    db_max_overflow: int = setting(default=5, ge=0, le=100)
    tenant_guc: str = _TENANT_GUC
    correlation_guc: str = setting(default="app.correlation_id", check=_guc)
    materialized_views: list[str] = setting(default_factory=list, check=_views)
    beat_prune_results_interval: float = setting(
        default=3600.0, ge=0, description="Seconds between scheduled prune_results; 0: never."
    )
    beat_refresh_views_interval: float = setting(
        default=900.0,
        ge=0,
        description="Seconds between scheduled refreshes of materialized_views; 0: never.",
    )
    beat_standby_interval: float = setting(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds a standby beat waits between attempts to become the leader.",
    )
    beat_lease: float = setting(
        default=30.0,
        gt=0,
        le=3600,
        description="Seconds a stalled beat leader keeps leadership before the server ends it.",
    )
    prune_interval: float = setting(
        default=60.0,
        ge=0,
        le=86_400,
        description="Seconds between a worker's prune passes over pgcelery's tables; 0: never.",
    )
    dead_letter_retention: float = setting(
        default=1_209_600.0,
        ge=0,
        description="Seconds dead letters are kept before the workers delete them; 0: for ever.",
    )
    beat_entry_retention: float = setting(
        default=2_592_000.0,
        gt=0,
        description="Seconds after its last run that the row of a removed beat entry is deleted.",
    )
    metrics_enabled: bool = setting(default=True)
    metrics_host: str = setting(default="0.0.0.0")
    metrics_port: int = setting(default=9808, ge=0, le=65535)
    health_timeout: float = setting(
        default=1.0,
        gt=0,
        le=30,
        description="Seconds a /health check (and a /metrics broker query) may take.",
    )
    log_format: Literal["json", "text"] = setting(default="json")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = setting(default="INFO")
    embedded_dir: str = setting(default=".pgcelery/pgdata")
    worker_heartbeat_interval: float = setting(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds between a worker's heartbeats into pgcelery_worker.",
    )
    dashboard_host: str = setting(default="127.0.0.1", description="Address the dashboard binds.")
    dashboard_port: int = setting(default=8008, ge=0, le=65535)
    dashboard_user: str = setting(default="", description="HTTP basic auth user; empty: no auth.")
    dashboard_password: str = setting(default="", secret=True)
    dashboard_insecure_no_auth: bool = setting(
        default=False, description="Allow a non-loopback bind without basic auth."
    )
    dashboard_actions: bool = setting(
        default=False, description="Offer retry, revoke and purge (each confirmed and logged)."
    )
    dashboard_refresh: float = setting(
        default=5.0, gt=0, le=3600, description="Seconds between the pages' auto-refreshes."
    )
    dashboard_allowed_hosts: list[str] = setting(
        default_factory=list,
        description="Host header values the dashboard answers (default: bind address, localhost).",
    )

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        warn_unknown_variables()

    def _check(self) -> None:
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError(
                "PGCELERY_TASK_TIME_LIMIT must be greater than PGCELERY_TASK_SOFT_TIME_LIMIT"
            )
        if bool(self.dashboard_user) != bool(self.dashboard_password):
            raise ValueError(
                "PGCELERY_DASHBOARD_USER and PGCELERY_DASHBOARD_PASSWORD must be set together"
            )

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


def variable_names() -> frozenset[str]:
    """Every environment variable a setting reads, from the :class:`Settings` fields."""
    return frozenset(field.env for field in Settings.FIELDS.values())


def unknown_variables(names: set[str] | None = None) -> dict[str, str | None]:
    """``PGCELERY_*`` names (default: the environment's and ``.env``'s) that no setting reads,
    each with the closest valid name or ``None``."""
    return variables.unknown(variable_names(), names)


def warn_unknown_variables() -> None:
    """Warn, once per variable and process, about ``PGCELERY_*`` variables no setting reads."""
    variables.warn_unknown(variable_names())


def env_name(field: str) -> str:
    """The environment variable that sets ``field`` (a field name, or a variable in any case)."""
    spec = Settings.FIELDS.get(field.lower())
    if spec is not None:
        return spec.env
    if field.upper() in variable_names():
        return field.upper()
    return f"{variables.PREFIX}{field.upper()}"


class MigrationSettings(EnvSettings):
    """The subset of settings a migration needs; DATABASE_URL may come from elsewhere there.

    A host application's Alembic run includes pgcelery's revisions without configuring pgcelery,
    so the revisions read only these variables.
    """

    schema_name: str = _SCHEMA_NAME
    app_role: str = _APP_ROLE
    producer_role: str = _PRODUCER_ROLE
    worker_role: str = _WORKER_ROLE
    ops_role: str = _OPS_ROLE
    tenant_guc: str = _TENANT_GUC

    def roles(self) -> dict[str, str]:
        """Each set of rights (producer, worker, ops) → the role that holds it."""
        return {
            "producer": self.producer_role or self.app_role,
            "worker": self.worker_role or self.app_role,
            "ops": self.ops_role or self.app_role,
        }


def settings_of(app: Celery) -> Settings:
    """The pgcelery settings an app was created with (environment settings for a plain app)."""
    found = getattr(app, "pgcelery_settings", None)
    return found if isinstance(found, Settings) else Settings()
