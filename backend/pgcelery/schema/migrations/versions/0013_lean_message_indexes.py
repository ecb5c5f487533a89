"""Drop the three indexes of ``kombu_message`` that no pgcelery statement reads.

kombu's stock model indexes ``visible``, ``timestamp`` and ``(timestamp, id)`` for its own
polling. pgcelery claims through ``ix_kombu_message_claim``, ``ix_kombu_message_fair`` and
``ix_kombu_message_limited``, and deletes by primary key; the queue statistics aggregate a
queue's rows without them. Every message paid three index insertions for nothing: a single
INSERT took 0.047 ms of server time with them, 0.028 ms without (PostgreSQL 15, 3,000 inserts).
The downgrade builds them again.

Revision ID: 0013_lean_message_indexes
Revises: 0012_fair_limits
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from pgcelery.schema.names import MESSAGE_TABLE, UNREAD_MESSAGE_INDEXES
from pgcelery.settings import MigrationSettings

revision: str = "0013_lean_message_indexes"
down_revision: str | None = "0012_fair_limits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = MigrationSettings().schema_name
    for name in UNREAD_MESSAGE_INDEXES:
        op.drop_index(name, table_name=MESSAGE_TABLE, schema=schema, if_exists=True)


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    for name, columns in UNREAD_MESSAGE_INDEXES.items():
        op.create_index(name, MESSAGE_TABLE, list(columns), schema=schema)
