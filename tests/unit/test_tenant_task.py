"""tenant_task as a decorator, and the ids a tenant task runs with when called directly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task, shared_task

from pgcelery import (
    TenantRequired,
    current_correlation_id,
    current_tenant_id,
    tenant_context,
    tenant_task,
)
from pgcelery.exceptions import ConfigurationError
from pgcelery.tenancy.tasks import GlobalTask, TenantTask

A = "6f1f3c39-8a4e-4a65-9a2b-0d7a0e6f3b11"


@tenant_task
def bare() -> tuple[str | None, str | None]:
    return current_tenant_id(), current_correlation_id()


@tenant_task(name="unit.bound", bind=True, max_retries=7)
def bound(self: Task, tenant_id: str) -> dict[str, Any]:
    return {"name": self.name, "max_retries": self.max_retries, "tenant_id": tenant_id}


@tenant_task()
def failing() -> None:
    assert current_tenant_id() is not None
    raise RuntimeError("boom")


@shared_task(name="unit.global", base=GlobalTask)
def global_task() -> str | None:
    return current_tenant_id()


@pytest.fixture(autouse=True)
def app() -> Iterator[Celery]:
    celery_app = Celery("unit-tenancy", set_as_current=True)
    celery_app.finalize()
    yield celery_app
    celery_app.close()


def test_decorator_forms_make_tenant_tasks_with_celerys_options() -> None:
    for task in (bare, bound, failing):
        assert isinstance(task._get_current_object(), TenantTask)
    assert bound(tenant_id=A) == {"name": "unit.bound", "max_retries": 7, "tenant_id": A}


def test_a_direct_call_binds_the_ids_for_the_call_only() -> None:
    tenant, correlation = bare(tenant_id=A)
    assert tenant == A
    assert correlation  # generated
    assert (current_tenant_id(), current_correlation_id()) == (None, None)


def test_a_direct_call_inside_a_context_uses_it() -> None:
    with tenant_context(A, correlation_id="req-9"):
        assert bare() == (A, "req-9")
        assert bound() == {"name": "unit.bound", "max_retries": 7, "tenant_id": A}


def test_a_direct_call_without_a_tenant_is_refused() -> None:
    with pytest.raises(TenantRequired):
        bare()


def test_ids_are_reset_when_the_task_raises() -> None:
    with pytest.raises(RuntimeError):
        failing(tenant_id=A)
    assert current_tenant_id() is None


def test_a_global_task_never_runs_with_a_tenant() -> None:
    with tenant_context(A):
        assert global_task() is None
        assert current_tenant_id() == A


def test_a_base_that_is_not_a_tenant_task_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="TenantTask"):
        tenant_task(base=Task)
