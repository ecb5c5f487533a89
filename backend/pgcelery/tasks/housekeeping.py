"""``housekeeping.*``: tasks that check a worker is alive and wired up."""

from __future__ import annotations

import socket
from typing import Any

from celery import Task, shared_task


@shared_task(name="housekeeping.ping", bind=True, acks_late=True)
def ping(
    self: Task, tenant_id: str | None = None, correlation_id: str | None = None
) -> dict[str, Any]:
    """Answer with ``status: ok``, the worker's hostname and the ids the caller gave."""
    result: dict[str, Any] = {
        "status": "ok",
        "hostname": self.request.hostname or socket.gethostname(),
    }
    if tenant_id is not None:
        result["tenant_id"] = str(tenant_id)
    if correlation_id is not None:
        result["correlation_id"] = str(correlation_id)
    return result
