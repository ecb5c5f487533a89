"""pgcelery: production-grade Celery on PostgreSQL alone.

One ``DATABASE_URL``, no Redis, no RabbitMQ. Start with :func:`create_app`.
"""

from __future__ import annotations

from pgcelery import module_aliases
from pgcelery.app import create_app
from pgcelery.broker.pauses import pause_queue, resume_queue
from pgcelery.broker.transactional import enqueue_in, send_in_transaction
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
    db,
    tenant_context,
    tenant_task,
)

# Old import paths (``pgcelery.beat``, ``pgcelery.migrations``, ...) answer with the moved modules.
module_aliases.install()

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
    "db",
    "enqueue_in",
    "pause_queue",
    "resume_queue",
    "send_in_transaction",
    "tenant_context",
    "tenant_task",
]
__version__ = "0.1.0"
