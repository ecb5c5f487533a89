"""Roles, URLs and catalog queries for the schema tests (grants, schema name, fail fast)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.support.postgres import libpq, unique_name


def url_as(url: str, user: str, password: str | None = None) -> str:
    """``url`` with another user (and password); the test servers trust local logins."""
    rendered = make_url(url).set(username=user, password=password)
    return rendered.render_as_string(hide_password=False)


@contextmanager
def login_role(admin_url: str) -> Iterator[str]:
    """A fresh non-superuser login role; dropped at the end (drop its databases first)."""
    name = unique_name("pgc_role")
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
                sql.Identifier(name)
            )
        )
    try:
        yield name
    finally:
        with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def relations(url: str) -> set[tuple[str, str, str]]:
    """Every user relation (schema, name, kind) in the database: tables, sequences, views."""
    with psycopg.connect(libpq(url)) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
            " AND c.relkind IN ('r', 'S', 'v', 'm', 'p')"
        ).fetchall()
    return {(str(s), str(n), str(k)) for s, n, k in rows}
