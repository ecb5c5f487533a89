"""pgcelery's broker: priorities, leases and LISTEN/NOTIFY wake-ups for messages and results.

Revision ID: 0002_broker
Revises: 0001_initial
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from pgcelery.schema.names import MESSAGE_CHANNEL, RESULT_CHANNEL
from pgcelery.settings import MigrationSettings

BIGINT_IDS = ("kombu_message", "celery_taskmeta", "celery_tasksetmeta")

revision: str = "0002_broker"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    # kombu's and Celery's models declare 32-bit ids: at 1,000 tasks/s the sequences would pass
    # 2^31 within weeks. The sequences are already 64-bit; widen the columns.
    for table in BIGINT_IDS:
        op.alter_column(table, "id", type_=sa.BigInteger(), schema=schema)
    # Leave priority without a default: the trigger below fills it from the payload for
    # producers that do not set it (stock kombu), and pgcelery's transport always sets it.
    op.add_column("kombu_message", sa.Column("priority", sa.SmallInteger()), schema=schema)
    op.add_column(
        "kombu_message",
        sa.Column(
            "visible_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        schema=schema,
    )
    op.add_column(
        "kombu_message", sa.Column("lease_token", postgresql.UUID(as_uuid=True)), schema=schema
    )
    op.add_column(
        "kombu_message",
        sa.Column("deliveries", sa.Integer(), nullable=False, server_default=sa.text("0")),
        schema=schema,
    )
    op.execute(f"UPDATE {q}.kombu_message SET priority = 0 WHERE priority IS NULL")
    op.alter_column("kombu_message", "priority", nullable=False, schema=schema)
    op.create_index(
        "ix_kombu_message_claim",
        "kombu_message",
        ["queue_id", sa.text("priority DESC"), "id"],
        schema=schema,
    )
    op.execute(
        f"""
CREATE FUNCTION {q}.pgcelery_message_defaults() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  IF NEW.priority IS NULL THEN
    BEGIN
      NEW.priority := least(greatest(
        coalesce((NEW.payload::jsonb #>> '{{properties,priority}}')::int, 0), 0), 9);
    EXCEPTION WHEN others THEN
      NEW.priority := 0;
    END;
  END IF;
  RETURN NEW;
END
$fn$;
CREATE TRIGGER pgcelery_message_defaults BEFORE INSERT ON {q}.kombu_message
  FOR EACH ROW WHEN (NEW.priority IS NULL)
  EXECUTE FUNCTION {q}.pgcelery_message_defaults();

CREATE FUNCTION {q}.pgcelery_message_notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_notify('{MESSAGE_CHANNEL}', NEW.queue_id::text);
  RETURN NULL;
END
$fn$;
CREATE TRIGGER pgcelery_message_notify AFTER INSERT ON {q}.kombu_message
  FOR EACH ROW EXECUTE FUNCTION {q}.pgcelery_message_notify();

CREATE FUNCTION {q}.pgcelery_result_notify() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_notify('{RESULT_CHANNEL}', NEW.task_id);
  RETURN NULL;
END
$fn$;
CREATE TRIGGER pgcelery_result_notify AFTER INSERT OR UPDATE OF status ON {q}.celery_taskmeta
  FOR EACH ROW WHEN (NEW.status IN ('SUCCESS', 'FAILURE', 'REVOKED'))
  EXECUTE FUNCTION {q}.pgcelery_result_notify();
"""
    )


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    op.execute(
        f"""
DROP TRIGGER pgcelery_result_notify ON {q}.celery_taskmeta;
DROP FUNCTION {q}.pgcelery_result_notify();
DROP TRIGGER pgcelery_message_notify ON {q}.kombu_message;
DROP FUNCTION {q}.pgcelery_message_notify();
DROP TRIGGER pgcelery_message_defaults ON {q}.kombu_message;
DROP FUNCTION {q}.pgcelery_message_defaults();
"""
    )
    op.drop_index("ix_kombu_message_claim", table_name="kombu_message", schema=schema)
    for column in ("deliveries", "lease_token", "visible_at", "priority"):
        op.drop_column("kombu_message", column, schema=schema)
    for table in BIGINT_IDS:
        op.alter_column(table, "id", type_=sa.Integer(), schema=schema)
