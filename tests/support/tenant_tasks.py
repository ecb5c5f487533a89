"""Tenant-scoped and plain tasks the tenancy tests run on real workers.

They read the ``tenant_notes`` table the RLS fixture creates (see tests/support/rls.py), and
report what the task saw: its contextvars, the GUCs on its connection and the backend pid.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from celery import Task, shared_task
from pydantic import BaseModel, Field

from pgcelery import current_correlation_id, current_tenant_id, tenant_task
from pgcelery.tenancy import db

_SEEN = sa.text(
    "SELECT current_setting('app.current_tenant_id', true) AS tenant_guc,"
    " current_setting('app.correlation_id', true) AS correlation_guc,"
    " pg_backend_pid() AS backend_pid,"
    " (SELECT coalesce(array_agg(DISTINCT tenant_id::text), '{}') FROM tenant_notes) AS tenants,"
    " (SELECT count(*) FROM tenant_notes) AS rows"
)


def observe(read_notes: bool = True) -> dict[str, Any]:
    """What the running code sees: contextvars, GUCs, connection and visible rows."""
    seen: dict[str, Any] = {
        "tenant_id": current_tenant_id(),
        "correlation_id": current_correlation_id(),
        "os_pid": os.getpid(),
    }
    if read_notes:
        with db.connection() as conn:
            row = conn.execute(_SEEN).mappings().one()
        seen.update(
            tenant_guc=row["tenant_guc"],
            correlation_guc=row["correlation_guc"],
            backend_pid=row["backend_pid"],
            tenants=sorted(row["tenants"]),
            rows=row["rows"],
        )
    return seen


@tenant_task(name="tests.tenant.observe")
def tenant_observe(read_notes: bool = True) -> dict[str, Any]:
    return observe(read_notes)


@shared_task(name="tests.plain.observe")
def plain_observe(read_notes: bool = True) -> dict[str, Any]:
    return observe(read_notes)


@tenant_task(name="tests.tenant.with_id")
def tenant_with_id(tenant_id: str, correlation_id: str | None = None) -> dict[str, Any]:
    """Takes the ids as arguments: they are filled in from the context when not passed."""
    return {"arg_tenant_id": tenant_id, "arg_correlation_id": correlation_id, **observe(False)}


@tenant_task(name="tests.tenant.insert_note")
def insert_note(owner: str, body: str) -> dict[str, Any]:
    """Insert a note owned by ``owner`` (which RLS lets through only for the task's tenant)."""
    with db.connection() as conn:
        conn.execute(
            sa.text("INSERT INTO tenant_notes (tenant_id, body) VALUES (:owner, :body)"),
            {"owner": owner, "body": body},
        )
    return observe()


@tenant_task(name="tests.tenant.fail")
def tenant_fail() -> None:
    observe()
    raise RuntimeError("tenant task failed on purpose")


@tenant_task(name="tests.tenant.retry_once", bind=True, max_retries=3)
def tenant_retry_once(self: Task) -> dict[str, Any]:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return {"retries": self.request.retries, **observe()}


@tenant_task(name="tests.tenant.autoretry", autoretry_for=(Exception,), max_retries=3)
def tenant_autoretry() -> None:
    raise RuntimeError("would be retried if the tenant check let it run")


@tenant_task(name="tests.tenant.sleep", soft_time_limit=1)
def tenant_sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # interruptible by the soft time limit's signal
        time.sleep(0.05)


@tenant_task(name="tests.tenant.spawn", bind=True)
def tenant_spawn(self: Task) -> dict[str, str]:
    """Send a plain and a tenant child; their ids should be this task's ids."""
    plain = plain_observe.delay(read_notes=False)
    tenant = tenant_observe.delay(read_notes=False)
    return {"plain": plain.id, "tenant": tenant.id}


class Charge(BaseModel):
    tenant_id: str
    amount_cents: int = Field(ge=1)


@tenant_task(
    name="tests.tenant.typed_autoretry",
    payload=Charge,
    autoretry_for=(Exception,),
    max_retries=3,
)
def typed_autoretry(payload: Charge) -> dict[str, Any]:
    return {"amount_cents": payload.amount_cents, "tenant_id": payload.tenant_id}
