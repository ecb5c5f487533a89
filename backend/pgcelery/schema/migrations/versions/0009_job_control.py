"""Job control: unique tasks, their hold after finishing, and paused queues.

- ``kombu_message.unique_task`` / ``unique_key``: a message sent with a unique key carries it,
  and a partial unique index lets only one message per (task name, key) exist, pending,
  scheduled or running (pgcelery acks late: a running task's message stays until it finishes).
  Messages without a key are not in the index.
- ``pgcelery_unique_hold``: the key of a task sent with ``unique_for``, and once the task has
  run, until when it stays taken (set by the worker as the task finishes, before its ack);
  pruned by the workers once it ran out. Nothing on the path of other messages: no trigger.
- ``pgcelery_queue_pause``: one row per paused queue, read by every worker.

Revision ID: 0009_job_control
Revises: 0008_dead_letters
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.schema.names import PAUSE_TABLE, UNIQUE_HOLD_TABLE
from pgcelery.settings import MigrationSettings

revision: str = "0009_job_control"
down_revision: str | None = "0008_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    op.add_column("kombu_message", sa.Column("unique_task", sa.Text()), schema=schema)
    op.add_column("kombu_message", sa.Column("unique_key", sa.Text()), schema=schema)
    op.create_index(
        "ix_kombu_message_unique",
        "kombu_message",
        ["unique_task", "unique_key"],
        unique=True,
        schema=schema,
        postgresql_where=sa.text("unique_key IS NOT NULL"),
    )
    op.create_table(
        UNIQUE_HOLD_TABLE,
        sa.Column("unique_task", sa.Text(), nullable=False),
        sa.Column("unique_key", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("held_until", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("unique_task", "unique_key"),
        schema=schema,
    )
    op.create_index(
        "ix_pgcelery_unique_hold_held_until", UNIQUE_HOLD_TABLE, ["held_until"], schema=schema
    )
    op.create_table(
        PAUSE_TABLE,
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column(
            "paused_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.PrimaryKeyConstraint("queue"),
        schema=schema,
    )
    grant(
        [
            (UNIQUE_HOLD_TABLE, "SELECT, INSERT, UPDATE, DELETE"),
            (PAUSE_TABLE, "SELECT, INSERT, DELETE"),
        ]
    )


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    op.drop_table(PAUSE_TABLE, schema=schema)
    op.drop_index("ix_pgcelery_unique_hold_held_until", UNIQUE_HOLD_TABLE, schema=schema)
    op.drop_table(UNIQUE_HOLD_TABLE, schema=schema)
    op.drop_index("ix_kombu_message_unique", "kombu_message", schema=schema)
    op.drop_column("kombu_message", "unique_key", schema=schema)
    op.drop_column("kombu_message", "unique_task", schema=schema)
