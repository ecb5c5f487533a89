"""A typed, budgeted tenant task: the pattern for work that spends money on a tenant's behalf.

The payload names the tenant, an optional correlation id and the most the caller agrees to
spend. The task prices the work first and refuses, with
:class:`~pgcelery.exceptions.BudgetExceeded`, anything over budget, before doing any of it.
Neither an invalid payload nor an exceeded budget is retried: both would fail the same way.

    from pgcelery.examples.budgeted import summarise

    summarise.delay(tenant_id=tenant, documents=["…", "…"], max_cost_cents=50)
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from pgcelery.exceptions import BudgetExceeded, PayloadInvalid, TenancyError
from pgcelery.tenancy.scope import current_correlation_id, current_tenant_id
from pgcelery.tenancy.tasks import tenant_task

#: Price of summarising one document, and of each started thousand characters of it.
CENTS_PER_DOCUMENT = 2
CENTS_PER_THOUSAND_CHARACTERS = 1


class SummariseRequest(BaseModel):
    """What the caller asks for and the most it agrees to pay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: UUID
    correlation_id: str | None = Field(default=None, max_length=200)
    documents: list[str] = Field(min_length=1, max_length=100)
    max_cost_cents: int = Field(ge=0)


def cost_cents(documents: list[str]) -> int:
    """What summarising ``documents`` costs, in cents."""
    return sum(
        CENTS_PER_DOCUMENT + CENTS_PER_THOUSAND_CHARACTERS * -(-len(text) // 1000)
        for text in documents
    )


@tenant_task(
    name="examples.budgeted.summarise",
    payload=SummariseRequest,
    throws=(TenancyError, PayloadInvalid, BudgetExceeded),
)
def summarise(payload: SummariseRequest) -> dict[str, Any]:
    """Summarise each document (here: its first sentence) within the tenant's budget."""
    cost = cost_cents(payload.documents)
    if cost > payload.max_cost_cents:
        raise BudgetExceeded(
            f"summarising {len(payload.documents)} documents costs {cost} cents, more than "
            f"max_cost_cents={payload.max_cost_cents}: raise the budget or send fewer documents"
        )
    return {
        "tenant_id": str(payload.tenant_id),
        "correlation_id": payload.correlation_id,
        "context_tenant_id": current_tenant_id(),
        "context_correlation_id": current_correlation_id(),
        "cost_cents": cost,
        "summaries": [text.split(".", 1)[0].strip() for text in payload.documents],
    }
