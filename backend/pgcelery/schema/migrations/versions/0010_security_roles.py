"""Security roles: tenant columns under row-level security, and remote control for ops only.

* ``kombu_message.tenant_id`` and ``celery_taskmeta.tenant_id`` (text, NULL for a global task)
  carry the tenant of a tenant task; the publisher fills the first in its INSERT, the result
  backend the second. Both are indexed only where set, so global tasks pay nothing.
* Row-level security on both tables, keyed on the tenant GUC (``PGCELERY_TENANT_GUC``, the one
  :mod:`pgcelery.tenancy.db` sets): a session that set the GUC sees and writes only its
  tenant's rows; a session that set none (workers, operators, the producer's broker connection)
  sees all of them. The owner is not subject to the policies (no ``FORCE``).
* Row-level security on ``pgcelery_broadcast``: anyone granted INSERT may write events, but
  remote control (``*.pidbox``) only the ops role may send, except Celery's start-up ``hello``.
* Grants per role: see :mod:`pgcelery.schema.roles`.

Create the roles before migrating: like every grant, the ops role's remote-control policy is
only made for a role that exists.

Revision ID: 0010_security_roles
Revises: 0009_job_control
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgcelery.schema.migrations.grants import grant
from pgcelery.schema.names import BROADCAST_TABLE, MESSAGE_TABLE, TASK_TABLE
from pgcelery.schema.roles import CONTROL_EXCHANGE_SUFFIX, RIGHTS
from pgcelery.settings import MigrationSettings

revision: str = "0010_security_roles"
down_revision: str | None = "0009_job_control"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TENANT_TABLES = (MESSAGE_TABLE, TASK_TABLE)
TENANT_POLICY = "pgcelery_tenant_isolation"
BROADCAST_POLICIES = (
    "pgcelery_broadcast_read",
    "pgcelery_broadcast_prune",
    "pgcelery_broadcast_events",
    "pgcelery_broadcast_control",
)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def upgrade() -> None:
    settings = MigrationSettings()
    schema = settings.schema_name
    q = f'"{schema}"'
    tenant = f"(SELECT nullif(current_setting({_literal(settings.tenant_guc)}, true), ''))"
    visible = f"({tenant} IS NULL OR tenant_id = {tenant})"
    for table in TENANT_TABLES:
        op.add_column(table, sa.Column("tenant_id", sa.Text()), schema=schema)
        op.create_index(
            f"ix_{table}_tenant_id",
            table,
            ["tenant_id"],
            schema=schema,
            postgresql_where=sa.text("tenant_id IS NOT NULL"),
        )
        op.execute(
            f"ALTER TABLE {q}.{table} ENABLE ROW LEVEL SECURITY;\n"
            f"CREATE POLICY {TENANT_POLICY} ON {q}.{table} USING {visible} WITH CHECK {visible};"
        )
    ops_role = _literal(settings.roles()["ops"])
    op.execute(
        f"""
CREATE FUNCTION {q}.pgcelery_control_method(payload text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  RETURN convert_from(decode(payload::jsonb ->> 'body', 'base64'), 'UTF8')::jsonb ->> 'method';
EXCEPTION WHEN others THEN
  RETURN NULL;
END
$fn$;
ALTER TABLE {q}.{BROADCAST_TABLE} ENABLE ROW LEVEL SECURITY;
CREATE POLICY pgcelery_broadcast_read ON {q}.{BROADCAST_TABLE} FOR SELECT USING (true);
CREATE POLICY pgcelery_broadcast_prune ON {q}.{BROADCAST_TABLE} FOR DELETE USING (true);
CREATE POLICY pgcelery_broadcast_events ON {q}.{BROADCAST_TABLE} FOR INSERT
  WITH CHECK (right(exchange, {len(CONTROL_EXCHANGE_SUFFIX)}) <> {_literal(CONTROL_EXCHANGE_SUFFIX)}
              OR {q}.pgcelery_control_method(payload) = 'hello');
DO $policy$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {ops_role}) THEN
    EXECUTE format(
      'CREATE POLICY pgcelery_broadcast_control ON %I.%I FOR INSERT TO %I WITH CHECK (true)',
      {_literal(schema)}, {_literal(BROADCAST_TABLE)}, {ops_role});
  END IF;
END
$policy$;
"""
    )
    for rights, role in settings.roles().items():
        tables, sequences = RIGHTS[rights]
        grant(tables, sequences, version_table=True, to=role)


def downgrade() -> None:
    schema = MigrationSettings().schema_name
    q = f'"{schema}"'
    # Tables in the order a worker's claim locks them (kombu_message, then pgcelery_broadcast):
    # the other order deadlocks with a running worker.
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY {TENANT_POLICY} ON {q}.{table}")
        op.execute(f"ALTER TABLE {q}.{table} DISABLE ROW LEVEL SECURITY")
        op.drop_index(f"ix_{table}_tenant_id", table_name=table, schema=schema)
        op.drop_column(table, "tenant_id", schema=schema)
    for policy in BROADCAST_POLICIES:
        op.execute(f"DROP POLICY IF EXISTS {policy} ON {q}.{BROADCAST_TABLE}")
    op.execute(f"ALTER TABLE {q}.{BROADCAST_TABLE} DISABLE ROW LEVEL SECURITY")
    op.execute(f"DROP FUNCTION {q}.pgcelery_control_method(text)")
