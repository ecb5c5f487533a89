"""The Celery application factory: one ``DATABASE_URL`` in, a production-ready Celery out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery._state import connect_on_app_finalize
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup

from pgcelery import celery_overrides, dsn
from pgcelery.broker import bulk
from pgcelery.broker.caller_transaction import caller_connection
from pgcelery.exceptions import ConfigurationError
from pgcelery.scheduling.schedule import default_schedule
from pgcelery.settings import Settings, settings_of
from pgcelery.tasks import limit_options, unique
from pgcelery.variables import variable

__all__ = [
    "BUILTIN_TASK_MODULES",
    "PgceleryApp",
    "create_app",
    "production_defaults",
    "settings_of",
]

#: Task modules every pgcelery app includes.
BUILTIN_TASK_MODULES = ("pgcelery.tasks.housekeeping", "pgcelery.tasks.maintenance")


def production_defaults(settings: Settings) -> dict[str, Any]:
    """Celery settings pgcelery starts from; a host overrides any of them with ``app.conf``."""
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "result_expires": settings.result_expires,
        "result_extended": True,
        "task_track_started": True,
        "timezone": "UTC",
        "enable_utc": True,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_max_tasks_per_child": settings.max_tasks_per_child,
        "worker_max_memory_per_child": settings.max_memory_per_child,
        # Migrations own the schema: the result backend must never create tables.
        "database_create_tables_at_setup": False,
        "database_table_schemas": {"task": settings.schema_name, "group": settings.schema_name},
        "database_engine_options": {
            "pool_pre_ping": True,
            # Behind PgBouncer in transaction pooling mode: no server-side prepared statements.
            **({} if settings.listen else {"connect_args": {"prepare_threshold": None}}),
        },
        # A worker started while Postgres is down waits for it instead of exiting.
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A task running when the connection drops runs on: its message stays leased and is
        # acked when it finishes (pgcelery.broker.settling), so cancelling it would lose work.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_channel_error_retry": True,
        # A producer rides out a short database restart (about 5 s) instead of failing the
        # caller at once; after that apply_async raises and the caller knows nothing was sent.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0.1,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "max_deliveries": settings.max_deliveries,
            "statement_timeout": settings.broker_statement_timeout,
            "polling_interval": settings.polling_interval,
            "listen": settings.listen,
            "schema": settings.schema_name,
            "async_commit": settings.worker_async_commit,
            "events_poll_interval": settings.events_poll_interval,
            "max_message_bytes": settings.max_message_bytes,
            "fair_tenants": settings.fair_tenants,
        },
        # Remote control is on (pgcelery's transport broadcasts through pgcelery_broadcast);
        # task events stay opt-in (-E): they cost nothing until a receiver such as Flower binds.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "broker_heartbeat": 0,
        # Several beat processes may run: one leads (advisory lock) and each run fires once.
        "beat_scheduler": "pgcelery.scheduling.beat:PgScheduler",
        "beat_schedule": default_schedule(settings),
    }


class PgceleryApp(Celery):
    """The Celery app ``create_app`` returns: Celery itself, except that reading its
    configuration refuses a broker or result backend that is not ``DATABASE_URL``'s, and that
    its ``producer_or_acquire`` blocks send a group's messages in one INSERT
    (:mod:`pgcelery.broker.bulk`), and job control: unique sends (:mod:`pgcelery.tasks.unique`)
    and a revoke that deletes a waiting task's message (:mod:`pgcelery.results.revocation`).

    (Celery's ``on_after_configure`` signal swallows what its receivers raise, so the check
    sits where the configuration is loaded: when the app is first used, and again after every
    ``config_from_object``.)
    """

    control_cls = "pgcelery.results.revocation:PgControl"

    def _load_config(self) -> Any:
        conf = super()._load_config()
        settings = getattr(self, "pgcelery_settings", None)
        if isinstance(settings, Settings):
            expected = celery_overrides.Expected(settings.database_url)
            found = celery_overrides.problems_in_environment(
                expected
            ) + celery_overrides.problems_in_conf(expected, lambda name: getattr(conf, name))
            if found:
                self._conf = None  # every later use of the configuration is refused too
                celery_overrides.refuse(found)
        return conf

    @contextmanager
    def producer_or_acquire(self, producer: Any = None) -> Iterator[Any]:
        policy = dict(self.conf.task_publish_retry_policy or {})
        in_caller_transaction = caller_connection() is not None
        with (
            super().producer_or_acquire(producer) as acquired,
            bulk.scope(policy, in_caller_transaction),
        ):
            yield acquired

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        task = options.get("task_type") or self.tasks.get(name)
        limit_options.with_limit_header(task, name, args, kwargs, options)
        request = unique.unique_request(name, options.get("task_type"), args, kwargs, options)
        if request is None:
            return super().send_task(name, args, kwargs, **options)
        result_cls = options.get("result_cls") or self.AsyncResult
        return unique.send_unique(
            super().send_task, result_cls, request, name, args, kwargs, options
        )


def create_app(
    main: str = "pgcelery",
    *,
    include: Iterable[str] = (),
    settings: Settings | None = None,
) -> PgceleryApp:
    """Create a Celery app whose broker and result backend are the PostgreSQL in DATABASE_URL.

    ``include`` names the host's task modules; pgcelery's built-in tasks are always included.
    Every Celery setting pgcelery chooses can be overridden afterwards through ``app.conf``,
    except the broker and the result backend: a ``CELERY_BROKER_URL``-style variable or a config
    module that would move them off ``DATABASE_URL`` raises
    :class:`~pgcelery.exceptions.ConfigurationError` (here, or when the configuration is read).
    """
    settings = settings or Settings()
    expected = celery_overrides.Expected(settings.database_url)
    celery_overrides.refuse(celery_overrides.problems_in_environment(expected))
    # Process-wide: ``sqla+`` URLs are served by pgcelery's transport from here on.
    from pgcelery.broker import transport

    transport.install()
    app = PgceleryApp(
        main,
        broker=dsn.broker_url(settings.database_url),
        backend=dsn.result_backend_url(settings.database_url),
        include=[*BUILTIN_TASK_MODULES, *(m for m in include if m not in BUILTIN_TASK_MODULES)],
        # Task events in batches, and none while nobody listens (pgcelery.observability.events).
        events="pgcelery.observability.events:PgEvents",
        set_as_current=True,
    )
    # Current in every thread, not only this one: Celery's current app is thread-local, so a
    # shared task sent from a web server's thread would otherwise use Celery's default app.
    app.set_default()
    app.pgcelery_settings = settings
    app.conf.update(production_defaults(settings))
    _install_app_hooks(app, settings)
    return app


def _refuse_celery_default_app(app: Celery) -> None:
    """Celery's fallback app (``amqp://localhost``) must not send a task in a process configured
    for pgcelery: that happens when a process imports its tasks but never the module that calls
    ``create_app``. Its ``send_task`` (which ``delay`` and ``apply_async`` use) then raises."""
    if isinstance(app, PgceleryApp) or app.main != "default" or not variable("DATABASE_URL"):
        return
    if app.conf.broker_url:  # configured on purpose
        return

    def refuse(name: str, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError(
            f"task {name!r} was sent through Celery's default app (amqp://localhost), not "
            "through pgcelery's: import the module that calls create_app (for example "
            "myservice.worker) before sending, in every process that sends tasks"
        )

    app.send_task = refuse


connect_on_app_finalize(_refuse_celery_default_app)


def _install_app_hooks(app: Celery, settings: Settings) -> None:
    """Per app: the result backend, tenant scoping, observability, worker heartbeats and the
    workers' pruner."""
    from pgcelery.observability import health, heartbeat, redaction, server, signals
    from pgcelery.observability import logging as json_logging
    from pgcelery.results import backend, dead_letters
    from pgcelery.scheduling import pruning
    from pgcelery.tenancy import signing
    from pgcelery.tenancy import tasks as tenant_tasks

    signing.configure(settings.signing_key)
    backend.install(app)
    dead_letters.install(app)
    tenant_tasks.install()
    unique.install()
    redaction.register_url(settings.database_url)
    json_logging.configure(settings.log_format)
    json_logging.install()
    _quiet_reconnect_warning()
    # The worker's logging setup shows every Celery deprecation warning again: after it.
    celeryd_after_setup.connect(_quiet_reconnect_warning, weak=False, dispatch_uid=__name__)
    celeryd_after_setup.connect(_warn_unsigned, weak=False, dispatch_uid=f"{__name__}.signing")
    signals.install()
    app.pgcelery_observability = True
    health.add_check("listener", _listener_health)
    server.install(app)
    heartbeat.install(app)
    pruning.install(app)


def _quiet_reconnect_warning(**_: Any) -> None:
    """Celery warns on every reconnect that the default of
    ``worker_cancel_long_running_tasks_on_connection_loss`` will change in Celery 6; pgcelery
    sets it on purpose, so the warning would only fill the logs of a worker riding out outages."""
    warnings.filterwarnings(
        "ignore", message=r"\s*In Celery 5\.1 we introduced", category=CPendingDeprecationWarning
    )


def _warn_unsigned(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """A worker that runs tenant tasks without PGCELERY_SIGNING_KEY trusts every tenant header."""
    from pgcelery.tenancy import signing
    from pgcelery.tenancy.tasks import TenantTask

    app = getattr(instance, "app", None)
    if app is None or signing.enabled():
        return
    if any(isinstance(task, TenantTask) for task in app.tasks.values()):
        logging.getLogger(__name__).warning(
            "pgcelery.security.unsigned_tenant_tasks: this worker runs tenant tasks but "
            "PGCELERY_SIGNING_KEY is not set, so it trusts any tenant header written into "
            "kombu_message; set the same key on producers and workers"
        )


def _listener_health(settings: Settings) -> tuple[bool, str]:
    """``/health``'s ``listener`` check: the LISTEN connection of the probed database is up."""
    from pgcelery.broker import listener

    if not settings.listen:
        return True, "poll-only mode (PGCELERY_LISTEN=false): no LISTEN connection"
    return listener.health(dsn.libpq_url(settings.database_url))
