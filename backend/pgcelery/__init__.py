"""pgcelery: production-grade Celery on PostgreSQL alone.

One ``DATABASE_URL``, no Redis, no RabbitMQ. Start with :func:`create_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgcelery import module_aliases
from pgcelery.app import create_app
from pgcelery.broker.async_publish import asend
from pgcelery.broker.bulk import send_many
from pgcelery.broker.pauses import pause_queue, resume_queue
from pgcelery.broker.tenant_weights import set_tenant_weight, tenant_weights
from pgcelery.broker.transactional import enqueue_in, send_in_transaction
from pgcelery.event_loops import aclose
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

if TYPE_CHECKING:
    from pgcelery.results.awaiting import aget

#: Imported on first use: the result waiters are not needed by a worker or a sync producer.
_LAZY = {"aget": "pgcelery.results.awaiting"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgcelery' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
    "aclose",
    "aget",
    "asend",
    "create_app",
    "current_correlation_id",
    "current_tenant_id",
    "db",
    "enqueue_in",
    "pause_queue",
    "resume_queue",
    "send_in_transaction",
    "send_many",
    "set_tenant_weight",
    "tenant_context",
    "tenant_task",
    "tenant_weights",
]
__version__ = "0.1.0"
