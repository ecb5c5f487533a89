"""``housekeeping.*``: tasks that check a worker is alive and wired up."""

from __future__ import annotations

import socket
from typing import Any

from celery import Task, shared_task

from pgcelery.tenancy.scope import current_correlation_id, current_tenant_id


@shared_task(name="housekeeping.ping", bind=True, acks_late=True)
def ping(
    self: Task, tenant_id: str | None = None, correlation_id: str | None = None
) -> dict[str, Any]:
    """Answer with ``status: ok``, the worker's hostname and the tenant and correlation ids.

    The ids are the ones passed as arguments, else the ones the message carried from the
    sender's ``tenant_context`` (the tenant is optional: ping works without one).
    """
    result: dict[str, Any] = {
        "status": "ok",
        "hostname": self.request.hostname or socket.gethostname(),
    }
    tenant = tenant_id if tenant_id is not None else current_tenant_id()
    correlation = correlation_id if correlation_id is not None else current_correlation_id()
    if tenant is not None:
        result["tenant_id"] = str(tenant)
    if correlation is not None:
        result["correlation_id"] = str(correlation)
    return result
