"""Chords joined in the database: a counter row per chord, one row per header task counted.

Celery joins a chord on a database result backend with ``celery.chord_unlock``, a task that
polls the header's results every second. pgcelery's backend joins it the way Celery's Redis
backend does, natively: each header task's result counts itself in ``pgcelery_chord_part``
(once, however often the task is delivered) and bumps ``pgcelery_chord.done`` in the same
transaction that stores the result; whoever sees ``done`` reach ``size`` fires the body, once,
guarded by ``fired_at`` under the chord row's lock (:mod:`pgcelery.results.chords`).

Revision ID: 0011_chords
Revises: 0010_security_roles
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.schema.names import CHORD_PART_TABLE, CHORD_TABLE
from pgcelery.schema.roles import CHORD_RIGHTS
from pgcelery.settings import MigrationSettings

revision: str = "0011_chords"
down_revision: str | None = "0010_security_roles"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    op.create_table(
        CHORD_TABLE,
        sa.Column("group_id", sa.Text(), nullable=False),
        # Set by Celery's set_chord_size once the header is published; NULL never fires.
        sa.Column("size", sa.Integer()),
        sa.Column("done", sa.Integer(), nullable=False, server_default=sa.text("0")),
        # The header's GroupResult.as_tuple(), JSON: the members the body's argument lists.
        sa.Column("header", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("fired_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("group_id"),
        schema=schema,
    )
    op.create_index("ix_pgcelery_chord_created_at", CHORD_TABLE, ["created_at"], schema=schema)
    op.create_table(
        CHORD_PART_TABLE,
        sa.Column("group_id", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"], [f"{schema}.{CHORD_TABLE}.group_id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("group_id", "task_id"),
        schema=schema,
    )
    # Producers create chords; workers count parts, fire bodies and prune old chords. With no
    # PGCELERY_*_ROLE set, the app role holds every set.
    for rights, role in MigrationSettings().roles().items():
        grant(CHORD_RIGHTS[rights], to=role)


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    op.drop_table(CHORD_PART_TABLE, schema=schema)
    op.drop_index("ix_pgcelery_chord_created_at", CHORD_TABLE, schema=schema)
    op.drop_table(CHORD_TABLE, schema=schema)
