"""Tenant weights for the fair claim: a tenant of weight 3 gets three claims to another's one.

Stored in ``pgcelery_tenant_weight`` (revision ``0012_fair_limits``) and read by every claim
(:mod:`pgcelery.broker.claim_sql`), so a change holds for the whole fleet from the next claim.
A tenant without a row has weight 1; setting weight 1 deletes the row, so the table holds only
the tenants an operator chose, and never grows on its own.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from pgcelery import dsn
from pgcelery.exceptions import ConfigurationError
from pgcelery.schema.names import Names
from pgcelery.settings import Settings

#: The largest weight (the table's check constraint says the same).
MAX_WEIGHT = 1000


def _checked(tenant_id: object, weight: object) -> tuple[str, int]:
    try:
        tenant = str(uuid.UUID(str(tenant_id)))
    except ValueError:
        raise ConfigurationError(
            f"set_tenant_weight: tenant_id must be a UUID, got {tenant_id!r}"
        ) from None
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise ConfigurationError(
            f"set_tenant_weight: weight must be a whole number from 1 to {MAX_WEIGHT}, "
            f"got {weight!r}"
        )
    return tenant, weight


def store_weight(conn: psycopg.Connection[Any], names: Names, tenant_id: str, weight: int) -> None:
    tenant, weight = _checked(tenant_id, weight)
    if weight == 1:
        conn.execute(f"DELETE FROM {names.tenant_weight} WHERE tenant_id = %s", (tenant,))
        return
    conn.execute(
        f"INSERT INTO {names.tenant_weight} (tenant_id, weight) VALUES (%s, %s)"
        " ON CONFLICT (tenant_id) DO UPDATE SET weight = EXCLUDED.weight, updated_at = now()",
        (tenant, weight),
    )


def set_tenant_weight(
    tenant_id: str | uuid.UUID, weight: int, settings: Settings | None = None
) -> None:
    """Give ``tenant_id`` ``weight`` times the share of claims of a tenant of weight 1 (from
    1 to 1000; 1 is the default). Reads ``DATABASE_URL`` unless ``settings`` are given."""
    settings = settings or Settings()
    with psycopg.connect(dsn.libpq_url(settings.database_url), autocommit=True) as conn:
        store_weight(conn, Names(settings.schema_name), str(tenant_id), weight)


def tenant_weights(settings: Settings | None = None) -> dict[str, int]:
    """Every tenant whose weight is not 1, with its weight."""
    settings = settings or Settings()
    names = Names(settings.schema_name)
    with psycopg.connect(dsn.libpq_url(settings.database_url), autocommit=True) as conn:
        rows = conn.execute(f"SELECT tenant_id, weight FROM {names.tenant_weight}").fetchall()
    return {tenant: weight for tenant, weight in rows}
