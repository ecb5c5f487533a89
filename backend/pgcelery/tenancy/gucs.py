"""The tenant and correlation GUCs a transaction of ``pgcelery.db`` starts with, sync and async.

``SELECT set_config(name, value, true)``: transaction-local (a pooled connection never carries
one task's or request's tenant into the next), values as bind parameters, and nothing set for an
id that is not bound. Shared by :mod:`pgcelery.tenancy.db` and :mod:`pgcelery.tenancy.async_db`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa

from pgcelery.settings import Settings
from pgcelery.tenancy.scope import current_scope

_SET_TENANT = sa.text("SELECT set_config(:tenant_guc, :tenant_id, true)")
_SET_BOTH = sa.text(
    "SELECT set_config(:tenant_guc, :tenant_id, true),"
    " set_config(:correlation_guc, :correlation_id, true)"
)
_SET_CORRELATION = sa.text("SELECT set_config(:correlation_guc, :correlation_id, true)")


@dataclass(frozen=True)
class EngineKey:
    """What one engine or pool is made for (a process id, or 0 for per-event-loop pools)."""

    pid: int
    url: str
    pool_size: int
    max_overflow: int
    tenant_guc: str
    correlation_guc: str
    transaction_pooling: bool


def settings_or_current(settings: Settings | None) -> Settings:
    """``settings``, or the current Celery app's."""
    if settings is not None:
        return settings
    from celery import current_app

    from pgcelery.settings import settings_of

    return settings_of(current_app)


def key_for(settings: Settings | None, pid: int) -> EngineKey:
    found = settings_or_current(settings)
    return EngineKey(
        pid=pid,
        url=found.sync_url,
        pool_size=found.db_pool_size,
        max_overflow=found.db_max_overflow,
        tenant_guc=found.tenant_guc,
        correlation_guc=found.correlation_guc,
        transaction_pooling=not found.listen,
    )


def apply_ids(key: EngineKey, connection: sa.Connection) -> None:
    """Set the bound ids on a SQLAlchemy connection's transaction (from its ``begin`` event)."""
    scope = current_scope()
    params: dict[str, Any] = {
        "tenant_guc": key.tenant_guc,
        "tenant_id": scope.tenant_id,
        "correlation_guc": key.correlation_guc,
        "correlation_id": scope.correlation_id,
    }
    if scope.tenant_id is not None and scope.correlation_id is not None:
        connection.execute(_SET_BOTH, params)
    elif scope.tenant_id is not None:
        connection.execute(_SET_TENANT, params)
    elif scope.correlation_id is not None:
        connection.execute(_SET_CORRELATION, params)


async def apply_ids_async(key: EngineKey, conn: psycopg.AsyncConnection[Any]) -> None:
    """Set the bound ids on a psycopg async connection (beginning its transaction)."""
    scope = current_scope()
    params: list[str] = []
    if scope.tenant_id is not None:
        params += [key.tenant_guc, scope.tenant_id]
    if scope.correlation_id is not None:
        params += [key.correlation_guc, scope.correlation_id]
    if params:
        calls = ", ".join(["set_config(%s, %s, true)"] * (len(params) // 2))
        await conn.execute(f"SELECT {calls}", params)
