"""ETA and countdown messages wait in the table, invisible until due, holding no lease.

pgcelery's transport stores a message whose Celery ``eta`` header lies in the future with
``visible_at`` at that time. This revision makes the insert trigger that fills defaults for
producers using kombu's stock SQLAlchemy transport (no ``priority``) do the same, so their
scheduled messages are not claimed, and then hoarded, by the first worker either.

Revision ID: 0007_scheduled_messages
Revises: 0006_dashboard
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from pgcelery.settings import MigrationSettings

revision: str = "0007_scheduled_messages"
down_revision: str | None = "0006_dashboard"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PRIORITY = """
  IF NEW.priority IS NULL THEN
    BEGIN
      NEW.priority := least(greatest(
        coalesce((NEW.payload::jsonb #>> '{properties,priority}')::int, 0), 0), 9);
    EXCEPTION WHEN others THEN
      NEW.priority := 0;
    END;
  END IF;"""

_ETA = """
  BEGIN
    NEW.visible_at := greatest(
      NEW.visible_at, coalesce((NEW.payload::jsonb #>> '{headers,eta}')::timestamptz, now()));
  EXCEPTION WHEN others THEN
    NULL;  -- no readable eta: due at once, as before
  END;"""


def _defaults(q: str, body: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {q}.pgcelery_message_defaults() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN{body}
  RETURN NEW;
END
$fn$;"""


def upgrade() -> None:
    q = f'"{MigrationSettings().schema_name}"'
    op.execute(_defaults(q, _PRIORITY + _ETA))


def downgrade() -> None:
    q = f'"{MigrationSettings().schema_name}"'
    op.execute(_defaults(q, _PRIORITY))
