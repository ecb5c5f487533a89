"""Handlers the host registers for pgcelery's per-tenant maintenance tasks.

``maintenance.tenant_retention`` and ``maintenance.tenant_pii_scrub`` know nothing about the
host's tables: they run, in registration order, the handlers registered here for their purpose,
inside the tenant's context (so every ``pgcelery.db`` transaction has the tenant's GUCs and row
level security limits the handler to that tenant's rows).

    from pgcelery.tenancy import db
    from pgcelery.tasks.maintenance_registry import retention_handler

    @retention_handler
    def drop_old_events(tenant_id: str, **options: Any) -> int:
        with db.connection() as conn:
            return conn.execute(sa.text("DELETE FROM events WHERE ..."), {...}).rowcount

A handler returns something JSON-serialisable; the task reports it under the handler's name.
Register handlers in a module the worker imports (one of the app's ``include`` modules).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Literal

Purpose = Literal["retention", "pii_scrub"]
Handler = Callable[..., Any]

PURPOSES: tuple[Purpose, ...] = ("retention", "pii_scrub")

_HANDLERS: dict[Purpose, dict[str, Handler]] = {purpose: {} for purpose in PURPOSES}
_LOCK = threading.Lock()


def register(purpose: Purpose, handler: Handler, name: str | None = None) -> Handler:
    """Register ``handler`` for ``purpose`` under ``name`` (default: module.qualname).

    Registering the same name again replaces the handler, so re-importing a module is harmless.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
    key = name or f"{handler.__module__}.{handler.__qualname__}"
    with _LOCK:
        _HANDLERS[purpose][key] = handler
    return handler


def unregister(purpose: Purpose, name: str) -> None:
    """Remove the handler registered under ``name``; a missing name is not an error."""
    with _LOCK:
        _HANDLERS[purpose].pop(name, None)


def handlers(purpose: Purpose) -> list[tuple[str, Handler]]:
    """The handlers for ``purpose``, in registration order."""
    with _LOCK:
        return list(_HANDLERS[purpose].items())


def retention_handler(handler: Handler) -> Handler:
    """Decorator: run ``handler(tenant_id, **options)`` in ``maintenance.tenant_retention``."""
    return register("retention", handler)


def pii_scrub_handler(handler: Handler) -> Handler:
    """Decorator: run ``handler(tenant_id, **options)`` in ``maintenance.tenant_pii_scrub``."""
    return register("pii_scrub", handler)
