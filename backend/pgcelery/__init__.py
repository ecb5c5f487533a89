"""pgcelery: production-grade Celery on PostgreSQL alone.

One ``DATABASE_URL``, no Redis, no RabbitMQ. Start with :func:`create_app`.
"""

from __future__ import annotations

from pgcelery.app import create_app
from pgcelery.exceptions import (
    ConfigurationError,
    InvalidTenantId,
    PgceleryError,
    SchemaBehind,
    SchemaError,
    SchemaNotMigrated,
    TenantRequired,
)
from pgcelery.tenancy import (
    current_correlation_id,
    current_tenant_id,
    tenant_context,
    tenant_task,
)
from pgcelery.transactional import enqueue_in, send_in_transaction

__all__ = [
    "ConfigurationError",
    "InvalidTenantId",
    "PgceleryError",
    "SchemaBehind",
    "SchemaError",
    "SchemaNotMigrated",
    "TenantRequired",
    "create_app",
    "current_correlation_id",
    "current_tenant_id",
    "enqueue_in",
    "send_in_transaction",
    "tenant_context",
    "tenant_task",
]
__version__ = "0.1.0"
