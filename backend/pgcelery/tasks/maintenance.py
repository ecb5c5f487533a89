"""``maintenance.*``: periodic upkeep of pgcelery's own tables, the host's views and tenants.

The global tasks (``refresh_materialized_views``, ``prune_results``) always run with no tenant
set; run them through a role that row-level security does not limit. The tenant tasks
(``tenant_retention``, ``tenant_pii_scrub``) run the handlers the host registered in
:mod:`pgcelery.tasks.maintenance_registry` with the tenant's context applied.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from pgcelery import dsn
from pgcelery.exceptions import ConfigurationError
from pgcelery.results.retention import PRUNE_BATCH, expiry_seconds, prune_expired
from pgcelery.schema.names import Names
from pgcelery.settings import settings_of
from pgcelery.tasks.maintenance_registry import Purpose, handlers
from pgcelery.tenancy.tasks import GlobalTask, tenant_task

log = logging.getLogger(__name__)

# The catalog quotes the name itself (format %I), so no configured text ever reaches SQL.
_VIEW_INFO = """
    SELECT format('%I.%I', n.nspname, c.relname) AS quoted,
           c.relispopulated AS populated,
           EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid
                 AND i.indpred IS NULL AND i.indexprs IS NULL
           ) AS has_unique_index
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = to_regclass(:name) AND c.relkind = 'm'
    """


@shared_task(name="maintenance.refresh_materialized_views", bind=True, base=GlobalTask)
def refresh_materialized_views(self: Task) -> dict[str, list[str]]:
    """Refresh PGCELERY_MATERIALIZED_VIEWS, CONCURRENTLY where a unique index allows it.

    ``CONCURRENTLY`` keeps the view readable during the refresh; Postgres allows it only for a
    populated view with a unique index on plain columns and no WHERE clause.
    """
    # Through pgcelery.db (SQLAlchemy), loaded when this task runs, not by every worker.
    import sqlalchemy as sa

    from pgcelery.tenancy import db

    settings = settings_of(self.app)
    report: dict[str, list[str]] = {"concurrently": [], "blocking": [], "missing": []}
    for name in settings.materialized_views:
        with db.connection(settings) as conn:
            info = conn.execute(sa.text(_VIEW_INFO), {"name": name}).mappings().first()
            if info is None:
                report["missing"].append(name)
                continue
            concurrent = bool(info["populated"] and info["has_unique_index"])
            mode = "CONCURRENTLY " if concurrent else ""
            conn.execute(sa.text(f"REFRESH MATERIALIZED VIEW {mode}{info['quoted']}"))
        report["concurrently" if concurrent else "blocking"].append(name)
        log.info(
            "pgcelery.maintenance.view_refreshed",
            extra={"view": name, "concurrently": concurrent},
        )
    if report["missing"]:
        raise ConfigurationError(
            "PGCELERY_MATERIALIZED_VIEWS names views that do not exist: "
            f"{', '.join(report['missing'])}; create them or remove them from the setting "
            f"(refreshed: {', '.join(report['concurrently'] + report['blocking']) or 'none'})"
        )
    return report


@shared_task(name="maintenance.prune_results", bind=True, base=GlobalTask)
def prune_results(self: Task, batch_size: int = PRUNE_BATCH) -> dict[str, int]:
    """Delete task and group results older than ``result_expires``, in short batches.

    The same deletion every worker's pruner runs without beat (``PGCELERY_PRUNE_INTERVAL``);
    see :mod:`pgcelery.results.retention`.
    """
    settings = settings_of(self.app)
    counts = prune_expired(
        dsn.libpq_url(settings.sync_url),
        Names(settings.schema_name),
        expiry_seconds(self.app.conf.result_expires),
        batch_size,
    )
    log.info("pgcelery.maintenance.results_pruned", extra=counts)
    return counts


def _run_handlers(purpose: Purpose, tenant_id: str, options: dict[str, Any]) -> dict[str, Any]:
    registered = handlers(purpose)
    if not registered:
        return {
            "status": "noop",
            "tenant_id": tenant_id,
            "reason": f"no {purpose} handler registered; register one with "
            f"pgcelery.maintenance_registry.{purpose}_handler",
            "handlers": {},
        }
    results: dict[str, Any] = {}
    for name, handler in registered:
        results[name] = handler(tenant_id, **options)
        log.info(
            "pgcelery.maintenance.handler_ran",
            extra={"purpose": purpose, "handler": name, "tenant_id": tenant_id},
        )
    return {"status": "ok", "tenant_id": tenant_id, "handlers": results}


@tenant_task(name="maintenance.tenant_retention")
def tenant_retention(tenant_id: str, **options: Any) -> dict[str, Any]:
    """Run the host's retention handlers for one tenant, with its context applied."""
    return _run_handlers("retention", tenant_id, options)


@tenant_task(name="maintenance.tenant_pii_scrub")
def tenant_pii_scrub(tenant_id: str, **options: Any) -> dict[str, Any]:
    """Run the host's PII-scrubbing handlers for one tenant, with its context applied."""
    return _run_handlers("pii_scrub", tenant_id, options)
