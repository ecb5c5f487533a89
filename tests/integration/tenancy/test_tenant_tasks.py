"""tenant_task on a real worker: refusal, propagation of the ids, and reset after every run."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery import InvalidTenantId, TenantRequired, tenant_context
from pgcelery.exceptions import PayloadInvalid
from tests.support.postgres import libpq
from tests.support.tenant_tasks import (
    plain_observe,
    tenant_fail,
    tenant_observe,
    tenant_retry_once,
    tenant_spawn,
    tenant_with_id,
    typed_autoretry,
)

TIMEOUT = 60


def _messages(database_url: str) -> int:
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM kombu_message").fetchone()
    assert row is not None
    return int(row[0])


def _stored(database_url: str, task_id: str) -> tuple[str, int]:
    with psycopg.connect(libpq(database_url)) as conn:
        row = conn.execute(
            "SELECT status, retries FROM celery_taskmeta WHERE task_id = %s", (task_id,)
        ).fetchone()
    assert row is not None, f"no result stored for {task_id}"
    return row[0], row[1]


def test_delay_without_a_valid_tenant_is_refused_before_publishing(
    tenant_app: Celery, database_url: str, tenants: list[uuid.UUID]
) -> None:
    with pytest.raises(TenantRequired):
        tenant_observe.delay()
    with pytest.raises(InvalidTenantId):
        tenant_observe.delay(tenant_id="tenant-a")
    with pytest.raises(InvalidTenantId):
        tenant_observe.apply_async(kwargs={"tenant_id": 42})
    with pytest.raises(PayloadInvalid, match="amount_cents"):
        typed_autoretry.delay(tenant_id=str(tenants[0]), amount_cents=0)
    assert _messages(database_url) == 0


def test_message_sent_by_name_without_tenant_fails_once_and_the_worker_keeps_running(
    tenant_app: Celery,
    tenant_worker: TestWorkController,
    database_url: str,
    tenants: list[uuid.UUID],
) -> None:
    # autoretry_for=(Exception,) would retry anything the task body raised: not this.
    missing = tenant_app.send_task("tests.tenant.autoretry")
    invalid = tenant_app.send_task("tests.tenant.observe", kwargs={"tenant_id": "not-a-uuid"})
    for result, error in ((missing, TenantRequired), (invalid, InvalidTenantId)):
        result.get(timeout=TIMEOUT, propagate=False)
        assert result.status == "FAILURE"
        assert isinstance(result.result, error)
        assert _stored(database_url, result.id) == ("FAILURE", 0)
    # A tenant id by name, to a function that does not take it, is used and not passed on.
    ok = tenant_app.send_task("tests.tenant.observe", kwargs={"tenant_id": str(tenants[0])})
    assert ok.get(timeout=TIMEOUT)["tenant_id"] == str(tenants[0])
    assert _messages(database_url) == 0


def test_invalid_typed_payload_sent_by_name_fails_without_retry(
    tenant_app: Celery,
    tenant_worker: TestWorkController,
    database_url: str,
    tenants: list[uuid.UUID],
) -> None:
    result = tenant_app.send_task(
        "tests.tenant.typed_autoretry", kwargs={"tenant_id": str(tenants[0]), "amount_cents": -5}
    )
    result.get(timeout=TIMEOUT, propagate=False)
    assert isinstance(result.result, PayloadInvalid)
    assert "amount_cents" in str(result.result)
    assert "-5" not in str(result.result)
    assert _stored(database_url, result.id) == ("FAILURE", 0)
    good = typed_autoretry.delay(tenant_id=str(tenants[0]), amount_cents=5)
    assert good.get(timeout=TIMEOUT) == {"amount_cents": 5, "tenant_id": str(tenants[0])}


def test_ids_flow_from_the_producer_context_to_the_task_and_its_children(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    tenant = str(tenants[2])
    with tenant_context(tenants[2], correlation_id="req-42"):
        spawned = tenant_spawn.delay()
        ping = tenant_app.send_task("housekeeping.ping")
        with_ids = tenant_with_id.delay()
    children = spawned.get(timeout=TIMEOUT)
    for child_id in (children["plain"], children["tenant"]):
        seen = tenant_app.AsyncResult(child_id).get(timeout=TIMEOUT)
        assert (seen["tenant_id"], seen["correlation_id"]) == (tenant, "req-42")
    reply = ping.get(timeout=TIMEOUT)
    assert (reply["tenant_id"], reply["correlation_id"]) == (tenant, "req-42")
    args = with_ids.get(timeout=TIMEOUT)
    assert (args["arg_tenant_id"], args["arg_correlation_id"]) == (tenant, "req-42")


def test_correlation_id_is_generated_when_none_is_given(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    first = tenant_observe.delay(tenant_id=tenants[0], read_notes=False).get(timeout=TIMEOUT)
    second = tenant_observe.delay(tenant_id=tenants[0], read_notes=False).get(timeout=TIMEOUT)
    assert uuid.UUID(first["correlation_id"]) != uuid.UUID(second["correlation_id"])
    plain = tenant_app.send_task("housekeeping.ping").get(timeout=TIMEOUT)
    assert "tenant_id" not in plain
    assert uuid.UUID(plain["correlation_id"])


def test_ids_are_reset_after_failure_and_retry(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    failed = tenant_fail.delay(tenant_id=tenants[0])
    failed.get(timeout=TIMEOUT, propagate=False)
    assert failed.status == "FAILURE"
    after_failure = plain_observe.delay().get(timeout=TIMEOUT)
    assert (after_failure["tenant_id"], after_failure["tenant_guc"]) == (None, "")

    retried = tenant_retry_once.delay(tenant_id=tenants[1]).get(timeout=TIMEOUT)
    assert retried["retries"] == 1
    assert retried["tenant_id"] == str(tenants[1])
    after_retry = plain_observe.delay().get(timeout=TIMEOUT)
    assert (after_retry["tenant_id"], after_retry["rows"], after_retry["tenant_guc"]) == (
        None,
        0,
        "",
    )
