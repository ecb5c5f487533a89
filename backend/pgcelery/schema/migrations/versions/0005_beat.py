"""Beat state: when each periodic task last fired, for exactly-once runs across beat processes.

Revision ID: 0005_beat
Revises: 0004_broadcast
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.settings import MigrationSettings

revision: str = "0005_beat"
down_revision: str | None = "0004_broadcast"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    op.create_table(
        "pgcelery_beat",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total_run_count", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_task_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
        schema=schema,
    )
    grant(tables=[("pgcelery_beat", "SELECT, INSERT, UPDATE")])


def downgrade() -> None:
    op.drop_table("pgcelery_beat", schema=MigrationSettings().schema_name)
