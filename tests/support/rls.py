"""A database prepared for row-level security tests, and a non-owner role to connect as.

The ``tenant_notes`` table is owned by the admin user; the application role owns nothing,
is no superuser and has no BYPASSRLS, so the policy applies to it exactly as in production.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from pgcelery import dsn
from tests.support.postgres import libpq, unique_name

TENANT_TABLE_SQL = """
CREATE TABLE tenant_notes (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    body text NOT NULL
);
CREATE INDEX tenant_notes_tenant_id ON tenant_notes (tenant_id);
ALTER TABLE tenant_notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenant_notes
    USING (tenant_id = (SELECT nullif(current_setting('app.current_tenant_id', true), '')::uuid))
    WITH CHECK (
        tenant_id = (SELECT nullif(current_setting('app.current_tenant_id', true), '')::uuid)
    );
"""


def create_app_role(admin_url: str, database_url: str) -> tuple[str, str]:
    """A fresh login role granted what workers need; returns (role, database URL as the role)."""
    role = unique_name("pgc_app")
    password = secrets.token_hex(16)
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        ident = sql.Identifier(role)
        # What the migrations grant PGCELERY_APP_ROLE, for a role created after them.
        for statement in (
            "GRANT USAGE ON SCHEMA public TO {}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}",
        ):
            conn.execute(sql.SQL(statement).format(ident))
    url = make_url(dsn.sync_url(database_url)).set(username=role, password=password)
    rendered = url.render_as_string(hide_password=False)
    return role, rendered.replace("postgresql+psycopg", "postgresql", 1)


def drop_role(admin_url: str, role: str) -> None:
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def create_tenant_table(database_url: str, notes: Iterable[tuple[uuid.UUID, str]]) -> None:
    """``tenant_notes`` with RLS forced, filled with ``(tenant, body)`` rows as the owner."""
    with psycopg.connect(libpq(database_url), autocommit=True) as conn:
        conn.execute(TENANT_TABLE_SQL)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tenant_notes (tenant_id, body) VALUES (%s, %s)", list(notes)
            )
