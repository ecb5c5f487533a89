"""Dead letters: messages delivered too often without an ack leave the queue for a table.

Also grants the app role DELETE on ``kombu_queue`` and ``pgcelery_beat``: the workers prune
the rows of unused reply/event queues and of removed beat entries without beat.

A task that kills its worker (a segfault, the OOM killer, ``os._exit``) is never acked; its
lease runs out and it is delivered again, for ever. ``kombu_message.deliveries`` counts the
deliveries; past ``PGCELERY_MAX_DELIVERIES`` the worker moves the message here instead of
running it. ``claimed_by`` remembers which worker process claimed a message last: the one that
died with it, for the dead letter's ``last_worker``.

Revision ID: 0008_dead_letters
Revises: 0007_scheduled_messages
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.schema.names import BEAT_TABLE, DEAD_LETTER_TABLE, QUEUE_TABLE
from pgcelery.settings import MigrationSettings

revision: str = "0008_dead_letters"
down_revision: str | None = "0007_scheduled_messages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    op.add_column("kombu_message", sa.Column("claimed_by", sa.Text()), schema=schema)
    op.create_table(
        DEAD_LETTER_TABLE,
        # The message's own id: a message is buried once, and replay gives it a new one.
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Text()),
        sa.Column("task_name", sa.Text()),
        sa.Column("last_worker", sa.Text()),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "dead_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.PrimaryKeyConstraint("id"),
        schema=schema,
    )
    op.create_index(
        "ix_pgcelery_dead_letter_dead_at", DEAD_LETTER_TABLE, ["dead_at"], schema=schema
    )
    # The workers' prune pass (pgcelery.scheduling.pruning) deletes unused reply and event
    # queue rows and the rows of removed beat entries, as the app role.
    grant(
        [
            (DEAD_LETTER_TABLE, "SELECT, INSERT, DELETE"),
            (QUEUE_TABLE, "DELETE"),
            (BEAT_TABLE, "DELETE"),
        ]
    )


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    op.drop_index("ix_pgcelery_dead_letter_dead_at", DEAD_LETTER_TABLE, schema=schema)
    op.drop_table(DEAD_LETTER_TABLE, schema=schema)
    op.drop_column("kombu_message", "claimed_by", schema=schema)
