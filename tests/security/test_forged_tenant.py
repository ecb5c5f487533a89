"""Attack: a message copied in ``kombu_message`` with another tenant's id runs as that tenant.

An attacker with SQL as the app (or producer) role copies a real message, names tenant B in its
``pgcelery_tenant_id`` header (or its ``tenant_id`` argument) and inserts it. With
``PGCELERY_SIGNING_KEY`` set the worker refuses it: FAILURE with ForgedMessage, never run, never
retried; a plain task carrying a forged tenant runs without it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from pgcelery import tenant_context
from pgcelery.exceptions import ForgedMessage
from pgcelery.tenancy import signing
from tests.security import tasks
from tests.security.conftest import copy_as, edit_body, insert_message, last_message
from tests.support.workers import solo_worker


def _failed_with(result: AsyncResult, exception: type[BaseException]) -> None:
    result.get(timeout=60, propagate=False)
    assert result.state == "FAILURE", result.state
    assert type(result.result).__name__ == exception.__name__, repr(result.result)


@pytest.mark.parametrize("attack", ["other tenant", "signature removed", "signature of another"])
def test_a_copied_message_naming_another_tenant_is_refused(
    signed_app: Celery, database_url: str, attack: str
) -> None:
    tasks.RUNS.clear()
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    real = signed_app.tasks["tests.security.whoami"].delay(tenant_id=tenant_a)
    queue_id, payload = last_message(database_url)
    assert payload["headers"][signing.SIGNATURE_HEADER].startswith("v1:")
    changes: dict[str, Any] = {"pgcelery_tenant_id": tenant_b}
    if attack == "signature removed":
        changes[signing.SIGNATURE_HEADER] = None
    elif attack == "signature of another":
        # A valid signature, but of the real message (another task id).
        changes[signing.SIGNATURE_HEADER] = payload["headers"][signing.SIGNATURE_HEADER]
    forged_id, forged = copy_as(payload, **changes)
    insert_message(database_url, queue_id, forged)

    with solo_worker(signed_app):
        assert real.get(timeout=60) == tenant_a
        _failed_with(AsyncResult(forged_id, app=signed_app), ForgedMessage)
    assert [("whoami", tenant_a)] == tasks.RUNS, "the forged message must never run"


def test_a_tenant_argument_that_contradicts_the_signed_header_is_refused(
    signed_app: Celery, database_url: str
) -> None:
    tasks.RUNS.clear()
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    signed_app.tasks["tests.security.whoami_arg"].delay(tenant_id=tenant_a)
    queue_id, payload = last_message(database_url)
    forged_id, forged = copy_as(payload)
    edit_body(forged, tenant_id=tenant_b)
    # The copy keeps the real message's signature: re-sign what an attacker cannot.
    forged["headers"][signing.SIGNATURE_HEADER] = payload["headers"][signing.SIGNATURE_HEADER]
    insert_message(database_url, queue_id, forged)

    with solo_worker(signed_app):
        _failed_with(AsyncResult(forged_id, app=signed_app), ForgedMessage)
    assert ("whoami_arg", tenant_b) not in tasks.RUNS


def test_a_forged_message_is_never_retried(signed_app: Celery, database_url: str) -> None:
    tasks.RUNS.clear()
    signed_app.tasks["tests.security.whoami_retrying"].delay(tenant_id=str(uuid.uuid4()))
    queue_id, payload = last_message(database_url)
    forged_tenant = str(uuid.uuid4())
    forged_id, forged = copy_as(payload, pgcelery_tenant_id=forged_tenant)
    insert_message(database_url, queue_id, forged)
    with solo_worker(signed_app):
        _failed_with(AsyncResult(forged_id, app=signed_app), ForgedMessage)
    assert ("whoami_retrying", forged_tenant) not in tasks.RUNS


def test_a_plain_task_never_runs_as_a_forged_tenant(signed_app: Celery, database_url: str) -> None:
    tasks.RUNS.clear()
    tenant_a, tenant_b = str(uuid.uuid4()), str(uuid.uuid4())
    plain = signed_app.tasks["tests.security.plain_whoami"]
    with tenant_context(tenant_a):
        real = plain.delay()
    queue_id, payload = last_message(database_url)
    forged_id, forged = copy_as(payload, pgcelery_tenant_id=tenant_b)
    insert_message(database_url, queue_id, forged)
    with solo_worker(signed_app):
        assert real.get(timeout=60) == tenant_a
        assert AsyncResult(forged_id, app=signed_app).get(timeout=60) is None


def test_global_tasks_from_a_stock_producer_still_run(
    signed_app: Celery, database_url: str
) -> None:
    """The signature guards tenant headers: a message without one (a stock Celery producer,
    a global task) runs unsigned, as before."""
    signed_app.tasks["tests.security.echo"].delay("abc")
    queue_id, payload = last_message(database_url)
    task_id, stock = copy_as(payload, **{signing.SIGNATURE_HEADER: None})
    insert_message(database_url, queue_id, stock)
    with solo_worker(signed_app):
        assert AsyncResult(task_id, app=signed_app).get(timeout=60) == 3


def test_a_tenant_task_called_directly_on_a_signing_worker_runs(signed_app: Celery) -> None:
    """A direct call is no message: nothing to sign, nothing refused."""
    tenant = str(uuid.uuid4())
    with tenant_context(tenant):
        assert signed_app.tasks["tests.security.whoami"]() == tenant
