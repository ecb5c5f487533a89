"""Indexes the dashboard's pages read celery_taskmeta through.

Recent results newest first, filtered by state, task name or tenant, page by page (keyset
on ``date_done, id``) stay index scans on a table of millions of results. The tenant index is on
the ``tenant_id`` keyword argument as stored in ``kwargs`` (JSON bytes), read with an immutable
expression that never fails on a value that is not JSON.

Revision ID: 0006_dashboard
Revises: 0005_beat
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.settings import MigrationSettings

revision: str = "0006_dashboard"
down_revision: str | None = "0005_beat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The tenant id in a result's stored kwargs; pgcelery.schema.TENANT_OF_KWARGS must match.
TENANT_OF_KWARGS = (
    '"substring"(encode(kwargs, \'escape\'::text), \'"tenant_id": *"?([^",}]+)\'::text)'
)


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    table = "celery_taskmeta"
    op.create_index(
        "ix_celery_taskmeta_status_date_done", table, ["status", "date_done", "id"], schema=schema
    )
    op.create_index(
        "ix_celery_taskmeta_name_date_done", table, ["name", "date_done", "id"], schema=schema
    )
    op.create_index(
        "ix_celery_taskmeta_tenant_date_done",
        table,
        [sa.text(TENANT_OF_KWARGS), "date_done", "id"],
        schema=schema,
        postgresql_where=sa.text(f"{TENANT_OF_KWARGS} IS NOT NULL"),
    )


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    for name in (
        "ix_celery_taskmeta_tenant_date_done",
        "ix_celery_taskmeta_name_date_done",
        "ix_celery_taskmeta_status_date_done",
    ):
        op.drop_index(name, table_name="celery_taskmeta", schema=schema)
