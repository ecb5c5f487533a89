"""The stock tables: kombu's queue/message and Celery's task/group results, as their models say.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.settings import MigrationSettings

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("pgcelery",)
depends_on: str | Sequence[str] | None = None

SEQUENCES = ("queue_id_sequence", "message_id_sequence", "task_id_sequence", "taskset_id_sequence")


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    if schema != "public":
        op.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    for name in SEQUENCES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(name, schema=schema)))
    op.create_table(
        "kombu_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        schema=schema,
    )
    op.create_table(
        "kombu_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("visible", sa.Boolean(), nullable=True),
        sa.Column("timestamp", sa.DateTime(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("version", sa.SmallInteger(), nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["queue_id"], [f"{schema}.kombu_queue.id"], name="FK_kombu_message_queue"
        ),
        sa.PrimaryKeyConstraint("id"),
        schema=schema,
    )
    op.create_index("ix_kombu_message_visible", "kombu_message", ["visible"], schema=schema)
    op.create_index("ix_kombu_message_timestamp", "kombu_message", ["timestamp"], schema=schema)
    op.create_index(
        "ix_kombu_message_timestamp_id", "kombu_message", ["timestamp", "id"], schema=schema
    )
    op.create_table(
        "celery_taskmeta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.String(length=155), nullable=True),
        sa.Column("status", sa.String(length=50), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("date_done", sa.DateTime(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("children", sa.LargeBinary(), nullable=True),
        sa.Column("name", sa.String(length=155), nullable=True),
        sa.Column("args", sa.LargeBinary(), nullable=True),
        sa.Column("kwargs", sa.LargeBinary(), nullable=True),
        sa.Column("worker", sa.String(length=155), nullable=True),
        sa.Column("retries", sa.Integer(), nullable=True),
        sa.Column("queue", sa.String(length=155), nullable=True),
        sa.Column("stamps", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id"),
        schema=schema,
    )
    op.create_index("ix_celery_taskmeta_date_done", "celery_taskmeta", ["date_done"], schema=schema)
    op.create_table(
        "celery_tasksetmeta",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("taskset_id", sa.String(length=155), nullable=True),
        sa.Column("result", sa.LargeBinary(), nullable=True),
        sa.Column("date_done", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("taskset_id"),
        schema=schema,
    )
    op.create_index(
        "ix_celery_tasksetmeta_date_done", "celery_tasksetmeta", ["date_done"], schema=schema
    )
    grant(
        tables=[
            # Producers create queues on first use; nothing ever deletes or renames one.
            ("kombu_queue", "SELECT, INSERT"),
            ("kombu_message", "SELECT, INSERT, UPDATE, DELETE"),
            ("celery_taskmeta", "SELECT, INSERT, UPDATE, DELETE"),
            ("celery_tasksetmeta", "SELECT, INSERT, UPDATE, DELETE"),
        ],
        sequences=SEQUENCES,
        version_table=True,
    )


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    op.drop_table("celery_tasksetmeta", schema=schema)
    op.drop_table("celery_taskmeta", schema=schema)
    op.drop_table("kombu_message", schema=schema)
    op.drop_table("kombu_queue", schema=schema)
    for name in reversed(SEQUENCES):
        op.execute(sa.schema.DropSequence(sa.Sequence(name, schema=schema)))
