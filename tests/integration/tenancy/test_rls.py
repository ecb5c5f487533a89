"""Row-level security through real workers connected as a non-owner role."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery.settings import Settings
from pgcelery.tenancy import db
from tests.integration.tenancy.conftest import notes_of
from tests.support.tenant_tasks import insert_note, plain_observe, tenant_observe

TIMEOUT = 60


def test_tenant_sees_only_its_rows_and_cannot_insert_anothers(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    a, b = tenants[0], tenants[3]
    seen = tenant_observe.delay(tenant_id=a).get(timeout=TIMEOUT)
    assert seen["tenants"] == [str(a)]
    assert seen["rows"] == notes_of(tenants, a)
    assert seen["tenant_guc"] == str(a)

    refused = insert_note.delay(tenant_id=a, owner=str(b), body="smuggled")
    refused.get(timeout=TIMEOUT, propagate=False)
    assert refused.status == "FAILURE"
    assert "row-level security" in str(refused.result)

    allowed = insert_note.delay(tenant_id=a, owner=str(a), body="mine").get(timeout=TIMEOUT)
    assert allowed["tenants"] == [str(a)]
    assert allowed["rows"] == notes_of(tenants, a) + 1
    b_seen = tenant_observe.delay(tenant_id=b).get(timeout=TIMEOUT)
    assert b_seen["rows"] == notes_of(tenants, b)


def test_task_without_tenant_sees_no_rows(
    tenant_app: Celery, tenant_worker: TestWorkController
) -> None:
    seen = plain_observe.delay().get(timeout=TIMEOUT)
    assert seen["tenant_id"] is None
    assert seen["rows"] == 0
    assert not seen["tenant_guc"]


def test_plain_task_after_tenant_task_on_the_same_connection_sees_the_guc_empty(
    tenant_app: Celery,
    tenant_worker: TestWorkController,
    tenant_settings: Settings,
    tenants: list[uuid.UUID],
) -> None:
    assert db.engine(tenant_settings).pool.size() == 1  # type: ignore[attr-defined]
    tenant = tenant_observe.delay(tenant_id=tenants[1]).get(timeout=TIMEOUT)
    plain = plain_observe.delay().get(timeout=TIMEOUT)
    # Same process, same pooled connection (pool of one): the setting existed on it...
    assert plain["os_pid"] == tenant["os_pid"]
    assert plain["backend_pid"] == tenant["backend_pid"]
    # ...and ended with the tenant task's transaction: '' is what a finished local setting reads.
    assert plain["tenant_guc"] == ""
    assert plain["tenant_id"] is None
    assert plain["rows"] == 0
    assert plain["correlation_guc"] == plain["correlation_id"] != tenant["correlation_id"]


def test_interleaved_tasks_of_five_tenants_never_see_each_others_rows(
    tenant_app: Celery,
    tenant_worker: TestWorkController,
    tenant_settings: Settings,
    tenants: list[uuid.UUID],
) -> None:
    assert db.engine(tenant_settings).pool.size() == 1  # type: ignore[attr-defined]
    sent: list[tuple[uuid.UUID | None, Any]] = []
    for i in range(200):
        tenant = tenants[i % len(tenants)]
        sent.append((tenant, tenant_observe.delay(tenant_id=tenant)))
        if i % 10 == 9:
            sent.append((None, plain_observe.delay()))
    backend_pids = set()
    for sender, result in sent:
        seen = result.get(timeout=TIMEOUT)
        backend_pids.add(seen["backend_pid"])
        if sender is None:
            # '' after a tenant task ended on the connection, NULL if none ran on it yet: fair
            # share may claim a global task before the tenants' tasks sent ahead of it.
            assert (seen["tenant_id"], seen["rows"]) == (None, 0)
            assert not seen["tenant_guc"]
        else:
            assert seen["tenant_id"] == seen["tenant_guc"] == str(sender)
            assert seen["tenants"] == [str(sender)]
            assert seen["rows"] == notes_of(tenants, sender)
    assert len(backend_pids) == 1, "all tasks should have shared the one pooled connection"
