"""Broadcast: fanout and event messages every bound consumer reads, and shared bindings.

Revision ID: 0004_broadcast
Revises: 0003_workers
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.schema.names import BINDING_TABLE, BROADCAST_CHANNEL, BROADCAST_TABLE
from pgcelery.settings import MigrationSettings

revision: str = "0004_broadcast"
down_revision: str | None = "0003_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    op.create_table(
        BROADCAST_TABLE,
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("routing_key", sa.Text(), nullable=False, server_default=sa.text("''")),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.PrimaryKeyConstraint("id"),
        schema=schema,
    )
    op.create_table(
        BINDING_TABLE,
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("routing_key", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "queue", "routing_key"),
        schema=schema,
    )
    op.create_index("ix_pgcelery_binding_expires_at", BINDING_TABLE, ["expires_at"], schema=schema)
    # Readers keep a position (the last id they read) and never look back, so ids must become
    # visible in id order: every insert statement first takes a transaction-scoped advisory
    # lock (before the identity default is evaluated) and holds it until its commit is visible.
    # The AFTER trigger wakes readers; identical payloads in one transaction are sent once.
    op.execute(
        f"""
CREATE FUNCTION {q}.pgcelery_broadcast_order() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended('pgcelery_broadcast:' || TG_TABLE_SCHEMA, 0));
  RETURN NULL;
END
$fn$;
CREATE TRIGGER pgcelery_broadcast_order BEFORE INSERT ON {q}.{BROADCAST_TABLE}
  FOR EACH STATEMENT EXECUTE FUNCTION {q}.pgcelery_broadcast_order();

CREATE FUNCTION {q}.pgcelery_broadcast_notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_notify('{BROADCAST_CHANNEL}', NEW.exchange);
  RETURN NULL;
END
$fn$;
CREATE TRIGGER pgcelery_broadcast_notify AFTER INSERT ON {q}.{BROADCAST_TABLE}
  FOR EACH ROW EXECUTE FUNCTION {q}.pgcelery_broadcast_notify();
"""
    )
    grant(
        tables=[
            (BROADCAST_TABLE, "SELECT, INSERT, DELETE"),
            (BINDING_TABLE, "SELECT, INSERT, UPDATE, DELETE"),
        ],
        sequences=[f"{BROADCAST_TABLE}_id_seq"],
    )


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    op.execute(
        f"""
DROP TRIGGER pgcelery_broadcast_notify ON {q}.{BROADCAST_TABLE};
DROP FUNCTION {q}.pgcelery_broadcast_notify();
DROP TRIGGER pgcelery_broadcast_order ON {q}.{BROADCAST_TABLE};
DROP FUNCTION {q}.pgcelery_broadcast_order();
"""
    )
    op.drop_index("ix_pgcelery_binding_expires_at", table_name=BINDING_TABLE, schema=schema)
    op.drop_table(BINDING_TABLE, schema=schema)
    op.drop_table(BROADCAST_TABLE, schema=schema)
