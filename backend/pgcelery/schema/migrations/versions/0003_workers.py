"""Worker heartbeats, and autovacuum tuned for queue tables.

Revision ID: 0003_workers
Revises: 0002_broker
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pgcelery.schema.migrations.grants import grant
from pgcelery.settings import MigrationSettings

revision: str = "0003_workers"
down_revision: str | None = "0002_broker"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A queue table is mostly dead rows between vacuums: every message is inserted, updated
# (claimed) and deleted within seconds. Vacuum after a fixed number of changes rather than a
# fraction of a table whose live size is near zero, and without cost-based sleeping.
QUEUE_STORAGE = {
    # Room on each page for a claim's new row version: claims touch no indexed column, so with
    # free space they are HOT updates (no new index entries).
    "fillfactor": "70",
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_vacuum_insert_threshold": "1000",
    "autovacuum_vacuum_cost_delay": "0",
    "autovacuum_analyze_scale_factor": "0.05",
}


def _options(values: dict[str, str]) -> str:
    return ", ".join(f"{key} = {value}" for key, value in values.items())


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    op.create_table(
        "pgcelery_worker",
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("pool", sa.Text(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column(
            "queues", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'")
        ),
        sa.Column("tasks_in_flight", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("processed", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("version", sa.Text(), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column(
            "last_seen", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.PrimaryKeyConstraint("hostname"),
        schema=schema,
    )
    op.create_index("ix_pgcelery_worker_last_seen", "pgcelery_worker", ["last_seen"], schema=schema)
    q = f'"{schema}"'
    op.execute(f"ALTER TABLE {q}.kombu_message SET ({_options(QUEUE_STORAGE)})")
    grant(tables=[("pgcelery_worker", "SELECT, INSERT, UPDATE, DELETE")])


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    op.execute(f"ALTER TABLE {q}.kombu_message RESET ({', '.join(QUEUE_STORAGE)})")
    op.drop_index("ix_pgcelery_worker_last_seen", table_name="pgcelery_worker", schema=schema)
    op.drop_table("pgcelery_worker", schema=schema)
