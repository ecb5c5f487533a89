"""maintenance.tenant_retention and tenant_pii_scrub run host handlers under the tenant's RLS."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery import current_tenant_id
from pgcelery.tasks.maintenance import tenant_pii_scrub, tenant_retention
from pgcelery.tasks.maintenance_registry import register, unregister
from pgcelery.tenancy import db
from tests.integration.tenancy.conftest import notes_of
from tests.support.postgres import libpq

TIMEOUT = 60


def _forget_everything(tenant_id: str, **options: Any) -> dict[str, Any]:
    # No WHERE on the tenant: row-level security alone limits the delete to this tenant.
    with db.connection() as conn:
        deleted = conn.execute(sa.text("DELETE FROM tenant_notes")).rowcount
    return {"deleted": deleted, "context": current_tenant_id(), "options": options}


@pytest.fixture
def retention_handler() -> Iterator[str]:
    name = "tests.forget_everything"
    register("retention", _forget_everything, name=name)
    yield name
    unregister("retention", name)


def _counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(libpq(database_url)) as conn:
        rows = conn.execute(
            "SELECT tenant_id::text, count(*) FROM tenant_notes GROUP BY 1"
        ).fetchall()
    return {tenant: count for tenant, count in rows}


def test_without_handlers_the_tenant_tasks_are_a_clear_noop(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    for task in (tenant_retention, tenant_pii_scrub):
        reply = task.delay(tenant_id=tenants[0]).get(timeout=TIMEOUT)
        assert reply["status"] == "noop"
        assert reply["tenant_id"] == str(tenants[0])
        assert "register one with pgcelery.maintenance_registry" in reply["reason"]


def test_retention_handler_runs_with_the_tenants_context_and_rls(
    tenant_app: Celery,
    tenant_worker: TestWorkController,
    retention_handler: str,
    tenants: list[uuid.UUID],
    database_url: str,
) -> None:
    victim = tenants[2]
    reply = tenant_retention.delay(tenant_id=victim, older_than_days=30).get(timeout=TIMEOUT)
    assert reply["status"] == "ok"
    assert reply["handlers"][retention_handler] == {
        "deleted": notes_of(tenants, victim),
        "context": str(victim),
        "options": {"older_than_days": 30},
    }
    left = _counts(database_url)
    assert str(victim) not in left
    assert left == {str(t): notes_of(tenants, t) for t in tenants if t != victim}
    # The PII task has its own handlers: none registered here.
    assert tenant_pii_scrub.delay(tenant_id=victim).get(timeout=TIMEOUT)["status"] == "noop"
