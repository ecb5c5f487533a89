"""The PostgreSQL the tests run against, and fresh databases cloned from a migrated template."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from pgcelery import dsn

if TYPE_CHECKING:
    from pgcelery.embedded import EmbeddedPostgres


def admin_url_from_env() -> str | None:
    return os.environ.get("TEST_DATABASE_URL") or None


def url_for(admin_url: str, database: str) -> str:
    """``admin_url`` pointing at ``database`` instead (query and credentials kept)."""
    url = make_url(dsn.sync_url(admin_url)).set(database=database)
    return url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql", 1)


def libpq(url: str) -> str:
    return dsn.libpq_url(url)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def create_database(admin_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return url_for(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def embedded_server() -> Iterator[str]:
    """A throwaway embedded PostgreSQL (fsync off); yields its admin URL."""
    from pgcelery.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="pgcelery-test-"))
    server = EmbeddedPostgres(root / "pgdata", durable=False)
    server.start()
    try:
        yield server.url()
    finally:
        server.stop()


@contextmanager
def restartable_server(prefix: str) -> Iterator[EmbeddedPostgres]:
    """A private embedded PostgreSQL a test may stop and start (fsync off)."""
    from pgcelery.embedded import EmbeddedPostgres

    # Not tmp_path: other pytest runs as root reset its parent to 0700, locking the server out.
    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix=f"pgcelery-{prefix}-")) / "pgdata", durable=False
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scalar(url: str, query: str) -> int:
    """The single integer ``query`` returns (a count, usually)."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])
