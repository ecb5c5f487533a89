"""The shipped example of a typed, budgeted tenant task, run on a real worker."""

from __future__ import annotations

import uuid

import pytest
from celery import Celery
from celery.contrib.testing.worker import TestWorkController

from pgcelery import tenant_context
from pgcelery.examples.budgeted import SummariseRequest, summarise
from pgcelery.exceptions import BudgetExceeded, PayloadInvalid

TIMEOUT = 60


def test_work_within_budget_runs_with_the_tenants_ids(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    with tenant_context(tenants[0], correlation_id="order-7"):
        result = summarise.delay(documents=["First. Second.", "Only one"], max_cost_cents=10)
    reply = result.get(timeout=TIMEOUT)
    assert reply["cost_cents"] == 6
    assert reply["summaries"] == ["First", "Only one"]
    assert reply["tenant_id"] == reply["context_tenant_id"] == str(tenants[0])
    assert reply["correlation_id"] == reply["context_correlation_id"] == "order-7"


def test_a_model_instance_is_accepted_as_the_payload(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    request = SummariseRequest(tenant_id=tenants[1], documents=["A."], max_cost_cents=3)
    reply = summarise.delay(request).get(timeout=TIMEOUT)
    assert reply["tenant_id"] == str(tenants[1])
    assert uuid.UUID(reply["correlation_id"])


def test_work_over_budget_is_refused_and_not_retried(
    tenant_app: Celery, tenant_worker: TestWorkController, tenants: list[uuid.UUID]
) -> None:
    result = summarise.delay(tenant_id=tenants[0], documents=["x" * 5000], max_cost_cents=6)
    result.get(timeout=TIMEOUT, propagate=False)
    assert result.status == "FAILURE"
    assert isinstance(result.result, BudgetExceeded)
    assert "costs 7 cents" in str(result.result)


def test_invalid_payload_names_the_fields(tenant_app: Celery, tenants: list[uuid.UUID]) -> None:
    with pytest.raises(PayloadInvalid) as caught:
        summarise.delay(tenant_id=tenants[0], documents=[], max_cost_cents=-1, colour="red")
    message = str(caught.value)
    for field in ("documents", "max_cost_cents", "colour"):
        assert field in message
