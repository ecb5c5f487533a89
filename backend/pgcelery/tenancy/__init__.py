"""Tenancy: which tenant a task runs for, carried from producer to worker to the database.

Owns ``scope`` (tenant and correlation ids in contextvars), ``tasks`` (``tenant_task``, the
headers that carry the ids, the worker-side binding), ``db`` (sessions whose transactions set the
tenant GUCs locally, for row-level security; ``async_db`` for event loops, ``gucs`` the settings
both make), ``payloads`` (typed task arguments) and ``signing`` (the HMAC over a message's tenant
headers that workers check).

May import: ``pgcelery.exceptions``, ``settings``, ``dsn`` and ``event_loops``. ``scope`` imports
nothing of pgcelery's but the exceptions, so every other package may read the current ids from
it.
"""

from __future__ import annotations

from pgcelery.tenancy.scope import (
    TenantScope,
    current_correlation_id,
    current_tenant_id,
    tenant_context,
)
from pgcelery.tenancy.tasks import (
    CORRELATION_HEADER,
    TENANT_HEADER,
    GlobalTask,
    TenantTask,
    install,
    tenant_task,
)

__all__ = [
    "CORRELATION_HEADER",
    "TENANT_HEADER",
    "GlobalTask",
    "TenantScope",
    "TenantTask",
    "current_correlation_id",
    "current_tenant_id",
    "install",
    "tenant_context",
    "tenant_task",
]
