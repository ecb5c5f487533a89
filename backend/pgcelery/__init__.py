"""pgcelery: production-grade Celery on PostgreSQL alone.

One ``DATABASE_URL``, no Redis, no RabbitMQ. Start with :func:`create_app`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgcelery import module_aliases
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

if TYPE_CHECKING:
    from pgcelery.broker.async_publish import asend
    from pgcelery.broker.bulk import send_many
    from pgcelery.broker.pauses import pause_queue, resume_queue
    from pgcelery.broker.tenant_weights import set_tenant_weight, tenant_weights
    from pgcelery.broker.transactional import enqueue_in, send_in_transaction
    from pgcelery.event_loops import aclose
    from pgcelery.results.awaiting import aget
    from pgcelery.tenancy import db

#: Imported on first use, so a worker loads none of what only producers, web services and
#: operators call (SQLAlchemy sessions, the async API, job control): a smaller process.
_LAZY = {
    "aclose": "pgcelery.event_loops",
    "aget": "pgcelery.results.awaiting",
    "asend": "pgcelery.broker.async_publish",
    "db": "pgcelery.tenancy.db",
    "enqueue_in": "pgcelery.broker.transactional",
    "pause_queue": "pgcelery.broker.pauses",
    "resume_queue": "pgcelery.broker.pauses",
    "send_in_transaction": "pgcelery.broker.transactional",
    "send_many": "pgcelery.broker.bulk",
    "set_tenant_weight": "pgcelery.broker.tenant_weights",
    "tenant_weights": "pgcelery.broker.tenant_weights",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgcelery' has no attribute {name!r}")
    import importlib

    found = importlib.import_module(module)
    # ``db`` is the module itself (``pgcelery.db.session(...)``); the rest are its functions.
    value = found if name == "db" else getattr(found, name)
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
